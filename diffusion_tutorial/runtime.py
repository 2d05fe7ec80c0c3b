"""Run-time settings shared by the notebooks: fast mode and device choice.

Book: Getting started (fast mode).
"""

from __future__ import annotations

import io
import os
import sys
from typing import TypeVar

import torch
from tqdm.std import tqdm as tqdm_std

__all__ = ["FAST_ENV", "TEXT_PROGRESS_ENV", "is_fast", "fast_or_full", "default_device", "tqdm"]

FAST_ENV = "DIFFUSION_TUTORIAL_FAST"
"""Environment variable that switches on fast mode (``1``/``true``/``yes``)."""

TEXT_PROGRESS_ENV = "DIFFUSION_TUTORIAL_TEXT_PROGRESS"
"""Set to 1 (the book build does) for plain-text progress bars instead of Jupyter widgets."""

V = TypeVar("V")  # any value type (not the book's T, the number of steps)


def is_fast() -> bool:
    """Return True when ``DIFFUSION_TUTORIAL_FAST`` is set to 1/true/yes (CI sets it).

    Fast mode shrinks training steps and sample counts so that every notebook runs in about a
    minute on 2 CPU cores. Full mode, the default, is what readers get.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def fast_or_full(fast: V, full: V) -> V:
    """Return ``fast`` in fast mode and ``full`` otherwise: ``steps = fast_or_full(200, 5000)``."""
    return fast if is_fast() else full


def default_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tqdm(*args, **kwargs):
    """A tqdm progress bar: a Jupyter widget in notebooks, one line of text in the static book.

    Same arguments as ``tqdm.auto.tqdm``. When ``DIFFUSION_TUTORIAL_TEXT_PROGRESS=1`` (set by
    ``make book``) the bar prints only its final state: a widget would need JavaScript from the
    network and would stay frozen at its first frame in a static page.
    """
    if os.environ.get(TEXT_PROGRESS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return _FinalLineTqdm(*args, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm  # here: it probes IPython and ipywidgets on import

    return auto_tqdm(*args, **kwargs)


class _FinalLineTqdm(tqdm_std):
    """A text bar that draws off-screen and prints its final state once, when closed."""

    def __init__(self, *args, **kwargs):
        self._final_file = kwargs.pop("file", None) or sys.stderr
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)

    def close(self):
        line = None if self.disable else str(self)
        super().close()
        if line is not None:
            print(line, file=self._final_file, flush=True)

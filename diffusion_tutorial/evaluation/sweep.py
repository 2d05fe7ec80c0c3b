"""The committed sampler benchmark of the shipped ``mnist`` model: results, stored samples, x_T.

``bench/mnist_sweep.py`` samples every setting (DDPM-1000, DDIM, DPM-Solver++, ...) from the same
x_T per *draw* (seed) and writes one JSON line per (draw, sampler) to
``diffusion_tutorial/results/mnist_sweep.jsonl``, plus the first 64 samples of each run as uint8 in
``mnist_sweep_samples_seed<seed>.npz``. The chapters of Parts 2 and 3 read them here where a live
run would not fit their time budget (DDPM-1000 on 500 samples is ~40 min on one CPU core), and
regenerate a small part live from the same x_T to show that it agrees.

Book: Example: DDPM (Part 2), Example: DDIM and DPM-Solver++ (Part 3); Evaluating samples
(Reference; paired comparison over draws).
"""

from __future__ import annotations

import json
import math
import numbers
import statistics
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "RESULTS_DIR",
    "sweep_results",
    "sweep_fids",
    "mean_sd",
    "PairedDifference",
    "paired_difference",
    "sweep_samples",
    "sweep_x_T",
]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
"""Where the committed benchmark results live (package data, so Colab installs have them)."""


def _check_row(row: object, where: str) -> dict:
    """Raise ``ValueError`` naming ``where`` unless ``row`` is a dict with an int seed and a str sampler."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a result line must be a JSON object, got {type(row).__name__}")
    for key, kind, name in (("seed", int, "an int"), ("sampler", str, "a string")):
        if key not in row:
            raise ValueError(f"{where}: the row has no {key!r} (keys: {sorted(row)})")
        if isinstance(row[key], bool) or not isinstance(row[key], kind):
            raise ValueError(f"{where}: {key!r} must be {name}, got {row[key]!r}")
    return row


def sweep_results(path: str | Path | None = None) -> list[dict]:
    """All result lines (dicts with seed, n, sampler, label, nfe, fid, kid, floor_fid, floor_kid, seconds).

    Every line must be a JSON object with an int ``seed`` and a string ``sampler``, one per
    (seed, sampler); an error names the file and the line. A truncated last line (no newline:
    a benchmark killed while writing it) is skipped with a warning.
    """
    path = Path(path) if path is not None else RESULTS_DIR / "mnist_sweep.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}: run bench/mnist_sweep.py")
    text = path.read_text()
    lines = text.splitlines()
    rows: list[dict] = []
    first_line: dict[tuple[int, str], int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(
                    f"{path}, line {number}: skipped a truncated last line (an interrupted "
                    f"benchmark run?): {line[:60]!r}",
                    stacklevel=2,
                )
                continue
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({err.msg}); repair or delete the line"
            ) from err
        _check_row(row, f"{path}, line {number}")
        run = (row["seed"], row["sampler"])
        if run in first_line:
            raise ValueError(
                f"{path}, line {number}: seed {run[0]} and sampler {run[1]!r} already appear "
                f"on line {first_line[run]}; keep one row per run"
            )
        first_line[run] = number
        rows.append(row)
    return rows


def sweep_fids(rows: list[dict], sampler: str, key: str = "fid") -> dict[int, float]:
    """``{seed: value}`` of one sampler string (e.g. ``"ddim:50:0"``, ``"ddpm"``) over the draws.

    A (seed, sampler) that appears twice, or a row without ``key``, is an error.
    """
    rows = [_check_row(r, f"rows[{i}]") for i, r in enumerate(rows)]
    out: dict[int, float] = {}
    for r in rows:
        if r["sampler"] != sampler:
            continue
        if r["seed"] in out:
            raise ValueError(f"seed {r['seed']} and sampler {sampler!r} appear twice in rows")
        if key not in r:
            raise KeyError(
                f"{key!r} is missing from the row of seed {r['seed']}, sampler {sampler!r}"
            )
        out[r["seed"]] = r[key]
    if not out:
        known = sorted({r["sampler"] for r in rows})
        raise KeyError(f"sampler {sampler!r} is not in the results; known: {known}")
    return dict(sorted(out.items()))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of finite numbers."""
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one number, got none")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"values must be numbers, got {v!r} at position {i}")
        if not math.isfinite(v):
            raise ValueError(
                f"values must be finite, got {v} at position {i} (a failed run in the table?)"
            )
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class PairedDifference(NamedTuple):
    """Mean and standard error over draws of per-draw differences, and the draws they used."""

    mean: float
    se: float  # nan for a single draw: one difference has no spread to estimate
    draws: tuple[int, ...]

    @property
    def resolved(self) -> bool:
        """Whether the 95 % t-interval D_bar +- t_{0.975, K-1} SE excludes 0 (never for K = 1).

        Book: Evaluating samples, eq. (eq-eval-paired)."""
        if len(self.draws) < 2:
            return False
        from scipy.stats import t  # here: scipy.stats is slow to import

        return abs(self.mean) > float(t.ppf(0.975, len(self.draws) - 1)) * self.se


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDifference:
    """D_k = a[k] - b[k] on each draw k in both, with D_bar and SE(D_bar) = s_D / sqrt(K).

    ``a`` and ``b`` map a draw (seed) to a score, e.g. ``sweep_fids(rows, "dpm:20")`` and
    ``sweep_fids(rows, "dpm:20", "floor_fid")`` for the distance above the floor of the same
    draw. Pairing by draw cancels what a draw does to both scores alike (its reference images,
    its x_T); draws in only one of the two are left out. s_D is the sample standard deviation of
    the K differences. Book: Evaluating samples, eq. (eq-eval-paired).
    """
    draws = tuple(sorted(a.keys() & b.keys()))
    if not draws:
        raise ValueError(
            f"a and b share no draw (a has {sorted(a)}, b has {sorted(b)}); pair scores of the "
            "same draws"
        )
    mean, sd = mean_sd([a[k] - b[k] for k in draws])
    se = sd / math.sqrt(len(draws)) if len(draws) > 1 else math.nan
    return PairedDifference(mean, se, draws)


def sweep_samples(seed: int = 0, folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The stored first samples of every run of draw ``seed``: ``{sampler: (K, 1, 28, 28) in [-1, 1]}``.

    Each array must be uint8 of shape (K, 28, 28), as ``bench/mnist_sweep.py`` writes them; a
    damaged file or another array is an error naming the file (and the array).
    """
    folder = Path(folder) if folder is not None else RESULTS_DIR
    path = folder / f"mnist_sweep_samples_seed{seed}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no stored samples at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is damaged or truncated ({type(err).__name__}: {err}); rerun "
            "bench/mnist_sweep.py for this draw"
        ) from err
    for k, a in arrays.items():
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[1:] != (28, 28):
            raise ValueError(
                f"{path}: array {k!r} must be uint8 images of shape (K, 28, 28) with values "
                f"0..255, got {a.dtype} of shape {a.shape}"
            )
    return {
        k: torch.from_numpy(a).float().div(127.5).sub(1).unsqueeze(1) for k, a in arrays.items()
    }


def sweep_x_T(seed: int = 0, n: int = 500) -> torch.Tensor:
    """The benchmark's starting points of draw ``seed``: randn((n, 1, 28, 28)) from Generator(seed)."""
    return torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))

"""The committed sampler benchmark of the shipped ``mnist`` model: results, stored samples, x_T.

``bench/mnist_sweep.py`` samples every setting (DDPM-1000, DDIM, DPM-Solver++, ...) from the same
x_T per *draw* (seed) and writes one JSON line per (draw, sampler) to
``diffusion_tutorial/results/mnist_sweep.jsonl``, plus the first 64 samples of each run as uint8 in
``mnist_sweep_samples_seed<seed>.npz``. The chapters of Parts 2 and 3 read them here where a live
run would not fit their time budget (DDPM-1000 on 500 samples is ~40 min on one CPU core), and
regenerate a small part live from the same x_T to show that it agrees.

Book: Example: DDPM (Part 2), Example: DDIM and DPM-Solver++ (Part 3).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

__all__ = ["RESULTS_DIR", "sweep_results", "sweep_fids", "mean_sd", "sweep_samples", "sweep_x_T"]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
"""Where the committed benchmark results live (package data, so Colab installs have them)."""


def sweep_results(path: str | Path | None = None) -> list[dict]:
    """All result lines (dicts with seed, n, sampler, label, nfe, fid, kid, floor_fid, floor_kid, seconds)."""
    path = Path(path) if path is not None else RESULTS_DIR / "mnist_sweep.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}: run bench/mnist_sweep.py")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep_fids(rows: list[dict], sampler: str, key: str = "fid") -> dict[int, float]:
    """``{seed: value}`` of one sampler string (e.g. ``"ddim:50:0"``, ``"ddpm"``) over the draws."""
    out = {r["seed"]: r[key] for r in rows if r["sampler"] == sampler}
    if not out:
        known = sorted({r["sampler"] for r in rows})
        raise KeyError(f"sampler {sampler!r} is not in the results; known: {known}")
    return dict(sorted(out.items()))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sweep_samples(seed: int = 0, folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The stored first samples of every run of draw ``seed``: ``{sampler: (K, 1, 28, 28) in [-1, 1]}``."""
    folder = Path(folder) if folder is not None else RESULTS_DIR
    path = folder / f"mnist_sweep_samples_seed{seed}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no stored samples at {path}")
    with np.load(path, allow_pickle=False) as data:
        return {k: torch.from_numpy(data[k]).float().div(127.5).sub(1).unsqueeze(1) for k in data}


def sweep_x_T(seed: int = 0, n: int = 500) -> torch.Tensor:
    """The benchmark's starting points of draw ``seed``: randn((n, 1, 28, 28)) from Generator(seed)."""
    return torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))

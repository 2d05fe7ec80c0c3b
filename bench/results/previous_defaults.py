"""bench/quality.py with one more grid, ``oldpower``: the DDIM default before the samplers were
rewritten (t^(1/p) equally spaced with p = 1.25, starting one step below T when
sqrt(alpha_bar) <= 0.03 there), rebuilt here so that the old and new defaults are compared on the
same x_T. The previous DPM-Solver++ default is ``dpm:20:3`` (order 3; at 20 steps its order-2
fallback never triggered). Used for bench/results/quality_defaults.md."""

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
import quality  # noqa: E402

BURIED = 0.03


def _finish(candidates: torch.Tensor, T: int, start_at_T: bool = True) -> torch.Tensor:
    t = [int(math.floor(c + 0.5)) for c in candidates.tolist()]
    t[-1] = 1
    if start_at_T:
        t[0] = T
    for i in range(len(t) - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    for i in range(len(t)):
        t[i] = min(t[i], T - i)
    return torch.tensor(t + [0], dtype=torch.int64)


def old_power(schedule, steps: int, p: float = 1.25) -> torch.Tensor:
    root = torch.linspace(schedule.T ** (1 / p), 1, steps + 1, dtype=torch.float64)
    t_real = root[1:] ** p
    if schedule.alpha_bar[int(t_real[0].round())].sqrt() > BURIED:
        root = torch.linspace(schedule.T ** (1 / p), 1, steps, dtype=torch.float64)
        return _finish(root**p, schedule.T)
    return _finish(t_real, schedule.T, start_at_T=False)


if __name__ == "__main__":
    quality.GRIDS["oldpower"] = old_power
    print(quality.main(sys.argv[1:]))

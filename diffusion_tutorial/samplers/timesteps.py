"""Step-spacing rules: which book times t_0 = T > t_1 > ... > t_{steps-1} >= 1 a sampler visits.

Each function returns an int64 tensor of length ``steps + 1``: the ``steps`` times where the model
is evaluated, followed by the final target time 0 (the clean sample). The last evaluation is at
t = 1 (for ``steps >= 2``), so no sampler stops early; the first is at t = T, except for
:func:`power_timesteps`, which starts one step below T, where the data is still buried in noise
(see there). Rounding to integers is repaired so the times stay strictly decreasing.

Book: Fast sampling (choosing the timesteps).
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = [
    "power_timesteps",
    "uniform_timesteps",
    "logsnr_timesteps",
    "clipped_logsnr_timesteps",
    "karras_timesteps",
    "quadratic_timesteps",
]


BURIED = 0.03  # sqrt(alpha_bar) below which data of scale <= 1 is invisible under unit noise


def _finish(candidates: torch.Tensor, T: int, start_at_T: bool = True) -> torch.Tensor:
    """Round decreasing real times to integers in 1..T, force strictly decreasing, append 0.

    The last time becomes 1 and, with ``start_at_T``, the first becomes T.
    """
    t = [int(math.floor(c + 0.5)) for c in candidates.tolist()]
    t[-1] = 1
    if start_at_T:
        t[0] = T
    for i in range(len(t) - 2, -1, -1):  # bottom-up: every time above the next one
        t[i] = max(t[i], t[i + 1] + 1)
    for i in range(len(t)):  # top-down: never above T - i (feasible because steps <= T)
        t[i] = min(t[i], T - i)
    return torch.tensor(t + [0], dtype=torch.int64)


def _nearest_t_for_lam(schedule: NoiseSchedule, lam: torch.Tensor) -> torch.Tensor:
    """Real-valued t in [1, T] whose half log-SNR is ``lam`` (linear interpolation of lam_t)."""
    lam_grid = schedule.lam[1:].cpu()  # (T,) decreasing in t = 1..T
    t_grid = torch.arange(1, schedule.T + 1, dtype=torch.float64)  # (T,)
    # lam is decreasing in t; np.interp needs increasing x, so flip both.
    x, y = lam_grid.flip(0), t_grid.flip(0)
    idx = torch.searchsorted(x, lam.clamp(x[0], x[-1])).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
    return y0 + (lam - x0) / (x1 - x0) * (y1 - y0)


def _check(schedule: NoiseSchedule, steps: int) -> int:
    return check_int_in_range("steps", steps, 1, schedule.T)


def _power_from_T(schedule: NoiseSchedule, steps: int, p: float) -> torch.Tensor:
    """``steps`` times with t^(1/p) equally spaced from T down to 1 (p = 1 uniform, 2 quadratic)."""
    if steps == 1:
        return torch.tensor([schedule.T, 0], dtype=torch.int64)
    root = torch.linspace(schedule.T ** (1 / p), 1, steps, dtype=torch.float64)
    return _finish(root**p, schedule.T)


def power_timesteps(schedule: NoiseSchedule, steps: int, p: float = 1.25) -> torch.Tensor:
    """Times with t^(1/p) equally spaced: the steps + 1 points from T^(1/p) down to 1 without T, then 0.

    The sampler starts one step below T, at t_0 = (T^(1/p) - (T^(1/p) - 1) / steps)^p, and
    treats the pure noise x_T as a sample at t_0, provided the data is still buried there:
    sqrt(alpha_bar_{t_0}) <= ``BURIED`` = 0.03 (data of scale <= 1 under noise of scale 1; with
    fewer steps, e.g. 5 or fewer of the linear schedule, the grid starts at T). Then N(0, I) is
    as good a start at t_0 as at T, and the step that would have been spent at the top, where
    an eps-predicting network's x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar_t) magnifies
    its errors by sigma_t / sqrt(alpha_bar_t) (~160 at T), is spent lower down. With p = 1
    these are the times of DDIM's reference code and of diffusers' default
    ``timestep_spacing="leading"`` (up to rounding: 900, 800, ..., 1 here against their 901,
    801, ..., 1 for 10 steps of T = 1000); p > 1 shortens the steps toward t = 1.
    The default p = 1.25 is the default of ``ddim_sample``: on the exact Gaussian problem of
    ``bench/samplers.py`` it is 20-30 % more accurate than p = 1 (diffusers' default DDIM) at
    10-100 steps, and on the trained MNIST model it is within a few per cent of p = 1 and more
    accurate than :func:`uniform_timesteps` (the table in ``bench/samplers.py``).
    Book: Fast sampling, eq. (power-steps). Song et al. 2021 (DDIM), appendix D.2.
    """
    steps = _check(schedule, steps)
    p = check_float_in_range("p", p, 1.0, 4.0)
    if steps == 1:
        return torch.tensor([schedule.T, 0], dtype=torch.int64)
    root = torch.linspace(schedule.T ** (1 / p), 1, steps + 1, dtype=torch.float64)
    t_real = root[1:] ** p  # (steps,) from one step below T down to 1
    if schedule.alpha_bar[int(t_real[0].round())].sqrt() > BURIED:  # data visible: start at T
        return _power_from_T(schedule, steps, p)
    return _finish(t_real, schedule.T, start_at_T=False)


def uniform_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Evaluation times equally spaced in t from T down to 1, then 0: t_i = round(T - i (T-1)/(steps-1)).

    DDIM's "uniform" choice with both ends included (diffusers' ``timestep_spacing="linspace"``).
    Book: Fast sampling, eq. (uniform-steps). Song et al. 2021 (DDIM), sec. 4.2.
    """
    return _power_from_T(schedule, _check(schedule, steps), 1.0)


def _logsnr(schedule: NoiseSchedule, steps: int, lam_min: float) -> torch.Tensor:
    steps = _check(schedule, steps)
    lam_T, lam_1 = schedule.lam[-1].item(), schedule.lam[1].item()
    if steps == 1:
        return torch.tensor([schedule.T, 0], dtype=torch.int64)
    if lam_min <= lam_T or steps == 2:
        lam = torch.linspace(lam_T, lam_1, steps, dtype=torch.float64)
        return _finish(_nearest_t_for_lam(schedule, lam), schedule.T)
    lam = torch.linspace(min(lam_min, lam_1), lam_1, steps - 1, dtype=torch.float64)
    t_real = torch.cat([torch.tensor([float(schedule.T)]), _nearest_t_for_lam(schedule, lam)])
    return _finish(t_real.to(torch.float64), schedule.T)


def logsnr_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Evaluation times equally spaced in half log-SNR lambda from lambda_T up to lambda_1, then 0.

    The natural grid for DPM-Solver, whose step size is h = lambda_{t_i} - lambda_{t_{i-1}}.
    Book: Fast sampling, eq. (logsnr-steps). Lu et al. 2022 (DPM-Solver), sec. 3.4.
    """
    return _logsnr(schedule, steps, -math.inf)


def clipped_logsnr_timesteps(
    schedule: NoiseSchedule, steps: int, lam_min: float | None = None
) -> torch.Tensor:
    """t = T, then times equally spaced in lambda from ``lam_min`` up to lambda_1, then 0.

    Below lambda = -2.5 (SNR = e^-5 < 1 %) data whose coordinates have std <= 1 (pixels in
    [-1, 1]) is buried in noise and x0_hat barely changes, so one first-order step from T to
    ``lam_min`` is accurate (error ~ std^2 e^(2 lam_min) / 2) and the other steps are spent where
    the data emerges. That error does not shrink with more steps, so by default ``lam_min`` is
    -2.5 up to 50 steps and 1 lower per doubling beyond (-3.5 at 100). This is the most accurate
    rule for DPM-Solver++ on the Gaussian problem of ``bench/samplers.py`` (per-dimension std
    <= 1), but real images have directions with much larger scales (MNIST's leading principal
    directions): on the shipped MNIST model it doubles MNIST-FID at 10 and 20 NFE (model card),
    so it is not the default. For such data pass a lower ``lam_min`` (EDM's sigma_max = 80 is
    -4.4) or use :func:`logsnr_timesteps`, which it equals when lambda_T >= lam_min.
    Book: Fast sampling, eq. (logsnr-steps). Lu et al. 2022 (DPM-Solver), sec. 3.4; Karras et
    al. 2022, sec. 3 (a finite sigma_max).
    """
    steps = _check(schedule, steps)
    if lam_min is None:
        lam_min = -2.5 - max(0.0, math.log2(steps / 50))
    lam_min = check_float_in_range("lam_min", lam_min)
    return _logsnr(schedule, steps, lam_min)


def karras_timesteps(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Evaluation times with sigma_tilde^(1/rho) equally spaced, sigma_tilde = sigma_t / sqrt(alpha_bar_t).

    sigma_tilde runs from its value at T to its value at 1 (rho = 7 as in EDM), then 0.
    Book: Fast sampling, eq. (karras-steps). Karras et al. 2022, eq. 5.
    """
    steps = _check(schedule, steps)
    rho = check_float_in_range("rho", rho, 0.0, None, low_open=True)
    if steps == 1:
        return torch.tensor([schedule.T, 0], dtype=torch.int64)
    s_max, s_min = math.exp(-schedule.lam[-1].item()), math.exp(-schedule.lam[1].item())
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigma_tilde = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _finish(_nearest_t_for_lam(schedule, -torch.log(sigma_tilde)), schedule.T)


def quadratic_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Evaluation times with sqrt(t) equally spaced from sqrt(T) down to 1 (dense near t = 1), then 0.

    DDIM's choice for CIFAR-10. On the exact Gaussian problem of ``bench/samplers.py`` it is the
    most accurate grid for the first-order DDIM; on the trained MNIST model the least accurate
    (it spends few steps at medium noise, where the digits take shape).
    Book: Fast sampling, eq. (quadratic-steps). Song et al. 2021 (DDIM), appendix D.2.
    """
    return _power_from_T(schedule, _check(schedule, steps), 2.0)

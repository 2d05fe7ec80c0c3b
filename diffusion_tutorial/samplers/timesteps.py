"""Step-spacing rules: which book times t_0 > t_1 > ... > t_{steps-1} >= 1 a sampler visits.

Each rule is a function ``timesteps(schedule, steps)`` returning an int64 tensor of length
``steps + 1``: the ``steps`` times where the model is evaluated, then the target time 0 (the clean
sample). Book time t = diffusers' (and the DDIM code's) 0-based timestep + 1: their
``alphas_cumprod[k]`` is our ``alpha_bar[k + 1]``.

Book: Fast sampling (choosing the timesteps) (Part 3).
"""

from __future__ import annotations

import torch

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.core.time import NoiseLevel

__all__ = [
    "leading_timesteps",
    "uniform_timesteps",
    "quadratic_timesteps",
    "logsnr_timesteps",
    "karras_sigmas",
    "karras_timesteps",
]


def _descending(t: torch.Tensor) -> torch.Tensor:
    """Evaluation times (steps,) in increasing order -> int64 (steps + 1,) from the top down to 0."""
    return torch.cat([t.to(torch.int64).flip(0), torch.zeros(1, dtype=torch.int64)])


def _distinct_integer_times(t: torch.Tensor, T: int) -> torch.Tensor:
    """Round fractional book times (from T down to 1) to ``len(t)`` distinct integers, then 0.

    Where rounding ties two times, the later one moves up to the next free integer, and the
    list is then pushed back below T, so a sampler still makes exactly ``len(t)`` model calls.
    """
    ts = [int(v) for v in t.round().tolist()[::-1]]  # increasing: ts[0] = 1, ts[-1] = T
    for i in range(1, len(ts)):  # a tie moves up to the next free integer...
        ts[i] = max(ts[i], ts[i - 1] + 1)
    ts[-1] = T
    for i in range(len(ts) - 2, -1, -1):  # ...then the list goes back below T
        ts[i] = min(ts[i], ts[i + 1] - 1)
    return _descending(torch.tensor(ts))


def leading_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """t_i = 1 + i * floor(T / steps) for i = 0, ..., steps - 1 (from the top down), then 0.

    The "uniform" rule of the DDIM reference code (``range(0, T, T // steps)``, shifted to book
    time) and diffusers' default ``timestep_spacing="leading"``. It never visits t = T: with 10
    of T = 1000 steps the sampler starts at t = 901 and treats x_T as a sample there, a small
    mismatch where the data is almost buried (sqrt(alpha_bar_901) = 0.016, linear schedule).
    Book: Fast sampling (Part 3). Song et al. 2021 (DDIM), sec. 4.2 and appendix D.2.
    """
    steps = check_int_in_range("steps", steps, 1, schedule.T)
    return _descending(1 + torch.arange(steps) * (schedule.T // steps))


def uniform_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """t_i = 1 + round(i (T - 1) / (steps - 1)): equally spaced from T down to 1 (both ends), then 0.

    diffusers' ``timestep_spacing="linspace"`` (rounding half to even, as numpy does).
    Book: Fast sampling (Part 3). Song et al. 2021 (DDIM), sec. 4.2.
    """
    steps = check_int_in_range("steps", steps, 1, schedule.T)
    return _descending(1 + torch.linspace(0, schedule.T - 1, steps, dtype=torch.float64).round())


def quadratic_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """t_i = 1 + max(i, floor((T - 1) (i / (steps - 1))^2)): dense near t = 1, then 0.

    DDIM's "quadratic" selection tau_i = floor(c i^2) with c chosen so that the last time is T
    (the paper's CIFAR-10 choice); ``max(i, ...)`` keeps the first times distinct when steps is
    large (where c i^2 < 1 per step). The DDIM reference code takes c so that it ends at 0.8 T.
    Book: Fast sampling (Part 3). Song et al. 2021 (DDIM), appendix D.2.
    """
    steps = check_int_in_range("steps", steps, 1, schedule.T)
    i = torch.arange(steps, dtype=torch.float64)
    quad = ((schedule.T - 1) * (i / max(steps - 1, 1)) ** 2).floor()
    return _descending(1 + torch.maximum(i, quad))


def logsnr_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Times whose half log-SNR lambda_t is equally spaced from lambda_T up to lambda_1, then 0.

    The step of DPM-Solver is h = lambda_s - lambda_t, so this grid gives it equal steps. The
    model takes integer t, so each target lambda is mapped to the real t that has it (linear
    interpolation of lambda between integers), rounded, and pushed apart where rounding makes
    two times equal. DPM-Solver's official code recommends this grid ("logSNR") for
    low-resolution images.
    Book: Fast sampling (Part 3). Lu et al. 2022a (DPM-Solver), sec. 3.4.
    """
    steps = check_int_in_range("steps", steps, 1, schedule.T)
    if steps == 1:  # one model call, at t = T (also T = 1, where there is nothing to interpolate)
        return _descending(torch.tensor([schedule.T]))
    lam_T, lam_1 = schedule.lam[[schedule.T, 1]].tolist()
    target = torch.linspace(lam_T, lam_1, steps, dtype=torch.float64)  # (steps,) equal steps h
    return _distinct_integer_times(NoiseLevel.from_lam(target).t(schedule), schedule.T)


def karras_sigmas(schedule: NoiseSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """EDM noise levels sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0.

    Float64 (steps + 1,): N = ``steps`` levels from sigma_max = sigma_T down to sigma_min =
    sigma_1 (EDM sigma = sqrt((1 - alpha_bar) / alpha_bar), the schedule's own end points, so
    every level is a book time in [1, T]), then the target 0. rho = 7 packs the steps near
    sigma_min, where errors show most in the image (Karras et al.: "rho = 7 ... performs well").
    The grid of the EDM samplers (``samplers.edm``); :func:`karras_timesteps` rounds it for the
    integer-t samplers. diffusers: ``use_karras_sigmas=True`` with ``timestep_spacing="linspace"``.
    Book: Fast sampling (Part 3). Karras et al. 2022 (EDM), eq. 5.
    """
    steps = check_int_in_range("steps", steps, 1, None)
    rho = check_float_in_range("rho", rho, 0.0, None, low_open=True)
    edm_sigma = NoiseLevel.from_lam(schedule.lam[[schedule.T, 1]]).edm_sigma()
    sigma_max, sigma_min = edm_sigma.tolist()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)  # (steps,)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # (steps,)
    sigmas[0] = sigma_max  # the end points exactly, not through the power
    if steps > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (steps + 1,)


def karras_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Karras' rho = 7 grid for the integer-t samplers: each sigma_i mapped to its book time, rounded.

    The levels of :func:`karras_sigmas` are converted to fractional book times (log-SNR
    interpolation, ``core.time.NoiseLevel``) and rounded to the nearest integer; T and 1 stay
    the first and last model calls. Where rounding gives the same time twice (the rho-grid is
    denser than one per integer t), the duplicate is dropped and its step moves to the nearest
    free integer, as in :func:`logsnr_timesteps`, so the sampler still makes exactly ``steps``
    model calls, the contract of every timesteps function. How many move depends on the
    schedule: on the linear T = 1000 schedule none up to 75 steps (1 of 100, 7 of 200, all near
    t = 1); on the cosine schedule, whose sigma_T ~ 2e4 packs the grid against t = T, 3 of 10
    and 24 of 50 (k-diffusion and diffusers drop such duplicates, and make fewer calls).
    Book: Fast sampling (Part 3). Karras et al. 2022 (EDM), eq. 5.
    """
    steps = check_int_in_range("steps", steps, 1, schedule.T)
    sigmas = karras_sigmas(schedule, steps)[:-1]  # (steps,) decreasing
    return _distinct_integer_times(NoiseLevel.from_edm_sigma(sigmas).t(schedule), schedule.T)

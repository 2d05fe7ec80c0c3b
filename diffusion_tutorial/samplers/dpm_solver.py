"""DPM-Solver++: a multistep exponential integrator for the probability-flow ODE, in data prediction.

Book: Fast sampling (Part 3). Lu et al. 2022b, "DPM-Solver++", eq. 8 and Algorithm 2.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_int_in_range
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import (
    Callback,
    TimestepFn,
    check_start,
    predict,
    progress_bar,
    resolve_timesteps,
)
from diffusion_tutorial.samplers.timesteps import logsnr_timesteps

__all__ = ["dpm_solver_sample"]


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 20,
    order: int = 2,
    timesteps: TimestepFn = logsnr_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Multistep DPM-Solver++: x_prev = (sigma_s / sigma_t) x_t + sigma_s int_{lam_t}^{lam_s} e^lam x0_hat(lam) dlam.

    The exact solution of the probability-flow ODE from t to s < t (Lu et al. 2022b, eq. 8),
    with x0_hat(lam) replaced by the polynomial through the last ``order`` predictions. With
    h = lam[s] - lam[t] and u = lam - lam[t], the integrals I_k = sigma_s int_0^h e^(lam[t]+u) u^k du
    are (sqrt_alpha_bar[s] = sigma_s e^lam[s] is DPM-Solver's alpha_s)
        I_0 = sqrt_alpha_bar[s] (1 - e^-h),         I_1 = sqrt_alpha_bar[s] (h - 1 + e^-h),
        I_2 = sqrt_alpha_bar[s] (h^2 - 2 h + 2 - 2 e^-h).
    ``order=1`` is DDIM with eta = 0; ``order=2`` (default) is the paper's 2M, the line through
    the last two x0_hat evaluated at the middle of the step; ``order=3`` integrates the parabola
    through the last three exactly, which pays off only with short steps (it extrapolates a
    quadratic a whole step ahead; Lu et al. recommend order 2 for guided sampling). The first
    steps use a lower order until enough predictions exist, and the step to t = 0, where
    lam = +inf, returns x0_hat (first order, as diffusers' ``final_sigmas_type="zero"``).
    ``steps`` model calls at ``timesteps(schedule, steps)``, by default equally spaced in lam
    (:func:`logsnr_timesteps`, Lu et al. 2022a, sec. 3.4). Deterministic; returns x_0.
    Book: Fast sampling (Part 3). Lu et al. 2022b, eq. 8 and Algorithm 2.
    """
    x_t = check_start("x_T", x_T, schedule)
    order = check_int_in_range("order", order, 1, 3)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar, lam = schedule.alpha_bar.tolist(), schedule.lam.tolist()
    sigma, sqrt_alpha_bar = schedule.sigma.tolist(), schedule.sqrt_alpha_bar.tolist()
    x0_hats: list[torch.Tensor] = []  # the last two predictions, newest last
    hs: list[float] = []  # the lambda steps between them and the current time, newest last
    for i in progress_bar(steps, progress, f"DPM-Solver++({order}M)"):
        t, s = ts[i], ts[i + 1]
        # Step 1: the data prediction at t.
        _, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(i, t, x_t, x0_hat)
        if s == 0:  # lam[0] = +inf: the exact step to t = 0 is x0_hat itself
            x_t = x0_hat
            break
        # Step 2: the linear part and the constant term I_0 x0_hat (order 1: DDIM, eta = 0).
        h = lam[s] - lam[t]
        em1 = math.expm1(-h)  # e^-h - 1, exact for small h
        i0, i1 = -sqrt_alpha_bar[s] * em1, sqrt_alpha_bar[s] * (h + em1)
        x_prev = (sigma[s] / sigma[t]) * x_t + i0 * x0_hat  # (B, ...)
        # Step 3: higher-order terms from divided differences in lambda of the past predictions.
        k = min(order, len(x0_hats) + 1)
        if k >= 2:
            d1 = (x0_hat - x0_hats[-1]) / hs[-1]  # (B, ...) slope of x0_hat in lambda
        if k == 2:  # 2M (Algorithm 2): x0_hat + (h / 2) d1, the line at the middle of the step
            x_prev = x_prev + i0 * (h / 2) * d1
        if k == 3:  # x0_hat + d1 u + d2 u (u + hs[-1]), the parabola, integrated exactly
            d2 = (d1 - (x0_hats[-1] - x0_hats[-2]) / hs[-2]) / (hs[-1] + hs[-2])
            i2 = sqrt_alpha_bar[s] * (h * h - 2 * h - 2 * em1)
            x_prev = x_prev + i1 * d1 + (i2 + hs[-1] * i1) * d2
        x0_hats, hs = [*x0_hats[-1:], x0_hat], [*hs[-1:], h]
        x_t = x_prev
    return x_t

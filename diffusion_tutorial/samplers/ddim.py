"""DDIM: deterministic (eta = 0) or stochastic sampling on a subsequence of times, and DDIM inversion.

Book: Fast sampling (DDIM). Song et al. 2021, "Denoising Diffusion Implicit Models".
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_float_in_range
from diffusion_tutorial.core.forward import randn_like
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
from diffusion_tutorial.samplers.timesteps import power_timesteps

__all__ = ["ddim_sample", "ddim_invert"]


@torch.no_grad()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    timesteps: TimestepFn = power_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM update from t to s < t: x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - ddim_sigma^2) eps_hat + ddim_sigma z.

    ddim_sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s);
    eta = 0 is the deterministic DDIM (first-order solver of the probability-flow ODE) and eta = 1
    with every step (``steps = T``) is DDPM. ``timesteps(schedule, steps)`` picks the times
    (default: :func:`power_timesteps`, DDIM's reference-code grid with steps shrinking gently
    toward t = 1, starting one step below T where the data is still buried; the most accurate
    choice across both benchmarks of ``bench/samplers.py``); the last update goes to t = 0 and
    returns x0_hat. ``steps`` model calls.
    Book: Fast sampling, eq. (ddim-step). Song et al. 2021, eqs. 12 and 16.
    """
    x = check_start("x_T", x_T, schedule)
    eta = check_float_in_range("eta", eta, 0.0, None)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    # Step 0: all coefficients up front, so a bad eta fails before any model call.
    plan = []
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        ab_t, ab_s = alpha_bar[t], alpha_bar[s]
        ddim_sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        direction = 1 - ab_s - ddim_sigma**2
        if direction < -1e-12:
            raise ValueError(f"eta={eta} is too large: 1 - alpha_bar_s - ddim_sigma^2 < 0 at t={t}")
        plan.append((t, ab_t, ab_s, ddim_sigma, math.sqrt(max(direction, 0.0))))
    for i in progress_bar(len(plan), progress, "DDIM"):
        t, ab_t, ab_s, ddim_sigma, dir_coef = plan[i]
        # Step 1: predict eps and x_0 at time t (Song et al. eq. 9).
        eps_hat, x0_hat = predict(model, x, t, ab_t**0.5, (1 - ab_t) ** 0.5, clip_x0)
        if callback is not None:
            callback(i, t, x, x0_hat)
        # Step 2: jump to s along the predicted x_0 and noise direction (eq. 12).
        x = ab_s**0.5 * x0_hat + dir_coef * eps_hat  # (B, ...)
        if ddim_sigma > 0:
            x = x + ddim_sigma * randn_like(x, generator)
    return x


@torch.no_grad()
def ddim_invert(
    model: Model,
    schedule: NoiseSchedule,
    x_0: torch.Tensor,
    *,
    steps: int = 50,
    timesteps: TimestepFn = power_timesteps,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Encode x_0 to x_T by running deterministic DDIM backwards: x_u = sqrt(alpha_bar_u) (x_s / sqrt(alpha_bar_s) + (sigma_tilde_u - sigma_tilde_s) eps_hat).

    sigma_tilde = sigma / sqrt(alpha_bar); from s up to u > s the noise eps_hat = model(x_s, u) is
    evaluated at the *target* time u with the current x_s (the sampler uses model(x_u, u): they
    agree to first order in the step, which is why the round trip is exact only as steps grow).
    Uses the same times as ``ddim_sample(..., timesteps=timesteps)``, in reverse.
    Book: Fast sampling, eq. (ddim-inversion). Song et al. 2021, sec. 4.3 and eq. 14.
    """
    x = check_start("x_0", x_0, schedule)
    ts = resolve_timesteps(timesteps, schedule, steps)[::-1]  # 0 = s_0 < ... < s_steps
    alpha_bar = schedule.alpha_bar.tolist()
    for i in progress_bar(steps, progress, "DDIM inversion"):
        s, u = ts[i], ts[i + 1]
        ab_s, ab_u = alpha_bar[s], alpha_bar[u]
        eps_hat, x0_hat = predict(model, x, u, ab_s**0.5, (1 - ab_s) ** 0.5, False)
        if callback is not None:
            callback(i, u, x, x0_hat)
        x = ab_u**0.5 * x0_hat + (1 - ab_u) ** 0.5 * eps_hat  # (B, ...)
    return x

"""Stochastic DPM-Solver++ of order 1 or 2: an exponential integrator for the reverse SDE.

With a_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(a_t / sigma_t) and
h = lambda_s - lambda_t > 0 for a step from t to s < t, the DDPM posterior q(x_s | x_t, x_0) is

    N( (sigma_s / sigma_t) e^-h x_t + a_s (1 - e^-2h) x_0,  sigma_s^2 (1 - e^-2h) I ),

(the book's q_posterior written with lambda). The reverse SDE has the same linear part, so its
exact solution from t to s is that mean with x_0 replaced by the average of x0_hat(lambda) under the
weight 2 e^(-2 (lambda_s - lambda)) on [lambda_t, lambda_s] (total weight 1 - e^-2h), plus the same
Gaussian noise. Order 1 freezes x0_hat at its value at t: that is exactly one DDPM posterior step
with x0_hat plugged in, i.e. DDIM with eta = 1 on the same times. Order 2 uses the line through the
last two predictions evaluated at the middle of the step, x0_hat + (h / 2) * slope, as the
deterministic DPM-Solver++(2M) does. Noise is injected at every step except the last, which goes to
t = 0 and returns x0_hat.

Why bother: the injected noise corrects errors of an imperfect model instead of carrying them
along, so with a trained network this sampler often matches DDPM's quality in a few dozen steps,
where the deterministic solvers follow the model's probability-flow ODE and its errors exactly.

Book: The score/SDE view. Lu et al. 2022b (DPM-Solver++; the SDE variant of the authors' code and
of diffusers' ``algorithm_type="sde-dpmsolver++"``); Song et al. 2021 (score SDE), eq. 6.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_int_in_range
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
from diffusion_tutorial.samplers.timesteps import logsnr_timesteps

__all__ = ["dpm_solver_sde_sample"]


@torch.no_grad()
def dpm_solver_sde_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 20,
    order: int = 2,
    generator: torch.Generator | None = None,
    timesteps: TimestepFn = logsnr_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """x_s = (sigma_s / sigma_t) e^-h x_t + a_s (1 - e^-2h) D + sigma_s sqrt(1 - e^-2h) z, z ~ N(0, I).

    D = x0_hat (order 1) or x0_hat + (h / 2) (x0_hat - x0_hat_prev) / h_prev (order 2, from the
    second step on). ``steps`` model calls at ``timesteps(schedule, steps)`` (default: uniform in
    lambda); the last step to t = 0 returns x0_hat. Noise comes from ``generator``.
    Returns x_0 in the dtype/device of ``x_T``.
    Book: The score/SDE view, eq. (sde-dpm-step). Lu et al. 2022b (SDE-DPM-Solver++).
    """
    x = check_start("x_T", x_T, schedule)
    order = check_int_in_range("order", order, 1, 2)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    lam = schedule.lam.tolist()
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in progress_bar(len(ts) - 1, progress, f"SDE-DPM-Solver++({order})"):
        t, s = ts[i], ts[i + 1]
        # Step 1: data prediction at t.
        _, x0_hat = predict(model, x, t, alpha_bar[t] ** 0.5, (1 - alpha_bar[t]) ** 0.5, clip_x0)
        if callback is not None:
            callback(i, t, x, x0_hat)
        if s == 0:  # lambda_0 = inf: the posterior collapses onto x0_hat
            x = x0_hat
            break
        # Step 2: the x0_hat the step integrates (midpoint of the line through the last two).
        h = lam[s] - lam[t]
        d = x0_hat
        if order == 2 and x0_prev is not None:
            d = x0_hat + (h / (2 * h_prev)) * (x0_hat - x0_prev)  # (B, ...)
        # Step 3: the posterior-shaped update with fresh noise.
        one_minus = -math.expm1(-2 * h)  # 1 - e^-2h, accurate for small h
        sigma_s, sigma_t = (1 - alpha_bar[s]) ** 0.5, (1 - alpha_bar[t]) ** 0.5
        x = (sigma_s / sigma_t) * math.exp(-h) * x + alpha_bar[s] ** 0.5 * one_minus * d
        x = x + sigma_s * math.sqrt(one_minus) * randn_like(x, generator)
        x0_prev, h_prev = x0_hat, h
    return x

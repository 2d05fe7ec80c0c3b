"""Stochastic DPM-Solver++ of order 1 or 2: an exponential integrator for the reverse SDE.

Book: DPM-Solver++ (Part 3); the reverse SDE itself, eq. (eq-sde-reverse), in Scores, SDEs and
the probability-flow ODE (Part 4). Lu et al. 2022b (the SDE-DPM-Solver++ of the authors' code and
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
    Projection,
    TimestepFn,
    apply_projection,
    check_projection,
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
    project: Projection | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M): x_s = (sigma_s / sigma_t) e^-h x_t + sqrt(alpha_bar_s) (1 - e^-2h) D + sigma_s sqrt(1 - e^-2h) z.

    With h = lam_s - lam_t for a step from t to s < t and z ~ N(0, I), this is the DDPM
    posterior q(x_s | x_t, x_0) written with lambda, x_0 replaced by D: the reverse SDE has the
    same linear part, and its exact solution replaces x_0 by an average of x0_hat(lam) over the
    step. ``order=1`` freezes D = x0_hat (exactly DDIM with eta = 1 on the same times);
    ``order=2`` (default) takes Algorithm 2's r = h_prev / h and D = (1 + 1 / (2r)) x0_hat -
    (1 / (2r)) x0_hat_prev, the line through the last two predictions at the middle of the step,
    as the deterministic 2M does. Fresh noise every step except the last, which goes to t = 0
    and returns x0_hat. ``steps`` model calls at ``timesteps(schedule, steps)`` (default
    :func:`logsnr_timesteps`). ``project(s, x_s)``, if given, replaces each new state (checked
    like a model output). The injected noise corrects part of an imperfect model's error
    instead of carrying it along.
    Book: DPM-Solver++ (Part 3). Lu et al. 2022b (SDE-DPM-Solver++(2M), Algorithm 2's D).
    """
    x_t = check_start("x_T", x_T, schedule)
    order = check_int_in_range("order", order, 1, 2)
    project = check_projection(project)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar, lam = schedule.alpha_bar.tolist(), schedule.lam.tolist()
    sigma, sqrt_alpha_bar = schedule.sigma.tolist(), schedule.sqrt_alpha_bar.tolist()
    x0_prev, h_prev = None, 0.0  # the last prediction and the lambda step that followed it
    for i in progress_bar(steps, progress, f"SDE-DPM-Solver++({order}M)"):
        t, s = ts[i], ts[i + 1]
        # Step 1: the data prediction at t.
        _, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(i, t, x_t, x0_hat)
        if s == 0:  # lam_0 = +inf: the posterior collapses onto x0_hat
            return apply_projection(project, 0, x0_hat)
        # Step 2: the step in lambda and D, as in Algorithm 2 (first step: D = x0_hat).
        h = lam[s] - lam[t]
        D = x0_hat
        if order == 2 and x0_prev is not None:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev  # (B, ...)
        # Step 3: the posterior-shaped update with fresh noise; -expm1(-2h) = 1 - e^-2h, exact for small h.
        one_minus = -math.expm1(-2 * h)
        x_s = (sigma[s] / sigma[t]) * math.exp(-h) * x_t + sqrt_alpha_bar[s] * one_minus * D
        x_s = x_s + sigma[s] * math.sqrt(one_minus) * randn_like(x_s, generator)
        x0_prev, h_prev = x0_hat, h
        x_t = apply_projection(project, s, x_s)
    return x_t

"""Ancestral DDPM sampling over all T steps.

Book: Reverse process (Part 2). Ho et al. 2020, Algorithm 2.
"""

from __future__ import annotations

import torch

from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import (
    Callback,
    Projection,
    apply_projection,
    check_projection,
    check_start,
    ddim_step,
    predict,
    progress_bar,
)

__all__ = ["ddpm_sample"]


@torch.no_grad()
def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
    project: Projection | None = None,
) -> torch.Tensor:
    """Sample p_theta(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_hat), beta_tilde_t I) for t = T, ..., 1.

    x_prev = sqrt(alpha_bar[t-1]) beta[t] / (1 - alpha_bar[t]) x0_hat
           + sqrt(alpha[t]) (1 - alpha_bar[t-1]) / (1 - alpha_bar[t]) x_t + sqrt(beta_tilde[t]) z,
    with x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar[t]): the same mean as Ho et al.'s
    (x_t - beta_t / sigma_t eps_hat) / sqrt(alpha_t), and no noise at the last step. The reverse
    variance is the posterior variance beta_tilde_t (Ho et al.'s "sigma_t^2 = beta_tilde_t"). The
    package computes the step as :func:`ddim_step` with eta = 1 from t to t - 1: DDIM's eq. 12
    with that eta is this posterior, written with x0_hat and eps_hat instead of x0_hat and x_t
    (the same numbers up to rounding). T model calls. Returns x_0 in the dtype/device of ``x_T``.
    ``project(s, x_prev)``, if given, replaces each new state x_prev (at book time s = t - 1, down
    to 0) by its return value, checked like a model output (:func:`apply_projection`): the hook
    of the inpainting and super-resolution projections (``samplers.inverse``).
    Book: The reverse process, eq. (eq-rev-ddpm-step). Ho et al. 2020, eqs. 6-7, 11 and Algorithm 2.
    """
    x_t = check_start("x_T", x_T, schedule)
    project = check_projection(project)
    alpha_bar = schedule.alpha_bar.tolist()
    for i in progress_bar(schedule.T, progress, "DDPM"):
        t = schedule.T - i
        # Step 1: predict eps and x_0 at time t (Ho et al. eq. 15).
        eps_hat, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(i, t, x_t, x0_hat)
        # Steps 2-3: posterior mean mu_tilde(x_t, x0_hat) (eq. 7) plus noise of variance
        # beta_tilde_t, none at t = 1: DDIM's step with eta = 1 from t to t - 1.
        x_prev = ddim_step(x0_hat, eps_hat, alpha_bar[t], alpha_bar[t - 1], 1.0, generator)
        # Step 4 (optional): project the new state, which lives at time t - 1, onto the constraint.
        x_t = apply_projection(project, t - 1, x_prev)
    return x_t

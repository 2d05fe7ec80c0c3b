"""Ancestral DDPM sampling over all T steps.

Book: Reverse process (Part 2). Ho et al. 2020, Algorithm 2.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import (
    Callback,
    Projection,
    check_start,
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
    variance is the posterior variance beta_tilde_t (Ho et al.'s "sigma_t^2 = beta_tilde_t").
    T model calls. Returns x_0 in the dtype/device of ``x_T``. ``project(s, x_prev)``, if given,
    replaces each new state x_prev (at book time s = t - 1, down to 0) by its return value: the
    hook of the inpainting and super-resolution projections (``samplers.inverse``).
    Book: The reverse process, eq. (eq-rev-ddpm-step). Ho et al. 2020, eqs. 6-7, 11 and Algorithm 2.
    """
    x_t = check_start("x_T", x_T, schedule)
    alpha_bar = schedule.alpha_bar.tolist()
    # mu_tilde = coef_x0[t] x0_hat + coef_xt[t] x_t with the coefficients written out above.
    coef_x0, coef_xt = (c.tolist() for c in schedule.posterior_mean_coefs)
    beta_tilde = schedule.posterior_variance.tolist()
    for i in progress_bar(schedule.T, progress, "DDPM"):
        t = schedule.T - i
        # Step 1: predict eps and x_0 at time t (Ho et al. eq. 15).
        eps_hat, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(i, t, x_t, x0_hat)
        # Step 2: posterior mean mu_tilde(x_t, x0_hat) (Ho et al. eq. 7).
        x_prev = coef_x0[t] * x0_hat + coef_xt[t] * x_t  # (B, ...)
        # Step 3: add noise of variance beta_tilde_t, except at the last step (t = 1).
        if t > 1:
            x_prev = x_prev + math.sqrt(beta_tilde[t]) * randn_like(x_prev, generator)
        # Step 4 (optional): project the new state, which lives at time t - 1, onto the constraint.
        if project is not None:
            x_prev = project(t - 1, x_prev)
        x_t = x_prev
    return x_t

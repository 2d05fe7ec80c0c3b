"""Ancestral DDPM sampling over all T steps.

Book: Reverse process (sampling), Algorithm (ddpm-sampling). Ho et al. 2020, Algorithm 2.
"""

from __future__ import annotations

import torch

from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import Callback, check_start, predict, progress_bar

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
) -> torch.Tensor:
    """Sample p_theta(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_hat), beta_tilde_t I) for t = T, ..., 1.

    x_{t-1} = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0_hat
            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t + sqrt(beta_tilde_t) z,
    with x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar_t) (the same mean as Ho et al.'s
    (x_t - beta_t / sigma_t eps_hat) / sqrt(alpha_t)) and no noise at the last step. The reverse
    variance is the posterior variance beta_tilde_t (Ho et al.'s "sigma_t^2 = beta_tilde_t").
    ``callback(i, t, x_t, x0_hat)`` sees every step. Returns x_0 in the dtype/device of ``x_T``.
    Book: Reverse process, eq. (ddpm-step). Ho et al. 2020, eq. 11 and Algorithm 2.
    """
    x = check_start("x_T", x_T, schedule)
    # Step 0: coefficients once, in float64, as Python floats.
    alpha_bar = schedule.alpha_bar.tolist()
    beta = schedule.beta.tolist()
    alpha = schedule.alpha.tolist()
    posterior_std = schedule.posterior_variance.sqrt().tolist()
    T = schedule.T
    for i in progress_bar(T, progress, "DDPM"):
        t = T - i
        # Step 1: predict eps and x_0 at time t.
        eps_hat, x0_hat = predict(
            model, x, t, alpha_bar[t] ** 0.5, (1 - alpha_bar[t]) ** 0.5, clip_x0
        )
        if callback is not None:
            callback(i, t, x, x0_hat)
        # Step 2: posterior mean mu_tilde(x_t, x0_hat) (Ho et al. eq. 7).
        coef_x0 = alpha_bar[t - 1] ** 0.5 * beta[t] / (1 - alpha_bar[t])
        coef_xt = alpha[t] ** 0.5 * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t])
        x = coef_x0 * x0_hat + coef_xt * x  # (B, ...)
        # Step 3: add noise with variance beta_tilde_t, except at the last step (t = 1).
        if t > 1:
            x = x + posterior_std[t] * randn_like(x, generator)
    return x

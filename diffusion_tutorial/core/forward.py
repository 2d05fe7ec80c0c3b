"""The forward (noising) process q: closed form q(x_t | x_0), one step q(x_t | x_{t-1}), posterior.

Book: Forward process. Schedule coefficients are read in float64 and cast to the input's dtype.
"""

from __future__ import annotations

import torch

from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_same_shape,
    check_time_indices,
    expand_like,
)
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = ["randn_like", "q_sample", "diffuse", "q_step", "q_posterior"]


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with ``x``'s shape, dtype and device, drawn from ``generator``.

    Draws on the generator's device (so a CPU generator works for CUDA inputs) and, for half
    precision, in float32 before casting (the same stream for float16, bfloat16 and float32).
    """
    device = generator.device if generator is not None else x.device
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    eps = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
    return eps.to(device=x.device, dtype=x.dtype)


def _eps(
    x: torch.Tensor, eps: torch.Tensor | None, generator: torch.Generator | None, name: str
) -> torch.Tensor:
    """Validate ``x`` (finite) and return the given ``eps`` (finite, same shape) or a fresh draw."""
    check_finite(name, x)
    if eps is None:
        return randn_like(x, generator)
    check_float_tensor("eps", eps)
    check_same_shape(name, x, "eps", eps)
    return check_finite("eps", eps).to(x.dtype)


def q_sample(
    x_0: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    ``t`` is an int64 tensor (B,) of book indices in 0..T (t = 0 returns x_0) or one int.
    ``eps`` is drawn from ``generator`` when not given. Non-finite ``x_0`` or ``eps`` is refused.
    Book: The forward process, eq. (eq-fwd-closed-form). Ho et al. 2020, eq. 4.
    """
    check_float_tensor("x_0", x_0)
    t = check_time_indices("t", t, x_0.shape[0], 0, schedule.T, x_0.device)
    eps = _eps(x_0, eps, generator, "x_0")
    return diffuse(x_0, t, eps, schedule)


def diffuse(
    x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sigma_t eps for already checked inputs (no checks, no sync).

    The arithmetic of :func:`q_sample`, for callers that validated ``x_0``, ``t`` (int64 (B,))
    and ``eps`` themselves, like ``simple_loss`` in every training step.
    Book: Forward process (Part 2). Ho et al. 2020, eq. 4.
    """
    idx = t.to(schedule.alpha_bar.device)
    sqrt_alpha_bar = expand_like(schedule.sqrt_alpha_bar[idx], x_0)  # (B, 1, ..., 1)
    sigma = expand_like(schedule.sigma[idx], x_0)  # (B, 1, ..., 1)
    return sqrt_alpha_bar * x_0 + sigma * eps  # (B, ...)


def q_step(
    x_prev: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one Markov step q(x_t | x_{t-1}): x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps.

    ``t`` (B,) in 1..T is the index of the step being taken (from t - 1 to t).
    Book: The forward process, eq. (eq-fwd-step). Ho et al. 2020, eq. 2.
    """
    check_float_tensor("x_prev", x_prev)
    t = check_time_indices("t", t, x_prev.shape[0], 1, schedule.T, x_prev.device)
    eps = _eps(x_prev, eps, generator, "x_prev")
    idx = t.to(schedule.beta.device)
    sqrt_alpha = expand_like(schedule.alpha[idx].sqrt(), x_prev)  # (B, 1, ..., 1)
    sqrt_beta = expand_like(schedule.beta[idx].sqrt(), x_prev)  # (B, 1, ..., 1)
    return sqrt_alpha * x_prev + sqrt_beta * eps  # (B, ...)


def q_posterior(
    x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t I).

    mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
             + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.
    ``t`` (B,) in 1..T. Returns ``mean`` (B, ...) and ``variance`` (B, 1, ..., 1) (it is the same for
    every coordinate), both in the input dtype.
    Book: The reverse process, eq. (eq-rev-posterior). Ho et al. 2020, eqs. 6-7.
    """
    check_float_tensor("x_0", x_0)
    check_float_tensor("x_t", x_t)
    check_same_shape("x_0", x_0, "x_t", x_t)
    t = check_time_indices("t", t, x_t.shape[0], 1, schedule.T, x_t.device)
    idx = t.to(schedule.beta.device)
    c_x0, c_xt = schedule.posterior_mean_coefs  # (T+1,) each, float64
    mean = expand_like(c_x0[idx], x_t) * x_0 + expand_like(c_xt[idx], x_t) * x_t  # (B, ...)
    variance = expand_like(schedule.posterior_variance[idx], x_t)  # (B, 1, ..., 1)
    return mean, variance

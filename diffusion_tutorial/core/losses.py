"""Training losses: L_simple (eps-prediction MSE) and the variational bound L_T + sum L_{t-1} + L_0.

``model`` is any callable ``model(x_t, t) -> eps_hat`` with ``t`` an int64 tensor (B,) in 1..T.
The bound terms are in nats per example (summed over all non-batch dimensions).

Reverse-process variance: p_theta(x_{t-1} | x_t) = N(mu_theta, beta_tilde_t I) for t >= 2 (the
posterior variance, Ho et al.'s sigma_t^2 = beta_tilde_t, the same choice as ``ddpm_sample``).
Decoder L_0: data in [-1, 1] with 256 levels is modelled by a *discretised Gaussian*
N(x0_hat(x_1), beta_1) integrated over each level's bin of width 2/255, with the two outer bins
extended to -inf and +inf (Ho et al. 2020, eq. 13). beta_1 (not beta_tilde_1 = 0) is the decoder
variance.

Book: Reverse process (the ELBO, Part 2). Ho et al. 2020, eqs. 5, 8, 13, 14.
"""

from __future__ import annotations

import torch

from diffusion_tutorial.background.probability import kl_gaussian
from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_model_output,
    check_time_indices,
    check_values_in,
)
from diffusion_tutorial.core.forward import diffuse, q_posterior, q_sample, randn_like
from diffusion_tutorial.core.parameterization import Model, x0_from_eps
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = [
    "simple_loss",
    "prior_kl",
    "vlb_term",
    "decoder_nll",
    "vlb_terms",
]


def _sum_per_example(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(1)  # (B,)


def _check_x0(x_0: object) -> torch.Tensor:
    """A finite floating-point batch (B, ...) with B >= 1: an empty batch has no mean loss."""
    check_float_tensor("x_0", x_0)
    if x_0.ndim < 1 or x_0.shape[0] == 0:
        raise ValueError(f"x_0 must be a batch (B, ...) with B >= 1, got shape {tuple(x_0.shape)}")
    return check_finite("x_0", x_0)


def _times(t: torch.Tensor | int, schedule: NoiseSchedule, x_0: torch.Tensor, low: int):
    return check_time_indices("t", t, x_0.shape[0], low, schedule.T, x_0.device)  # (B,)


def simple_loss(
    model: Model,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_simple = E_{t ~ U{1..T}, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sigma_t eps, t) ||^2.

    Returns the mean over the batch and all dimensions (a scalar). ``t`` (B,) overrides the
    uniform draw; ``generator`` drives both t and eps. Refuses an empty batch and non-finite
    ``x_0``; a model output with NaN or inf raises an error naming its t.
    Book: The reverse process, eq. (eq-rev-lsimple). Ho et al. 2020, eq. 14 / Algorithm 1.
    """
    _check_x0(x_0)
    B = x_0.shape[0]
    if t is None:  # t ~ U{1..T}: in range by construction, so no range check (no GPU sync)
        device = generator.device if generator is not None else x_0.device
        t = torch.randint(1, schedule.T + 1, (B,), generator=generator, device=device)
        t = t.to(x_0.device)  # (B,) int64
    else:
        t = _times(t, schedule, x_0, low=1)  # (B,)
    eps = randn_like(x_0, generator)  # (B, ...)
    x_t = diffuse(x_0, t, eps, schedule)  # (B, ...); inputs checked above: one isfinite per tensor
    eps_hat = check_model_output(model(x_t, t), x_t, t)  # (B, ...), finite
    return torch.mean((eps_hat - eps) ** 2)


def prior_kl(x_0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)), summed per example, shape (B,). Has no parameters.

    Book: Reverse process (Part 2). Ho et al. 2020, eq. 5.
    """
    _check_x0(x_0)
    alpha_bar_T = schedule.alpha_bar[-1].item()
    mean = alpha_bar_T**0.5 * x_0  # (B, ...)
    var = torch.full((), 1 - alpha_bar_T, dtype=x_0.dtype, device=x_0.device)
    one = torch.ones((), dtype=x_0.dtype, device=x_0.device)
    return _sum_per_example(kl_gaussian(mean, var, torch.zeros_like(x_0), one))


def vlb_term(
    model: Model,
    x_0: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    *,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) at one x_t ~ q(x_t | x_0), (B,).

    Both Gaussians have variance beta_tilde_t, so it equals ||mu_tilde - mu_theta||^2 / (2 beta_tilde_t);
    ``t`` (B,) in 2..T (t = 1 is the decoder term, see :func:`decoder_nll`).
    Book: Reverse process (Part 2). Ho et al. 2020, eqs. 5 and 8.
    """
    _check_x0(x_0)
    t = _times(t, schedule, x_0, low=2)  # (B,)
    x_t = q_sample(x_0, t, schedule, eps=eps, generator=generator)  # (B, ...)
    eps_hat = check_model_output(model(x_t, t), x_t, t)  # (B, ...)
    x0_hat = x0_from_eps(x_t, eps_hat, t, schedule)  # (B, ...)
    mean, var = q_posterior(x_0, x_t, t, schedule)
    mean_theta, _ = q_posterior(x0_hat, x_t, t, schedule)
    return _sum_per_example(kl_gaussian(mean, var, mean_theta, var))


def decoder_nll(
    model: Model,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_0 = -log p_theta(x_0 | x_1) for the discretised Gaussian decoder, shape (B,), in nats.

    p_theta(x_0 | x_1) = prod_i int_{bin(x_0^i)} N(x; x0_hat^i(x_1), beta_1) dx over 256 bins of width
    2/255 centred on the levels of [-1, 1]; ``x_0`` must lie in [-1, 1].
    Book: Reverse process (Part 2). Ho et al. 2020, eq. 13.
    """
    _check_x0(x_0)
    check_values_in("x_0 (scale images to [-1, 1] first)", x_0, -1.0, 1.0)
    t = _times(1, schedule, x_0, low=1)  # (B,)
    x_1 = q_sample(x_0, t, schedule, eps=eps, generator=generator)  # (B, ...)
    eps_hat = check_model_output(model(x_1, t), x_1, t)  # (B, ...)
    x0_hat = x0_from_eps(x_1, eps_hat, t, schedule)  # (B, ...), the mean of p
    std = schedule.beta[1].item() ** 0.5
    half_bin = 1.0 / 255.0
    upper = (x_0 + half_bin - x0_hat) / std  # (B, ...) standardised bin edges
    lower = (x_0 - half_bin - x0_hat) / std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 - Phi(lower))
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp_min(1e-12)
    log_p = torch.where(
        x_0 < -1 + 1e-3,
        log_cdf_upper,
        torch.where(x_0 > 1 - 1e-3, log_sf_lower, torch.log(mass)),
    )
    return -_sum_per_example(log_p)


def vlb_terms(
    model: Model,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """All bound terms, shape (B, T+1): column k is L_k (L_0 decoder, L_1..L_{T-1} KLs, L_T prior).

    ``vlb_terms(...).sum(1)`` is the negative ELBO, an upper bound on -log p_theta(x_0) in nats.
    Costs T model calls (one fresh x_t per term).
    Book: Reverse process (Part 2). Ho et al. 2020, eq. 5.
    """
    _check_x0(x_0)
    B, T = x_0.shape[0], schedule.T
    out = torch.zeros(B, T + 1, dtype=x_0.dtype, device=x_0.device)  # (B, T+1)
    out[:, 0] = decoder_nll(model, x_0, schedule, generator=generator)
    for t in range(2, T + 1):
        out[:, t - 1] = vlb_term(model, x_0, t, schedule, generator=generator)
    out[:, T] = prior_kl(x_0, schedule)
    return out

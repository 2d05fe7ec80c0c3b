"""Conversions between the four things a network can predict: eps, x_0, v and the score.

All follow from x_t = sqrt(alpha_bar_t) x_0 + sigma_t eps with sigma_t = sqrt(1 - alpha_bar_t):
x0 = (x_t - sigma_t eps) / sqrt(alpha_bar_t), v = sqrt(alpha_bar_t) eps - sigma_t x_0 and
score = -eps / sigma_t. Each function takes ``(x_t, prediction, t, schedule)`` with ``t`` an int64
tensor (B,) of book indices (or one int) and returns a tensor shaped like ``x_t``; NaN or inf in
either input is refused.

Book: Reverse process (parameterisations). Salimans & Ho 2022, sec. 4 and appendix D (v);
Song et al. 2021 (score), Ho et al. 2020 eq. 11 (eps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_same_shape,
    check_time_indices,
    expand_like,
)
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = [
    "Model",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_eps",
    "eps_from_v",
    "x0_from_v",
    "v_from_x0",
    "score_from_eps",
    "eps_from_score",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A denoiser ``model(x_t, t) -> eps_hat``: x_t (B, ...), t int64 (B,) of book indices in 1..T."""


def _coefs(
    x_t: torch.Tensor,
    pred: torch.Tensor,
    pred_name: str,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    low: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (finite, same shape) and return sqrt(alpha_bar_t), sigma_t as (B, 1, ..., 1)."""
    check_finite("x_t", check_float_tensor("x_t", x_t))
    check_finite(pred_name, check_float_tensor(pred_name, pred))
    check_same_shape("x_t", x_t, pred_name, pred)
    idx = check_time_indices("t", t, x_t.shape[0], low, schedule.T, x_t.device)  # (B,)
    idx = idx.to(schedule.alpha_bar.device)
    return (
        expand_like(schedule.sqrt_alpha_bar[idx], x_t),  # (B, 1, ..., 1)
        expand_like(schedule.sigma[idx], x_t),  # (B, 1, ..., 1)
    )


def x0_from_eps(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0_hat = (x_t - sigma_t eps) / sqrt(alpha_bar_t); t in 0..T.

    Book: Reverse process (Part 2). Ho et al. 2020, eq. 15.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, eps, "eps", t, schedule, low=0)
    return (x_t - sigma * eps) / sqrt_alpha_bar


def eps_from_x0(
    x_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sigma_t; t in 1..T (sigma_0 = 0).

    Book: Reverse process (Part 2). Ho et al. 2020, eq. 4 solved for eps.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, x_0, "x_0", t, schedule, low=1)
    return (x_t - sqrt_alpha_bar * x_0) / sigma


def v_from_eps(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sigma_t x_0 = (eps - sigma_t x_t) / sqrt(alpha_bar_t); t in 0..T.

    Book: Reverse process (Part 2). Salimans & Ho 2022, sec. 4.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, eps, "eps", t, schedule, low=0)
    return (eps - sigma * x_t) / sqrt_alpha_bar


def eps_from_v(
    x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = sigma_t x_t + sqrt(alpha_bar_t) v (uses alpha_bar_t + sigma_t^2 = 1); t in 0..T.

    Book: Reverse process (Part 2). Salimans & Ho 2022, appendix D.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, v, "v", t, schedule, low=0)
    return sigma * x_t + sqrt_alpha_bar * v


def x0_from_v(
    x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """x0_hat = sqrt(alpha_bar_t) x_t - sigma_t v; t in 0..T.

    Book: Reverse process (Part 2). Salimans & Ho 2022, appendix D.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, v, "v", t, schedule, low=0)
    return sqrt_alpha_bar * x_t - sigma * v


def v_from_x0(
    x_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """v = (sqrt(alpha_bar_t) x_t - x_0) / sigma_t; t in 1..T.

    Book: Reverse process (Part 2). Salimans & Ho 2022, appendix D.
    """
    sqrt_alpha_bar, sigma = _coefs(x_t, x_0, "x_0", t, schedule, low=1)
    return (sqrt_alpha_bar * x_t - x_0) / sigma


def score_from_eps(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """score = grad_x log q(x_t) ~= -eps / sigma_t (exact for the optimal eps); t in 1..T.

    Book: Reverse process (Part 2). Song et al. 2021, sec. 2 / Vincent 2011.
    """
    _, sigma = _coefs(x_t, eps, "eps", t, schedule, low=1)
    return -eps / sigma


def eps_from_score(
    x_t: torch.Tensor, score: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule
) -> torch.Tensor:
    """eps = -sigma_t * score; t in 1..T.

    Book: Reverse process (Part 2). Song et al. 2021, sec. 2.
    """
    _, sigma = _coefs(x_t, score, "score", t, schedule, low=1)
    return -sigma * score

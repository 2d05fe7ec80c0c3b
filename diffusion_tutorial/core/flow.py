"""Flow matching in the book's coordinates: the velocity u, its conversions, and the VP <-> flow map.

Flow time tau runs from noise (tau = 0) to data (tau = 1), as in Lipman et al. 2023 and Liu et al.
2023 (MIT 6.S184 too); SD3 and minRF (Esser et al. 2024) put the noise at 1 instead: their time is
1 - tau (``NoiseLevel.flow_time_data_at_0``). The linear path and its conditional velocity are

    x_tau = tau x_0 + (1 - tau) eps,        u = dx_tau / dtau = x_0 - eps,

and the marginal velocity is E[u | x_tau] = x0_hat - eps_hat. (The letter is u: v is already
v-prediction, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0.)

**Diffusion is a flow in other coordinates.** With a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar),
the VP state x_VP = a x_0 + b eps divided by (a + b) is a point of the linear path at flow time
tau = a / (a + b): x_VP = (a + b) x_FM. Since a^2 + b^2 = 1, the scale is a function of tau alone,
``vp_scale(tau)`` = a + b = 1 / sqrt(tau^2 + (1 - tau)^2) (1 at both ends, sqrt(2) at tau = 1/2).
The flow time of a book time, an alpha_bar or a sigma comes from the package's one converter,
``core.time.NoiseLevel`` (``flow_time_noise_at_0``).

Every conversion takes the flow state x (the linear path's x_tau, not x_VP) and flow times
``tau`` (a number, a (B,) tensor, or a ``NoiseLevel``); computations run in float64 and the result
has the dtype of ``x``.

How a network reads a flow state (and an eps-network becomes a velocity field):
:mod:`diffusion_tutorial.core.flow_matching`.

Book: Flow matching (Part 4). Lipman et al. 2023, eqs. 20-23; Liu et al. 2023 (rectified flow);
Albergo & Vanden-Eijnden 2023; Kingma & Gao 2023 (flow matching as a weighting of the diffusion loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_same_shape,
    expand_like,
)
from diffusion_tutorial.core.time import NoiseLevel

__all__ = [
    "VelocityModel",
    "vp_scale",
    "vp_from_flow",
    "flow_from_vp",
    "u_from_eps",
    "eps_from_u",
    "u_from_x0",
    "x0_from_u",
    "u_from_v",
    "v_from_u",
    "u_from_score",
    "score_from_u",
]

VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A velocity field ``model(x, tau) -> u``: x (B, ...) a flow state, tau float64 (B,) flow times
in [0, 1] (noise at 0); what ``samplers.flow.flow_sample`` integrates."""


def _tau(tau: torch.Tensor | float | NoiseLevel, x: torch.Tensor, low: float, high: float):
    """Flow times as float64 (B, 1, ..., 1) (or a 0-d tensor) on x's device, checked to lie in [low, high]."""
    if isinstance(tau, NoiseLevel):
        tau = tau.flow_time_noise_at_0()
    if isinstance(tau, bool) or not isinstance(tau, (int, float, torch.Tensor)):
        raise TypeError(f"tau must be a flow time (number, tensor or NoiseLevel), got {type(tau)}")
    tau = torch.as_tensor(tau, dtype=torch.float64).to(device=x.device, dtype=torch.float64)
    if tau.ndim > 1 or (tau.ndim == 1 and tau.shape[0] != x.shape[0]):
        raise ValueError(
            f"tau must be a number or have shape ({x.shape[0]},) (one flow time per example), "
            f"got {tuple(tau.shape)}"
        )
    if tau.numel() and (torch.isnan(tau).any() or tau.min() < low or tau.max() > high):
        raise ValueError(
            f"tau must be flow times in [{low:g}, {high:g}] (0 = noise, 1 = data), got values in "
            f"[{tau.min().item():.6g}, {tau.max().item():.6g}]"
        )
    return expand_like(tau, x.to(torch.float64))  # (B, 1, ..., 1) float64


def _pair(x: torch.Tensor, name: str, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_finite("x", check_float_tensor("x", x))
    check_finite(name, check_float_tensor(name, pred))
    check_same_shape("x", x, name, pred)
    return x.to(torch.float64), pred.to(torch.float64)


# --- The VP <-> flow map -------------------------------------------------------------------


def vp_scale(tau: torch.Tensor | float | NoiseLevel) -> torch.Tensor:
    """a + b = 1 / sqrt(tau^2 + (1 - tau)^2): x_VP = (a + b) x_FM at flow time tau = a / (a + b).

    float64, shaped like ``tau``. Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    if isinstance(tau, NoiseLevel):
        tau = tau.flow_time_noise_at_0()
    tau = torch.as_tensor(tau, dtype=torch.float64)
    return torch.rsqrt(tau**2 + (1 - tau) ** 2)


def vp_from_flow(x: torch.Tensor, tau: torch.Tensor | float | NoiseLevel) -> torch.Tensor:
    """x_VP = (a + b) x: the VP state at alpha_bar = a^2 = tau^2 / (tau^2 + (1 - tau)^2).

    Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    check_float_tensor("x", x)
    s = _tau(tau, x, 0.0, 1.0)
    return (vp_scale(s) * x.to(torch.float64)).to(x.dtype)


def flow_from_vp(x_vp: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """x_FM = x_VP / (a + b), the linear path's state at flow time ``level.flow_time_noise_at_0()``.

    ``level`` is the VP state's noise level, e.g. ``NoiseLevel.from_t(t, schedule)`` or
    ``NoiseLevel.from_alpha_bar(alpha_bar)``. Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    check_float_tensor("x_vp", x_vp)
    if not isinstance(level, NoiseLevel):
        raise TypeError(f"level must be a NoiseLevel, got {type(level).__name__}")
    s = _tau(level, x_vp, 0.0, 1.0)
    return (x_vp.to(torch.float64) / vp_scale(s)).to(x_vp.dtype)


# --- Conversions at flow time tau (x = tau x_0 + (1 - tau) eps) ------------------------------


def u_from_eps(x: torch.Tensor, eps: torch.Tensor, tau) -> torch.Tensor:
    """u = (x - eps) / tau (= x0_hat - eps with x0_hat = (x - (1 - tau) eps) / tau); tau in (0, 1]."""
    xd, e = _pair(x, "eps", eps)
    s = _tau(tau, x, 0.0, 1.0)
    if (s == 0).any():
        raise ValueError("tau must be > 0 to read u from eps: at tau = 0 the state holds no data")
    return ((xd - e) / s).to(x.dtype)


def eps_from_u(x: torch.Tensor, u: torch.Tensor, tau) -> torch.Tensor:
    """eps = x - tau u; tau in [0, 1]. Book: Flow matching (Part 4)."""
    xd, ud = _pair(x, "u", u)
    return (xd - _tau(tau, x, 0.0, 1.0) * ud).to(x.dtype)


def u_from_x0(x: torch.Tensor, x_0: torch.Tensor, tau) -> torch.Tensor:
    """u = (x_0 - x) / (1 - tau) (= x_0 - eps with eps = (x - tau x_0) / (1 - tau)); tau in [0, 1)."""
    xd, x0 = _pair(x, "x_0", x_0)
    s = _tau(tau, x, 0.0, 1.0)
    if (s == 1).any():
        raise ValueError("tau must be < 1 to read u from x_0: at tau = 1 the state holds no noise")
    return ((x0 - xd) / (1 - s)).to(x.dtype)


def x0_from_u(x: torch.Tensor, u: torch.Tensor, tau) -> torch.Tensor:
    """x0_hat = x + (1 - tau) u: one Euler step to tau = 1; tau in [0, 1]."""
    xd, ud = _pair(x, "u", u)
    return (xd + (1 - _tau(tau, x, 0.0, 1.0)) * ud).to(x.dtype)


def v_from_u(x: torch.Tensor, u: torch.Tensor, tau) -> torch.Tensor:
    """v = a eps - b x0_hat = (2 tau - 1) x_VP - u / (a + b), the v-prediction of the VP state; tau in [0, 1].

    With a = tau (a + b), b = (1 - tau)(a + b) and eps = x - tau u, x0_hat = x + (1 - tau) u.
    Book: Flow matching (Part 4). Salimans & Ho 2022, sec. 4 (v).
    """
    xd, ud = _pair(x, "u", u)
    s = _tau(tau, x, 0.0, 1.0)
    c = vp_scale(s)  # a + b
    return ((2 * s - 1) * c * xd - ud / c).to(x.dtype)


def u_from_v(x: torch.Tensor, v: torch.Tensor, tau) -> torch.Tensor:
    """u = (a + b) ((2 tau - 1) x_VP - v), x_VP = (a + b) x: the inverse of :func:`v_from_u`."""
    xd, vd = _pair(x, "v", v)
    s = _tau(tau, x, 0.0, 1.0)
    c = vp_scale(s)
    return (c * ((2 * s - 1) * c * xd - vd)).to(x.dtype)


def score_from_u(x: torch.Tensor, u: torch.Tensor, tau) -> torch.Tensor:
    """grad_x log p_tau(x) = -(x - tau u) / (1 - tau) = -eps_hat / (1 - tau); tau in [0, 1).

    The score of the flow state's density; the VP state's score is this divided by a + b.
    Book: Flow matching (Part 4). Lipman et al. 2023; Song et al. 2021 (score).
    """
    xd, ud = _pair(x, "u", u)
    s = _tau(tau, x, 0.0, 1.0)
    if (s == 1).any():
        raise ValueError("tau must be < 1 for the score: at tau = 1 the noise scale 1 - tau is 0")
    return (-(xd - s * ud) / (1 - s)).to(x.dtype)


def u_from_score(x: torch.Tensor, score: torch.Tensor, tau) -> torch.Tensor:
    """u = (x + (1 - tau) score) / tau; tau in (0, 1]."""
    xd, sc = _pair(x, "score", score)
    s = _tau(tau, x, 0.0, 1.0)
    if (s == 0).any():
        raise ValueError("tau must be > 0 to read u from the score: at tau = 0 it is unbounded")
    return ((xd + (1 - s) * sc) / s).to(x.dtype)

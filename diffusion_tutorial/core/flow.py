"""Flow matching in the book's coordinates: the velocity u, its conversions, and the VP <-> flow map.

Flow time s runs from noise (s = 0) to data (s = 1), as in Lipman et al. 2023 and Liu et al.
2023 (MIT 6.S184 too); SD3 and minRF (Esser et al. 2024) put the noise at 1 instead: their time is
1 - s (``NoiseLevel.flow_time_data_at_0``). The linear path and its conditional velocity are

    x_s = s x_0 + (1 - s) eps,        u = dx_s / ds = x_0 - eps,

and the marginal velocity is E[u | x_s] = x0_hat - eps_hat. (The letter is u: v is already
v-prediction, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0. The time is s, not tau: the
book's tau is the SDE time t / T of Scores and SDEs, which runs the other way, 0 at data. Code
calls it ``flow_t``, as ``NoiseLevel.from_flow_time_noise_at_0(flow_t)`` does.)

**Diffusion is a flow in other coordinates.** With a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar),
the VP state x_VP = a x_0 + b eps divided by (a + b) is a point of the linear path at flow time
s = a / (a + b): x_VP = (a + b) x_FM. Since a^2 + b^2 = 1, the scale is a function of s alone,
``vp_scale(s)`` = a + b = 1 / sqrt(s^2 + (1 - s)^2) (1 at both ends, sqrt(2) at s = 1/2).
The flow time of a book time, an alpha_bar or a sigma comes from the package's one converter,
``core.time.NoiseLevel`` (``flow_time_noise_at_0``).

Every conversion takes the flow state x (the linear path's x_s, not x_VP) and flow times
``flow_t``, the flow time s (a number, a (B,) tensor, or a ``NoiseLevel``); computations run in float64 and the result
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
    "FlowTime",
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

FlowTime = torch.Tensor | float | NoiseLevel
"""Flow times s in [0, 1] (noise at 0): a number, a (B,) tensor, or a ``NoiseLevel``."""

VelocityModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A velocity field ``model(x, s) -> u``: x (B, ...) a flow state, s float64 (B,) flow times
in [0, 1] (noise at 0); what ``samplers.flow.flow_sample`` integrates."""


def _flow_t(flow_t: FlowTime, x: torch.Tensor, low: float, high: float):
    """Flow times as float64 (B, 1, ..., 1) (or a 0-d tensor) on x's device, checked to lie in [low, high]."""
    if isinstance(flow_t, NoiseLevel):
        flow_t = flow_t.flow_time_noise_at_0()
    if isinstance(flow_t, bool) or not isinstance(flow_t, (int, float, torch.Tensor)):
        raise TypeError(
            f"flow_t must be a flow time (number, tensor or NoiseLevel), got {type(flow_t)}"
        )
    flow_t = torch.as_tensor(flow_t, dtype=torch.float64).to(device=x.device, dtype=torch.float64)
    if flow_t.ndim > 1 or (flow_t.ndim == 1 and flow_t.shape[0] != x.shape[0]):
        raise ValueError(
            f"flow_t must be a number or have shape ({x.shape[0]},) (one flow time per example), "
            f"got {tuple(flow_t.shape)}"
        )
    if flow_t.numel() and (torch.isnan(flow_t).any() or flow_t.min() < low or flow_t.max() > high):
        raise ValueError(
            f"flow_t must be flow times in [{low:g}, {high:g}] (0 = noise, 1 = data), got values in "
            f"[{flow_t.min().item():.6g}, {flow_t.max().item():.6g}]"
        )
    return expand_like(flow_t, x.to(torch.float64))  # (B, 1, ..., 1) float64


def _pair(x: torch.Tensor, name: str, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_finite("x", check_float_tensor("x", x))
    check_finite(name, check_float_tensor(name, pred))
    check_same_shape("x", x, name, pred)
    return x.to(torch.float64), pred.to(torch.float64)


# --- The VP <-> flow map -------------------------------------------------------------------


def vp_scale(flow_t: FlowTime) -> torch.Tensor:
    """a + b = 1 / sqrt(s^2 + (1 - s)^2): x_VP = (a + b) x_FM at flow time s = a / (a + b).

    float64, shaped like ``flow_t``. Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    if isinstance(flow_t, NoiseLevel):
        flow_t = flow_t.flow_time_noise_at_0()
    flow_t = torch.as_tensor(flow_t, dtype=torch.float64)
    return torch.rsqrt(flow_t**2 + (1 - flow_t) ** 2)


def vp_from_flow(x: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """x_VP = (a + b) x: the VP state at alpha_bar = a^2 = s^2 / (s^2 + (1 - s)^2).

    Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    check_float_tensor("x", x)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    return (vp_scale(s) * x.to(torch.float64)).to(x.dtype)


def flow_from_vp(x_vp: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
    """x_FM = x_VP / (a + b), the linear path's state at flow time ``level.flow_time_noise_at_0()``.

    ``level`` is the VP state's noise level, e.g. ``NoiseLevel.from_t(t, schedule)`` or
    ``NoiseLevel.from_alpha_bar(alpha_bar)``. Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4.1.
    """
    check_float_tensor("x_vp", x_vp)
    if not isinstance(level, NoiseLevel):
        raise TypeError(f"level must be a NoiseLevel, got {type(level).__name__}")
    s = _flow_t(level, x_vp, 0.0, 1.0)
    return (x_vp.to(torch.float64) / vp_scale(s)).to(x_vp.dtype)


# --- Conversions at flow time s (x = s x_0 + (1 - s) eps) ------------------------------


def u_from_eps(x: torch.Tensor, eps: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """u = (x - eps) / s (= x0_hat - eps with x0_hat = (x - (1 - s) eps) / s); s in (0, 1]."""
    xd, e = _pair(x, "eps", eps)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    if (s == 0).any():
        raise ValueError(
            "flow_t must be > 0 to read u from eps: at flow_t = 0 the state holds no data"
        )
    return ((xd - e) / s).to(x.dtype)


def eps_from_u(x: torch.Tensor, u: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """eps = x - s u; s in [0, 1]. Book: Flow matching (Part 4)."""
    xd, ud = _pair(x, "u", u)
    return (xd - _flow_t(flow_t, x, 0.0, 1.0) * ud).to(x.dtype)


def u_from_x0(x: torch.Tensor, x_0: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """u = (x_0 - x) / (1 - s) (= x_0 - eps with eps = (x - s x_0) / (1 - s)); s in [0, 1)."""
    xd, x0 = _pair(x, "x_0", x_0)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    if (s == 1).any():
        raise ValueError(
            "flow_t must be < 1 to read u from x_0: at flow_t = 1 the state holds no noise"
        )
    return ((x0 - xd) / (1 - s)).to(x.dtype)


def x0_from_u(x: torch.Tensor, u: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """x0_hat = x + (1 - s) u: one Euler step to s = 1; s in [0, 1]."""
    xd, ud = _pair(x, "u", u)
    return (xd + (1 - _flow_t(flow_t, x, 0.0, 1.0)) * ud).to(x.dtype)


def v_from_u(x: torch.Tensor, u: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """v = a eps - b x0_hat = (2 s - 1) x_VP - u / (a + b), the v-prediction of the VP state; s in [0, 1].

    With a = s (a + b), b = (1 - s)(a + b) and eps = x - s u, x0_hat = x + (1 - s) u.
    Book: Flow matching (Part 4). Salimans & Ho 2022, sec. 4 (v).
    """
    xd, ud = _pair(x, "u", u)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    c = vp_scale(s)  # a + b
    return ((2 * s - 1) * c * xd - ud / c).to(x.dtype)


def u_from_v(x: torch.Tensor, v: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """u = (a + b) ((2 s - 1) x_VP - v), x_VP = (a + b) x: the inverse of :func:`v_from_u`."""
    xd, vd = _pair(x, "v", v)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    c = vp_scale(s)
    return (c * ((2 * s - 1) * c * xd - vd)).to(x.dtype)


def score_from_u(x: torch.Tensor, u: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """grad_x log p_s(x) = -(x - s u) / (1 - s) = -eps_hat / (1 - s); s in [0, 1).

    The score of the flow state's density; the VP state's score is this divided by a + b.
    Book: Flow matching (Part 4). Lipman et al. 2023; Song et al. 2021 (score).
    """
    xd, ud = _pair(x, "u", u)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    if (s == 1).any():
        raise ValueError(
            "flow_t must be < 1 for the score: at flow_t = 1 the noise scale 1 - flow_t is 0"
        )
    return (-(xd - s * ud) / (1 - s)).to(x.dtype)


def u_from_score(x: torch.Tensor, score: torch.Tensor, flow_t: FlowTime) -> torch.Tensor:
    """u = (x + (1 - s) score) / s; s in (0, 1]."""
    xd, sc = _pair(x, "score", score)
    s = _flow_t(flow_t, x, 0.0, 1.0)
    if (s == 0).any():
        raise ValueError(
            "flow_t must be > 0 to read u from the score: at flow_t = 0 it is unbounded"
        )
    return ((xd + (1 - s) * sc) / s).to(x.dtype)

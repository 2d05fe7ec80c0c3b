"""Networks as velocity fields: the book time a network reads, the wrappers, the flow-matching loss.

A network trained by the package reads a state at one of its book times t in [1, T]
(:func:`flow_network_input`): the VP state (a + b) x and the fractional book time of the same
noise level. An eps-network becomes a velocity field with no training
(:func:`velocity_from_eps_model`); a network trained with the flow objective
(``config.prediction == "velocity"``, ``--objective flow``) outputs u (:func:`velocity_model`).
The linear schedule with T = 1000 covers flow times s_min ~ 0.0064 to s_max ~ 0.990 only; outside,
the network reads the state at the nearest covered flow time. Conventions (s = 0 at noise):
:mod:`diffusion_tutorial.core.flow`.

Book: Flow matching (Part 4). Lipman et al. 2023, eq. 23 (conditional flow matching);
Karras et al. 2022, Table 1 (c_in).
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_model_output,
    expand_like,
)
from diffusion_tutorial.core.flow import VelocityModel, _flow_t, u_from_eps, vp_scale
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.core.time import NoiseLevel

__all__ = [
    "flow_time_range",
    "uniform_flow_times",
    "flow_network_input",
    "velocity_from_eps_model",
    "velocity_model",
    "flow_matching_loss",
]


def flow_time_range(schedule: NoiseSchedule) -> tuple[float, float]:
    """(s_min, s_max): the flow times of book times T and 1 (s_min < s_max), the range a network of ``schedule`` covers.

    About (0.0064, 0.990) for the linear schedule with T = 1000.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    lo, hi = NoiseLevel.from_lam(schedule.lam[[schedule.T, 1]]).flow_time_noise_at_0().tolist()
    return lo, hi


def uniform_flow_times(
    n: int,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """s ~ U[s_min, s_max] (:func:`flow_time_range`), float64 (n,) on ``device``: the flow times of
    :func:`flow_matching_loss`. Drawn on ``generator``'s device (``device`` without one)."""
    lo, hi = flow_time_range(schedule)
    draw_on = generator.device if generator is not None else device
    r = torch.rand(n, generator=generator, device=draw_on, dtype=torch.float64)  # (n,)
    return lo + (hi - lo) * r.to(device)


def flow_network_input(
    x: torch.Tensor, flow_t: torch.Tensor | float, schedule: NoiseSchedule
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a book network reads at flow time s: (x_VP = (a + b) x, fractional book time t, s used).

    t is the book time of the same noise level (``NoiseLevel.from_flow_time_noise_at_0(s).t``),
    not s T: the time embedding then means what it meant for the eps-model (one network, every
    reading), while s T would put book time 500 at s = 0.5, where alpha_bar = 1/2, not at
    alpha_bar_500 = 0.08. The input scale a + b is EDM's c_in for unit-variance data (the flow
    state's variance s^2 + (1 - s)^2 becomes 1).
    Ends: flow times outside [s_min, s_max] (``flow_time_range``) are clamped to it, i.e. the
    network reads the state as if it were at the nearest covered time: at s = 0 the noise is
    read as x_T, as DDIM does. Returns x_VP in x's dtype, t as float64 (B,) when x is float64,
    else float32, and the clamped s (float64 (B,)).
    """
    check_float_tensor("x", x)
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (B, ...), got a scalar")
    flow_t = _flow_t(flow_t, x, 0.0, 1.0).reshape(-1).expand(x.shape[0])  # (B,)
    lo, hi = flow_time_range(schedule)
    flow_t = flow_t.clamp(lo, hi)
    level = NoiseLevel.from_flow_time_noise_at_0(flow_t.cpu())
    t = level.t(schedule).clamp(1, schedule.T)  # (B,) float64; the clamp only absorbs rounding
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_vp = (expand_like(vp_scale(flow_t), x.to(torch.float64)) * x.to(torch.float64)).to(x.dtype)
    return x_vp, t.to(device=x.device, dtype=t_dtype), flow_t


def _prediction(model: object) -> str | None:
    """``model.config.prediction`` of a package network ("eps" or "velocity"), else None."""
    config = getattr(model, "config", None)
    return getattr(config, "prediction", None) if isinstance(model, nn.Module) else None


def velocity_from_eps_model(model: Model, schedule: NoiseSchedule) -> VelocityModel:
    """The velocity field of an eps-model, no training: u(x, s) = (x - eps_hat) / s = x0_hat - eps_hat.

    eps_hat = model((a + b) x, t) at the book time t of flow time s (``flow_network_input``:
    s is clamped to [s_min, s_max], where the model was trained). Euler's method on this field,
    on the flow times of DDIM's grid, is deterministic DDIM (``samplers.flow``).
    Book: Flow matching (Part 4). Lipman et al. 2023, eq. 20 (Gaussian paths).
    """
    if _prediction(model) not in (None, "eps"):
        raise TypeError(
            f"model predicts {_prediction(model)!r}, not eps: a network trained with the flow "
            "objective is read by velocity_model(net, schedule)"
        )
    if not callable(model):
        raise TypeError(f"model must be a function model(x_t, t) -> eps_hat, got {type(model)}")

    def velocity(x: torch.Tensor, flow_t: torch.Tensor) -> torch.Tensor:
        x_vp, t, flow_t_in = flow_network_input(x, flow_t, schedule)
        eps_hat = check_model_output(model(x_vp, t), x_vp, t)  # (B, ...)
        return u_from_eps(x, eps_hat.to(x.dtype), flow_t_in)

    return velocity


def velocity_model(net: nn.Module, schedule: NoiseSchedule) -> VelocityModel:
    """A network trained with the flow objective as a velocity field: u(x, s) = net((a + b) x, t).

    ``net.config.prediction`` must be ``"velocity"`` (``--objective flow``); an eps-network is
    refused (read it with :func:`velocity_from_eps_model`). The input map is
    :func:`flow_network_input`, the same as in training (:func:`flow_matching_loss`).
    Book: Flow matching (Part 4).
    """
    if _prediction(net) != "velocity":
        raise TypeError(
            f"net must be a network trained with the flow objective (config.prediction = "
            f"'velocity'), got prediction {_prediction(net)!r}: an eps-model becomes a velocity "
            "field with velocity_from_eps_model(model, schedule)"
        )

    def velocity(x: torch.Tensor, flow_t: torch.Tensor) -> torch.Tensor:
        x_vp, t, _ = flow_network_input(x, flow_t, schedule)
        return check_model_output(net(x_vp, t), x_vp, t).to(x.dtype)

    return velocity


def flow_matching_loss(
    model: Model,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    flow_t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_FM = E_{s, eps} || (x_0 - eps) - u_theta(x_s, s) ||^2, x_s = s x_0 + (1 - s) eps.

    s ~ U[s_min, s_max] (:func:`uniform_flow_times`: the flow times the network's book-time
    input covers), then eps ~ N(0, I), both from ``generator``. ``flow_t`` (B,) overrides the
    draw of s; ``noise``, shaped like x_0, is the eps paired with each x_0 by a coupling other
    than the independent one (e.g. ``training.flow_toy.minibatch_ot_pairs``, reflow's pairs).
    The network reads ``flow_network_input``: (a + b) x_s and the matching fractional book time.
    Returns the mean over the batch and all dimensions, like ``simple_loss``.
    Book: Flow matching (Part 4). Lipman et al. 2023, eq. 23 (conditional flow matching).
    """
    check_finite("x_0", check_float_tensor("x_0", x_0))
    if x_0.ndim < 1 or x_0.shape[0] == 0:
        raise ValueError(f"x_0 must be a batch (B, ...) with B >= 1, got shape {tuple(x_0.shape)}")
    B = x_0.shape[0]
    if flow_t is None:
        flow_t = uniform_flow_times(B, schedule, generator=generator, device=x_0.device)  # (B,)
    else:
        flow_t = _flow_t(flow_t, x_0, 0.0, 1.0).reshape(-1).expand(B)
    if noise is None:
        eps = randn_like(x_0, generator)  # (B, ...)
    else:
        eps = check_finite("noise", check_float_tensor("noise", noise))
        if eps.shape != x_0.shape:
            raise ValueError(
                f"noise must have the shape of x_0 {tuple(x_0.shape)}, got {tuple(eps.shape)}"
            )
    s = expand_like(flow_t, x_0)  # (B, 1, ..., 1) in x_0's dtype
    x_s = s * x_0 + (1 - s) * eps  # (B, ...)
    x_vp, t, _ = flow_network_input(x_s, flow_t, schedule)
    u_hat = check_model_output(model(x_vp, t), x_vp, t)  # (B, ...)
    return torch.mean((u_hat - (x_0 - eps)) ** 2)

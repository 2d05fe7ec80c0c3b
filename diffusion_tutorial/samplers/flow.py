"""Flow samplers: Euler and Heun on dx/ds = u(x, s), from noise at flow time 0 to data at 1.

``model(x, s) -> u`` is a velocity field (``core.flow.VelocityModel``), s float64 (B,) flow
times with noise at 0 (Lipman et al. 2023, Liu et al. 2023; SD3 and minRF run 1 -> 0 instead).
A package network is wrapped first, so that the sampler never guesses how it reads time:
``core.flow_matching.velocity_model(net, schedule)`` for a network trained with the flow objective,
``core.flow_matching.velocity_from_eps_model(model, schedule)`` for an eps-model (passing a bare network
is refused). The pair ``(net, schedule)`` that ``pretrained.load`` returns is wrapped the same
way, by what ``net.config.prediction`` says it predicts, so
``flow_sample(pretrained.load("mnist-flow"), x, steps=20)`` works. Both feed the network the book time of the same noise level (not s T) and read
flow times outside the schedule's range [s_min, s_max] ~ [0.0064, 0.990] at the nearest end.

Ends: the grid runs from s_0 (default 0: ``x_noise`` is pure noise) to 1, and u is never
evaluated at s = 1: Euler's last step uses u at the last grid time before 1, and Heun's last
step is Euler alone (as EDM's Heun ends), so ``steps`` steps cost ``steps`` model calls
(Euler) or 2 steps - 1 (Heun). Euler from s to 1 returns x0_hat = x + (1 - s) u, the same
last step as DDIM's return of x0_hat at t = 0.

Euler on ``velocity_from_eps_model`` on the flow times of DDIM's book times
(:func:`flow_timesteps`), started from x_T / (a_T + b_T), is deterministic DDIM (eta = 0)
written in flow coordinates: x_VP = (a + b) x at every grid time.

Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4; Liu et al. 2023; Karras et al. 2022,
Algorithm 1 (Heun with an Euler last step).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from diffusion_tutorial.checks import check_finite, check_float_tensor, check_positive_int
from diffusion_tutorial.core.flow import VelocityModel, u_from_x0, x0_from_u
from diffusion_tutorial.core.flow_matching import velocity_from_eps_model, velocity_model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.samplers.common import Callback, TimestepFn, progress_bar, resolve_timesteps
from diffusion_tutorial.samplers.timesteps import leading_timesteps

__all__ = ["flow_sample", "flow_timesteps", "FLOW_METHODS"]

FLOW_METHODS = ("euler", "heun")


def flow_timesteps(
    schedule: NoiseSchedule, steps: int, timesteps: TimestepFn = leading_timesteps
) -> torch.Tensor:
    """The flow times s_i = a / (a + b) of a book-time grid (``timesteps(schedule, steps)``), float64 (steps + 1,).

    Increasing from s(t_0) to s(0) = 1: the grid on which Euler is the integer-t sampler's
    DDIM (``NoiseLevel.from_t(t, schedule).flow_time_noise_at_0()``).
    """
    ts = resolve_timesteps(timesteps, schedule, steps)
    t = torch.tensor(ts, dtype=torch.float64)  # (steps + 1,) book times, T ... 0
    return NoiseLevel.from_t(t, schedule).flow_time_noise_at_0()


def _grid(steps: int, timesteps: torch.Tensor | Sequence[float] | None) -> list[float]:
    """``steps + 1`` strictly increasing flow times in [0, 1] ending at 1 (default: uniform from 0)."""
    check_positive_int("steps", steps)
    if timesteps is None:
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    if isinstance(timesteps, torch.Tensor):
        if not timesteps.dtype.is_floating_point or timesteps.ndim != 1:
            raise TypeError(
                f"timesteps must be a 1-D float tensor of flow times, got {timesteps.dtype} of "
                f"shape {tuple(timesteps.shape)}"
            )
        flow_ts = timesteps.to(torch.float64).tolist()
    elif isinstance(timesteps, Sequence) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in timesteps
    ):
        flow_ts = [float(v) for v in timesteps]
    else:
        raise TypeError(
            "timesteps must be None, a 1-D float tensor or a sequence of flow times "
            f"(a callable grid rule is not accepted: use flow_timesteps), got {type(timesteps)}"
        )
    ok = len(flow_ts) == steps + 1 and flow_ts[0] >= 0 and flow_ts[-1] == 1
    if not ok or any(not a < b for a, b in zip(flow_ts, flow_ts[1:], strict=False)):
        raise ValueError(
            f"timesteps must hold steps + 1 = {steps + 1} strictly increasing flow times from >= 0 "
            f"to exactly 1 (noise at 0, data at 1), got {len(flow_ts)} values "
            f"{flow_ts[:3]}...{flow_ts[-2:]}"
        )
    return flow_ts


def _velocity(
    model: VelocityModel, x: torch.Tensor, flow_t: float, clip_x0: bool = False
) -> torch.Tensor:
    """u = model(x, s) with s as float64 (B,), checked: a finite tensor shaped like x.

    With ``clip_x0`` the implied x0_hat = x + (1 - s) u is clipped to [-1, 1] and u recomputed
    from it (the flow form of the eps-samplers' ``clip_x0``)."""
    flow_t_batch = torch.full((x.shape[0],), flow_t, dtype=torch.float64, device=x.device)  # (B,)
    u = model(x, flow_t_batch)
    if not isinstance(u, torch.Tensor) or u.shape != x.shape:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"model(x, flow_t) must return u shaped {tuple(x.shape)}, got {got}")
    if not torch.isfinite(u).all():
        raise ValueError(f"the model output u contains NaN or inf at flow_t = {flow_t:.6g}")
    u = u.to(x.dtype)
    if clip_x0:
        u = u_from_x0(x, x0_from_u(x, u, flow_t).clamp(-1.0, 1.0), flow_t)
    return u


def _as_velocity_field(model: object) -> object:
    """A (network, schedule) pair as ``pretrained.load`` returns it, wrapped by its
    ``config.prediction``; anything else unchanged (checked by :func:`_check_model`)."""
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], NoiseSchedule)):
        return model
    net, schedule = model
    pred = getattr(getattr(net, "config", None), "prediction", None)
    if not isinstance(net, nn.Module) or pred not in ("eps", "velocity"):
        raise TypeError(
            "model as a pair must be (network, schedule) with network.config.prediction 'eps' "
            f"or 'velocity', as pretrained.load returns; got ({type(net).__name__}, schedule) "
            f"with prediction {pred!r}"
        )
    return (
        velocity_model(net, schedule)
        if pred == "velocity"
        else velocity_from_eps_model(net, schedule)
    )


def _check_model(model: object) -> None:
    if isinstance(model, nn.Module) and hasattr(getattr(model, "config", None), "prediction"):
        pred = model.config.prediction
        wrap = (
            "velocity_model(net, schedule)"
            if pred == "velocity"
            else "velocity_from_eps_model(model, schedule)"
        )
        raise TypeError(
            f"flow_sample needs a velocity field u(x, flow_t) in flow time; model is a network "
            f"(prediction {pred!r}) that reads book times t: wrap it with "
            f"diffusion_tutorial.core.flow_matching.{wrap}"
        )
    if not callable(model):
        raise TypeError(f"model must be a velocity field model(x, flow_t) -> u, got {type(model)}")


@torch.no_grad()
def flow_sample(
    model: VelocityModel | tuple[nn.Module, NoiseSchedule],
    x_noise: torch.Tensor,
    *,
    steps: int,
    method: str = "euler",
    timesteps: torch.Tensor | Sequence[float] | None = None,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Integrate dx/ds = u(x, s) from s_0 to 1: Euler x' = x + h u, or Heun x' = x + h (u + u') / 2.

    h = s_{i+1} - s_i; Heun's u' = u(x + h u, s_{i+1}), except on the last step (to s = 1,
    never evaluated), so Heun costs 2 steps - 1 model calls and is second order (error ~ steps^-2),
    Euler first order. ``x_noise`` (B, ...) is the state at ``timesteps[0]``: pure noise at the
    default s_0 = 0. ``timesteps``: None (uniform, s_i = i / steps) or steps + 1 strictly
    increasing flow times ending at 1, e.g. :func:`flow_timesteps` of a book-time grid.
    ``callback(i, s, x, x0_hat)`` runs once per model call i with the flow time, the state and
    x0_hat = x + (1 - s) u. ``model`` must be a velocity field (a bare network is refused with
    the wrapper to use); see the module docstring for how the ends are handled.
    ``model`` may also be the (network, schedule) pair of ``pretrained.load``. ``clip_x0``:
    clip each x0_hat to [-1, 1] and step with the velocity it implies, as the eps-samplers'
    option does; Euler's last step then returns images exactly in [-1, 1].
    Book: Flow matching (Part 4). Lipman et al. 2023, sec. 4; Karras et al. 2022, Algorithm 1.
    """
    model = _as_velocity_field(model)
    _check_model(model)
    check_finite("x_noise", check_float_tensor("x_noise", x_noise))
    if x_noise.ndim < 1:
        raise ValueError("x_noise must have a batch dimension (B, ...), got a scalar")
    if method not in FLOW_METHODS:
        raise ValueError(f"method must be one of {list(FLOW_METHODS)}, got {method!r}")
    flow_ts = _grid(steps, timesteps)
    x = x_noise
    calls = 0
    for i in progress_bar(steps, progress, f"flow ({method})"):
        flow_t, flow_t_next = flow_ts[i], flow_ts[i + 1]
        h = flow_t_next - flow_t
        # Step 1: the velocity at (x, s) and Euler's step.
        u = _velocity(model, x, flow_t, clip_x0)
        if callback is not None:
            callback(calls, flow_t, x, x0_from_u(x, u, flow_t))
        calls += 1
        x_next = x + h * u  # (B, ...)
        # Step 2 (Heun): the trapezoidal correction with u at the Euler point, except into s = 1.
        if method == "heun" and flow_t_next < 1:
            u_next = _velocity(model, x_next, flow_t_next, clip_x0)
            if callback is not None:
                callback(calls, flow_t_next, x_next, x0_from_u(x_next, u_next, flow_t_next))
            calls += 1
            x_next = x + h * (u + u_next) / 2
        x = x_next
    return x

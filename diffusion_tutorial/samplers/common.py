"""What every sampler shares: the input check, the time grid, one model call, the DDIM step, the
``project`` hook and the progress bar.

Schedule coefficients are read as Python floats (float64) once per call, so each step costs a few
fused tensor operations in the dtype of ``x_T`` and no coefficient tensors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

import torch

from diffusion_tutorial.checks import (
    check_eps_model,
    check_finite,
    check_float_tensor,
    check_model_output,
    check_positive_int,
)
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.runtime import tqdm

__all__ = [
    "Model",
    "Callback",
    "TimestepFn",
    "check_start",
    "resolve_timesteps",
    "predict",
    "ddim_step",
    "check_projection",
    "apply_projection",
    "progress_bar",
]

Callback = Callable[[int, int | float, torch.Tensor, torch.Tensor], None]
"""``callback(i, t, x_t, x0_hat)``: called once per model evaluation i = 0, 1, ... at book time t
(an int; a float, fractional t, in the EDM samplers)."""

TimestepFn = Callable[[NoiseSchedule, int], torch.Tensor]
"""``timesteps(schedule, steps)`` -> int64 tensor (steps + 1,) from the top down to 0, see timesteps.py."""

Projection = Callable[[int | float, torch.Tensor], torch.Tensor]
"""``project(s, x_s) -> x_s``: called by a sampler on each new state x_s at book time s (down to 0;
a float, fractional s, in the EDM samplers)."""


def check_start(name: str, x: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Validate a sampler's input: a finite floating-point tensor with a batch dimension."""
    check_float_tensor(name, x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a scalar")
    check_finite(name, x)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return x


def resolve_timesteps(timesteps: TimestepFn, schedule: NoiseSchedule, steps: int) -> list[int]:
    """Call a step-spacing rule and check it: ``steps + 1`` strictly decreasing ints in T..0, ending at 0."""
    check_positive_int("steps", steps)
    if steps > schedule.T:
        raise ValueError(f"steps must be in 1..{schedule.T} (T), got {steps}")
    if not callable(timesteps):
        raise TypeError("timesteps must be a function (schedule, steps) -> int64 tensor")
    out = timesteps(schedule, steps)
    if not isinstance(out, (torch.Tensor, list, tuple)):
        raise TypeError(
            f"timesteps(schedule, steps) must return an int64 tensor or a list of ints, "
            f"got {type(out).__name__}"
        )
    if isinstance(out, (list, tuple)):  # check the items first: torch.as_tensor fails on
        # strings ("too many dimensions 'str'") and on ints beyond int64 ("Overflow ...")
        out = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in out]
        bad = [v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise TypeError(
                f"timesteps(schedule, steps) must return integer book times, got "
                f"{type(bad[0]).__name__} values such as {bad[:3]!r} (round them yourself: "
                "never truncated)"
            )
    else:
        if out.dtype.is_floating_point or out.dtype.is_complex or out.dtype == torch.bool:
            raise TypeError(
                f"timesteps(schedule, steps) must return integer book times, got {out.dtype} "
                f"values such as {out.reshape(-1)[:3].tolist()} (round them yourself: never "
                "truncated)"
            )
        out = out.reshape(-1).tolist()
    ts = [int(v) for v in out]
    ok = len(ts) == steps + 1 and ts[0] <= schedule.T and ts[-1] == 0
    if not ok or any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(
            f"timesteps must return {steps + 1} strictly decreasing times from <= {schedule.T} to 0, "
            f"got {ts[:5]}...{ts[-3:]}"
        )
    return ts


def predict(
    model: Model, x_t: torch.Tensor, t: int, alpha_bar_t: float, clip_x0: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model call: eps_hat = model(x_t, t) and x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar_t).

    With ``clip_x0`` the prediction is clipped to [-1, 1] and eps_hat recomputed from it,
    eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sigma_t, so that both stay consistent. The model
    output is checked once (shape and finiteness, the error names t); a ``sqrt(alpha_bar_t)`` so
    small that 1 / sqrt(alpha_bar_t) overflows the dtype of ``x_t`` is an error, not an inf.
    Book: Reverse process (Part 2). Ho et al. 2020, eq. 15.
    """
    sqrt_alpha_bar, sigma = math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t)
    if 1 / sqrt_alpha_bar > torch.finfo(x_t.dtype).max:
        raise ValueError(
            f"sqrt(alpha_bar_t) = {sqrt_alpha_bar:.2e} at t={t} is too small for {x_t.dtype}: "
            f"x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar_t) would overflow; sample in "
            f"float64 or start at a smaller t (a custom timesteps function)"
        )
    check_eps_model(model)  # a velocity network is refused, not misread
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.int64, device=x_t.device)  # (B,)
    eps_hat = check_model_output(model(x_t, t_batch), x_t, t).to(x_t.dtype)
    x0_hat = (x_t - sigma * eps_hat) / sqrt_alpha_bar  # (B, ...)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = (x_t - sqrt_alpha_bar * x0_hat) / sigma
    return eps_hat, x0_hat


def ddim_step(
    x0_hat: torch.Tensor,
    eps_hat: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_s: float,
    eta: float,
    generator: torch.Generator | None = None,
    *,
    noise: bool = True,
) -> torch.Tensor:
    """DDIM step from t to s: x_s = sqrt(alpha_bar[s]) x0_hat + sqrt(1 - alpha_bar[s] - ddim_sigma^2) eps_hat + ddim_sigma z.

    ddim_sigma = eta sqrt((1 - alpha_bar[s]) / (1 - alpha_bar[t])) sqrt(1 - alpha_bar[t] / alpha_bar[s]).
    The package's one posterior step: eta = 1 samples the DDPM posterior q(x_s | x_t, x0_hat) (the
    DDPM step is s = t - 1, RePaint's down-steps any s < t), eta = 0 is deterministic DDIM (also
    run upwards, s > t, by DDIM inversion). z ~ N(0, I) is drawn from ``generator`` only when
    ddim_sigma > 0 (never on the step to s = 0, where ddim_sigma = 0), so a sampler's noise stream
    is one draw per noisy step. ``noise=False`` returns the mean (the step without its z term).
    Coefficients are Python floats; the result has the dtype of ``x0_hat``.
    Book: Fast sampling (Part 3). Song et al. 2021 (DDIM), eqs. 12 and 16.
    """
    if not 0 <= eta <= 1 or (eta > 0 and not alpha_bar_t < alpha_bar_s):
        raise ValueError(
            f"ddim_step needs eta in [0, 1], and alpha_bar_t < alpha_bar_s (a step down in noise) "
            f"when eta > 0; got eta = {eta}, alpha_bar_t = {alpha_bar_t}, alpha_bar_s = {alpha_bar_s}"
        )
    # Step 1: the noise level of the step (eq. 16); eta = 0 skips it (also for s > t, inversion).
    ddim_sigma = 0.0
    if eta > 0:
        ddim_sigma = eta * math.sqrt(
            (1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)
        )
    # Step 2: jump to s along the predicted x_0 and the predicted noise direction (eq. 12);
    # eta <= 1 keeps 1 - alpha_bar[s] >= ddim_sigma^2 (max(...) only absorbs rounding).
    direction = math.sqrt(max(1 - alpha_bar_s - ddim_sigma**2, 0.0))
    x_s = math.sqrt(alpha_bar_s) * x0_hat + direction * eps_hat  # (B, ...)
    # Step 3: fresh noise of standard deviation ddim_sigma.
    if noise and ddim_sigma > 0:
        x_s = x_s + ddim_sigma * randn_like(x_s, generator)
    return x_s


def check_projection(project: object, *, required: bool = False) -> Projection | None:
    """Return ``project`` if it is None (and not ``required``) or a function, or raise ``TypeError``.

    Called before a sampler's first model call, so that a wrong hook fails at once.
    """
    if project is None and not required:
        return None
    if not callable(project):
        optional = "" if required else " (or None)"
        raise TypeError(
            f"project must be a function project(s, x_s) -> x_s{optional}, got "
            f"{type(project).__name__}"
        )
    return project


def apply_projection(project: Projection | None, s: int, x_s: torch.Tensor) -> torch.Tensor:
    """``project(s, x_s)``, checked like a model output: a finite tensor shaped like ``x_s``, or raise.

    A floating-point result in another dtype (a hook that computes in float64) is cast to the
    sampler's dtype, the dtype of ``x_T``, so that the hook never changes the output dtype; an
    integer, bool or complex result, another device, another shape, NaN or inf is an error that
    names the hook and the time s. ``project=None`` returns ``x_s`` unchanged.
    """
    if project is None:
        return x_s
    out = project(s, x_s)
    where = f"project(s, x_s) returned {{}} at s = {s}"
    if out is None:
        raise TypeError(where.format("None") + ": it must return the projected state x_s")
    if not isinstance(out, torch.Tensor):
        raise TypeError(where.format(f"a {type(out).__name__}") + ": it must return a tensor")
    if out.shape != x_s.shape:
        raise ValueError(
            where.format(f"shape {tuple(out.shape)}")
            + f": it must keep the state's shape {tuple(x_s.shape)}"
        )
    if not out.dtype.is_floating_point or out.device != x_s.device:
        raise TypeError(
            where.format(f"a {out.dtype} tensor on {out.device}")
            + f": it must return a floating-point tensor on {x_s.device}"
        )
    if not torch.isfinite(out).all():
        raise ValueError(where.format("NaN or inf") + " (the model output was finite)")
    return out.to(x_s.dtype)


def progress_bar(n: int, progress: bool, desc: str) -> Iterable[int]:
    """``range(n)``, wrapped in a tqdm bar unless ``progress`` is False."""
    if not progress:
        return range(n)
    return tqdm(range(n), desc=desc, leave=False)

"""Argument checks and the one broadcasting helper the package uses.

Every public function validates its input with these helpers, so that bad input gives a
clear ``ValueError``/``TypeError`` naming the argument and the allowed range, never a NaN.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "expand_like",
    "check_positive_int",
    "check_int_in_range",
    "check_float_in_range",
    "check_float_tensor",
    "check_finite",
    "check_same_shape",
    "check_time_indices",
    "check_model_output",
]


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector ``v`` of shape (B,) to (B, 1, ..., 1) so it broadcasts over ``x``.

    Also moves ``v`` to ``x``'s device and dtype. The only broadcasting helper in the package.
    """
    v = torch.as_tensor(v, device=x.device, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))  # (B, 1, ..., 1)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    return check_int_in_range(name, value, 1, None)


def check_int_in_range(name: str, value: object, low: int, high: int | None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_float_in_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")
    return value


def check_float_tensor(name: str, x: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor (images must be scaled floats)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (e.g. images scaled to [-1, 1]), got {x.dtype}"
        )
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` contains NaN or infinity."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")
    return x


def check_model_output(eps_hat: object, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """Return the network's output ``eps_hat`` if it is a finite tensor shaped like ``x_t``, or raise.

    One ``torch.isfinite(...).all()`` per model evaluation, so a NaN or inf from the network stops
    the sampler (or the loss) at the step t where it appeared instead of travelling silently.
    """
    if not isinstance(eps_hat, torch.Tensor) or eps_hat.shape != x_t.shape:
        shape = (
            tuple(eps_hat.shape) if isinstance(eps_hat, torch.Tensor) else type(eps_hat).__name__
        )
        raise ValueError(
            f"model(x_t, t) must return a tensor of shape {tuple(x_t.shape)}, got {shape}"
        )
    if not torch.isfinite(eps_hat).all():
        if isinstance(t, torch.Tensor) and t.shape == eps_hat.shape[:1]:  # (B,): the bad rows' t
            t = sorted(set(t[~torch.isfinite(eps_hat.reshape(len(t), -1)).all(1)].tolist()))
        raise ValueError(f"the model output eps_hat contains NaN or inf at t={t}")
    return eps_hat


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` if two tensors that must match elementwise have different shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_time_indices(
    name: str,
    t: torch.Tensor | int,
    batch: int,
    low: int,
    high: int,
    device: torch.device,
    *,
    check_values: bool = True,
) -> torch.Tensor:
    """Return book time indices ``t`` as an int64 tensor (batch,) on ``device``, or raise.

    An int is broadcast to the batch; a float or bool tensor is a ``TypeError``; a wrong shape or
    (unless ``check_values=False``, which avoids waiting for a GPU) a value outside low..high is a
    ``ValueError``. The one time-index check behind ``schedules.check_timesteps`` and the models.
    """
    if isinstance(t, bool):
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({batch},), got bool")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.int64, device=device)
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an int or an integer tensor of shape ({batch},), got {t!r:.60}"
        )
    if t.is_complex() or t.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one time per example), got {tuple(t.shape)}"
        )
    if check_values and batch and (int(t.min()) < low or int(t.max()) > high):
        raise ValueError(
            f"{name} must be in {low}..{high}, got values in {int(t.min())}..{int(t.max())}"
        )
    return t.to(device=device, dtype=torch.int64)

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
    "check_values_in",
    "check_labels",
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


def check_eps_model(model: object) -> None:
    """Raise unless ``model`` may be an eps-predictor: a package network trained for another output
    (``config.prediction``, e.g. ``"velocity"`` from ``--objective flow``) is refused by name, not
    sampled into garbage. Plain callables (exact denoisers, wrappers) pass: they cannot be checked.
    """
    config = getattr(model, "config", None)
    prediction = getattr(config, "prediction", "eps")
    if prediction != "eps":
        raise ValueError(
            f"model predicts {prediction!r}, not eps, so the eps-samplers cannot use it; sample a "
            "velocity network with dt.flow_sample(dt.velocity_model(net, schedule), x, steps=...)"
        )


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

    The package's one time-index check (losses, forward process, parameterisations, networks).
    An int or a 0-d integer tensor is broadcast to the batch; a float, complex or bool value is a
    ``TypeError``; a wrong shape or (unless ``check_values=False``, which avoids waiting for a
    GPU) a value outside low..high is a ``ValueError``.
    """
    expected = f"an int or an integer tensor of shape ({batch},) holding book indices {low}..{high}"
    if isinstance(t, bool):
        raise TypeError(f"{name} must be {expected}, got bool")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.int64, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be {expected}, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be {expected}, got a {t.dtype} tensor")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one time per example), got {tuple(t.shape)}"
        )
    if check_values and batch and (int(t.min()) < low or int(t.max()) > high):
        raise ValueError(
            f"{name} must be in {low}..{high}, got values in {int(t.min())}..{int(t.max())}"
        )
    return t.to(device=device, dtype=torch.int64)


def check_values_in(
    name: str, x: torch.Tensor, low: float, high: float, *, tol: float = 0.0
) -> torch.Tensor:
    """Raise ``ValueError`` unless every value of ``x`` is finite and in [low - tol, high + tol].

    NaN fails the check (a plain ``x.min() < low`` test would let it through).
    """
    if x.numel() and not (
        torch.isfinite(x).all() and x.min() >= low - tol and x.max() <= high + tol
    ):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} must be finite and in [{low:g}, {high:g}], got NaN or inf")
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}] (tolerance {tol:g}), got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    return x


def check_labels(
    name: str,
    y: object,
    batch: int | None,
    high: int,
    device: torch.device | None = None,
    *,
    check_values: bool = True,
) -> torch.Tensor:
    """Return class labels as an int64 tensor (batch,) with values in 0..high, or raise.

    ``None``, floats and bools are a ``TypeError`` (a bool tensor is not a label); a wrong shape
    or (unless ``check_values=False``) a value outside 0..high is a ``ValueError``.
    ``batch=None`` accepts any length.
    """
    shape = f"({batch},)" if batch is not None else "(B,)"
    expected = f"an integer tensor of shape {shape} with class labels in 0..{high}"
    if not isinstance(y, torch.Tensor):
        if y is None or isinstance(y, (bool, int, float, str)):
            raise TypeError(f"{name} must be {expected}, got {type(y).__name__}")
        try:  # a list or a NumPy array of labels
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be {expected}, got {type(y).__name__}") from err
    if y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be {expected}, got a {y.dtype} tensor")
    if y.ndim != 1 or (batch is not None and y.shape[0] != batch):
        raise ValueError(f"{name} must be {expected}, got shape {tuple(y.shape)}")
    if check_values and y.numel() and (int(y.min()) < 0 or int(y.max()) > high):
        raise ValueError(
            f"{name} must hold class labels in 0..{high}, got values in "
            f"{int(y.min())}..{int(y.max())}"
        )
    return y.to(device=device if device is not None else y.device, dtype=torch.int64)

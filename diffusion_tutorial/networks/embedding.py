"""What every denoising network shares: the sinusoidal time embedding and the label check.

Times are checked by ``core.time.check_book_times``: integer book indices through the package's
one index validator, ``checks.check_time_indices``, or fractional book times (float tensors).
Book: Example: DDPM (Part 2). Vaswani et al. 2017 (sinusoidal embedding); Ho et al. 2020,
Appendix B.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_labels

__all__ = [
    "sinusoidal_embedding",
    "validate_y",
    "check_input_dtype",
    "check_prediction",
    "PREDICTIONS",
]

PREDICTIONS = ("eps", "velocity")
"""What a network's output can mean: the noise eps (L_simple) or the flow-matching velocity u."""


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10_000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map times t (B,) to [sin(t w_k), cos(t w_k)] with w_k = max_period**(-k/(dim/2)); (B, dim).

    ``t`` may be integer (book indices) or fractional (a float tensor): both are cast to the
    working dtype first, so a float tensor holding integer values gives the integer embedding
    bit for bit (float32 holds every integer up to 2**24 exactly).
    Computed in float32 (float64 when ``dtype`` is float64) and returned in ``dtype``, so a network
    cast with ``.double()`` or ``.half()`` gets an embedding in its own dtype; for float32 the
    result is the same, bit for bit, as before ``dtype`` existed.
    Book: Example: DDPM (Part 2). Vaswani et al. 2017, sec. 3.5.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=work)  # (dim/2,)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (dim/2,)
    angles = t.to(work)[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype)  # (B, dim)


def validate_y(
    y: torch.Tensor | None,
    batch: int,
    num_classes: int,
    device: torch.device,
    check_values: bool = True,
) -> torch.Tensor:
    """Return labels (B,) in 0..num_classes (num_classes = null class); None means all null.

    A bool or float tensor is a ``TypeError`` (see ``checks.check_labels``).
    """
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)  # (B,)
    y = check_labels("y", y, batch, num_classes, device, check_values=False)  # (B,) int64
    if check_values and batch and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"y must be class labels in 0..{num_classes - 1} (or {num_classes} = null class), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )
    return y


def check_input_dtype(x_t: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise ``TypeError`` when x_t and the network's weights differ in dtype (outside autocast).

    A network runs in the dtype it is cast to (``model.double()``, ``.half()``, ``.bfloat16()``);
    its input must match, or ``torch.autocast`` must be on.
    """
    if x_t.dtype != weight.dtype and not torch.is_autocast_enabled(x_t.device.type):
        raise TypeError(
            f"x_t has dtype {x_t.dtype} but the network's weights are {weight.dtype}: cast one "
            f"to the other (model.to(x_t.dtype) or x_t.to({weight.dtype})) or use torch.autocast"
        )


def check_prediction(prediction: object) -> str:
    """Return ``prediction`` if it is one of :data:`PREDICTIONS`, or raise naming them."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
    return prediction

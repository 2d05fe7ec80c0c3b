"""What every denoising network shares: the sinusoidal time embedding and checks of t and y.

Book: The denoising network. Vaswani et al. 2017 (sinusoidal embedding); Ho et al. 2020, Appendix B.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_time_indices

__all__ = ["sinusoidal_embedding", "validate_t", "validate_y"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Map times t (B,) to [sin(t w_k), cos(t w_k)] with w_k = max_period**(-k/(dim/2)); (B, dim).

    Book: The denoising network, eq. (time-embedding). Vaswani et al. 2017, sec. 3.5.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)  # (dim/2,)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (dim/2,)
    angles = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, dim)


def validate_t(
    t: torch.Tensor | int, batch: int, T: int, device: torch.device, check_values: bool = True
) -> torch.Tensor:
    """Return t as an int64 tensor (B,) of book indices, or raise ValueError outside 1..T.

    Unlike the samplers, a model also accepts integer-valued floats and a 0-d tensor (one time for
    the whole batch). ``check_values=False`` skips the range check, which waits for the GPU (used
    while training on CUDA, where the loss has already checked t).
    """
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("t must hold integer book indices 1..T, got non-integer values")
        t = t.long()
    if t.ndim == 0:
        t = t.expand(batch)
    return check_time_indices("t", t, batch, 1, T, device, check_values=check_values)  # (B,)


def validate_y(
    y: torch.Tensor | None,
    batch: int,
    num_classes: int,
    device: torch.device,
    check_values: bool = True,
) -> torch.Tensor:
    """Return labels (B,) in 0..num_classes (num_classes = null class); None means all null."""
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)  # (B,)
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.shape != (batch,):
        raise ValueError(
            f"y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}"
        )
    if check_values and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(
            f"y must be class labels in 0..{num_classes - 1} (or {num_classes} = null class), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )
    return y.long()  # (B,)

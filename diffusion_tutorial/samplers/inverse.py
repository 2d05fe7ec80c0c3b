"""Inverse problems with an unconditional model: projections for inpainting and super-resolution.

A projection ``project(s, x_s) -> x_s`` puts back what is known about the image after every step
of a sampler, at the noise level of the state it edits (book time s). Pass it to
``ddpm_sample(..., project=...)``, ``ddim_sample(..., project=...)`` or :func:`repaint_sample`.

- :func:`replacement_projection` (inpainting): the known pixels of x_s become the known pixels of
  x_0 noised to level s, x_s <- m * q_sample(x_known, s) + (1 - m) * x_s.
- :func:`ilvr_projection` (super-resolution): the low-pass part of x_s becomes that of the
  observation noised to level s, x_s <- x_s - phi(x_s) + phi(q_sample(up(y), s)), where
  phi = up(down(.)) averages over blocks of ``factor`` x ``factor`` pixels.

Conventions: images (B, C, H, W); a mask is 1 where the pixel is KNOWN (kept) and 0 where it is
to be filled (RePaint's convention; diffusers' inpainting pipelines use the opposite one).

Book: Inpainting and super-resolution (Part 4). Lugmayr et al. 2022 (RePaint), eq. 8;
Choi et al. 2021 (ILVR), Algorithm 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_tutorial.checks import (
    check_finite,
    check_float_tensor,
    check_int_in_range,
    check_time_indices,
)
from diffusion_tutorial.core.forward import q_sample
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import Projection

__all__ = [
    "Projection",
    "check_mask",
    "check_scale_factor",
    "downsample",
    "upsample",
    "low_pass",
    "replacement_projection",
    "ilvr_projection",
]


def check_mask(mask: object, x: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a bool tensor that broadcasts over ``x`` (True = known pixel), or raise.

    The mask must be a tensor with ``x.ndim`` dimensions, each equal to x's or 1; its values must
    be exactly 0 or 1 (bool, integer or float); and every example must have at least one known
    and one unknown pixel (all known: nothing to fill; all unknown: plain unconditional sampling).
    """
    allowed = "exactly 0 (to fill) or 1 (known)"
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor with values {allowed}, got {type(mask).__name__}"
        )
    ok_shape = mask.ndim == x.ndim and all(
        m in (1, n) for m, n in zip(mask.shape, x.shape, strict=False)
    )
    if not ok_shape:
        raise ValueError(
            f"mask must have shape {tuple(x.shape)} or broadcast to it with 1s (e.g. "
            f"(1, 1, {', '.join(str(n) for n in x.shape[2:])})), got {tuple(mask.shape)}"
        )
    m = mask.detach()
    if m.dtype != torch.bool:
        if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            hint = ""
            if not m.is_complex() and m.numel() and float(m.max()) > 1:
                hint = " (it looks like a [0, 255] image: use mask > 127, or mask / 255 if it is 0/255)"
            lo, hi = (float(m.min()), float(m.max())) if not m.is_complex() else (0, 0)
            raise ValueError(f"mask values must be {allowed}, got values in [{lo:g}, {hi:g}]{hint}")
        m = m == 1
    known = m.expand(x.shape[0] if m.shape[0] == 1 else m.shape[0], *m.shape[1:]).flatten(1)
    if bool(known.all(1).any()):
        raise ValueError("mask marks every pixel of an example as known (all 1): nothing to fill")
    if not bool(known.any(1).all()):
        raise ValueError(
            "mask marks no pixel of an example as known (all 0): that is unconditional sampling "
            "(or an inverted mask: here 1 = known, 0 = to fill)"
        )
    return m.to(x.device)


def check_scale_factor(factor: object, size: tuple[int, int]) -> int:
    """Return ``factor`` if it is an int >= 2 that divides both image sides ``size``, or raise."""
    h, w = size
    allowed = [f for f in range(2, min(h, w) + 1) if h % f == 0 and w % f == 0]
    if isinstance(factor, bool) or not isinstance(factor, int):
        raise TypeError(f"factor must be an int in {allowed}, got {type(factor).__name__}")
    if factor not in allowed:
        raise ValueError(
            f"factor must be one of {allowed} (ints >= 2 that divide the image size {h}x{w}), "
            f"got {factor}"
        )
    return factor


def _check_images(name: str, x: object) -> torch.Tensor:
    check_float_tensor(name, x)
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}"
        )
    return x


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling: (B, C, H, W) -> (B, C, H / factor, W / factor), the mean of each block.

    Book: Inpainting and super-resolution (Part 4). Choi et al. 2021 (ILVR), sec. 3.1 (phi_N).
    """
    x = _check_images("x", x)
    factor = check_scale_factor(factor, tuple(x.shape[-2:]))
    return F.avg_pool2d(x, factor)


def upsample(y: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling: each pixel becomes a ``factor`` x ``factor`` block (the
    adjoint of :func:`downsample` up to a factor factor^2, and its right inverse: down(up(y)) = y).
    """
    y = _check_images("y", y)
    check_int_in_range("factor", factor, 2, None)
    return y.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """phi(x) = up(down(x)): every pixel replaced by the mean of its block, an orthogonal projection
    (phi(phi(x)) = phi(x), and x - phi(x) has zero mean on every block).

    Book: Inpainting and super-resolution (Part 4). Choi et al. 2021 (ILVR), sec. 3.1.
    """
    return upsample(downsample(x, factor), factor)


def _check_schedule(schedule: object) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")


def _check_state(s: int, x_s: torch.Tensor, shape: torch.Size, schedule: NoiseSchedule) -> None:
    check_time_indices("s", s, 1, 0, schedule.T, x_s.device)
    if x_s.shape != shape:
        raise ValueError(
            f"the sampler's state has shape {tuple(x_s.shape)}, expected {tuple(shape)}"
        )


def replacement_projection(
    x_known: torch.Tensor,
    mask: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> Projection:
    """Inpainting by replacement: project(s, x_s) = m * (sqrt(alpha_bar[s]) x_known + sigma_s eps) + (1 - m) * x_s.

    The known pixels are noised to the level s of the state they replace (fresh eps at each call,
    drawn from ``generator``); at s = 0 they are pasted exactly. ``x_known`` (B, C, H, W) holds
    the observed images (their values where ``mask`` = 0 are ignored; any shape (B, ...), images or points); ``mask`` is 1 = known, 0 = to
    fill, checked by :func:`check_mask`.
    Book: Inpainting and super-resolution, eqs. (eq-inv-known-marginal), (eq-inv-replacement).
    Lugmayr et al. 2022 (RePaint), eq. 8.
    """
    x_known = check_finite("x_known", check_float_tensor("x_known", x_known))
    _check_schedule(schedule)
    if x_known.ndim < 2:
        raise ValueError(
            f"x_known must have a batch dimension (B, ...), got shape {tuple(x_known.shape)}"
        )
    known = check_mask(mask, x_known)  # bool, broadcasts over x_known

    def project(s: int, x_s: torch.Tensor) -> torch.Tensor:
        _check_state(s, x_s, x_known.shape, schedule)
        noised = q_sample(x_known.to(x_s.dtype), s, schedule, generator=generator)  # (B, C, H, W)
        return torch.where(known, noised, x_s)

    return project


def ilvr_projection(
    y: torch.Tensor,
    factor: int,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> Projection:
    """Super-resolution by ILVR: project(s, x_s) = x_s - phi(x_s) + phi(q_sample(up(y), s)), phi = low_pass.

    ``y`` (B, C, h, w) is the low-resolution observation, the block means of the unknown image;
    the sampler's states must have size (h * factor, w * factor). phi of the noised observation
    is sqrt(alpha_bar[s]) up(y) + sigma_s phi(eps): its noise is the block mean of full-resolution
    noise (variance sigma_s^2 / factor^2), not fresh noise at low resolution. At s = 0 the result
    satisfies down(x_0) = y up to rounding.
    Book: Inpainting and super-resolution, eq. (eq-inv-ilvr). Choi et al. 2021 (ILVR), Algorithm 1.
    """
    y = check_finite("y", _check_images("y", y))
    factor = check_int_in_range("factor", factor, 2, None)
    _check_schedule(schedule)
    h, w = y.shape[-2:]
    if y.numel() * factor**2 > 2**31:  # refuse before the allocator fails on up(y)
        raise ValueError(
            f"factor {factor} would upsample y of size {h}x{w} to {h * factor}x{w * factor} "
            f"pixels ({y.numel() * factor**2:.2g} values, over 2**31): factor must be the ratio "
            f"of the sampler's image size to y's, e.g. 4 for {h}x{w} -> {4 * h}x{4 * w}"
        )
    y_up = upsample(y, factor)  # (B, C, H, W)

    def project(s: int, x_s: torch.Tensor) -> torch.Tensor:
        if x_s.shape[-2:] != y_up.shape[-2:]:
            h, w = y.shape[-2:]
            H, W = x_s.shape[-2:]
            good = f"{H // h}" if H % h == 0 and H // h == W // w and W % w == 0 else "none"
            raise ValueError(
                f"factor {factor} maps y of size {h}x{w} to {h * factor}x{w * factor}, but the "
                f"sampler's states are {H}x{W}: factor must be {good}"
            )
        _check_state(s, x_s, y_up.shape, schedule)
        noised = q_sample(y_up.to(x_s.dtype), s, schedule, generator=generator)  # (B, C, H, W)
        return x_s + upsample(downsample(noised, factor) - downsample(x_s, factor), factor)

    return project

"""Classifier-free guidance: eps_hat = eps_uncond + w (eps_cond - eps_uncond).

Book: Guidance (Part 4). Ho & Salimans 2022, eq. 6 (their w is our ``guidance_scale - 1``:
here ``guidance_scale = 1`` is the plain conditional model and 0 the unconditional one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffusion_tutorial.checks import check_float_in_range, check_labels

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(
    model: nn.Module, y: torch.Tensor, guidance_scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a conditional model as eps(x_t, t) = eps_uncond + w (eps_cond - eps_uncond), w = guidance_scale.

    ``y``: integer (B,) labels in 0..num_classes-1 (not None, bool or float: use the model
    itself for unconditional samples); the unconditional prediction uses the null label
    ``model.config.num_classes``. Each call runs ONE batched forward pass on the concatenation
    [x_t; x_t] with labels [y; null], so guidance costs a batch of 2B, not two passes.
    The result plugs into any sampler: ``ddim_sample(classifier_free_guidance(m, y, 3.0), ...)``.
    Book: Guidance (Part 4). Ho & Salimans 2022, eq. 6 and Algorithm 2.
    """
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is None:
        raise ValueError(
            "classifier_free_guidance needs a conditional model (config.num_classes set)"
        )
    w = check_float_in_range("guidance_scale", guidance_scale, 0.0, None)
    y = check_labels("y", y, None, num_classes - 1)  # (B,) int64; None, bool or float: TypeError

    def guided_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        if B != y.shape[0]:
            raise ValueError(f"x_t has batch {B} but y has {y.shape[0]} labels")
        labels = y.to(x_t.device)  # (B,)
        null = torch.full_like(labels, num_classes)  # (B,)
        t = torch.as_tensor(t, device=x_t.device)
        t2 = torch.cat([t, t]) if t.ndim == 1 else t  # (2B,) or a scalar
        eps = model(torch.cat([x_t, x_t]), t2, torch.cat([labels, null]))  # (2B, ...)
        eps_cond, eps_uncond = eps.chunk(2)  # each (B, ...)
        return eps_uncond + w * (eps_cond - eps_uncond)

    return guided_eps

"""Exponential moving average (EMA) of a model's weights: theta_ema <- d theta_ema + (1 - d) theta.

Book: Example: DDPM (Part 2; EMA). Ho et al. 2020, Appendix B (decay 0.9999); the warm-up
d_n = min(decay, (1 + n) / (10 + n)) lets a short run's average forget the random initialisation.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from diffusion_tutorial.checks import check_float_in_range

__all__ = ["EMA"]


class EMA:
    """Keep ``self.model``, a frozen copy of a network whose weights are an EMA of the trained one.

    Call :meth:`update` after every optimiser step; sample from ``ema.model``. Buffers (none in
    the U-Net) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        self.decay = check_float_in_range("decay", decay, 0.0, 1.0, high_open=True)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0
        # False when ``model`` already holds averaged weights (fine-tuning a shipped EMA): there is
        # no random initialisation to forget, so the full decay applies from the first update.
        self.warmup = warmup

    def current_decay(self) -> float:
        """d_n = min(decay, (1 + n) / (10 + n)) for the n-th update (n = updates so far); ``decay``
        throughout when the EMA was made with ``warmup=False``."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta, parameter by parameter."""
        d = self.current_decay()
        ema_params, params = list(self.model.parameters()), list(model.parameters())
        if len(ema_params) != len(params):
            raise ValueError("model does not match the EMA copy (different parameter count)")
        for p_ema, p in zip(ema_params, params, strict=True):
            p_ema.lerp_(p, 1.0 - d)  # p_ema + (1 - d) (p - p_ema) = d p_ema + (1 - d) p
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights and the update count (for exact resumption)."""
        return {
            "model": self.model.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])

"""A small MLP noise predictor for 2-D toy data: eps_hat = eps_theta(x_t, t), x_t of shape (B, D).

Book: Diffusion on toy 2-D data. The U-Net's job for vectors: residual MLP blocks told the time
through a sinusoidal embedding (the same embedding as :mod:`diffusion_tutorial.networks.unet`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_tutorial.checks import check_positive_int
from diffusion_tutorial.core.time import check_book_times
from diffusion_tutorial.networks.embedding import (
    check_input_dtype,
    check_prediction,
    sinusoidal_embedding,
    validate_y,
)

__all__ = ["MLPConfig", "MLPDenoiser"]


@dataclasses.dataclass
class MLPConfig:
    """Hyper-parameters of :class:`MLPDenoiser` (JSON-serialisable like ``UNetConfig``, whose
    ``prediction`` field this one shares: ``"eps"`` or ``"velocity"``)."""

    dim: int = 2
    hidden: int = 128
    num_blocks: int = 3
    num_classes: int | None = None
    T: int = 1000
    prediction: str = "eps"

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "num_blocks", "T"):
            check_positive_int(name, getattr(self, name))
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        check_prediction(self.prediction)


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.lin2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.lin1(F.silu(h)) + self.emb_proj(F.silu(emb))  # (B, hidden)
        return h + self.lin2(F.silu(z))  # (B, hidden)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t[, y]) for vectors: (B, D) -> (B, D); t book indices 1..T as for the U-Net."""

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else MLPConfig()
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden)
        )
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes else None
        self.lin_in = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(_Block(cfg.hidden) for _ in range(cfg.num_blocks))
        self.lin_out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise eps_hat (B, D) from x_t (B, D) and book times t (B,).

        ``t`` as for :meth:`UNet.forward`: int64 indices 1..T, or a float tensor of fractional
        book times in [1, T] (points between the grid times the model was trained on).
        """
        cfg = self.config
        if x_t.ndim != 2 or x_t.shape[1] != cfg.dim:
            raise ValueError(f"x_t must have shape (B, {cfg.dim}), got {tuple(x_t.shape)}")
        check_input_dtype(x_t, self.lin_in.weight)
        t = check_book_times("t", t, x_t.shape[0], 1, cfg.T, x_t.device)  # (B,)
        emb = self.time_mlp(sinusoidal_embedding(t, cfg.hidden, dtype=x_t.dtype))  # (B, hidden)
        if self.class_emb is not None:
            emb = emb + self.class_emb(validate_y(y, x_t.shape[0], cfg.num_classes, x_t.device))
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=None); do not pass y")
        h = self.lin_in(x_t)  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)  # (B, hidden)
        return self.lin_out(F.silu(h))  # (B, D)

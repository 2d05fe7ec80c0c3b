"""One training step, Algorithm 1 of DDPM, and the learning rate of each step: shared by both loops.

:func:`~diffusion_tutorial.training.toy.fit` (2-D points, Part 2) and
:func:`~diffusion_tutorial.training.loop.train` (MNIST, the command line) take the same step; the
MNIST loop adds label dropout, mixed precision and gradient clipping through its arguments.

Book: Example: DDPM (Part 2). Ho et al. 2020, Algorithm 1; Ho & Salimans 2022, Algorithm 1
(label dropout); Loshchilov & Hutter 2017 (cosine decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from diffusion_tutorial.core.losses import simple_loss
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = ["train_step", "drop_labels", "learning_rate", "Loss"]

Loss = Callable[..., torch.Tensor]
"""``loss(model, x_0, schedule, *, generator) -> scalar``: ``simple_loss`` or ``flow_matching_loss``."""


def train_step(
    model: nn.Module,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    *,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    loss_fn: Loss | None = None,
) -> torch.Tensor:
    """One pass of Algorithm 1's loop: t ~ U{1..T}, eps ~ N(0, I), a gradient step on
    || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2; returns the loss.

    ``x_0`` (B, ...) is step 1's draw x_0 ~ q(x_0), the caller's minibatch; ``y`` (B,) its labels
    for a class-conditional model (already dropped to the null class, :func:`drop_labels`).
    ``generator`` draws t and eps. The MNIST loop's additions, all off by default: the forward
    pass under autocast in ``autocast_dtype``; a ``scaler`` that scales the fp16 loss so small
    gradients survive; ``grad_clip``, the largest global norm of the (unscaled) gradient.
    ``loss_fn`` (None: L_simple) replaces the loss, e.g. ``core.flow_matching.flow_matching_loss``
    (``--objective flow``: steps 2-4 draw a flow time and regress the velocity x_0 - eps instead).
    Book: Introduction (Part 2), eq. (eq-intro-loss). Ho et al. 2020, Algorithm 1 and eq. 14.
    """
    eps_theta = model if y is None else (lambda x_t, t: model(x_t, t, y))
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
    # Steps 2-4: t ~ U{1..T}, eps ~ N(0, I), x_t and the loss (simple_loss draws t, then eps).
    with torch.autocast(x_0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = (loss_fn or simple_loss)(eps_theta, x_0, schedule, generator=generator)
    # Step 5: one gradient descent step on the loss (here any optimiser: Adam, AdamW).
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradient, not the fp16-scaled one
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def drop_labels(
    y: torch.Tensor, p_uncond: float, null: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``y`` (B,) with each label replaced by the ``null`` class with probability ``p_uncond``,
    so one network learns eps(x_t, t, y) and eps(x_t, t) (classifier-free guidance).

    Ho & Salimans 2022, Algorithm 1, step "c <- null with probability p_uncond".
    """
    device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=device).to(y.device) < p_uncond  # (B,)
    return torch.where(drop, torch.full_like(y, null), y)  # (B,)


def learning_rate(
    step: int, *, lr: float, steps: int, warmup_steps: int = 0, cosine: bool = False
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``steps``: a linear warm-up
    lr (step + 1) / warmup_steps over the first ``warmup_steps``, then ``lr``, or with ``cosine``
    a half cosine lr (1 + cos(pi p)) / 2 down towards 0, p = (step - warmup_steps) / (steps -
    warmup_steps) (Loshchilov & Hutter 2017, SGDR without restarts).

    A function of the step alone, so a resumed run continues the same curve (a run started with
    ``--init`` from its own output starts a new one). ``fit`` uses the cosine without warm-up (a
    short run ends with calm weights); ``train`` the settings of its ``TrainConfig``.
    """
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    if not cosine or step < warmup_steps:
        return lr * warm
    progress = (step - warmup_steps) / max(steps - warmup_steps, 1)  # in [0, 1)
    return lr * (0.5 * (1.0 + math.cos(math.pi * progress)))

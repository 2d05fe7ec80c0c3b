"""A small in-memory training loop for toy data: minimise L_simple with Adam on a tensor of points.

The chapters of Part 2 train the :class:`~diffusion_tutorial.networks.mlp.MLPDenoiser` on a few
thousand 2-D points in seconds with :func:`fit`. Each step is Ho et al. 2020, Algorithm 1 (the
:func:`~diffusion_tutorial.training.step.train_step` of the MNIST loop too), with one addition, a
cosine decay of the learning rate to 0 (Loshchilov & Hutter 2017), which makes the final weights
of a short run much less noisy; no warm-up, no EMA, no checkpoints (the full loop for MNIST is
:mod:`.loop`).

Book: Introduction (Part 2). Ho et al. 2020, Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_tutorial.checks import (
    check_finite,
    check_float_in_range,
    check_float_tensor,
    check_positive_int,
)
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.runtime import tqdm
from diffusion_tutorial.training.step import learning_rate, train_step

__all__ = ["fit"]


def _check_args(
    model: object, x_0: object, schedule: object, generator: object, progress: object
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model must have at least one parameter with requires_grad=True")
    check_float_tensor("x_0", x_0)
    if x_0.ndim < 2 or x_0.shape[0] < 1:
        raise ValueError(f"x_0 must have shape (N, ...) with N >= 1, got {tuple(x_0.shape)}")
    check_finite("x_0", x_0)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")


def fit(
    model: nn.Module,
    x_0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` (an eps-predictor) on the points ``x_0`` (N, ...) for ``steps`` Adam steps.

    Each step draws a minibatch of ``batch_size`` rows of ``x_0`` uniformly with replacement, then
    t ~ U{1..T} and eps ~ N(0, I), and takes one Adam step on
    L_simple = mean || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sigma_t eps, t) ||^2,
    with learning rate lr * (1 + cos(pi * k / steps)) / 2 at step k = 0..steps-1 (cosine decay).
    ``generator`` drives every random draw (rows, t, eps), so two runs from the same weights and
    the same generator state give bitwise-identical losses on the same device. The model is left
    in training mode with its trained weights. Returns the loss of every step (a list of floats).
    Book: Introduction (Part 2), eq. (eq-intro-loss). Ho et al. 2020, Algorithm 1 and eq. 14.
    """
    _check_args(model, x_0, schedule, generator, progress)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_float_in_range("lr", lr, 0.0, None, low_open=True)

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    index_device = generator.device if generator is not None else x_0.device
    losses: list[float] = []
    bar = tqdm(range(steps), desc="fit", disable=not progress, mininterval=0.5)
    for k in bar:
        # Step 1: a minibatch x_0 ~ q(x_0), here the empirical distribution of the given points.
        rows = torch.randint(x_0.shape[0], (batch_size,), generator=generator, device=index_device)
        batch = x_0[rows.to(x_0.device)]  # (B, ...)
        # Steps 2-5: t, eps and a gradient step on || eps - eps_theta(x_t, t) ||^2, at the
        # cosine-decayed learning rate of step k (Loshchilov & Hutter 2017).
        optimizer.param_groups[0]["lr"] = learning_rate(k, lr=lr, steps=steps, cosine=True)
        loss = train_step(model, batch, schedule, optimizer, generator=generator)
        losses.append(loss.item())
        if progress and len(losses) % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.4f}", refresh=False)
    bar.close()
    return losses

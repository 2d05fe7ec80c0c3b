"""Tests for training.step: train_step is Algorithm 1 of DDPM, label dropout, the lr schedule.

The oracle is Algorithm 1 written out inline (t ~ U{1..T}, eps ~ N(0, I), the gradient of
|| eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2, an SGD step), fed
the same random draws; no golden numbers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.training.step import drop_labels, learning_rate, train_step

T = 50
SCHEDULE = dt.linear_schedule(T)


def small_model(num_classes: int | None = None) -> dt.MLPDenoiser:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return dt.MLPDenoiser(
            dt.MLPConfig(dim=2, hidden=16, num_blocks=1, T=T, num_classes=num_classes)
        )


def batch(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1))  # (n, 2)


def algorithm_1_inline(model, x_0, y, lr, g) -> float:
    """Algorithm 1 of Ho et al. 2020, one pass, with plain SGD; returns the loss."""
    t = torch.randint(1, T + 1, (x_0.shape[0],), generator=g)  # (B,) t ~ U{1..T}
    eps = torch.randn(x_0.shape, generator=g)  # (B, 2) eps ~ N(0, I)
    alpha_bar = SCHEDULE.alpha_bar[t][:, None]  # (B, 1), float64
    x_t = (alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps).float()  # (B, 2)
    eps_hat = model(x_t, t) if y is None else model(x_t, t, y)
    loss = ((eps - eps_hat) ** 2).mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return loss.item()


@pytest.mark.parametrize("conditional", [False, True])
def test_two_train_steps_equal_algorithm_1_written_out(conditional):
    # Two steps, so that a missing zero_grad (gradients summed over steps) fails too; a skipped
    # optimiser step, a flipped sign or labels not passed on fail at the first. Tolerance: the
    # two sides do the same float32 arithmetic in a possibly different order (~1e-7 relative).
    x_0 = batch()
    y = torch.arange(32) % 3 if conditional else None
    model = small_model(num_classes=3 if conditional else None)
    oracle = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g, g_oracle = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(2):
        loss = train_step(model, x_0, SCHEDULE, opt, y=y, generator=g)
        want = algorithm_1_inline(oracle, x_0, y, 0.1, g_oracle)
        assert loss.item() == pytest.approx(want, rel=1e-6)
    for p, q in zip(model.parameters(), oracle.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_grad_clip_caps_the_norm_of_the_true_gradient(loss_scaling):
    # SGD with lr 1: the step is minus the (clipped) gradient, so its global norm must be the clip
    # 1e-3 (the unclipped gradient norm is ~1). With loss scaling (x65536) the gradient must be
    # unscaled before clipping; clipping the scaled one would give a step 65536 times smaller.
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=loss_scaling)
    g = torch.Generator().manual_seed(0)
    train_step(model, batch(), SCHEDULE, opt, generator=g, grad_clip=1e-3, scaler=scaler)
    step = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_drop_labels_keeps_or_drops_each_label():
    y = torch.arange(20_000) % 10  # (N,)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(y, 0.0, 10, g), y)
    assert (drop_labels(y, 1.0, 10, g) == 10).all()
    out = drop_labels(y, 0.3, 10, g)
    kept = out != 10
    assert torch.equal(out[kept], y[kept])  # a label is kept as it was, or becomes the null 10
    # The dropped fraction is Binomial(N, 0.3) / N: sd sqrt(0.3 * 0.7 / N) = 0.0032; allow 5 sd.
    assert (~kept).float().mean().item() == pytest.approx(0.3, abs=0.016)


def test_learning_rate_warm_up_and_cosine():
    # Linear warm-up to lr, then a half cosine: lr (1 + cos(pi p)) / 2 with p the decay progress.
    lr, steps, warm = 1e-3, 20, 4
    got = [learning_rate(k, lr=lr, steps=steps, warmup_steps=warm, cosine=True) for k in range(20)]
    want = [lr * (k + 1) / warm for k in range(warm)]
    want += [lr * (1 + math.cos(math.pi * (k - warm) / (steps - warm))) / 2 for k in range(4, 20)]
    assert got == pytest.approx(want, rel=1e-12)
    assert learning_rate(3, lr=lr, steps=steps) == lr  # no warm-up, no decay: constant

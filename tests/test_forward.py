"""Tests for diffusion_tutorial.core.forward: closed form vs composed kernels, posterior vs Bayes rule."""

import pytest
import torch

from diffusion_tutorial.core.forward import q_posterior, q_sample, q_step
from diffusion_tutorial.core.schedules import cosine_schedule, linear_schedule

SCHED = linear_schedule(50, 2e-3, 0.2)


def test_q_sample_t0_is_identity_and_matches_formula():
    x_0 = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 25, 50])
    x_t = q_sample(x_0, t, SCHED, eps=eps)
    assert torch.equal(x_t[0], x_0[0])
    alpha_bar_t = SCHED.alpha_bar[t][:, None]
    torch.testing.assert_close(
        x_t, alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * eps, rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule(50)], ids=["linear", "cosine"])
def test_closed_form_equals_composed_kernels_exactly(schedule):
    """Compose q_step t times, tracking mean and variance through its affine coefficients."""
    x_0 = torch.tensor([[0.7]], dtype=torch.float64)
    mean, var = x_0.clone(), torch.zeros(1, 1, dtype=torch.float64)
    zero, one = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    for t in range(1, schedule.T + 1):
        mean = q_step(mean, t, schedule, eps=zero)  # sqrt(alpha_t) * mean
        gain = q_step(one, t, schedule, eps=zero)  # sqrt(alpha_t)
        noise_std = q_step(zero, t, schedule, eps=one)  # sqrt(beta_t)
        var = gain**2 * var + noise_std**2
        # Closed form at every t; float64 products agree to ~1e-15, 1e-12 leaves room.
        closed_mean = q_sample(x_0, t, schedule, eps=zero)
        closed_std = q_sample(zero, t, schedule, eps=one)
        torch.testing.assert_close(mean, closed_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, closed_std**2, rtol=1e-12, atol=1e-12)


def test_closed_form_equals_composed_kernels_monte_carlo():
    n, t = 50_000, 30
    g = torch.Generator().manual_seed(0)
    x_0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    x = x_0
    for s in range(1, t + 1):
        x = q_step(x, s, SCHED, generator=g)
    direct = q_sample(x_0, t, SCHED, generator=g)
    alpha_bar_t = SCHED.alpha_bar[t].item()
    # 5 standard errors: mean SE = sqrt(var / n), variance SE ~ var * sqrt(2 / n).
    for samples in (x, direct):
        assert (
            abs(samples.mean().item() - alpha_bar_t**0.5 * 0.8) < 5 * ((1 - alpha_bar_t) / n) ** 0.5
        )
        assert (
            abs(samples.var().item() - (1 - alpha_bar_t)) < 5 * (1 - alpha_bar_t) * (2 / n) ** 0.5
        )


@pytest.mark.parametrize("t_val", [2, 10, 50])
def test_posterior_is_gaussian_bayes_rule(t_val):
    """q(x_{t-1}|x_0) = N(a x_0, v) prior, q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) likelihood."""
    x_0 = torch.randn(5, 2, dtype=torch.float64)
    x_t = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), t_val)
    mean, var = q_posterior(x_0, x_t, t, SCHED)
    alpha_bar_prev = SCHED.alpha_bar[t_val - 1]
    prior_mean, prior_var = alpha_bar_prev.sqrt() * x_0, 1 - alpha_bar_prev
    a, b = SCHED.alpha[t_val].sqrt(), SCHED.beta[t_val]
    post_var = 1 / (1 / prior_var + a**2 / b)
    post_mean = post_var * (prior_mean / prior_var + a * x_t / b)
    torch.testing.assert_close(mean, post_mean, rtol=1e-12, atol=1e-12)  # float64 rounding
    torch.testing.assert_close(var.expand_as(mean), post_var.expand_as(mean), rtol=1e-12, atol=0)


def test_posterior_at_t1_is_x0():
    x_0, x_t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mean, var = q_posterior(x_0, x_t, torch.ones(3, dtype=torch.int64), SCHED)
    torch.testing.assert_close(mean, x_0, rtol=0, atol=1e-14)
    assert (var == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtype_follows_input_and_generator_reproducible(dtype):
    x_0 = torch.randn(4, 1, 5, 5).to(dtype)
    t = torch.tensor([1, 2, 3, 50])
    a = q_sample(x_0, t, SCHED, generator=torch.Generator().manual_seed(3))
    b = q_sample(x_0, t, SCHED, generator=torch.Generator().manual_seed(3))
    assert a.dtype == dtype and torch.equal(a, b) and torch.isfinite(a).all()
    assert q_step(x_0, t, SCHED).dtype == dtype
    mean, var = q_posterior(x_0, a, t, SCHED)
    assert mean.dtype == var.dtype == dtype and var.shape == (4, 1, 1, 1)


@pytest.mark.parametrize(
    "call, err",
    [
        (
            lambda: q_sample(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([1, 2]), SCHED),
            TypeError,
        ),
        (lambda: q_sample(torch.zeros(2, 3), torch.tensor([1, 51]), SCHED), ValueError),
        (lambda: q_sample(torch.zeros(2, 3), torch.tensor([-1, 1]), SCHED), ValueError),
        (lambda: q_sample(torch.zeros(2, 3), torch.tensor([1]), SCHED), ValueError),
        (
            lambda: q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), SCHED, eps=torch.zeros(2, 4)),
            ValueError,
        ),
        (lambda: q_step(torch.zeros(2, 3), torch.tensor([0, 1]), SCHED), ValueError),
        (
            lambda: q_posterior(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]), SCHED),
            ValueError,
        ),
        (
            lambda: q_posterior(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 2]), SCHED),
            ValueError,
        ),
    ],
)
def test_bad_input(call, err):
    with pytest.raises(err):
        call()

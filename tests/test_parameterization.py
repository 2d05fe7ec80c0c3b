"""Tests for diffusion_tutorial.core.parameterization: every conversion inverts its partner exactly."""

import pytest
import torch

import diffusion_tutorial.core.parameterization as P
from diffusion_tutorial.core.forward import q_sample
from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import cosine_schedule

SCHED = cosine_schedule(100)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 99, 100])
    return x_0, eps, t, q_sample(x_0, t, SCHED, eps=eps)


def test_conversions_recover_the_truth(batch):
    x_0, eps, t, x_t = batch
    v = SCHED.sqrt_alpha_bar[t][:, None] * eps - SCHED.sigma[t][:, None] * x_0
    # float64 round trips; 1e-9 absorbs the 1/sqrt(alpha_bar_T) ~ 1e3 amplification at t = T.
    tol = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(P.x0_from_eps(x_t, eps, t, SCHED), x_0, **tol)
    torch.testing.assert_close(P.eps_from_x0(x_t, x_0, t, SCHED), eps, **tol)
    torch.testing.assert_close(P.v_from_eps(x_t, eps, t, SCHED), v, **tol)
    torch.testing.assert_close(P.eps_from_v(x_t, v, t, SCHED), eps, **tol)
    torch.testing.assert_close(P.x0_from_v(x_t, v, t, SCHED), x_0, **tol)
    torch.testing.assert_close(P.v_from_x0(x_t, x_0, t, SCHED), v, **tol)
    score = P.score_from_eps(x_t, eps, t, SCHED)
    torch.testing.assert_close(P.eps_from_score(x_t, score, t, SCHED), eps, **tol)


def test_score_of_gaussian_marginal():
    """For Gaussian data, -E[eps|x_t]/sigma_t is the exact score -(x_t - a mean)/m_t^2."""
    data = GaussianData(torch.tensor([0.3, -0.2]), torch.tensor([0.5, 1.2]))
    x_t = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([1, 20, 60, 100])
    score = P.score_from_eps(x_t, data.eps_hat(x_t, t, SCHED), t, SCHED)
    a = SCHED.sqrt_alpha_bar[t][:, None]
    m2 = data.marginal_std(t, SCHED, x_t) ** 2
    torch.testing.assert_close(score, -(x_t - a * data.mean) / m2, rtol=1e-12, atol=1e-12)


def test_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="t"):
        P.eps_from_x0(x, x, torch.tensor([0, 1]), SCHED)  # sigma_0 = 0: t must be >= 1
    with pytest.raises(ValueError):
        P.x0_from_eps(x, torch.zeros(2, 4), torch.tensor([1, 1]), SCHED)
    with pytest.raises(TypeError):
        P.x0_from_eps(x.long(), x, torch.tensor([1, 1]), SCHED)


@pytest.mark.parametrize(
    "fn", [P.x0_from_eps, P.eps_from_x0, P.v_from_eps, P.eps_from_v, P.score_from_eps]
)
def test_non_finite_inputs_are_refused(fn):
    x = torch.zeros(2, 3)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x_t must be finite"):
        fn(bad, x, 5, SCHED)
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="must be finite"):
        fn(x, bad, 5, SCHED)

"""GaussianMixtureData: the exact denoiser and the best achievable loss of a Gaussian mixture.

Oracles, not golden numbers: one component reduces to GaussianData; E[eps | x_t] is -sigma_t times
the score of log q(x_t) (Tweedie, by autograd); the density integrates to 1; the conditional mean
and variance pass orthogonality tests by Monte Carlo; the excess loss of any other predictor is its
squared distance to the exact one. Monte Carlo checks use 5 standard errors (false alarm ~6e-7).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_tutorial.background.probability import mc_mean
from diffusion_tutorial.core.gaussian import GaussianData, GaussianMixtureData
from diffusion_tutorial.core.schedules import linear_schedule

D = torch.float64
SCHEDULE = linear_schedule()
TIMES = [1, 30, 150, 400, 1000]


def mixture(dim: int = 2) -> GaussianMixtureData:
    """Three unequal components with different widths, close enough to overlap at moderate t."""
    means = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.3, -0.9]], dtype=D)[:, :dim]
    return GaussianMixtureData(
        torch.tensor([0.5, 0.3, 0.2], dtype=D), means, torch.tensor([0.1, 0.3, 0.05], dtype=D)
    )


def draw(data: GaussianMixtureData, t: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x_0 = data.sample(n, g, dtype=D)
    eps = torch.randn(x_0.shape, generator=g, dtype=D)
    x_t = SCHEDULE.sqrt_alpha_bar[t] * x_0 + SCHEDULE.sigma[t] * eps
    return x_0, eps, x_t


@pytest.mark.parametrize("t", TIMES)
def test_one_component_is_gaussian_data(t):
    mean, std = torch.tensor([0.3, -0.2], dtype=D), 0.4
    mix = GaussianMixtureData(torch.ones(1, dtype=D), mean[None], torch.tensor([std], dtype=D))
    gauss = GaussianData(mean, torch.full((2,), std, dtype=D))
    x_t = torch.randn(50, 2, generator=torch.Generator().manual_seed(t), dtype=D)
    torch.testing.assert_close(mix.eps_hat(x_t, t, SCHEDULE), gauss.eps_hat(x_t, t, SCHEDULE))
    a2 = SCHEDULE.alpha_bar[t]
    exact = 2 * a2 * std**2 / (a2 * std**2 + 1 - a2)  # D a^2 s^2 / m^2, the same at every x_t
    torch.testing.assert_close(mix.eps_posterior_var(x_t, t, SCHEDULE), exact.expand(50))


@pytest.mark.parametrize("t", TIMES)
def test_eps_hat_is_minus_sigma_times_score(t):
    data = mixture()
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=D) * 1.2
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(data.log_prob(x, t, SCHEDULE).sum(), x)
    torch.testing.assert_close(
        data.eps_hat(x.detach(), t, SCHEDULE), -SCHEDULE.sigma[t] * score, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("t", [0, 20, 500])
def test_log_prob_integrates_to_one(t):
    # 1-D version of the mixture on a fine grid: trapezoid rule error << 1e-6 at this spacing.
    data = mixture(dim=1)
    grid = torch.linspace(-8, 8, 160_001, dtype=D)[:, None]  # (G, 1)
    total = torch.trapezoid(data.log_prob(grid, t, SCHEDULE).exp(), grid[:, 0])
    assert abs(total.item() - 1) < 1e-6


def test_sample_moments():
    data = mixture()
    x = data.sample(200_000, torch.Generator().manual_seed(2), dtype=D)
    mean = (data.weights[:, None] * data.means).sum(0)
    second = (data.weights[:, None] * (data.means**2 + data.stds[:, None] ** 2)).sum(0)
    est = mc_mean(x)
    assert ((est.estimate - mean).abs() < 5 * est.std_error).all()
    est2 = mc_mean(x**2)
    assert ((est2.estimate - second).abs() < 5 * est2.std_error).all()


@pytest.mark.parametrize("t", [30, 150, 400])
def test_conditional_mean_and_variance_by_orthogonality(t):
    # E[(eps - eps_hat) h(x_t)] = 0 and E[(|eps - eps_hat|^2 - v(x_t)) h(x_t)] = 0 for functions h
    # of x_t hold exactly when eps_hat and v are the conditional mean and trace of covariance.
    data = mixture()
    _, eps, x_t = draw(data, t, 400_000, seed=t)
    eps_hat = data.eps_hat(x_t, t, SCHEDULE)
    var = data.eps_posterior_var(x_t, t, SCHEDULE)
    h = torch.stack(
        [torch.ones_like(x_t[:, 0]), x_t[:, 0], x_t[:, 1], torch.tanh(3 * x_t[:, 0])], 1
    )
    resid = eps - eps_hat  # (n, 2)
    for values in (
        (resid[:, :, None] * h[:, None, :]).flatten(1),
        ((resid**2).sum(1) - var)[:, None] * h,
    ):
        est = mc_mean(values)
        assert (est.estimate.abs() < 5 * est.std_error).all(), est


@pytest.mark.parametrize("t", [10, 150, 400])
def test_best_loss_matches_the_exact_denoisers_loss(t):
    data = mixture()
    _, eps, x_t = draw(data, t, 200_000, seed=100 + t)
    naive = mc_mean(((eps - data.eps_hat(x_t, t, SCHEDULE)) ** 2).mean(1))
    best = data.best_loss(t, SCHEDULE, 50_000, torch.Generator().manual_seed(3))
    se = math.hypot(naive.std_error.item(), best.std_error.item())
    assert abs(naive.estimate.item() - best.estimate.item()) < 5 * se


@pytest.mark.parametrize("t", [10, 150, 400])
def test_excess_loss_is_squared_distance_to_the_exact_denoiser(t):
    # Any other predictor f: E|eps - f|^2 - E|eps - eps_hat|^2 = E|f - eps_hat|^2 (paired draws).
    data = mixture()
    _, eps, x_t = draw(data, t, 200_000, seed=200 + t)
    eps_hat = data.eps_hat(x_t, t, SCHEDULE)
    f = 0.8 * eps_hat + 0.1 * torch.sin(x_t)  # an imperfect predictor
    diff = ((eps - f) ** 2).sum(1) - ((eps - eps_hat) ** 2).sum(1) - ((f - eps_hat) ** 2).sum(1)
    est = mc_mean(diff)
    assert abs(est.estimate.item()) < 5 * est.std_error.item()
    assert ((f - eps_hat) ** 2).sum(1).mean() > 10 * est.std_error  # the check has teeth


@pytest.mark.parametrize(
    ("weights", "means", "stds", "match"),
    [
        ([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0], "sum to 1"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "stds"),
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], "shape"),
        ([1.0], [[float("nan")]], [1.0], "means"),
    ],
)
def test_bad_parameters_are_refused(weights, means, stds, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureData(
            torch.tensor(weights, dtype=D),
            torch.tensor(means, dtype=D),
            torch.tensor(stds, dtype=D),
        )


def test_bad_inputs_are_refused():
    data = mixture()
    with pytest.raises(ValueError, match="shape"):
        data.eps_hat(torch.zeros(4, 3), 5, SCHEDULE)
    with pytest.raises(ValueError, match="t"):
        data.eps_hat(torch.zeros(4, 2), 0, SCHEDULE)  # eps is undefined at t = 0
    with pytest.raises(ValueError, match="n"):
        data.best_loss(5, SCHEDULE, 0)

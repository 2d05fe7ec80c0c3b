"""Tests for diffusion_tutorial.background.vae: the exact linear-Gaussian model and the MNIST VAE (tiny)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_tutorial.background import probability as pr
from diffusion_tutorial.background import vae as vae_mod

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lg_model(d: int = 3, k: int = 2, seed: int = 0) -> vae_mod.LinearGaussianModel:
    g = gen(seed)
    W = torch.randn(d, k, generator=g, dtype=D)
    b = torch.randn(d, generator=g, dtype=D)
    return vae_mod.LinearGaussianModel(W, b, 0.3)


# ------------------------------------------------------------------ linear-Gaussian model


def test_lg_evidence_matches_quadrature_1d_latent() -> None:
    # log p(x) = log \int p(x | z) p(z) dz by the trapezoid rule on [-10, 10] (error < 1e-9).
    model = lg_model(d=2, k=1, seed=1)
    x, _ = model.sample(3, gen(2))
    z = torch.linspace(-10, 10, 40_001, dtype=D).reshape(-1, 1, 1)  # (S, 1, 1)
    log_joint = model.log_likelihood(x, z) + pr.gaussian_log_prob(
        z[..., 0], torch.zeros((), dtype=D), torch.ones((), dtype=D)
    )  # (S, B)
    quad = torch.trapezoid(log_joint.exp(), z[:, 0, 0], dim=0).log()
    torch.testing.assert_close(model.log_evidence(x), quad, rtol=0, atol=1e-9)


def test_lg_posterior_satisfies_bayes_rule() -> None:
    # log p(z | x) = log p(x | z) + log p(z) - log p(x) at arbitrary z (float64, atol 1e-10).
    model = lg_model(seed=3)
    x, _ = model.sample(4, gen(4))
    mean, cov = model.posterior(x)
    z = torch.randn(5, 4, 2, generator=gen(5), dtype=D)  # (S, B, k)
    post = torch.distributions.MultivariateNormal(mean, cov).log_prob(z)  # (S, B)
    prior = pr.gaussian_log_prob(z, torch.zeros_like(z), torch.ones_like(z)).sum(-1)
    bayes = model.log_likelihood(x, z) + prior - model.log_evidence(x)
    torch.testing.assert_close(post, bayes, rtol=0, atol=1e-10)


def test_lg_sample_has_the_marginal_covariance() -> None:
    # Sample covariance of 100000 draws vs W W^T + s2 I; entries are O(1), MC error ~ 1/sqrt(n).
    model = lg_model(seed=6)
    x, _ = model.sample(100_000, gen(7))
    torch.testing.assert_close(
        torch.cov(x.T), model.marginal().covariance_matrix, atol=0.05, rtol=0
    )


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_elbo_is_below_log_evidence_with_gap_equal_to_kl(seed: int) -> None:
    # log p(x) = ELBO + KL(q || p(z | x)) for any q; 1-D latent so p(z | x) is univariate.
    # Everything is in closed form here, so the identity holds to float64 rounding (atol 1e-10).
    model = lg_model(d=2, k=1, seed=seed)
    x, _ = model.sample(3, gen(seed))
    g = gen(seed + 100)
    mu = torch.randn(3, 1, generator=g, dtype=D)
    var = torch.randn(3, 1, generator=g, dtype=D).exp()
    elbo = model.elbo(x, mu, var)
    post_mu, post_cov = model.posterior(x)
    gap = pr.kl_gaussian(mu, var, post_mu, post_cov.expand_as(mu)).squeeze(-1)
    log_px = model.log_evidence(x)
    assert torch.all(elbo < log_px)
    torch.testing.assert_close(elbo + gap, log_px, atol=1e-10, rtol=0)


@pytest.mark.parametrize("seed", [11, 12])
def test_monte_carlo_elbo_matches_exact_elbo(seed: int) -> None:
    # elbo_gaussian_encoder averages n single-sample estimates; the difference to the exact ELBO
    # is within 5 standard errors (estimated from 8 independent repeats' spread).
    model = lg_model(d=3, k=2, seed=seed)
    x, _ = model.sample(2, gen(seed))
    mu = torch.randn(2, 2, generator=gen(seed + 1), dtype=D)
    logvar = 0.5 * torch.randn(2, 2, generator=gen(seed + 2), dtype=D)
    reps = torch.stack(
        [
            pr.elbo_gaussian_encoder(x, mu, logvar, model.log_likelihood, 20_000, gen(seed + r))
            for r in range(8)
        ]
    )  # (8, B)
    est = pr.mc_mean(reps)
    assert torch.all((est.estimate - model.elbo(x, mu, logvar.exp())).abs() < 5 * est.std_error)


def test_lg_model_bad_inputs() -> None:
    with pytest.raises(ValueError, match="noise_var"):
        vae_mod.LinearGaussianModel(torch.zeros(2, 1), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="W"):
        vae_mod.LinearGaussianModel(torch.zeros(2, 1), torch.zeros(3), 1.0)


# ---------------------------------------------------------------------------- VAE


def test_vae_shapes() -> None:
    torch.manual_seed(0)
    model = vae_mod.VAE(latent_dim=3, hidden=8, image_size=6)
    x = torch.rand(5, 1, 6, 6, generator=gen(11))
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    assert model.decode(torch.zeros(2, 5, 3)).shape == (2, 5, 1, 6, 6)
    assert vae_mod.vae_elbo(model, x, n_samples=2, generator=gen(12)).shape == (5,)
    assert vae_mod.sample_vae(model, 4, gen(13)).shape == (4, 1, 6, 6)


def test_bernoulli_log_likelihood_matches_torch() -> None:
    x = (torch.rand(2, 1, 3, 3, generator=gen(14)) > 0.5).float()
    logits = torch.randn(4, 2, 1, 3, 3, generator=gen(15))
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(-3).sum(-1)
    torch.testing.assert_close(vae_mod.bernoulli_log_likelihood(x, logits), ref)


def test_vae_elbo_is_below_zero_for_binary_images() -> None:
    # A probability mass is <= 1, so log p(x) <= 0 and hence ELBO <= 0 on binary images.
    model = vae_mod.VAE(latent_dim=2, hidden=8, image_size=4)
    x = (torch.rand(6, 1, 4, 4, generator=gen(16)) > 0.5).float()
    assert torch.all(vae_mod.vae_elbo(model, x, generator=gen(17)) <= 0)


def test_train_vae_improves_elbo_on_tiny_data() -> None:
    # 8 fixed 4x4 binary images, 150 Adam steps: the mean ELBO must rise by a clear margin.
    torch.manual_seed(0)
    model = vae_mod.VAE(latent_dim=2, hidden=16, image_size=4)
    images = (torch.rand(8, 1, 4, 4, generator=gen(18)) > 0.5).float()
    hist = vae_mod.train_vae(
        model, images, 150, batch_size=8, lr=1e-2, generator=gen(19), progress=False
    )
    assert len(hist) == 150 and all(math.isfinite(h) for h in hist)
    assert sum(hist[-10:]) / 10 > sum(hist[:10]) / 10 + 1.0


def test_vae_bad_inputs() -> None:
    model = vae_mod.VAE(latent_dim=2, hidden=8, image_size=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vae_mod.vae_elbo(model, torch.full((1, 1, 4, 4), -1.0))
    with pytest.raises(ValueError, match="steps"):
        vae_mod.train_vae(model, torch.rand(4, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="latent_dim"):
        vae_mod.VAE(latent_dim=0)


def test_bernoulli_likelihood_is_a_pmf_on_binary_images_only() -> None:
    # Summed over all 2^4 binary 2x2 images, exp(log p(x | z)) is 1 (a probability mass function);
    # grey-level images are outside its support, so "log-likelihoods" of them bound nothing.
    bits = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=D)] * 4)  # (16, 4)
    images = bits.reshape(16, 1, 2, 2)
    logits = torch.randn(1, 2, 2, generator=gen(30), dtype=D).expand(16, 1, 2, 2)
    total = vae_mod.bernoulli_log_likelihood(images, logits).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=D), rtol=1e-12, atol=0)

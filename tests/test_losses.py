"""Tests for diffusion_tutorial.core.losses: L_simple and the variational-bound terms."""

import math

import pytest
import torch

from diffusion_tutorial.core.forward import q_posterior, q_sample
from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.losses import (
    decoder_nll,
    prior_kl,
    simple_loss,
    vlb_term,
    vlb_terms,
)
from diffusion_tutorial.core.schedules import linear_schedule

SCHED = linear_schedule(100, 1e-3, 0.2)


def zero_model(x_t, t):
    return torch.zeros_like(x_t)


def test_simple_loss_of_zero_model_is_noise_variance():
    x_0 = torch.randn(20_000, 4, dtype=torch.float64)
    loss = simple_loss(zero_model, x_0, SCHED, generator=torch.Generator().manual_seed(0))
    # E[eps^2] = 1; the mean of 80 000 chi^2_1 values has SE sqrt(2 / 80 000) = 0.005; allow 5 SE.
    assert loss.ndim == 0 and abs(loss.item() - 1) < 0.025


def test_simple_loss_of_optimal_model_is_posterior_variance():
    """For Gaussian data the optimal eps leaves Var[eps | x_t] = 1 - sigma_t^2 / m_t^2 per coordinate."""
    data = GaussianData(torch.zeros(1), torch.tensor([0.5]))
    x_0 = data.sample(50_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((50_000,), 40)
    loss = simple_loss(
        data.model(SCHED), x_0, SCHED, generator=torch.Generator().manual_seed(2), t=t
    )
    alpha_bar_t = SCHED.alpha_bar[40].item()
    expected = 1 - (1 - alpha_bar_t) / (alpha_bar_t * 0.25 + 1 - alpha_bar_t)
    # The loss is a mean of 50 000 scaled chi^2_1 values: relative SE sqrt(2 / 50 000) = 0.6 %; 5 SE.
    assert loss.item() == pytest.approx(expected, rel=0.03)


def test_simple_loss_reproducible_and_differentiable():
    w = torch.nn.Parameter(torch.tensor(0.5))

    def model(x_t, t):
        return w * x_t

    x_0 = torch.randn(8, 3)
    a = simple_loss(model, x_0, SCHED, generator=torch.Generator().manual_seed(0))
    b = simple_loss(model, x_0, SCHED, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    a.backward()
    assert w.grad is not None and torch.isfinite(w.grad)


def test_prior_kl_matches_closed_form():
    x_0 = torch.randn(3, 2, dtype=torch.float64)
    alpha_bar_T = SCHED.alpha_bar[-1]
    expected = 0.5 * (alpha_bar_T * x_0**2 + (1 - alpha_bar_T) - 1 - torch.log(1 - alpha_bar_T))
    expected = expected.sum(1)
    torch.testing.assert_close(prior_kl(x_0, SCHED), expected, rtol=1e-12, atol=1e-12)


def test_vlb_term_is_zero_for_a_perfect_model():
    """A model that returns the very noise used makes x0_hat = x_0, so the KL is exactly 0."""
    x_0 = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    out = vlb_term(lambda x_t, t: eps, x_0, torch.tensor([2, 10, 50, 100]), SCHED, eps=eps)
    torch.testing.assert_close(out, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_vlb_term_of_zero_model_matches_hand_computation():
    x_0 = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([2, 10, 50, 100])
    x_t = q_sample(x_0, t, SCHED, eps=eps)
    x0_hat = x_t / SCHED.sqrt_alpha_bar[t][:, None]
    mean, var = q_posterior(x_0, x_t, t, SCHED)
    mean_theta, _ = q_posterior(x0_hat, x_t, t, SCHED)
    expected = ((mean - mean_theta) ** 2 / (2 * var)).sum(1)
    torch.testing.assert_close(
        vlb_term(zero_model, x_0, t, SCHED, eps=eps), expected, rtol=1e-10, atol=0
    )


def test_decoder_nll_of_perfect_model():
    """x0_hat = x_0 exactly: each interior pixel costs -log(2 Phi(h / std) - 1), edges -log Phi(h / std)."""
    x_0 = torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64)
    eps = torch.randn(1, 3, dtype=torch.float64)
    nll = decoder_nll(lambda x_t, t: eps, x_0, SCHED, eps=eps)
    z = torch.tensor((1 / 255) / math.sqrt(SCHED.beta[1].item()), dtype=torch.float64)
    phi = torch.special.ndtr(z)
    expected = -(2 * torch.log(phi) + torch.log(2 * phi - 1))
    torch.testing.assert_close(nll, expected.reshape(1), rtol=1e-9, atol=0)


def test_vlb_terms_layout():
    x_0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    sched = linear_schedule(10, 0.01, 0.5)
    terms = vlb_terms(zero_model, x_0, sched, generator=torch.Generator().manual_seed(0))
    assert terms.shape == (2, 11) and torch.isfinite(terms).all()
    assert (terms[:, 1:] >= 0).all()  # KL terms are non-negative
    torch.testing.assert_close(terms[:, -1], prior_kl(x_0, sched))


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: decoder_nll(zero_model, torch.full((1, 2), 1.5), SCHED), ValueError),
        (lambda: vlb_term(zero_model, torch.zeros(2, 3), torch.tensor([1, 2]), SCHED), ValueError),
        (lambda: simple_loss(zero_model, torch.zeros(2, 3, dtype=torch.int64), SCHED), TypeError),
        (lambda: simple_loss(lambda x, t: torch.zeros(2), torch.zeros(2, 3), SCHED), ValueError),
        (
            lambda: simple_loss(zero_model, torch.zeros(2, 3), SCHED, t=torch.tensor([0, 1])),
            ValueError,
        ),
    ],
)
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


def test_every_vlb_terms_column_is_its_own_term():
    """Column k of vlb_terms is L_k at t = k + 1, checked against a noise-free closed form.

    The oracle model returns the eps that makes x0_hat = x_0 + d exactly (it knows x_0), so
    L_{t-1} = ||mu_tilde(x_t, x_0) - mu_tilde(x_t, x0_hat)||^2 / (2 beta_tilde_t)
            = 1/2 (SNR(t-1) - SNR(t)) ||d||^2          (Kingma et al. 2021, eq. 13),
    for every x_t. The weight changes with t, so a column shifted by one fails. Tolerance 1e-9:
    float64 throughout.
    """
    sched = linear_schedule(12, 0.01, 0.3)
    x_0 = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    d = torch.linspace(-0.2, 0.3, 5, dtype=torch.float64)  # offset of x0_hat

    def oracle(x_t, t):
        a, s = sched.sqrt_alpha_bar[t][:, None], sched.sigma[t][:, None]
        return (x_t - a * (x_0 + d)) / s  # so x0_hat = (x_t - s eps_hat) / a = x_0 + d

    terms = vlb_terms(oracle, x_0, sched, generator=torch.Generator().manual_seed(1))
    t = torch.arange(2, 13)
    snr = sched.snr
    expected_kl = 0.5 * (snr[t - 1] - snr[t])[None, :] * (d**2).sum()  # (1, T-1)
    torch.testing.assert_close(terms[:, 1:12], expected_kl.expand(3, -1), rtol=1e-9, atol=0)
    # Column 0: the decoder with mean x_0 + d and std sqrt(beta_1), interior bins of width 2/255.
    std, h = sched.beta[1].sqrt(), 1 / 255
    mass = torch.special.ndtr((h - d) / std) - torch.special.ndtr((-h - d) / std)  # (5,)
    torch.testing.assert_close(terms[:, 0], -torch.log(mass).sum().expand(3), rtol=1e-9, atol=0)
    torch.testing.assert_close(terms[:, 12], prior_kl(x_0, sched), rtol=1e-12, atol=0)

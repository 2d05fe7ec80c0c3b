"""training.consistency_toy: the consistency function, the exact ODE of a mixture, CD and CT.

Oracles: the mixture's denoiser written out in sigma (independent of the package's VP route),
a single Gaussian whose ODE has a closed-form solution, Song et al.'s grid formula, and the
exact consistency function (an accurate ODE solve), which must give the CD loss ~0 while a
wrong one does not. Each test names the bug it was seen to catch (injected in a scratch copy,
watched go red, reverted).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianMixtureData
from diffusion_tutorial.data import gaussian_ring
from diffusion_tutorial.samplers.few_step import few_step_sample
from diffusion_tutorial.training import consistency_toy as ct

D64 = torch.float64
MIX = ct.ring_mixture()
DEN = ct.exact_denoiser(MIX)


def closed_form_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_0 + sigma z = x] for MIX, written in sigma: r_k N(x; mu_k, (s_k^2 + sigma^2) I)."""
    s2 = MIX.stds**2 + sigma[:, None] ** 2  # (B, K): variance of x | k per coordinate
    diff = x[:, None, :] - MIX.means  # (B, K, 2)
    log_r = MIX.weights.log() - 0.5 * (diff**2).sum(-1) / s2 - torch.log(s2)  # 2-D: |2 pi s2|^(1/2)
    r = torch.softmax(log_r, dim=1)  # (B, K)
    d_k = MIX.means + (MIX.stds**2 / s2)[:, :, None] * diff  # (B, K, 2)
    return (r[:, :, None] * d_k).sum(1)


def points(n: int, scale: float, seed: int) -> torch.Tensor:
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=D64)


# --- The exact ODE ------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [ct.EPS, 0.05, 0.7, 3.0, ct.SIGMA_MAX])
def test_exact_denoiser_is_the_mixture_posterior_mean_in_sigma(sigma):
    """D through the VP eps-predictor and the T = 2 schedule == the closed form in sigma, to 1e-10.

    Caught: x not rescaled by 1 / sqrt(1 + sigma^2) before the VP eps-predictor (off by O(1)),
    and t(sigma) read on another schedule (log-SNR of the wrong level)."""
    x = points(300, math.sqrt(1 + sigma**2), seed=1)
    s = torch.full((300,), sigma, dtype=D64)
    torch.testing.assert_close(DEN(x, s), closed_form_denoiser(x, s), rtol=1e-10, atol=1e-10)


def test_heun_step_is_karras_algorithm_1_on_the_closed_form_denoiser():
    """heun_step == Heun written out with the independent denoiser, per-row levels (B,).

    Caught: d' evaluated at sigma instead of sigma_next, and the Euler step returned (no average)."""
    x = points(200, 2.0, seed=2)
    s = torch.linspace(0.01, 5.0, 200, dtype=D64)
    s_next = 0.6 * s
    d = (x - closed_form_denoiser(x, s)) / s[:, None]
    x_e = x + (s_next - s)[:, None] * d
    d2 = (x_e - closed_form_denoiser(x_e, s_next)) / s_next[:, None]
    want = x + (s_next - s)[:, None] * (d + d2) / 2
    torch.testing.assert_close(ct.heun_step(DEN, x, s, s_next), want, rtol=1e-10, atol=1e-10)


def test_solve_ode_matches_the_closed_form_flow_of_one_gaussian_at_second_order():
    """Data N(mu, s^2 I): the ODE keeps (x - mu) / sqrt(s^2 + sigma^2) fixed. From sigma_max to eps
    the error of 256 Heun steps is < 2e-4 (8.8e-5 seen, against |x_eps - mu| ~ 0.2) and halving
    the steps multiplies it by ~4 (second order). Caught: the Euler step (ratio 2, error 1e-2)."""
    mu, s = torch.tensor([[0.3, -0.5]], dtype=D64), 0.2
    one = GaussianMixtureData(torch.ones(1, dtype=D64), mu, torch.tensor([s], dtype=D64))
    x = points(100, ct.SIGMA_MAX, seed=3)
    want = mu + math.sqrt((s**2 + ct.EPS**2) / (s**2 + ct.SIGMA_MAX**2)) * (x - mu)
    err = {
        n: (ct.solve_ode(ct.exact_denoiser(one), x, ct.SIGMA_MAX, sigma_to=ct.EPS, steps=n) - want)
        .abs()
        .max()
        .item()
        for n in (128, 256)
    }
    assert err[256] < 2e-4
    assert 3.5 < err[128] / err[256] < 4.5


def test_ring_mixture_is_the_mixture_gaussian_ring_draws_from():
    """Every std = 0 draw of data.gaussian_ring is one of the mixture's means, and every mean is hit."""
    centres = gaussian_ring(400, std=0.0, generator=torch.Generator().manual_seed(4)).double()
    dist = torch.cdist(centres, MIX.means)  # (400, 8)
    assert dist.min(1).values.max() < 1e-6
    assert set(dist.argmin(1).tolist()) == set(range(8))
    assert torch.allclose(MIX.stds, torch.full((8,), 0.05, dtype=D64))


def test_consistency_sigmas_are_song_et_al_grid():
    """t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho, rho = 7, increasing, exact ends.

    Caught: the grid left in karras_sigmas' decreasing order (t_1 = sigma_max)."""
    N, rho = 18, 7.0
    i = torch.arange(N, dtype=D64)
    lo, hi = ct.EPS ** (1 / rho), ct.SIGMA_MAX ** (1 / rho)
    want = (lo + i / (N - 1) * (hi - lo)) ** rho
    got = ct.consistency_sigmas(N)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)  # 4e-12 seen: rounding
    assert got[0].item() == ct.EPS and got[-1].item() == ct.SIGMA_MAX
    with pytest.raises(ValueError, match="N"):
        ct.consistency_sigmas(1)


# --- The consistency function -------------------------------------------------------------------


@pytest.mark.parametrize("sigma_data", [0.5, 0.71])
def test_boundary_condition_holds_exactly_for_any_weights(sigma_data):
    """c_skip(eps) = 1, c_out(eps) = 0, so f(x, eps) = x bit for bit; without the parametrisation
    it does not hold. Caught: c_out with sigma instead of sigma - eps (f(x, eps) != x)."""
    torch.manual_seed(0)
    f = ct.ConsistencyFunction(sigma_data=sigma_data)
    eps = torch.tensor([ct.EPS], dtype=D64)
    assert f.c_skip(eps).item() == 1.0 and f.c_out(eps).item() == 0.0
    x = torch.randn(64, 2)
    assert torch.equal(f(x, ct.EPS), x)
    plain = ct.ConsistencyFunction(sigma_data=sigma_data, parametrised=False)
    assert (plain(x, ct.EPS) - x).abs().max() > 0.1


def test_skip_and_out_weights_hand_over_from_x_to_the_network():
    """c_skip falls from 1 to ~0 and c_out rises from 0 to ~sigma_d across [eps, sigma_max]."""
    f = ct.ConsistencyFunction()
    s = ct.consistency_sigmas(18)
    assert (f.c_skip(s).diff() < 0).all() and (f.c_out(s).diff() > 0).all()
    assert f.c_skip(s[-1:]).item() < 0.01 and f.c_out(s[-1:]).item() == pytest.approx(0.5, rel=0.01)


def test_levels_outside_the_range_are_refused():
    f = ct.ConsistencyFunction()
    with pytest.raises(ValueError, match="sigma must lie in"):
        f(torch.zeros(3, 2), 0.001)
    with pytest.raises(ValueError, match="sigma must be a number or shape"):
        f(torch.zeros(3, 2), torch.ones(2))


# --- The losses ---------------------------------------------------------------------------------


class Recorder:
    """The identity consistency function, recording what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), sigma.clone()))
        return x


def test_cd_loss_is_algorithm_2_with_a_heun_step_of_the_exact_ode():
    """f sees x_{n+1} = x_0 + t_{n+1} z at a grid level, f_target the Heun step of the exact ODE
    (independent denoiser) to the level below; the loss is the mean squared distance.

    Caught: the target at t_{n+1} (no step), and the step taken from x_0 instead of x_{n+1}."""
    x_0 = MIX.sample(400, torch.Generator().manual_seed(5), dtype=D64)
    sigmas = ct.consistency_sigmas(18)
    f, f_target = Recorder(), Recorder()
    loss = ct.consistency_distillation_loss(
        f, f_target, x_0, sigmas, denoiser=DEN, generator=torch.Generator().manual_seed(6)
    )
    (x_next, s_next), (x_hat, s_n) = f.calls[0], f_target.calls[0]
    n = torch.searchsorted(sigmas, s_n)  # (B,): 0-based n - 1
    assert torch.equal(sigmas[n], s_n) and torch.equal(sigmas[n + 1], s_next)
    assert set(n.tolist()) == set(range(17))  # n ~ U{1..N-1}
    z = (x_next - x_0) / s_next[:, None]
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.05
    d = (x_next - closed_form_denoiser(x_next, s_next)) / s_next[:, None]
    x_e = x_next + (s_n - s_next)[:, None] * d
    d2 = (x_e - closed_form_denoiser(x_e, s_n)) / s_n[:, None]
    torch.testing.assert_close(x_hat, x_next + (s_n - s_next)[:, None] * (d + d2) / 2)
    assert loss.item() == pytest.approx((x_next - x_hat).pow(2).sum(1).mean().item(), rel=1e-12)


def test_ct_loss_uses_the_same_noise_at_both_levels():
    """CT: x_hat_n = x_0 + t_n z with the z of x_{n+1}. Caught: a fresh z for the target."""
    x_0 = MIX.sample(300, torch.Generator().manual_seed(7), dtype=D64)
    f, f_target = Recorder(), Recorder()
    ct.consistency_training_loss(
        f, f_target, x_0, ct.consistency_sigmas(18), generator=torch.Generator().manual_seed(8)
    )
    (x_next, s_next), (x_hat, s_n) = f.calls[0], f_target.calls[0]
    torch.testing.assert_close((x_hat - x_0) / s_n[:, None], (x_next - x_0) / s_next[:, None])


def test_exact_consistency_function_zeroes_the_cd_loss_and_a_wrong_one_does_not():
    """f = f_target = f* (the exact ODE solved to eps): the loss is the Heun step's error alone,
    < 2e-6 (5.6e-7 seen; an Euler step instead: 1e-5, red). f* of the ring with std 0.2 instead
    of 0.05 (the wrong data): 4e-4."""
    x_0 = MIX.sample(256, torch.Generator().manual_seed(9), dtype=D64)
    sigmas = ct.consistency_sigmas(18)

    def loss(f):
        g = torch.Generator().manual_seed(10)
        return ct.consistency_distillation_loss(f, f, x_0, sigmas, denoiser=DEN, generator=g)

    assert loss(ct.ExactConsistencyFunction(DEN)).item() < 2e-6
    wrong = ct.ExactConsistencyFunction(ct.exact_denoiser(ct.ring_mixture(std=0.2)))
    assert loss(wrong).item() > 1e-4


# --- Training -----------------------------------------------------------------------------------


def test_fit_is_seeded_and_the_target_is_the_ema_of_the_online_weights():
    """Two runs with one seed give the same losses; after one step, theta^- = mu theta_0 + (1 - mu)
    theta_1 (no warm-up). Caught: the EMA made with warmup=True (d_0 = 0.1, not mu)."""
    x_0 = MIX.sample(500, torch.Generator().manual_seed(11))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        f = ct.ConsistencyFunction(hidden=16, num_blocks=1)
        start = [p.detach().clone() for p in f.parameters()]
        target, losses = ct.fit_consistency(
            f, x_0, steps=1, denoiser=DEN, mu=0.9, generator=torch.Generator().manual_seed(12)
        )
        runs.append(losses)
    assert runs[0] == runs[1]
    for p_t, p_0, p_1 in zip(target.parameters(), start, f.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.9 * p_0 + 0.1 * p_1)


def test_a_short_distillation_moves_one_step_samples_onto_the_ode():
    """300 CD steps (batch 64) cut the 1-step distance to the exact ODE's end by > 2x (0.96 -> 0.32
    seen). Caught: zero_grad between backward and step (no update, no gain)."""
    torch.manual_seed(0)
    f = ct.ConsistencyFunction(hidden=32)
    x_0 = MIX.sample(2000, torch.Generator().manual_seed(13))
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(14))
    exact = {1: few_step_sample(ct.ExactConsistencyFunction(DEN), x_T, steps=1)}
    before = ct.sample_errors(f, exact, x_T)[1]
    g = torch.Generator().manual_seed(15)
    ct.fit_consistency(f, x_0, steps=300, batch_size=64, lr=5e-3, denoiser=DEN, generator=g)
    assert ct.sample_errors(f, exact, x_T)[1] < before / 2

"""Tests for core.sde: the VP-SDE's closed forms, its chain, and the Langevin samplers.

Each test states an identity that holds for the SDE (or the sampler) and fails when a factor,
an index or a sign in the implementation is wrong.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.core.sde import (
    VPSDE,
    annealed_langevin_sample,
    annealed_step_sizes,
    langevin_sample,
)

SDE = VPSDE(beta_min=0.1, beta_max=20.0)
TAUS = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)


@pytest.mark.parametrize(("T", "beta_start", "beta_end"), [(1000, 1e-4, 0.02), (200, 5e-4, 0.1)])
def test_from_schedule_chain_reproduces_linear_schedule(T, beta_start, beta_end):
    # beta_t = beta(t / T) / T must give back every beta of the schedule (float64 round-off);
    # an off-by-one (tau = (t - 1) / T) moves every beta by d = (beta_T - beta_1) / (T - 1).
    schedule = dt.linear_schedule(T, beta_start, beta_end)
    sde = VPSDE.from_schedule(schedule)
    torch.testing.assert_close(sde.chain_schedule(T).beta, schedule.beta, rtol=0, atol=1e-15)
    assert sde.beta_max == pytest.approx(T * beta_end)


def test_from_schedule_refuses_a_nonlinear_schedule():
    with pytest.raises(ValueError, match="linear"):
        VPSDE.from_schedule(dt.cosine_schedule(100))


def test_closed_forms_solve_the_moment_odes():
    # For dx = -beta/2 x dtau + sqrt(beta) dw: d log a / dtau = -beta / 2 and
    # d s^2 / dtau = beta (1 - s^2). Central differences with h = 1e-5 are exact to ~h^2 ~ 1e-9
    # (relative); a mean coefficient exp(-B) instead of exp(-B / 2) is off by a factor 2.
    h, tau = 1e-5, TAUS[:-1]
    dlog_a = (SDE.mean_coef(tau + h).log() - SDE.mean_coef(tau - h).log()) / (2 * h)
    torch.testing.assert_close(dlog_a, -0.5 * SDE.beta(tau), rtol=1e-7, atol=0)
    ds2 = (SDE.std(tau + h) ** 2 - SDE.std(tau - h) ** 2) / (2 * h)
    torch.testing.assert_close(ds2, SDE.beta(tau) * (1 - SDE.std(tau) ** 2), rtol=1e-7, atol=0)
    torch.testing.assert_close(SDE.mean_coef(tau) ** 2 + SDE.std(tau) ** 2, torch.ones_like(tau))
    assert SDE.std(0.0).item() == 0 and SDE.mean_coef(0.0).item() == 1


@pytest.mark.parametrize("T", [250, 1000])
def test_chain_marginals_converge_to_the_sde_at_first_order(T):
    # The chain's sqrt(alpha_bar_t) differs from a(t / T) by O(1 / T): quadrupling T must cut
    # the largest gap by about 4 (measured 3.99-4.0; [3.5, 4.5] allows the O(1/T^2) term).
    def gap(n):
        chain = SDE.chain_schedule(n)
        tau = torch.arange(n + 1, dtype=torch.float64) / n
        return (chain.alpha_bar.sqrt() - SDE.mean_coef(tau)).abs().max().item()

    assert 3.5 < gap(T) / gap(4 * T) < 4.5


def test_grid_schedule_hits_the_sde_exactly():
    grid = SDE.grid_schedule(TAUS)
    torch.testing.assert_close(grid.alpha_bar[1:], SDE.alpha_bar(TAUS), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="increasing"):
        SDE.grid_schedule([0.5, 0.2])


def _gaussian_1d(tau, mu=0.7, s0=0.3):
    tau = torch.as_tensor(tau, dtype=torch.float64)
    a, s = SDE.mean_coef(tau), SDE.std(tau)
    return a * mu, (a**2 * s0**2 + s**2).sqrt()  # mean and std of x(tau) for x(0) ~ N(mu, s0^2)


def test_ode_drift_is_the_velocity_of_the_exact_gaussian_flow():
    # For Gaussian data the flow keeps z = (x - m(tau)) / std(tau) fixed, so dx/dtau is
    # m' + std' z; the ODE drift with the exact score -(x - m) / std^2 must equal it (the
    # factor 1/2 on g^2 score is what makes it so; without it the error is O(1)).
    z, h = torch.linspace(-2, 2, 9, dtype=torch.float64), 1e-6
    for tau in (0.05, 0.4, 0.9):
        m, sd = _gaussian_1d(tau)
        x = m + sd * z
        score = -(x - m) / sd**2
        (mp, sp), (mm, sm) = _gaussian_1d(tau + h), _gaussian_1d(tau - h)
        velocity = (mp + sp * z - mm - sm * z) / (2 * h)
        torch.testing.assert_close(SDE.ode_drift(x, tau, score), velocity, rtol=1e-6, atol=1e-8)


def test_reverse_sde_with_the_exact_score_returns_the_data_law():
    # Euler-Maruyama on the reverse SDE from x(1) ~ N(m(1), std(1)^2) to tau = 0.01 with the exact
    # Gaussian score: mean and std must match the exact marginal at tau = 0.01 within 5 standard
    # errors plus the O(1/K) step bias (K = 1000 steps: ~1e-3 measured). A g^2 / 2 in place of
    # g^2 (the ODE's coefficient without removing the noise) inflates the std by ~50 %.
    g = torch.Generator().manual_seed(0)
    n, K, tau_end = 20_000, 1000, 0.01
    m, sd = _gaussian_1d(1.0)
    x = m + sd * torch.randn(n, generator=g, dtype=torch.float64)
    taus = torch.linspace(1.0, tau_end, K + 1, dtype=torch.float64)
    for tau, tau_next in zip(taus[:-1], taus[1:], strict=True):
        d = (tau - tau_next).item()
        m, sd = _gaussian_1d(tau)
        score = -(x - m) / sd**2
        z = torch.randn(n, generator=g, dtype=torch.float64)
        x = (
            x
            - SDE.reverse_drift(x, tau.item(), score) * d
            + SDE.diffusion(tau.item()) * math.sqrt(d) * z
        )
    m, sd = _gaussian_1d(tau_end)
    se_mean, se_std = sd / math.sqrt(n), sd / math.sqrt(2 * n)
    assert abs(x.mean() - m) < 5 * se_mean + 2e-3
    assert abs(x.std() - sd) < 5 * se_std + 2e-3


@pytest.mark.parametrize("step_size", [0.05, 0.2])
def test_langevin_stationary_variance_on_a_gaussian(step_size):
    # On N(m, s^2) one step is x' = (1 - delta / (2 s^2)) (x - m) + m + sqrt(delta) z, whose
    # stationary variance is s^2 / (1 - delta / (4 s^2)) exactly (the O(delta) bias of unadjusted
    # Langevin). 20,000 chains, 200 steps (the start's memory decays like 0.98^200 < 2 %... at
    # delta = 0.05 and s = 0.8: factor 0.961^200 ~ 3e-4). Checked at 5 standard errors; sqrt(2 delta)
    # noise or delta in place of delta / 2 on the score moves the variance by > 20 SE.
    m, s = 0.5, 0.8
    g = torch.Generator().manual_seed(1)
    x0 = torch.zeros(20_000, 1, dtype=torch.float64)
    x = langevin_sample(
        lambda x: -(x - m) / s**2, x0, step_size=step_size, steps=200, generator=g, progress=False
    )
    var = s**2 / (1 - step_size / (4 * s**2))
    se = var * math.sqrt(2 / x.numel())
    assert abs(x.var().item() - var) < 5 * se
    assert abs(x.mean().item() - m) < 5 * math.sqrt(var / x.numel())


def test_annealed_langevin_one_level_is_langevin_draw_for_draw():
    score = lambda x, sigma: -x / (1 + sigma**2)  # noqa: E731  N(0, 1) blurred by sigma
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = annealed_langevin_sample(
        score,
        x0,
        [0.5],
        [0.1],
        steps_per_level=7,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    b = langevin_sample(
        lambda x: score(x, 0.5),
        x0,
        step_size=0.1,
        steps=7,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_annealed_langevin_follows_the_exact_moment_recursion():
    # On N(0, V_i), V_i = 1 + sigma_i^2, a step maps mean and variance exactly:
    # m' = c m, v' = c^2 v + delta with c = 1 - delta / (2 V_i). The chains' mean and variance at
    # the end of each level must match this recursion within 5 standard errors; a level run with
    # the wrong sigma (an off-by-one in the level index) or with a step not scaled by sigma_i^2
    # misses by > 10 SE.
    sigmas = [3.0, 1.0, 0.3]
    deltas = annealed_step_sizes(sigmas, eps=0.02)
    torch.testing.assert_close(torch.tensor(deltas), 0.02 * torch.tensor(sigmas) ** 2 / 0.09)
    seen = {}
    n, k = 20_000, 50
    annealed_langevin_sample(
        lambda x, sig: -x / (1 + sig**2),
        torch.full((n, 1), 5.0, dtype=torch.float64),
        sigmas,
        deltas,
        steps_per_level=k,
        generator=torch.Generator().manual_seed(4),
        progress=False,
        callback=lambda i, x: seen.__setitem__(i, (x.mean().item(), x.var().item())),
    )
    m, v = 5.0, 0.0
    for level, (sig, d) in enumerate(zip(sigmas, deltas, strict=True)):
        c = 1 - d / (2 * (1 + sig**2))
        for _ in range(k):
            m, v = c * m, c * c * v + d
        got_m, got_v = seen[(level + 1) * k - 1]
        assert abs(got_m - m) < 5 * math.sqrt(v / n), (level, got_m, m)
        assert abs(got_v - v) < 5 * v * math.sqrt(2 / n), (level, got_v, v)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: VPSDE(beta_min=1.0, beta_max=0.5), "beta_max"),
        (lambda: SDE.alpha_bar(1.5), "tau must lie in"),
        (lambda: SDE.chain_schedule(10), "T must be > beta_max"),
        (
            lambda: langevin_sample(lambda x: x, torch.zeros(2, 1), step_size=0.0, steps=1),
            "step_size",
        ),
        (
            lambda: annealed_langevin_sample(
                lambda x, s: x, torch.zeros(2, 1), [0.1, 1.0], [1.0, 1.0], steps_per_level=1
            ),
            "decreasing",
        ),
        (
            lambda: annealed_langevin_sample(
                lambda x, s: x, torch.zeros(2, 1), [1.0], [1.0, 1.0], steps_per_level=1
            ),
            "equal length",
        ),
        (
            lambda: langevin_sample(lambda x: x[:1], torch.zeros(2, 1), step_size=0.1, steps=1),
            "shaped like x",
        ),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_python_float_times_keep_float64_precision():
    # tau = 0.6 + 1e-6 as a Python float must not be rounded to float32 (spacing ~6e-8 at 0.6),
    # or a finite difference of a(tau) with h = 1e-6 is off by ~5 %.
    h = 1e-6
    slope = (SDE.mean_coef(0.6 + h) - SDE.mean_coef(0.6 - h)).item() / (2 * h)
    exact = (-0.5 * SDE.beta(0.6) * SDE.mean_coef(0.6)).item()
    assert slope == pytest.approx(exact, rel=1e-7)

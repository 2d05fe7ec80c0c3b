"""Tests for the EDM samplers (samplers.edm) and Karras' rho grid (samplers.timesteps).

Oracles, not golden numbers: the exact probability-flow ODE of Gaussian data (Heun's error falls
like steps^-2, Euler's like steps^-1), DDIM (Euler in sigma is DDIM eta = 0 on the same grid),
and the data's mean and std for the churned (stochastic) samplers.
"""

import math

import numpy as np
import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import cosine_schedule, linear_schedule
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.samplers import (
    ddim_sample,
    dpm_solver_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
    karras_timesteps,
    uniform_timesteps,
)

SCHED = linear_schedule()
DATA = GaussianData(torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.1, 0.3, 0.6, 1.0]))
MODEL = DATA.model(SCHED)
EDM_SIGMA = (SCHED.sigma / SCHED.sqrt_alpha_bar).clone()  # (T+1,) sigma = sqrt((1 - ab) / ab)


def x_T(n=64, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


# ---------------------------------------------------------------- the rho grid
@pytest.mark.parametrize("steps", [1, 2, 5, 18, 100])
def test_karras_sigmas_follow_eq_5(steps):
    """sigma^(1/rho) is equally spaced from sigma_T^(1/rho) to sigma_1^(1/rho), then 0."""
    s = karras_sigmas(SCHED, steps)
    assert s.dtype == torch.float64 and s.shape == (steps + 1,) and s[-1] == 0
    torch.testing.assert_close(s[0], EDM_SIGMA[-1], rtol=1e-12, atol=0)  # sigma_T, exp(-lam_T)
    if steps > 1:
        torch.testing.assert_close(s[-2], EDM_SIGMA[1], rtol=1e-12, atol=0)  # sigma_1
        gaps = (s[:-1] ** (1 / 7)).diff()
        torch.testing.assert_close(gaps, gaps.mean().expand_as(gaps), rtol=1e-9, atol=0)
    assert (s[1:] < s[:-1]).all()


@pytest.mark.parametrize("steps", [1, 2, 10, 50, 200, 1000])
@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule()], ids=["linear", "cosine"])
def test_karras_timesteps_are_valid_for_integer_samplers(steps, schedule):
    """steps + 1 strictly decreasing ints from T to 1, then 0, as every timesteps function."""
    ts = karras_timesteps(schedule, steps)
    assert ts.dtype == torch.int64 and ts.shape == (steps + 1,)
    assert ts[0] == schedule.T and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    if steps >= 2:
        assert ts[-2] == 1


@pytest.mark.parametrize("steps", [10, 50, 75])
def test_karras_timesteps_round_the_sigma_grid(steps):
    """Without ties (linear T = 1000 up to 75 steps), each time is round(t(sigma_i))."""
    t = NoiseLevel.from_edm_sigma(karras_sigmas(SCHED, steps)[:-1]).t(SCHED)
    assert karras_timesteps(SCHED, steps)[:-1].tolist() == np.round(t.numpy()).tolist()


@pytest.mark.parametrize("sampler", [ddim_sample, dpm_solver_sample])
def test_karras_timesteps_drive_the_integer_samplers(sampler):
    x = sampler(MODEL, SCHED, x_T(), steps=20, timesteps=karras_timesteps, progress=False)
    assert rms(x, DATA.ode_endpoint(x_T(), SCHED)) < 0.2  # converges; order checked elsewhere


# ---------------------------------------------------------------- exact identities and orders
def test_euler_in_sigma_is_ddim_eta0_on_the_same_grid():
    """Karras et al. sec. 3: DDIM is Euler's method on dx/dsigma = eps_hat in x = x_VP / sqrt(ab).

    Same grid (the sigmas of uniform_timesteps), so the two agree to float64 rounding: the
    model is called at t(sigma_i), which is the integer t_i up to ~1e-12.
    """
    ts = uniform_timesteps(SCHED, 17)
    grid = torch.cat([EDM_SIGMA[ts[:-1]], torch.zeros(1, dtype=torch.float64)])
    a = euler_sample(MODEL, SCHED, x_T(), steps=17, sigmas=lambda s, n: grid, progress=False)
    b = ddim_sample(MODEL, SCHED, x_T(), steps=17, timesteps=uniform_timesteps, progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _slope(sampler, steps):
    ref = DATA.ode_endpoint(x_T(), SCHED)
    err = [rms(sampler(MODEL, SCHED, x_T(), steps=n, progress=False), ref) for n in steps]
    return np.polyfit(np.log(steps), np.log(err), 1)[0]


def test_heun_converges_at_second_order_to_the_exact_ode():
    """log-log slope of the error against steps: measured -2.2 for Heun (Alg. 1), -1.0 for Euler.

    The slope allowance [-2.6, -1.8] would fail for a first-order method (e.g. the correction
    using d twice) or for a model fed the unscaled VE state (no convergence at all).
    """
    heun = _slope(heun_sample, [16, 32, 64])
    euler = _slope(euler_sample, [16, 32, 64])
    assert -2.6 < heun < -1.8, heun
    assert -1.2 < euler < -0.8, euler


def test_the_network_sees_the_vp_input_scale():
    """Each model call gets x / sqrt(sigma^2 + 1), distributed as x_t ~ N(a mean, m_t^2) at its t.

    The first call (t = T) gets x_T itself, while the VE state there has std ~ 157; the later
    calls get inputs with the marginal std m_t of q(x_t) (n = 2000: std SE 1.6 %; allowance 10 %
    for Monte Carlo and the 32-step sampler's own error, which is largest mid-way).
    """
    seen = []
    heun_sample(MODEL, SCHED, x_T(2000), steps=32, progress=False,
                callback=lambda i, t, x, x0: seen.append((t, x)))  # fmt: skip
    assert len(seen) == 2 * 32 - 1
    assert seen[0][0] == SCHED.T
    torch.testing.assert_close(seen[0][1], x_T(2000), rtol=1e-12, atol=1e-12)
    for t, x in seen:
        assert 1 <= t <= SCHED.T and isinstance(t, float)
        m = DATA.marginal_std(torch.tensor([t], dtype=torch.float64), SCHED, x[:1])[0]
        rel = x.std(0) / m - 1
        assert rel.abs().max() < 0.1, (t, rel)


@pytest.mark.parametrize(
    "sampler",
    [
        lambda x, g: heun_sample(
            MODEL, SCHED, x, steps=32, s_churn=10.0, generator=g, progress=False
        ),
        lambda x, g: euler_sample(
            MODEL, SCHED, x, steps=200, s_churn=40.0, generator=g, progress=False
        ),
    ],
    ids=["heun_churn", "euler_churn"],
)
def test_churned_samplers_reproduce_data_mean_and_std(sampler):
    n = 2000
    x = sampler(x_T(n), torch.Generator().manual_seed(1))
    # As in test_samplers: 5 SE of Monte Carlo plus 3 % of std for the sampler's own bias.
    assert ((x.mean(0) - DATA.mean).abs() <= 5 * DATA.std / n**0.5 + 0.03 * DATA.std).all()
    rel_std = x.std(0) / DATA.std - 1
    assert (rel_std.abs() <= 5 / (2 * n) ** 0.5 + 0.03).all(), rel_std


def test_churn_uses_the_generator_and_s_churn_0_draws_nothing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = heun_sample(MODEL, SCHED, x_T(), steps=8, generator=g, progress=False)
    assert torch.equal(g.get_state(), state)  # deterministic: no draws
    b = heun_sample(MODEL, SCHED, x_T(), steps=8, s_churn=5.0, generator=g, progress=False)
    c = heun_sample(MODEL, SCHED, x_T(), steps=8, s_churn=5.0,
                    generator=torch.Generator().manual_seed(3), progress=False)  # fmt: skip
    assert torch.equal(b, c) and not torch.equal(a, b)


def test_project_sees_vp_states_down_to_t0():
    calls = []

    def project(t, x):
        calls.append(t)
        return x

    a = euler_sample(MODEL, SCHED, x_T(), steps=6, project=project, progress=False)
    b = euler_sample(MODEL, SCHED, x_T(), steps=6, progress=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # the identity hook changes nothing
    assert (
        len(calls) == 6
        and calls[-1] == 0
        and all(u > v for u, v in zip(calls, calls[1:], strict=False))
    )
    # A hook that pins the state pins the output: the VP view is scaled back correctly.
    c = heun_sample(MODEL, SCHED, x_T(), steps=6, project=lambda t, x: torch.zeros_like(x),
                    progress=False)  # fmt: skip
    assert torch.equal(c, torch.zeros_like(c))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(s_churn=-1.0), ValueError, "s_churn"),
        (dict(s_noise=float("nan")), ValueError, "s_noise"),
        (dict(s_tmin=2.0, s_tmax=1.0), ValueError, "s_tmax"),
        (dict(sigmas=lambda s, n: torch.tensor([1e4, 1.0, 0.0])), ValueError, "sigma_T"),
        (dict(sigmas=lambda s, n: torch.tensor([10.0, 1e-4, 0.0])), ValueError, "sigma_1"),
        (dict(sigmas=lambda s, n: torch.tensor([10.0, 1.0])), ValueError, "3 strictly"),
        (dict(project="no"), TypeError, "project"),
    ],
)
@pytest.mark.parametrize("sampler", [euler_sample, heun_sample])
def test_bad_arguments_raise(sampler, kwargs, error, match):
    kwargs = {"steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        sampler(MODEL, SCHED, x_T(), progress=False, **kwargs)


def test_float32_sampling_matches_float64():
    a = heun_sample(MODEL, SCHED, x_T().float(), steps=10, progress=False)
    b = heun_sample(MODEL, SCHED, x_T(), steps=10, progress=False)
    assert a.dtype == torch.float32
    # float32 rounding of a VE state of size ~157 and of t: ~1e-5 relative on the way down.
    torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    assert math.isfinite(a.abs().max().item())

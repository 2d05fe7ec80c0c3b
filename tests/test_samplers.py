"""Tests for diffusion_tutorial.samplers against the exact Gaussian oracle (no golden numbers)."""

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import cosine_schedule, linear_schedule
from diffusion_tutorial.samplers import (
    clipped_logsnr_timesteps,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    karras_timesteps,
    logsnr_timesteps,
    power_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)
from diffusion_tutorial.samplers.timesteps import BURIED

SCHED = linear_schedule()
DATA = GaussianData(torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.1, 0.3, 0.6, 1.0]))
MODEL = DATA.model(SCHED)
SPACINGS = [
    power_timesteps,
    uniform_timesteps,
    logsnr_timesteps,
    clipped_logsnr_timesteps,
    karras_timesteps,
    quadratic_timesteps,
]


def x_T(n=64, dtype=torch.float64, seed=0, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


# ---------------------------------------------------------------- step spacing
@pytest.mark.parametrize("fn", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule()], ids=["linear", "cosine"])
def test_timesteps_are_valid(fn, steps, schedule):
    ts = fn(schedule, steps)
    assert ts.dtype == torch.int64 and ts.shape == (steps + 1,)
    assert ts[0] <= schedule.T and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    if ts[0] < schedule.T:  # only power_timesteps starts late, and only where data is buried
        assert fn is power_timesteps
        assert schedule.alpha_bar[ts[0]].sqrt() <= BURIED
    if steps >= 2:
        assert ts[-2] == 1  # the last model call is at t = 1: no sampler stops early
    if steps == schedule.T:
        assert ts.tolist() == list(range(schedule.T, -1, -1))


# ---------------------------------------------------------------- moments
SCHED200 = linear_schedule(200, 5e-4, 0.1)  # alpha_bar_T = 3e-5: a short chain for fast checks

SAMPLERS = {
    "ddpm": lambda x, g: ddpm_sample(MODEL, SCHED, x, generator=g, progress=False),
    # First-order DDIM at 100 steps: quadratic spacing keeps its discretisation bias on the
    # std-0.1 coordinates below the 0.03 allowance (the uniform grid needs ~1000 steps).
    "ddim_eta0": lambda x, g: ddim_sample(
        MODEL, SCHED, x, steps=100, timesteps=quadratic_timesteps, progress=False
    ),
    "ddim_eta1": lambda x, g: ddim_sample(
        MODEL,
        SCHED,
        x,
        steps=100,
        eta=1.0,
        generator=g,
        timesteps=quadratic_timesteps,
        progress=False,
    ),
    "dpm1": lambda x, g: dpm_solver_sample(MODEL, SCHED, x, steps=100, order=1, progress=False),
    "dpm2": lambda x, g: dpm_solver_sample(MODEL, SCHED, x, steps=20, order=2, progress=False),
    "dpm3": lambda x, g: dpm_solver_sample(MODEL, SCHED, x, steps=20, order=3, progress=False),
    "sde2": lambda x, g: dpm_solver_sde_sample(
        MODEL, SCHED, x, steps=50, generator=g, progress=False
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=pytest.mark.slow) if k == "ddpm" else k for k in SAMPLERS]
)
def test_sampler_reproduces_data_mean_and_std(name):
    n = 2000
    x = SAMPLERS[name](x_T(n), torch.Generator().manual_seed(1))
    # Monte Carlo: mean SE = std / sqrt(n), relative std SE = 1 / sqrt(2n) = 1.6 %. Allow 5 SE
    # plus the sampler's own bias (< 3 % of std for these step counts; DDPM needs all T = 1000
    # steps: with T = 200 its beta_tilde variance underestimates a std-0.1 coordinate by ~15 %).
    se_mean = DATA.std / n**0.5
    assert ((x.mean(0) - DATA.mean).abs() <= 5 * se_mean + 0.03 * DATA.std).all(), name
    rel_std = x.std(0) / DATA.std - 1
    assert (rel_std.abs() <= 5 / (2 * n) ** 0.5 + 0.03).all(), (name, rel_std)


# ---------------------------------------------------------------- exact identities
def test_ddim_eta0_equals_first_order_dpm_solver():
    x = x_T()
    for fn in (uniform_timesteps, logsnr_timesteps):
        a = ddim_sample(MODEL, SCHED, x, steps=17, timesteps=fn, progress=False)
        b = dpm_solver_sample(MODEL, SCHED, x, steps=17, order=1, timesteps=fn, progress=False)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)  # same maths, float64 rounding


def test_power_timesteps_start_one_step_below_T_when_data_is_buried():
    """p = 1 gives DDIM's reference-code times (diffusers' "leading"); few steps start at T."""
    assert power_timesteps(SCHED, 10, p=1.0).tolist() == [
        900,
        800,
        700,
        600,
        501,
        401,
        301,
        201,
        101,
        1,
        0,
    ]
    assert power_timesteps(SCHED, 5)[0] == SCHED.T  # one step below T is t ~ 700: data visible
    assert power_timesteps(SCHED, 1).tolist() == [SCHED.T, 0]


def test_first_order_sde_solver_is_ddim_eta1():
    """The order-1 SDE step is the DDPM posterior with x0_hat plugged in: DDIM(eta=1), same noise."""
    x = x_T()
    for fn in (uniform_timesteps, logsnr_timesteps):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = ddim_sample(
            MODEL, SCHED, x, steps=17, eta=1.0, generator=g1, timesteps=fn, progress=False
        )
        b = dpm_solver_sde_sample(
            MODEL, SCHED, x, steps=17, order=1, generator=g2, timesteps=fn, progress=False
        )
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_second_order_sde_solver_has_smaller_variance_error():
    """At 20 steps the first-order SDE step loses a large part of the variance of the std-0.1
    coordinate; the second-order step keeps it within a few per cent (exact model, 4000 samples)."""
    x = x_T(4000, seed=4)
    var_err = []
    for order in (1, 2):
        out = dpm_solver_sde_sample(
            MODEL,
            SCHED,
            x,
            steps=20,
            order=order,
            generator=torch.Generator().manual_seed(6),
            progress=False,
        )
        var_err.append((out.var(0) / DATA.std**2 - 1).abs().max().item())
    assert var_err[1] < var_err[0] / 3, var_err


def test_order3_falls_back_to_order2_on_large_steps():
    """With 10 steps on the linear schedule every lambda step exceeds ORDER3_MAX_STEP (~1.07)."""
    x = x_T()
    a = dpm_solver_sample(MODEL, SCHED, x, steps=10, order=3, progress=False)
    b = dpm_solver_sample(MODEL, SCHED, x, steps=10, order=2, progress=False)
    assert torch.equal(a, b)
    a = dpm_solver_sample(MODEL, SCHED, x, steps=20, order=3, progress=False)  # steps ~0.5
    b = dpm_solver_sample(MODEL, SCHED, x, steps=20, order=2, progress=False)
    assert not torch.equal(a, b)


def test_ddim_eta1_with_all_steps_is_ddpm():
    """Same noise stream: DDIM(eta=1, every t) reproduces the DDPM samples, hence its variance."""
    sched = linear_schedule(100, 1e-3, 0.2)
    model = DATA.model(sched)
    x = x_T(500)
    a = ddpm_sample(model, sched, x, generator=torch.Generator().manual_seed(5), progress=False)
    b = ddim_sample(
        model,
        sched,
        x,
        steps=100,
        eta=1.0,
        timesteps=uniform_timesteps,
        generator=torch.Generator().manual_seed(5),
        progress=False,
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)  # float64 rounding over 100 steps
    torch.testing.assert_close(a.var(0), b.var(0), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "steps, tol", [(50, 0.05), pytest.param(500, 0.005, marks=pytest.mark.slow)]
)
def test_ddim_invert_then_sample_round_trip(steps, tol):
    """Inversion evaluates eps at (x_s, u) instead of (x_u, u): first-order error, so the round
    trip tolerance shrinks ~ 1 / steps (measured RMS with the default power grid: 0.024 at
    50 steps, 0.0028 at 500)."""
    x0 = DATA.sample(128, torch.Generator().manual_seed(2), dtype=torch.float64)
    xT = ddim_invert(MODEL, SCHED, x0, steps=steps, progress=False)
    back = ddim_sample(MODEL, SCHED, xT, steps=steps, progress=False)
    assert rms(back, x0) < tol


# ---------------------------------------------------------------- convergence to the exact ODE
def _grid(n, t_end=200):
    """n equal steps in t from T down to t_end, then 0 (nested when n doubles)."""
    return lambda schedule, steps: torch.tensor(
        [1000 - k * (1000 - t_end) // n for k in range(n + 1)] + [0], dtype=torch.int64
    )


def _error_at(order, n, t_end=200):
    x = x_T(256)
    seen = {}

    def cb(i, t, x_t, x0_hat):
        seen[t] = x_t

    dpm_solver_sample(
        MODEL, SCHED, x, steps=n + 1, order=order, timesteps=_grid(n), callback=cb, progress=False
    )
    return rms(seen[t_end], DATA.flow(x, 1000, t_end, SCHED))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_convergence_rate_matches_order(order):
    """Halving the step size divides the error at t = 200 by about 2^order (float64, exact model)."""
    errs = [_error_at(order, n) for n in (20, 40, 80)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert 0.7 * 2**order < ratios[-1] < 1.4 * 2**order, (errs, ratios)


def test_deterministic_samplers_approach_exact_endpoint():
    x = x_T(256)
    ref = DATA.ode_endpoint(x, SCHED)
    floor = rms(DATA.x0_hat(DATA.flow(x, 1000, 1, SCHED), 1, SCHED), ref)
    errs = [
        rms(
            dpm_solver_sample(
                MODEL, SCHED, x, steps=n, order=3, timesteps=logsnr_timesteps, progress=False
            ),
            ref,
        )
        for n in (10, 20, 50)
    ]
    assert errs[0] > errs[1] > errs[2]
    # With 200 steps the solver error is below the unavoidable x0_hat-at-t=1 floor.
    err200 = rms(
        dpm_solver_sample(
            MODEL, SCHED, x, steps=200, order=3, timesteps=logsnr_timesteps, progress=False
        ),
        ref,
    )
    assert err200 < 2 * floor


# ---------------------------------------------------------------- options and dtypes
def test_same_seed_is_bitwise_identical():
    x = x_T(32, dtype=torch.float32)
    for run in (
        lambda g: ddpm_sample(DATA.model(SCHED200), SCHED200, x, generator=g, progress=False),
        lambda g: ddim_sample(MODEL, SCHED, x, steps=20, eta=0.5, generator=g, progress=False),
        lambda g: dpm_solver_sample(MODEL, SCHED, x, steps=20, order=3, progress=False),
        lambda g: dpm_solver_sde_sample(MODEL, SCHED, x, steps=20, generator=g, progress=False),
    ):
        assert torch.equal(
            run(torch.Generator().manual_seed(7)), run(torch.Generator().manual_seed(7))
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_finite_and_keeps_dtype(dtype):
    x = x_T(16, dtype=torch.float32).to(dtype)
    for out in (
        ddpm_sample(
            DATA.model(SCHED200),
            SCHED200,
            x,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        ),
        ddim_sample(MODEL, SCHED, x, steps=10, eta=1.0, progress=False),
        dpm_solver_sample(MODEL, SCHED, x, steps=10, order=3, progress=False),
        dpm_solver_sde_sample(MODEL, SCHED, x, steps=10, progress=False),
    ):
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_float64_gives_full_accuracy():
    """In float64 two algebraically equal samplers agree to ~1e-12; float32 only to ~1e-6."""
    x = x_T(64)
    a64 = ddim_sample(MODEL, SCHED, x, steps=50, progress=False)
    b64 = dpm_solver_sample(
        MODEL, SCHED, x, steps=50, order=1, timesteps=power_timesteps, progress=False
    )
    assert (a64 - b64).abs().max() < 1e-12
    a32 = ddim_sample(MODEL, SCHED, x.float(), steps=50, progress=False)
    assert (a32.double() - a64).abs().max() < 1e-4


def test_callback_and_clipping():
    x = 3 * x_T(8)
    calls = []

    def cb(i, t, x_t, x0_hat):
        calls.append((i, t))
        assert x_t.shape == x0_hat.shape == x.shape
        assert x0_hat.abs().max() <= 1

    out = dpm_solver_sample(MODEL, SCHED, x, steps=12, clip_x0=True, callback=cb, progress=False)
    ts = logsnr_timesteps(SCHED, 12).tolist()  # the default grid
    assert calls == list(enumerate(ts[:-1]))
    assert out.abs().max() <= 1
    out = ddim_sample(MODEL, SCHED, x, steps=5, clip_x0=True, progress=True)  # tqdm bar on
    assert out.abs().max() <= 1


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=0), ValueError),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=1001), ValueError),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=2.0), TypeError),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), eta=-0.1), ValueError),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), eta=5.0), ValueError),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T(), order=0), ValueError),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T(), order=4), ValueError),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T().long()), TypeError),
        (lambda: dpm_solver_sde_sample(MODEL, SCHED, x_T(), order=3), ValueError),
        (lambda: dpm_solver_sde_sample(MODEL, SCHED, x_T(), steps=0), ValueError),
        (lambda: ddpm_sample(MODEL, SCHED, torch.full((2, 4), float("nan"))), ValueError),
        (lambda: ddpm_sample(lambda x, t: x[:, :2], SCHED, x_T()), ValueError),
        (lambda: ddim_invert(MODEL, SCHED, x_T(), steps=0), ValueError),
        (lambda: power_timesteps(SCHED, 10, p=0.5), ValueError),
        (lambda: power_timesteps(SCHED, 10, p=float("nan")), ValueError),
        (
            lambda: ddim_sample(
                MODEL,
                SCHED,
                x_T(),
                steps=5,
                timesteps=lambda s, n: torch.tensor([1000, 5, 5, 2, 1, 0]),
            ),
            ValueError,
        ),
    ],
)
def test_bad_input(call, err):
    with pytest.raises(err):
        call()

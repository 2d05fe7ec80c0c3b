"""Tests for diffusion_tutorial.samplers against exact answers (no golden numbers).

The oracle is ``GaussianData``: for Gaussian data the optimal eps-predictor, the exact
probability-flow ODE and its endpoint are known in closed form, so every error is the sampler's.
"""

import math

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import cosine_schedule, linear_schedule
from diffusion_tutorial.samplers import (
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    dpm_solver_3_exact_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    leading_timesteps,
    logsnr_timesteps,
    quadratic_timesteps,
    repaint_sample,
    uniform_timesteps,
)

SCHED = linear_schedule()
DATA = GaussianData(torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.1, 0.3, 0.6, 1.0]))
MODEL = DATA.model(SCHED)
GRIDS = [leading_timesteps, uniform_timesteps, quadratic_timesteps, logsnr_timesteps]


def x_T(n=64, dtype=torch.float64, seed=0, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def fixed(ts):
    """A timesteps function that returns the given times (for exact, hand-made grids)."""
    return lambda schedule, steps: torch.tensor(ts, dtype=torch.int64)


# ---------------------------------------------------------------- step spacing
@pytest.mark.parametrize("fn", GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule()], ids=["linear", "cosine"])
def test_timesteps_are_valid(fn, steps, schedule):
    ts = fn(schedule, steps)
    assert ts.dtype == torch.int64 and ts.shape == (steps + 1,)
    assert ts[0] <= schedule.T and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    if steps >= 2:
        assert ts[-2] == 1  # the last model call is at t = 1: no sampler stops early
    if steps == schedule.T:
        assert ts.tolist() == list(range(schedule.T, -1, -1))


def test_timesteps_follow_their_papers():
    """DDIM code's range(0, T, T // steps) + 1; DDIM's floor(c i^2) + 1 ending at T; lambda grid."""
    assert leading_timesteps(SCHED, 10).tolist() == [901 - 100 * i for i in range(10)] + [0]
    assert leading_timesteps(SCHED, 7).tolist() == [1 + 142 * i for i in range(6, -1, -1)] + [0]
    quad = [1 + math.floor(999 * (i / 9) ** 2) for i in range(9, -1, -1)]
    assert quadratic_timesteps(SCHED, 10).tolist() == quad + [0]
    ts = logsnr_timesteps(SCHED, 12)[:-1]  # lam_T ... lam_1 in 11 equal steps, t rounded
    target = torch.linspace(SCHED.lam[-1].item(), SCHED.lam[1].item(), 12, dtype=torch.float64)
    lam = SCHED.lam
    assert ts[0] == SCHED.T and ts[-1] == 1
    assert ((lam[ts[1:-1] + 1] <= target[1:-1]) & (target[1:-1] <= lam[ts[1:-1] - 1])).all()


# ---------------------------------------------------------------- moments
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
    "dpm3m": lambda x, g: dpm_solver_sample(MODEL, SCHED, x, steps=20, order=3, progress=False),
    "dpm3_exact": lambda x, g: dpm_solver_3_exact_sample(MODEL, SCHED, x, steps=20, progress=False),
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
    # plus the sampler's own bias (< 3 % of std for these step counts).
    se_mean = DATA.std / n**0.5
    assert ((x.mean(0) - DATA.mean).abs() <= 5 * se_mean + 0.03 * DATA.std).all(), name
    rel_std = x.std(0) / DATA.std - 1
    assert (rel_std.abs() <= 5 / (2 * n) ** 0.5 + 0.03).all(), (name, rel_std)


# ---------------------------------------------------------------- exact identities
@pytest.mark.parametrize("fn", GRIDS)
def test_ddim_eta0_equals_first_order_dpm_solver(fn):
    a = ddim_sample(MODEL, SCHED, x_T(), steps=17, timesteps=fn, progress=False)
    b = dpm_solver_sample(MODEL, SCHED, x_T(), steps=17, order=1, timesteps=fn, progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)  # same maths, float64 rounding


@pytest.mark.parametrize("fn", [leading_timesteps, logsnr_timesteps])
def test_first_order_sde_solver_is_ddim_eta1(fn):
    """The order-1 SDE step is the DDPM posterior with x0_hat plugged in: DDIM(eta=1), same noise."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = ddim_sample(
        MODEL, SCHED, x_T(), steps=17, eta=1.0, generator=g1, timesteps=fn, progress=False
    )
    b = dpm_solver_sde_sample(
        MODEL, SCHED, x_T(), steps=17, order=1, generator=g2, timesteps=fn, progress=False
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_ddim_eta1_with_all_steps_is_ddpm():
    """Same noise stream: DDIM(eta=1, every t) reproduces the DDPM samples, hence its variance."""
    sched = linear_schedule(100, 1e-3, 0.2)
    model, x, g = DATA.model(sched), x_T(500), torch.Generator
    a = ddpm_sample(model, sched, x, generator=g().manual_seed(5), progress=False)
    b = ddim_sample(
        model, sched, x, steps=100, eta=1.0, generator=g().manual_seed(5), progress=False
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)  # float64 rounding over 100 steps


def test_second_order_sde_solver_has_smaller_variance_error():
    """At 20 steps the first-order SDE step loses a large part of the variance of the std-0.1
    coordinate; the second-order step keeps it within a few per cent (exact model, 4000 samples)."""
    var_err = []
    for order in (1, 2):
        g = torch.Generator().manual_seed(6)
        out = dpm_solver_sde_sample(
            MODEL, SCHED, x_T(4000, seed=4), steps=20, order=order, generator=g, progress=False
        )
        var_err.append((out.var(0) / DATA.std**2 - 1).abs().max().item())
    assert var_err[1] < var_err[0] / 3, var_err


# ------------------------------------------------- DPM-Solver++(3): a parabola in lambda is exact
def _parabola_model(schedule, c):
    """eps_hat whose x0_hat is c0 + c1 lam_t + c2 lam_t^2 exactly (c: (3, d)), for any x_t."""
    lam, alpha_bar = schedule.lam, schedule.alpha_bar

    def model(x_t, t):
        l_t, ab = lam[t][:, None], alpha_bar[t][:, None]  # (B, 1)
        x0 = c[0] + c[1] * l_t + c[2] * l_t**2  # (B, d)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return model


@pytest.mark.parametrize("curvature_weight", [1.0, 0.5], ids=["exact", "3M"])
@pytest.mark.parametrize(
    "schedule, ts",
    [
        (SCHED, logsnr_timesteps(SCHED, 10).tolist()),  # h ~ 1.07
        (SCHED, [1000, *range(510, 500, -1), 1, 0]),  # consecutive t: h ~ 5e-3
        (linear_schedule(20000, 5e-6, 1e-3), [20000, *range(10010, 10000, -1), 1, 0]),  # h ~ 2.5e-4
    ],
    ids=["h~1", "h~5e-3", "h~2.5e-4"],
)
def test_order3_integrates_a_parabola_in_lambda_exactly(schedule, ts, curvature_weight):
    """If x0_hat(lam) is a parabola, the exact-parabola step from t to s equals the exact solution
    x_s = (sigma_s / sigma_t) x_t + sigma_s [F(lam_s) - F(lam_t)], F = e^lam (c0 + c1 (lam - 1)
    + c2 (lam^2 - 2 lam + 2)), for any step size: this checks I_1 and I_2 down to tiny h, where
    their terms are ~1e-12 (a sign error anywhere in I_2 changes a step by ~h^3 / 3 > 1e-12).
    The common 3M (``dpm_solver_sample(order=3)``) falls short of it by exactly (I_2 / 2) c2, with
    I_2 = sqrt(alpha_bar_s) (h^2 - 2 h + 2 - 2 e^-h): half the curvature weight."""
    c = torch.tensor([[0.3, -0.5], [0.7, 0.2], [-0.4, 0.9]], dtype=torch.float64)
    seen = {}
    sampler = dpm_solver_3_exact_sample
    if curvature_weight != 1.0:
        sampler = lambda *a, **k: dpm_solver_sample(*a, order=3, **k)  # noqa: E731
    sampler(
        _parabola_model(schedule, c),
        schedule,
        x_T(8, d=2),
        steps=len(ts) - 1,
        timesteps=fixed(ts),
        callback=lambda i, t, x_t, x0_hat: seen.__setitem__(t, x_t),
        progress=False,
    )
    lam, alpha_bar = schedule.lam.tolist(), schedule.alpha_bar.tolist()

    def poly(l):  # c0 + c1 (l - 1) + c2 (l^2 - 2 l + 2)
        return c[0] + c[1] * (l - 1) + c[2] * (l * l - 2 * l + 2)

    # Order-3 steps: the first two warm up; the step from 501 (10001) to 1 extrapolates a
    # parabola fitted 5e-3 (2.5e-4) apart over a step of ~6, which magnifies rounding to ~1e-7.
    last = -2 if ts[-3] == ts[-4] - 1 else -1
    for t, s in zip(ts[2 : last - 1], ts[3:last], strict=True):
        h, a_s = lam[s] - lam[t], math.sqrt(alpha_bar[s])
        ratio = math.sqrt((1 - alpha_bar[s]) / (1 - alpha_bar[t]))
        exact = ratio * seen[t] + a_s * (poly(lam[s]) - math.exp(-h) * poly(lam[t]))
        i2 = a_s * (h * h - 2 * h + 2 - 2 * math.exp(-h))
        exact = exact - (1 - curvature_weight) * i2 * c[2]
        # float64 rounding of O(1) states over one step is ~1e-16; the I_2 term is >= 1e-12 here.
        torch.testing.assert_close(seen[s], exact, rtol=0, atol=1e-13)


# ---------------------------------------------------------------- convergence to the exact ODE
def _error_at(order, n, t_end=200):
    """RMS error at t = 200 after n equal steps in t from T (grids nested when n doubles).

    ``order`` 1, 2, 3: ``dpm_solver_sample`` (3 = the common 3M); "3 exact": the exact parabola.
    """
    ts = [1000 - k * (1000 - t_end) // n for k in range(n + 1)] + [0]
    seen = {}
    if order == "3 exact":
        sampler = dpm_solver_3_exact_sample
    else:
        sampler = lambda *a, **k: dpm_solver_sample(*a, order=order, **k)  # noqa: E731
    sampler(
        MODEL,
        SCHED,
        x_T(256),
        steps=n + 1,
        timesteps=fixed(ts),
        callback=lambda i, t, x_t, x0_hat: seen.__setitem__(t, x_t),
        progress=False,
    )
    return rms(seen[t_end], DATA.flow(x_T(256), 1000, t_end, SCHED))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_convergence_rate_matches_order(order):
    """Halving the step size divides the error at t = 200 by about 2^order (float64, exact model)."""
    errs = [_error_at(order if order < 3 else "3 exact", n) for n in (20, 40, 80)]
    ratio = errs[1] / errs[2]
    assert 0.7 * 2**order < ratio < 1.4 * 2**order, errs


@pytest.mark.parametrize(
    "order, low, high",
    [(3, 2.05, 2.4), ("3 exact", 2.85, 3.3)],
    ids=["common 3M", "exact parabola"],
)
def test_order3_slopes_tell_the_two_apart(order, low, high):
    """Fitted slope of log error against log step over 40, 80, 160 steps (float64, exact model):
    the common 3M is second order in practice (measured 2.17: half the curvature weight leaves
    an O(h^3) local error), the exact parabola third order (measured 3.01). Either with the
    other's weight lands in the other's range."""
    errs = [_error_at(order, n) for n in (40, 80, 160)]
    slope = math.log2(errs[0] / errs[2]) / 2
    assert low < slope < high, (slope, errs)


def test_deterministic_samplers_approach_exact_endpoint():
    x = x_T(256)
    ref = DATA.ode_endpoint(x, SCHED)
    floor = rms(DATA.x0_hat(DATA.flow(x, 1000, 1, SCHED), 1, SCHED), ref)
    errs = [
        rms(dpm_solver_3_exact_sample(MODEL, SCHED, x, steps=n, progress=False), ref)
        for n in (10, 20, 50, 200)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert errs[3] < 2 * floor  # 200 steps: below twice the unavoidable x0_hat-at-t=1 floor


@pytest.mark.parametrize(
    "steps, tol", [(50, 0.05), pytest.param(500, 0.005, marks=pytest.mark.slow)]
)
def test_ddim_invert_then_sample_round_trip(steps, tol):
    """Inversion evaluates eps at (x_s, u) instead of (x_u, u): first-order error, so the round
    trip tolerance shrinks ~ 1 / steps."""
    x0 = DATA.sample(128, torch.Generator().manual_seed(2), dtype=torch.float64)
    xT = ddim_invert(MODEL, SCHED, x0, steps=steps, progress=False)
    back = ddim_sample(MODEL, SCHED, xT, steps=steps, progress=False)
    assert rms(back, x0) < tol


# ---------------------------------------------------------------- options, dtypes, reliability
def test_same_seed_is_bitwise_identical():
    x = x_T(32, dtype=torch.float32)
    short = linear_schedule(200, 5e-4, 0.1)
    for run in (
        lambda g: ddpm_sample(DATA.model(short), short, x, generator=g, progress=False),
        lambda g: ddim_sample(MODEL, SCHED, x, steps=20, eta=0.5, generator=g, progress=False),
        lambda g: dpm_solver_sde_sample(MODEL, SCHED, x, steps=20, generator=g, progress=False),
    ):
        assert torch.equal(
            run(torch.Generator().manual_seed(7)), run(torch.Generator().manual_seed(7))
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_finite_and_keeps_dtype(dtype):
    x = x_T(16, dtype=torch.float32).to(dtype)
    for out in (
        ddim_sample(MODEL, SCHED, x, steps=10, eta=1.0, progress=False),
        dpm_solver_sample(MODEL, SCHED, x, steps=10, order=3, progress=False),
        dpm_solver_3_exact_sample(MODEL, SCHED, x, steps=10, progress=False),
        dpm_solver_sde_sample(MODEL, SCHED, x, steps=10, progress=False),
    ):
        assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solvers_stay_finite_when_alpha_bar_T_is_tiny(order):
    """alpha_bar_T = 1e-35 (linear schedule, T = 8000): x0_hat at T magnifies float32 rounding by
    1 / sqrt(alpha_bar_T) ~ 3e17, but the step weights it by sqrt(alpha_bar) of the next times
    (all coefficients from lam in float64), so float32 stays finite and close to float64."""
    sched = linear_schedule(8000)
    model, g = DATA.model(sched), torch.Generator
    out = {
        dtype: dpm_solver_sample(model, sched, x_T().to(dtype), order=order, progress=False)
        for dtype in (torch.float32, torch.float64)
    }
    assert torch.isfinite(out[torch.float32]).all() and torch.isfinite(out[torch.float64]).all()
    assert (out[torch.float32].double() - out[torch.float64]).abs().max() < 1e-3  # measured 1e-4
    sde = dpm_solver_sde_sample(
        model,
        sched,
        x_T(dtype=torch.float32),
        order=min(order, 2),
        generator=g().manual_seed(0),
        progress=False,
    )
    assert torch.isfinite(sde).all()


def test_clip_x0_recomputes_eps_hat():
    """With clip_x0 the DDIM step must use eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sigma_t of
    the *clipped* x0_hat; the raw eps_hat (here 0) would leave out the noise direction."""
    alpha_bar, seen = SCHED.alpha_bar.tolist(), {}
    ts = leading_timesteps(SCHED, 5).tolist()
    ddim_sample(
        lambda x_t, t: torch.zeros_like(x_t),
        SCHED,
        x_T(8),
        steps=5,
        clip_x0=True,
        progress=False,
        callback=lambda i, t, x_t, x0_hat: seen.__setitem__(t, (x_t, x0_hat)),
    )
    for t, s in zip(ts[:-2], ts[1:-1], strict=True):
        x_t, x0_hat = seen[t]
        assert x0_hat.abs().max() <= 1
        eps_hat = (x_t - alpha_bar[t] ** 0.5 * x0_hat) / (1 - alpha_bar[t]) ** 0.5
        expected = alpha_bar[s] ** 0.5 * x0_hat + (1 - alpha_bar[s]) ** 0.5 * eps_hat
        torch.testing.assert_close(seen[s][0], expected, rtol=0, atol=1e-12)


def test_callback_sees_every_model_call():
    calls = []
    out = dpm_solver_sample(
        MODEL,
        SCHED,
        3 * x_T(8),
        steps=12,
        clip_x0=True,
        progress=True,
        callback=lambda i, t, x_t, x0_hat: calls.append((i, t)),
    )
    assert calls == list(enumerate(logsnr_timesteps(SCHED, 12).tolist()[:-1]))  # default grid
    assert out.abs().max() <= 1


def _nan_at(t_bad):
    return lambda x_t, t: MODEL(x_t, t) * (float("nan") if int(t[0]) == t_bad else 1.0)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=0), ValueError, "steps"),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=1001), ValueError, "steps"),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), steps=2.0), TypeError, "steps"),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), eta=-0.1), ValueError, "eta"),
        (lambda: ddim_sample(MODEL, SCHED, x_T(), eta=1.5), ValueError, "eta"),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T(), order=0), ValueError, "order"),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T(), order=4), ValueError, "order"),
        (lambda: dpm_solver_sample(MODEL, SCHED, x_T().long()), TypeError, "x_T"),
        (lambda: dpm_solver_sde_sample(MODEL, SCHED, x_T(), order=3), ValueError, "order"),
        (lambda: ddpm_sample(MODEL, SCHED, torch.full((2, 4), float("nan"))), ValueError, "x_T"),
        (lambda: ddpm_sample(lambda x, t: x[:, :2], SCHED, x_T()), ValueError, "shape"),
        (lambda: ddim_invert(MODEL, SCHED, x_T(), steps=0), ValueError, "steps"),
        (lambda: ddim_sample(_nan_at(801), SCHED, x_T(), steps=10), ValueError, "t=801"),
        (lambda: dpm_solver_sample(_nan_at(1), SCHED, x_T(), steps=10), ValueError, "t=1"),
        (
            lambda: ddim_sample(
                MODEL, SCHED, x_T(), steps=5, timesteps=fixed([1000, 5, 5, 2, 1, 0])
            ),
            ValueError,
            "decreasing",
        ),
        (
            lambda: ddim_sample(
                MODEL,
                SCHED,
                x_T(),
                steps=2,
                timesteps=lambda s, n: torch.tensor([1000.0, 20.7, 0.0]),
            ),
            TypeError,
            "integer",
        ),
        (
            lambda: ddim_sample(MODEL, SCHED, x_T(), steps=2, timesteps=lambda s, n: None),
            TypeError,
            "NoneType",
        ),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------- second-order D, eta between 0 and 1 (no diffusers)
# Uneven lambda steps: h_prev / h ranges from 0.07 to 14 on this grid, so r = h_prev / h and 1 / r
# (or a slope divided by h instead of h_prev) give different D. The log-SNR grid has h ~ h_prev.
UNEVEN = [1000, 930, 700, 660, 420, 400, 150, 120, 30, 1, 0]


@pytest.mark.parametrize("stochastic", [False, True], ids=["2M", "SDE-2M"])
def test_second_order_D_is_the_line_at_the_middle_of_the_step(stochastic):
    """If x0_hat(lam) = c0 + c1 lam exactly, Algorithm 2's D = (1 + 1/(2r)) x0_hat - (1/(2r))
    x0_hat_prev with r = h_prev / h is the line at the middle of the step, c0 + c1 (lam_t + h/2),
    on any grid. Each step is recomputed by hand from the state the callback saw, with that D
    and (SDE) the same z drawn from a generator with the same seed: float64, so 1e-12."""
    c = torch.tensor([[0.3, -0.5], [0.7, 0.2], [0.0, 0.0]], dtype=torch.float64)
    model, seen = _parabola_model(SCHED, c), {}
    kw = dict(steps=len(UNEVEN) - 1, timesteps=fixed(UNEVEN), progress=False)
    kw["callback"] = lambda i, t, x_t, x0_hat: seen.__setitem__(t, x_t)
    if stochastic:
        dpm_solver_sde_sample(
            model, SCHED, x_T(8, d=2), generator=torch.Generator().manual_seed(5), **kw
        )
    else:
        dpm_solver_sample(model, SCHED, x_T(8, d=2), **kw)
    lam, ab = SCHED.lam.tolist(), SCHED.alpha_bar.tolist()
    g = torch.Generator().manual_seed(5)
    for k, (t, s) in enumerate(zip(UNEVEN[:-2], UNEVEN[1:-1], strict=True)):
        h = lam[s] - lam[t]
        mid = lam[t] + h / 2 if k > 0 else lam[t]  # the first step is first order: D = x0_hat
        D = c[0] + c[1] * mid
        ratio = math.sqrt((1 - ab[s]) / (1 - ab[t]))  # sigma_s / sigma_t
        if stochastic:  # the posterior of x_s given x_t and x_0 = D, written with lambda
            z = torch.randn(8, 2, generator=g, dtype=torch.float64)
            expected = (
                ratio * math.exp(-h) * seen[t] + math.sqrt(ab[s]) * (1 - math.exp(-2 * h)) * D
            )
            expected = expected + math.sqrt(1 - ab[s]) * math.sqrt(1 - math.exp(-2 * h)) * z
        else:
            expected = ratio * seen[t] + math.sqrt(ab[s]) * (1 - math.exp(-h)) * D
        torch.testing.assert_close(seen[s], expected, rtol=0, atol=1e-12, msg=f"step {t} -> {s}")


@pytest.mark.parametrize("eta", [0.25, 0.5, 0.8])
def test_ddim_noise_is_eta_times_the_posterior_std(eta):
    """One DDIM step from t to t - 1 from one fixed x_t: the spread of x_{t-1} over fresh noise
    is ddim_sigma^2 = eta^2 beta_tilde_t, the posterior variance of the schedule (eq. 16 with
    s = t - 1; ``schedule.posterior_variance`` computes it apart from the sampler). 4000 copies
    x 4 coordinates: the relative SE of a variance is sqrt(2 / 16000) = 1.1 %; 6 %
    allows 5 SE. eta^2 instead of eta in eq. 16 would give eta^4 (off by 1 / eta^2 >= 1.5)."""
    t, n = 300, 4000
    x_t = x_T(1).expand(n, 4).clone()
    seen = {}
    ddim_sample(
        MODEL,
        SCHED,
        x_t,
        steps=2,
        eta=eta,
        generator=torch.Generator().manual_seed(8),
        timesteps=fixed([t, t - 1, 0]),
        callback=lambda i, t_, x, x0_hat: seen.__setitem__(t_, x),
        progress=False,
    )
    var = seen[t - 1].var(0).mean().item()
    expected = eta**2 * SCHED.posterior_variance[t].item()
    assert abs(var / expected - 1) < 0.06, (var, expected)


# ---------------------------------------------------------------- the project hook, every sampler
SHORT = linear_schedule(40, 1e-3, 0.3)
SHORT_MODEL = DATA.model(SHORT)


def _g():
    return torch.Generator().manual_seed(0)


HOOKED = {
    "ddpm": lambda x, p, m=SHORT_MODEL: ddpm_sample(
        m, SHORT, x, generator=_g(), project=p, progress=False
    ),
    "ddim": lambda x, p, m=SHORT_MODEL: ddim_sample(
        m, SHORT, x, steps=8, eta=0.5, generator=_g(), project=p, progress=False
    ),
    "dpm2m": lambda x, p, m=SHORT_MODEL: dpm_solver_sample(
        m, SHORT, x, steps=8, project=p, progress=False
    ),
    "dpm3m": lambda x, p, m=SHORT_MODEL: dpm_solver_sample(
        m, SHORT, x, steps=8, order=3, project=p, progress=False
    ),
    "dpm3_exact": lambda x, p, m=SHORT_MODEL: dpm_solver_3_exact_sample(
        m, SHORT, x, steps=8, project=p, progress=False
    ),
    "sde": lambda x, p, m=SHORT_MODEL: dpm_solver_sde_sample(
        m, SHORT, x, steps=8, generator=_g(), project=p, progress=False
    ),
    "repaint": lambda x, p, m=SHORT_MODEL: repaint_sample(
        m, SHORT, x, p, steps=8, jump_length=2, resamplings=2, generator=_g(), progress=False
    ),
}


@pytest.mark.parametrize("name", HOOKED)
def test_project_is_applied_to_every_new_state_down_to_zero(name):
    seen = []

    def project(s, x_s):
        seen.append(s)
        return x_s.clamp(-0.1, 0.1)

    out = HOOKED[name](x_T(8), project)
    assert seen[-1] == 0 and out.abs().max() <= 0.1  # the returned sample is the projected one
    assert seen == sorted(seen, reverse=True) or name == "repaint"


def _hook_at_zero(value):
    return lambda s, x_s: value(x_s) if s == 0 else x_s


@pytest.mark.parametrize("name", HOOKED)
@pytest.mark.parametrize(
    "project, err, match",
    [
        (lambda s, x_s: x_s[:1], ValueError, r"project\(s, x_s\) returned shape \(1, 4\) at s = "),
        (lambda s, x_s: x_s.flatten(1)[:, :2], ValueError, r"returned shape \(8, 2\)"),
        (_hook_at_zero(lambda x: x * float("nan")), ValueError, r"returned NaN or inf at s = 0"),
        (lambda s, x_s: None, TypeError, r"project\(s, x_s\) returned None at s = "),
        (lambda s, x_s: x_s.tolist(), TypeError, r"returned a list"),
        (lambda s, x_s: x_s > 0, TypeError, r"torch.bool"),
    ],
    ids=["batch", "flatten", "nan-at-0", "none", "list", "bool"],
)
def test_project_output_is_checked_like_a_model_output(name, project, err, match):
    with pytest.raises(err, match=match):
        HOOKED[name](x_T(8), project)


@pytest.mark.parametrize("name", HOOKED)
def test_project_that_is_not_callable_fails_before_the_first_model_call(name):
    calls = []

    def model(x_t, t):
        calls.append(t)
        return SHORT_MODEL(x_t, t)

    with pytest.raises(TypeError, match="project must be a function"):
        HOOKED[name](x_T(8), "mask", model)
    assert calls == []


@pytest.mark.parametrize("name", HOOKED)
def test_float64_project_keeps_the_samplers_dtype(name):
    """A hook that computes in float64 is cast back: the sample stays in the dtype of x_T."""
    out = HOOKED[name](x_T(8, dtype=torch.float32), lambda s, x_s: x_s.double())
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", HOOKED)
def test_identity_project_changes_nothing(name):
    if name == "repaint":  # RePaint requires a hook; compare two identities instead
        a = HOOKED[name](x_T(8), lambda s, x: x)
        b = HOOKED[name](x_T(8), lambda s, x: x + 0.0)
    else:
        a, b = HOOKED[name](x_T(8), None), HOOKED[name](x_T(8), lambda s, x: x)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- T = 1
@pytest.mark.parametrize("order", [1, 2, 3])
def test_one_step_schedule_returns_x0_hat(order):
    """T = 1 (one noise level): every sampler makes its one model call at t = 1 and returns the
    exact x0_hat there (the step to t = 0 is x0_hat itself); the log-SNR grid once gave NaN."""
    sched = linear_schedule(1, 0.3, 0.3)
    model, x = DATA.model(sched), x_T(8)
    expected = DATA.x0_hat(x, 1, sched)
    outs = [
        dpm_solver_sample(model, sched, x, steps=1, order=order, progress=False),
        dpm_solver_sde_sample(model, sched, x, steps=1, order=min(order, 2), progress=False),
        dpm_solver_3_exact_sample(model, sched, x, steps=1, progress=False),
        ddim_sample(model, sched, x, steps=1, progress=False),
        ddpm_sample(model, sched, x, progress=False),
    ]
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert logsnr_timesteps(sched, 1).tolist() == [1, 0]


@pytest.mark.parametrize(
    "args", [(0.5, 0.9, 1.5), (0.5, 0.9, -0.1), (0.9, 0.5, 0.5)], ids=["eta>1", "eta<0", "upwards"]
)
def test_ddim_step_refuses_what_eq_16_cannot_do(args):
    """eta outside [0, 1], or a noisy step up in noise (eq. 16 takes the root of a negative)."""
    alpha_bar_t, alpha_bar_s, eta = args
    with pytest.raises(ValueError, match="ddim_step needs eta in"):
        ddim_step(torch.zeros(2), torch.zeros(2), alpha_bar_t, alpha_bar_s, eta)

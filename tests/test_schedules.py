"""Tests for diffusion_tutorial.core.schedules: book indexing, defining formulas, bad input."""

import dataclasses
import math

import pytest
import torch

from diffusion_tutorial.checks import check_time_indices
from diffusion_tutorial.core import schedules
from diffusion_tutorial.core.schedules import (
    ALPHA_BAR_MIN,
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    scaled_linear_schedule,
)

SCHEDULES = {
    "linear": lambda: linear_schedule(),
    "cosine": lambda: cosine_schedule(),
    "scaled_linear": lambda: scaled_linear_schedule(),
    "linear_T10": lambda: linear_schedule(10, 0.01, 0.5),
    "from_betas": lambda: NoiseSchedule.from_betas([0.1, 0.2, 0.3]),
}


@pytest.mark.parametrize("make", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_book_indexing_and_monotonicity(make):
    s = make()
    assert s.beta.dtype == s.alpha.dtype == s.alpha_bar.dtype == torch.float64
    assert s.beta.shape == (s.T + 1,)
    assert s.beta[0] == 0 and s.alpha_bar[0] == 1
    # alpha_bar strictly decreasing and inside (0, 1] (exact comparisons: float64 products).
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert (s.alpha_bar > 0).all() and (s.alpha_bar <= 1).all()


@pytest.mark.parametrize("make", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_derived_quantities(make):
    s = make()
    t = torch.arange(1, s.T + 1)
    # Identities that hold to float64 rounding (1e-12).
    torch.testing.assert_close(
        s.sigma**2 + s.sqrt_alpha_bar**2, torch.ones_like(s.beta), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(s.lam[t], 0.5 * torch.log(s.snr[t]), rtol=1e-12, atol=1e-12)
    ratio = (1 - s.alpha_bar[t - 1]) / (1 - s.alpha_bar[t])
    torch.testing.assert_close(s.posterior_variance[t], ratio * s.beta[t], rtol=1e-12, atol=0)
    assert (s.posterior_variance[t] <= s.beta[t]).all()
    assert s.lam[0] == math.inf and s.posterior_variance[1] == 0


def test_cosine_matches_defining_formula():
    T, s_ = 1000, 0.008
    sched = cosine_schedule(T, s_)
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    # Clipping at max_beta only touches the last step, so t < T matches to float64 rounding.
    torch.testing.assert_close(sched.alpha_bar[:T], (f / f[0])[:T], rtol=1e-10, atol=1e-14)


def test_linear_and_scaled_linear_endpoints():
    s = linear_schedule(1000, 1e-4, 0.02)
    assert s.beta[1].item() == pytest.approx(1e-4) and s.beta[-1].item() == pytest.approx(0.02)
    root = scaled_linear_schedule().beta[1:].sqrt()
    step = (root[-1] - root[0]).item() / 999
    torch.testing.assert_close(
        root[1:] - root[:-1], torch.full((999,), step, dtype=torch.float64), rtol=1e-8, atol=0
    )


def test_frozen_and_to():
    s = linear_schedule(10, 0.01, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.beta = s.beta  # type: ignore[misc]
    moved = s.to("cpu")
    assert torch.equal(moved.alpha_bar, s.alpha_bar) and moved.T == 10


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: linear_schedule(0), ValueError),
        (lambda: linear_schedule(-3), ValueError),
        (lambda: linear_schedule(2.5), TypeError),
        (lambda: linear_schedule(10, 0.0, 0.1), ValueError),
        (lambda: linear_schedule(10, 0.1, 1.0), ValueError),
        (lambda: linear_schedule(10, 0.2, 0.1), ValueError),
        (lambda: scaled_linear_schedule(10, 0.2, 0.1), ValueError),
        (lambda: cosine_schedule(10, s=0.0), ValueError),
        (lambda: cosine_schedule(10, s=-1.0), ValueError),
        (lambda: cosine_schedule(10, max_beta=1.0), ValueError),
        (lambda: NoiseSchedule.from_betas([0.1, 1.0]), ValueError),
        (lambda: NoiseSchedule.from_betas([0.1, -0.1]), ValueError),
        (lambda: NoiseSchedule.from_betas([0.1, float("nan")]), ValueError),
        (lambda: NoiseSchedule.from_betas([]), ValueError),
        (lambda: NoiseSchedule.from_betas([[0.1]]), ValueError),
        (lambda: NoiseSchedule(torch.zeros(3), torch.ones(3), torch.ones(3)), TypeError),
        (
            lambda: NoiseSchedule(
                torch.tensor([0.0, 0.1], dtype=torch.float64),
                torch.tensor([1.0, 0.9], dtype=torch.float64),
                torch.tensor([1.0, 0.5], dtype=torch.float64),
            ),
            ValueError,
        ),
    ],
)
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


@pytest.mark.parametrize(
    "t, err",
    [
        (torch.tensor([0, 1]), ValueError),
        (torch.tensor([1, 11]), ValueError),
        (torch.tensor([1, 2, 3]), ValueError),
        (torch.tensor([[1, 2]]), ValueError),
        (torch.tensor([1.0, 2.0]), TypeError),
        (torch.tensor([1.5, 2.0]), TypeError),
        (torch.tensor([True, False]), TypeError),
        (True, TypeError),
        (2.0, TypeError),
        (None, TypeError),
    ],
)
def test_check_time_indices_rejects(t, err):
    with pytest.raises(err, match="t"):
        check_time_indices("t", t, 2, 1, 10, torch.device("cpu"))


@pytest.mark.parametrize("t", [4, torch.tensor(4), torch.tensor([4, 4], dtype=torch.int32)])
def test_check_time_indices_broadcasts_ints_and_0d_tensors(t):
    out = check_time_indices("t", t, 2, 1, 10, torch.device("cpu"))
    assert out.dtype == torch.int64 and out.tolist() == [4, 4]


def test_registry_names_the_three_schedules():
    assert schedules.SCHEDULES == {
        "linear": linear_schedule,
        "cosine": cosine_schedule,
        "scaled_linear": scaled_linear_schedule,
    }


def test_posterior_mean_coefs_match_their_definition():
    # Oracle: Ho et al. 2020, eq. 7 written out term by term at every t in 1..T.
    s = linear_schedule(50, 1e-3, 0.2)
    c_x0, c_xt = s.posterior_mean_coefs
    t = torch.arange(1, 51)
    alpha_bar_t, alpha_bar_prev = s.alpha_bar[t], s.alpha_bar[t - 1]
    torch.testing.assert_close(
        c_x0[t], alpha_bar_prev.sqrt() * s.beta[t] / (1 - alpha_bar_t), rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        c_xt[t], s.alpha[t].sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t), rtol=1e-14, atol=0
    )
    # At t = 1 the mean is x_0 itself (alpha_bar_0 = 1): c_x0 = 1, c_xt = 0.
    assert c_x0[1].item() == pytest.approx(1.0, abs=1e-15) and c_xt[1] == 0


# ------------------------------------------------------------------ float32 underflow of alpha_bar_T


@pytest.mark.parametrize(
    "make", [linear_schedule, cosine_schedule, scaled_linear_schedule], ids=["lin", "cos", "sc"]
)
def test_shipped_T1000_schedules_pass_the_float32_bound(make):
    s = make(1000)
    assert s.alpha_bar[-1] >= ALPHA_BAR_MIN
    assert math.isfinite(float(torch.tensor(s.lam[-1].item(), dtype=torch.float32)))


def test_bound_is_float32_tiny_and_keeps_sampling_coefficients_finite():
    # The bound itself: alpha_bar, sqrt(alpha_bar), 1 / sqrt(alpha_bar) and lambda are finite,
    # non-zero float32 numbers at alpha_bar = ALPHA_BAR_MIN; half of it is subnormal in float32.
    assert ALPHA_BAR_MIN == torch.finfo(torch.float32).tiny
    a = torch.tensor(ALPHA_BAR_MIN, dtype=torch.float32)
    for v in (a, a.sqrt(), 1 / a.sqrt(), 0.5 * (a.log() - torch.log1p(-a))):
        assert torch.isfinite(v) and v != 0
    assert torch.tensor(ALPHA_BAR_MIN / 2, dtype=torch.float32) < torch.finfo(torch.float32).tiny


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: linear_schedule(20000), r"T must be in 1\.\.\d+ for beta_start=0.0001"),
        (lambda: scaled_linear_schedule(50000), r"T must be in 1\.\.\d+"),
        (lambda: linear_schedule(1000, 0.5, 0.9), r"T must be in 1\.\.\d+"),
        (lambda: NoiseSchedule.from_betas([0.9] * 100), r"T = 100 is below ALPHA_BAR_MIN"),
    ],
)
def test_schedules_refuse_alpha_bar_T_below_float32_tiny(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_largest_allowed_T_is_accepted_and_one_more_refused():
    with pytest.raises(ValueError) as info:
        linear_schedule(20000)
    t_max = int(str(info.value).split("1..")[1].split(" ")[0])
    assert linear_schedule(t_max).alpha_bar[-1] >= ALPHA_BAR_MIN
    with pytest.raises(ValueError):
        linear_schedule(t_max + 1)

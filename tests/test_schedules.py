"""Tests for diffusion_tutorial.core.schedules: book indexing, defining formulas, bad input."""

import dataclasses
import math

import pytest
import torch

from diffusion_tutorial.core.schedules import (
    NoiseSchedule,
    check_timesteps,
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
        (torch.tensor([1.0, 2.0]), TypeError),
        (True, TypeError),
    ],
)
def test_check_timesteps_rejects(t, err):
    with pytest.raises(err, match="t"):
        check_timesteps(t, linear_schedule(10, 0.01, 0.5), torch.zeros(2, 3))


def test_check_timesteps_accepts_int():
    t = check_timesteps(4, linear_schedule(10, 0.01, 0.5), torch.zeros(2, 3))
    assert t.dtype == torch.int64 and t.tolist() == [4, 4]

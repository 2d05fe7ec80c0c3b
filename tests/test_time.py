"""Tests for diffusion_tutorial.core.time: the one converter between time conventions.

Identities, not golden numbers: every pair of conventions round-trips, every convention moves the
right way from data to noise, the endpoints are where the table says, and the flow-time rows are
checked against the paths they name (x_VP = (a + b) x_FM), so a flipped convention fails.
"""

import itertools
import math

import pytest
import torch

from diffusion_tutorial.core.schedules import cosine_schedule, linear_schedule
from diffusion_tutorial.core.time import NoiseLevel, check_book_times

SCHEDULES = {
    "linear": linear_schedule(),
    "cosine": cosine_schedule(),
    "T=7": linear_schedule(7),
    "T=1": linear_schedule(1, 0.5, 0.5),
}
# Book times between t = 0 and T = 1000, grid and non-grid (dense below t = 1 and near T).
T_POINTS = torch.cat(
    [
        torch.tensor([0.0, 1e-6, 0.25, 0.5, 1.0, 1.5, 2.0, 2.999, 17.3, 500.0, 500.5]),
        torch.linspace(1, 1000, 777, dtype=torch.float64),
        torch.tensor([998.25, 999.0, 999.9, 1000.0]),
    ]
).double()

# Each convention: (how to read it, how to build from it, direction from data to noise).
CONVENTIONS = {
    "t": (lambda n, s: n.t(s), lambda v, s: NoiseLevel.from_t(v, s), +1),
    "vp_time": (lambda n, s: n.vp_time(s), lambda v, s: NoiseLevel.from_vp_time(v, s), +1),
    "lam": (lambda n, s: n.lam, lambda v, s: NoiseLevel.from_lam(v), -1),
    "alpha_bar": (lambda n, s: n.alpha_bar(), lambda v, s: NoiseLevel.from_alpha_bar(v), -1),
    "vp_sigma": (lambda n, s: n.vp_sigma(), lambda v, s: NoiseLevel.from_vp_sigma(v), +1),
    "edm_sigma": (lambda n, s: n.edm_sigma(), lambda v, s: NoiseLevel.from_edm_sigma(v), +1),
    "flow_noise_at_0": (
        lambda n, s: n.flow_time_noise_at_0(),
        lambda v, s: NoiseLevel.from_flow_time_noise_at_0(v),
        -1,
    ),
    "flow_data_at_0": (
        lambda n, s: n.flow_time_data_at_0(),
        lambda v, s: NoiseLevel.from_flow_time_data_at_0(v),
        +1,
    ),
}


def points(schedule):
    return T_POINTS[T_POINTS <= schedule.T] if schedule.T < 1000 else T_POINTS


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(CONVENTIONS, 2)))
def test_every_pair_round_trips(a, b, schedule):
    """a -> b -> a returns the start; compared in book time, where every convention is finite.

    Tolerance 1e-6 in t: alpha_bar and vp_sigma lose relative precision where they are close to
    1 (vp_sigma near t = 0 holds 1 - alpha_bar ~ 1e-16 as sqrt); every other pair round-trips to
    ~1e-12.
    """
    t = points(schedule)
    read_a, build_a, _ = CONVENTIONS[a]
    read_b, build_b, _ = CONVENTIONS[b]
    va = read_a(NoiseLevel.from_t(t, schedule), schedule)
    vb = read_b(build_a(va, schedule), schedule)
    back = build_b(vb, schedule).t(schedule)
    precise = {"alpha_bar", "vp_sigma"}.isdisjoint((a, b))
    torch.testing.assert_close(back, t, rtol=0, atol=1e-10 if precise else 1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("name", CONVENTIONS)
def test_each_convention_is_strictly_monotone_in_t(name, schedule):
    t = torch.linspace(0, schedule.T, 2001, dtype=torch.float64)
    read, _, direction = CONVENTIONS[name]
    v = read(NoiseLevel.from_t(t, schedule), schedule)
    diff = direction * (v[1:] - v[:-1])
    assert (diff > 0).all(), name


def test_endpoints_match_the_table():
    s = SCHEDULES["linear"]
    data, top = NoiseLevel.from_t(0.0, s), NoiseLevel.from_t(float(s.T), s)
    assert data.lam == math.inf and data.alpha_bar() == 1 and data.vp_sigma() == 0
    assert data.edm_sigma() == 0 and data.flow_time_noise_at_0() == 1
    assert data.flow_time_data_at_0() == 0 and data.vp_time(s) == 0
    assert top.vp_time(s) == 1 and top.t(s) == s.T
    torch.testing.assert_close(top.alpha_bar(), s.alpha_bar[-1], rtol=1e-12, atol=0)
    noise = NoiseLevel.from_lam(-math.inf)
    assert noise.edm_sigma() == math.inf and noise.vp_sigma() == 1
    assert noise.flow_time_noise_at_0() == 0 and noise.flow_time_data_at_0() == 1


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_integer_book_times_are_the_schedules_own_numbers(schedule):
    t = torch.arange(schedule.T + 1)
    n = NoiseLevel.from_t(t, schedule)
    assert torch.equal(n.lam, schedule.lam) and torch.equal(n.t(schedule), t.double())
    torch.testing.assert_close(n.alpha_bar(), schedule.alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(n.vp_sigma(), schedule.sigma, rtol=1e-9, atol=1e-15)
    edm = (schedule.sigma / schedule.sqrt_alpha_bar)[1:]
    torch.testing.assert_close(n.edm_sigma()[1:], edm, rtol=1e-12, atol=0)


def test_fractional_book_time_interpolates_log_snr():
    """The stated rule: lam linear in t on [1, T]; sigma_EDM = t sigma_1 on [0, 1]."""
    s = SCHEDULES["linear"]
    t = torch.tensor([1.25, 17.5, 999.75], dtype=torch.float64)
    k = t.floor().long()
    f = t - k
    expected = (1 - f) * s.lam[k] + f * s.lam[k + 1]
    torch.testing.assert_close(NoiseLevel.from_t(t, s).lam, expected, rtol=1e-15, atol=0)
    sigma_1 = (s.sigma[1] / s.sqrt_alpha_bar[1]).item()
    low = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(NoiseLevel.from_t(low, s).edm_sigma(), low * sigma_1)


@pytest.mark.parametrize("t", [0.0, 0.5, 3.7, 250.0, 999.5])
def test_flow_times_name_the_linear_path_they_claim(t):
    """x_VP = a x_0 + b eps equals (a + b) x_FM, with x_FM = s x_0 + (1 - s) eps at the
    noise-at-0 time s, and x_FM = (1 - u) x_0 + u eps at the data-at-0 time u. Swapping the
    two flow conventions (or computing b / (a + b) for s) fails here.
    """
    s_ = SCHEDULES["linear"]
    n = NoiseLevel.from_t(t, s_)
    a, b = n.alpha_bar().sqrt(), n.vp_sigma()
    g = torch.Generator().manual_seed(0)
    x_0, eps = torch.randn(2, 100, generator=g, dtype=torch.float64)
    x_vp = a * x_0 + b * eps
    s, u = n.flow_time_noise_at_0(), n.flow_time_data_at_0()
    torch.testing.assert_close(x_vp, (a + b) * (s * x_0 + (1 - s) * eps))
    torch.testing.assert_close(x_vp, (a + b) * ((1 - u) * x_0 + u * eps))
    torch.testing.assert_close(n.edm_sigma(), b / a)  # x_VE = x_VP / a = x_0 + sigma eps


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda s: NoiseLevel.from_t(1000.5, s), r"t must lie in \[0, 1000\]"),
        (lambda s: NoiseLevel.from_t(-0.1, s), r"t must lie in \[0, 1000\]"),
        (lambda s: NoiseLevel.from_t(float("nan"), s), "got NaN"),
        (lambda s: NoiseLevel.from_vp_time(1.5, s), r"tau must lie in \[0, 1\]"),
        (lambda s: NoiseLevel.from_vp_sigma(1.1), r"sigma must lie in \[0, 1\]"),
        (lambda s: NoiseLevel.from_edm_sigma(-1.0), r"sigma must lie in \[0, inf\]"),
        (lambda s: NoiseLevel.from_flow_time_noise_at_0(2.0), r"flow_t must lie in \[0, 1\]"),
        (lambda s: NoiseLevel.from_flow_time_data_at_0(-1.0), r"flow_t must lie in \[0, 1\]"),
        (lambda s: NoiseLevel.from_lam(float("nan")), "lam must lie"),
        (lambda s: NoiseLevel.from_edm_sigma(1e6).t(s), "beyond the schedule's last step"),
    ],
)
def test_bad_values_name_the_argument_and_range(build, match):
    with pytest.raises(ValueError, match=match):
        build(SCHEDULES["linear"])


def test_check_book_times_keeps_integers_and_checks_floats():
    dev = torch.device("cpu")
    out = check_book_times("t", 5, 3, 1, 10, dev)
    assert out.dtype == torch.int64 and out.tolist() == [5, 5, 5]
    f = check_book_times("t", torch.tensor([1.5, 2.0]), 2, 1, 10, dev)
    assert f.dtype == torch.float32 and f.tolist() == [1.5, 2.0]
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        check_book_times("t", torch.tensor([0.5, 2.0]), 2, 1, 10, dev)
    with pytest.raises(ValueError, match="shape"):
        check_book_times("t", torch.tensor([1.5, 2.0, 3.0]), 2, 1, 10, dev)

"""Tests for evaluation.likelihood against exact densities (no golden numbers).

The oracle is ``GaussianMixtureData``: its optimal eps-predictor is differentiable in x_t and its
marginal log q(x_t) is known in closed form at every t, so the ODE's log-density at t = 1 can be
compared with the truth; with one component the ODE's flow is known too (``GaussianData.flow``).
Each test names the bug it was seen to catch (injected in a scratch copy).
"""

import math

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData, GaussianMixtureData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.evaluation.likelihood import (
    MNIST_BIN_WIDTH,
    bits_per_dim,
    dequantize,
    ode_likelihood,
)
from diffusion_tutorial.samplers import leading_timesteps

SCHED = linear_schedule()
F64 = torch.float64
MIXTURE = GaussianMixtureData(
    torch.tensor([0.3, 0.7], dtype=F64),
    torch.tensor([[-0.8, 0.2], [0.6, -0.4]], dtype=F64),
    torch.tensor([0.25, 0.4], dtype=F64),
)
MEAN3 = torch.tensor([0.5, -0.3, 0.1], dtype=F64)
ONE_GAUSSIAN = GaussianMixtureData(
    torch.ones(1, dtype=F64), MEAN3[None], torch.tensor([0.3], dtype=F64)
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def exact_error(steps, data=MIXTURE, n=64):
    x_0 = data.sample(n, gen(0), dtype=F64)
    got = ode_likelihood(data.model(SCHED), SCHED, x_0, steps=steps, probes=None, progress=False)
    return (got.log_p - data.log_prob(x_0, 1, SCHED)).abs().max().item()


# log p from the ODE with the exact divergence equals the mixture's log q(x_1) up to the solver's
# error, which falls like steps^-2 (Heun): measured 0.72 nats at 12 steps, 0.062 at 48 (ratio
# 12). Catches (each seen red): the prior at x_T without the rescaling term D/2 log alpha_bar,
# the divergence's sign flipped, the quadrature weight sigma~ instead of sigma (the trapezoid
# in sigma~), Euler instead of Heun (first order: the ratio falls to ~4), the network fed the
# VE state y instead of x_t = sqrt(alpha_bar) y.
def test_exact_divergence_recovers_the_mixture_density():
    coarse, fine = exact_error(12), exact_error(48)
    assert fine < 0.1, fine
    assert coarse / fine > 6, (coarse, fine)


# With one Gaussian component the ODE's flow is exact in closed form: x_T = a_T mean + m_T
# (x_1 - a_1 mean) / m_1 (GaussianData.flow). The end point's error shrinks like steps^-2
# (measured 0.18 at 12 steps, 0.014 at 48). Catches a wrong state step (Euler instead of
# Heun, a step h in lambda instead of sigma~).
def test_end_point_follows_the_exact_flow():
    x_0 = ONE_GAUSSIAN.sample(32, gen(1), dtype=F64)
    flow = GaussianData(MEAN3, torch.full((3,), 0.3, dtype=F64)).flow(x_0, 1, SCHED.T, SCHED)
    errs = []
    for steps in (12, 48):
        got = ode_likelihood(
            ONE_GAUSSIAN.model(SCHED), SCHED, x_0, steps=steps, probes=None, progress=False
        )
        errs.append((got.x_T - flow).abs().max().item())
    assert errs[1] < 0.03 and errs[0] / errs[1] > 6, errs


# Hutchinson's estimate is unbiased for the discretised ODE: the mean over 200 probes matches
# the exact divergence on the same trajectory within 4 standard errors (per example; 16
# examples, so a 4-SE tolerance keeps false alarms below 1e-3). The trajectory itself does not
# depend on the probes. Catches probes in {0, 1} (torch.randint without 2 v - 1: half the trace).
def test_hutchinson_mean_matches_the_exact_divergence():
    x_0 = MIXTURE.sample(16, gen(2), dtype=F64)
    model = MIXTURE.model(SCHED)
    exact = ode_likelihood(model, SCHED, x_0, steps=6, probes=None, progress=False)
    est = ode_likelihood(model, SCHED, x_0, steps=6, probes=200, generator=gen(3), progress=False)
    per_probe = est.log_p_per_probe  # (200, 16)
    assert per_probe.shape == (200, 16)
    torch.testing.assert_close(per_probe.mean(0), est.log_p)
    se = per_probe.std(0) / math.sqrt(200)
    assert ((est.log_p - exact.log_p).abs() < 4 * se).all()
    torch.testing.assert_close(est.x_T, exact.x_T)


# For an isotropic Gaussian the Jacobian of eps is diagonal, and a Rademacher probe (v_i^2 = 1)
# gives the exact trace every time: no spread over probes. Catches Gaussian probes (their v_i^2
# scatter) and the probes' sum not divided out.
def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    x_0 = ONE_GAUSSIAN.sample(8, gen(4), dtype=F64)
    model = ONE_GAUSSIAN.model(SCHED)
    exact = ode_likelihood(model, SCHED, x_0, steps=6, probes=None, progress=False)
    est = ode_likelihood(model, SCHED, x_0, steps=6, probes=3, generator=gen(5), progress=False)
    for row in est.log_p_per_probe:
        torch.testing.assert_close(row, exact.log_p, rtol=0, atol=1e-9)


def test_parts_add_up_and_nfe_is_two_per_step():
    calls = []
    model = MIXTURE.model(SCHED)

    def counting(x_t, t):
        calls.append(t[0].item())
        return model(x_t, t)

    x_0 = MIXTURE.sample(4, gen(6), dtype=F64)
    got = ode_likelihood(counting, SCHED, x_0, steps=5, probes=2, generator=gen(7), progress=False)
    assert got.nfe == 10 == len(calls)
    assert calls[0] == 1 and calls[-1] == SCHED.T
    torch.testing.assert_close(got.log_p, got.prior_log_p + got.delta_log_p)
    x_T = got.x_T.double()
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(x_T).sum(1)
    torch.testing.assert_close(got.prior_log_p, prior)


# The hand computation: the uniform density on the 256 bins of width 2/255 around the levels
# k / 127.5 - 1 is p = (1 / (256 * 2/255))^D, and it must cost exactly 8 bits per dimension.
# Catches the constant 7 = -log2(2/256) (data scaled as if from [0, 256)), a natural log, a
# missing division by D, and the sign of the dequantisation term.
@pytest.mark.parametrize("dims", [1, 784])
def test_bits_per_dim_of_the_uniform_density_is_8(dims):
    log_p = torch.tensor([-dims * math.log(256 * MNIST_BIN_WIDTH)], dtype=F64)
    torch.testing.assert_close(bits_per_dim(log_p, dims), torch.tensor([8.0], dtype=F64))
    # without dequantisation: the density in bits, -log p / (D ln 2)
    torch.testing.assert_close(
        bits_per_dim(log_p, dims, dequantized=False),
        torch.tensor([math.log2(256 * MNIST_BIN_WIDTH)], dtype=F64),
    )


def test_dequantize_spreads_each_level_over_its_bin():
    x_0 = torch.linspace(-1, 1, 256, dtype=F64).repeat(400, 1)  # (400, 256): every level
    x = dequantize(x_0, gen(8))
    assert ((x - x_0).abs() <= MNIST_BIN_WIDTH / 2).all()
    # uniform over the bin: mean offset 0, variance bin^2 / 12 (both within 5 SE)
    offset = (x - x_0) / MNIST_BIN_WIDTH  # in bins
    assert abs(offset.mean().item()) < 5 * math.sqrt(1 / 12 / offset.numel())
    assert abs(offset.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / offset.numel())


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 1000}, ValueError, "steps"),
        ({"probes": 0}, ValueError, "probes"),
        ({"probes": 1.5}, TypeError, "probes"),
        ({"timesteps": leading_timesteps}, ValueError, "t = T"),
    ],
)
def test_bad_input(kwargs, err, match):
    x_0 = MIXTURE.sample(2, gen(9), dtype=F64)
    with pytest.raises(err, match=match):
        ode_likelihood(MIXTURE.model(SCHED), SCHED, x_0, progress=False, **kwargs)


def test_a_model_without_autograd_is_a_clear_error():
    data = GaussianData(MEAN3, torch.full((3,), 0.3, dtype=F64))  # eps_hat detaches its input
    with pytest.raises(ValueError, match="differentiable"):
        ode_likelihood(data.model(SCHED), SCHED, data.sample(2, dtype=F64), steps=2, progress=False)


def test_bits_per_dim_bad_input():
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(torch.zeros(1), 0)
    with pytest.raises(ValueError, match="bin_width"):
        bits_per_dim(torch.zeros(1), 4, bin_width=0.0)

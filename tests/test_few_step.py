"""samplers.few_step: multistep consistency sampling (Song et al. 2023, Algorithm 1) and the
reflowed-flow branch (Euler, no re-noising).

Oracles: a recording consistency model (what Algorithm 1 must feed it, step by step, with the
same noise stream), Karras et al.'s grid formula, the exact consistency function of a 2-D
mixture (its samples must follow the data), and flow_sample on the shipped ``mnist-flow``.
Each test names the bug it was seen to catch (injected in a scratch copy, watched go red,
reverted).
"""

from __future__ import annotations

import math

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.evaluation.metrics import mmd2_rbf
from diffusion_tutorial.samplers.few_step import consistency_levels, sigma_range_schedule
from diffusion_tutorial.training import consistency_toy as ct

D64 = torch.float64


class Recorder:
    """A consistency model f(x, sigma) = x / 2 + 1 with eps = 0.3, sigma_max = 5, recording its calls.

    eps this large makes sqrt(tau^2 - eps^2) differ from tau by far more than rounding."""

    eps, sigma_max = 0.3, 5.0

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), sigma.clone()))
        return x / 2 + 1


def test_one_step_is_f_at_sigma_max_of_the_scaled_noise():
    """steps = 1: f(sigma_max x_T, sigma_max), bit for bit. Caught: x_T passed unscaled."""
    torch.manual_seed(0)
    f = ct.ConsistencyFunction().eval()
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = f(ct.SIGMA_MAX * x_T, ct.SIGMA_MAX)
    assert torch.equal(dt.few_step_sample(f, x_T, steps=1), want)


@pytest.mark.parametrize("steps", [2, 4])
def test_multistep_renoises_the_estimate_to_each_level(steps):
    """Call i sees x_{i-1} + sqrt(tau_i^2 - eps^2) z_i at tau_i (z_i the generator's i-th draw).

    Caught: tau_i z instead of sqrt(tau_i^2 - eps^2) z, re-noising x_T instead of the estimate,
    and the levels taken from the bottom of the grid."""
    model = Recorder()
    x_T = torch.randn(20, 2, generator=torch.Generator().manual_seed(2), dtype=D64)
    out = dt.few_step_sample(model, x_T, steps=steps, generator=torch.Generator().manual_seed(3))
    levels = consistency_levels(model.eps, model.sigma_max, steps)
    g = torch.Generator().manual_seed(3)
    x = x_T * model.sigma_max
    assert len(model.calls) == steps
    for i, (x_in, sigma) in enumerate(model.calls):
        if i > 0:
            z = torch.randn(x.shape, generator=g, dtype=D64)
            x = x / 2 + 1 + math.sqrt(levels[i] ** 2 - model.eps**2) * z
        torch.testing.assert_close(x_in, x, rtol=1e-12, atol=1e-12)
        assert torch.equal(sigma, torch.full((20,), levels[i], dtype=D64))
    assert torch.equal(out, model.calls[-1][0] / 2 + 1)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_levels_are_karras_grid_without_its_last_point(steps):
    """[sigma_max, tau_1, ...]: (hi + i / steps (lo - hi))^7 for i < steps, hi = sigma_max^(1/7),
    lo = eps^(1/7); two steps re-noise to tau_1 = 0.48 (the module docstring's number)."""
    lo, hi = ct.EPS ** (1 / 7), ct.SIGMA_MAX ** (1 / 7)
    want = [(hi + i / steps * (lo - hi)) ** 7 for i in range(steps)]
    got = consistency_levels(ct.EPS, ct.SIGMA_MAX, steps)
    assert got == pytest.approx(want, rel=1e-10) and got[0] == ct.SIGMA_MAX
    if steps == 2:
        assert got[1] == pytest.approx(0.48, abs=0.005)


def test_sigma_range_schedule_puts_eps_and_sigma_max_at_book_times_1_and_2():
    """t = 1, 1.5, 2 <-> eps, sqrt(eps sigma_max), sigma_max: log sigma is linear in t."""
    schedule = sigma_range_schedule(ct.EPS, ct.SIGMA_MAX)
    got = NoiseLevel.from_t(torch.tensor([1.0, 1.5, 2.0], dtype=D64), schedule).edm_sigma()
    want = torch.tensor([ct.EPS, math.sqrt(ct.EPS * ct.SIGMA_MAX), ct.SIGMA_MAX], dtype=D64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="eps < sigma_max"):
        sigma_range_schedule(1.0, 0.5)


@pytest.mark.parametrize("steps", [1, 2])
def test_the_exact_consistency_function_samples_the_data(steps):
    """f* of the ring (exact ODE, 64 Heun steps: error ~1e-3) sampled in 1 or 2 steps: MMD^2 to
    fresh data < 0.003 at n = 1000, where data-vs-data spreads over +-0.0007 (5 draws) and
    f* gives -0.0009 and -0.0007. Caught: re-noising to tau z alone, dropping the estimate
    (0.009)."""
    mix = ct.ring_mixture()
    f_exact = ct.ExactConsistencyFunction(ct.exact_denoiser(mix))
    f_exact.steps = 64
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4), dtype=D64)
    x = dt.few_step_sample(f_exact, x_T, steps=steps, generator=torch.Generator().manual_seed(5))
    assert mmd2_rbf(x, mix.sample(1000, torch.Generator().manual_seed(6))) < 0.003


@pytest.fixture(scope="module")
def mnist_flow():
    return dt.pretrained.load("mnist-flow")


@pytest.mark.parametrize("steps", [1, 2])
def test_a_velocity_pair_takes_euler_steps_of_flow_sample_without_renoising(mnist_flow, steps):
    """The (network, schedule) pair of a velocity network: exactly flow_sample(..., "euler"),
    bit for bit, whatever the generator. Caught: Heun in place of Euler."""
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    want = dt.flow_sample(mnist_flow, x_T, steps=steps, method="euler", progress=False)
    got = dt.few_step_sample(mnist_flow, x_T, steps=steps, generator=torch.Generator())
    assert torch.equal(got, want)


def test_other_models_and_bad_arguments_are_refused(mnist_flow):
    """An eps-model pair points to ddim_sample; a bare callable names what is accepted; steps
    must be an int >= 1; x_T must be finite."""
    x_T = torch.randn(2, 1, 28, 28)
    eps_pair = (dt.UNet(dt.UNetConfig(base_channels=16, channel_mults=(1,))), mnist_flow[1])
    with pytest.raises(TypeError, match="ddim_sample"):
        dt.few_step_sample(eps_pair, x_T, steps=1)
    with pytest.raises(TypeError, match="consistency model .* got function"):
        dt.few_step_sample(lambda x, sigma: x, x_T, steps=1)
    with pytest.raises(ValueError, match="steps"):
        dt.few_step_sample(mnist_flow, x_T, steps=0)
    with pytest.raises(TypeError, match="steps"):
        dt.few_step_sample(mnist_flow, x_T, steps=1.5)
    with pytest.raises(ValueError, match="x_T"):
        dt.few_step_sample(Recorder(), torch.full((2, 2), math.nan), steps=1)

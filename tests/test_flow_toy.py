"""training.flow_toy: couplings, the velocity fit on a coupling, straightness and Euler errors.

Oracles: brute force over all permutations (minibatch OT), fields whose paths are known in
closed form (straightness), and a coupling whose velocity is a constant (the fit). Each test
names the bug it was seen to catch (injected in a scratch edit, watched go red, reverted).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.training import flow_toy

DATA = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * 0.3 + 2.0


def test_minibatch_ot_pairs_is_the_optimal_permutation_of_the_same_draws():
    """Same draws as independent_pairs, re-paired with the brute-force minimum of sum |z - x|^2.

    B = 6 (720 permutations). Caught: the cost as |z - x| (not squared: a different optimum for
    this seed), and the noise re-ordered alongside the data (no pairing change: red).
    """
    z, x = flow_toy.independent_pairs(DATA)(6, torch.Generator().manual_seed(1))
    z_ot, x_ot = flow_toy.minibatch_ot_pairs(DATA)(6, torch.Generator().manual_seed(1))
    assert torch.equal(z_ot.sort(0).values, z.sort(0).values)
    assert torch.equal(x_ot.sort(0).values, x.sort(0).values)
    best = min(
        sum(((z[i] - x[p[i]]) ** 2).sum().item() for i in range(6))
        for p in itertools.permutations(range(6))
    )
    assert ((z_ot - x_ot) ** 2).sum().item() == pytest.approx(best, rel=1e-6)


def test_fixed_pairs_keep_rows_together_and_noise_first():
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(2))
    x = z + torch.tensor([3.0, -1.0])
    a, b = flow_toy.fixed_pairs(z, x)(20, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b - a, torch.tensor([3.0, -1.0]).expand(20, 2))
    with pytest.raises(ValueError, match="same shape"):
        flow_toy.fixed_pairs(z, x[:10])


def test_straightness_of_known_paths():
    """u = c: straight (S = 0). u = 2 s c: x_s = x_0 + s^2 c, S = |c|^2 int (2s - 1)^2 ds = |c|^2 / 3.

    Euler with 400 steps: the chord is c (1 - 1/400), error O(1/N): tolerance 1 %. Caught: the
    chord taken as x_1 (not x_1 - x_0), and the mean over steps replaced by the last step.
    """
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert flow_toy.straightness(lambda x, s: c.expand_as(x), z) == pytest.approx(0, abs=1e-20)
    curved = flow_toy.straightness(lambda x, s: 2 * s[:, None] * c, z, steps=400)
    assert curved == pytest.approx(5 / 3, rel=0.01)
    errs = flow_toy.euler_errors(lambda x, s: c.expand_as(x), z, (1, 4), z + c)
    assert max(errs.values()) < 1e-12


def test_fit_velocity_learns_a_constant_velocity():
    """Pairs (z, z + c) have u = c everywhere: the loss falls to ~0 and u_theta ~ c.

    300 Adam steps of an MLP (hidden 32). Caught: the target x_noise - x_data (sign: u_theta ~ -c).
    """
    torch.manual_seed(0)
    schedule = dt.linear_schedule()
    net = dt.MLPDenoiser(dt.MLPConfig(hidden=32, num_blocks=1, prediction="velocity"))
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    c = torch.tensor([1.5, -0.5])
    losses = flow_toy.fit_velocity(
        net,
        schedule,
        flow_toy.fixed_pairs(z, z + c),
        steps=300,
        batch_size=128,
        generator=torch.Generator().manual_seed(6),
        progress=False,
    )
    assert sum(losses[-20:]) / 20 < 0.02 * losses[0]
    with torch.no_grad():
        u = dt.velocity_model(net, schedule)(z[:100], torch.full((100,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(u.mean(0), c, atol=0.1, rtol=0)

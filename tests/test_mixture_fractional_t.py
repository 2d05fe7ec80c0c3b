"""GaussianMixtureData at fractional book times, as GaussianData (flow matching's exact velocity).

Oracles: a float t on a grid point gives the integer time's answer, and a one-component mixture
at a fractional t is GaussianData (which already takes float t) with the same mean and std.
(Injected bug: keeping the integer path, alpha_bar[t.long()], for float t turns the second test
red, since 300.4 then reads as 300.)
"""

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.core.gaussian import GaussianData, GaussianMixtureData

SCHEDULE = dt.linear_schedule()
MIX = GaussianMixtureData(
    weights=torch.tensor([0.3, 0.7], dtype=torch.float64),
    means=torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64),
    stds=torch.tensor([0.2, 0.4], dtype=torch.float64),
)


def test_float_time_on_the_grid_equals_the_integer_time():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_int = torch.tensor([1, 10, 100, 300, 700, 1000])
    for f in (MIX.eps_hat, MIX.log_prob):
        torch.testing.assert_close(
            f(x, t_int.double(), SCHEDULE), f(x, t_int, SCHEDULE), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("t", [1.5, 37.25, 300.4, 999.9])
def test_one_component_mixture_is_gaussian_data_at_fractional_t(t):
    mean, std = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5
    one = GaussianMixtureData(
        weights=torch.ones(1, dtype=torch.float64),
        means=mean[None],
        stds=torch.tensor([std], dtype=torch.float64),
    )
    gauss = GaussianData(mean, torch.full((2,), std, dtype=torch.float64))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tt = torch.full((4,), t, dtype=torch.float64)
    torch.testing.assert_close(
        one.eps_hat(x, tt, SCHEDULE), gauss.eps_hat(x, tt, SCHEDULE), rtol=1e-9, atol=1e-12
    )

"""Every eps-sampler refuses a network trained for another output (a flow model's velocity).

Without the guard ``ddim_sample(mnist_flow, ...)`` runs and returns garbage: the output of a
velocity network has the shape and finiteness of an eps-prediction, so nothing else can see it.
(Injected bug: removing ``check_eps_model`` from ``samplers.common.predict`` turns the DDIM, DDPM,
DPM-Solver++ and predictor-corrector cases red; from ``samplers.edm._denoise``, Heun's.)
"""

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.checks import check_eps_model
from diffusion_tutorial.evaluation.likelihood import ode_likelihood
from diffusion_tutorial.networks.unet import UNet, UNetConfig

SMALL = dict(image_size=8, base_channels=8, channel_mults=(1,), num_res_blocks=1, T=20)
SCHEDULE = dt.linear_schedule(T=20)
SAMPLERS = {
    "ddim": lambda m, x: dt.ddim_sample(m, SCHEDULE, x, steps=2, progress=False),
    "ddpm": lambda m, x: dt.ddpm_sample(m, SCHEDULE, x, progress=False),
    "dpm": lambda m, x: dt.dpm_solver_sample(m, SCHEDULE, x, steps=2, progress=False),
    "sde": lambda m, x: dt.dpm_solver_sde_sample(m, SCHEDULE, x, steps=2, progress=False),
    "heun": lambda m, x: dt.heun_sample(m, SCHEDULE, x, steps=2, progress=False),
    "pc": lambda m, x: dt.predictor_corrector_sample(m, SCHEDULE, x, steps=2, progress=False),
    "likelihood": lambda m, x: ode_likelihood(m, SCHEDULE, x, steps=2, progress=False),
}


def net(prediction: str) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(**SMALL, prediction=prediction)).eval()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_eps_samplers_refuse_a_velocity_network(name):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'velocity', not eps"):
        SAMPLERS[name](net("velocity"), x)


@pytest.mark.parametrize("name", ["ddim", "heun"])
def test_eps_networks_and_plain_callables_pass(name):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert SAMPLERS[name](net("eps"), x).shape == x.shape
    assert SAMPLERS[name](lambda x_t, t: torch.zeros_like(x_t), x).shape == x.shape
    check_eps_model(lambda x_t, t: x_t)  # a callable without a config cannot be checked: passes

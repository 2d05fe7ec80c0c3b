"""Peer oracle for the EDM samplers: diffusers' Heun and Euler schedulers with Karras sigmas.

Schedulers are built from config (never downloaded); skipped where diffusers is not installed.
diffusers computes its alphas_cumprod in float32, where 1 - alpha_bar_1 = 1e-4 keeps only ~3
digits (sigma_1 off by 8e-5 relative); ``reference`` swaps in our float64 alpha_bar[1:] (the same
numbers to float32, see test_diffusers_oracle.py), so what is compared is the algorithm. diffusers
still rounds its sigmas and timesteps to float32, and its Euler step casts the state (|x| up to
~600 at sigma_T) to float32, hence the tolerances stated at each comparison.
Index shift: diffusers' (fractional) timestep k is book time t = k + 1.
"""

import math

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.samplers import (
    ddim_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
    leading_timesteps,
)

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()
# numpy 2 warns when diffusers turns our float64 alphas_cumprod tensor into an array; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    use_karras_sigmas=True,
    timestep_spacing="linspace",  # the Karras grid then runs from sigma_T to sigma_1, as ours
)
SCHED = linear_schedule()
DATA = GaussianData(torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.1, 0.3, 0.6, 1.0]))
MODEL = DATA.model(SCHED)


def x_T(n=64):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def reference(cls, steps, **config):
    """A diffusers scheduler on our float64 alpha_bar, its grid set for ``steps`` (None drops a key)."""
    ref = cls(**{k: v for k, v in {**CONFIG, **config}.items() if v is not None})
    ref.alphas_cumprod = SCHED.alpha_bar[1:].clone()  # float64; diffusers' index k = book t - 1
    ref.set_timesteps(steps)
    return ref


def book_t(k: torch.Tensor, n: int) -> torch.Tensor:
    return torch.full((n,), float(k) + 1.0, dtype=torch.float64)


@pytest.mark.parametrize("steps", [5, 18, 40])
def test_karras_sigmas_and_times_match_diffusers(steps):
    ref = reference(diffusers.EulerDiscreteScheduler, steps)
    ours = karras_sigmas(SCHED, steps)
    torch.testing.assert_close(ref.sigmas.double(), ours, rtol=1.2e-7, atol=0)  # float32 rounding
    # diffusers' _sigma_to_t interpolates log sigma in its index: our log-SNR rule, shifted by 1.
    t = NoiseLevel.from_edm_sigma(ours[:-1]).t(SCHED)
    torch.testing.assert_close(ref.timesteps.double() + 1, t, rtol=1.2e-7, atol=1e-9)


@pytest.mark.parametrize("steps", [5, 18, 40])
def test_heun_matches_heun_discrete_scheduler(steps):
    """Deterministic Heun (Algorithm 1): diffusers calls the model twice per step but once on
    the last, like ours; its input is scheduler.scale_model_input, x / sqrt(sigma^2 + 1)."""
    ref = reference(diffusers.HeunDiscreteScheduler, steps)
    x = x_T() * math.sqrt(1 + ref.sigmas[0].item() ** 2)  # our start: x_T at t = T, VE scale
    for k in ref.timesteps:
        eps = MODEL(ref.scale_model_input(x, k), book_t(k, x.shape[0]))
        x = ref.step(eps, k, x).prev_sample
    assert len(ref.timesteps) == 2 * steps - 1
    ours = heun_sample(MODEL, SCHED, x_T(), steps=steps, progress=False)
    # float64 states; sigmas and t rounded to float32 (6e-8 relative) move the result ~1e-6.
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 25])
def test_deterministic_euler_matches_euler_discrete_scheduler(steps):
    ref = reference(diffusers.EulerDiscreteScheduler, steps)
    x = x_T() * math.sqrt(1 + ref.sigmas[0].item() ** 2)
    for k in ref.timesteps:
        eps = MODEL(ref.scale_model_input(x, k), book_t(k, x.shape[0]))
        x = ref.step(eps, k, x).prev_sample
    ours = euler_sample(MODEL, SCHED, x_T(), steps=steps, progress=False)
    # diffusers' Euler casts the state to float32: ~6e-8 x 600 = 4e-5 at the first steps.
    torch.testing.assert_close(ours, x.double(), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(("s_churn", "s_tmin", "s_tmax"), [(4.0, 0.0, 80.0), (40.0, 0.05, 50.0)])
def test_churned_euler_matches_euler_discrete_scheduler_with_the_same_noise(
    s_churn, s_tmin, s_tmax
):
    """S_churn: diffusers draws the churn noise inside step() from the same generator, computes
    gamma, sigma_hat and the Euler step; its model output is taken before the churn, so it is
    given here the model at our churned state (x_hat, sigma_hat), as Algorithm 2 has it (the
    callback records that input). s_tmax < sigma_T (157): our cap of sigma_hat at sigma_T
    (the network's t <= T) does not come into play.
    """
    steps = 20
    seen = []
    ours = euler_sample(MODEL, SCHED, x_T(), steps=steps, s_churn=s_churn, s_tmin=s_tmin,
                        s_tmax=s_tmax, generator=torch.Generator().manual_seed(5), progress=False,
                        callback=lambda i, t, x_in, x0: seen.append((t, x_in)))  # fmt: skip
    ref = reference(diffusers.EulerDiscreteScheduler, steps)
    g = torch.Generator().manual_seed(5)
    x = x_T() * math.sqrt(1 + ref.sigmas[0].item() ** 2)
    for (t, x_in), k in zip(seen, ref.timesteps, strict=True):
        eps = MODEL(x_in, torch.full((x.shape[0],), t, dtype=torch.float64))
        kw = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, generator=g)
        x = ref.step(eps, k, x, **kw).prev_sample.double()
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-4)  # float32 state, as above
    # The churn mattered: the deterministic sampler ends elsewhere.
    plain = euler_sample(MODEL, SCHED, x_T(), steps=steps, progress=False)
    assert (ours - plain).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [10, 50])
def test_euler_a_is_ddim_eta1_on_the_same_times_and_noise(steps):
    """The names table's claim: "Euler a" (EulerAncestralDiscreteScheduler, k-diffusion's
    sample_euler_ancestral) is DDIM with eta = 1. Its sigma_up^2 = sigma_s^2 (sigma_t^2 -
    sigma_s^2) / sigma_t^2 is DDIM's varsigma^2 / alpha_bar_s, and its Euler step to sigma_down
    is DDIM's jump along eps_hat. Same grid (diffusers' "leading" = leading_timesteps, no Karras
    sigmas), same generator: one draw per step, in the same order.
    """
    ref = reference(
        diffusers.EulerAncestralDiscreteScheduler,
        steps,
        use_karras_sigmas=None,  # no such option on this scheduler
        timestep_spacing="leading",
    )
    g = torch.Generator().manual_seed(7)
    x = x_T() * math.sqrt(1 + ref.sigmas[0].item() ** 2)  # x_T at the first time, VE scale
    for k in ref.timesteps:
        eps = MODEL(ref.scale_model_input(x, k), book_t(k, x.shape[0]))
        x = ref.step(eps, k, x, generator=g).prev_sample
    ours = ddim_sample(MODEL, SCHED, x_T(), steps=steps, eta=1.0, timesteps=leading_timesteps,
                       generator=torch.Generator().manual_seed(7), progress=False)  # fmt: skip
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-4)  # float32 state, as above

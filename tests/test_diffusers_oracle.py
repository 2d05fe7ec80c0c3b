"""Peer oracle: diffusers' schedulers (built from config, never downloaded) give the same numbers.

Skipped when diffusers is not installed (it is a test-only optional dependency). diffusers keeps
alphas_cumprod in float32, so comparisons use float32-level tolerances (rtol 1e-5).
Index shift: diffusers' ``alphas_cumprod[k]`` is our ``alpha_bar[k + 1]``; its timestep k is book t = k + 1.
"""

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import (
    cosine_schedule,
    linear_schedule,
    scaled_linear_schedule,
)
from diffusion_tutorial.samplers import (
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    leading_timesteps,
    uniform_timesteps,
)

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()

LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
SCHED = linear_schedule()
DATA = GaussianData(torch.tensor([0.5, -0.3, 0.0, 0.2]), torch.tensor([0.1, 0.3, 0.6, 1.0]))
MODEL = DATA.model(SCHED)


def x_T(n=64):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def run(scheduler, x, steps, **step_kwargs):
    scheduler.set_timesteps(steps)
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), int(k) + 1, dtype=torch.int64)
        x = scheduler.step(MODEL(x, t), k, x, **step_kwargs).prev_sample
    return x


def book_times(scheduler, steps):
    """Our timesteps function reproducing a diffusers scheduler's evaluation times."""
    scheduler.set_timesteps(steps)
    ts = [int(k) + 1 for k in scheduler.timesteps] + [0]
    return lambda schedule, n: torch.tensor(ts, dtype=torch.int64)


@pytest.mark.parametrize(
    "ours, config",
    [
        (linear_schedule(), dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")),
        (
            scaled_linear_schedule(),
            dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        ),
        (cosine_schedule(), dict(beta_schedule="squaredcos_cap_v2")),
    ],
    ids=["linear", "scaled_linear", "cosine"],
)
def test_same_betas_and_alpha_bar(ours, config):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, **config)
    torch.testing.assert_close(ours.beta[1:], ref.betas.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        ours.alpha_bar[1:], ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 999, 1000])
def test_grids_match_diffusers_timestep_spacing(steps):
    """leading_timesteps = "leading" (DDIM's reference code), uniform_timesteps = "linspace"."""
    for ours, spacing in ((leading_timesteps, "leading"), (uniform_timesteps, "linspace")):
        ref = diffusers.DDPMScheduler(**LINEAR, timestep_spacing=spacing)
        assert ours(SCHED, steps).tolist() == book_times(ref, steps)(SCHED, steps).tolist()


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_ddim_eta0_matches(steps):
    """The default call (leading grid) is diffusers' default DDIM, started at the same x_T."""
    ref = diffusers.DDIMScheduler(**LINEAR, clip_sample=False)
    expected = run(ref, x_T(), steps)
    ours = ddim_sample(MODEL, SCHED, x_T(), steps=steps, progress=False)
    # Starts at book t = 901 for 10 steps: both treat x_T as x_901, so they agree.
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_ddim_eta1_matches_with_same_noise():
    ref = diffusers.DDIMScheduler(**LINEAR, clip_sample=False)
    expected = run(ref, x_T(), 20, eta=1.0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ours = ddim_sample(MODEL, SCHED, x_T(), steps=20, eta=1.0, generator=g, progress=False)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_ddpm_matches_with_same_noise():
    ref = diffusers.DDPMScheduler(**LINEAR, clip_sample=False)
    sched = SCHED
    expected = run(ref, x_T(8), 1000, generator=torch.Generator().manual_seed(4))
    ours = ddpm_sample(
        MODEL, sched, x_T(8), generator=torch.Generator().manual_seed(4), progress=False
    )
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)  # 1000 float32-rounded steps


@pytest.mark.parametrize("order, steps", [(1, 10), (2, 10), (2, 25)])
def test_dpm_solver_pp_matches(order, steps):
    """Order 1 and the paper's 2M ("midpoint"); diffusers always ends with a first-order step to 0.

    Order 3 is not compared: diffusers' 3M weights the quadratic term by half the exact integral,
    ours integrates the parabola exactly (test_samplers.py checks that and third-order convergence).
    """
    ref = diffusers.DPMSolverMultistepScheduler(
        **LINEAR, solver_order=order, final_sigmas_type="zero"
    )
    expected = run(ref, x_T(), steps)
    ours = dpm_solver_sample(
        MODEL,
        SCHED,
        x_T(),
        steps=steps,
        order=order,
        timesteps=book_times(ref, steps),
        progress=False,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)

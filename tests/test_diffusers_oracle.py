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
    dpm_solver_sde_sample,
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


@pytest.mark.parametrize("order, steps", [(1, 10), (2, 10), (2, 25), (3, 20)])
def test_dpm_solver_pp_matches(order, steps):
    """Order 1, the paper's 2M ("midpoint") and the common 3M; diffusers always ends with a
    first-order step to 0 (``lower_order_final=False`` keeps its 3M from dropping to order 2 one
    step earlier on short grids). ``dpm_solver_3_exact_sample`` has no diffusers twin: it puts
    twice the 3M's weight on the curvature term (test_samplers.py checks it on a parabola).
    """
    ref = diffusers.DPMSolverMultistepScheduler(
        **LINEAR, solver_order=order, final_sigmas_type="zero", lower_order_final=False
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


# Book times with uneven steps in lambda: h_prev / h from 0.07 to 14 (the log-SNR grid has h ~ h_prev,
# where r = h_prev / h and its inverse agree).
UNEVEN = [1000, 930, 700, 660, 420, 400, 150, 120, 30, 1]
# diffusers' float32 divided differences over steps as short as h = 0.1 differ from ours by up to
# 3e-5 (measured); r inverted, or the 3M with the exact curvature weight, moves the result by
# 1e-3 to 4 (measured), so 1e-4 separates rounding from a wrong formula.
UNEVEN_ATOL = 1e-4


def uneven(scheduler):
    """Set diffusers' custom (0-based) timesteps to UNEVEN; return our matching timesteps function."""
    scheduler.set_timesteps(timesteps=[t - 1 for t in UNEVEN])
    return lambda schedule, n: torch.tensor([*UNEVEN, 0], dtype=torch.int64)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_matches_on_an_uneven_grid(order):
    ref = diffusers.DPMSolverMultistepScheduler(
        **LINEAR, solver_order=order, final_sigmas_type="zero", lower_order_final=False
    )
    ours = dpm_solver_sample(
        MODEL, SCHED, x_T(), steps=len(UNEVEN), order=order, timesteps=uneven(ref), progress=False
    )
    x = x_T()
    for k in ref.timesteps:
        t = torch.full((x.shape[0],), int(k) + 1, dtype=torch.int64)
        x = ref.step(MODEL(x, t), k, x).prev_sample
    torch.testing.assert_close(ours, x.double(), rtol=1e-5, atol=UNEVEN_ATOL)


@pytest.mark.parametrize("grid", ["uneven", "diffusers-default"])
def test_sde_dpm_solver_pp_2m_matches_with_same_noise(grid):
    """SDE-DPM-Solver++(2M) = diffusers' ``algorithm_type="sde-dpmsolver++"``, ``solver_order=2``,
    fed the same z: ours draws one z per step (none on the step to 0) from the generator, the
    test draws the same sequence from a generator with the same seed and hands each z to
    diffusers as ``variance_noise``. diffusers' default grid (linspace in t) is uneven in lambda
    too. Tolerance: see UNEVEN_ATOL."""
    ref = diffusers.DPMSolverMultistepScheduler(
        **LINEAR,
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        lower_order_final=False,
    )
    if grid == "uneven":
        timesteps = uneven(ref)
    else:
        timesteps = book_times(ref, 20)
    steps = len(ref.timesteps)
    ours = dpm_solver_sde_sample(
        MODEL,
        SCHED,
        x_T(),
        steps=steps,
        generator=torch.Generator().manual_seed(11),
        timesteps=timesteps,
        progress=False,
    )
    g, x = torch.Generator().manual_seed(11), x_T()
    for i, k in enumerate(ref.timesteps):
        t = torch.full((x.shape[0],), int(k) + 1, dtype=torch.int64)
        last = i == steps - 1  # the step to t = 0 draws nothing (its noise is multiplied by 0)
        z = torch.zeros_like(x) if last else torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = ref.step(MODEL(x, t), k, x, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, x.double(), rtol=1e-5, atol=UNEVEN_ATOL)

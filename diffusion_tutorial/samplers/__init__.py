"""Samplers for the reverse process: DDPM, DDIM (and its inversion), DPM-Solver++ and
its stochastic (SDE) variant, EDM's Heun and Euler in sigma, predictor-corrector (Song et al.
2021); projections for inpainting and super-resolution, and RePaint.

Every sampler takes ``model(x_t, t) -> eps_hat`` (t: int64 (B,) of book indices in 1..T; the EDM
samplers pass fractional t as floats), a ``NoiseSchedule`` and the starting noise, and shares the
options ``clip_x0``, ``callback(i, t, x_t, x0_hat)``, ``progress`` and ``project``. Step spacing is a
function ``timesteps(schedule, steps)`` (EDM: ``sigmas(schedule, steps)``).

Names met elsewhere (k-diffusion's ``sample_*`` functions, image-generation UIs) and their
equivalents here and in diffusers. Every diffusers scheduler is built from the schedule's config,
e.g. ``num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"``, plus
the options shown. A "Karras" suffix in a UI means the rho = 7 grid: ``sigmas=karras_sigmas``
(EDM samplers, the default there) or ``timesteps=karras_timesteps`` (integer-t samplers: rounded,
so close to but not the fractional grid of k-diffusion), and ``use_karras_sigmas=True`` in diffusers.

- **Euler** (``sample_euler``): ``euler_sample(model, schedule, x_T, steps=n)``, which is
  ``ddim_sample(..., eta=0)`` on the same times; diffusers ``EulerDiscreteScheduler()``.
  With ``s_churn > 0``: Karras et al.'s churned Euler, ``EulerDiscreteScheduler`` and
  ``step(..., s_churn=...)`` (diffusers evaluates the model before the churn, Algorithm 2 after).
- **Euler a** (``sample_euler_ancestral``): ``ddim_sample(..., eta=1.0)``, the same step
  (its sigma_up^2 is DDIM's varsigma^2 / alpha_bar_s); diffusers ``EulerAncestralDiscreteScheduler()``.
- **Heun** (``sample_heun``): ``heun_sample(model, schedule, x_T, steps=n)``, 2n - 1 model calls;
  diffusers ``HeunDiscreteScheduler()``. ``s_churn > 0`` is Karras et al.'s Algorithm 2.
- **DDIM**: ``ddim_sample(..., eta=0.0)``; diffusers ``DDIMScheduler()``. **DDPM**:
  ``ddpm_sample``; diffusers ``DDPMScheduler()``.
- **DPM++ 2M** (``sample_dpmpp_2m``): ``dpm_solver_sample(..., order=2)``; diffusers
  ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  lower_order_final=False)`` (its default drops to order 1 on the last step below 15 steps).
- **DPM++ 2M SDE** (``sample_dpmpp_2m_sde``, midpoint): ``dpm_solver_sde_sample(..., order=2)``;
  diffusers ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2,
  lower_order_final=False)``; k-diffusion draws its noise from a Brownian tree, the same law.
- **DPM++ 3M SDE** (``sample_dpmpp_3m_sde``): not here. Its noise-free version, the common 3M, is
  ``dpm_solver_sample(..., order=3)`` (diffusers ``solver_order=3``): order about 2, not 3;
  the exact-parabola third order is ``dpm_solver_3_exact_sample``.

The grids differ by default: diffusers' "linspace" is ``timesteps=uniform_timesteps`` ("leading"
is ``leading_timesteps``), while the DPM-Solvers here default to ``logsnr_timesteps``.
k-diffusion steps on fractional sigmas and diffusers' DPM-Solver rounds its Karras times but not
its sigmas, so with a "Karras" grid the integer-t samplers here match them closely, not exactly;
on the same integer times they agree to rounding (tests/test_diffusers_oracle.py,
tests/test_diffusers_edm.py).

The flow sampler, ``flow_sample(model, x_noise, steps=n, method="euler" | "heun")``, takes a
velocity field ``model(x, flow_t) -> u`` in flow time s (s = 0 at noise) instead of an eps-model:
see ``samplers.flow`` and ``core.flow_matching`` (Part 4). ``few_step_sample(model, x_T, steps=k)``
samples a consistency model (re-noising between steps) or a reflowed flow (Euler, no re-noising)
in k steps: ``samplers.few_step`` (Part 4, One to four steps).

Book: Reverse process (Part 2), Fast sampling (Part 3) and Flow matching (Part 4).
"""

from diffusion_tutorial.samplers.common import Callback, TimestepFn, ddim_step
from diffusion_tutorial.samplers.ddim import ddim_invert, ddim_sample
from diffusion_tutorial.samplers.ddpm import ddpm_sample
from diffusion_tutorial.samplers.dpm_solver import dpm_solver_3_exact_sample, dpm_solver_sample
from diffusion_tutorial.samplers.dpm_solver_sde import dpm_solver_sde_sample
from diffusion_tutorial.samplers.edm import SigmaFn, euler_sample, heun_sample
from diffusion_tutorial.samplers.few_step import few_step_sample
from diffusion_tutorial.samplers.flow import flow_sample, flow_timesteps
from diffusion_tutorial.samplers.inverse import (
    Projection,
    check_mask,
    check_scale_factor,
    downsample,
    ilvr_projection,
    low_pass,
    replacement_projection,
    upsample,
)
from diffusion_tutorial.samplers.predictor_corrector import predictor_corrector_sample
from diffusion_tutorial.samplers.repaint import renoise, repaint_path, repaint_sample
from diffusion_tutorial.samplers.timesteps import (
    karras_sigmas,
    karras_timesteps,
    leading_timesteps,
    logsnr_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)

__all__ = [
    "Callback",
    "TimestepFn",
    "ddpm_sample",
    "ddim_sample",
    "ddim_step",
    "ddim_invert",
    "dpm_solver_sample",
    "dpm_solver_3_exact_sample",
    "dpm_solver_sde_sample",
    "predictor_corrector_sample",
    "heun_sample",
    "euler_sample",
    "flow_sample",
    "flow_timesteps",
    "few_step_sample",
    "SigmaFn",
    "karras_sigmas",
    "karras_timesteps",
    "leading_timesteps",
    "uniform_timesteps",
    "quadratic_timesteps",
    "logsnr_timesteps",
    "Projection",
    "check_mask",
    "check_scale_factor",
    "downsample",
    "upsample",
    "low_pass",
    "replacement_projection",
    "ilvr_projection",
    "renoise",
    "repaint_path",
    "repaint_sample",
]

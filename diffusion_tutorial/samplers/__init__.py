"""Samplers for the reverse process: DDPM, DDIM (and its inversion), DPM-Solver++ and
its stochastic (SDE) variant; projections for inpainting and super-resolution, and RePaint.

Every sampler takes ``model(x_t, t) -> eps_hat`` (t: int64 (B,) of book indices in 1..T), a
``NoiseSchedule`` and the starting noise, and shares the options ``clip_x0``, ``callback(i, t, x_t,
x0_hat)`` and ``progress``. Step spacing is a function ``timesteps(schedule, steps)``.

Book: Reverse process (Part 2) and Fast sampling (Part 3).
"""

from diffusion_tutorial.samplers.common import Callback, TimestepFn, ddim_step
from diffusion_tutorial.samplers.ddim import ddim_invert, ddim_sample
from diffusion_tutorial.samplers.ddpm import ddpm_sample
from diffusion_tutorial.samplers.dpm_solver import dpm_solver_3_exact_sample, dpm_solver_sample
from diffusion_tutorial.samplers.dpm_solver_sde import dpm_solver_sde_sample
from diffusion_tutorial.samplers.edm import SigmaFn, euler_sample, heun_sample
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
    "heun_sample",
    "euler_sample",
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

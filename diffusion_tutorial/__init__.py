"""diffusion_tutorial: the package behind *Diffusion Models, Step by Step*.

Import it as ``import diffusion_tutorial as dt``; each submodule is reachable as an attribute
(``dt.schedules``, ``dt.samplers``, ...), and the most used functions are re-exported here.
Every function's docstring names the chapter that derives it.
"""

from . import (
    checks,
    data,
    forward,
    gaussian,
    guidance,
    losses,
    metrics,
    parameterization,
    plotting,
    pretrained,
    probability,
    runtime,
    samplers,
    schedules,
    training,
    unet,
    vae,
)
from .checks import expand_like
from .data import data_root, mnist, toy_data
from .forward import q_posterior, q_sample, q_step
from .gaussian import GaussianData
from .guidance import classifier_free_guidance
from .losses import simple_loss, vlb_terms
from .parameterization import (
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    score_from_eps,
    v_from_eps,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)
from .runtime import default_device, fast_or_full, is_fast
from .samplers import (
    clipped_logsnr_timesteps,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    karras_timesteps,
    logsnr_timesteps,
    power_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)
from .schedules import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    scaled_linear_schedule,
)
from .unet import UNet, UNetConfig

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # submodules
    "checks",
    "data",
    "forward",
    "gaussian",
    "guidance",
    "losses",
    "metrics",
    "parameterization",
    "plotting",
    "pretrained",
    "probability",
    "runtime",
    "samplers",
    "schedules",
    "training",
    "unet",
    "vae",
    # re-exports
    "expand_like",
    "data_root",
    "mnist",
    "toy_data",
    "q_sample",
    "q_step",
    "q_posterior",
    "GaussianData",
    "classifier_free_guidance",
    "simple_loss",
    "vlb_terms",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_eps",
    "eps_from_v",
    "x0_from_v",
    "v_from_x0",
    "score_from_eps",
    "eps_from_score",
    "default_device",
    "fast_or_full",
    "is_fast",
    "ddpm_sample",
    "ddim_sample",
    "ddim_invert",
    "dpm_solver_sample",
    "dpm_solver_sde_sample",
    "power_timesteps",
    "uniform_timesteps",
    "quadratic_timesteps",
    "logsnr_timesteps",
    "clipped_logsnr_timesteps",
    "karras_timesteps",
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "scaled_linear_schedule",
    "UNet",
    "UNetConfig",
]

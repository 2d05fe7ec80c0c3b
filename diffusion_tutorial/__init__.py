"""diffusion_tutorial: the package behind *Diffusion Models, Step by Step*.

Import it as ``import diffusion_tutorial as dt``. The folders are the layers of the package, each
importing only from the ones above it in this list:

- ``checks``, ``runtime``: argument checks, fast mode, device, progress bars;
- ``background/``: Part 1 (Monte Carlo, Gaussians, KL, ELBO, a VAE);
- ``core/``: Part 2's maths (schedules, forward process, parameterisations, losses);
- ``samplers/``: DDPM, DDIM, DPM-Solver++, the flow sampler and the time grids they step on;
- ``networks/``: the U-Net, the MLP, the classifier-free-guidance wrapper and the autoencoder
  of latent diffusion;
- ``data``, ``plotting``: MNIST and 2-D toy data; figures and animations (matplotlib);
- ``evaluation/``, ``pretrained``, ``training/``: the MNIST classifier and metrics, the shipped
  checkpoints, and the training loop with its command line (``python -m diffusion_tutorial.train``).

The most used functions are re-exported here; ``dt.plotting``, ``dt.pretrained``, ``dt.training``
and ``dt.evaluation`` are imported on first use, so ``import diffusion_tutorial`` stays light and
changes no matplotlib setting. Every function's docstring names the chapter that derives it.
"""

import importlib

from diffusion_tutorial import background, checks, core, data, networks, runtime, samplers
from diffusion_tutorial.checks import expand_like
from diffusion_tutorial.core.flow_matching import velocity_from_eps_model, velocity_model
from diffusion_tutorial.core.forward import q_posterior, q_sample, q_step
from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.losses import simple_loss, vlb_terms
from diffusion_tutorial.core.parameterization import (
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    score_from_eps,
    v_from_eps,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)
from diffusion_tutorial.core.schedules import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    scaled_linear_schedule,
)
from diffusion_tutorial.core.sde import VPSDE
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.data import data_root, mnist, toy_data
from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.latent import decode_latent, encode_latent
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import UNet, UNetConfig
from diffusion_tutorial.runtime import default_device, fast_or_full, is_fast
from diffusion_tutorial.samplers import (
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_3_exact_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    euler_sample,
    few_step_sample,
    flow_sample,
    heun_sample,
    ilvr_projection,
    karras_sigmas,
    karras_timesteps,
    leading_timesteps,
    logsnr_timesteps,
    predictor_corrector_sample,
    quadratic_timesteps,
    repaint_sample,
    replacement_projection,
    uniform_timesteps,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # layers (subpackages and modules)
    "background",
    "checks",
    "core",
    "data",
    "evaluation",
    "networks",
    "plotting",
    "pretrained",
    "runtime",
    "samplers",
    "training",
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
    "encode_latent",
    "decode_latent",
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
    "dpm_solver_3_exact_sample",
    "dpm_solver_sde_sample",
    "predictor_corrector_sample",
    "heun_sample",
    "euler_sample",
    "flow_sample",
    "few_step_sample",
    "velocity_from_eps_model",
    "velocity_model",
    "karras_sigmas",
    "karras_timesteps",
    "NoiseLevel",
    "VPSDE",
    "leading_timesteps",
    "uniform_timesteps",
    "quadratic_timesteps",
    "logsnr_timesteps",
    "replacement_projection",
    "ilvr_projection",
    "repaint_sample",
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "scaled_linear_schedule",
    "UNet",
    "UNetConfig",
    "MLPDenoiser",
    "MLPConfig",
]

_LAZY = {"plotting", "pretrained", "training", "evaluation"}


def __getattr__(name: str):
    """Import the heavier layers (matplotlib, safetensors, torch.distributed) on first use."""
    if name in _LAZY:
        module = importlib.import_module(f"diffusion_tutorial.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'diffusion_tutorial' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)

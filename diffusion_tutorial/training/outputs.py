"""What a run makes for people: sample grids along the way and the exported EMA weights at the end.

Book: Example: DDPM (Part 2). Lu et al. 2022 (DPM-Solver++), the grids' 20-step sampler.
"""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import save_image

from diffusion_tutorial import pretrained
from diffusion_tutorial.core.flow_matching import velocity_model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.latent import decode_latent
from diffusion_tutorial.samplers import dpm_solver_sample
from diffusion_tutorial.samplers.flow import flow_sample
from diffusion_tutorial.training.build import init_provenance, latent_autoencoder, latent_scale
from diffusion_tutorial.training.config import LATENT_DATASET, TrainConfig

__all__ = ["save_sample_grid", "export_weights", "hardware_name", "run_card"]


@torch.no_grad()
def save_sample_grid(
    model: nn.Module,
    schedule: NoiseSchedule,
    path: Path,
    cfg: TrainConfig,
    n: int = 64,
) -> Path:
    """Sample with DPM-Solver++ (20 NFE; a flow-matching network: flow Euler, 20 NFE) from a
    fixed noise and save an 8x8 image grid as PNG.

    Conditional models draw labels 0..9 in turn with classifier-free guidance; 2-D models save a
    2-D histogram of 4,096 samples over [-3, 3]^2 as a grey-scale image; latent models
    (``--dataset mnist-latent``) save their samples decoded to digits, divided by the run's
    scaling factor as the training data were multiplied by it. Uses its own generator
    (seeded by ``cfg.seed``), so sampling never disturbs the training random streams.
    """
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    conf = model.config
    image = hasattr(conf, "image_size")
    shape = (n, conf.in_channels, conf.image_size, conf.image_size) if image else (4096, conf.dim)
    x_T = torch.randn(shape, generator=g).to(device)  # (n, C, H, W) or (4096, D)
    eps_model = model
    if conf.num_classes is not None:
        y = torch.arange(shape[0], device=device) % conf.num_classes  # (n,)
        eps_model = classifier_free_guidance(model, y, cfg.guidance_scale)
    # float32 even after mixed-precision training: the solver's coefficients need the precision.
    if conf.prediction == "velocity":  # a flow-matching network: Euler in flow time, 20 NFE
        x_0 = flow_sample(velocity_model(eps_model, schedule), x_T, steps=20, progress=False)
    else:
        x_0 = dpm_solver_sample(eps_model, schedule, x_T, steps=20, progress=False)
    if cfg.dataset == LATENT_DATASET:  # (n, 4, 7, 7) latents -> (n, 1, 28, 28) digits
        autoencoder = latent_autoencoder()
        x_0 = decode_latent(autoencoder, x_0.float().cpu(), scaling_factor=latent_scale(cfg))
    if image:
        grid = ((x_0 + 1) / 2).clamp(0, 1)  # (n, C, H, W) in [0, 1]
    else:
        pts = x_0[:, :2].cpu()  # (4096, 2)
        hist, _ = torch.histogramdd(pts, bins=[128, 128], range=[-3.0, 3.0, -3.0, 3.0])
        grid = (hist / hist.max().clamp_min(1)).T.flip(0)[None, None]  # (1, 1, 128, 128), y up
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.cpu(), path, nrow=8)
    return path


def hardware_name(device: torch.device, world: int = 1) -> str:
    """A human-readable name of the training hardware for the model card."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        name = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    return f"{world} x {name}" if world > 1 else name


def run_card(
    command: str,
    model: nn.Module,
    *,
    steps: int,
    batch_size: int,
    hardware: str,
    wall_time_s: float,
    final_loss: float | None,
    init: str | None,
    **extra: Any,
) -> dict[str, Any]:
    """The model card of an exported run: the command that reruns it, its steps, batch size,
    hardware and wall time, the network's size and last loss, and, for a fine-tune, where its
    starting weights came from (``init_provenance``). ``extra`` adds what only that kind of run
    records (its configuration, a latent model's autoencoder, a few-step model's sampler)."""
    card = dict(
        training_command=command,
        steps=steps,
        batch_size=batch_size,
        hardware=hardware,
        wall_time_s=round(wall_time_s, 1),
        parameters=sum(p.numel() for p in model.parameters()),
        final_loss=final_loss,
        **extra,
    )
    if init:  # steps, hardware and wall time above count this run only
        card["init"] = init_provenance(init)
    return card


def export_weights(path: str, model: nn.Module, cfg: TrainConfig, metadata: dict[str, Any]) -> None:
    """Write the EMA weights (a U-Net) as safetensors with the model card metadata
    (``pretrained.save``, atomic). ``TrainConfig`` refuses ``export`` for the toy MLP."""
    model = copy.deepcopy(model).cpu()  # safetensors writes CPU tensors
    pretrained.save(path, model, schedule={"name": cfg.schedule, "T": cfg.T}, **metadata)
    print(f"exported EMA weights to {path}", flush=True)

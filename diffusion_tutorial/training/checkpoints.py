"""What the training loop writes: atomic checkpoints, the loss CSV, sample grids and exported weights.

Book: Training the U-Net (checkpoints and resuming).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchvision.utils import save_image

from diffusion_tutorial import pretrained
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.unet import UNet
from diffusion_tutorial.samplers import dpm_solver_sample

if TYPE_CHECKING:  # pragma: no cover
    from diffusion_tutorial.training.ema import EMA
    from diffusion_tutorial.training.loop import TrainConfig

__all__ = [
    "LossLog",
    "save_checkpoint",
    "load_checkpoint",
    "save_sample_grid",
    "export_weights",
    "hardware_name",
]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    step: int,
    wall_time_s: float,
    cfg: TrainConfig,
) -> None:
    """Everything needed to continue exactly: weights, EMA, optimiser, step and all RNG states."""
    device = gen.device
    state = {
        "step": step,
        "wall_time_s": wall_time_s,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "generator": gen.get_state(),  # draws t, eps and label dropout
        "cpu_rng": torch.get_rng_state(),  # dropout on CPU
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "train_config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model.config),
    }
    _atomic_torch_save(state, path)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    device: torch.device,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote (in place); returns the raw state dict.

    RNG states are per process; a multi-process run restores rank 0's global RNG on every rank
    and re-derives each rank's own generator, so DDP resumption is reproducible but not bitwise
    equal to an uninterrupted DDP run.
    """
    state = torch.load(path, map_location=device, weights_only=True)
    if state["model_config"] != dataclasses.asdict(model.config):
        raise ValueError(
            f"checkpoint {path} holds a model with config {state['model_config']}, but this run "
            f"builds {dataclasses.asdict(model.config)}; use the same --model/--dataset/--conditional"
        )
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if rank == 0:
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["cpu_rng"].cpu())
        if state["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    else:
        gen.manual_seed(gen.initial_seed() + state["step"])
    return state


class LossLog:
    """Append ``step,loss,lr,wall_time_s`` rows to a CSV; on resume keep only rows up to that step."""

    header = ["step", "loss", "lr", "wall_time_s"]

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        rows: list[list[str]] = []
        if resume_step > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= resume_step]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([self.header, *rows])

    def write(self, step: int, loss: float, lr: float, wall_time_s: float) -> None:
        """Append one row and flush (so a crash keeps everything written so far)."""
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{wall_time_s:.2f}"])


@torch.no_grad()
def save_sample_grid(
    model: nn.Module,
    schedule: NoiseSchedule,
    path: Path,
    cfg: TrainConfig,
    n: int = 64,
) -> Path:
    """Sample with DPM-Solver++ (20 NFE) from a fixed noise and save an 8x8 image grid as PNG.

    Conditional models draw labels 0..9 in turn with classifier-free guidance; 2-D models save a
    2-D histogram of 4,096 samples over [-3, 3]^2 as a grey-scale image. Uses its own generator
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
    x_0 = dpm_solver_sample(eps_model, schedule, x_T, steps=20, progress=False)
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


def export_weights(path: str, model: nn.Module, cfg: TrainConfig, metadata: dict[str, Any]) -> None:
    """Write the EMA weights as safetensors with the model card metadata (``pretrained.save``)."""
    if not isinstance(model, UNet):
        print(f"export skipped: {path} (pretrained.save handles U-Nets only)", flush=True)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu()  # safetensors writes CPU tensors
    pretrained.save(path, model, schedule={"name": cfg.schedule, "T": cfg.T}, **metadata)
    print(f"exported EMA weights to {path}", flush=True)

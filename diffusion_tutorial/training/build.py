"""What a :class:`TrainConfig` builds before the first step: data, network, start weights, precision.

Book: Example: DDPM (Part 2). Micikevicius et al. 2018 (mixed precision with loss
scaling).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from diffusion_tutorial import data, pretrained
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.networks.autoencoder import Autoencoder
from diffusion_tutorial.networks.latent import encode_latent
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import PRESETS, UNet
from diffusion_tutorial.training.config import LATENT_DATASET, ConfigError, TrainConfig

__all__ = [
    "load_dataset",
    "mnist_train",
    "mnist_latent_train",
    "latent_autoencoder",
    "latent_scale",
    "latent_card",
    "build_model",
    "load_init",
    "init_provenance",
    "autocast_dtype",
    "PREDICTION_OF",
]

PREDICTION_OF = {"eps": "eps", "flow": "velocity"}
"""The network's ``config.prediction`` for each ``--objective``."""


def load_dataset(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (x (N, ...) float32, labels (N,) int64 or None) for ``cfg.dataset``, all in memory."""
    if cfg.dataset == "mnist":
        return mnist_train()  # (N, 1, 28, 28), (N,)
    if cfg.dataset == LATENT_DATASET:
        return mnist_latent_train(latent_scale(cfg))  # (N, 4, 7, 7), (N,)
    g = torch.Generator().manual_seed(cfg.seed)
    return data.toy_data(cfg.dataset, cfg.toy_size, generator=g), None  # (N, 2)


@functools.lru_cache(maxsize=1)
def mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 MNIST training images in [-1, 1] and their labels, read once per process."""
    ds = data.mnist(train=True)
    return ds.images, ds.labels.long()


AUTOENCODER = "mnist-autoencoder"
"""The shipped autoencoder whose latents ``--dataset mnist-latent`` trains on."""


@functools.lru_cache(maxsize=1)
def latent_autoencoder() -> Autoencoder:
    """The shipped ``mnist-autoencoder`` (SHA-256 checked, eval mode, CPU), loaded once per process."""
    return pretrained.load(AUTOENCODER)


def latent_scale(cfg: TrainConfig) -> float:
    """The scaling factor of a latent run: ``--latent-scale``, else the autoencoder's own."""
    if cfg.latent_scale is not None:
        return cfg.latent_scale
    return latent_autoencoder().config.scaling_factor


@functools.lru_cache(maxsize=2)
def mnist_latent_train(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z = scale * encoder mean of the 60,000 MNIST training digits (N, 4, 7, 7) and their labels.

    Encoded once per process and scale (about 1.5 minutes on one CPU thread), in batches of
    1,000 with ``networks.latent.encode_latent``; deterministic (the mean, no sampling).
    """
    images, labels = mnist_train()  # (N, 1, 28, 28) in [-1, 1], (N,)
    autoencoder = latent_autoencoder()
    z = [encode_latent(autoencoder, b, scaling_factor=scale) for b in images.split(1000)]
    return torch.cat(z), labels  # (N, 4, 7, 7), (N,)


def latent_card(cfg: TrainConfig) -> dict[str, Any]:
    """What an exported latent model's card records: its data, autoencoder and scaling factor.

    Empty for other datasets. A latent model is meaningful only with the exact autoencoder (by
    SHA-256) and factor it was trained with: sample z, then decode_latent(autoencoder, z,
    scaling_factor=<this factor>).
    """
    if cfg.dataset != LATENT_DATASET:
        return {}
    autoencoder = latent_autoencoder()
    return {
        "dataset": cfg.dataset,
        "latent": {
            "autoencoder": AUTOENCODER,
            "autoencoder_sha256": pretrained.REGISTRY[AUTOENCODER].sha256,
            "scaling_factor": latent_scale(cfg),
            "autoencoder_scaling_factor": autoencoder.config.scaling_factor,
            "latent_shape": list(autoencoder.config.latent_shape),
        },
    }


def build_model(cfg: TrainConfig, x: torch.Tensor) -> torch.nn.Module:
    """The network for ``cfg``: a U-Net preset sized to the images, or an MLP for vectors.

    Its ``config.prediction`` records the objective ("eps", or "velocity" for ``--objective
    flow``), so an exported file says how to read the network.
    """
    num_classes = 10 if cfg.conditional else None
    prediction = PREDICTION_OF[cfg.objective]
    default = "latent" if cfg.dataset == LATENT_DATASET else "mnist"
    name = cfg.model or (default if x.ndim == 4 else "mlp")
    if name == "mlp":
        return MLPDenoiser(
            MLPConfig(dim=x.shape[1], num_classes=num_classes, T=cfg.T, prediction=prediction)
        )
    unet_cfg = dataclasses.replace(
        PRESETS[name],
        in_channels=x.shape[1],
        image_size=x.shape[2],
        num_classes=num_classes,
        T=cfg.T,
        prediction=prediction,
    )
    return UNet(unet_cfg)


def load_init(model: torch.nn.Module, cfg: TrainConfig, schedule: NoiseSchedule) -> str:
    """Copy the weights of ``cfg.init`` (a shipped name or a .safetensors path) into ``model``.

    The file must describe the same network and noise schedule as ``cfg``; fine-tuning starts
    from its weights with a fresh optimiser and an EMA that starts at those weights. It may
    predict something else (``--init mnist --objective flow``: eps weights, a velocity network).
    Returns what the file's network predicts, ``"eps"`` or ``"velocity"``.
    """
    init = cfg.init
    try:
        src, src_schedule = pretrained.load_file(
            pretrained.resolve_weights(init)
        )  # refuses a non-denoiser (the autoencoder)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(
            f"--init must be one of {sorted(pretrained.REGISTRY)} or a .safetensors file written "
            f"by diffusion_tutorial (pretrained.save or --export); {init!r}: {err}"
        ) from err
    if src_schedule.T != schedule.T or not torch.allclose(
        src_schedule.alpha_bar, schedule.alpha_bar, rtol=1e-6, atol=0.0
    ):
        raise ConfigError(
            f"--init {init!r} was trained with another noise schedule (T = {src_schedule.T}) "
            f"than --schedule {cfg.schedule} --T {cfg.T}"
        )
    try:  # strict: every parameter name and shape must match
        model.load_state_dict(src.state_dict())
    except RuntimeError as err:
        raise ConfigError(
            f"--init {init!r} is a different network than this run's {type(model).__name__} "
            f"(model={cfg.model!r}, conditional={cfg.conditional}): parameter names or shapes differ"
        ) from err
    return src.config.prediction


_PROVENANCE_KEYS = ("steps", "batch_size", "hardware", "wall_time_s", "init")


def init_provenance(init: str) -> dict[str, Any]:
    """Where ``--init`` weights came from, for the exported model card: the source, its SHA-256
    and how it was trained (its own ``init`` too, so a chain of fine-tunes stays traceable)."""
    path = pretrained.resolve_weights(init)
    meta = pretrained.card_file(path)
    return {
        "from": init,
        "sha256": pretrained.sha256_file(path),
        **{k: meta[k] for k in _PROVENANCE_KEYS if k in meta},
    }


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16/fp16 on CUDA ("auto" picks), bf16 on CPU only when asked; else None."""
    if device.type == "cpu" and precision == "bf16":
        return torch.bfloat16  # fast on CPUs with bf16 instructions (AVX512-BF16, AMX)
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16

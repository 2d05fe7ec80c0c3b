"""The configuration of a training run: one dataclass that is also the command line's only source.

Every field of :class:`TrainConfig` carries its help text, its choices or its allowed range, and
whether a resumed run must keep it, in ``metadata``; :mod:`diffusion_tutorial.training.cli` builds
the options from these fields, and :meth:`TrainConfig.validate` checks them, so a name, a type, a
default or a range is written once.

Book: Example: DDPM (Part 2). Loshchilov & Hutter 2019 (AdamW).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range
from diffusion_tutorial.core.schedules import SCHEDULES
from diffusion_tutorial.data import TOY_DATASETS
from diffusion_tutorial.networks.unet import PRESETS

__all__ = [
    "TrainConfig",
    "ConfigError",
    "LR_DECAYS",
    "PRECISIONS",
    "DATASETS",
    "IMAGE_DATASETS",
    "LATENT_DATASET",
    "OBJECTIVES",
]

LR_DECAYS = ("none", "cosine")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LATENT_DATASET = "mnist-latent"
IMAGE_DATASETS = ("mnist", LATENT_DATASET)  # 4-D data for U-Nets; the others are 2-D toy sets
DATASETS = (*IMAGE_DATASETS, *TOY_DATASETS)
MODELS = (*PRESETS, "mlp")
OBJECTIVES = ("eps", "flow")


class ConfigError(ValueError):
    """A training setting, or the run folder it points at, that the run refuses before it starts."""


def option(default: Any, help: str, **meta: Any) -> Any:
    """A :class:`TrainConfig` field: ``default``, CLI ``help`` and metadata.

    Metadata keys: ``choices``; ``low``/``high`` (with ``low_open``/``high_open``) for numbers;
    ``flag`` (the CLI name when not ``--field-name``); ``none_ok`` (None, or 'none' on the
    command line, is allowed besides the range); ``same_on_resume`` (a resumed run must use
    the checkpoint's value); ``cli=False`` (not a command-line option).
    """
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def flag(field: dataclasses.Field) -> str:
    """The command-line name of a field: ``--batch-size`` for ``batch_size``, or its ``flag``."""
    if "flag" in field.metadata:
        return field.metadata["flag"]
    return "--" + field.name.replace("_", "-")


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; ``python -m diffusion_tutorial.train`` fills it.

    Construction validates every field (:meth:`validate`), so a bad setting fails before the
    run touches its output folder.
    """

    dataset: str = option(
        "mnist",
        "training data (MNIST is read from $DIFFUSION_TUTORIAL_DATA); mnist-latent: the 4x7x7 "
        "latents z = scale * encoder mean of the MNIST training digits under the shipped "
        "'mnist-autoencoder' (latent diffusion; encoded once per process)",
        choices=DATASETS,
        same_on_resume=True,
    )
    model: str | None = option(
        None,
        "network: a U-Net preset for images or 'mlp' for 2-D data (unset: 'mnist' for images, "
        "'latent' for mnist-latent, 'mlp' for toy sets)",
        choices=MODELS,
        same_on_resume=True,
    )
    steps: int = option(20_000, "total optimiser steps (a resumed run continues up to this)", low=1)
    batch_size: int = option(
        128, "global batch size (split over torchrun processes)", low=1, same_on_resume=True
    )
    lr: float = option(
        2e-4, "AdamW learning rate after warm-up", low=0.0, low_open=True, same_on_resume=True
    )
    weight_decay: float = option(0.0, "AdamW weight decay", low=0.0, same_on_resume=True)
    warmup_steps: int = option(
        500, "linear learning-rate warm-up steps from 0", low=0, same_on_resume=True
    )
    lr_decay: str = option(
        "none",
        "after warm-up: constant learning rate, or a half cosine down to 0 at --steps",
        choices=LR_DECAYS,
        same_on_resume=True,
    )
    grad_clip: float | None = option(
        1.0,
        "max global gradient norm ('none': no clipping)",
        low=0.0,
        low_open=True,
        none_ok=True,
        same_on_resume=True,
    )
    ema_decay: float = option(
        0.999, "EMA decay of the weights", low=0.0, high=1.0, high_open=True, same_on_resume=True
    )
    schedule: str = option(
        "linear", "noise schedule", choices=tuple(SCHEDULES), same_on_resume=True
    )
    T: int = option(1000, "number of diffusion steps T", low=1, high=1_000_000, same_on_resume=True)
    objective: str = option(
        "eps",
        "what the network learns: 'eps' (L_simple, the noise) or 'flow' (flow matching: the "
        "velocity u = x_0 - eps at flow times on the schedule's range, read through "
        "core.flow_matching; --init mnist fine-tunes the eps-model into one)",
        choices=OBJECTIVES,
        same_on_resume=True,
    )
    conditional: bool = option(
        False,
        "class-conditional model with a learned null class (mnist and mnist-latent only)",
        same_on_resume=True,
    )
    latent_scale: float | None = option(
        None,
        "mnist-latent only: the scaling factor z = scale * encoder mean ('none': the "
        "autoencoder's own, 1 / std of its training latents); another value trains at "
        "another scale, recorded in the exported model card",
        low=0.0,
        low_open=True,
        none_ok=True,
        same_on_resume=True,
    )
    p_uncond: float = option(
        0.1,
        "probability of dropping the label to the null class (classifier-free guidance)",
        low=0.0,
        high=1.0,
        same_on_resume=True,
    )
    guidance_scale: float = option(
        3.0,
        "guidance scale s (1: the plain conditional model; Ho & Salimans' w = s - 1) for the conditional sample grids",
        low=0.0,
    )
    out_dir: str = option("runs/mnist", "output folder", flag="--out")
    seed: int = option(0, "random seed (data order, noise, init)", low=0, same_on_resume=True)
    sample_every: int = option(
        2000, "save a sample grid every N steps and at the end (0: never)", low=0
    )
    checkpoint_every: int = option(
        1000, "write checkpoint.pt every N steps (0: only at the end)", low=0
    )
    log_every: int = option(50, "append the mean loss to loss.csv every N steps", low=1)
    time_limit_min: float | None = option(
        None, "stop cleanly after this many minutes: checkpoint, samples and export", low=0.0
    )
    precision: str = option(
        "auto",
        "autocast on CUDA (auto = bf16 if supported, else fp16); on "
        "CPU fp32 unless bf16 is asked for (faster on CPUs with bf16 "
        "instructions)",
        choices=PRECISIONS,
        same_on_resume=True,
    )
    device: str | None = option(None, "cuda, mps or cpu; none: the best available")
    toy_size: int = option(50_000, "points in a toy training set", low=1, same_on_resume=True)
    resume: bool = option(
        False,
        "continue the run in --out exactly (model, EMA, optimiser, RNG); "
        "refused if a setting that shapes the run differs",
    )
    overwrite: bool = option(
        False,
        "start over in an --out folder that holds a run (deletes the checkpoint.pt, "
        "loss.csv and samples_<step>.png a run wrote there; other files stay). Refused while "
        "another run trains there",
    )
    init: str | None = option(
        None,
        "fine-tune: start from these weights, a shipped model "
        "('mnist', 'mnist-cond') or a .safetensors file from --export "
        "(same network and T; fresh optimiser)",
        metavar="NAME_OR_PATH",
    )
    export: str | None = option(
        None,
        "write the EMA weights (U-Nets) as safetensors with model-card metadata",
        metavar="PATH",
    )
    progress: bool = option(True, "hide the progress bar", flag="--no-progress")
    command: str = option("", "the command line, recorded in the exported metadata", cli=False)

    def __post_init__(self) -> None:
        for name in ("out_dir", "init", "export"):  # paths are stored as text in checkpoints
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.validate()

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the option and its allowed values for a bad field."""
        for field in dataclasses.fields(self):
            _check_field(field, getattr(self, field.name))
        toy = self.dataset not in IMAGE_DATASETS
        if toy and self.model not in (None, "mlp"):
            raise ConfigError(
                f"--model {self.model} is a U-Net for images; the 2-D toy set {self.dataset!r} "
                "needs --model mlp (or no --model)"
            )
        if not toy and self.model == "mlp":
            raise ConfigError(
                f"--model mlp is for 2-D toy data; images need a U-Net: one of {sorted(PRESETS)}"
            )
        if toy and self.conditional:
            raise ConfigError("--conditional needs labels: use --dataset mnist or mnist-latent")
        if self.latent_scale is not None and self.dataset != LATENT_DATASET:
            raise ConfigError(
                f"--latent-scale applies to --dataset {LATENT_DATASET} only, got --dataset "
                f"{self.dataset}"
            )
        if self.dataset == LATENT_DATASET and self.model not in (None, "mlp"):
            levels = len(PRESETS[self.model].channel_mults)
            if levels > 1:  # 7 is odd: no stride-2 level fits (UNetConfig would refuse it)
                raise ConfigError(
                    f"--model {self.model} halves H and W {levels - 1} time(s), which 7x7 "
                    f"latents do not allow; use --model latent (one resolution)"
                )
        if self.conditional and self.objective == "flow":
            raise ConfigError(
                "--objective flow trains unconditional models only (no guided flow sampler yet); "
                "drop --conditional or use --objective eps"
            )
        if toy and self.batch_size > self.toy_size:
            raise ConfigError(
                f"--batch-size must be in 1..{self.toy_size} (--toy-size), got {self.batch_size}"
            )
        if toy and self.export:
            raise ConfigError("--export writes U-Nets only (pretrained.save), not the toy MLP")
        if self.resume and self.overwrite:
            raise ConfigError("--resume (continue) and --overwrite (start over) exclude each other")
        if not self.out_dir:
            raise ConfigError("--out must be a folder path, got ''")
        if self.device is not None:
            _check_device(self.device)
        try:  # e.g. the linear schedule's alpha_bar_T underflows float32 beyond T = 8632
            SCHEDULES[self.schedule](self.T)
        except ValueError as err:
            raise ConfigError(f"--T (with --schedule {self.schedule}): {err}") from None
        return self


def _check_device(name: str) -> None:
    """Refuse a --device that is not cpu, cuda or mps, or that this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device must be cuda, mps or cpu (or e.g. cuda:1): {err}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be cuda, mps or cpu (or e.g. cuda:1), got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"--device {name}: PyTorch finds no CUDA GPU on this machine (no GPU, no driver, "
                "or a CPU-only PyTorch); pass --device cpu, or none for the best available"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {name}: Apple's MPS is not available on this machine; pass --device cpu, "
            "or none for the best available"
        )


def _check_field(field: dataclasses.Field, value: Any) -> None:
    """Check one field against its metadata; the error names the CLI option and the range."""
    meta, name = field.metadata, f"{flag(field)} ({field.name})"
    if value is None and (field.default is None or meta.get("none_ok")):
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
    try:
        if isinstance(field.default, bool):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        elif isinstance(field.default, int):
            check_int_in_range(name, value, meta["low"], meta.get("high"))
        elif isinstance(field.default, float) or "low" in meta:
            keys = ("low", "high", "low_open", "high_open")
            check_float_in_range(name, value, **{k: meta[k] for k in keys if k in meta})
        elif not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    except ValueError as err:
        raise ConfigError(str(err)) from err


def resume_mismatches(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The settings marked ``same_on_resume`` whose value differs from a checkpoint's config,
    as ``"--lr 0.001 (checkpoint: 0.0002)"`` strings (empty when the run may resume)."""
    out = []
    for field in dataclasses.fields(cfg):
        if field.metadata.get("same_on_resume"):
            old, new = saved.get(field.name, field.default), getattr(cfg, field.name)
            if old != new:
                out.append(f"{flag(field)} {new} (checkpoint: {old})")
    return out

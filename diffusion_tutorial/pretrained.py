"""Shipped checkpoints: save and load models as safetensors, verified by SHA-256 before loading.

The file format (a network's kind, config, schedule and model card as safetensors metadata) and
:func:`save` live in :mod:`diffusion_tutorial.model_files`; this module adds the shipped files,
their registry and the SHA-256 check before anything is read, and re-exports the format's API.

Book: Pretrained models (model cards).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from diffusion_tutorial.model_files import (  # the file format, re-exported
    _DENOISERS,
    KINDS,
    ModelKind,
    _build_model,
    _build_schedule,
    _check_device,
    _file_kind,
    _load_weights,
    card_file,
    load_kind,
    save,
    save_classifier,
)
from diffusion_tutorial.networks.autoencoder import Autoencoder

__all__ = [
    "REGISTRY",
    "CLASSIFIER",
    "WeightsEntry",
    "ModelKind",
    "KINDS",
    "ChecksumError",
    "save",
    "save_classifier",
    "load",
    "load_file",
    "load_classifier",
    "card",
    "card_file",
    "weights_path",
    "verified_path",
    "resolve_weights",
    "sha256_file",
]


class WeightsEntry(NamedTuple):
    """One shipped file: its name in ``diffusion_tutorial/weights/``, its SHA-256 and how to retrain it."""

    filename: str
    sha256: str | None  # None: not trained and shipped yet
    retrain: str  # the command that re-creates the file (also on the model card)


# ----------------------------------------------------------------------------------------------
# THE REGISTRY. After (re)training a checkpoint, put the file in diffusion_tutorial/weights/ and
# its hash here: `sha256sum diffusion_tutorial/weights/<file>` (or `pretrained.sha256_file(path)`).
# ----------------------------------------------------------------------------------------------
REGISTRY: dict[str, WeightsEntry] = {
    "mnist": WeightsEntry(
        filename="mnist.safetensors",
        sha256="59a47206237e01f77d4a0f405d7716a692296d86a2487fe99572e40ef73dfd58",
        retrain="four runs of python -m diffusion_tutorial.train --dataset mnist --model mnist, "
        "each from the last with --init: 3,919 steps on one H200, 5,938 on a 2-core CPU, then "
        "twice 3,000 steps with --lr-decay cosine on one H100 (scripts/TRAINING_HISTORY.md in "
        "the repository gives each command)",
    ),
    "mnist-cond": WeightsEntry(
        filename="mnist-cond.safetensors",
        sha256="352e6e8bcd39156210e0070bcbc7490870cbe51d840f39af4d980ce134ff10b4",
        retrain="python -m diffusion_tutorial.train --dataset mnist --model mnist --conditional "
        "--p-uncond 0.1 --batch-size 512 --lr 4e-4 --warmup-steps 500 --ema-decay 0.999 "
        "--time-limit-min 4 --seed 0 --export mnist-cond.safetensors (see the model card)",
    ),
    "mnist-flow": WeightsEntry(
        filename="mnist-flow.safetensors",
        sha256="813d1eebcb4eae5b8f00b7bb5761344aa461fe48686e214d8c3157486bce3383",
        retrain="python -m diffusion_tutorial.train --dataset mnist --model mnist --init mnist "
        "--objective flow --steps 7000 --batch-size 64 --lr 4e-4 --warmup-steps 100 "
        "--lr-decay cosine --ema-decay 0.999 --seed 0 --export mnist-flow.safetensors "
        "(flow matching, fine-tuned from mnist's weights; see the model card)",
    ),
    # Not a denoiser: load("mnist-autoencoder") returns the Autoencoder alone (no schedule).
    "mnist-autoencoder": WeightsEntry(
        filename="mnist-autoencoder.safetensors",
        sha256="d9dca866861a2b1a0a8512a24500c192595eef27310665d3de585de724f3af47",
        retrain="python -m diffusion_tutorial.training.autoencoder --steps 2176 --batch-size 128 "
        "--lr 0.001 --kl-weight 0.0001 --base-channels 32 --seed 0, then set its "
        "config.scaling_factor to networks.latent.measure_scaling_factor(model, "
        "dt.mnist(train=True).images) and save it again (see the model card)",
    ),
    "mnist-latent": WeightsEntry(
        filename="mnist-latent.safetensors",
        sha256="b130e47bbe87e90de840bd2d48eb6acf2f8f6521a744b6b12be5e999b0918ab2",
        retrain="python -m diffusion_tutorial.train --dataset mnist-latent --model latent "
        "--conditional --p-uncond 0.1 --steps 5000 --batch-size 128 --lr 4e-4 --warmup-steps 100 "
        "--lr-decay cosine --ema-decay 0.999 --seed 0 --out stage1 --export stage1.safetensors, "
        "then the same with --init stage1.safetensors --steps 6000 --lr 2e-4 --seed 1 --out stage2 "
        "--export mnist-latent.safetensors (a class-conditional eps-model of mnist-autoencoder's "
        "4x7x7 latents; see the model card)",
    ),
    "mnist-few-step": WeightsEntry(
        filename="mnist-few-step.safetensors",
        sha256="1000b965e288623a48b5ca1799e67ca39347cb6db9e7a5032150ba5f068d37f8",
        retrain="python -m diffusion_tutorial.training.reflow pairs --out pairs --shards 0 12, "
        "then python -m diffusion_tutorial.training.reflow train --pairs pairs --init mnist-flow "
        "--steps 4500 --batch-size 64 --lr 2e-4 --grid-fraction 0.5 --seed 0 --out run "
        "--export mnist-few-step.safetensors (reflow of mnist-flow on 12,000 pairs of mnist's "
        "DPM-Solver++(2M) 20-NFE ODE; see the model card)",
    ),
}
CLASSIFIER = WeightsEntry(
    filename="mnist_classifier.safetensors",
    sha256="50ce8d9e1c93b5853ab5c9f85ba766c3b5374ba968f8b35cd5163be203e1d390",
    retrain="DIFFUSION_TUTORIAL_DATA=<folder> python -m diffusion_tutorial.training.classifier_cli "
    "--out diffusion_tutorial/weights/mnist_classifier.safetensors",
)


class ChecksumError(RuntimeError):
    """A weights file does not have the SHA-256 the registry expects (corrupted or replaced)."""


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(sha256: object) -> str:
    """A SHA-256 hex digest as 64 lower-case digits (``sha256sum`` prints lower, others upper)."""
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(
            f"sha256 must be 64 hexadecimal digits (as sha256sum prints), got {sha256!r:.80}"
        )
    return sha256.lower()


def _verify(path: Path, sha256: str, what: str, retrain: str) -> None:
    sha256 = _check_sha256(sha256)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: weights file {path} is missing. Reinstall the package "
            f"(`pip install --force-reinstall diffusion-tutorial`) or re-create it with: {retrain}"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(
            f"{what}: {path} has SHA-256 {actual}, expected {sha256}. The file is corrupted or "
            f"was replaced. Reinstall the package, or re-create it with: {retrain} "
            "(and register the new hash in diffusion_tutorial/pretrained.py, REGISTRY)"
        )


def load_file(
    path: str | os.PathLike, sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Load a denoiser written by :func:`save` -> ``(model, schedule)``, model in eval mode.

    Use it for your own checkpoints. When ``sha256`` is given (64 hex digits, any case) the file
    is verified before loading. The file's ``"kind"`` picks the class (``UNet`` or
    ``MLPDenoiser``); a classifier file or an unknown kind is refused, naming the file.
    """
    path = Path(path)
    device = _check_device(device)
    if sha256 is not None:
        _verify(path, sha256, str(path), "your own training command")
    meta = card_file(path)
    kind = _file_kind(path, meta)
    if kind not in _DENOISERS:
        raise ValueError(
            f"{path} holds a network of kind {kind!r} (its {KINDS[kind].config_key!r} metadata), "
            f"not a denoiser with 'unet_config'/'mlp_config' and 'schedule': load it with "
            f"{KINDS[kind].loader}(path)"
        )
    if "schedule" not in meta:
        raise ValueError(
            f"{path} has no 'schedule' metadata: it was not written by "
            "diffusion_tutorial.pretrained.save"
        )
    model = _build_model(path, kind, meta)
    try:
        schedule = _build_schedule(meta["schedule"], model.config.T)
    except ValueError as err:
        what = (
            "pairs a model and a schedule that do not fit"
            if "model's T" in str(err)
            else ("has an invalid 'schedule'")
        )
        raise ValueError(f"{path} {what}: {err}") from err
    _load_weights(path, model)
    return model.to(device).eval(), schedule


def weights_path(filename: str) -> Path:
    """Path of a file shipped in ``diffusion_tutorial/weights/`` (found via importlib.resources)."""
    return Path(str(importlib.resources.files("diffusion_tutorial") / "weights" / filename))


def _entry(name: str) -> WeightsEntry:
    if name == "mnist-classifier":
        return CLASSIFIER
    if name not in REGISTRY:
        raise ValueError(
            f"unknown pretrained model {name!r}; available: {sorted(REGISTRY)} and 'mnist-classifier'"
        )
    return REGISTRY[name]


def verified_path(name: str) -> Path:
    """The path of a shipped file (a model or "mnist-classifier"), after its SHA-256 check."""
    entry = _entry(name)
    path = weights_path(entry.filename)
    if entry.sha256 is None:
        raise FileNotFoundError(
            f"pretrained {name!r} has not been shipped yet (no SHA-256 registered in "
            f"diffusion_tutorial/pretrained.py). Train it with: {entry.retrain}, then load it "
            "with pretrained.load_file(path)"
        )
    _verify(path, entry.sha256, f"pretrained {name!r}", entry.retrain)
    return path


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's file, SHA-256-checked, if ``name_or_path`` names one (as ``--init mnist``
    does); otherwise the path itself (a file of one's own, as ``--init run/model.safetensors``)."""
    if str(name_or_path) in REGISTRY:
        return verified_path(str(name_or_path))
    return Path(name_or_path)


def load(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Any] | Autoencoder:
    """Load a shipped checkpoint: a denoiser such as ``"mnist"`` -> ``(model, schedule)``;
    ``"mnist-autoencoder"`` -> the :class:`~diffusion_tutorial.networks.autoencoder.Autoencoder`
    alone (no schedule: it is not a denoiser; its config carries the latent ``scaling_factor``).

    The file's SHA-256 is checked against :data:`REGISTRY` before anything is read; the model is
    returned in eval mode on ``device`` (a device, not a dtype), the schedule ready for the samplers.

    Book: Pretrained models; Latent diffusion (Part 4).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(REGISTRY)}")
    device = _check_device(device)
    path = verified_path(name)
    if _file_kind(path, card_file(path)) == "autoencoder":
        return load_kind(path, "autoencoder", device)
    return load_file(path, device=device)


def card(name: str) -> dict[str, Any]:
    """The model card of a shipped checkpoint: its metadata, JSON-decoded (config, schedule, ...)."""
    return card_file(verified_path(name))


def load_classifier(
    path: str | os.PathLike | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load the MNIST classifier behind MNIST-FID (own classifier features), in eval mode.

    Without ``path``, the shipped file is loaded after checking its SHA-256 against
    :data:`CLASSIFIER`; with ``path``, it is verified only when ``sha256`` is given.
    """
    device = _check_device(device)
    if path is None:
        path = verified_path("mnist-classifier")
    else:
        path = Path(path)
        if sha256 is not None:
            _verify(path, sha256, str(path), CLASSIFIER.retrain)
        elif not path.is_file():
            raise FileNotFoundError(f"classifier file {path} does not exist")
    return load_kind(path, "classifier", device)

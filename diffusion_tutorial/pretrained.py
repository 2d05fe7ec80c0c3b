"""Shipped checkpoints: save and load models as safetensors, verified by SHA-256 before loading.

A checkpoint is one ``.safetensors`` file (tensors only, no pickle, so loading cannot run code).
Its header carries string metadata: ``"unet_config"`` (the U-Net's config dataclass as JSON),
``"schedule"`` (JSON such as ``{"name": "linear", "T": 1000}``) and free-form entries of the model
card (training command, steps, hardware, wall time, metrics), each JSON-encoded.

Book: Pretrained models (model cards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save_file as _st_save_file
from torch import nn

from diffusion_tutorial.core.schedules import SCHEDULES
from diffusion_tutorial.evaluation.classifier import ClassifierConfig, MNISTClassifier
from diffusion_tutorial.files import atomic_write
from diffusion_tutorial.networks.unet import UNet, UNetConfig

__all__ = [
    "REGISTRY",
    "CLASSIFIER",
    "WeightsEntry",
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
}
CLASSIFIER = WeightsEntry(
    filename="mnist_classifier.safetensors",
    sha256="50ce8d9e1c93b5853ab5c9f85ba766c3b5374ba968f8b35cd5163be203e1d390",
    retrain="DIFFUSION_TUTORIAL_DATA=<folder> python -m diffusion_tutorial.training.classifier_cli "
    "--out diffusion_tutorial/weights/mnist_classifier.safetensors",
)
_RESERVED = {"unet_config", "schedule", "classifier_config"}


class ChecksumError(RuntimeError):
    """A weights file does not have the SHA-256 the registry expects (corrupted or replaced)."""


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- writing


def _write(path: str | os.PathLike, module: nn.Module, metadata: dict[str, str]) -> Path:
    """Write ``module``'s state_dict and string ``metadata`` atomically (``files.atomic_write``)."""
    # Clone so tied/shared tensors become separate (safetensors refuses shared storage) and
    # move to CPU so a checkpoint written on a GPU loads anywhere.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    return atomic_write(path, lambda tmp: _st_save_file(tensors, str(tmp), metadata=metadata))


def _encode(metadata: dict[str, Any]) -> dict[str, str]:
    clash = _RESERVED & metadata.keys()
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved; pass them another name")
    return {k: json.dumps(v) for k, v in metadata.items()}


def save(
    path: str | os.PathLike, model: nn.Module, *, schedule: dict[str, Any], **metadata: Any
) -> Path:
    """Save a U-Net as safetensors with its config, its noise schedule and model-card metadata.

    ``model.config`` must be a dataclass (``UNetConfig``); ``schedule`` a dict such as
    ``{"name": "linear", "T": 1000}``; every other keyword must be JSON-serialisable (training
    command, steps, wall time, ...). The file is written atomically. Returns the path.

    Book: Pretrained models.
    """
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError("model must have a dataclass `config` attribute (e.g. UNetConfig)")
    _check_schedule(schedule, getattr(config, "T", None))
    meta = {"unet_config": json.dumps(dataclasses.asdict(config)), "schedule": json.dumps(schedule)}
    meta.update(_encode(metadata))
    return _write(path, model, meta)


def save_classifier(path: str | os.PathLike, classifier: nn.Module, **metadata: Any) -> Path:
    """Save the MNIST classifier as safetensors with its config and JSON-encoded ``metadata``."""
    meta = {"classifier_config": json.dumps(dataclasses.asdict(classifier.config))}
    meta.update(_encode(metadata))
    return _write(path, classifier, meta)


# --------------------------------------------------------------------------------------- reading


def _check_schedule(schedule: object, model_T: int | None = None) -> None:
    """Raise unless ``schedule`` is ``{"name": <in SCHEDULES>, "T": <int >= 1>}`` with the model's T."""
    if not isinstance(schedule, dict) or schedule.get("name") not in SCHEDULES:
        raise ValueError(
            f"schedule must be a dict with 'name' in {sorted(SCHEDULES)} and an int 'T', "
            f"got {schedule!r}"
        )
    T = schedule.get("T")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"schedule['T'] must be an int >= 1, got {T!r}")
    if model_T is not None and T != model_T:
        raise ValueError(
            f"schedule['T'] must equal the model's T = {model_T} (the network embeds t = 1..T), "
            f"got {T}"
        )


def _build_schedule(spec: dict[str, Any], model_T: int | None = None):
    """Re-create the noise schedule named in a checkpoint, e.g. ``linear_schedule(T=1000)``."""
    _check_schedule(spec, model_T)
    return SCHEDULES[spec["name"]](spec["T"])


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples: turn lists back into tuples (config fields such as channel multipliers).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _build_unet(config: dict[str, Any]) -> nn.Module:
    """Construct an untrained ``UNet(UNetConfig(**config))``."""
    return UNet(UNetConfig(**_tuples(config)))


def _verify(path: Path, sha256: str, what: str, retrain: str) -> None:
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


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _decode(meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:  # written by another tool: keep the raw string
            out[k] = v
    return out


def load_file(
    path: str | os.PathLike, sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Load a U-Net checkpoint written by :func:`save` -> ``(model, schedule)``, model in eval mode.

    Use it for your own checkpoints. When ``sha256`` is given the file is verified before loading.
    """
    path = Path(path)
    if sha256 is not None:
        _verify(path, sha256, str(path), "your own training command")
    meta = card_file(path)
    if "unet_config" not in meta or "schedule" not in meta:
        raise ValueError(
            f"{path} has no 'unet_config'/'schedule' metadata: it was not written by "
            "diffusion_tutorial.pretrained.save"
        )
    model = _build_unet(meta["unet_config"])
    try:
        schedule = _build_schedule(meta["schedule"], model.config.T)
    except ValueError as err:
        raise ValueError(f"{path} pairs a model and a schedule that do not fit: {err}") from err
    model.load_state_dict(_st_load_file(str(path), device="cpu"))
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


def load(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load a shipped checkpoint, ``"mnist"`` or ``"mnist-cond"`` -> ``(model, schedule)``.

    The file's SHA-256 is checked against :data:`REGISTRY` before anything is read; the model is
    returned in eval mode on ``device``, the schedule ready for the samplers.

    Book: Pretrained models.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(REGISTRY)}")
    return load_file(verified_path(name), device=device)


def card(name: str) -> dict[str, Any]:
    """The model card of a shipped checkpoint: its metadata, JSON-decoded (config, schedule, ...)."""
    return card_file(verified_path(name))


def card_file(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of any checkpoint file (e.g. one from ``--export``), JSON-decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _decode(_metadata(path))


def load_classifier(
    path: str | os.PathLike | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load the MNIST classifier behind MNIST-FID (own classifier features), in eval mode.

    Without ``path``, the shipped file is loaded after checking its SHA-256 against
    :data:`CLASSIFIER`; with ``path``, it is verified only when ``sha256`` is given.
    """
    if path is None:
        path = verified_path("mnist-classifier")
    else:
        path = Path(path)
        if sha256 is not None:
            _verify(path, sha256, str(path), CLASSIFIER.retrain)
        elif not path.is_file():
            raise FileNotFoundError(f"classifier file {path} does not exist")
    meta = _decode(_metadata(path))
    if "classifier_config" not in meta:
        raise ValueError(
            f"{path} has no 'classifier_config' metadata: not an MNIST classifier file"
        )
    classifier = MNISTClassifier(ClassifierConfig(**_tuples(meta["classifier_config"])))
    classifier.load_state_dict(_st_load_file(str(path), device="cpu"))
    return classifier.to(device).eval()

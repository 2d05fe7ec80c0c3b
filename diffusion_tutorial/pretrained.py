"""Shipped checkpoints: save and load models as safetensors, verified by SHA-256 before loading.

A checkpoint is one ``.safetensors`` file (tensors only, no pickle, so loading cannot run code).
Its header carries string metadata: ``"kind"`` (which network: ``"unet"``, ``"mlp"`` or
``"classifier"``, see :data:`KINDS`), the network's config dataclass as JSON under the kind's key
(``"unet_config"``, ``"mlp_config"``, ``"classifier_config"``), ``"schedule"`` for denoisers (JSON
such as ``{"name": "linear", "T": 1000}``, optionally with the schedule function's own
parameters, e.g. ``"beta_end": 0.05``) and free-form entries of the model card (training command,
steps, hardware, wall time, metrics), each JSON-encoded. Files written before ``"kind"`` existed
(the shipped ones among them) are read by their config key: ``"unet_config"`` is a U-Net,
``"classifier_config"`` a classifier.

Book: Pretrained models (model cards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save_file as _st_save_file
from torch import nn

from diffusion_tutorial.core.schedules import SCHEDULES
from diffusion_tutorial.evaluation.classifier import ClassifierConfig, MNISTClassifier
from diffusion_tutorial.files import atomic_write
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import UNet, UNetConfig

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


class ModelKind(NamedTuple):
    """How a checkpoint of one kind is built: its config's metadata key, config and model class."""

    config_key: str  # the metadata entry holding the config dataclass as JSON
    config_class: type
    model_class: type
    loader: str  # the function that loads this kind (for error messages)


KINDS: dict[str, ModelKind] = {
    "unet": ModelKind("unet_config", UNetConfig, UNet, "pretrained.load_file"),
    "mlp": ModelKind("mlp_config", MLPConfig, MLPDenoiser, "pretrained.load_file"),
    "classifier": ModelKind(
        "classifier_config", ClassifierConfig, MNISTClassifier, "pretrained.load_classifier"
    ),
}
"""The kinds of network a checkpoint can hold, by the ``"kind"`` entry of its metadata. Chapters that
ship other networks (flow matching, an autoencoder, few-step students) add their kind here; a file
of a kind this version does not know is refused with the kinds it can build."""

_DENOISERS = ("unet", "mlp")  # kinds with a noise schedule: save / load_file
_RESERVED = {"kind", "schedule"} | {k.config_key for k in KINDS.values()}


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


def _kind_of(model: object) -> str | None:
    """The :data:`KINDS` name of ``model``'s class, or None."""
    for name, kind in KINDS.items():
        if isinstance(model, kind.model_class):
            return name
    return None


def _kind_meta(kind: str, model: nn.Module) -> dict[str, str]:
    config = getattr(model, "config", None)
    if not isinstance(config, KINDS[kind].config_class):
        raise TypeError(
            f"model.config must be a {KINDS[kind].config_class.__name__}, got {type(config).__name__}"
        )
    return {
        "kind": json.dumps(kind),
        KINDS[kind].config_key: json.dumps(dataclasses.asdict(config)),
    }


def save(
    path: str | os.PathLike, model: nn.Module, *, schedule: dict[str, Any], **metadata: Any
) -> Path:
    """Save a denoiser (U-Net or MLP) as safetensors with its kind, config, schedule and model card.

    ``model`` must be a ``UNet`` or an ``MLPDenoiser`` (classifiers: :func:`save_classifier`);
    ``schedule`` a dict such as ``{"name": "linear", "T": 1000}``, optionally with parameters of
    that schedule function (``{"name": "linear", "T": 50, "beta_end": 0.05}``): it is built once
    here, so that a file is written only if :func:`load_file` rebuilds the same schedule. Every
    other keyword must be JSON-serialisable (training command, steps, wall time, ...). The file is
    written atomically. Returns the path.

    Book: Pretrained models.
    """
    kind = _kind_of(model)
    if kind not in _DENOISERS:
        hint = " (classifiers: pretrained.save_classifier)" if kind == "classifier" else ""
        raise TypeError(f"model must be a UNet or an MLPDenoiser{hint}, got {type(model).__name__}")
    meta = _kind_meta(kind, model)
    _build_schedule(schedule, model.config.T)  # refuse what would not load back
    meta["schedule"] = json.dumps(schedule, allow_nan=False)
    meta.update(_encode(metadata))
    return _write(path, model, meta)


def save_classifier(path: str | os.PathLike, classifier: nn.Module, **metadata: Any) -> Path:
    """Save the MNIST classifier as safetensors with its kind, config and JSON-encoded ``metadata``."""
    if _kind_of(classifier) != "classifier":
        raise TypeError(
            f"save_classifier writes an MNISTClassifier, got {type(classifier).__name__} "
            "(U-Nets and MLP denoisers: pretrained.save(path, model, schedule=...))"
        )
    meta = _kind_meta("classifier", classifier)
    meta.update(_encode(metadata))
    return _write(path, classifier, meta)


# --------------------------------------------------------------------------------------- reading


def _check_schedule(schedule: object, model_T: int | None = None) -> dict[str, Any]:
    """Raise unless ``schedule`` is ``{"name": <in SCHEDULES>, "T": <int >= 1>, **params}`` with the
    model's T and only parameters of that schedule function; return the parameters."""
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
    name = schedule["name"]
    allowed = sorted(set(inspect.signature(SCHEDULES[name]).parameters) - {"T"})
    params = {k: v for k, v in schedule.items() if k not in ("name", "T")}
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"schedule key {key!r} is not a parameter of the {name} schedule; allowed: "
                f"'name', 'T' and {', '.join(allowed)}"
            )
    return params


def _build_schedule(spec: dict[str, Any], model_T: int | None = None):
    """Re-create the noise schedule named in a checkpoint, e.g. ``linear_schedule(T=1000)``."""
    params = _check_schedule(spec, model_T)
    try:
        return SCHEDULES[spec["name"]](spec["T"], **params)
    except TypeError as err:  # e.g. "beta_end must be a number, got str"
        raise ValueError(f"schedule {spec!r}: {err}") from err


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples: turn lists back into tuples (config fields such as channel multipliers).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _file_kind(path: Path, meta: dict[str, Any]) -> str:
    """The kind of network a file holds: its "kind" entry, or (older files) its config key."""
    kind = meta.get("kind")
    if kind is None:  # written before kinds existed, e.g. the shipped files
        for name in ("unet", "classifier"):
            if KINDS[name].config_key in meta:
                return name
        raise ValueError(
            f"{path} has no 'kind' and no 'unet_config'/'classifier_config' metadata: it was not "
            "written by diffusion_tutorial.pretrained.save or save_classifier"
        )
    if kind not in KINDS:
        raise ValueError(
            f"{path} holds a network of kind {kind!r}, which this version of diffusion_tutorial "
            f"cannot build (it builds: {', '.join(sorted(KINDS))}); a newer version of the "
            "package may (flow, autoencoder and few-step models are added by later chapters)"
        )
    return kind


def _build_model(path: Path, kind: str, meta: dict[str, Any]) -> nn.Module:
    """Construct the untrained network a file describes, ``Model(Config(**meta[config_key]))``."""
    spec = KINDS[kind]
    raw = meta.get(spec.config_key)
    cls = spec.config_class
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else type(raw).__name__
        raise ValueError(
            f"{path}: metadata {spec.config_key!r} must be a JSON object of {cls.__name__} "
            f"fields, got {got}"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(
            f"{path}: metadata {spec.config_key!r} has fields {unknown} that {cls.__name__} does "
            f"not know (allowed: {sorted(fields)}); it was written by another version"
        )
    try:
        return spec.model_class(cls(**_tuples(raw)))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: metadata {spec.config_key!r} is not a valid {cls.__name__}: {err}"
        ) from err


def _load_weights(path: Path, model: nn.Module) -> None:
    """Copy the file's tensors into ``model`` (every name and shape must match)."""
    try:
        tensors = _st_load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{path}: its tensors do not fit the {type(model).__name__} its metadata describes "
            f"(parameter names or shapes differ: {first} ...)"
        ) from err


def _check_sha256(sha256: object) -> str:
    """A SHA-256 hex digest as 64 lower-case digits (``sha256sum`` prints lower, others upper)."""
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(
            f"sha256 must be 64 hexadecimal digits (as sha256sum prints), got {sha256!r:.80}"
        )
    return sha256.lower()


def _check_device(device: object) -> torch.device:
    """``device`` as a torch.device, or a TypeError/ValueError naming what a device is."""
    allowed = "a torch.device or a string such as 'cpu', 'cuda' or 'cuda:1'"
    if isinstance(device, torch.dtype):
        raise TypeError(
            f"device must be {allowed}, got the dtype {device}: load the model, then convert it "
            f"with model.to({device})"
        )
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device must be {allowed}, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be {allowed}, got {device!r} ({err})") from err


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


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as err:  # e.g. "header too large": damaged or another format
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is damaged, truncated or "
            "of another format"
        ) from err


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


def load(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load a shipped checkpoint, ``"mnist"`` or ``"mnist-cond"`` -> ``(model, schedule)``.

    The file's SHA-256 is checked against :data:`REGISTRY` before anything is read; the model is
    returned in eval mode on ``device`` (a device, not a dtype), the schedule ready for the samplers.

    Book: Pretrained models.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(REGISTRY)}")
    device = _check_device(device)
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
    device = _check_device(device)
    if path is None:
        path = verified_path("mnist-classifier")
    else:
        path = Path(path)
        if sha256 is not None:
            _verify(path, sha256, str(path), CLASSIFIER.retrain)
        elif not path.is_file():
            raise FileNotFoundError(f"classifier file {path} does not exist")
    meta = _decode(_metadata(path))
    kind = _file_kind(path, meta)
    if kind != "classifier":
        raise ValueError(
            f"{path} holds a network of kind {kind!r}, not an MNIST classifier with "
            f"'classifier_config' metadata: load it with {KINDS[kind].loader}(path)"
        )
    classifier = _build_model(path, kind, meta)
    _load_weights(path, classifier)
    return classifier.to(device).eval()

"""The checkpoint file format: one ``.safetensors`` file per network, with JSON metadata.

A checkpoint is one ``.safetensors`` file (tensors only, no pickle, so loading cannot run code).
Its header carries string metadata: ``"kind"`` (which network: ``"unet"``, ``"mlp"`` or
``"classifier"``, see :data:`KINDS`), the network's config dataclass as JSON under the kind's key
(``"unet_config"``, ``"mlp_config"``, ``"classifier_config"``), ``"schedule"`` for denoisers (JSON
such as ``{"name": "linear", "T": 1000}``, optionally with the schedule function's own
parameters, e.g. ``"beta_end": 0.05``) and free-form entries of the model card (training command,
steps, hardware, wall time, metrics), each JSON-encoded. Files written before ``"kind"`` existed
(the shipped ones among them) are read by their config key: ``"unet_config"`` is a U-Net,
``"classifier_config"`` a classifier.

Every file :func:`save` or :func:`save_classifier` writes loads back: what would not (a schedule
parameter the schedule function refuses, a classifier given to ``save``) is refused before
writing. :mod:`diffusion_tutorial.pretrained` adds the shipped files and their SHA-256 checks.

Book: Pretrained models (model cards).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
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
from diffusion_tutorial.networks.autoencoder import Autoencoder, AutoencoderConfig
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import UNet, UNetConfig

__all__ = ["ModelKind", "KINDS", "save", "save_classifier", "card_file", "load_kind"]


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
    "autoencoder": ModelKind(
        "autoencoder_config",
        AutoencoderConfig,
        Autoencoder,
        "training.autoencoder.load_autoencoder",
    ),
}
"""The kinds of network a checkpoint can hold, by the ``"kind"`` entry of its metadata. Chapters that
ship other networks (flow matching, an autoencoder, few-step students) add their kind here; a file
of a kind this version does not know is refused with the kinds it can build."""

_DENOISERS = ("unet", "mlp")  # kinds with a noise schedule: save / load_file
_RESERVED = {"kind", "schedule"} | {k.config_key for k in KINDS.values()}


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
    # The file must load back: the network its config rebuilds has the same parameters (a
    # subclass with other layers, or a config edited after construction, would not).
    with torch.device("meta"):  # shapes only, no memory and no initialisation cost
        rebuilt = KINDS[kind].model_class(config).state_dict()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in rebuilt.items()}:
        cls = KINDS[kind].model_class.__name__
        raise ValueError(
            f"model's parameters differ from those of {cls}(model.config) (a subclass with other "
            f"layers, or a config changed after construction): the file could not be loaded back"
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
            f"cannot build (it builds: {', '.join(sorted(KINDS))}); a file from a newer version of "
            "the package may need that version"
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
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be {allowed}, got {device!r} ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {str(device)!r}, but this machine has no CUDA GPU: use 'cpu'")
    return device


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


def card_file(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of any checkpoint file (e.g. one from ``--export``), JSON-decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _decode(_metadata(path))


def load_kind(path: str | os.PathLike, kind: str, device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``kind`` a file holds, in eval mode; a file of another kind is refused."""
    path = Path(path)
    meta = card_file(path)
    if (held := _file_kind(path, meta)) != kind:
        raise ValueError(f"{path} holds a {held!r}, not a {kind!r}: use {KINDS[held].loader}(path)")
    model = _build_model(path, kind, meta)
    _load_weights(path, model)
    return model.to(_check_device(device)).eval()

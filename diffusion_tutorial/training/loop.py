"""The training loop: minimise L_simple with AdamW, warm-up, gradient clipping and an EMA of the weights.

Book: Training the U-Net. Ho et al. 2020, Algorithm 1 (L_simple); Ho & Salimans 2022, Algorithm 1
(label dropout to the null class); Loshchilov & Hutter 2019 (AdamW).

Exact resumption: the data order is a pure function of (seed, step) (one fixed permutation per
epoch), and the checkpoint stores the model, EMA, optimiser, step and every random state, so an
interrupted run continued with ``resume=True`` gives the same losses as an uninterrupted one.
Multi-process (``torchrun``): each rank takes a strided share of the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffusion_tutorial import data, pretrained
from diffusion_tutorial.core import schedules
from diffusion_tutorial.core.losses import simple_loss
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import PRESETS, UNet
from diffusion_tutorial.runtime import default_device, tqdm
from diffusion_tutorial.training.checkpoints import (
    LossLog,
    export_weights,
    hardware_name,
    load_checkpoint,
    save_checkpoint,
    save_sample_grid,
)
from diffusion_tutorial.training.ema import EMA

__all__ = ["TrainConfig", "TrainResult", "train", "build_model", "load_dataset"]


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; the CLI (``python -m diffusion_tutorial.train``) fills it."""

    dataset: str = "mnist"  # "mnist" or a toy 2-D set from data.TOY_DATASETS
    model: str | None = None  # a U-Net preset (unet.PRESETS) or "mlp"; None: by dataset
    steps: int = 20_000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 128  # global batch, split over the processes of a torchrun
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear learning-rate warm-up from 0
    lr_decay: str = "none"  # after warm-up: "none" (constant) or "cosine" (to 0 at `steps`)
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999
    schedule: str = "linear"  # "linear" or "cosine"
    T: int = 1000
    conditional: bool = False  # class-conditional with a learned null class
    p_uncond: float = 0.1  # probability of replacing the label by the null class
    guidance_scale: float = 3.0  # for the conditional sample grids
    out_dir: str = "runs/mnist"
    seed: int = 0
    sample_every: int = 2000  # and at the end; 0: no sample grids
    checkpoint_every: int = 1000  # 0: only at the end
    log_every: int = 50
    time_limit_min: float | None = None  # stop cleanly after this many minutes
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 elsewhere), "bf16", "fp16", "fp32"
    device: str | None = None  # None: runtime.default_device()
    toy_size: int = 50_000  # size of the fixed training set for toy data
    resume: bool = False
    init: str | None = None  # start from these weights: a shipped name ("mnist") or a .safetensors
    export: str | None = None  # write EMA weights as safetensors here at the end (U-Nets)
    progress: bool = True
    command: str = ""  # the command line, recorded in the exported metadata


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: steps reached, (step, loss) pairs logged this run, wall time."""

    step: int
    losses: list[tuple[int, float]]
    wall_time_s: float
    stopped_by_time_limit: bool
    out_dir: Path


def load_dataset(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (x (N, ...) float32, labels (N,) int64 or None) for ``cfg.dataset``, all in memory."""
    if cfg.dataset == "mnist":
        return _mnist_train()  # (N, 1, 28, 28), (N,)
    if cfg.conditional:
        raise ValueError("conditional training needs labels: use dataset='mnist'")
    g = torch.Generator().manual_seed(cfg.seed)
    return data.toy_data(cfg.dataset, cfg.toy_size, generator=g), None  # (N, 2)


@functools.lru_cache(maxsize=1)
def _mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    ds = data.mnist(train=True)
    return ds.images, ds.labels.long()  # read once per process: repeated runs start faster


def build_model(cfg: TrainConfig, x: torch.Tensor) -> torch.nn.Module:
    """The network for ``cfg``: a U-Net preset sized to the images, or an MLP for vectors."""
    num_classes = 10 if cfg.conditional else None
    name = cfg.model or ("mnist" if x.ndim == 4 else "mlp")
    if name == "mlp":
        return MLPDenoiser(MLPConfig(dim=x.shape[1], num_classes=num_classes, T=cfg.T))
    if name not in PRESETS:
        raise ValueError(f"model must be 'mlp' or one of {sorted(PRESETS)}, got {name!r}")
    unet_cfg = dataclasses.replace(
        PRESETS[name],
        in_channels=x.shape[1],
        image_size=x.shape[2],
        num_classes=num_classes,
        T=cfg.T,
    )
    return UNet(unet_cfg)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: slice ``step % E`` of epoch ``step // E``'s permutation.

    E = n // batch_size batches per epoch (the last partial batch is dropped); each epoch's
    permutation comes from its own generator seeded by (seed, epoch), so no state is needed.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n} (the data set size), got {batch_size}")
    epoch, k = divmod(step, n // batch_size)
    return _epoch_permutation(n, seed, epoch)[
        k * batch_size : (k + 1) * batch_size
    ]  # (batch_size,)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # (n,)


LR_DECAYS = ("none", "cosine")  # TrainConfig.lr_decay and the CLI's --lr-decay choices


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): a linear warm-up over
    ``cfg.warmup_steps``, then constant, or with ``lr_decay="cosine"`` a half cosine from
    ``cfg.lr`` towards 0 at ``cfg.steps`` (Loshchilov and Hutter 2017, SGDR, without restarts:
    a run started with ``--init`` from its own output restarts the curve). A function of the
    step alone, so a resumed run continues the same curve."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.lr_decay == "none" or step < cfg.warmup_steps:
        return cfg.lr * warm
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)  # in [0, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16/fp16 on CUDA ("auto" picks), bf16 on CPU only when asked; else None."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if device.type == "cpu" and precision == "bf16":
        return torch.bfloat16  # fast on CPUs with bf16 instructions (AVX512-BF16, AMX)
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _loss_fn(
    model: Callable, p_uncond: float, y: torch.Tensor | None, null: int | None, g: torch.Generator
) -> Callable:
    """The model as L_simple sees it: eps(x_t, t), with labels dropped to ``null`` w.p. p_uncond."""
    if y is None or null is None:
        return model
    drop = torch.rand(y.shape, generator=g, device=g.device).to(y.device) < p_uncond  # (B,)
    y_in = torch.where(drop, torch.full_like(y, null), y)  # (B,)
    return lambda x_t, t: model(x_t, t, y_in)


def _load_init(model: torch.nn.Module, cfg: TrainConfig, schedule) -> None:
    """Copy the weights of ``cfg.init`` (a shipped name or a .safetensors path) into ``model``.

    The file must describe the same network and noise schedule as ``cfg``; fine-tuning starts
    from its weights with a fresh optimiser and an EMA that starts at those weights.
    """
    init = cfg.init
    try:
        src, src_schedule = (
            pretrained.load(init) if init in pretrained.REGISTRY else pretrained.load_file(init)
        )
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"init must be one of {sorted(pretrained.REGISTRY)} or a .safetensors file written "
            f"by diffusion_tutorial (pretrained.save or --export); {init!r}: {err}"
        ) from err
    if src_schedule.T != schedule.T or not torch.allclose(
        src_schedule.alpha_bar, schedule.alpha_bar, rtol=1e-6, atol=0.0
    ):
        raise ValueError(
            f"init {init!r} was trained with another noise schedule (T = {src_schedule.T}) than "
            f"--schedule {cfg.schedule} --T {cfg.T}"
        )
    try:  # strict: every parameter name and shape must match
        model.load_state_dict(src.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"init {init!r} is a different network than this run's {type(model).__name__} "
            f"(model={cfg.model!r}, conditional={cfg.conditional}): parameter names or shapes differ"
        ) from err


_PROVENANCE_KEYS = ("steps", "batch_size", "hardware", "wall_time_s", "init")


def _init_provenance(init: str) -> dict[str, Any]:
    """Where ``--init`` weights came from, for the exported model card: the source, its SHA-256
    and how it was trained (its own ``init`` too, so a chain of fine-tunes stays traceable)."""
    path = pretrained.verified_path(init) if init in pretrained.REGISTRY else Path(init)
    meta = pretrained.card_file(path)
    return {
        "from": init,
        "sha256": pretrained.sha256_file(path),
        **{k: meta[k] for k in _PROVENANCE_KEYS if k in meta},
    }


def _try_sample_grid(model: torch.nn.Module, schedule, path: Path, cfg: TrainConfig) -> None:
    """Save a sample grid; a failure is reported but never stops training (grids are a by-product)."""
    try:
        save_sample_grid(model, schedule, path, cfg)
    except Exception as err:  # noqa: BLE001
        print(f"warning: sample grid {path.name} failed: {type(err).__name__}: {err}", flush=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Train a noise predictor with L_simple; checkpoints, logs and sample grids go to ``cfg.out_dir``.

    Runs under ``torchrun`` when a process group is initialised (see ``diffusion_tutorial.train``).
    Book: Training the U-Net. Ho et al. 2020, Algorithm 1.
    """
    start = time.perf_counter()
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world != 0:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the {world} processes"
        )
    if distributed and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device(cfg.device) if cfg.device else default_device()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    if cfg.schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {cfg.schedule!r}")
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be 'none' or 'cosine', got {cfg.lr_decay!r}")
    x_all, y_all = load_dataset(cfg)
    x_all = x_all.to(device)
    y_all = y_all.to(device) if y_all is not None else None
    schedule = getattr(schedules, f"{cfg.schedule}_schedule")(cfg.T)
    with torch.random.fork_rng(devices=[]):  # weight init: seeded, same on every rank
        torch.manual_seed(cfg.seed)
        raw_model = build_model(cfg, x_all).to(device)
    if cfg.init and not (cfg.resume and ckpt_path.exists()):
        _load_init(raw_model, cfg, schedule)
    ema = EMA(raw_model, cfg.ema_decay, warmup=not cfg.init)  # an init is already an average
    null = raw_model.config.num_classes  # the null label (None: unconditional)
    model = raw_model
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = _autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device=device)  # draws t, eps and label dropout
    gen.manual_seed(cfg.seed + 7919 * rank)

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout's global RNG, restored afterwards
        torch.manual_seed(cfg.seed + 7919 * rank)
        step, wall_before = 0, 0.0
        if cfg.resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, raw_model, ema, opt, scaler, gen, device, rank)
            step, wall_before = state["step"], state["wall_time_s"]
        log = LossLog(out / "loss.csv", resume_step=step if cfg.resume else 0, enabled=rank == 0)

        def checkpoint() -> None:
            if rank == 0:
                wall = wall_before + time.perf_counter() - start
                save_checkpoint(ckpt_path, raw_model, ema, opt, scaler, gen, step, wall, cfg)

        n = x_all.shape[0]
        bar = tqdm(
            total=cfg.steps,
            initial=step,
            disable=not cfg.progress or rank != 0,
            desc="train",
            file=sys.stdout,
            mininterval=1.0 if sys.stdout.isatty() else 30.0,
        )
        losses: list[tuple[int, float]] = []
        loss_sum = torch.zeros((), device=device)
        logged_at = step  # the mean of a log row covers the steps since the last row (or resume)
        stopped = False
        model.train()
        while step < cfg.steps:
            idx = batch_indices(step, n, cfg.batch_size, cfg.seed)[rank::world].to(device)
            x_0 = x_all[idx]  # (B/world, ...)
            y = y_all[idx] if y_all is not None else None
            for group in opt.param_groups:  # linear warm-up, then constant or cosine decay
                group["lr"] = learning_rate(cfg, step)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = simple_loss(
                    _loss_fn(model, cfg.p_uncond, y, null, gen), x_0, schedule, generator=gen
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(raw_model)
            step += 1
            loss_sum += loss.detach().float()
            if step % cfg.log_every == 0 or step == cfg.steps:
                count, logged_at = step - logged_at, step
                if distributed:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                mean_loss = loss_sum.item() / count
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} at step {step}")
                losses.append((step, mean_loss))
                elapsed = wall_before + time.perf_counter() - start
                log.write(step, mean_loss, opt.param_groups[0]["lr"], elapsed)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                loss_sum.zero_()
            bar.update(1)
            if cfg.sample_every and step % cfg.sample_every == 0 and rank == 0:
                _try_sample_grid(ema.model, schedule, out / f"samples_{step:07d}.png", cfg)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.time_limit_min is not None:
                over = torch.tensor(float(time.perf_counter() - start > 60 * cfg.time_limit_min))
                if distributed:  # every rank must stop at the same step
                    over = over.to(device)
                    dist.all_reduce(over, op=dist.ReduceOp.MAX)
                if over.item() and step < cfg.steps:
                    stopped = True
                    print(
                        f"time limit of {cfg.time_limit_min} min reached at step {step}", flush=True
                    )
                    break
        bar.close()
        checkpoint()
        wall = wall_before + time.perf_counter() - start
        if rank == 0 and cfg.sample_every and step % cfg.sample_every != 0:  # a final grid
            _try_sample_grid(ema.model, schedule, out / f"samples_{step:07d}.png", cfg)
        if rank == 0 and cfg.export:
            meta = dict(
                training_command=cfg.command,
                steps=step,
                batch_size=cfg.batch_size,
                hardware=hardware_name(device, world),
                wall_time_s=round(wall, 1),
                parameters=sum(p.numel() for p in raw_model.parameters()),
                train_config=dataclasses.asdict(cfg),
                final_loss=losses[-1][1] if losses else None,
            )
            if cfg.init:  # steps, hardware and wall time above count this run only
                meta["init"] = _init_provenance(cfg.init)
            export_weights(cfg.export, ema.model, cfg, meta)
    return TrainResult(step, losses, wall, stopped, out)

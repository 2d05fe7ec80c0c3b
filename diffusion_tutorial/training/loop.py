"""The training loop: minimise L_simple with AdamW, warm-up, gradient clipping and an EMA of the weights.

Book: Training the U-Net (Part 2). Ho et al. 2020, Algorithm 1 (L_simple); Ho & Salimans 2022,
Algorithm 1 (label dropout to the null class); Loshchilov & Hutter 2019 (AdamW).

Exact resumption: the data order is a pure function of (seed, step) (one fixed permutation per
epoch), and the checkpoint stores the model, EMA, optimiser, step, every random state and the
loss sum since the last row of loss.csv, so an interrupted run continued with ``resume=True``
takes the same steps and writes the same loss rows as an uninterrupted one.
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

import torch
import torch.distributed as dist

from diffusion_tutorial.core.losses import simple_loss
from diffusion_tutorial.core.schedules import SCHEDULES
from diffusion_tutorial.files import check_writable
from diffusion_tutorial.runtime import default_device, tqdm
from diffusion_tutorial.training.build import (
    autocast_dtype,
    build_model,
    init_provenance,
    load_dataset,
    load_init,
)
from diffusion_tutorial.training.checkpoints import (
    CHECKPOINT,
    LOSS_LOG,
    LossLog,
    check_run_folder,
    clear_run_folder,
    restore_checkpoint,
    save_checkpoint,
)
from diffusion_tutorial.training.config import ConfigError, TrainConfig, learning_rate
from diffusion_tutorial.training.ema import EMA
from diffusion_tutorial.training.outputs import export_weights, hardware_name, save_sample_grid

__all__ = ["TrainResult", "train", "batch_indices"]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: steps reached, (step, loss) pairs logged this run, wall time."""

    step: int
    losses: list[tuple[int, float]]
    wall_time_s: float
    stopped_by_time_limit: bool
    out_dir: Path


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: slice ``step % E`` of epoch ``step // E``'s permutation.

    E = n // batch_size batches per epoch (the last partial batch is dropped); each epoch's
    permutation comes from its own generator seeded by (seed, epoch), so no state is needed.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n} (the data set size), got {batch_size}")
    epoch, k = divmod(step, n // batch_size)
    return _epoch_permutation(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]  # (B,)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # (n,)


def _loss_fn(
    model: Callable, p_uncond: float, y: torch.Tensor | None, null: int | None, g: torch.Generator
) -> Callable:
    """The model as L_simple sees it: eps(x_t, t), with labels dropped to ``null`` w.p. p_uncond."""
    if y is None or null is None:
        return model
    drop = torch.rand(y.shape, generator=g, device=g.device).to(y.device) < p_uncond  # (B,)
    y_in = torch.where(drop, torch.full_like(y, null), y)  # (B,)
    return lambda x_t, t: model(x_t, t, y_in)


def _try_sample_grid(model: torch.nn.Module, schedule, path: Path, cfg: TrainConfig) -> None:
    """Save a sample grid; a failure is reported but never stops training (grids are a by-product)."""
    try:
        save_sample_grid(model, schedule, path, cfg)
    except Exception as err:  # noqa: BLE001
        print(f"warning: sample grid {path.name} failed: {type(err).__name__}: {err}", flush=True)


def _mean_over_ranks(x: torch.Tensor, distributed: bool, world: int) -> torch.Tensor:
    """A copy of ``x`` averaged over the processes (a collective: every rank must call it)."""
    x = x.clone()
    if distributed:
        dist.all_reduce(x)
        x /= world
    return x


def _check_finite(loss_sum: torch.Tensor, model: torch.nn.Module, step: int, what: str) -> None:
    """Raise ``FloatingPointError`` if the loss since the last row or a weight is NaN or inf."""
    weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if not (math.isfinite(float(loss_sum)) and weights_ok):
        bad = "the weights" if math.isfinite(float(loss_sum)) else "the loss"
        raise FloatingPointError(
            f"{bad} became NaN or inf by step {step}; stopped before writing the {what} (the last "
            "checkpoint is kept). Lower --lr, or keep --grad-clip, and start over or resume"
        )


def train(cfg: TrainConfig) -> TrainResult:
    """Train a noise predictor with L_simple; checkpoints, logs and sample grids go to ``cfg.out_dir``.

    Everything that can refuse the run (settings, data, network, ``--init``, ``--export``, the
    state of the run folder) is checked before the folder is changed. Runs under ``torchrun``
    when a process group is initialised (see ``diffusion_tutorial.train``).
    Book: Training the U-Net (Part 2). Ho et al. 2020, Algorithm 1.
    """
    start = time.perf_counter()
    cfg.validate()
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world != 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} must divide into the {world} processes")
    if distributed and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device(cfg.device) if cfg.device else default_device()

    # 1. Everything that can refuse the run, before the output folder changes.
    x_all, y_all = load_dataset(cfg)
    if cfg.batch_size > x_all.shape[0]:
        raise ConfigError(f"--batch-size must be in 1..{x_all.shape[0]}, got {cfg.batch_size}")
    schedule = SCHEDULES[cfg.schedule](cfg.T)
    with torch.random.fork_rng(devices=[]):  # weight init: seeded, same on every rank
        torch.manual_seed(cfg.seed)
        raw_model = build_model(cfg, x_all).to(device)
    out = Path(cfg.out_dir)
    state = check_run_folder(out, cfg, raw_model, device)  # the checkpoint when resuming
    if cfg.init and state is None:
        load_init(raw_model, cfg, schedule)
    try:
        check_writable(out / LOSS_LOG, "--out")
        if cfg.export:
            check_writable(cfg.export, "--export")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if distributed:  # no rank may change the folder while another still checks it
        dist.barrier()

    # 2. The training objects, restored from the checkpoint when resuming.
    if rank == 0 and cfg.overwrite:
        clear_run_folder(out)
    x_all = x_all.to(device)
    y_all = y_all.to(device) if y_all is not None else None
    ema = EMA(raw_model, cfg.ema_decay, warmup=not cfg.init)  # an init is already an average
    null = raw_model.config.num_classes  # the null label (None: unconditional)
    model = raw_model
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)
    opt = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device=device)  # draws t, eps and label dropout
    gen.manual_seed(cfg.seed + 7919 * rank)
    # The loss summed since the last loss.csv row on the log_every grid (the row's window).
    loss_sum, window_start = torch.zeros((), device=device), 0

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout's global RNG, restored afterwards
        torch.manual_seed(cfg.seed + 7919 * rank)
        step, wall_before = 0, 0.0
        if state is not None:
            restore_checkpoint(state, raw_model, ema, opt, scaler, gen, device, rank)
            step, wall_before = state["step"], state["wall_time_s"]
            window = state.get("loss_window", {"sum": 0.0, "start": step})  # older checkpoints
            loss_sum.fill_(window["sum"])
            window_start = window["start"]
        log = LossLog(out / LOSS_LOG, window_start if state else None, enabled=rank == 0)

        def checkpoint() -> None:  # every rank calls it (collectives), rank 0 writes
            window = _mean_over_ranks(loss_sum, distributed, world)
            _check_finite(window, raw_model, step, "checkpoint")
            if rank == 0:
                wall = wall_before + time.perf_counter() - start
                ckpt = {"sum": float(window), "start": window_start}
                save_checkpoint(
                    out / CHECKPOINT, raw_model, ema, opt, scaler, gen, step, wall, cfg, ckpt
                )

        def log_row(on_grid: bool) -> None:  # a row for the steps since window_start
            nonlocal window_start
            mean_loss = float(_mean_over_ranks(loss_sum, distributed, world)) / (
                step - window_start
            )
            _check_finite(torch.tensor(mean_loss), raw_model, step, "loss row")
            losses.append((step, mean_loss))
            elapsed = wall_before + time.perf_counter() - start
            log.write(step, mean_loss, opt.param_groups[0]["lr"], elapsed)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if on_grid:  # an end-of-run row off the grid leaves the window open for a resume
                loss_sum.zero_()
                window_start = step

        bar = tqdm(
            total=cfg.steps,
            initial=step,
            disable=not cfg.progress or rank != 0,
            desc="train",
            file=sys.stdout,
            mininterval=1.0 if sys.stdout.isatty() else 30.0,
        )
        losses: list[tuple[int, float]] = []
        stopped = False
        model.train()
        while step < cfg.steps:
            idx = batch_indices(step, x_all.shape[0], cfg.batch_size, cfg.seed)[rank::world]
            x_0 = x_all[idx.to(device)]  # (B/world, ...)
            y = y_all[idx.to(device)] if y_all is not None else None
            for group in opt.param_groups:  # linear warm-up, then constant or cosine decay
                group["lr"] = learning_rate(cfg, step)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = simple_loss(
                    _loss_fn(model, cfg.p_uncond, y, null, gen), x_0, schedule, generator=gen
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(raw_model)
            step += 1
            loss_sum += loss.detach().float()
            if step % cfg.log_every == 0:
                log_row(on_grid=True)
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
        if step > window_start:  # the steps since the last row on the grid
            log_row(on_grid=False)
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
                meta["init"] = init_provenance(cfg.init)
            export_weights(cfg.export, ema.model, cfg, meta)
    return TrainResult(step, losses, wall, stopped, out)

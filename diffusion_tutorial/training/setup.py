"""Setup of a training run, apart from the loop: the process, the checks, the training objects.

:func:`prepare_run` checks everything that can refuse a run (settings, data, network, ``--init``,
``--export``, the run folder) and builds the :class:`Run` without changing the run folder;
:func:`open_run_folder` is the first change to the folder: it starts the run there, or restores
the checkpoint of the run it continues.

Book: Example: DDPM (Part 2). Loshchilov & Hutter 2019 (AdamW); Micikevicius et al. 2018
(mixed precision with loss scaling).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffusion_tutorial.core.schedules import SCHEDULES, NoiseSchedule
from diffusion_tutorial.files import check_writable
from diffusion_tutorial.runtime import default_device, tqdm
from diffusion_tutorial.training.build import autocast_dtype, build_model, load_dataset, load_init
from diffusion_tutorial.training.checkpoints import (
    LOSS_LOG,
    LossLog,
    claim_run_folder,
    clear_run_folder,
    restore_checkpoint,
)
from diffusion_tutorial.training.config import ConfigError, TrainConfig
from diffusion_tutorial.training.ema import EMA
from diffusion_tutorial.training.lock import RunLock

__all__ = ["Process", "Run", "this_process", "prepare_run", "open_run_folder"]


@dataclasses.dataclass(frozen=True)
class Process:
    """This process among the ``world`` processes of a run (``torchrun``), and its device."""

    rank: int
    world: int
    device: torch.device
    distributed: bool

    @property
    def cuda_devices(self) -> list[torch.device]:
        """The devices whose random state :func:`torch.random.fork_rng` must save and restore."""
        return [self.device] if self.device.type == "cuda" else []


@dataclasses.dataclass
class Run:
    """A run in progress: the training objects and the counters one step changes.

    ``net`` is the network (its weights, its EMA); ``model`` is what a step calls, ``net`` or its
    DistributedDataParallel wrapper. ``loss_sum`` is the loss summed since ``window_start``, the
    step of the last loss.csv row on the ``log_every`` grid (the next row's window).
    """

    cfg: TrainConfig
    proc: Process
    schedule: NoiseSchedule
    x_all: torch.Tensor  # (N, ...) on the device
    y_all: torch.Tensor | None  # (N,) labels of a class-conditional model, else None
    net: nn.Module
    model: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator  # draws t, eps and label dropout
    autocast_dtype: torch.dtype | None
    started: float  # time.perf_counter() when train() began
    step: int = 0
    wall_before: float = 0.0  # the wall time of the run's earlier sessions (resume)
    loss_sum: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(()))
    window_start: int = 0
    losses: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    stopped: bool = False  # by the time limit
    log: LossLog | None = None
    bar: Any = None  # the progress bar

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    def wall_time(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return self.wall_before + time.perf_counter() - self.started


def this_process(cfg: TrainConfig) -> Process:
    """This process's rank, the number of processes and the device (one GPU per rank)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world != 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} must divide into the {world} processes")
    if distributed and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device(cfg.device) if cfg.device else default_device()
    return Process(rank, world, device, distributed)


def prepare_run(
    cfg: TrainConfig, proc: Process, started: float, lock: RunLock
) -> tuple[Run, dict[str, Any] | None]:
    """Check everything that can refuse the run, then build the training objects.

    Returns the :class:`Run` at step 0 and the checkpoint to resume from (None for a fresh
    start). Changes nothing in the run folder but its lock file: ``lock`` is taken just before
    the folder's state is checked (a live run there refuses this one), and the caller's
    ``with lock`` releases it. A :class:`ConfigError` here leaves the run as it was.
    """
    # 1. Everything that can refuse the run.
    x_all, y_all = load_dataset(cfg)
    if cfg.batch_size > x_all.shape[0]:
        raise ConfigError(f"--batch-size must be in 1..{x_all.shape[0]}, got {cfg.batch_size}")
    schedule = SCHEDULES[cfg.schedule](cfg.T)
    with torch.random.fork_rng(devices=[]):  # weight init: seeded, same on every rank
        torch.manual_seed(cfg.seed)
        net = build_model(cfg, x_all).to(proc.device)
    init_prediction = None  # what the --init weights predict ("eps" or "velocity")
    if cfg.init and not cfg.resume:  # a resumed run starts from its checkpoint instead
        init_prediction = load_init(net, cfg, schedule)
    checkpoint = claim_run_folder(lock, cfg, net, proc.device, y_all)  # labels, --export, lock
    try:
        check_writable(Path(cfg.out_dir) / LOSS_LOG, "--out")
        if cfg.export:
            check_writable(cfg.export, "--export")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if proc.distributed:  # no rank may change the folder while another still checks it
        dist.barrier()
    # 2. The training objects (the checkpoint, if any, is restored by open_run_folder).
    model = net
    if proc.distributed:
        ids = [proc.device.index] if proc.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    amp_dtype = autocast_dtype(cfg.precision, proc.device)
    run = Run(
        cfg=cfg,
        proc=proc,
        schedule=schedule,
        x_all=x_all.to(proc.device),
        y_all=y_all.to(proc.device) if net.config.num_classes is not None else None,
        net=net,
        model=model,
        # An init that predicts what this run learns is already an average: full decay at once.
        # One of another objective (mnist's eps weights for --objective flow) is a start to
        # forget, like a random one: the EMA warms up.
        ema=EMA(net, cfg.ema_decay, warmup=init_prediction != net.config.prediction),
        opt=torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        gen=torch.Generator(device=proc.device).manual_seed(cfg.seed + 7919 * proc.rank),
        autocast_dtype=amp_dtype,
        started=started,
        loss_sum=torch.zeros((), device=proc.device),
    )
    return run, checkpoint


def open_run_folder(run: Run, checkpoint: dict[str, Any] | None) -> None:
    """Start the run in its folder (deleting an old run with ``--overwrite``), or continue the
    one in ``checkpoint`` (``--resume``): weights, EMA, optimiser, random states, step and loss
    window; then open loss.csv and the progress bar. The first change to the run folder.

    Call it inside the global RNG's fork: resuming restores the global CPU RNG (dropout).
    """
    cfg, proc = run.cfg, run.proc
    if proc.rank == 0 and cfg.overwrite:
        clear_run_folder(run.out)
    if checkpoint is not None:
        restore_checkpoint(
            checkpoint, run.net, run.ema, run.opt, run.scaler, run.gen, proc.device, proc.rank
        )
        run.step, run.wall_before = checkpoint["step"], checkpoint["wall_time_s"]
        run.loss_sum.fill_(checkpoint["loss_window"]["sum"])
        run.window_start = checkpoint["loss_window"]["start"]
    keep_rows_until = run.window_start if checkpoint is not None else None
    run.log = LossLog(run.out / LOSS_LOG, keep_rows_until, enabled=proc.rank == 0)
    run.bar = tqdm(
        total=cfg.steps,
        initial=run.step,
        disable=not cfg.progress or proc.rank != 0,
        desc="train",
        file=sys.stdout,
        mininterval=1.0 if sys.stdout.isatty() else 30.0,
    )

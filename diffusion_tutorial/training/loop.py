"""The training loop: minimise L_simple with AdamW, warm-up, gradient clipping and an EMA of the weights.

:func:`train` reads top to bottom: :func:`~diffusion_tutorial.training.setup.prepare_run` checks
everything that can refuse the run and builds the training objects,
:func:`~diffusion_tutorial.training.setup.open_run_folder` starts or resumes the run in its folder,
then each step draws a batch and takes :func:`~diffusion_tutorial.training.step.train_step`.

Exact resumption: the data order is a pure function of (seed, step) (one fixed permutation per
epoch), and the checkpoint stores the model, EMA, optimiser, step, every random state and the
loss sum since the last row of loss.csv, so an interrupted run continued with ``resume=True``
takes the same steps and writes the same loss rows as an uninterrupted one.
Multi-process (``torchrun``): each rank takes a strided share of the same global batch.

Book: Example: DDPM (Part 2). Ho et al. 2020, Algorithm 1 (L_simple); Ho & Salimans 2022,
Algorithm 1 (label dropout to the null class); Loshchilov & Hutter 2019 (AdamW).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from diffusion_tutorial.core.flow_matching import flow_matching_loss
from diffusion_tutorial.training.build import latent_card
from diffusion_tutorial.training.checkpoints import CHECKPOINT, save_checkpoint
from diffusion_tutorial.training.config import TrainConfig
from diffusion_tutorial.training.lock import RunLock
from diffusion_tutorial.training.outputs import (
    export_weights,
    hardware_name,
    run_card,
    save_sample_grid,
)
from diffusion_tutorial.training.setup import (
    Process,
    Run,
    open_run_folder,
    prepare_run,
    this_process,
)
from diffusion_tutorial.training.step import drop_labels, learning_rate, train_step

__all__ = ["TrainResult", "train", "batch_indices"]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: steps reached, (step, loss) pairs logged this run, wall time."""

    step: int
    losses: list[tuple[int, float]]
    wall_time_s: float
    stopped_by_time_limit: bool
    out_dir: Path


def train(cfg: TrainConfig) -> TrainResult:
    """Train a noise predictor with L_simple; checkpoints, logs and sample grids go to ``cfg.out_dir``.

    Everything that can refuse the run (settings, data, network, ``--init``, ``--export``, the
    state of the run folder) is checked before the folder is changed. Runs under ``torchrun``
    when a process group is initialised (see ``diffusion_tutorial.train``).
    Book: Example: DDPM (Part 2). Ho et al. 2020, Algorithm 1.
    """
    started = time.perf_counter()
    proc = this_process(cfg.validate())
    lock = RunLock(cfg.out_dir, enabled=proc.rank == 0)  # one run owns a folder (rank 0 locks)
    with lock, torch.random.fork_rng(devices=proc.cuda_devices):  # dropout's RNG, restored after
        run, checkpoint = prepare_run(cfg, proc, started, lock)  # only the lock file changes
        torch.manual_seed(cfg.seed + 7919 * proc.rank)
        open_run_folder(run, checkpoint)  # a fresh start, or the state of the checkpoint
        run.model.train()
        while run.step < cfg.steps:
            x_0, y = next_batch(run)  # Algorithm 1, step 1: x_0 ~ q(x_0)
            for group in run.opt.param_groups:  # linear warm-up, then constant or cosine decay
                group["lr"] = learning_rate(
                    run.step,
                    lr=cfg.lr,
                    steps=cfg.steps,
                    warmup_steps=cfg.warmup_steps,
                    cosine=cfg.lr_decay == "cosine",
                )
            loss = train_step(  # Algorithm 1, steps 2-5
                run.model,
                x_0,
                run.schedule,
                run.opt,
                y=y,
                generator=run.gen,
                grad_clip=cfg.grad_clip,
                scaler=run.scaler,
                autocast_dtype=run.autocast_dtype,
                loss_fn=flow_matching_loss if cfg.objective == "flow" else None,  # None: L_simple
            )
            run.ema.update(run.net)
            run.step += 1
            run.loss_sum += loss.float()
            run.bar.update(1)
            if run.step % cfg.log_every == 0:
                log_row(run, on_grid=True)
            if cfg.sample_every and run.step % cfg.sample_every == 0:
                sample_grid(run)
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save(run)
            if run.step < cfg.steps and time_is_up(run):
                break
        wall_time_s = finish(run)
    return TrainResult(run.step, run.losses, wall_time_s, run.stopped, run.out)


# --- The steps ---------------------------------------------------------------------------------


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


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's share of the step's global batch x_0 (B/world, ...), and for a conditional
    model its labels (B/world,), each dropped to the null class with probability ``p_uncond``."""
    cfg, proc = run.cfg, run.proc
    idx = batch_indices(run.step, run.x_all.shape[0], cfg.batch_size, cfg.seed)
    idx = idx[proc.rank :: proc.world].to(proc.device)  # (B/world,)
    if run.y_all is None:
        return run.x_all[idx], None
    null = run.net.config.num_classes  # the label of the null class
    return run.x_all[idx], drop_labels(run.y_all[idx], cfg.p_uncond, null, run.gen)


# --- Outputs along the way: loss rows, sample grids, checkpoints, the end ----------------------


def log_row(run: Run, on_grid: bool) -> None:
    """Append the mean loss of the steps since ``run.window_start`` to loss.csv (every rank calls
    it: the mean is over all processes). A row ``on_grid`` (a multiple of ``log_every``) closes
    the window; the end-of-run row off the grid leaves it open for a resume."""
    mean_loss = float(_mean_over_ranks(run.loss_sum, run.proc)) / (run.step - run.window_start)
    _check_finite(torch.tensor(mean_loss), run.net, run.step, "loss row")
    run.losses.append((run.step, mean_loss))
    run.log.write(run.step, mean_loss, run.opt.param_groups[0]["lr"], run.wall_time())
    run.bar.set_postfix(loss=f"{mean_loss:.4f}")
    if on_grid:
        run.loss_sum.zero_()
        run.window_start = run.step


def save(run: Run) -> None:
    """Write checkpoint.pt atomically (every rank calls it: a collective; rank 0 writes)."""
    window = _mean_over_ranks(run.loss_sum, run.proc)
    _check_finite(window, run.net, run.step, "checkpoint")
    if run.proc.rank == 0:
        args = (run.net, run.ema, run.opt, run.scaler, run.gen, run.step, run.wall_time())
        loss_window = {"sum": float(window), "start": run.window_start}
        save_checkpoint(run.out / CHECKPOINT, *args, run.cfg, loss_window)


def sample_grid(run: Run) -> None:
    """Save a grid of EMA samples (rank 0); a failure is reported but never stops training."""
    if run.proc.rank != 0:
        return
    path = run.out / f"samples_{run.step:07d}.png"
    try:
        save_sample_grid(run.ema.model, run.schedule, path, run.cfg)
    except Exception as err:  # noqa: BLE001 - grids are a by-product
        print(f"warning: sample grid {path.name} failed: {type(err).__name__}: {err}", flush=True)


def time_is_up(run: Run) -> bool:
    """True once this session has run ``time_limit_min`` minutes (on every rank at the same step:
    a collective); sets ``run.stopped`` and says so."""
    if run.cfg.time_limit_min is None:
        return False
    over = torch.tensor(float(time.perf_counter() - run.started > 60 * run.cfg.time_limit_min))
    if run.proc.distributed:  # every rank must stop at the same step
        over = over.to(run.proc.device)
        dist.all_reduce(over, op=dist.ReduceOp.MAX)
    if over.item():
        run.stopped = True
        print(f"time limit of {run.cfg.time_limit_min} min reached at step {run.step}", flush=True)
    return run.stopped


def finish(run: Run) -> float:
    """End the run: the row of the steps since the last one, a checkpoint, a final sample grid
    and the exported EMA weights. Returns the run's wall time, as the model card records it."""
    cfg, step = run.cfg, run.step
    run.bar.close()
    if step > run.window_start:
        log_row(run, on_grid=False)
    save(run)
    wall_time_s = run.wall_time()
    if cfg.sample_every and step % cfg.sample_every != 0:
        sample_grid(run)
    if run.proc.rank == 0 and cfg.export:
        meta = run_card(
            cfg.command,
            run.net,
            steps=step,
            batch_size=cfg.batch_size,
            hardware=hardware_name(run.proc.device, run.proc.world),
            wall_time_s=wall_time_s,
            final_loss=run.losses[-1][1] if run.losses else None,
            init=cfg.init,
            train_config=dataclasses.asdict(cfg),
            **latent_card(cfg),  # mnist-latent: the autoencoder's SHA-256, the factor
        )
        export_weights(cfg.export, run.ema.model, cfg, meta)
    return wall_time_s


def _mean_over_ranks(x: torch.Tensor, proc: Process) -> torch.Tensor:
    """A copy of ``x`` averaged over the processes (a collective: every rank must call it)."""
    x = x.clone()
    if proc.distributed:
        dist.all_reduce(x)
        x /= proc.world
    return x


def _check_finite(loss_sum: torch.Tensor, model: nn.Module, step: int, what: str) -> None:
    """Raise ``FloatingPointError`` if the loss since the last row or a weight is NaN or inf."""
    weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if not (math.isfinite(float(loss_sum)) and weights_ok):
        bad = "the weights" if math.isfinite(float(loss_sum)) else "the loss"
        raise FloatingPointError(
            f"{bad} became NaN or inf by step {step}; stopped before writing the {what} (the last "
            "checkpoint is kept). Lower --lr, or keep --grad-clip, and start over or resume"
        )

"""The run folder: atomic checkpoints, the loss CSV, and the rules for starting, resuming, overwriting.

A folder that holds a run (``checkpoint.pt`` or ``loss.csv``) is never wiped by accident: a new
run there needs ``overwrite``, a continued one ``resume``, and a resumed run must keep every
setting that shapes the optimisation. One run at a time uses a folder (:mod:`.lock`), and
``overwrite`` deletes only the files a run writes (:func:`is_run_file`).

Book: Example: DDPM (Part 2; the training command, checkpoints and resuming).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion_tutorial.checks import check_labels
from diffusion_tutorial.files import atomic_write, temp_files
from diffusion_tutorial.training.config import ConfigError, TrainConfig, resume_mismatches
from diffusion_tutorial.training.ema import EMA
from diffusion_tutorial.training.lock import LOCK, RunLock

__all__ = [
    "CHECKPOINT",
    "LOSS_LOG",
    "LossLog",
    "save_checkpoint",
    "read_checkpoint",
    "restore_checkpoint",
    "check_run_folder",
    "check_export_path",
    "claim_run_folder",
    "clear_run_folder",
    "is_run_file",
    "read_loss_rows",
]

CHECKPOINT, LOSS_LOG = "checkpoint.pt", "loss.csv"
_KEYS = ("step", "wall_time_s", "model", "ema", "optimizer", "scaler", "generator", "cpu_rng")
_KEYS += ("cuda_rng", "train_config", "model_config", "loss_window")
_GRID = re.compile(r"samples_\d{7,}\.png")  # the sample grids a run writes: samples_<step>.png
_DAMAGED = "Restore a copy, or pass --overwrite to start the run over"


def is_run_file(name: str) -> bool:
    """Whether a run writes a file called ``name`` in its folder: checkpoint, loss log, lock,
    sample grids and the temp files of atomic writes."""
    own = (CHECKPOINT, LOSS_LOG, LOCK)
    return (
        name in own
        or _GRID.fullmatch(name) is not None
        or any(name.startswith(f".{n}.tmp") for n in own)
    )


def _cannot_read(path: Path, err: OSError) -> ConfigError:
    """The error for a file the system refuses to read (permissions, I/O): not damage."""
    return ConfigError(
        f"cannot read {path} ({err.strerror or err}): the file is not damaged as far as "
        "diffusion_tutorial can tell; fix what the system reports (permissions, the disk) and "
        "run again. --overwrite would delete the run"
    )


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    step: int,
    wall_time_s: float,
    cfg: TrainConfig,
    loss_window: dict[str, Any],
) -> None:
    """Write everything needed to continue exactly, atomically: weights, EMA, optimiser, step,
    all RNG states and ``loss_window`` (the loss sum since the last loss.csv row on the grid)."""
    device = gen.device
    state = {
        "step": step,
        "wall_time_s": wall_time_s,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "generator": gen.get_state(),  # draws t, eps and label dropout
        "cpu_rng": torch.get_rng_state(),  # dropout on CPU
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "train_config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model.config),
        "loss_window": loss_window,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, or raise a :class:`ConfigError` that
    says what is wrong with the file (never torch's advice to unpickle untrusted code)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as err:  # permissions, a failing disk: the file may well be good
        raise _cannot_read(path, err) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ConfigError(
            f"{path} is not a readable training checkpoint ({type(err).__name__}): it is damaged "
            f"or was not written by diffusion_tutorial. {_DAMAGED}"
        ) from None
    missing = [k for k in _KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(
            f"{path} is not a diffusion_tutorial training checkpoint (missing {missing}). "
            f"{_DAMAGED}"
        )
    return state


def restore_checkpoint(
    state: dict[str, Any],
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gen: torch.Generator,
    device: torch.device,
    rank: int = 0,
) -> None:
    """Restore what :func:`save_checkpoint` wrote into the training objects (in place).

    RNG states are per process; a multi-process run restores rank 0's global RNG on every rank
    and re-derives each rank's own generator, so DDP resumption is reproducible but not bitwise
    equal to an uninterrupted DDP run.
    """
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if rank == 0:
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["cpu_rng"].cpu())
        if state["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    else:
        gen.manual_seed(gen.initial_seed() + state["step"])


def check_run_folder(
    out: Path, cfg: TrainConfig, model: nn.Module, device: torch.device
) -> dict[str, Any] | None:
    """Decide, without changing anything, how this run may use ``out``: the checkpoint state to
    resume from, None for a fresh start, or a :class:`ConfigError` that says what to do.

    1. ``resume``: ``out/checkpoint.pt`` must exist, load, hold the same network, the same
       settings marked ``same_on_resume`` and a step <= ``cfg.steps``.
    2. Otherwise a folder that holds a run (checkpoint or loss log) needs ``overwrite``.
    """
    ckpt = out / CHECKPOINT
    if cfg.resume:
        if not ckpt.is_file():
            what = (
                "--overwrite to start over" if (out / LOSS_LOG).exists() else "no --resume to start"
            )
            raise ConfigError(f"--resume: there is no {ckpt} to resume; pass {what}")
        state = read_checkpoint(ckpt, device)
        differ = resume_mismatches(state["train_config"], cfg)
        if differ:
            raise ConfigError(
                f"--resume: {ckpt} was trained with other settings; a resumed run must keep "
                f"them: {'; '.join(differ)}"
            )
        if state["model_config"] != dataclasses.asdict(model.config):
            raise ConfigError(
                f"--resume: {ckpt} holds a network with config {state['model_config']}, but this "
                f"run builds {dataclasses.asdict(model.config)}"
            )
        if state["step"] > cfg.steps:
            raise ConfigError(
                f"--steps must be >= the checkpoint's step {state['step']} to resume, got {cfg.steps}"
            )
        if (out / LOSS_LOG).exists():
            read_loss_rows(out / LOSS_LOG)  # a damaged log fails here, not after the first step
        return state
    held = [name for name in (CHECKPOINT, LOSS_LOG) if (out / name).exists()]
    if held and not cfg.overwrite:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(held)}): pass --resume to continue it "
            "or --overwrite to start over"
        )
    return None


def check_export_path(export: str | os.PathLike, out: Path) -> None:
    """Refuse an ``--export`` path that names a file the run writes in its folder ``out``
    (it would make the checkpoint unreadable or replace the loss log); other names there are
    fine. Symlinks and ``..`` are resolved first."""
    path = Path(export).resolve()
    if is_run_file(path.name) and path.parent == out.resolve():
        raise ConfigError(
            f"--export {export} would replace the run's own {path.name} in --out {out}; export "
            f"to another name, e.g. {out / 'ema.safetensors'}"
        )


def claim_run_folder(
    lock: RunLock,
    cfg: TrainConfig,
    model: nn.Module,
    device: torch.device,
    labels: torch.Tensor | None,
) -> dict[str, Any] | None:
    """The run folder's checks and lock, in the order that keeps a folder safe; returns what
    :func:`check_run_folder` returns.

    1. The data's labels and the ``--export`` path (nothing in the folder changes if refused).
    2. The folder's lock (:class:`RunLock`): a live run there refuses this one, naming its pid,
       whatever ``--resume`` or ``--overwrite`` say.
    3. :func:`check_run_folder`, under the lock, so no other run can change what it saw.
    """
    if labels is not None:  # a label >= 10 fails at step 1, or (10) trains the null class
        classes = getattr(model.config, "num_classes", None) or 10  # MNIST's 10 digits
        try:
            check_labels("the training labels", labels, None, classes - 1)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"--dataset {cfg.dataset}: {err} ({classes} is the null class of classifier-free "
                "guidance); the data files are damaged: replace them (MNIST: under "
                "$DIFFUSION_TUTORIAL_DATA)"
            ) from None
    out = Path(cfg.out_dir)
    if cfg.export:
        check_export_path(cfg.export, out)
    lock.acquire()
    return check_run_folder(out, cfg, model, device)


def clear_run_folder(out: Path) -> None:
    """Delete what a previous run wrote in ``out``: checkpoint, loss log, the sample grids named
    ``samples_<step>.png`` and temp files; never other files, never the lock file."""
    ckpt, log = out / CHECKPOINT, out / LOSS_LOG
    grids = [p for p in out.glob("samples_*.png") if _GRID.fullmatch(p.name)]
    for path in [ckpt, log, *grids, *temp_files(ckpt), *temp_files(log)]:
        path.unlink(missing_ok=True)


def read_loss_rows(path: Path) -> list[list[str]]:
    """The rows of a loss log below its header, or a :class:`ConfigError` that says the file is
    damaged (not text, not CSV, another header) or cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise _cannot_read(path, err) from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(
            f"{path} is not a readable loss log ({type(err).__name__}): it is damaged or was not "
            f"written by diffusion_tutorial. {_DAMAGED}"
        ) from None
    if rows[:1] != [LossLog.header]:
        raise ConfigError(
            f"{path} is not a readable loss log (its first line is not the header "
            f"{','.join(LossLog.header)}): it is damaged or was not written by "
            f"diffusion_tutorial. {_DAMAGED}"
        )
    return rows[1:]


def _row_step(row: list[str]) -> float:
    """The step of a loss.csv row; infinity for a row cut short by a killed process."""
    return int(row[0]) if len(row) == 4 and row[0].isdigit() else float("inf")


class LossLog:
    """Append ``step,loss,lr,wall_time_s`` rows to a CSV; each row's loss is the mean over the
    steps since the previous row.

    Rows fall on multiples of ``log_every``, plus one at the end of a run. A resumed run keeps
    the rows up to ``keep_until`` (the checkpoint's last row on the grid) and drops later ones,
    so with the same ``log_every`` its loss and lr columns equal an uninterrupted run's.
    """

    header = ["step", "loss", "lr", "wall_time_s"]

    def __init__(self, path: Path, keep_until: int | None = None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        rows: list[list[str]] = []
        if keep_until is not None and path.exists():
            rows = [r for r in read_loss_rows(path) if _row_step(r) <= keep_until]
        text = io.StringIO()
        csv.writer(text).writerows([self.header, *rows])
        atomic_write(
            path, lambda tmp: tmp.write_bytes(text.getvalue().encode())
        )  # never half a log

    def write(self, step: int, loss: float, lr: float, wall_time_s: float) -> None:
        """Append one row and close the file (so a crash keeps everything written so far)."""
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{wall_time_s:.2f}"])

"""Command line: train a diffusion model, e.g. ``python -m diffusion_tutorial.train --dataset mnist``.

The same command runs on several GPUs (or CPU processes) with PyTorch's launcher:
``torchrun --nproc_per_node=N -m diffusion_tutorial.train ...`` (NCCL on CUDA, gloo on CPU).
Every option is generated from a field of :class:`~diffusion_tutorial.training.config.TrainConfig`
(name, type, default, help, choices), so the dataclass is the only place that defines one.

Book: Example: DDPM (Part 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from diffusion_tutorial.training.config import ConfigError, TrainConfig, flag
from diffusion_tutorial.training.loop import train

__all__ = ["main", "parse_args", "build_parser"]

_DESCRIPTION = (
    "Train a DDPM noise predictor (L_simple), or with --objective flow a flow-matching "
    "velocity network (--init mnist fine-tunes the shipped model), on MNIST or a toy 2-D data "
    "set. Writes "
    "checkpoint.pt, loss.csv and sample grids (PNG) to --out; a folder that holds a run needs "
    "--resume (continue) or --overwrite (start over), and one run at a time: a run holds "
    "the lock file run.lock in --out while it trains (not on Windows, which lacks fcntl: "
    "never start two runs in one folder there). --export writes the EMA weights as "
    "safetensors for diffusion_tutorial.pretrained. Multi-GPU/CPU: run the same command under "
    "`torchrun --nproc_per_node=N -m diffusion_tutorial.train ...`."
)


def _parse_value(kind: type, optional: bool) -> Callable[[str], Any]:
    """argparse ``type=``: convert to ``kind``; 'none' means None for optional fields."""

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults of options that take a value, not of switches such as --resume."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """One ``--option`` per :class:`TrainConfig` field (except those with ``cli=False``)."""
    p = argparse.ArgumentParser(
        prog="python -m diffusion_tutorial.train",
        description=_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        kw: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        if hints[field.name] is bool:  # a switch that flips the default
            kw["action"] = "store_false" if field.default else "store_true"
        else:
            args = [a for a in typing.get_args(hints[field.name]) if a is not type(None)]
            kind = args[0] if args else hints[field.name]
            kw["type"] = _parse_value(kind, optional=len(args) > 0)
            kw["default"] = field.default
            if "choices" in meta:
                kw["choices"] = list(meta["choices"])
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
        p.add_argument(flag(field), **kw)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a validated :class:`TrainConfig` (exit 2 on a bad option)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = [
        "python",
        "-m",
        "diffusion_tutorial.train",
        *(sys.argv[1:] if argv is None else argv),
    ]
    try:
        return TrainConfig(**args, command=shlex.join(command))
    except ConfigError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    """Entry point; joins a process group when launched by torchrun (WORLD_SIZE > 1).

    A refused setting or run folder exits with status 2, a loss that stops being finite with
    status 1, each with a one-line error instead of a traceback.
    """
    cfg = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    try:
        result = train(cfg)
        if not distributed or dist.get_rank() == 0:
            last = f"{result.losses[-1][1]:.4f}" if result.losses else "n/a"
            print(
                f"done: step {result.step}, last loss {last}, {result.wall_time_s:.1f} s, "
                f"outputs in {result.out_dir}",
                flush=True,
            )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from err
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from err
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

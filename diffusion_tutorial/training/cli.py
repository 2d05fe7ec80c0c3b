"""Command line: train a diffusion model, e.g. ``python -m diffusion_tutorial.train --dataset mnist``.

The same command runs on several GPUs (or CPU processes) with PyTorch's launcher:
``torchrun --nproc_per_node=N -m diffusion_tutorial.train ...`` (NCCL on CUDA, gloo on CPU).

Book: Training the U-Net.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch
import torch.distributed as dist

from diffusion_tutorial.data import TOY_DATASETS
from diffusion_tutorial.networks.unet import PRESETS
from diffusion_tutorial.training.loop import LR_DECAYS, TrainConfig, train

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a :class:`TrainConfig`."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m diffusion_tutorial.train",
        description="Train a DDPM noise predictor (L_simple) on MNIST or a toy 2-D data set. "
        "Writes checkpoint.pt, loss.csv and sample grids (PNG) to --out; --export writes the EMA "
        "weights as safetensors for diffusion_tutorial.pretrained. Multi-GPU/CPU: run the same "
        "command under `torchrun --nproc_per_node=N -m diffusion_tutorial.train ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        choices=["mnist", *TOY_DATASETS],
        help="training data (MNIST is read from $DIFFUSION_TUTORIAL_DATA)",
    )
    p.add_argument(
        "--model",
        default=d.model,
        choices=[*PRESETS, "mlp"],
        help="model size preset: a U-Net preset for images, 'mlp' for 2-D data "
        "(default: 'mnist' for images, 'mlp' for toy sets)",
    )
    p.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="global batch size (split over torchrun processes)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate after warm-up")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=d.warmup_steps,
        help="linear learning-rate warm-up steps",
    )
    p.add_argument(
        "--lr-decay",
        default=d.lr_decay,
        choices=LR_DECAYS,
        help="after warm-up: constant learning rate, or a half cosine down to 0 at --steps",
    )
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the weights")
    p.add_argument(
        "--schedule", default=d.schedule, choices=["linear", "cosine"], help="noise schedule"
    )
    p.add_argument("--T", type=int, default=d.T, help="number of diffusion steps T")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model with a learned null class (MNIST only)",
    )
    p.add_argument(
        "--p-uncond",
        type=float,
        default=d.p_uncond,
        help="probability of dropping the label to the null class (classifier-free guidance)",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=d.guidance_scale,
        help="guidance scale w for the conditional sample grids",
    )
    p.add_argument("--out", default=d.out_dir, help="output folder")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (data order, noise, init)")
    p.add_argument(
        "--sample-every",
        type=int,
        default=d.sample_every,
        help="save a sample grid every N steps and at the end (0: never)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="write checkpoint.pt every N steps (0: only at the end)",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help="append the mean loss to loss.csv every N steps",
    )
    p.add_argument(
        "--time-limit-min",
        type=float,
        default=d.time_limit_min,
        help="stop cleanly after this many minutes: checkpoint, samples and export",
    )
    p.add_argument(
        "--precision",
        default=d.precision,
        choices=["auto", "bf16", "fp16", "fp32"],
        help="autocast on CUDA (auto = bf16 if supported, else fp16); on CPU fp32 unless bf16 is "
        "asked for (faster on CPUs with bf16 instructions)",
    )
    p.add_argument("--device", default=d.device, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--toy-size", type=int, default=d.toy_size, help="points in a toy training set")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>/checkpoint.pt exactly (model, EMA, optimiser, RNG)",
    )
    p.add_argument(
        "--init",
        default=d.init,
        metavar="NAME_OR_PATH",
        help="fine-tune: start from these weights, a shipped model ('mnist', 'mnist-cond') or a "
        ".safetensors file from --export (same network and T; fresh optimiser)",
    )
    p.add_argument(
        "--export",
        default=d.export,
        metavar="PATH",
        help="write the EMA weights as safetensors with model-card metadata",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    return TrainConfig(
        dataset=a.dataset,
        model=a.model,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps,
        lr_decay=a.lr_decay,
        grad_clip=a.grad_clip,
        ema_decay=a.ema_decay,
        schedule=a.schedule,
        T=a.T,
        conditional=a.conditional,
        p_uncond=a.p_uncond,
        guidance_scale=a.guidance_scale,
        out_dir=a.out,
        seed=a.seed,
        sample_every=a.sample_every,
        checkpoint_every=a.checkpoint_every,
        log_every=a.log_every,
        time_limit_min=a.time_limit_min,
        precision=a.precision,
        device=a.device,
        toy_size=a.toy_size,
        resume=a.resume,
        init=a.init,
        export=a.export,
        progress=not a.no_progress,
        command=shlex.join(["python", "-m", "diffusion_tutorial.train", *(argv or sys.argv[1:])]),
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point; joins a process group when launched by torchrun (WORLD_SIZE > 1)."""
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
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

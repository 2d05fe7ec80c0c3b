"""Throughput of our U-Net vs a diffusers UNet2DModel of (nearly) equal parameter count, on CPU.

Run: ``.venv/bin/python bench/unet.py`` (add ``--reps 5`` for steadier numbers). Prints a Markdown
table: training step time (forward + backward + AdamW) at batch 128, inference forward time at
batch 64 and 128 (``torch.inference_mode``), and for our models the wall time of sampling 64
MNIST images with DPM-Solver++ at 20 NFE (unconditional, and conditional with classifier-free
guidance, which doubles the batch). Each number is the minimum over ``--reps`` repetitions after
one warm-up (the minimum is the least disturbed by other processes on the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable

import torch
from torch import nn

from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.unet import PRESETS, UNet
from diffusion_tutorial.samplers import dpm_solver_sample


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def diffusers_unet(target: int) -> tuple[nn.Module, str] | None:
    """A UNet2DModel for 28x28 MNIST whose width is chosen to match ``target`` parameters."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None

    def build(b: int) -> nn.Module:
        return UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            layers_per_block=2,
            block_out_channels=(b, 2 * b, 4 * b),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=8,
        )

    best = min(range(8, 41, 8), key=lambda b: abs(n_params(build(b)) - target))
    return build(best), f"diffusers UNet2DModel ({best}, {2 * best}, {4 * best})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    ours = UNet(PRESETS["mnist"])
    cond = UNet(dataclasses.replace(PRESETS["mnist"], num_classes=10))
    models: list[tuple[str, nn.Module, Callable]] = [
        ("ours (unet.PRESETS['mnist'])", ours, lambda m, x, t: m(x, t)),
    ]
    peer = diffusers_unet(n_params(ours))
    if peer is not None:
        models.append((peer[1], peer[0], lambda m, x, t: m(x, t - 1).sample))  # diffusers: t-1

    # Interleave the models rep by rep, so a burst of load from other processes hits both alike.
    x128 = torch.randn(128, 1, 28, 28, generator=g)
    t128 = torch.randint(1, 1001, (128,), generator=g)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for _, m, _ in models]

    def train_step(model: nn.Module, call: Callable, opt: torch.optim.Optimizer) -> None:
        model.train()
        loss = (call(model, x128, t128) - x128).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def forward(model: nn.Module, call: Callable, bs: int) -> None:
        model.eval()
        with torch.inference_mode():
            call(model, x128[:bs], t128[:bs])

    best = [[float("inf")] * 3 for _ in models]
    for rep in range(args.reps + 1):  # rep 0 is the warm-up
        for i, ((_, model, call), opt) in enumerate(zip(models, opts, strict=True)):
            jobs = [
                functools.partial(train_step, model, call, opt),
                functools.partial(forward, model, call, 64),
                functools.partial(forward, model, call, 128),
            ]
            for j, job in enumerate(jobs):
                t0 = time.perf_counter()
                job()
                if rep:
                    best[i][j] = min(best[i][j], time.perf_counter() - t0)
    rows = [(name, n_params(model), *best[i]) for i, (name, model, _) in enumerate(models)]

    schedule = linear_schedule(1000)
    x_T = torch.randn(64, 1, 28, 28, generator=g)

    def sample(model: Callable) -> None:
        with torch.inference_mode():
            dpm_solver_sample(model, schedule, x_T, steps=20, progress=False)

    ours.eval(), cond.eval()
    guided = classifier_free_guidance(cond, torch.arange(64) % 10, 3.0)
    t_uncond = best_time(lambda: sample(ours), max(1, args.reps - 1))
    t_cond = best_time(lambda: sample(guided), max(1, args.reps - 1))

    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}\n")
    print(
        "| model | parameters | train step, batch 128 (s) | forward, batch 64 (s) | forward, batch 128 (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, n, tr, f64, f128 in rows:
        print(f"| {name} | {n:,} | {tr:.3f} | {f64:.3f} | {f128:.3f} |")
    print("\n| sampling 64 MNIST images, DPM-Solver++ 20 NFE (ours) | wall time (s) |")
    print("|---|---:|")
    print(f"| unconditional | {t_uncond:.2f} |")
    print(f"| conditional, classifier-free guidance (batch 128) | {t_cond:.2f} |")


if __name__ == "__main__":
    main()

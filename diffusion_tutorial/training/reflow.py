"""Reflow on a teacher's ODE: distil the shipped ``mnist`` model into a flow that needs 1-4 steps.

Two steps, each resumable, each a sub-command of ``python -m diffusion_tutorial.training.reflow``:

1. **Pairs** (``pairs``). For shard k, x_T = randn((1000, 1, 28, 28), seed 100,000 + k) and
   x_0 = the teacher's deterministic ODE solve of x_T (``mnist``, DPM-Solver++(2M), 20 NFE).
   A shard file stores the seed and x_0 in float16 (1.5 MB); x_T is re-drawn from the seed.
2. **Reflow** (``train``). Fine-tune a flow network (``--init mnist-flow``) on the pairs'
   straight interpolations, the flow-matching loss with the pair's x_T as the noise:

       L = E_{(x_T, x_0), s} || (x_0 - x_T) - u_theta(s x_0 + (1 - s) x_T, s) ||^2.

   The coupling is the teacher's ODE, not independent noise, so the target velocity is one
   straight line per pair: with a perfect fit, Euler steps from x_T land on x_0 (Liu et al. 2023,
   the "2-rectified flow"; at s = 0 alone it is Luhman & Luhman's one-step regression).
   ``--grid-fraction p`` draws a share p of each batch's times from the flow times that the 1-,
   2- and 4-step Euler samplers visit (:func:`reflow_times`) and the rest uniformly: the few-step
   sampler only ever asks the network at those times, so they get the training they need.

Sampling: ``samplers.few_step.few_step_sample`` (Euler on the uniform flow-time grid, no
re-noising between steps). Time convention: s = 0 at noise (``core.flow``), as in the pairs' x_T.

Book: One to four steps (Part 4). Liu, Gong & Liu 2023 (reflow); Luhman & Luhman 2021.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffusion_tutorial import pretrained
from diffusion_tutorial.checks import check_float_in_range
from diffusion_tutorial.core.flow_matching import flow_matching_loss, uniform_flow_times
from diffusion_tutorial.samplers import dpm_solver_sample
from diffusion_tutorial.training.ema import EMA
from diffusion_tutorial.training.loop import batch_indices
from diffusion_tutorial.training.outputs import hardware_name, run_card
from diffusion_tutorial.training.step import learning_rate

__all__ = [
    "PAIR_SEED",
    "pair_noise",
    "make_pairs",
    "load_pairs",
    "reflow_times",
    "train_reflow",
    "main",
]

PAIR_SEED = 100_000
"""Shard k's x_T is drawn from ``torch.Generator().manual_seed(PAIR_SEED + k)``."""
SHARD = 1000  # pairs per shard
TEACHER = "mnist, DPM-Solver++(2M), 20 NFE (deterministic), unclipped"


def pair_noise(shard: int, n: int = SHARD) -> torch.Tensor:
    """x_T of shard ``shard``: (n, 1, 28, 28) standard normal from seed PAIR_SEED + shard."""
    g = torch.Generator().manual_seed(PAIR_SEED + shard)
    return torch.randn((n, 1, 28, 28), generator=g)


@torch.no_grad()
def make_pairs(out: Path, shards: range, batch: int = 250) -> None:
    """Write shard files ``out/shard{k:03d}.pt`` (skipping those present): the teacher's x_0 of
    each shard's x_T. About a minute per shard of 1,000 on one CPU core."""
    out.mkdir(parents=True, exist_ok=True)
    model, schedule = pretrained.load("mnist")
    for k in shards:
        f = out / f"shard{k:03d}.pt"
        if f.exists():
            continue
        started = time.perf_counter()
        x_T = pair_noise(k)
        x_0 = torch.cat(
            [
                dpm_solver_sample(model, schedule, x_T[i : i + batch], steps=20, progress=False)
                for i in range(0, SHARD, batch)
            ]
        )
        tmp = f.with_suffix(".tmp")
        torch.save({"seed": PAIR_SEED + k, "sampler": "dpm:20", "x_0": x_0.half()}, tmp)
        tmp.rename(f)  # atomic: a shard is either complete or absent
        print(f"shard {k}: {time.perf_counter() - started:.0f} s", flush=True)


def load_pairs(folder: Path, max_shards: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, x_0), each (N, 1, 28, 28) float32, from the shard files in ``folder`` (sorted)."""
    files = sorted(Path(folder).glob("shard*.pt"))[:max_shards]
    if not files:
        raise FileNotFoundError(f"no shard*.pt files in {folder}: run the 'pairs' step first")
    x_T, x_0 = [], []
    for f in files:
        data = torch.load(f, weights_only=True)
        x_T.append(pair_noise(data["seed"] - PAIR_SEED, data["x_0"].shape[0]))
        x_0.append(data["x_0"].float())
    return torch.cat(x_T), torch.cat(x_0)


def reflow_times(
    batch: int,
    schedule,  # noqa: ANN001 - a NoiseSchedule
    *,
    grid_fraction: float,
    grid_steps: tuple[int, ...] = (1, 2, 4),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flow times s (batch,) float64 for the reflow loss: with probability ``grid_fraction`` a
    time the k-step Euler sampler visits, s = i / k (k drawn from ``grid_steps``, then i from
    0..k-1), else s ~ U[s_min, s_max] as ``flow_matching_loss`` draws it."""
    check_float_in_range("grid_fraction", grid_fraction, 0.0, 1.0)
    uniform = uniform_flow_times(batch, schedule, generator=generator)  # (batch,)
    ks = torch.tensor(grid_steps, dtype=torch.float64)
    k = ks[torch.randint(len(grid_steps), (batch,), generator=generator)]  # (batch,)
    i = torch.floor(torch.rand(batch, generator=generator, dtype=torch.float64) * k)
    on_grid = torch.rand(batch, generator=generator) < grid_fraction
    return torch.where(on_grid, i / k, uniform)


def train_reflow(args: argparse.Namespace) -> None:
    """Fine-tune ``args.init`` on the pairs with the reflow loss (AdamW, warm-up then cosine
    decay, EMA of the weights); checkpoint every ``args.checkpoint_every`` steps and resume from
    ``out/checkpoint.pt``; at the end export the EMA weights with their model card."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_T_all, x_0_all = load_pairs(Path(args.pairs), args.max_shards)
    n = x_0_all.shape[0]
    net, schedule = pretrained.load_file(pretrained.resolve_weights(args.init))
    if net.config.prediction != "velocity":
        raise ValueError(f"--init must be a flow network (prediction 'velocity'), got {args.init}")
    ema = EMA(net, decay=args.ema_decay, warmup=False)  # the init weights are already an EMA
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)  # flow times s
    step, wall, rows = 0, 0.0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, wall, rows = state["step"], state["wall"], [tuple(r) for r in state["rows"]]
        torch.set_rng_state(state["torch_rng"])  # dropout's stream, where it stopped
        print(f"resumed at step {step} ({n} pairs)", flush=True)
    else:
        torch.manual_seed(args.seed)  # dropout
    net.train()
    started, window = time.perf_counter() - wall, []

    def save() -> None:
        state = dict(net=net.state_dict(), ema=ema.state_dict(), opt=opt.state_dict())
        state.update(
            gen=gen.get_state(),
            torch_rng=torch.get_rng_state(),
            step=step,
            wall=time.perf_counter() - started,
            rows=rows,
        )
        torch.save(state, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").rename(ckpt)

    stop = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    while step < stop:
        idx = batch_indices(step, n, args.batch_size, args.seed)  # (B,)
        for group in opt.param_groups:
            group["lr"] = learning_rate(
                step, lr=args.lr, steps=args.steps, warmup_steps=args.warmup_steps, cosine=True
            )
        flow_t = reflow_times(len(idx), schedule, grid_fraction=args.grid_fraction, generator=gen)
        loss = flow_matching_loss(
            net, x_0_all[idx], schedule, flow_t=flow_t, noise=x_T_all[idx], generator=gen
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net)
        step += 1
        window.append(loss.item())
        if step % args.log_every == 0:
            rows.append((step, sum(window) / len(window), time.perf_counter() - started))
            window = []
            print(f"step {step}: loss {rows[-1][1]:.5f}, {rows[-1][2]:.0f} s", flush=True)
        if step % args.checkpoint_every == 0 or step == stop:
            save()
        if args.export_every and step % args.export_every == 0 and step < args.steps:
            export(args, ema, step, time.perf_counter() - started, rows, n)
    if args.export and step == args.steps:
        export(args, ema, step, time.perf_counter() - started, rows, n)


def export(args, ema, step, wall_time_s, rows, n_pairs) -> None:  # noqa: ANN001
    """Write the EMA weights with the model card: the reflow settings and where they came from."""
    meta = run_card(
        " ".join(["python -m diffusion_tutorial.training.reflow", *sys.argv[1:]]),
        ema.model,
        steps=step,
        batch_size=args.batch_size,
        hardware=hardware_name(torch.device("cpu")),
        wall_time_s=wall_time_s,
        final_loss=rows[-1][1] if rows else None,
        init=args.init,
        few_step={
            "method": "reflow",
            "grid_fraction": args.grid_fraction,
            "sampler": "Euler on the uniform flow-time grid s_i = i / k, k = 1, 2 or 4",
            "between_steps": "nothing: a reflowed flow does not re-noise",
            "teacher": TEACHER,
            "pairs": n_pairs,
            "pair_seeds": f"{PAIR_SEED} + shard",
        },
    )
    path = Path(args.export)
    init_file = pretrained.resolve_weights(args.init)
    spec = pretrained.card_file(init_file)["schedule"]  # the schedule it started from
    pretrained.save(path, ema.model, schedule=spec, **meta)
    print(f"exported EMA weights at step {step} to {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command line: ``pairs --out DIR --shards A B`` or ``train --pairs DIR ...``."""
    p = argparse.ArgumentParser(prog="python -m diffusion_tutorial.training.reflow")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("pairs", help="the teacher's (x_T, x_0) pairs, in shards of 1,000")
    pp.add_argument("--out", required=True)
    pp.add_argument("--shards", type=int, nargs=2, metavar=("FIRST", "END"), required=True)
    tp = sub.add_parser("train", help="reflow fine-tuning on the pairs")
    tp.add_argument("--pairs", required=True)
    tp.add_argument("--max-shards", type=int, default=None)
    tp.add_argument("--init", default="mnist-flow")
    tp.add_argument("--steps", type=int, required=True)
    tp.add_argument("--batch-size", type=int, default=64)
    tp.add_argument("--lr", type=float, default=2e-4)
    tp.add_argument("--warmup-steps", type=int, default=100)
    tp.add_argument("--ema-decay", type=float, default=0.999)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--grid-fraction", type=float, default=0.0, help="share of times on the grids")
    tp.add_argument("--threads", type=int, default=1)
    tp.add_argument("--out", required=True)
    tp.add_argument("--export", default=None)
    tp.add_argument("--export-every", type=int, default=0)
    tp.add_argument("--stop-at", type=int, default=None, help="end this session at this step")
    tp.add_argument("--log-every", type=int, default=50)
    tp.add_argument("--checkpoint-every", type=int, default=100)
    args = p.parse_args(argv)
    if args.command == "pairs":
        torch.set_num_threads(1)
        make_pairs(Path(args.out), range(*args.shards))
    else:
        train_reflow(args)


if __name__ == "__main__":
    main()

"""MNIST-FID and KID of many samplers on the same x_T, one JSON line per (draw, sampler): resumable.

The chapters of Parts 2 and 3 read the committed result (package data, read with
``diffusion_tutorial.evaluation.sweep``), ``diffusion_tutorial/results/mnist_sweep.jsonl``,
where a live run would not fit their time budget (DDPM with all 1,000 steps takes ~40 min per
500 samples on one CPU core). A draw (``--seed``) fixes, exactly as ``bench/quality.py`` does,
``--n`` MNIST test images (the reference), ``--n`` training images (the floor), the ``--n``
starting points x_T = randn((n, 1, 28, 28)) from ``torch.Generator().manual_seed(seed)`` and the
noise stream of the stochastic samplers (seed + 10,000). Each line holds:

* ``fid``: MNIST-FID (the book's own classifier features; not Inception FID), biased upwards at
  small n, so read it against ``floor_fid`` (training vs test images at the same n);
* ``kid``: the unbiased kernel distance of the same features (``metrics.kernel_distance``) and
  ``floor_kid`` (about 0 up to its spread);
* ``seconds``: wall time of sampling, with ``threads`` torch threads.

Sampler strings as in ``bench/quality.py`` (``ddpm``, ``ddim:STEPS:ETA``, ``hat:STEPS``,
``dpm:STEPS[:ORDER]``, ``sde:STEPS``, ``heun:STEPS`` and ``euler:STEPS`` for EDM's samplers,
``flow-euler:STEPS`` and ``flow-heun:STEPS`` for the flow-matching model ``mnist-flow``,
``few-step:K`` for ``mnist-few-step``: K Euler steps, what ``dt.few_step_sample`` does for it). Runs already in ``--out`` are skipped, so the command can
be stopped and restarted, and draws can run in parallel processes (one seed each).
``--keep K`` stores the first K samples of every run of the draw as uint8 in
``<out stem>_samples_seed<seed>.npz`` (key: the sampler string).

Reproduce the committed file (three processes, one thread each; DDPM-1000 dominates: 250,000 network evaluations per draw, ~20 min per draw on a free core):

    for s in 0 1 2; do OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/mnist_sweep.py \\
        --seed $s --n 250 --threads 1 --keep 64 & done

The larger run at n = 1,000 per draw that Part 3 ch. 3 ranks samplers with,
``diffusion_tutorial/results/mnist_sweep_n1000.jsonl`` (no DDPM-1000, no stored samples; five
draws at 19-20 NFE, three elsewhere; ~60-115 s per 20-NFE sampler and draw on a free core):

    S=diffusion_tutorial/results/mnist_sweep_n1000.jsonl
    run() { OMP_NUM_THREADS=1 .venv/bin/python bench/mnist_sweep.py --seed $1 --n 1000 \\
        --batch 250 --threads 1 --samplers "$2" --out $S; }
    for s in 0 1 2 3 4; do run $s sde:20,dpm:20,ddim:20:0,ddim:20:1,heun:10,euler:20; done
    for s in 0 1 2; do run $s ddim:10:0,dpm:10,sde:10,heun:5,ddim:5:0,dpm:5; done
    for s in 0 1 2; do run $s ddim:1:0,ddim:2:0,ddim:4:0,dpm:1,dpm:2,dpm:4,heun:3; done

The flow-matching chapter's equal-NFE comparison, ``diffusion_tutorial/results/flow_mnist_n1000.jsonl``
(``flow-euler:STEPS`` / ``flow-heun:STEPS`` sample the shipped ``mnist-flow``, rows marked
``"model": "mnist-flow"``; the same three draws as above, so the floors agree seed by seed):

    F=diffusion_tutorial/results/flow_mnist_n1000.jsonl
    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/python bench/mnist_sweep.py --seed $s \
        --n 1000 --batch 250 --threads 1 --out $F --samplers \
        flow-euler:5,flow-heun:3,flow-euler:10,flow-heun:5,flow-euler:20,flow-heun:10,flow-euler:50,flow-heun:25,ddim:50:0,dpm:50; done

The latent-diffusion chapter's rows, ``diffusion_tutorial/results/latent_mnist_n1000.jsonl``:
``latent-<sampler>`` samples the shipped ``mnist-latent`` unconditionally (null label;
``latent-cond-<sampler>``: conditionally at s = 1, the digits 0-9 in turn) from
z_T = randn((n, 4, 7, 7)) of the draw's seed and decodes with ``mnist-autoencoder`` at the factor
the model was trained with; ``ae-floor`` is the draw's training images encoded and decoded
against its test reference, the autoencoder's floor (same draws as above, paired by seed):

    L=diffusion_tutorial/results/latent_mnist_n1000.jsonl
    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/python bench/mnist_sweep.py --seed $s \
        --n 1000 --batch 250 --threads 1 --out $L --samplers \
        ae-floor,latent-dpm:10,latent-dpm:20,latent-sde:20,latent-ddim:20:0,latent-cond-dpm:20; done

The few-step chapter's rows, ``diffusion_tutorial/results/few_step_mnist_n1000.jsonl``
(``mnist-few-step`` in 1, 2 and 4 Euler steps, and ``mnist-flow``'s Euler at the same NFE, from
the same x_T; same draws as above):

    S=diffusion_tutorial/results/few_step_mnist_n1000.jsonl
    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/python bench/mnist_sweep.py --seed $s \
        --n 1000 --batch 250 --threads 1 --out $S --samplers \
        few-step:1,few-step:2,few-step:4,flow-euler:1,flow-euler:2,flow-euler:4; done

The conditional pixel model's rows for the ledger (``notebooks/reference/ledger``),
``diffusion_tutorial/results/cond_mnist_n1000.jsonl``: ``cond-<sampler>`` samples the shipped
``mnist-cond`` at guidance scale s = 1 (the plain conditional model, one network evaluation per
step; its model card's best MNIST-FID), the digits 0-9 in turn, from the draw's pixel x_T (rows
marked ``"model": "mnist-cond"``; same draws as above, paired by seed):

    C=diffusion_tutorial/results/cond_mnist_n1000.jsonl
    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/python bench/mnist_sweep.py --seed $s \
        --n 1000 --batch 250 --threads 1 --out $C --samplers cond-dpm:20; done

``bench/ledger.py`` lists (``--dry-run``) or runs every command behind the files the ledger reads.

Print the tables: ``.venv/bin/python bench/mnist_sweep.py --table diffusion_tutorial/results/mnist_sweep.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import FLOW_KINDS, ROOT, SamplerSpec, generate, load_model, mnist_draw  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.core.flow_matching import velocity_model  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.files import atomic_write  # noqa: E402
from diffusion_tutorial.networks.latent import decode_latent, encode_latent  # noqa: E402

# Headline comparisons first, then DDPM-1000, then the NFE sweep and the DDIM table (Song et al.
# 2021, Table 1: eta = 0, 0.5, 1 and sigma-hat at 10, 20, 50, 100 steps).
DEFAULT = (
    "sde:20,dpm:20,ddim:50:0,ddim:50:1,ddpm,"
    "ddim:10:0,ddim:10:1,sde:10,dpm:10,ddim:20:0,ddim:20:1,hat:10,hat:20,ddim:10:0.5,ddim:20:0.5,"
    "sde:5,dpm:5,ddim:5:0,ddim:5:1,hat:50,ddim:50:0.5,sde:50,dpm:50,"
    "sde:15,dpm:15,ddim:15:0,ddim:15:1,ddim:100:0,ddim:100:1,ddim:100:0.5,hat:100"
)


def load(path: Path) -> list[dict]:
    """The result lines of a sweep file (an empty list if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    """Markdown: one line per sampler, FID per draw, mean ± sd, and the same-x_T ratio to DDPM."""
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["sampler"], r["seed"]): r for r in rows}
    floors = {r["seed"]: (r["floor_fid"], r["floor_kid"]) for r in rows}
    n = sorted({r["n"] for r in rows})
    out = [
        f"{metrics.MNIST_FID_NAME} and KID, n = {n} samples per draw, same x_T per draw",
        "",
        "| sampler | NFE | "
        + " | ".join(f"FID seed {s}" for s in seeds)
        + " | FID mean ± sd | FID / DDPM-1000 (same x_T) | KID mean | s per draw |",
        "|---|---|" + "---|" * (len(seeds) + 4),
        "| real vs real (floor) | — | "
        + " | ".join(f"{floors[s][0]:.2f}" for s in seeds)
        + f" | {statistics.mean(f for f, _ in floors.values()):.2f} | — "
        f"| {statistics.mean(k for _, k in floors.values()):.3g} | — |",
    ]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        got = [by.get((sampler, s)) for s in seeds]
        fids = [g["fid"] for g in got if g]
        ratios = [
            g["fid"] / by[("ddpm", g["seed"])]["fid"]
            for g in got
            if g and ("ddpm", g["seed"]) in by
        ]
        sd = f" ± {statistics.stdev(fids):.2f}" if len(fids) > 1 else ""
        ratio = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "—"
        first = next(g for g in got if g)
        out.append(
            f"| {first['label']} | {first['nfe']} | "
            + " | ".join(f"{g['fid']:.2f}" if g else "—" for g in got)
            + f" | {statistics.mean(fids):.2f}{sd} | {ratio} "
            f"| {statistics.mean(g['kid'] for g in got if g):.3g} "
            f"| {statistics.mean(g['seconds'] for g in got if g):.0f} |"
        )
    return "\n".join(out)


LATENT = "latent-"  # a sampler string with this prefix samples mnist-latent and decodes
# cond-<sampler> (mnist-cond) and latent-cond-<sampler> (mnist-latent): the conditional model at
# s = 1, digits 0..9 in turn
COND = "cond-"
FEW_STEP = "few-step:"  # few-step:K: mnist-few-step, K Euler steps on the uniform flow-time grid
AE_FLOOR = "ae-floor"  # the draw's training images encoded and decoded: the autoencoder's floor
LATENT_SHAPE = (4, 7, 7)


def parse(name: str) -> SamplerSpec | None:
    """The sampler of a string; ``latent-`` strings name a pixel sampler run in latent space.

    ``cond-`` (after ``latent-`` or alone) names the conditional model; it takes an
    epsilon-model's sampler, not a flow's.
    """
    if name == AE_FLOOR:
        return None
    if name.startswith(FEW_STEP):  # what dt.few_step_sample does for a reflowed flow
        return SamplerSpec.parse("flow-euler:" + name[len(FEW_STEP) :])
    if name.startswith(LATENT):
        name = name[len(LATENT) :]
    if name.startswith(COND):
        name = name[len(COND) :]
        if name.startswith(FLOW_KINDS):
            raise argparse.ArgumentTypeError(
                f"bad sampler {COND + name!r}: the conditional models are epsilon-models; "
                "use a diffusion sampler such as cond-dpm:20"
            )
    return SamplerSpec.parse(name)


def load_latent(weights: Path | None):
    """(mnist-latent, its schedule, the shipped autoencoder, the factor the model was trained with)."""
    if weights is None:
        net, schedule = pretrained.load("mnist-latent")
        meta = pretrained.card("mnist-latent")
    else:
        net, schedule = pretrained.load_file(weights)
        meta = pretrained.card_file(weights)
    ae = pretrained.load("mnist-autoencoder")
    want = pretrained.REGISTRY["mnist-autoencoder"].sha256
    if meta["latent"]["autoencoder_sha256"] != want:
        raise ValueError(
            "the latent model was trained on another autoencoder than mnist-autoencoder"
        )
    return net, schedule, ae, float(meta["latent"]["scaling_factor"])


def run_latent(name: str, spec, latent, real_train: torch.Tensor, seed: int, batch: int):
    """(model, label, NFE, decoded images, seconds) of a ``latent-`` sampler or of ``ae-floor``."""
    net, schedule, ae, factor = latent
    if name == AE_FLOOR:  # the draw's training images through the autoencoder
        z = encode_latent(ae, real_train, scaling_factor=factor)
        images = decode_latent(ae, z, scaling_factor=factor)
        return "mnist-autoencoder", "decoded training images (autoencoder floor)", 0, images, 0.0
    # x_T of the latent model: (n, 4, 7, 7) from the draw's seed (another shape than the pixels'
    # x_T, so the pairing with pixel samplers is by draw: reference and floor)
    z_T = torch.randn(
        (len(real_train), *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed)
    )
    cond = name.startswith(LATENT + COND)
    z_0, _, seconds = generate(
        net, schedule, spec, z_T, batch, seed + 10_000, 1.0 if cond else None, False,
        clamp=False,  # latents are not images: only the decoded digits are clipped
    )  # fmt: skip
    start = time.perf_counter()
    with torch.no_grad():
        images = decode_latent(ae, z_0, scaling_factor=factor).clamp(-1, 1)
    seconds += time.perf_counter() - start
    kind = "conditional (s = 1, digits 0-9 in turn)" if cond else "unconditional"
    return (
        "mnist-latent",
        f"latent {spec.label(schedule)}, {kind}, decoded",
        spec.nfe(schedule),
        images,
        seconds,
    )


def load_velocity(name: str, weights: Path | None):
    """The velocity field of the shipped flow network ``name``, or of ``weights`` (no hash check)."""
    net, schedule = pretrained.load(name) if weights is None else pretrained.load_file(weights)
    return velocity_model(net, schedule)


def append(path: Path, row: dict, log) -> None:
    """Append one result line (one short write: parallel draws do not interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    log(f"seed {row['seed']} | {row['label']} | FID {row['fid']:.2f} | {row['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--samplers", default=DEFAULT)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", type=int, default=0, help="store the first K samples of each run")
    p.add_argument(
        "--classifier", type=Path, default=None, help="classifier file (default: shipped)"
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "diffusion_tutorial/results/mnist_sweep.jsonl"
    )
    p.add_argument(
        "--flow-weights", type=Path, default=None,
        help="flow-euler/flow-heun: this .safetensors (no hash check) instead of mnist-flow",
    )  # fmt: skip
    p.add_argument(
        "--latent-weights", type=Path, default=None,
        help="latent-*: this .safetensors (no hash check) instead of mnist-latent",
    )  # fmt: skip
    p.add_argument(
        "--few-step-weights", type=Path, default=None,
        help="few-step:K: this .safetensors (no hash check) instead of mnist-few-step",
    )  # fmt: skip
    p.add_argument("--table", type=Path, default=None, help="print the tables of a file and exit")
    args = p.parse_args(argv)
    if args.table is not None:
        rows = load(args.table)
        if not rows:
            p.error(f"no results in {args.table}")
        print(table(rows))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [(s.strip(), parse(s.strip())) for s in args.samplers.split(",") if s.strip()]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    classifier = pretrained.load_classifier(args.classifier, device="cpu")
    ref, real_train, floor_fid, floor_kid = mnist_draw(args.n, args.seed, classifier)
    log(f"seed {args.seed}: floor FID {floor_fid:.2f}, KID {floor_kid:.5f}")

    (model, schedule), _ = load_model("mnist", None, torch.device("cpu"))
    flow = None  # the velocity field of mnist-flow, loaded when a flow sampler asks for it
    few = None  # the velocity field of mnist-few-step, loaded when a few-step sampler asks for it
    cond = None  # (mnist-cond, its schedule), loaded when a cond- sampler asks for it
    latent = None  # (mnist-latent, its schedule, the autoencoder, the factor), loaded on demand
    x_T = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed))
    keep_path = args.out.with_name(f"{args.out.stem}_samples_seed{args.seed}.npz")
    for name, spec in specs:
        done = {(r["seed"], r["sampler"], r["n"]) for r in load(args.out)}
        if (args.seed, name, args.n) in done:
            continue
        if name == AE_FLOOR or name.startswith(LATENT):
            latent = latent or load_latent(args.latent_weights)
            model_name, label, nfe, images, seconds = run_latent(
                name, spec, latent, real_train, args.seed, args.batch
            )
        elif name.startswith(COND):  # mnist-cond at s = 1 from the draw's pixel x_T
            cond = cond or load_model("mnist-cond", None, torch.device("cpu"))[0]
            cond_model, cond_schedule = cond
            images, _, seconds = generate(
                cond_model, cond_schedule, spec, x_T, args.batch, args.seed + 10_000, 1.0, False
            )
            model_name, nfe = "mnist-cond", spec.nfe(cond_schedule)
            label = f"{spec.label(cond_schedule)}, conditional (s = 1, digits 0-9 in turn)"
        else:
            model_name, model_fn = "mnist", model
            label, nfe = spec.label(schedule), spec.nfe(schedule)
            if name.startswith(FEW_STEP):
                few = few or load_velocity("mnist-few-step", args.few_step_weights)
                model_name, model_fn = "mnist-few-step", few
                label = f"few-step (reflow) {nfe} Euler step{'s' * (nfe > 1)}, uniform flow time"
            elif spec.kind in FLOW_KINDS:
                flow = flow or load_velocity("mnist-flow", args.flow_weights)
                model_name, model_fn = "mnist-flow", flow
            images, _, seconds = generate(
                model_fn, schedule, spec, x_T, args.batch, args.seed + 10_000, None, False
            )
        feats = classifier_features(classifier, images)
        row = {
            "model": model_name, "n": args.n, "seed": args.seed, "sampler": name,
            "label": label, "nfe": nfe,
            "fid": metrics.frechet_distance(feats, ref), "kid": metrics.kernel_distance(feats, ref),
            "floor_fid": floor_fid, "floor_kid": floor_kid, "seconds": seconds,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
        }  # fmt: skip
        append(args.out, row, log)
        if args.keep:
            old = dict(np.load(keep_path)) if keep_path.is_file() else {}
            old[name] = ((images[: args.keep, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()

            def write(tmp: Path, arrays: dict = old) -> None:
                with open(tmp, "wb") as fh:  # a file object: numpy adds no ".npz" to the name
                    np.savez_compressed(fh, **arrays)

            atomic_write(keep_path, write)


if __name__ == "__main__":
    main()

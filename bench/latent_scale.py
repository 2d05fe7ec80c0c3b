"""The latent scale sweep of latent diffusion: train at several scales c, sample, decode, MNIST-FID.

A latent diffusion model learns z = c * mean(x), the shipped ``mnist-autoencoder``'s encoder mean
times a scaling factor c (``--latent-scale``). The factor the book uses, 1.1527 (1 / std of the
training latents), gives z of std one; another c multiplies every step's signal-to-noise ratio
by c**2 (a shift of log-SNR by 2 log c, Part 4 ch. 5). This script measures what that does:
for each scale it trains a SHORT latent model with the training loop of
``python -m diffusion_tutorial.train`` (the shipped ``mnist-latent`` recipe: the ``latent``
U-Net preset, AdamW lr 4e-4, 100 warm-up steps, cosine decay, EMA 0.999 with warm-up, batch
128, seed 0), samples ``--n`` latents with DPM-Solver++(2M) at 20 NFE from the SAME x_T for
every scale, decodes them with the SAME c (``decode_latent(..., scaling_factor=c)``), and
scores MNIST-FID and KID against ``--n`` test digits beside the real-vs-real floor at the same
n (reference and floor as ``bench/mnist_sweep.py`` draws them at ``--seed``).

Unconditional models (no ``--conditional``): the question is how well the prior fits the latent
distribution at each scale, and MNIST-FID scores unconditional samples; a conditional model
would spend 90 % of a short run on class-conditional predictions that the FID never sees.

The 60,000 training digits are encoded ONCE per process (about 85 s on one thread): the loop
asks ``training.build.mnist_latent_train(c)`` for its data, and this script points that name at
``c * means`` of one encoding at c = 1 (``encode_latent`` multiplies the same means by c, so the
data are identical; the loop and the run folders are untouched otherwise). The eps-loss is NOT
comparable across scales (at small c the latent is nearly pure noise at every t, so predicting
the noise is easy); the decoded samples' FID is. 600 steps is short: at every scale the committed
models' samples overshoot the latents' spread (``latent_std`` is several times c / 1.1527, the
data's std) and their MNIST-FID is far above the floor, so the sweep ranks how far each scale
gets in a short run, not where it would converge (``mnist-latent`` took 11,000 steps).

One JSON line per scale is appended to ``--out`` (default
``diffusion_tutorial/results/latent_scale_sweep.jsonl``); scales already there (same scale,
steps, n and seed) are skipped, so the command can be stopped and restarted. Keys: scale,
steps, batch_size, final_loss, fid, kid, floor_fid, floor_kid, n, seed, sampler, nfe,
train_seconds, sample_seconds, seconds (train + sample + decode + features of this scale),
threads, torch.

The full sweep, as committed (measured 2026-12-05 on one core of the shared 2-core machine,
load about 3: 356-408 s of training and 33-46 s of sampling per scale, 412-449 s per scale with
decoding and features, about 45 min for the six scales including the encoding):

    DIFFUSION_TUTORIAL_DATA=/work/shared/data OMP_NUM_THREADS=1 nice -n 5 \\
        .venv/bin/python bench/latent_scale.py --steps 600 --n 1000 --threads 1

Smoke test (two scales, 20 steps, 100 samples, to a scratch file; ~2.5 min with the encoding):

    DIFFUSION_TUTORIAL_DATA=/work/shared/data OMP_NUM_THREADS=1 .venv/bin/python \\
        bench/latent_scale.py --smoke --out /tmp/latent_scale_smoke.jsonl

Print the table: ``.venv/bin/python bench/latent_scale.py --table``.

Book: Latent diffusion (Part 4), the latent's scale. Rombach et al. 2022, Sec. 4.3.2 and
Appendix D.1 (the rescaling by 1 / std).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, mnist_draw  # noqa: E402

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.networks.latent import decode_latent  # noqa: E402
from diffusion_tutorial.samplers import dpm_solver_sample  # noqa: E402
from diffusion_tutorial.training import build  # noqa: E402
from diffusion_tutorial.training.config import TrainConfig  # noqa: E402
from diffusion_tutorial.training.loop import train  # noqa: E402

DEFAULT_SCALES = "0.25,0.5,1.0,factor,2.0,4.0"
NFE = 20
OUT = ROOT / "diffusion_tutorial/results/latent_scale_sweep.jsonl"


def load(path: Path) -> list[dict]:
    """The result lines of a sweep file (an empty list if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    """Markdown: one line per scale, FID and KID beside the floor."""
    out = [
        f"{metrics.MNIST_FID_NAME}, n = {sorted({r['n'] for r in rows})}, "
        f"{sorted({r['steps'] for r in rows})} training steps per scale",
        "",
        "| scale c | log-SNR shift 2 ln(c / factor) | final loss | FID | floor | FID / floor "
        "| KID | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    factor = pretrained.load("mnist-autoencoder").config.scaling_factor
    for r in sorted(rows, key=lambda r: r["scale"]):
        out.append(
            f"| {r['scale']:.4g} | {2 * math.log(r['scale'] / factor):+.2f} "
            f"| {r['final_loss']:.4f} | {r['fid']:.2f} | {r['floor_fid']:.2f} "
            f"| {r['fid'] / r['floor_fid']:.2f} | {r['kid']:.3g} | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


def encode_once() -> None:
    """Point ``build.mnist_latent_train`` at c * (one encoding at c = 1): encode once per process."""
    means, labels = build.mnist_latent_train(1.0)  # (60000, 4, 7, 7): 1.0 * mean == mean

    def scaled(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return scale * means, labels  # what encode_latent(..., scaling_factor=scale) returns

    build.mnist_latent_train = scaled  # load_dataset looks the name up in build at call time


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--scales", default=DEFAULT_SCALES,
        help="comma-separated; 'factor': the autoencoder's own scaling_factor (1.1527)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=600, help="training steps per scale")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n", type=int, default=1000, help="samples and reference digits per scale")
    p.add_argument("--batch", type=int, default=500, help="sampling batch")
    p.add_argument("--seed", type=int, default=0, help="x_T, reference and floor draw")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--smoke", action="store_true", help="scales 0.5,factor, 20 steps, n = 100")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        rows = load(args.out)
        if not rows:
            p.error(f"no results in {args.out}")
        print(table(rows))
        return
    if args.smoke:
        args.scales, args.steps, args.n, args.batch = "0.5,factor", 20, 100, 100
    if args.threads:
        torch.set_num_threads(args.threads)
    factor = build.latent_autoencoder().config.scaling_factor  # 1.152696...
    scales = [factor if s.strip() == "factor" else float(s) for s in args.scales.split(",")]
    for s in scales:
        if not s > 0:
            p.error(f"--scales must be positive numbers or 'factor', got {s}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    def done() -> set:
        return {(r["scale"], r["steps"], r["n"], r["seed"]) for r in load(args.out)}

    todo = [s for s in scales if (s, args.steps, args.n, args.seed) not in done()]
    if not todo:
        log(f"every scale is already in {args.out}")
        return
    classifier = pretrained.load_classifier(device="cpu")
    ref, _, floor_fid, floor_kid = mnist_draw(args.n, args.seed, classifier)  # mnist_sweep's draw
    log(f"seed {args.seed}, n {args.n}: floor FID {floor_fid:.2f}, KID {floor_kid:.4f}")
    autoencoder = build.latent_autoencoder()
    t0 = time.perf_counter()
    encode_once()
    log(f"encoded the training digits once in {time.perf_counter() - t0:.0f} s")
    x_T = torch.randn(
        (args.n, *autoencoder.config.latent_shape),
        generator=torch.Generator().manual_seed(args.seed),
    )  # (n, 4, 7, 7): the same starting latents at every scale
    with tempfile.TemporaryDirectory(prefix="latent_scale_") as tmp:
        for scale in todo:
            started = time.perf_counter()
            export = Path(tmp) / f"scale_{scale:g}.safetensors"
            cfg = TrainConfig(
                dataset="mnist-latent", model="latent", latent_scale=scale,
                steps=args.steps, batch_size=args.batch_size, lr=4e-4,
                warmup_steps=min(100, args.steps), lr_decay="cosine", ema_decay=0.999, seed=0,
                out_dir=str(Path(tmp) / f"run_{scale:g}"), sample_every=0, checkpoint_every=0,
                log_every=min(50, args.steps), export=str(export), progress=False, device="cpu",
                command=f"bench/latent_scale.py --latent-scale {scale} --steps {args.steps}",
            )  # fmt: skip
            result = train(cfg)
            train_seconds = time.perf_counter() - started
            model, schedule = pretrained.load_file(export)  # the EMA weights
            t1 = time.perf_counter()
            with torch.inference_mode():
                z = torch.cat(
                    [
                        dpm_solver_sample(model, schedule, xb, steps=NFE, progress=False)
                        for xb in x_T.split(args.batch)
                    ]
                )  # (n, 4, 7, 7) at scale c
            sample_seconds = time.perf_counter() - t1
            images = torch.cat(
                [decode_latent(autoencoder, zb, scaling_factor=scale) for zb in z.split(500)]
            )  # (n, 1, 28, 28): divided by the SAME c it was trained at
            feats = classifier_features(classifier, images)
            row = {
                "scale": scale, "steps": result.step, "batch_size": args.batch_size,
                "final_loss": result.losses[-1][1], "n": args.n, "seed": args.seed,
                "sampler": f"dpm:{NFE}", "nfe": NFE,
                "fid": metrics.frechet_distance(feats, ref),
                "kid": metrics.kernel_distance(feats, ref),
                "floor_fid": floor_fid, "floor_kid": floor_kid,
                "latent_std": z.std().item(),
                "train_seconds": train_seconds, "sample_seconds": sample_seconds,
                "seconds": time.perf_counter() - started,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
            }  # fmt: skip
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:  # one line per scale: an interrupted sweep keeps them
                f.write(json.dumps(row) + "\n")
            log(
                f"scale {scale:g}: loss {row['final_loss']:.4f}, FID {row['fid']:.2f} "
                f"(floor {floor_fid:.2f}), {row['seconds']:.0f} s"
            )
    print(table(load(args.out)))


if __name__ == "__main__":
    main()

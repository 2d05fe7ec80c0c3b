"""The committed measurements of Part 4's chapter on scores, SDEs and the probability-flow ODE.

Two parts, each appending one JSON line per finished run to
``diffusion_tutorial/results/score_sde_mnist.jsonl`` (package data, read by the chapter, where a
live run would not fit its 5-minute budget); runs already in the file are skipped, so a command
can be stopped and restarted.

``pc``: predictor-corrector sampling against the predictor alone at equal NFE with the shipped
``mnist`` model. A draw (``--seeds``) fixes, exactly as ``bench/quality.py`` and
``bench/mnist_sweep.py`` do, ``--n`` MNIST test images (the reference), ``--n`` training images
(the real-vs-real floor), the ``--n`` starting points x_T = randn((n, 1, 28, 28)) from
``torch.Generator().manual_seed(seed)`` and the noise stream (seed + 10,000). Every sampler of a
draw starts from the same x_T, so the paired difference of MNIST-FID between two samplers, over
draws, has a small standard error even where the FIDs themselves move with the draw. Settings
(``--samplers``): ``anc:STEPS`` (the predictor alone, DDPM's ancestral step on the leading grid,
i.e. ``ddim_sample(eta=1)``) and ``pc:STEPS:M[:SNR]`` (M corrector steps per time, NFE = STEPS
(1 + M)).

``bpd``: bits per dimension of the shipped model from the probability-flow ODE
(``evaluation.likelihood.ode_likelihood``, Hutchinson's estimator with Rademacher probes, uniform
dequantisation) on the first ``--images`` MNIST test digits, at each of ``--steps`` Heun step
counts (the solver's step-size bias), with ``--probes`` probes per image (the spread over probes
for fixed images), beside the variational bound of Part 2 ch. 3 (``core.losses``: prior KL,
stratified sum of L_(t-1) with ``--strata`` strata, discretised decoder) on the same digits.

Print the tables (markdown, also written to ``bench/results/score_sde.md``):
``.venv/bin/python bench/score_sde.py table``.

Reproduce the committed file (CPU, one thread per process, in the background; on a shared 2-core
machine the whole took under an hour of wall time; "s per draw" in the table gives each run's):

    for s in 0 1 2; do OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/score_sde.py pc \\
        --seeds $s --n 500 --threads 1 \\
        --samplers pc:10:1,anc:20,pc:25:1,anc:50,anc:10,pc:10:1:0.05,pc:25:1:0.05 \\
        > /tmp/score_sde_pc_$s.log 2>&1 & done
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/score_sde.py bpd --images 128 \\
        --steps 32,64 --probes 2 --threads 1 > /tmp/score_sde_bpd.log 2>&1 &
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/score_sde.py bpd --images 32 \\
        --steps 128 --probes 2 --threads 1 > /tmp/score_sde_bpd128.log 2>&1 &

Book: Scores, SDEs and the probability-flow ODE (Part 4).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, generate, load_model, mean_std, mnist_draw  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.core import losses  # noqa: E402
from diffusion_tutorial.data import mnist  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.evaluation.likelihood import bits_per_dim, dequantize, ode_likelihood  # noqa: E402
from diffusion_tutorial.samplers import predictor_corrector_sample  # noqa: E402

OUT = ROOT / "diffusion_tutorial/results/score_sde_mnist.jsonl"
TABLE = ROOT / "bench/results/score_sde.md"
DEFAULT_PC = "pc:10:1,anc:20,pc:25:1,anc:50,anc:10"


@dataclass(frozen=True)
class PCSpec:
    """A PC setting: ``steps`` predictor steps with ``corrector_steps`` Langevin steps each."""

    steps: int
    corrector_steps: int
    snr: float = 0.16

    @staticmethod
    def parse(text: str) -> PCSpec:
        kind, *rest = text.strip().split(":")
        if kind == "anc" and len(rest) == 1:
            return PCSpec(int(rest[0]), 0)
        if kind == "pc" and len(rest) in (2, 3):
            snr = float(rest[2]) if len(rest) == 3 else 0.16
            return PCSpec(int(rest[0]), int(rest[1]), snr)
        raise argparse.ArgumentTypeError(f"bad setting {text!r}: use anc:STEPS or pc:STEPS:M[:SNR]")

    def nfe(self) -> int:
        return self.steps * (1 + self.corrector_steps)

    def label(self) -> str:
        if self.corrector_steps == 0:
            return f"ancestral (predictor only), {self.steps} steps"
        return f"PC, {self.steps} steps x (1 + {self.corrector_steps}), snr {self.snr:g}"

    def run(self, model_fn, schedule, x_T: torch.Tensor, generator: torch.Generator):
        """The interface of ``quality.SamplerSpec.run``, so ``quality.generate`` can call it."""
        return predictor_corrector_sample(
            model_fn, schedule, x_T, steps=self.steps, corrector_steps=self.corrector_steps,
            snr=self.snr, generator=generator, progress=False,
        )  # fmt: skip


def load(path: Path = OUT) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(row: dict, path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one short line per write
        f.write(json.dumps(row) + "\n")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def run_pc(args) -> None:
    classifier = pretrained.load_classifier(None, device="cpu")
    (model, schedule), source = load_model("mnist", None, torch.device("cpu"))
    settings = [(s.strip(), PCSpec.parse(s)) for s in args.samplers.split(",") if s.strip()]
    for seed in args.seeds:
        ref, _, floor_fid, floor_kid = mnist_draw(args.n, seed, classifier)
        log(f"seed {seed}: floor FID {floor_fid:.2f}")
        x_T = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
        for name, spec in settings:
            done = {(r["seed"], r["sampler"], r["n"]) for r in load(args.out) if r["part"] == "pc"}
            if (seed, name, args.n) in done:
                continue
            images, _, seconds = generate(
                model, schedule, spec, x_T, args.batch, seed + 10_000, None, False
            )
            feats = classifier_features(classifier, images)
            row = {
                "part": "pc", "model": "mnist", "weights": source, "n": args.n, "seed": seed,
                "sampler": name, "label": spec.label(), "nfe": spec.nfe(),
                "fid": metrics.frechet_distance(feats, ref),
                "kid": metrics.kernel_distance(feats, ref),
                "floor_fid": floor_fid, "floor_kid": floor_kid, "seconds": seconds,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
            }  # fmt: skip
            append(row, args.out)
            log(f"seed {seed} | {row['label']} | FID {row['fid']:.2f} | {seconds:.0f} s")
        write_table(args.out, args.table)


def paired(rows: list[dict], a: str, b: str) -> tuple[float, float, int] | None:
    """Mean and SE over draws of FID(a) - FID(b) on the same x_T, and the number of draws."""
    fa = {r["seed"]: r["fid"] for r in rows if r["sampler"] == a}
    fb = {r["seed"]: r["fid"] for r in rows if r["sampler"] == b}
    d = [fa[s] - fb[s] for s in sorted(fa.keys() & fb.keys())]
    if not d:
        return None
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.mean(d), se, len(d)


def pc_table(rows: list[dict]) -> list[str]:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["sampler"], r["seed"]): r for r in rows}
    floors = {r["seed"]: r["floor_fid"] for r in rows}
    out = [
        f"### Predictor-corrector vs the predictor alone: {metrics.MNIST_FID_NAME}, "
        f"n = {sorted({r['n'] for r in rows})} samples per draw, same x_T per draw",
        "",
        "| sampler | NFE | " + " | ".join(f"FID seed {s}" for s in seeds)
        + " | FID mean ± sd | KID mean | s per draw |",
        "|---|---|" + "---|" * (len(seeds) + 3),
        "| real vs real (floor) | — | " + " | ".join(f"{floors[s]:.2f}" for s in seeds)
        + f" | {mean_std([floors[s] for s in seeds])} | — | — |",
    ]  # fmt: skip
    for sampler in sorted(dict.fromkeys(r["sampler"] for r in rows), key=lambda s: by_nfe(rows, s)):
        got = [by.get((sampler, s)) for s in seeds]
        have = [g for g in got if g]
        out.append(
            f"| {have[0]['label']} | {have[0]['nfe']} | "
            + " | ".join(f"{g['fid']:.2f}" if g else "—" for g in got)
            + f" | {mean_std([g['fid'] for g in have])} "
            f"| {statistics.mean(g['kid'] for g in have):.3g} "
            f"| {statistics.mean(g['seconds'] for g in have):.0f} |"
        )
    out += ["", "All settings step on the leading grid (ddim_sample's default); the predictor alone "
            "is predictor_corrector_sample with corrector_steps=0, i.e. ddim_sample(eta=1). "
            "Paired differences at equal NFE (same x_T and noise seed per draw), mean over draws "
            "± its standard error (negative: PC better):", ""]  # fmt: skip
    samplers = {r["sampler"] for r in rows}
    for a in sorted(samplers):
        if not a.startswith("pc:"):
            continue
        nfe = PCSpec.parse(a).nfe()
        for b in sorted(samplers):
            if b.startswith("anc:") and PCSpec.parse(b).nfe() == nfe:
                got = paired(rows, a, b)
                if got:
                    out.append(
                        f"- FID({a}) - FID({b}) at NFE {nfe}: {got[0]:+.2f} ± {got[1]:.2f} "
                        f"({got[2]} draws)"
                    )
    return out


def by_nfe(rows: list[dict], sampler: str) -> tuple[int, str]:
    return next(r["nfe"] for r in rows if r["sampler"] == sampler), sampler


def write_table(path: Path = OUT, table: Path = TABLE) -> str:
    rows = load(path)
    lines = ["## Part 4, Scores, SDEs and the probability-flow ODE: committed measurements", ""]
    pc = [r for r in rows if r["part"] == "pc"]
    if pc:
        lines += pc_table(pc) + [""]
    lines += bpd_table(rows)
    text = "\n".join(lines) + "\n"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text)
    return text


STRATA = 20  # the bound's strata, as Part 2 ch. 3's reference measurement (K = 20)
BOUND_REFERENCE = (1.729, 0.006)  # Part 2 ch. 3: the first 2,000 test digits, K = 20, seed 1


def stratified_bound(model, x_0, schedule, strata: int, generator) -> dict[str, torch.Tensor]:
    """The variational bound's three parts per image (nats): L_T, the stratified sum of L_(t-1), L_0.

    Part 2 ch. 3's estimator: {2, ..., T} split into ``strata`` consecutive strata with geometric
    edges (merged where rounding makes them equal), one uniform t per stratum and image, each
    term weighted by its stratum's size; L_0 is the discretised decoder, L_T the prior KL.
    """
    edges = torch.logspace(
        math.log10(2), math.log10(schedule.T + 1), strata + 1, dtype=torch.float64
    )
    edges = torch.unique(edges.round().long()).tolist()
    mid = torch.zeros(x_0.shape[0], dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        t = torch.randint(lo, hi, (x_0.shape[0],), generator=generator)
        mid += (hi - lo) * losses.vlb_term(model, x_0, t, schedule, generator=generator).double()
    return {
        "L_T": losses.prior_kl(x_0, schedule).double(),
        "L_mid": mid,
        "L_0": losses.decoder_nll(model, x_0, schedule, generator=generator).double(),
    }


def run_bpd(args) -> None:
    (model, schedule), source = load_model("mnist", None, torch.device("cpu"))
    images = mnist(train=False).images[: args.images]  # (N, 1, 28, 28), the first test digits
    d = images[0].numel()
    x_deq = dequantize(images, torch.Generator().manual_seed(args.seed))  # one u per image
    done = load(args.out)
    if not any(r["part"] == "bound_reference" for r in done):  # the number Part 2 ch. 3 quotes
        append(
            {
                "part": "bound_reference", "model": "mnist", "weights": source,
                "bpd": BOUND_REFERENCE[0], "se": BOUND_REFERENCE[1], "n": 2000, "strata": STRATA,
                "source": "Part 2 ch. 3 (The bound in bits per dimension): the first 2,000 MNIST "
                "test digits, K = 20 strata, seed 1",
            },
            args.out,
        )  # fmt: skip
    for lo in range(0, args.images, args.batch):  # the bound first: cheap, no autograd
        if any(r["part"] == "bound" and r["first"] == lo for r in done):
            continue
        x_0 = images[lo : lo + args.batch]
        start = time.perf_counter()
        with torch.no_grad():
            parts = stratified_bound(
                model, x_0, schedule, STRATA, torch.Generator().manual_seed(lo)
            )
        total = sum(parts.values())
        row = {
            "part": "bound", "model": "mnist", "weights": source, "first": lo, "n": len(x_0),
            "strata": STRATA, "bpd": (total / (d * math.log(2))).tolist(),
            **{k: v.tolist() for k, v in parts.items()},
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
        }  # fmt: skip
        append(row, args.out)
        log(f"bound, images {lo}..{lo + len(x_0) - 1}: {statistics.mean(row['bpd']):.3f} bpd")
    for steps in args.steps:
        for lo in range(0, args.images, args.batch):
            key = ("bpd", steps, args.probes, lo)
            if any(
                (r["part"], r.get("steps"), r.get("probes"), r.get("first")) == key for r in done
            ):
                continue
            x = x_deq[lo : lo + args.batch]
            start = time.perf_counter()
            got = ode_likelihood(
                model, schedule, x, steps=steps, probes=args.probes,
                generator=torch.Generator().manual_seed(args.seed + 1 + lo), progress=False,
            )  # fmt: skip
            row = {
                "part": "bpd", "model": "mnist", "weights": source, "first": lo, "n": len(x),
                "steps": steps, "nfe": got.nfe, "probes": args.probes, "dequantize_seed": args.seed,
                "bpd": bits_per_dim(got.log_p, d).tolist(),
                "bpd_per_probe": bits_per_dim(got.log_p_per_probe, d).tolist(),
                "prior_bpd": bits_per_dim(got.prior_log_p, d, dequantized=False).tolist(),
                "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
            }  # fmt: skip
            append(row, args.out)
            log(
                f"ODE, {steps} Heun steps, images {lo}..{lo + len(x) - 1}: "
                f"{statistics.mean(row['bpd']):.3f} bpd, {row['seconds']:.0f} s"
            )
    write_table(args.out, args.table)


def bpd_summary(rows: list[dict]) -> dict:
    """Mean bpd, its SE over images, and the probes' share of it, from rows of one setting."""
    bpd = [b for r in sorted(rows, key=lambda r: r["first"]) for b in r["bpd"]]
    n = len(bpd)
    out = {"n": n, "mean": statistics.mean(bpd)}
    out["se_images"] = statistics.stdev(bpd) / math.sqrt(n) if n > 1 else float("nan")
    per_probe = [list(col) for r in rows for col in zip(*r.get("bpd_per_probe", []), strict=True)]
    if per_probe and len(per_probe[0]) > 1:
        var = [statistics.variance(p) for p in per_probe]  # (N,) spread over probes, one image
        probes = len(per_probe[0])
        out["sd_one_probe"] = math.sqrt(statistics.mean(var))  # one probe, one image
        out["se_probes"] = math.sqrt(statistics.mean(var) / probes / n)  # of the mean over images
    return out


def bpd_table(rows: list[dict]) -> list[str]:
    bound = [r for r in rows if r["part"] == "bound"]
    ode = [r for r in rows if r["part"] == "bpd"]
    if not (bound or ode):
        return []
    out = [
        "### Bits per dimension of the shipped `mnist` model on the first MNIST test digits",
        "",
        "| estimate | NFE per image | images | bpd | SE over images | SD of one probe | "
        "probes' share of the SE | s per image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if bound:
        s = bpd_summary(bound)
        sec = sum(r["seconds"] for r in bound) / s["n"]
        out.append(
            f"| variational bound (Part 2 ch. 3, K = {bound[0]['strata']} strata) "
            f"| {bound[0]['strata'] + 1} | {s['n']} | {s['mean']:.3f} | {s['se_images']:.3f} "
            f"| — | — | {sec:.2f} |"
        )
    means = {}
    for steps in sorted({r["steps"] for r in ode}):
        got = [r for r in ode if r["steps"] == steps]
        s = bpd_summary(got)
        means[steps] = s
        sec = sum(r["seconds"] for r in got) / s["n"]
        out.append(
            f"| probability-flow ODE, {steps} Heun steps, {got[0]['probes']} Rademacher probes "
            f"| {got[0]['nfe']} | {s['n']} | {s['mean']:.3f} | {s['se_images']:.3f} "
            f"| {s.get('sd_one_probe', float('nan')):.3f} | {s.get('se_probes', float('nan')):.4f} "
            f"| {sec:.1f} |"
        )
    out += [
        "",
        f"Part 2 ch. 3's reference for the bound: {BOUND_REFERENCE[0]} ± {BOUND_REFERENCE[1]} bpd "
        "(first 2,000 test digits). The ODE values use uniform dequantisation (one u per image, "
        "the same for every step count) and the constant -log2(2/255) = 6.994 bits; the bound is "
        "for the discrete levels, with its discretised decoder.",
        "",
    ]
    per_image = {
        steps: {
            r["first"] + i: b for r in ode if r["steps"] == steps for i, b in enumerate(r["bpd"])
        }
        for steps in means
    }

    def paired_images(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
        """Mean and SE over the images in both of b - a."""
        diff = [b[i] - a[i] for i in sorted(a.keys() & b.keys())]
        se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        return statistics.mean(diff), se, len(diff)

    steps_sorted = sorted(means)
    for s1, s2 in zip(steps_sorted, steps_sorted[1:], strict=False):
        mean, se, n = paired_images(per_image[s1], per_image[s2])
        out.append(
            f"- Step-size bias: {s2} vs {s1} Heun steps differ by {mean:+.4f} ± {se:.4f} bpd "
            f"(paired over the same {n} images, probes and dequantisation; ± is the SE over "
            f"images)."
        )
    if len(steps_sorted) >= 3:  # the observed rate on the images that have all three
        s1, s2, s3 = steps_sorted[-3:]
        common = sorted(per_image[s1].keys() & per_image[s2].keys() & per_image[s3].keys())
        m = {s: statistics.mean(per_image[s][i] for i in common) for s in (s1, s2, s3)}
        ratio = (m[s2] - m[s1]) / (m[s3] - m[s2])
        left = (m[s3] - m[s2]) / (ratio - 1)  # geometric tail of the differences
        out.append(
            f"- On the {len(common)} images with all three: the differences shrink by a factor "
            f"{ratio:.1f} per doubling of the steps (2^{math.log2(ratio):.1f}; Heun's order 2 "
            f"would give 4). Extrapolated, the step-size error left is about {left:.4f} bpd at "
            f"{s3} steps and {left + m[s3] - m[s2]:.4f} bpd at {s2} (the ODE value is "
            "underestimated: more steps raise it)."
        )
    if bound and means:
        bound_bpd = {r["first"] + i: b for r in bound for i, b in enumerate(r["bpd"])}
        best = max(s for s in steps_sorted if means[s]["n"] == max(m["n"] for m in means.values()))
        mean, se, n = paired_images(bound_bpd, per_image[best])
        out.append(
            f"- ODE ({best} Heun steps) minus the bound, paired over the same {n} images: "
            f"{mean:+.3f} ± {se:.3f} bpd (SE over images; it includes the bound's stratified "
            "sampling of t)."
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="the JSON-lines results file")
    p.add_argument("--table", type=Path, default=TABLE, help="the markdown table it writes")
    sub = p.add_subparsers(dest="part", required=True)
    pc = sub.add_parser("pc", help="PC vs the predictor alone at equal NFE (MNIST-FID)")
    pc.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    pc.add_argument("--n", type=int, default=500)
    pc.add_argument("--batch", type=int, default=250)
    pc.add_argument("--samplers", default=DEFAULT_PC)
    pc.add_argument("--threads", type=int, default=None)
    bpd = sub.add_parser("bpd", help="ODE bits per dimension (Hutchinson) and the bound")
    bpd.add_argument("--images", type=int, default=128, help="the first N MNIST test digits")
    bpd.add_argument(
        "--steps", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64],
        help="Heun step counts (comma-separated): two show the solver's step-size bias",
    )  # fmt: skip
    bpd.add_argument("--probes", type=int, default=2, help="Rademacher probes per image")
    bpd.add_argument("--batch", type=int, default=16, help="images per call (one JSON line each)")
    bpd.add_argument("--seed", type=int, default=0, help="seed of the dequantisation noise")
    bpd.add_argument("--threads", type=int, default=None)
    sub.add_parser("table", help="print the tables and write bench/results/score_sde.md")
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.part == "pc":
        run_pc(args)
    elif args.part == "bpd":
        run_bpd(args)
    else:
        print(write_table(args.out, args.table))


if __name__ == "__main__":
    main()

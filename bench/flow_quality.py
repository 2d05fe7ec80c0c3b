"""MNIST-FID of a flow-matching checkpoint (flow Euler / Heun) next to the shipped `mnist`'s DDIM.

A draw (``--seed``) fixes, exactly as ``bench/quality.py`` and ``bench/mnist_sweep.py`` do, ``--n``
MNIST test images (the reference), ``--n`` training images (the real-vs-real floor) and the
``--n`` starting points ``torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))``,
shared by every sampler of the draw (the flow samplers start from them at flow time 0, DDIM at
t = T). Samplers: ``euler:STEPS`` and ``heun:STEPS`` (``flow_sample`` on the checkpoint, uniform
flow-time grid; Heun costs 2 STEPS - 1 network calls), ``ddim:STEPS`` (the shipped eps-model
``mnist``, eta = 0) and ``eps-euler:STEPS`` (flow Euler on ``mnist``'s velocity, no training).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/flow_quality.py \\
        --weights _build/flow_sizing/run/flow500.safetensors --n 500 \\
        --samplers euler:10,heun:6,euler:20,heun:10,ddim:10,ddim:20

MNIST-FID uses the book's own classifier features (not Inception FID); read it against the floor.
Book: Flow matching (Part 4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, mnist_draw  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.core.flow_matching import velocity_from_eps_model, velocity_model  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.samplers import ddim_sample, flow_sample  # noqa: E402


def run(
    kind: str, steps: int, flow, eps, x_T: torch.Tensor, batch: int
) -> tuple[torch.Tensor, int]:
    """Samples (n, 1, 28, 28) clamped to [-1, 1] and the number of network calls."""
    out = []
    for lo in range(0, len(x_T), batch):
        x = x_T[lo : lo + batch]
        if kind in ("euler", "heun"):
            x_0 = flow_sample(flow, x, steps=steps, method=kind, progress=False)
        elif kind == "eps-euler":
            x_0 = flow_sample(eps[2], x, steps=steps, progress=False)
        else:
            x_0 = ddim_sample(eps[0], eps[1], x, steps=steps, progress=False)
        out.append(x_0.clamp(-1, 1))
    return torch.cat(out), (2 * steps - 1 if kind == "heun" else steps)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", type=Path, help="a flow-matching .safetensors (--objective flow)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--samplers", default="euler:10,heun:6,euler:20,heun:10,ddim:10,ddim:20")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    classifier = pretrained.load_classifier()
    ref, _, floor, _ = mnist_draw(args.n, args.seed, classifier)
    x_T = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed))

    eps_model, schedule = pretrained.load("mnist")
    eps = (eps_model, schedule, velocity_from_eps_model(eps_model, schedule))
    flow = None
    if args.weights is not None:
        net, flow_schedule = pretrained.load_file(args.weights)
        flow = velocity_model(net, flow_schedule)
    lines = [
        f"MNIST-FID, n = {args.n}, seed {args.seed}; real-vs-real floor {floor:.2f}; "
        f"weights {args.weights}",
        "",
        "| sampler | NFE | MNIST-FID | FID / floor | s |",
        "|---|---|---|---|---|",
    ]
    for spec in args.samplers.split(","):
        kind, steps = spec.split(":")[0], int(spec.split(":")[1])
        if kind in ("euler", "heun") and flow is None:
            continue
        start = time.perf_counter()
        with torch.no_grad():
            images, nfe = run(kind, steps, flow, eps, x_T, args.batch)
        seconds = time.perf_counter() - start
        fid = metrics.frechet_distance(classifier_features(classifier, images), ref)
        lines.append(f"| {spec} | {nfe} | {fid:.2f} | {fid / floor:.2f} | {seconds:.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

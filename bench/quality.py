"""Sample quality of the shipped MNIST models, sampler by sampler, on the same starting noise.

Each *draw* (seeds ``--seed``, ``--seed + 1``, ...) fixes ``--n`` starting points x_T, the noise
stream of the stochastic samplers, ``--n`` MNIST test images (the reference) and ``--n`` training
images (the floor). Within a draw every sampler starts from the same x_T, so the differences
between rows are the samplers'; across draws one sees how much MNIST-FID moves with the draw.
Reported per sampler, on one markdown line:

* MNIST-FID (the book's own classifier features, NOT comparable to Inception FID) per draw and
  its mean ± standard deviation over draws; the first line gives the real-vs-real floor per draw
  (``--n`` training against the same ``--n`` test images: what a perfect model would score);
* the fraction of samples the classifier labels with confidence >= 0.9 (mean over draws);
* for the conditional model, the fraction classified as the requested digit (labels 0..9 in
  turn), with classifier-free guidance at each ``--guidance`` scale;
* wall time of sampling per draw (synchronised on CUDA).

Sampler settings (``--samplers``, comma-separated; GRID is leading, uniform, quadratic or logsnr
and defaults to the sampler's own): ``ddpm`` (all T steps), ``ddim:STEPS:ETA[:GRID]``,
``hat:STEPS[:GRID]`` (DDPM's ancestral step on a subsequence with the DDIM paper's sigma-hat),
``dpm:STEPS[:ORDER][:GRID]`` (DPM-Solver++, default order 2), ``sde:STEPS[:GRID]``
(SDE-DPM-Solver++(2)).

Reproduce ``bench/results/quality_defaults.md`` (CPU, float32, 2 threads; ~2 s per network
evaluation of 1,000 samples on 2 free cores, 110 evaluations per draw). Draws run one after the
other and the table is rewritten after each, so a time-out still leaves the finished draws:

    nice -n 5 .venv/bin/python bench/quality.py --device cpu --threads 2 --models mnist \
        --n 1000 --batch 500 --draws 3 --samplers dpm:20,ddim:50:0,sde:20,dpm:20:3 \
        --out bench/results/quality_defaults.md

Book: Evaluating samples; the model cards quote its output.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.core.forward import randn_like  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.networks.guidance import classifier_free_guidance  # noqa: E402
from diffusion_tutorial.runtime import default_device  # noqa: E402
from diffusion_tutorial.samplers import (  # noqa: E402
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    euler_sample,
    flow_sample,
    heun_sample,
    leading_timesteps,
    logsnr_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)
from diffusion_tutorial.samplers.common import ddim_step, predict, resolve_timesteps  # noqa: E402

FLOW_KINDS = ("flow-euler", "flow-heun")
GRIDS = {
    "leading": leading_timesteps,
    "uniform": uniform_timesteps,
    "quadratic": quadratic_timesteps,
    "logsnr": logsnr_timesteps,
}
DEFAULT_SAMPLERS = "ddpm,ddim:20:0,ddim:50:0,ddim:50:1,dpm:10,dpm:20,dpm:20:3,sde:20"


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting: kind, NFE, DDIM's eta, DPM-Solver++'s order and a grid from GRIDS."""

    # "ddpm", "ddim", "hat" (DDPM's sigma-hat on a subsequence), "dpm", "sde", "heun"/"euler"
    # (EDM), "flow-euler"/"flow-heun" (flow_sample on a velocity field, uniform flow-time grid)
    kind: str
    steps: int | None  # None: DDPM with all T steps
    eta: float = 0.0
    order: int | None = None  # None: the sampler's default
    grid: str | None = None  # None: the sampler's default

    @staticmethod
    def parse(text: str) -> SamplerSpec:
        kind, *rest = text.strip().split(":")
        grid = rest.pop() if rest and rest[-1] in GRIDS else None
        try:
            if kind == "ddpm" and not rest and grid is None:
                return SamplerSpec("ddpm", None)
            if kind == "ddim" and len(rest) == 2:
                return SamplerSpec("ddim", int(rest[0]), eta=float(rest[1]), grid=grid)
            if kind == "dpm" and len(rest) in (1, 2):
                order = int(rest[1]) if len(rest) == 2 else None
                return SamplerSpec("dpm", int(rest[0]), order=order, grid=grid)
            if kind in ("sde", "hat") and len(rest) == 1:
                return SamplerSpec(kind, int(rest[0]), grid=grid)
            if kind in ("heun", "euler", *FLOW_KINDS) and len(rest) == 1 and grid is None:
                return SamplerSpec(kind, int(rest[0]))
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(
            f"bad sampler {text!r}: use ddpm, ddim:STEPS:ETA[:GRID], hat:STEPS[:GRID], "
            f"dpm:STEPS[:ORDER][:GRID], sde:STEPS[:GRID] with GRID in {sorted(GRIDS)}, or "
            "heun:STEPS / euler:STEPS (EDM, Karras sigmas with rho = 7), or flow-euler:STEPS / "
            "flow-heun:STEPS (a flow-matching velocity field, uniform flow-time grid)"
        )

    def nfe(self, schedule) -> int:
        """Network evaluations per sample: T for DDPM, 2 steps - 1 for EDM Heun, else steps."""
        if self.steps is None:
            return schedule.T
        return 2 * self.steps - 1 if self.kind in ("heun", "flow-heun") else self.steps

    def label(self, schedule) -> str:
        grid = f", {self.grid} grid" if self.grid else ""
        if self.kind == "ddpm":
            return f"DDPM {schedule.T}"
        if self.kind == "ddim":
            return f"DDIM {self.steps}, η={self.eta:g}{grid}"
        if self.kind == "sde":
            return f"SDE-DPM-Solver++(2) {self.steps}{grid}"
        if self.kind == "hat":
            return f"DDPM σ̂ {self.steps}{grid}"
        if self.kind in ("heun", "euler"):
            return f"EDM {self.kind.capitalize()} {self.steps} steps, Karras ρ=7 grid"
        if self.kind in FLOW_KINDS:
            return f"flow {self.kind[5:].capitalize()} {self.steps} steps, uniform flow time"
        return f"DPM-Solver++({self.order or 2}M) {self.steps}{grid}"

    def run(self, model_fn, schedule, x_T: torch.Tensor, generator: torch.Generator):
        kw = {"timesteps": GRIDS[self.grid]} if self.grid else {}
        if self.kind == "ddpm":
            return ddpm_sample(model_fn, schedule, x_T, generator=generator, progress=False)
        if self.kind == "ddim":
            return ddim_sample(
                model_fn, schedule, x_T, steps=self.steps, eta=self.eta, generator=generator,
                progress=False, **kw,
            )  # fmt: skip
        if self.kind == "hat":
            return ddpm_hat_sample(
                model_fn, schedule, x_T, steps=self.steps, generator=generator, **kw
            )
        if self.kind == "sde":
            return dpm_solver_sde_sample(
                model_fn, schedule, x_T, steps=self.steps, generator=generator, progress=False, **kw
            )
        if self.kind == "heun":
            return heun_sample(model_fn, schedule, x_T, steps=self.steps, progress=False)
        if self.kind == "euler":
            return euler_sample(model_fn, schedule, x_T, steps=self.steps, progress=False)
        if self.kind in FLOW_KINDS:  # model_fn: a velocity field u(x, flow_t); schedule unused
            method = self.kind[5:]
            return flow_sample(model_fn, x_T, steps=self.steps, method=method, progress=False)
        if self.order is not None:
            kw["order"] = self.order
        return dpm_solver_sample(model_fn, schedule, x_T, steps=self.steps, progress=False, **kw)


@torch.no_grad()
def ddpm_hat_sample(model_fn, schedule, x_T, *, steps, generator, timesteps=leading_timesteps):
    """DDPM's ancestral step on a subsequence with the larger variance: the DDIM paper's sigma-hat.

    From t to s < t the step is Gaussian with the posterior mean of q(x_s | x_t, x0_hat) and the
    variance sigma_hat^2 = 1 - alpha_bar[t] / alpha_bar[s] (the "beta" of the jump; Song et al. 2021,
    Table 1 and sec. 5.1), larger than eta = 1's posterior variance. The last step returns the mean.
    """
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    x_t = x_T
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        eps_hat, x0_hat = predict(model_fn, x_t, t, alpha_bar[t], False)
        # the posterior mean: DDIM's eta = 1 step without its noise (ddim_step, eqs. 12 and 16)
        x_t = ddim_step(x0_hat, eps_hat, alpha_bar[t], alpha_bar[s], 1.0, noise=False)
        if s > 0:  # then noise of the larger variance sigma_hat^2 (Song et al. Table 1, sec. 5.1)
            sigma_hat = math.sqrt(1 - alpha_bar[t] / alpha_bar[s])
            x_t = x_t + sigma_hat * randn_like(x_t, generator)
    return x_t


def parse_samplers(text: str) -> list[SamplerSpec]:
    return [SamplerSpec.parse(s) for s in text.split(",") if s.strip()]


def parse_floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(model, schedule, spec, x_T, batch, seed, guidance, amp, clamp=True):
    """Samples (n, C, H, W) on the CPU from the given x_T (n, C, H, W), the requested labels and seconds.

    ``clamp``: clip to the images' range [-1, 1] (never for latents, which decode first).

    The stochastic samplers draw their noise from a generator seeded with ``seed``, so two
    samplers of one draw share x_T and the noise stream (as far as they draw the same amount).
    """
    device = x_T.device
    gen = torch.Generator(device=device).manual_seed(seed)
    y_all = torch.arange(len(x_T)) % 10  # (n,) requested digits, balanced
    out = []
    sync(device)
    start = time.perf_counter()
    for lo in range(0, len(x_T), batch):
        x_batch = x_T[lo : lo + batch]  # (b, C, H, W)
        y = y_all[lo : lo + len(x_batch)].to(device)
        if guidance is None:
            model_fn = model
        elif guidance == 1.0:  # the plain conditional model: one pass, no guidance needed

            def model_fn(x_t, t, y=y):
                return model(x_t, t, y)
        else:
            model_fn = classifier_free_guidance(model, y, guidance)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x_0 = spec.run(model_fn, schedule, x_batch, gen)
        out.append((x_0.float().clamp(-1, 1) if clamp else x_0.float()).cpu())
    sync(device)
    return torch.cat(out), y_all, time.perf_counter() - start


def mnist_draw(n: int, seed: int, classifier) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One draw of every MNIST benchmark: (reference features, training digits, floor FID, KID).

    ``Generator().manual_seed(seed)`` draws ``n`` test digits (the reference), then ``n``
    training digits (the real-vs-real floor). Every bench script draws through here, so files
    written by different scripts share reference and floor seed by seed and pair by draw.
    """
    gen = torch.Generator().manual_seed(seed)
    reference, _ = metrics.mnist_subset(n, train=False, generator=gen)
    real_train, _ = metrics.mnist_subset(n, train=True, generator=gen)
    ref = classifier_features(classifier, reference)  # (n, hidden)
    real = classifier_features(classifier, real_train)
    return ref, real_train, metrics.frechet_distance(real, ref), metrics.kernel_distance(real, ref)


def load_model(name: str, weights_dir: Path | None, device: torch.device):
    if weights_dir is None:
        entry = pretrained.REGISTRY[name]
        return pretrained.load(name, device=device), f"shipped ({entry.filename})"
    for filename in (f"{name}.safetensors", pretrained.REGISTRY[name].filename):
        path = weights_dir / filename
        if path.is_file():
            digest = pretrained.sha256_file(path)[:12]
            return pretrained.load_file(path, device=device), f"{path} (sha256 {digest}…)"
    raise FileNotFoundError(f"no {name}.safetensors in {weights_dir}")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--n", type=int, default=2000, help="samples per setting and draw (and real images)"
    )
    p.add_argument("--draws", type=int, default=1, help="draws of x_T (seeds seed, seed + 1, ...)")
    p.add_argument("--batch", type=int, default=500, help="images per sampler call")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--models", default="mnist,mnist-cond", help="comma-separated checkpoints")
    p.add_argument(
        "--weights-dir", type=Path, default=None,
        help="load <name>.safetensors from here (no hash check) instead of the package",
    )  # fmt: skip
    p.add_argument(
        "--classifier", type=Path, default=None, help="classifier file (default: shipped)"
    )
    p.add_argument(
        "--samplers", type=parse_samplers, default=parse_samplers(DEFAULT_SAMPLERS),
        help=f"comma-separated settings (default: {DEFAULT_SAMPLERS})",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=parse_floats, default=[3.0],
        help="guidance scales for mnist-cond, all samplers (1 = plain conditional)",
    )  # fmt: skip
    p.add_argument(
        "--extra-guidance", type=parse_floats, default=[0.0, 1.0],
        help="more scales for mnist-cond, --extra-samplers only",
    )  # fmt: skip
    p.add_argument("--extra-samplers", type=parse_samplers, default=parse_samplers("dpm:20"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="sample under bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (same maths)")
    p.add_argument("--out", type=Path, default=Path("quality.md"), help="markdown output file")
    args = p.parse_args(argv)
    if args.n < 2 or args.batch < 1 or args.draws < 1:
        p.error("--n must be >= 2, --batch and --draws >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    seeds = [args.seed + k for k in range(args.draws)]

    # Per draw: the reference (test) features and the real-vs-real floor, computed once.
    classifier = pretrained.load_classifier(args.classifier, device=device)
    refs, floors = [], []
    for seed in seeds:
        ref, _, floor, _ = mnist_draw(args.n, seed, classifier)
        refs.append(ref)  # (n, hidden)
        floors.append(floor)
        log(f"draw {seed}: real-vs-real {metrics.MNIST_FID_NAME} at n={args.n}: {floors[-1]:.2f}")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    draw_cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"## Sample quality: {metrics.MNIST_FID_NAME}, {args.n} samples per draw",
        "",
        f"Device: {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {'bf16 autocast' if args.amp else 'float32 (TF32 on CUDA)'}"
        f"{', torch.compile' if args.compile else ''}. Every sampler of a draw starts from the "
        f"same {args.n} x_T. MNIST-FID uses the book's own classifier features and is not "
        f"comparable to Inception FID.",
        "",
        f"| model | sampler | NFE | w | {draw_cols} | mean ± std | FID / floor "
        f"| conf ≥ 0.9 | requested class | s per draw |",
        "|" + "---|" * (9 + len(seeds)),
        f"| real vs real (floor) | — | — | — | {' | '.join(f'{f:.2f}' for f in floors)} "
        f"| {mean_std(floors)} | 1.00 | — | — | — |",
    ]
    rows: list[str] = []  # finished models' rows

    def write(partial: list[str]) -> str:  # the table so far: a time-out still leaves results
        text = "\n".join(lines + rows + partial) + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return text

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        (model, schedule), source = load_model(name, args.weights_dir, device)
        lines.insert(3, f"- `{name}`: {source}, T = {schedule.T}")
        if args.compile:
            model = torch.compile(model)
        conditional = model.config.num_classes is not None
        runs = [(s, None) for s in args.samplers]
        if conditional:
            runs = [(s, w) for w in args.guidance for s in args.samplers]
            runs += [(s, w) for w in args.extra_guidance for s in args.extra_samplers]
        runs = [(s, w) for s, w in runs if s.steps is None or s.steps <= schedule.T]
        cfg = model.config
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        results = {run: {"fid": [], "conf": [], "acc": [], "sec": []} for run in runs}
        partial: list[str] = []
        # Draws outermost: every sampler of a draw shares its x_T, and each finished draw is saved.
        for seed, ref in zip(seeds, refs, strict=True):
            gen = torch.Generator(device=device).manual_seed(seed)
            x_T = torch.randn((args.n, *shape), generator=gen, device=device)  # (n, C, H, W)
            for spec, w in runs:
                images, y, seconds = generate(
                    model, schedule, spec, x_T, args.batch, seed + 10_000, w, args.amp
                )
                r = results[(spec, w)]
                r["fid"].append(
                    metrics.frechet_distance(classifier_features(classifier, images), ref)
                )
                r["conf"].append(metrics.confident_fraction(classifier, images))
                if conditional:
                    r["acc"].append(metrics.class_accuracy(classifier, images, y))
                r["sec"].append(seconds)
                log(
                    f"seed {seed} | {name} | {spec.label(schedule)} | w={w} | {r['fid'][-1]:.2f} | {seconds:.0f} s"
                )
            partial = []
            for (spec, w), r in results.items():
                nfe = spec.nfe(schedule)
                done = len(r["fid"])
                fids = " | ".join([f"{f:.2f}" for f in r["fid"]] + ["—"] * (len(seeds) - done))
                ratio = statistics.mean(
                    f / fl for f, fl in zip(r["fid"], floors[:done], strict=True)
                )
                acc = f"{statistics.mean(r['acc']):.1%}" if conditional else "—"
                partial.append(
                    f"| {name} | {spec.label(schedule)} | {nfe} | {'—' if w is None else f'{w:g}'} "
                    f"| {fids} | {mean_std(r['fid'])} | {ratio:.2f} "
                    f"| {statistics.mean(r['conf']):.1%} | {acc} | {statistics.mean(r['sec']):.1f} |"
                )
            write(partial)
        rows.extend(partial)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text = write([])
    print(text)
    return text


if __name__ == "__main__":
    main()

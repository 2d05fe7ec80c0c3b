"""Sample quality and speed of the shipped MNIST models, sampler by sampler.

For each checkpoint ("mnist", "mnist-cond") and each sampler (DDPM with all T steps, DDIM with
10/20/50/100 steps and eta 0 and 1, DPM-Solver++ with 10/20 NFE, its SDE variant with 20 NFE),
each with the package's default step spacing and order, it draws ``--n`` samples and reports,
on one markdown line:

* MNIST-FID (own classifier features) against ``--n`` MNIST test images, next to the
  real-vs-real floor (``--n`` training images against the same test images). It is NOT
  comparable to Inception FID;
* the fraction of samples the classifier labels with confidence >= 0.9;
* for the conditional model, the fraction classified as the requested digit (labels 0..9 in
  turn), with classifier-free guidance at each ``--guidance`` scale (``--extra-guidance`` scales
  only for ``--extra-samplers``);
* wall time of sampling alone (synchronised on CUDA) and images per second.

Usage (repository root)::

    python bench/quality.py --n 2000 --device cuda --batch 1000 --out quality.md
    python bench/quality.py --weights-dir $OUT/weights ...   # freshly exported, no hash check
    python bench/quality.py --n 16 --batch 16 --device cpu --samplers ddim:10:0,dpm:10  # smoke test
    python bench/quality.py --models mnist --samplers sde:20,sde:20:power   # another step grid

Book: Evaluating samples; the model cards quote its output.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from diffusion_tutorial import pretrained  # noqa: E402
from diffusion_tutorial.evaluation import metrics  # noqa: E402
from diffusion_tutorial.evaluation.classifier import classifier_features  # noqa: E402
from diffusion_tutorial.networks.guidance import classifier_free_guidance  # noqa: E402
from diffusion_tutorial.runtime import default_device  # noqa: E402
from diffusion_tutorial.samplers import (  # noqa: E402
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    logsnr_timesteps,
    power_timesteps,
    uniform_timesteps,
)
from diffusion_tutorial.samplers.dpm_solver import ORDER3_MAX_STEP  # noqa: E402

# Step grids an sde spec may name instead of the sampler's default: "sde:20:power".
SPACINGS = {"logsnr": logsnr_timesteps, "power": power_timesteps, "uniform": uniform_timesteps}

DEFAULT_SAMPLERS = "ddpm,ddim:10:0,ddim:20:0,ddim:50:0,ddim:100:0,ddim:10:1,ddim:20:1,ddim:50:1,ddim:100:1,dpm:10,dpm:20,sde:20"  # noqa: E501


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting: its kind, NFE, DDIM's eta and (sde only) a step grid from SPACINGS."""

    kind: str  # "ddpm", "ddim", "dpm" (DPM-Solver++) or "sde" (SDE-DPM-Solver++(2))
    steps: int | None  # None: DDPM with all T steps
    eta: float = 0.0
    spacing: str | None = None  # None: the sampler's default grid

    @staticmethod
    def parse(text: str) -> SamplerSpec:
        parts = text.strip().split(":")
        if parts[0] == "ddpm" and len(parts) == 1:
            return SamplerSpec("ddpm", None)
        if parts[0] == "ddim" and len(parts) == 3:
            return SamplerSpec("ddim", int(parts[1]), float(parts[2]))
        if parts[0] in ("dpm", "sde") and len(parts) == 2:
            return SamplerSpec(parts[0], int(parts[1]))
        if parts[0] == "sde" and len(parts) == 3 and parts[2] in SPACINGS:
            return SamplerSpec("sde", int(parts[1]), spacing=parts[2])
        raise argparse.ArgumentTypeError(
            f"bad sampler {text!r}: use ddpm, ddim:STEPS:ETA, dpm:STEPS (DPM-Solver++) or "
            f"sde:STEPS[:SPACING] (SDE-DPM-Solver++; SPACING in {sorted(SPACINGS)})"
        )

    def label(self, schedule) -> str:
        T = schedule.T
        if self.kind == "ddpm":
            return f"DDPM {T}"
        if self.kind == "ddim":
            return f"DDIM {self.steps}, η={self.eta:g}"
        if self.kind == "sde":
            grid = f", {self.spacing}_timesteps" if self.spacing else ""
            return f"SDE-DPM-Solver++(2) {self.steps}{grid}"
        # The default grid is uniform in lambda: order 3 unless its steps exceed ORDER3_MAX_STEP.
        h = (schedule.lam[1] - schedule.lam[T]).item() / max(self.steps - 1, 1)
        return f"DPM-Solver++({3 if h <= ORDER3_MAX_STEP else 2}M) {self.steps}"

    def run(self, model_fn, schedule, x_T: torch.Tensor, generator: torch.Generator):
        if self.kind == "ddpm":
            return ddpm_sample(model_fn, schedule, x_T, generator=generator, progress=False)
        if self.kind == "ddim":
            return ddim_sample(
                model_fn,
                schedule,
                x_T,
                steps=self.steps,
                eta=self.eta,
                generator=generator,
                progress=False,
            )
        if self.kind == "sde":
            grid = {"timesteps": SPACINGS[self.spacing]} if self.spacing else {}
            return dpm_solver_sde_sample(
                model_fn,
                schedule,
                x_T,
                steps=self.steps,
                generator=generator,
                progress=False,
                **grid,
            )
        return dpm_solver_sample(model_fn, schedule, x_T, steps=self.steps, progress=False)


def parse_samplers(text: str) -> list[SamplerSpec]:
    return [SamplerSpec.parse(s) for s in text.split(",") if s.strip()]


def parse_floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(model, schedule, spec, n, batch, device, seed, guidance, amp):
    """Draw n samples (n, 1, 28, 28) in batches; returns (images on CPU, requested labels, seconds)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    y_all = torch.arange(n) % 10  # (n,) requested digits, balanced
    out = []
    sync(device)
    start = time.perf_counter()
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        x_T = torch.randn((b, *shape), generator=gen, device=device)  # (b, C, H, W)
        if guidance is None:
            model_fn = model
        elif guidance == 1.0:  # the plain conditional model: one pass, no guidance needed
            y = y_all[lo : lo + b].to(device)

            def model_fn(x_t, t, y=y):
                return model(x_t, t, y)
        else:
            model_fn = classifier_free_guidance(model, y_all[lo : lo + b].to(device), guidance)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x_0 = spec.run(model_fn, schedule, x_T, gen)
        out.append(x_0.float().clamp(-1, 1).cpu())
    sync(device)
    return torch.cat(out), y_all, time.perf_counter() - start


def load_model(name: str, weights_dir: Path | None, device: torch.device):
    if weights_dir is None:
        return pretrained.load(
            name, device=device
        ), f"shipped ({pretrained.REGISTRY[name].filename})"
    for filename in (f"{name}.safetensors", pretrained.REGISTRY[name].filename):
        path = weights_dir / filename
        if path.is_file():
            digest = pretrained.sha256_file(path)[:12]
            return pretrained.load_file(path, device=device), f"{path} (sha256 {digest}…)"
    raise FileNotFoundError(f"no {name}.safetensors in {weights_dir}")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per setting (and real images)")
    p.add_argument("--batch", type=int, default=500, help="images per sampler call")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--models", default="mnist,mnist-cond", help="comma-separated checkpoints")
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="load <name>.safetensors from here (no hash check) instead of the package",
    )
    p.add_argument(
        "--classifier", type=Path, default=None, help="classifier file (default: shipped)"
    )
    p.add_argument(
        "--samplers",
        type=parse_samplers,
        default=parse_samplers(DEFAULT_SAMPLERS),
        help=f"comma-separated settings (default: {DEFAULT_SAMPLERS})",
    )
    p.add_argument(
        "--guidance",
        type=parse_floats,
        default=[3.0],
        help="guidance scales for mnist-cond, all samplers (1 = plain conditional)",
    )
    p.add_argument(
        "--extra-guidance",
        type=parse_floats,
        default=[0.0, 1.0],
        help="more scales for mnist-cond, --extra-samplers only",
    )
    p.add_argument("--extra-samplers", type=parse_samplers, default=parse_samplers("dpm:20"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="sample under bfloat16 autocast")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (compiled in the warm-up; same float32 maths, faster)",
    )
    p.add_argument("--out", type=Path, default=Path("quality.md"), help="markdown output file")
    args = p.parse_args(argv)
    if args.n < 2 or args.batch < 1:
        p.error("--n must be >= 2 and --batch >= 1")

    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    classifier = pretrained.load_classifier(args.classifier, device=device)
    gen = torch.Generator().manual_seed(args.seed)
    reference, _ = metrics.mnist_subset(args.n, train=False, generator=gen)
    real_train, _ = metrics.mnist_subset(args.n, train=True, generator=gen)
    ref_features = classifier_features(classifier, reference)  # (n, hidden), computed once
    floor = metrics.frechet_distance(classifier_features(classifier, real_train), ref_features)
    real_conf = metrics.confident_fraction(classifier, reference)
    log(f"real-vs-real {metrics.MNIST_FID_NAME} at n={args.n}: {floor:.2f}")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    lines = [
        f"## Sample quality: {metrics.MNIST_FID_NAME}, {args.n} samples per line",
        "",
        f"Device: {device_name}, torch {torch.__version__}, batch {args.batch}, "
        f"{'bf16 autocast' if args.amp else 'float32 (TF32 on CUDA)'}, "
        f"{'torch.compile, ' if args.compile else ''}seed {args.seed}. "
        f"MNIST-FID uses the book's own classifier features and is not comparable to Inception "
        f"FID. Floor = {args.n} MNIST training vs {args.n} test images: **{floor:.2f}** "
        f"(real test images classified with confidence >= 0.9: {real_conf:.1%}).",
        "",
    ]
    header = (
        "| model | sampler | NFE | w | MNIST-FID | real-vs-real floor | FID / floor "
        "| conf ≥ 0.9 | requested class | wall s | images/s |"
    )
    table = [header, "|" + "---|" * 11]
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        (model, schedule), source = load_model(name, args.weights_dir, device)
        lines.append(f"- `{name}`: {source}, T = {schedule.T}")
        if args.compile:  # attributes such as model.config still reach the module
            model = torch.compile(model)
        conditional = model.config.num_classes is not None
        runs = [(s, None) for s in args.samplers]
        if conditional:
            runs = [(s, w) for w in args.guidance for s in args.samplers]
            runs += [(s, w) for w in args.extra_guidance for s in args.extra_samplers]
        # Warm-up (CUDA kernels, cuDNN autotuning) so that the first timed line is fair.
        warm = SamplerSpec("ddim", 2)
        generate(
            model,
            schedule,
            warm,
            min(args.n, args.batch),
            args.batch,
            device,
            0,
            None if not conditional else 3.0,
            args.amp,
        )
        for spec, w in runs:
            nfe = schedule.T if spec.steps is None else spec.steps
            if nfe > schedule.T:
                log(f"skip {spec.label(schedule)}: more steps than T = {schedule.T}")
                continue
            images, y, seconds = generate(
                model, schedule, spec, args.n, args.batch, device, args.seed, w, args.amp
            )
            fid = metrics.frechet_distance(classifier_features(classifier, images), ref_features)
            conf = metrics.confident_fraction(classifier, images)
            acc = f"{metrics.class_accuracy(classifier, images, y):.1%}" if conditional else "—"
            row = (
                f"| {name} | {spec.label(schedule)} | {nfe} | {'—' if w is None else f'{w:g}'}"
                f" | {fid:.2f} | {floor:.2f} | {fid / floor:.2f} | {conf:.1%} | {acc} "
                f"| {seconds:.1f} | {args.n / seconds:.1f} |"
            )
            table.append(row)
            log(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text = "\n".join(lines + [""] + table) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Benchmark the samplers against exact answers (and against diffusers when it is installed).

Data: x_0 ~ N(mean, diag(std^2)) in 784 = 28 x 28 dimensions, per-pixel std log-spaced from 0.1
to 1 (some pixels nearly deterministic) and means uniform in [-0.5, 0.5]; linear DDPM schedule,
T = 1000. The model is the exact optimal eps-predictor, so every error below is the sampler's own.

1. Deterministic samplers: RMS distance to the exact probability-flow ODE endpoint from the same
   x_T, at 10/20/50/100 model evaluations (NFE). "floor" is the error of returning x0_hat at t = 1
   from the exact ODE state there: no sampler that evaluates the model only at integer t >= 1
   can beat it.
2. Stochastic samplers: distributional error of the samples (relative variance error, aggregated
   over all pixels, and RMS standardised mean error) with the same x_T and the same noise stream.
3. Overhead: sampler time per step with a free model vs. one forward pass of a ~1M-parameter
   U-Net at batch 64 x 1 x 28 x 28 (float32, CPU).
Sample quality of the defaults on the shipped MNIST model: bench/quality.py.

Run: .venv/bin/python bench/samplers.py   (about 10 minutes on 2 CPU cores; section 1 alone:
.venv/bin/python bench/samplers.py --section 1). Committed output: bench/results/.
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings

import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.samplers import (
    ddim_sample,
    ddpm_sample,
    dpm_solver_3_exact_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    leading_timesteps,
    logsnr_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)

NFES = (10, 20, 50, 100)
SPACINGS = {
    "leading": leading_timesteps,
    "uniform": uniform_timesteps,
    "quadratic": quadratic_timesteps,
    "logsnr": logsnr_timesteps,
}

try:
    import diffusers
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    diffusers.utils.logging.set_verbosity_error()
    HAVE_DIFFUSERS = True
except ImportError:  # pragma: no cover - optional
    HAVE_DIFFUSERS = False

LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def problem(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = 784
    std = torch.logspace(-1, 0, D, dtype=torch.float64)[torch.randperm(D, generator=g)]
    mean = torch.rand(D, generator=g, dtype=torch.float64) - 0.5
    data = GaussianData(mean.reshape(1, 28, 28), std.reshape(1, 28, 28))
    x_T = torch.randn(batch, 1, 28, 28, generator=g, dtype=torch.float64)
    return data, x_T


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def run_diffusers(scheduler, model, x_T, steps, generator=None):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for td in scheduler.timesteps:
        t = torch.full((x.shape[0],), int(td) + 1, dtype=torch.int64)  # diffusers' t + 1 = book t
        kw = {"generator": generator} if generator is not None else {}
        x = scheduler.step(model(x, t), td, x, **kw).prev_sample
    return x


def dpm_configs():
    """Every DPMSolverMultistepScheduler option that changes a deterministic ODE solve here."""
    for sig, order, solver_type, lof, spacing in itertools.product(
        ["none", "karras", "lu"],
        [2, 3],
        ["midpoint", "heun"],
        [True, False],
        ["linspace", "trailing", "leading"],
    ):
        if sig != "none" and spacing != "linspace":
            continue
        cfg = dict(
            solver_order=order,
            solver_type=solver_type,
            lower_order_final=lof,
            timestep_spacing=spacing,
        )
        if sig == "karras":
            cfg["use_karras_sigmas"] = True
        if sig == "lu":
            cfg["use_lu_lambdas"] = True
        yield {
            **cfg,
            "final_sigmas_type": "zero",
        }  # "sigma_min" stops at t=1 (not denoised): worse here


def short(cfg: dict) -> str:
    sig = (
        "lu"
        if cfg.get("use_lu_lambdas")
        else "karras"
        if cfg.get("use_karras_sigmas")
        else cfg.get("timestep_spacing", "")
    )
    parts = [sig, f"o{cfg.get('solver_order', 2)}", cfg.get("solver_type", "midpoint")[:3]]
    if not cfg.get("lower_order_final", True):
        parts.append("noLOF")
    if cfg.get("final_sigmas_type") == "sigma_min":
        parts.append("smin")
    return "/".join(parts)


def deterministic_table(schedule) -> None:
    data, x_T = problem(batch=128)
    model = data.model(schedule)
    ref = data.ode_endpoint(x_T, schedule)
    floor = rms(data.x0_hat(data.flow(x_T, schedule.T, 1, schedule), 1, schedule), ref)
    print(f"\n1. Distance to the exact ODE endpoint (RMS per pixel; floor at t=1: {floor:.2e})")
    print(f"{'sampler':44s}" + "".join(f"{n:>11d}" for n in NFES))

    def row(name, errs, note=""):
        print(f"{name:44s}" + "".join(f"{e:11.2e}" for e in errs) + (f"  {note}" if note else ""))

    for name, fn in SPACINGS.items():
        star = " *" if fn is leading_timesteps else ""
        errs = [
            rms(ddim_sample(model, schedule, x_T, steps=n, timesteps=fn, progress=False), ref)
            for n in NFES
        ]
        row(f"ours DDIM (eta=0), {name}{star}", errs)
    for order in (2, 3):
        for name, fn in SPACINGS.items():
            star = " *" if (fn is logsnr_timesteps and order == 2) else ""
            errs = [
                rms(
                    dpm_solver_sample(
                        model, schedule, x_T, steps=n, order=order, timesteps=fn, progress=False
                    ),
                    ref,
                )
                for n in NFES
            ]
            row(f"ours DPM-Solver++({order}M), {name}{star}", errs)
    for name, fn in SPACINGS.items():  # order 3 as the exact parabola, not the common 3M
        errs = [
            rms(
                dpm_solver_3_exact_sample(
                    model, schedule, x_T, steps=n, timesteps=fn, progress=False
                ),
                ref,
            )
            for n in NFES
        ]
        row(f"ours DPM-Solver++(3, exact parabola), {name}", errs)
    if not HAVE_DIFFUSERS:
        print("(diffusers not installed: no peer rows)")
        return
    ddim = {}
    for spacing, one in itertools.product(["leading", "linspace", "trailing"], [True, False]):
        cfg = dict(timestep_spacing=spacing, set_alpha_to_one=one)
        ddim[f"{spacing}/alpha1={one}"] = [
            rms(
                run_diffusers(DDIMScheduler(**LINEAR, clip_sample=False, **cfg), model, x_T, n), ref
            )
            for n in NFES
        ]
    row("diffusers DDIM default (leading)", ddim["leading/alpha1=True"])
    best = [min(v[i] for v in ddim.values()) for i in range(len(NFES))]
    which = [min(ddim, key=lambda k: ddim[k][i]) for i in range(len(NFES))]
    row("diffusers DDIM best per column", best, " | ".join(which))
    row(
        "diffusers DPMSolverMultistep default",
        [
            rms(run_diffusers(DPMSolverMultistepScheduler(**LINEAR), model, x_T, n), ref)
            for n in NFES
        ],
    )
    results = {}
    for cfg in dpm_configs():
        errs = []
        for n in NFES:
            try:
                errs.append(
                    rms(
                        run_diffusers(DPMSolverMultistepScheduler(**LINEAR, **cfg), model, x_T, n),
                        ref,
                    )
                )
            except Exception:  # some option combinations fail inside diffusers
                errs.append(float("inf"))
        results[short(cfg)] = errs
    best = [min(v[i] for v in results.values()) for i in range(len(NFES))]
    which = [min(results, key=lambda k: results[k][i]) for i in range(len(NFES))]
    row(f"diffusers DPMSolverMultistep best of {len(results)}", best, " | ".join(which))
    print(
        "* = our default (ddim_sample: leading grid; dpm_solver_sample: order 2 on the logsnr grid)."
        " diffusers schedulers: clip_sample=False, built from config. ours DDIM leading equals"
        " diffusers' DDIM default (leading) up to float32 rounding of its alphas_cumprod."
    )


def stochastic_table(schedule) -> None:
    data, x_T = problem(batch=2000, seed=1)
    model = data.model(schedule)
    print(
        "\n2. Stochastic samplers, 2000 samples x 784 pixels: relative variance error mean(var/std^2) - 1"
    )
    print("   (MC std 0.0011) and RMS standardised mean error (MC floor 1/sqrt(2000) = 0.022)")

    def stats(x):
        var_err = (x.var(0) / data.std**2).mean().item() - 1
        mean_err = ((x.mean(0) - data.mean) / data.std).pow(2).mean().sqrt().item()
        return f"{var_err:+10.4f} {mean_err:9.4f}"

    seed = 123
    x = ddpm_sample(
        model, schedule, x_T, generator=torch.Generator().manual_seed(seed), progress=False
    )
    print(f"{'ours DDPM, 1000 steps':44s}{stats(x)}")
    if HAVE_DIFFUSERS:
        sch = DDPMScheduler(**LINEAR, clip_sample=False)
        x = run_diffusers(sch, model, x_T, 1000, generator=torch.Generator().manual_seed(seed))
        print(f"{'diffusers DDPMScheduler, 1000 steps':44s}{stats(x)}")
    for n in (10, 20, 50, 100):
        x = ddim_sample(
            model,
            schedule,
            x_T,
            steps=n,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
            progress=False,
        )
        line = f"{'ours DDIM eta=1 (DDPM-type), ' + str(n) + ' steps':44s}{stats(x)}"
        if HAVE_DIFFUSERS:
            sch = DDPMScheduler(**LINEAR, clip_sample=False, timestep_spacing="linspace")
            x = run_diffusers(sch, model, x_T, n, generator=torch.Generator().manual_seed(seed))
            line += f"   | diffusers DDPMScheduler (linspace) {stats(x)}"
        print(line)
    for n in (10, 20, 50, 100):
        x = dpm_solver_sde_sample(
            model,
            schedule,
            x_T,
            steps=n,
            generator=torch.Generator().manual_seed(seed),
            progress=False,
        )
        line = f"{'ours SDE-DPM-Solver++(2), ' + str(n) + ' steps':44s}{stats(x)}"
        if HAVE_DIFFUSERS:
            sch = DPMSolverMultistepScheduler(
                **LINEAR,
                algorithm_type="sde-dpmsolver++",
                use_lu_lambdas=True,
                final_sigmas_type="zero",
            )
            x = run_diffusers(sch, model, x_T, n, generator=torch.Generator().manual_seed(seed))
            line += f"   | diffusers sde-dpmsolver++ (lu)      {stats(x)}"
        print(line)


def overhead_table(schedule) -> None:
    torch.manual_seed(0)
    try:
        from diffusion_tutorial.networks.unet import UNet, UNetConfig

        net, label = UNet(UNetConfig()), "diffusion_tutorial.networks.unet.UNet(UNetConfig())"
    except Exception:
        net, label = _stand_in_net(), "stand-in conv net (no diffusion_tutorial.networks.unet yet)"
    net.eval()
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(64, 1, 28, 28)
    t = torch.full((64,), 500, dtype=torch.int64)
    with torch.no_grad():
        for _ in range(3):
            net(x, t)
        start = time.perf_counter()
        reps = 10
        for _ in range(reps):
            net(x, t)
        forward = (time.perf_counter() - start) / reps
    eps = torch.randn(64, 1, 28, 28)

    def free_model(x_t, t):
        return eps

    print(
        f"\n3. Overhead per step, batch 64 x 1 x 28 x 28 float32, {torch.get_num_threads()} threads"
    )
    print(f"   model forward: {label}, {n_params / 1e6:.2f} M parameters: {forward * 1e3:.1f} ms")
    cases = {
        "DDPM": lambda p: ddpm_sample(
            free_model, schedule, x, generator=torch.Generator().manual_seed(0), progress=p
        ),
        "DDIM eta=0, 100 steps": lambda p: ddim_sample(
            free_model, schedule, x, steps=100, progress=p
        ),
        "DPM-Solver++(2M), 100 steps": lambda p: dpm_solver_sample(
            free_model, schedule, x, steps=100, progress=p
        ),
    }
    for name, fn in cases.items():
        n_steps = schedule.T if name == "DDPM" else 100
        for progress in (False, True):
            fn(progress)
            start = time.perf_counter()
            fn(progress)
            per_step = (time.perf_counter() - start) / n_steps
            print(
                f"   {name:30s} progress={progress!s:5s}: {per_step * 1e6:7.1f} us/step = {100 * per_step / forward:5.2f} % of a forward"
            )


def _stand_in_net() -> torch.nn.Module:
    class Net(torch.nn.Module):
        """~1M-parameter conv net with the U-Net's resolution pattern (28 -> 14 -> 7 -> 28)."""

        def __init__(self) -> None:
            super().__init__()
            c = 64
            conv = torch.nn.Conv2d
            self.inp = conv(1, c, 3, padding=1)
            self.down = torch.nn.ModuleList(
                [conv(c, c, 3, padding=1), conv(c, 2 * c, 3, 2, 1), conv(2 * c, 2 * c, 3, 2, 1)]
            )
            self.mid = conv(2 * c, 2 * c, 3, padding=1)
            self.up = torch.nn.ModuleList(
                [
                    torch.nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1),
                    torch.nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
                ]
            )
            self.out = conv(c, 1, 3, padding=1)
            self.emb = torch.nn.Embedding(1001, c)

        def forward(self, x, t):
            h = self.inp(x) + self.emb(t)[:, :, None, None]
            for layer in self.down:
                h = torch.nn.functional.silu(layer(h))
            h = torch.nn.functional.silu(self.mid(h))
            for layer in self.up:
                h = torch.nn.functional.silu(layer(h))
            return self.out(h)

    return Net()


def main() -> None:
    warnings.filterwarnings("ignore")
    args = sys.argv[1:]
    sections = {args[args.index("--section") + 1]} if "--section" in args else {"1", "2", "3"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the accuracy tables are many small ops: one thread is fastest
    schedule = linear_schedule()
    print("Sampler benchmark: exact Gaussian denoiser, linear schedule T=1000, float64")
    start = time.perf_counter()
    if "1" in sections:
        deterministic_table(schedule)
    if "2" in sections:
        stochastic_table(schedule)
    torch.set_num_threads(threads)
    if "3" in sections:
        overhead_table(schedule)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

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
4. The same question as 1 for the shipped MNIST model (``pretrained.load("mnist")``): RMS
   distance of deterministic samples to a 250-step DPM-Solver++(3M) solution of the model's own
   probability-flow ODE from the same 200 x_T. Real images differ from the Gaussian problem in
   the way that decides the step spacing (a few directions of scale ~4 where digits take shape
   at medium noise, and a network whose x0_hat is poor at the highest noise), so a default
   must do well on both. Skipped with --no-model.

Run: .venv/bin/python bench/samplers.py [--no-model]   (about 12 minutes on 2 CPU cores)
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
    clipped_logsnr_timesteps,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_sde_sample,
    karras_timesteps,
    logsnr_timesteps,
    power_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)

NFES = (10, 20, 50, 100)
SPACINGS = {
    "power (p=1.25)": power_timesteps,
    "uniform": uniform_timesteps,
    "quadratic": quadratic_timesteps,
    "logsnr": logsnr_timesteps,
    "clipped_logsnr": clipped_logsnr_timesteps,
    "karras": karras_timesteps,
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
        star = " *" if fn is power_timesteps else ""
        errs = [
            rms(ddim_sample(model, schedule, x_T, steps=n, timesteps=fn, progress=False), ref)
            for n in NFES
        ]
        row(f"ours DDIM (eta=0), {name}{star}", errs)
    for order in (2, 3):
        for name, fn in SPACINGS.items():
            star = " *" if (fn is logsnr_timesteps and order == 3) else ""
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
        "* = our default (DPM-Solver++: order 3, which falls back to 2M on lambda steps > 0.9,"
        " i.e. below 12 steps here). diffusers schedulers: clip_sample=False, built from config."
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
        "DPM-Solver++(3M), 100 steps": lambda p: dpm_solver_sample(
            free_model, schedule, x, steps=100, order=3, progress=p
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


def trained_model_table(schedule) -> None:
    from diffusion_tutorial import pretrained

    model, schedule = pretrained.load("mnist")
    model.eval()
    x_T = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    ref = dpm_solver_sample(model, schedule, x_T, steps=250, order=3, progress=False)
    half = dpm_solver_sample(model, schedule, x_T, steps=125, order=3, progress=False)
    nfes = (10, 20, 50)
    print(
        "\n4. Shipped MNIST model: RMS distance to its own ODE solution (250-step DPM-Solver++(3M),"
        f" {time.perf_counter() - start:.0f} s; 125 steps differ from it by {rms(half, ref):.1e})"
    )
    print(f"{'sampler':44s}" + "".join(f"{n:>11d}" for n in nfes))

    def row(name, run):
        errs = [rms(run(n), ref) for n in nfes]
        print(f"{name:44s}" + "".join(f"{e:11.2e}" for e in errs), flush=True)

    for name, fn in SPACINGS.items():
        if name in ("power (p=1.25)", "uniform", "quadratic"):
            star = " *" if fn is power_timesteps else ""
            row(
                f"ours DDIM (eta=0), {name}{star}",
                lambda n, fn=fn: ddim_sample(
                    model, schedule, x_T, steps=n, timesteps=fn, progress=False
                ),
            )
    for order in (2, 3):
        for name, fn in SPACINGS.items():
            if name in ("logsnr", "karras", "uniform"):
                star = " *" if (fn is logsnr_timesteps and order == 3) else ""
                row(
                    f"ours DPM-Solver++({order}M), {name}{star}",
                    lambda n, fn=fn, order=order: dpm_solver_sample(
                        model, schedule, x_T, steps=n, order=order, timesteps=fn, progress=False
                    ),
                )
    if not HAVE_DIFFUSERS:
        return
    for label, cfg in [
        ("diffusers DDIM default (leading)", {}),
        (
            "diffusers DDIM linspace/alpha1=False",
            dict(timestep_spacing="linspace", set_alpha_to_one=False),
        ),
    ]:
        sch = DDIMScheduler(**LINEAR, clip_sample=False, **cfg)
        row(label, lambda n, sch=sch: run_diffusers(sch, model, x_T, n))
    for order in (2, 3):
        sch = DPMSolverMultistepScheduler(
            **LINEAR, solver_order=order, use_lu_lambdas=True, final_sigmas_type="zero"
        )
        row(
            f"diffusers DPMSolverMultistep lu/o{order}/mid",
            lambda n, sch=sch: run_diffusers(sch, model, x_T, n),
        )
    print(
        "(diffusers' leading DDIM starts x_T at t = 901: it never asks the network at t > 901, where"
        " this network's x0_hat is worst; the exact Gaussian model has no such weak spot.)"
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the accuracy tables are many small ops: one thread is fastest
    schedule = linear_schedule()
    print("Sampler benchmark: exact Gaussian denoiser, linear schedule T=1000, float64")
    start = time.perf_counter()
    deterministic_table(schedule)
    stochastic_table(schedule)
    torch.set_num_threads(threads)
    overhead_table(schedule)
    if "--no-model" not in sys.argv[1:]:
        with torch.no_grad():
            trained_model_table(schedule)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

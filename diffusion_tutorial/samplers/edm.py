"""EDM samplers (Karras et al. 2022): Euler and Heun steps in sigma, with optional churn, for eps-models.

EDM writes the state in the variance-exploding scale, x = x_VP / sqrt(alpha_bar) = x_0 + sigma eps
with sigma = sqrt((1 - alpha_bar) / alpha_bar), and solves the probability-flow ODE
dx/dsigma = (x - D(x; sigma)) / sigma, where the denoiser D is the book's eps-model in disguise:

    D(x; sigma) = x - sigma eps_theta(x / sqrt(sigma^2 + 1), t(sigma)).

Two conversions hide in that line. t(sigma) is the fractional book time with that sigma
(``core.time.NoiseLevel``, by interpolation in log-SNR); the network sees fractional t, which
it was never trained on, but it is smooth in t. And the network's input is x / sqrt(sigma^2 + 1)
= sqrt(alpha_bar) x = x_VP: **forgetting that scaling is the classic pitfall**. The VE state has
standard deviation ~ sqrt(1 + sigma^2) (157 at t = T on the linear schedule), and a VP network
fed it unscaled sees an input of the wrong size and predicts garbage, with no error raised
(diffusers asks for it through ``scheduler.scale_model_input``; k-diffusion wraps the model).

Every sampler here takes and returns the book's states: ``x_T`` is the VP sample at the top of
the grid (the same x_T as every other sampler, so x = x_T sqrt(1 + sigma_0^2)), the result is
x_0, and ``callback(i, t, x_t, x0_hat)`` and ``project(t, x_t)`` see VP states at fractional book
times t (floats). Karras et al.'s own network runs at any sigma; the book's stops at t = T, so a
churned level sigma_hat is capped at sigma_T.

Book: Fast sampling (Part 3). Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithms 1 and 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_tutorial.checks import (
    check_eps_model,
    check_float_in_range,
    check_model_output,
    check_positive_int,
)
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.samplers.common import (
    Callback,
    Projection,
    apply_projection,
    check_projection,
    check_start,
    progress_bar,
)
from diffusion_tutorial.samplers.timesteps import karras_sigmas

__all__ = ["SigmaFn", "euler_sample", "heun_sample"]

SigmaFn = Callable[[NoiseSchedule, int], torch.Tensor]
"""``sigmas(schedule, steps)`` -> float (steps + 1,): EDM noise levels from <= sigma_T down to >= sigma_1, then 0."""


def _resolve_sigmas(sigmas: SigmaFn, schedule: NoiseSchedule, steps: int) -> list[float]:
    """Call a sigma-grid rule and check it: steps + 1 strictly decreasing levels in [sigma_1, sigma_T], then 0."""
    check_positive_int("steps", steps)
    if not callable(sigmas):
        raise TypeError("sigmas must be a function (schedule, steps) -> float tensor")
    out = torch.as_tensor(sigmas(schedule, steps), dtype=torch.float64).reshape(-1)
    s = out.tolist()
    top, low = NoiseLevel.from_lam(schedule.lam[[schedule.T, 1]]).edm_sigma().tolist()
    ok = len(s) == steps + 1 and s[-1] == 0 and s[0] <= top * (1 + 1e-9)
    ok = ok and all(a > b for a, b in zip(s, s[1:], strict=False)) and s[-2] >= low * (1 - 1e-9)
    if not ok:
        raise ValueError(
            f"sigmas must return {steps + 1} strictly decreasing EDM sigmas from <= sigma_T = "
            f"{top:.6g} down to >= sigma_1 = {low:.6g}, then 0; got {s[:3]}...{s[-3:]}"
        )
    return s


def _start(
    x_T: torch.Tensor, schedule: NoiseSchedule, sigmas: SigmaFn, steps: int, project: object
) -> tuple[torch.Tensor, list[float], Projection | None]:
    """Check the inputs; return the VE state x = x_T sqrt(1 + sigma_0^2), the levels and the hook."""
    x_T = check_start("x_T", x_T, schedule)
    project = check_projection(project)
    sig = _resolve_sigmas(sigmas, schedule, steps)
    return x_T * math.sqrt(1 + sig[0] ** 2), sig, project  # x = x_VP / sqrt(alpha_bar)


def _denoise(
    model: Model,
    x: torch.Tensor,
    sigma: float,
    schedule: NoiseSchedule,
    clip_x0: bool,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """D(x; sigma) = x - sigma eps_hat, eps_hat = model(x / sqrt(sigma^2 + 1), t(sigma)); returns (x_VP, D, t).

    t(sigma) is the fractional book time (log-SNR interpolation), kept in [1, T] against rounding.
    With ``clip_x0``, D is clipped to [-1, 1] (the eps it implies follows from it).
    """
    t = NoiseLevel.from_edm_sigma(sigma).t(schedule).clamp(1, schedule.T).item()
    x_vp = x / math.sqrt(sigma**2 + 1)  # (B, ...): the VP network's input scale, sqrt(alpha_bar) x
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t_batch = torch.full((x.shape[0],), t, dtype=t_dtype, device=x.device)  # (B,)
    check_eps_model(model)  # a velocity network is refused, not misread
    eps_hat = check_model_output(model(x_vp, t_batch), x_vp, t).to(x.dtype)
    D = x - sigma * eps_hat  # (B, ...): x0_hat
    if clip_x0:
        D = D.clamp(-1.0, 1.0)
    return x_vp, D, t


def _churn(
    x: torch.Tensor,
    sigma: float,
    sigma_max: float,
    steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, float]:
    """Karras et al. Algorithm 2, lines 4-6: raise sigma to sigma_hat = (1 + gamma) sigma by adding noise.

    gamma = min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax], else 0; sigma_hat is
    capped at sigma_max (the book's networks stop at t = T). Noise is drawn only when
    sigma_hat > sigma, so S_churn = 0 draws nothing.
    """
    gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = min(sigma * (1 + gamma), sigma_max)
    if sigma_hat > sigma:
        eps = s_noise * randn_like(x, generator)
        x = x + math.sqrt(sigma_hat**2 - sigma**2) * eps  # (B, ...)
    return x, sigma_hat


def _check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    check_float_in_range("s_churn", s_churn, 0.0, None)
    check_float_in_range("s_tmin", s_tmin, 0.0, None)
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, (int, float)) or math.isnan(s_tmax):
        raise TypeError(f"s_tmax must be a number (inf allowed), got {s_tmax!r}")
    if s_tmax < s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin = {s_tmin}, got {s_tmax}")
    check_float_in_range("s_noise", s_noise, 0.0, None)


def _project(project: Projection | None, x: torch.Tensor, sigma: float, schedule) -> torch.Tensor:
    """Apply ``project(t, x_t)`` to the VP view x_t = x / sqrt(1 + sigma^2) of the VE state x."""
    if project is None:
        return x
    scale = math.sqrt(1 + sigma**2)
    t = 0.0 if sigma == 0 else NoiseLevel.from_edm_sigma(sigma).t(schedule).item()
    return apply_projection(project, t, x / scale) * scale


@torch.no_grad()
def heun_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 18,
    sigmas: SigmaFn = karras_sigmas,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
    project: Projection | None = None,
) -> torch.Tensor:
    """Heun's step in sigma: x_next = x + (sigma_next - sigma) (d + d') / 2, d = (x - D(x; sigma)) / sigma.

    d' = (x_euler - D(x_euler; sigma_next)) / sigma_next at the Euler point x_euler = x +
    (sigma_next - sigma) d; the last step, to sigma = 0, is Euler alone (no d' at sigma = 0), so
    ``steps`` steps cost 2 steps - 1 model calls (the default 18 is Karras et al.'s 35 calls).
    S_churn = 0 is Algorithm 1, deterministic, second order: its error falls like steps^-2.
    S_churn > 0 is Algorithm 2: before each step with sigma in [S_tmin, S_tmax] the state gets
    fresh noise that raises sigma to sigma_hat = min(1 + S_churn / steps, sqrt(2)) sigma (capped
    at sigma_T), and the step starts from sigma_hat. ``sigmas`` gives the levels (default
    :func:`karras_sigmas`, rho = 7, from sigma_T to sigma_1). The network's input is
    x / sqrt(sigma^2 + 1), the VP state: see the module docstring for that pitfall.
    ``callback(i, t, x_t, x0_hat)`` runs once per model call i at fractional book time t with the
    VP input x_t and D; ``project(t, x_t)``, if given, replaces each new state (VP view, at
    fractional t down to 0); the package's projections (``samplers.inverse``) take integer t
    only, so they do not fit here.
    Book: Fast sampling (Part 3). Karras et al. 2022, Algorithms 1 and 2.
    """
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    x, sig, project = _start(x_T, schedule, sigmas, steps, project)
    sigma_max = sig[0]
    calls = 0
    for i in progress_bar(steps, progress, "Heun (EDM)"):
        sigma, sigma_next = sig[i], sig[i + 1]
        # Step 1 (Alg. 2, lines 4-6): churn, raising sigma to sigma_hat with fresh noise.
        x, sigma_hat = _churn(
            x, sigma, sigma_max, steps, s_churn, s_tmin, s_tmax, s_noise, generator
        )
        # Step 2 (line 7-8): the Euler step from sigma_hat to sigma_next.
        x_vp, D, t = _denoise(model, x, sigma_hat, schedule, clip_x0)
        if callback is not None:
            callback(calls, t, x_vp, D)
        calls += 1
        d = (x - D) / sigma_hat  # (B, ...): dx/dsigma
        x_next = x + (sigma_next - sigma_hat) * d
        # Step 3 (lines 9-11): the trapezoidal correction, except on the last step to sigma = 0.
        if sigma_next > 0:
            x_vp, D, t = _denoise(model, x_next, sigma_next, schedule, clip_x0)
            if callback is not None:
                callback(calls, t, x_vp, D)
            calls += 1
            d_prime = (x_next - D) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_prime) / 2
        # Step 4 (optional): project the new state, at sigma_next, onto the constraint.
        x = _project(project, x_next, sigma_next, schedule)
    return x


@torch.no_grad()
def euler_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 50,
    sigmas: SigmaFn = karras_sigmas,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
    project: Projection | None = None,
) -> torch.Tensor:
    """Euler's step in sigma: x_next = x + (sigma_next - sigma_hat) (x - D(x; sigma_hat)) / sigma_hat.

    Karras et al.'s Algorithm 2 without the Heun correction: one model call per step. S_churn =
    0 is deterministic and is DDIM (eta = 0) written in sigma (Karras et al., sec. 3: DDIM is
    Euler's method on this ODE); S_churn > 0 adds noise before each step as in
    :func:`heun_sample` (diffusers' ``EulerDiscreteScheduler`` ``s_churn``). This is not the
    "Euler a" of image-generation UIs (k-diffusion's ancestral Euler), which is DDIM with
    eta = 1: see the names table in ``samplers``. Other arguments as for :func:`heun_sample`.
    Book: Fast sampling (Part 3). Karras et al. 2022, Algorithm 2 (first order).
    """
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    x, sig, project = _start(x_T, schedule, sigmas, steps, project)
    sigma_max = sig[0]
    for i in progress_bar(steps, progress, "Euler (EDM)"):
        sigma, sigma_next = sig[i], sig[i + 1]
        # Step 1: churn, raising sigma to sigma_hat with fresh noise (no-op for S_churn = 0).
        x, sigma_hat = _churn(
            x, sigma, sigma_max, steps, s_churn, s_tmin, s_tmax, s_noise, generator
        )
        # Step 2: the Euler step along d = (x - D) / sigma_hat = eps_hat.
        x_vp, D, t = _denoise(model, x, sigma_hat, schedule, clip_x0)
        if callback is not None:
            callback(i, t, x_vp, D)
        x_next = x + (sigma_next - sigma_hat) * (x - D) / sigma_hat
        # Step 3 (optional): project the new state, at sigma_next, onto the constraint.
        x = _project(project, x_next, sigma_next, schedule)
    return x

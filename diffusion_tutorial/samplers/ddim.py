"""DDIM: deterministic (eta = 0) or stochastic sampling on a subsequence of times, and DDIM inversion.

Book: Fast sampling (Part 3). Song et al. 2021, "Denoising Diffusion Implicit Models".
"""

from __future__ import annotations

import torch

from diffusion_tutorial.checks import check_float_in_range
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import (
    Callback,
    Projection,
    TimestepFn,
    apply_projection,
    check_projection,
    check_start,
    ddim_step,
    predict,
    progress_bar,
    resolve_timesteps,
)
from diffusion_tutorial.samplers.timesteps import leading_timesteps

__all__ = ["ddim_sample", "ddim_invert"]


@torch.no_grad()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    timesteps: TimestepFn = leading_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
    project: Projection | None = None,
) -> torch.Tensor:
    """DDIM step from t to s < t: x_prev = sqrt(alpha_bar[s]) x0_hat + sqrt(1 - alpha_bar[s] - ddim_sigma^2) eps_hat + ddim_sigma z.

    ddim_sigma = eta sqrt((1 - alpha_bar[s]) / (1 - alpha_bar[t])) sqrt(1 - alpha_bar[t] / alpha_bar[s]),
    eta in [0, 1]: eta = 0 is the deterministic DDIM (a first-order solver of the probability-flow
    ODE), eta = 1 on every step (``steps = T``) is DDPM; the step is :func:`ddim_step`. ``steps``
    model calls at the times ``timesteps(schedule, steps)``; the default is the DDIM reference code's grid
    (:func:`leading_timesteps`, also diffusers' default), and the last step goes to t = 0, where it
    returns x0_hat. ``project(s, x_prev)``, if given, replaces each new state x_prev (at book time
    s, down to 0) by its return value, checked like a model output (:func:`apply_projection`):
    the hook of the inpainting and super-resolution projections (``samplers.inverse``).
    Book: Fast sampling (Part 3). Song et al. 2021, eqs. 12 and 16.
    """
    x_t = check_start("x_T", x_T, schedule)
    eta = check_float_in_range("eta", eta, 0.0, 1.0)
    project = check_projection(project)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    for i in progress_bar(steps, progress, "DDIM"):
        t, s = ts[i], ts[i + 1]
        # Step 1: predict eps and x_0 at time t (Song et al. eq. 9).
        eps_hat, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(i, t, x_t, x0_hat)
        # Steps 2-3: ddim_sigma from eq. 16, then the jump to s of eq. 12 (:func:`ddim_step`).
        x_prev = ddim_step(x0_hat, eps_hat, alpha_bar[t], alpha_bar[s], eta, generator)
        # Step 4 (optional): project the new state, which lives at time s, onto the constraint.
        x_t = apply_projection(project, s, x_prev)
    return x_t


@torch.no_grad()
def ddim_invert(
    model: Model,
    schedule: NoiseSchedule,
    x_0: torch.Tensor,
    *,
    steps: int = 50,
    timesteps: TimestepFn = leading_timesteps,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Encode x_0 by running deterministic DDIM backwards, from s up to u > s: x_u = sqrt(alpha_bar[u]) x0_hat + sqrt(1 - alpha_bar[u]) eps_hat.

    eps_hat = model(x_s, u) is evaluated at the *target* time u with the current x_s and x0_hat =
    (x_s - sigma_s eps_hat) / sqrt(alpha_bar[s]) (the sampler uses model(x_u, u): the two agree
    to first order in the step, which is why the round trip is exact only as steps grow). Uses
    the times of ``ddim_sample(..., timesteps=timesteps)`` in reverse and returns the state at
    the sampler's first time, ready for ``ddim_sample``. No ``project`` hook: inversion encodes a
    given x_0, so there is no unknown part for a constraint to fill in.
    Book: Fast sampling (Part 3). Song et al. 2021, sec. 4.3 and eq. 14.
    """
    x_s = check_start("x_0", x_0, schedule)
    ts = resolve_timesteps(timesteps, schedule, steps)[::-1]  # 0 = s_0 < ... < s_steps
    alpha_bar = schedule.alpha_bar.tolist()
    for i in progress_bar(steps, progress, "DDIM inversion"):
        s, u = ts[i], ts[i + 1]
        # Step 1: eps_hat = model(x_s, u) at the target time, x0_hat with the coefficients of s.
        eps_hat, x0_hat = predict(model, x_s, u, alpha_bar[s], False)
        if callback is not None:
            callback(i, u, x_s, x0_hat)
        # Step 2: the DDIM step (eta = 0) run upwards, from s to u: sqrt(alpha_bar[u]) x0_hat
        # + sigma_u eps_hat.
        x_s = ddim_step(x0_hat, eps_hat, alpha_bar[s], alpha_bar[u], 0.0)  # (B, ...)
    return x_s

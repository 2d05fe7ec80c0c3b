"""RePaint: a sampler that goes back and forth in time ("resampling") while it projects.

Down-steps are ancestral steps on a respaced grid (the DDPM posterior q(x_s | x_t, x0_hat), i.e.
DDIM with eta = 1), each followed by a projection; up-jumps re-noise the state with the forward
process q(x_u | x_s). Each block of ``jump_length`` steps is run ``resamplings`` times, which
gives the unknown part time to agree with the known one.

Book: Inpainting and super-resolution (Part 4). Lugmayr et al. 2022 (RePaint), sec. 4.2 and
Algorithm 1.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_int_in_range
from diffusion_tutorial.core.forward import randn_like
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

__all__ = ["repaint_path", "renoise", "repaint_sample"]


def repaint_path(steps: int, jump_length: int, resamplings: int) -> list[int]:
    """The grid indices RePaint visits: 0 (the first time) ... ``steps`` (t = 0), with jumps back.

    Going down one index at a time, at every multiple k of ``jump_length`` (k = 0 excluded,
    k = steps included) the path jumps back to k - jump_length, ``resamplings - 1`` times, so
    every block is run ``resamplings`` times: the number of down-steps (model calls) is
    ``steps * resamplings`` when ``jump_length`` divides ``steps``.
    Book: Inpainting and super-resolution (Part 4). Lugmayr et al. 2022, sec. 4.2 (jump length j,
    resamplings r).
    """
    steps = check_int_in_range("steps", steps, 1, None)
    jump_length = check_int_in_range("jump_length", jump_length, 1, steps)
    resamplings = check_int_in_range("resamplings", resamplings, 1, None)
    jumps_left = {k: resamplings - 1 for k in range(jump_length, steps + 1, jump_length)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        if jumps_left.get(i, 0) > 0:
            jumps_left[i] -= 1
            i -= jump_length
            path.append(i)
    return path


def renoise(
    x_s: torch.Tensor,
    s: int,
    u: int,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample the forward process from s up to u > s: x_u = sqrt(alpha_bar[u] / alpha_bar[s]) x_s + sqrt(1 - alpha_bar[u] / alpha_bar[s]) eps.

    q(x_u | x_s) of the Markov chain over u - s steps, so that x_s ~ q(x_s | x_0) gives
    x_u ~ q(x_u | x_0).
    Book: Inpainting and super-resolution, eq. (eq-inv-renoise). Lugmayr et al. 2022, sec. 4.2;
    Ho et al. 2020, eq. 2 composed.
    """
    check_int_in_range("s", s, 0, schedule.T - 1)
    check_int_in_range("u", u, s + 1, schedule.T)
    ratio = (schedule.alpha_bar[u] / schedule.alpha_bar[s]).item()  # float64 -> Python float
    return math.sqrt(ratio) * x_s + math.sqrt(1 - ratio) * randn_like(x_s, generator)


@torch.no_grad()
def repaint_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    project: Projection,
    *,
    steps: int = 25,
    jump_length: int = 5,
    resamplings: int = 4,
    generator: torch.Generator | None = None,
    timesteps: TimestepFn = leading_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """RePaint: ancestral steps x_s ~ q(x_s | x_t, x0_hat) + ``project(s, x_s)``, with jumps back x_u ~ q(x_u | x_s).

    Follows :func:`repaint_path` on the grid ``timesteps(schedule, steps)``; ``steps *
    resamplings`` model calls (when ``jump_length`` divides ``steps``). With ``resamplings=1``
    it is ``ddim_sample(..., eta=1.0, project=project)`` draw for draw (same generator).
    Book: Inpainting and super-resolution (Part 4). Lugmayr et al. 2022, Algorithm 1.
    """
    x = check_start("x_T", x_T, schedule)
    project = check_projection(project, required=True)
    ts = resolve_timesteps(timesteps, schedule, steps)
    path = repaint_path(steps, jump_length, resamplings)
    alpha_bar = schedule.alpha_bar.tolist()
    call = 0  # model calls so far
    for k in progress_bar(len(path) - 1, progress, "RePaint"):
        a, b = path[k], path[k + 1]
        if b < a:  # a jump back: re-noise from ts[a] up to the earlier, noisier time ts[b]
            x = renoise(x, ts[a], ts[b], schedule, generator)
            continue
        t, s = ts[a], ts[b]
        # Step 1: predict eps and x_0 at time t.
        eps_hat, x0_hat = predict(model, x, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(call, t, x, x0_hat)
        call += 1
        # Step 2: sample the posterior q(x_s | x_t, x0_hat): DDIM's step with eta = 1.
        x = ddim_step(x0_hat, eps_hat, alpha_bar[t], alpha_bar[s], 1.0, generator)
        # Step 3: put back what is known, at the noise level of time s.
        x = apply_projection(project, s, x)
    return x

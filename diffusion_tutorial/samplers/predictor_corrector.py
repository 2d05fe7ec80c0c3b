"""Predictor-corrector sampling: an ancestral (reverse-diffusion) step, then Langevin steps at each time.

Book: Scores, SDEs and the probability-flow ODE (Part 4). Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations" (ICLR), Algorithms 1, 3 and 5.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range
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

__all__ = ["langevin_corrector_step", "predictor_corrector_sample"]


def langevin_corrector_step(
    x_t: torch.Tensor,
    eps_hat: torch.Tensor,
    sigma_t: float,
    alpha_t: float,
    snr: float,
    generator: torch.Generator | None = None,
    *,
    per_example_norms: bool = False,
) -> torch.Tensor:
    """One Langevin step at fixed t: x <- x + step s_hat + sqrt(2 step) z, step = 2 alpha_t (snr |z| / |s_hat|)^2.

    s_hat = -eps_hat / sigma_t is the score of q(x_t) (Tweedie; ``core.parameterization.
    score_from_eps``), z ~ N(0, I) is drawn from ``generator``, and ``alpha_t = 1 - beta_t`` is
    the book's one-step alpha at the corrector's time, the paper's alpha_i. The step size makes
    |step s_hat| / |sqrt(2 step) z| = sqrt(2 alpha_t) snr: the "signal-to-noise ratio" r of the
    paper fixes the size of the drift against the noise, whatever the scale of the score at t.

    The norms |z| and |s_hat| are averaged over the batch, as Song et al. do for large batches
    (appendix G; their reference code too): then every example takes (nearly) the same step, and
    the chain leaves q(x_t) invariant up to the usual step-size bias of unadjusted Langevin
    (on a Gaussian, variance x (1 + alpha_t snr^2), +2.6 % at snr = 0.16). With
    ``per_example_norms=True`` each example uses its own |z| and |s_hat|, so its step does not
    depend on the rest of the batch; but then the step grows as x nears a mode (|s_hat| small),
    which biases the chain outwards in low dimension: on a Gaussian at snr = 0.16 the stationary
    variance came out x 22 in 2-D, x 1.30 in 16-D, x 1.03 in 784-D (MNIST), against x 1.03 for
    batch norms at every dimension. Returns the new state, in the dtype of ``x_t``.
    Book: Scores, SDEs and the probability-flow ODE (Part 4). Song et al. 2021, Algorithm 5
    (the corrector for the VP SDE).
    """
    score = -eps_hat / sigma_t  # (B, ...): s_hat = -eps_hat / sigma_t, NOT -eps_hat
    z = randn_like(x_t, generator)  # (B, ...)
    score_norm = score.flatten(1).norm(dim=1)  # (B,)
    noise_norm = z.flatten(1).norm(dim=1)  # (B,)
    if not per_example_norms:
        score_norm, noise_norm = score_norm.mean().expand_as(score_norm), noise_norm.mean()
    if not (score_norm > 0).all():
        raise ValueError(
            "the corrector's step 2 alpha (snr |z| / |score|)^2 needs a nonzero score, but "
            "eps_hat is exactly 0; use corrector_steps=0 with this model"
        )
    step = 2 * alpha_t * (snr * noise_norm / score_norm) ** 2  # (B,)
    step = step.view(-1, *([1] * (x_t.ndim - 1)))  # (B, 1, ..., 1)
    return x_t + step * score + (2 * step).sqrt() * z


@torch.no_grad()
def predictor_corrector_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int,
    corrector_steps: int = 1,
    snr: float = 0.16,
    timesteps: TimestepFn = leading_timesteps,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
    project: Projection | None = None,
    per_example_norms: bool = False,
) -> torch.Tensor:
    """PC sampling: at each time t_i, ``corrector_steps`` Langevin steps, then the ancestral step to t_(i+1).

    The reverse SDE is solved by alternating a **predictor**, one step of a discretised reverse
    SDE, with a **corrector**, Markov chain Monte Carlo that pulls the state back towards the
    marginal q(x_t) at the current time (Song et al. 2021, sec. 4.2 and Algorithm 1; Algorithms 3
    and 5 for the VP SDE). Here, for i = 0, ..., steps - 1 on the times
    ``timesteps(schedule, steps)`` = t_0 > t_1 > ... > t_steps = 0:

    1. corrector: ``corrector_steps`` times, x <- x + step s_hat + sqrt(2 step) z at t_i with
       s_hat = -eps_hat(x, t_i) / sigma_(t_i) and step = 2 alpha_(t_i) (snr |z| / |s_hat|)^2
       (:func:`langevin_corrector_step`: the norms are averaged over the batch, as in the
       paper; ``per_example_norms=True`` makes each example's step its own, which biases the
       corrector in low dimension, see there);
    2. predictor: the ancestral step of DDPM from t_i to t_(i+1), the posterior
       q(x_(t_(i+1)) | x_(t_i), x0_hat) of :func:`ddim_step` with eta = 1, one model call. Song et
       al.'s "ancestral sampling" predictor for the VP SDE; their "reverse diffusion" predictor
       differs from it only at second order in beta_t.

    The corrector runs before the predictor at each time, as in Song et al.'s reference code
    (their Algorithm 1 writes the same alternation from the predictor's side), so the first
    Langevin steps act on x_T at t_0 and there is no corrector at t = 0, where the score is
    undefined. The last predictor step, to t = 0, adds no noise: it returns x0_hat.

    **Network evaluations:** NFE = steps x (1 + corrector_steps). At equal NFE, compare e.g. PC
    with steps = 10, corrector_steps = 1 against the predictor alone with 20 steps.
    ``corrector_steps = 0`` is the predictor alone: then the function equals
    ``ddim_sample(..., eta=1.0)`` on the same times and noise stream (the noise of each step is
    drawn in order: the corrector's z's at t_i, then the predictor's). ``snr`` is the paper's r;
    the default 0.16 is its value for the VE SDE, while its Table 5 finds r = 0.01 best for the
    VP SDE with 1,000 predictor steps: a smaller r is a smaller, gentler Langevin step. ``callback(i, t, x_t, x0_hat)`` runs once per
    model call, corrector calls included; ``project(s, x_s)``, if given, replaces each new state,
    after every Langevin step (at s = t_i) and after every predictor step (at s = t_(i+1), down to
    0). ``timesteps`` defaults to the DDIM reference grid (:func:`leading_timesteps`), like
    ``ddim_sample``. Returns x_0 in the dtype and device of ``x_T``.
    Book: Scores, SDEs and the probability-flow ODE (Part 4). Song et al. 2021 (ICLR),
    Algorithms 1, 3 and 5, appendix G.
    """
    x_t = check_start("x_T", x_T, schedule)
    check_int_in_range("steps", steps, 1, schedule.T)
    corrector_steps = check_int_in_range("corrector_steps", corrector_steps, 0, None)
    snr = check_float_in_range("snr", snr, 0.0, None, low_open=True)
    project = check_projection(project)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha, alpha_bar = schedule.alpha.tolist(), schedule.alpha_bar.tolist()
    calls = 0
    for i in progress_bar(steps, progress, "PC sampling"):
        t, s = ts[i], ts[i + 1]
        sigma_t = math.sqrt(1 - alpha_bar[t])
        # Step 1 (Algorithm 5): Langevin steps at t with the score -eps_hat / sigma_t.
        for _ in range(corrector_steps):
            eps_hat, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
            if callback is not None:
                callback(calls, t, x_t, x0_hat)
            calls += 1
            x_t = langevin_corrector_step(
                x_t, eps_hat, sigma_t, alpha[t], snr, generator, per_example_norms=per_example_norms
            )
            x_t = apply_projection(project, t, x_t)
        # Step 2 (Algorithm 3's predictor): DDPM's ancestral step from t to s, none at s = 0.
        eps_hat, x0_hat = predict(model, x_t, t, alpha_bar[t], clip_x0)
        if callback is not None:
            callback(calls, t, x_t, x0_hat)
        calls += 1
        x_prev = ddim_step(x0_hat, eps_hat, alpha_bar[t], alpha_bar[s], 1.0, generator)
        x_t = apply_projection(project, s, x_prev)
    return x_t

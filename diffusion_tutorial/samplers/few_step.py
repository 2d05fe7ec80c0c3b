"""Few-step sampling: a consistency model (Song et al. 2023) or a reflowed flow, in 1, 2, ... steps.

:func:`few_step_sample` takes one of two kinds of few-step model and starts, as every sampler in
the book does, from unit noise x_T ~ N(0, I):

- a **consistency model** f(x, sigma) (:class:`ConsistencyModel`, e.g.
  ``training.consistency_toy.ConsistencyFunction``), which maps a point x_sigma = x_0 + sigma z of
  the probability-flow ODE straight to that ODE's end at sigma = eps. Song et al.'s Algorithm 1:
  x = f(sigma_max x_T, sigma_max); then each further step **re-noises** the estimate to a lower
  level tau, x_tau = x + sqrt(tau^2 - eps^2) z with fresh z, and maps it back, x = f(x_tau, tau);
- a **reflowed flow**, the ``(network, schedule)`` pair of ``pretrained.load`` for a velocity
  network (``config.prediction == "velocity"``): Euler steps on the uniform flow-time grid,
  exactly ``flow_sample(model, x_T, steps=steps, method="euler")``. **No re-noising**: reflow
  straightens the ODE's paths (Liu et al. 2023), so more steps only follow a nearly straight path
  more closely, while a consistency model jumps to the end every time and uses the fresh noise
  of the next step to correct itself.

The levels tau: with :func:`consistency_levels`, Karras et al.'s rho = 7 grid of steps + 1 levels
from sigma_max down to eps (``samplers.timesteps.karras_sigmas`` on :func:`sigma_range_schedule`),
without its last level eps: [sigma_max, tau_1, ..., tau_{steps-1}]. Song et al. pick tau by a
search on FID instead; a fixed grid keeps the sampler free of tuning (for sigma_max = 10,
eps = 0.002, two steps re-noise to tau_1 = 0.48).

Book: One to four steps (Part 4). Song et al. 2023, "Consistency Models", Algorithm 1;
Liu et al. 2023 (reflow); Karras et al. 2022, eq. 5 (the rho grid).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from diffusion_tutorial.checks import check_finite, check_float_tensor, check_positive_int
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import progress_bar
from diffusion_tutorial.samplers.flow import flow_sample
from diffusion_tutorial.samplers.timesteps import karras_sigmas

__all__ = ["ConsistencyModel", "sigma_range_schedule", "consistency_levels", "few_step_sample"]


class ConsistencyModel(Protocol):
    """A consistency function f(x, sigma) on EDM levels sigma in [eps, sigma_max] (Song et al. 2023).

    ``model(x, sigma)``: x (B, ...) a state x_0 + sigma z, sigma a float64 (B,) tensor; returns the
    estimate of the ODE's end point at eps, shaped like x. ``eps`` and ``sigma_max`` are floats.
    """

    eps: float
    sigma_max: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def sigma_range_schedule(eps: float, sigma_max: float) -> NoiseSchedule:
    """The VP schedule with T = 2 whose book times t in [1, 2] are the EDM levels sigma in [eps, sigma_max].

    alpha_bar_1 = 1 / (1 + eps^2), alpha_bar_2 = 1 / (1 + sigma_max^2). Between the two, the
    package's time converter (``core.time.NoiseLevel``) interpolates the log-SNR linearly, so
    log sigma is linear in t: every level of a consistency model is a fractional book time of this
    schedule, and the package's tools for schedules (``karras_sigmas``, the exact denoisers of
    ``core.gaussian``) work on [eps, sigma_max] unchanged.
    """
    if not (isinstance(eps, (int, float)) and isinstance(sigma_max, (int, float))):
        raise TypeError(f"eps and sigma_max must be numbers, got {eps!r}, {sigma_max!r}")
    if not (0 < eps < sigma_max < math.inf):
        raise ValueError(f"need 0 < eps < sigma_max < inf, got eps={eps}, sigma_max={sigma_max}")
    beta_1 = eps**2 / (1 + eps**2)
    beta_2 = 1 - (1 + eps**2) / (1 + sigma_max**2)  # alpha_bar_2 = alpha_bar_1 (1 - beta_2)
    return NoiseSchedule.from_betas([beta_1, beta_2])


def consistency_levels(eps: float, sigma_max: float, steps: int) -> list[float]:
    """The ``steps`` levels of multistep consistency sampling: [sigma_max, tau_1, ..., tau_{steps-1}].

    Karras et al.'s rho = 7 grid of steps + 1 levels from sigma_max to eps, its last (eps) dropped;
    the first is ``sigma_max`` exactly.
    """
    steps = check_positive_int("steps", steps)
    levels = karras_sigmas(sigma_range_schedule(eps, sigma_max), steps + 1).tolist()
    return [float(sigma_max)] + levels[1:steps]


def _refuse(model: object) -> None:
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], NoiseSchedule):
        pred = getattr(getattr(model[0], "config", None), "prediction", None)
        raise TypeError(
            f"few_step_sample got a (network, schedule) pair whose network predicts {pred!r}; "
            "it takes a velocity network (a reflowed flow, config.prediction 'velocity') or a "
            "consistency model. Sample an eps-model with dt.ddim_sample(model, schedule, x_T, "
            "steps=...) or dt.dpm_solver_sample"
        )
    raise TypeError(
        f"few_step_sample takes a consistency model (a callable f(x, sigma) with attributes eps "
        f"and sigma_max, e.g. ConsistencyFunction) or the (network, schedule) pair of a velocity "
        f"network from dt.pretrained.load; got {type(model).__name__}. For an eps-model use "
        "dt.ddim_sample, for a velocity field u(x, flow_t) dt.flow_sample"
    )


def _is_velocity_pair(model: object) -> bool:
    return (
        isinstance(model, tuple)
        and len(model) == 2
        and isinstance(model[0], nn.Module)
        and isinstance(model[1], NoiseSchedule)
        and getattr(getattr(model[0], "config", None), "prediction", None) == "velocity"
    )


def _is_consistency_model(model: object) -> bool:
    return callable(model) and all(
        isinstance(getattr(model, name, None), (int, float)) for name in ("eps", "sigma_max")
    )


@torch.no_grad()
def few_step_sample(
    model: ConsistencyModel | tuple[nn.Module, NoiseSchedule],
    x_T: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples in ``steps`` model calls from unit noise ``x_T`` (B, ...) ~ N(0, I).

    A consistency model (Song et al. 2023, Algorithm 1; the levels of :func:`consistency_levels`):

    1. x = f(sigma_max x_T, sigma_max): x_T is scaled here to the ODE's start N(0, sigma_max^2 I);
    2. for tau = tau_1, ..., tau_{steps-1}: z ~ N(0, I) (from ``generator``),
       x_tau = x + sqrt(tau^2 - eps^2) z, x = f(x_tau, tau).

    ``steps = 1`` is deterministic: f(sigma_max x_T, sigma_max). A velocity network's
    ``(network, schedule)`` pair (a reflowed flow) takes ``steps`` Euler steps of its ODE, exactly
    ``flow_sample(model, x_T, steps=steps, method="euler")``, with no re-noising (``generator``
    unused). Anything else is refused with the sampler to use.
    Book: One to four steps (Part 4). Song et al. 2023, Algorithm 1; Liu et al. 2023, sec. 2.
    """
    steps = check_positive_int("steps", steps)
    check_finite("x_T", check_float_tensor("x_T", x_T))
    if _is_velocity_pair(model):
        return flow_sample(model, x_T, steps=steps, method="euler", progress=progress)
    if not _is_consistency_model(model):
        _refuse(model)
    levels = consistency_levels(model.eps, model.sigma_max, steps)
    x = x_T
    for i in progress_bar(steps, progress, "consistency"):
        sigma = levels[i]
        if i == 0:  # Step 1: the ODE's start x_T ~ N(0, sigma_max^2 I), mapped to its end.
            x_sigma = sigma * x_T
        else:  # Step 2: re-noise the estimate of x_eps to level tau (its noise eps is kept).
            x_sigma = x + math.sqrt(sigma**2 - model.eps**2) * randn_like(x, generator)
        sigma_batch = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
        x = model(x_sigma, sigma_batch)
    return x

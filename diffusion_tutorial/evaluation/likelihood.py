"""Exact likelihood from the probability-flow ODE, and bits per dimension of images.

The probability-flow ODE maps data to noise deterministically, so the density of a data point
follows from the instantaneous change of variables: along a solution x(t) of dx/dt = F(x, t),
d log p_t(x(t)) / dt = -div F(x(t), t). Integrating from the data to t = T, where the marginal is
N(0, I), gives log p_0(x_0) = log N(x_T; 0, I) + int div F dt. The divergence is a trace of the
network's Jacobian: exact by autograd (one backward pass per dimension, for 2-D examples) or
estimated by Hutchinson's trace estimator, E[v^T J v] = tr J for probes with E[v v^T] = I.

Book: Scores, SDEs and the probability-flow ODE (Part 4). Chen et al. 2018 ("Neural Ordinary
Differential Equations", instantaneous change of variables, Theorem 1); Grathwohl et al. 2019
(FFJORD, Hutchinson's estimator); Song et al. 2021 (ICLR), sec. 4.3 and appendix D.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion_tutorial.checks import (
    check_eps_model,
    check_float_tensor,
    check_int_in_range,
    check_model_output,
    check_positive_int,
)
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.runtime import tqdm
from diffusion_tutorial.samplers.common import TimestepFn, check_start, resolve_timesteps
from diffusion_tutorial.samplers.timesteps import logsnr_timesteps

__all__ = [
    "LikelihoodResult",
    "ode_likelihood",
    "bits_per_dim",
    "dequantize",
    "MNIST_BIN_WIDTH",
]

MNIST_BIN_WIDTH = 2 / 255
"""The spacing of the 256 grey levels after the book's scaling x = k / 127.5 - 1 (``data.mnist``)."""


@dataclass(frozen=True, eq=False)
class LikelihoodResult:
    """What :func:`ode_likelihood` returns, all in nats per example.

    ``log_p = prior_log_p + delta_log_p``. ``log_p_per_probe`` (probes, B) holds the estimate of
    each Hutchinson probe alone (their mean is ``log_p``), so its spread over probes is the
    estimator's noise for fixed x_0; None for the exact divergence.
    """

    log_p: torch.Tensor  # (B,) float64: log p(x_0), nats
    prior_log_p: torch.Tensor  # (B,) float64: log N(x_T; 0, I) at the ODE's end point
    delta_log_p: torch.Tensor  # (B,) float64: log p(x_0) - log N(x_T; 0, I)
    nfe: int  # network evaluations (each with one backward pass per probe, or per dimension)
    x_T: torch.Tensor  # (B, ...): the ODE's end point at t = T, in the dtype of x_0
    log_p_per_probe: torch.Tensor | None = None  # (probes, B) float64


def _eps_and_divergence(
    model: Model, x: torch.Tensor, t: int, probes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """eps_hat = model(x, t) (detached) and div_x eps_hat: (P, B) Hutchinson estimates v^T J v, or (1, B) exact."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)  # (B,)
        check_eps_model(model)  # a velocity network is refused, not misread
        eps_hat = check_model_output(model(x, t_batch), x, t)  # (B, ...)
        if not eps_hat.requires_grad:
            raise ValueError(
                "ode_likelihood needs a model differentiable in x_t (autograd), but model(x_t, t) "
                "does not depend on x_t through autograd (GaussianData.model detaches its input; "
                "use GaussianMixtureData.model, or a network)"
            )
        flat = eps_hat.flatten(1)  # (B, D)
        if probes is None:  # exact: one backward pass per dimension, d eps_i / d x_i
            div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for i in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div += grad.flatten(1)[:, i].double()
            return eps_hat.detach(), div[None]  # (1, B)
        divs = []
        for p, v in enumerate(probes):  # v^T J v = (v^T J) . v, one vector-Jacobian product
            last = p == len(probes) - 1
            (vjp,) = torch.autograd.grad((eps_hat * v).sum(), x, retain_graph=not last)
            divs.append((vjp * v).flatten(1).double().sum(1))  # (B,)
        return eps_hat.detach(), torch.stack(divs)  # (P, B)


def ode_likelihood(
    model: Model,
    schedule: NoiseSchedule,
    x_0: torch.Tensor,
    *,
    steps: int = 24,
    probes: int | None = 1,
    generator: torch.Generator | None = None,
    timesteps: TimestepFn = logsnr_timesteps,
    progress: bool = True,
) -> LikelihoodResult:
    """log p(x_0) = log N(x_T; 0, I) + int div F dt along the probability-flow ODE from t = 1 to T.

    **The ODE and its variables.** In DDIM's variables y = x_t / sqrt(alpha_bar_t) and the EDM
    noise level sigma~ = sigma_t / sqrt(alpha_bar_t) the probability-flow ODE reads
    dy / dsigma~ = eps_theta(sqrt(alpha_bar) y, t), so the log-density of y changes by
    d log p / dsigma~ = -div_y eps_theta = -sqrt(alpha_bar) div_x eps_theta. DDIM is Euler's method
    on this ODE; here each step is **Heun's** (EDM's second-order trapezoidal step: the slope at
    both ends of the step, the second at the Euler point), because the solution curves are
    nearly straight lines in (sigma~, y), so a second-order step on a coarse grid is accurate.
    The log-density term is integrated by the trapezoidal rule in the half log-SNR lambda with
    the same two evaluations: as dsigma~ = -sigma~ dlambda, its integrand is sigma_t div_x
    eps_theta, which is bounded and smooth in lambda at both ends (about D sigma_t^2 where x_t is
    almost noise, about constant near the data), while in sigma~ it behaves like 1 / sigma~.

    **The time grid.** The book's integer times ``timesteps(schedule, steps + 1)`` without the
    final 0, increasing: t = 1, ..., T (the default :func:`logsnr_timesteps` spaces them equally
    in lambda), with ``steps`` Heun steps between them: NFE = 2 steps, each network evaluation
    with one backward pass per probe. The grid must end at T, where the prior is N(0, I). The
    data x_0 is placed at t = 1, the smallest noise level the networks were trained on, as Song
    et al. place it at t = epsilon = 1e-5 (appendix D.2): the result is the model's density of
    x_1 evaluated at x_0 (sigma_1 = 0.01 on the linear schedule, 1.3 grey levels of MNIST).
    Adding the scaling of y at both ends,

        log p(x_0) = log N(x_T; 0, I) + D/2 (log alpha_bar_T - log alpha_bar_1)
                     + int_{sigma~_1}^{sigma~_T} sqrt(alpha_bar) div_x eps_theta dsigma~.

    **The divergence.** ``probes=None``: exact, one backward pass per dimension (for 2-D
    examples). ``probes=k``: Hutchinson's estimator with k **Rademacher** probes v (entries +-1,
    drawn from ``generator``), which have E[v v^T] = I like Gaussian probes but a smaller variance
    (no diagonal term: Var = 2 sum_{i != j} J_ij^2, against 2 |J|_F^2 for Gaussian probes). Each
    probe stays fixed along the whole trajectory (as FFJORD does), so each probe's log p is an
    unbiased estimate of the discretised ODE's log p; the solver's step size adds a separate,
    deterministic bias, which shrinks like steps^-2. Only exp(log p) is biased by the probes'
    noise (Jensen). The trajectory itself does not depend on the probes.

    Returns a :class:`LikelihoodResult` (float64 log-densities, nats per example).
    Book: Scores, SDEs and the probability-flow ODE (Part 4). Chen et al. 2018, Theorem 1;
    Grathwohl et al. 2019 (FFJORD); Song et al. 2021 (ICLR), eq. 13 and appendix D.2;
    Karras et al. 2022, Algorithm 1 (the Heun step).
    """
    x_0 = check_start("x_0", x_0, schedule)
    check_int_in_range("steps", steps, 1, schedule.T - 1)
    if probes is not None:
        probes = check_positive_int("probes", probes)
    ts = resolve_timesteps(timesteps, schedule, steps + 1)[:-1][::-1]  # (steps + 1) times, 1..T
    if ts[-1] != schedule.T:
        raise ValueError(
            f"ode_likelihood integrates up to t = T = {schedule.T}, where the prior is N(0, I), "
            f"but timesteps(schedule, {steps + 1}) starts at t = {ts[-1]} (use a grid that "
            "includes T, e.g. logsnr_timesteps or uniform_timesteps)"
        )
    alpha_bar = [schedule.alpha_bar[t].item() for t in ts]
    sqrt_ab = [math.sqrt(a) for a in alpha_bar]
    sigma = [math.sqrt(1 - a) for a in alpha_bar]  # VP sigma_t
    edm_sigma = [s / a for s, a in zip(sigma, sqrt_ab, strict=True)]  # sigma~ = sigma / sqrt(ab)
    lam = [-math.log(s) for s in edm_sigma]  # half log-SNR
    d = x_0[0].numel()
    v = None
    if probes is not None:  # Rademacher probes, fixed along the trajectory
        device = generator.device if generator is not None else x_0.device
        bits = torch.randint(0, 2, (probes, *x_0.shape), generator=generator, device=device)
        v = (2 * bits - 1).to(dtype=x_0.dtype, device=x_0.device)  # (P, B, ...)

    def slope(y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dy/dsigma~ = eps_hat and sigma_t div_x eps_hat (P, B) at grid point k."""
        eps_hat, div = _eps_and_divergence(model, sqrt_ab[k] * y, ts[k], v)
        return eps_hat.to(y.dtype), sigma[k] * div

    y = x_0 / sqrt_ab[0]  # (B, ...): the data, placed at t = ts[0] = 1
    integral = torch.zeros(1 if v is None else probes, x_0.shape[0], dtype=torch.float64)
    integral = integral.to(x_0.device)  # (P, B): int sqrt(ab) div_x eps dsigma~ per probe
    bar = tqdm(total=2 * steps, desc="ODE likelihood", leave=False) if progress else None
    slope_k, weight_k = slope(y, 0)
    for k in range(steps):
        h = edm_sigma[k + 1] - edm_sigma[k]
        # Step 1: Euler's step (DDIM) to the next level, and the slope there.
        y_euler = y + h * slope_k  # (B, ...)
        slope_next, weight_next = slope(y_euler, k + 1)
        # Step 2: Heun's correction, the mean of the two slopes (Karras et al., Algorithm 1).
        y = y + h * (slope_k + slope_next) / 2
        # Step 3: the log-density term, trapezoidal in lambda (dsigma~ = -sigma~ dlambda).
        integral += (lam[k] - lam[k + 1]) * (weight_k + weight_next) / 2
        if bar is not None:
            bar.update(2 if k < steps - 1 else 1)
        if k < steps - 1:  # the slope at the corrected point starts the next step
            slope_k, weight_k = slope(y, k + 1)
    if bar is not None:
        bar.close()
    x_T = sqrt_ab[-1] * y  # (B, ...)
    prior = -0.5 * x_T.double().flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    scaling = 0.5 * d * (math.log(alpha_bar[-1]) - math.log(alpha_bar[0]))
    per_probe = prior + scaling + integral  # (P, B)
    delta = scaling + integral.mean(0)  # (B,)
    return LikelihoodResult(
        log_p=prior + delta,
        prior_log_p=prior,
        delta_log_p=delta,
        nfe=2 * steps,
        x_T=x_T,
        log_p_per_probe=None if v is None else per_probe,
    )


def bits_per_dim(
    log_p: torch.Tensor,
    dims: int,
    *,
    dequantized: bool = True,
    bin_width: float = MNIST_BIN_WIDTH,
) -> torch.Tensor:
    """bpd = -log p / (D ln 2) - log2(bin_width): a density of dequantised data in bits per dimension.

    Uniform dequantisation turns 256 grey levels into a density: the level k, scaled to x_k, is
    spread uniformly over its bin [x_k - bin_width / 2, x_k + bin_width / 2). For any density p
    of the dequantised data, the discrete model P(k) = int_bin p has
    log P(k) >= E_u[log p(x_k + u)] + D log(bin_width) (Jensen), so -log2 P(k) / D, the
    discrete bits per dimension, is at most -log p / (D ln 2) - log2(bin_width), the value
    returned (Theis et al. 2016; Ho et al. 2020 and Song et al. 2021 report it this way).
    The book scales x = k / 127.5 - 1, so the bin width is 2/255 and the constant is
    -log2(2/255) = +6.994 bits (not 7 = -log2(2/256): the levels are 2/255 apart, and the
    outer bins reach 1/255 beyond [-1, 1]). Check: the uniform density on the 256 bins,
    p = (1 / (256 bin_width))^D, gives exactly 8 bits. ``dequantized=False`` returns
    -log p / (D ln 2) alone, the density in bits (it can be negative). Works elementwise on
    ``log_p`` (nats); ``dims`` is D, the number of dimensions of one example.
    Book: Scores, SDEs and the probability-flow ODE (Part 4). Theis et al. 2016, sec. 3.1;
    Song et al. 2021 (ICLR), appendix D.2.
    """
    dims = check_positive_int("dims", dims)
    if not (isinstance(bin_width, (int, float)) and 0 < bin_width < math.inf):
        raise ValueError(f"bin_width must be a number > 0, got {bin_width!r}")
    bpd = -log_p / (dims * math.log(2))
    return bpd - math.log2(bin_width) if dequantized else bpd


def dequantize(
    x_0: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    bin_width: float = MNIST_BIN_WIDTH,
) -> torch.Tensor:
    """x_0 + bin_width (u - 1/2), u ~ U[0, 1)^D: each grey level spread uniformly over its bin.

    The input of :func:`ode_likelihood` for :func:`bits_per_dim` (``dequantized=True``); ``u`` is
    drawn from ``generator``. Book: Scores, SDEs and the probability-flow ODE (Part 4).
    Theis et al. 2016, sec. 3.1.
    """
    check_float_tensor("x_0", x_0)
    device = generator.device if generator is not None else x_0.device
    u = torch.rand(x_0.shape, generator=generator, device=device, dtype=torch.float64)
    return (x_0.double() + bin_width * (u.to(x_0.device) - 0.5)).to(x_0.dtype)

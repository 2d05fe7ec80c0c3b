"""The variance-preserving SDE behind the book's chain, and Langevin samplers that take a score.

The VP-SDE runs on SDE time tau in [0, 1] (0 = data, 1 = noise) with a linear rate beta(tau):

    dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw,   beta(tau) = beta_min + tau (beta_max - beta_min).

Its marginal given x_0 is N(a(tau) x_0, s(tau)^2 I) with a(tau) = exp(-B(tau) / 2),
s(tau)^2 = 1 - exp(-B(tau)) and B(tau) = int_0^tau beta(u) du = beta_min tau + (beta_max -
beta_min) tau^2 / 2. The book's chain with T steps is its discretisation with beta_t = beta(t / T) / T
(:meth:`VPSDE.chain_schedule`); DDPM's linear schedule with T = 1000 is beta_min ~ 0.08,
beta_max = 20 (:meth:`VPSDE.from_schedule`). Two time scales, two betas: the chain's beta_t
(dimensionless, ~1e-4..0.02) is beta(tau) times the step 1 / T, and the chain's alpha_bar_t is
exp(-B(t / T)) only up to O(1 / T). :meth:`VPSDE.grid_schedule` builds a NoiseSchedule whose
alpha_bar hits the SDE's exactly on a grid of times, so that the exact oracles of
``core.gaussian`` can be evaluated at any tau.

Book: Scores, SDEs and the probability-flow ODE (Part 4). Song et al. 2021 (score SDE), eqs. 5-6
(reverse SDE, Anderson 1982), eq. 13 (probability flow) and eqs. 32-33 (VP-SDE); Song & Ermon
2019, Algorithm 1 (annealed Langevin dynamics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffusion_tutorial.checks import (
    check_finite,
    check_float_in_range,
    check_float_tensor,
    check_positive_int,
    expand_like,
)
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.runtime import tqdm

__all__ = [
    "VPSDE",
    "Score",
    "NoisyScore",
    "langevin_sample",
    "annealed_step_sizes",
    "annealed_langevin_sample",
]

Score = Callable[[torch.Tensor], torch.Tensor]
"""``score(x) -> grad_x log p(x)``, shaped like x (B, ...)."""

NoisyScore = Callable[[torch.Tensor, float], torch.Tensor]
"""``score(x, sigma) -> grad_x log p_sigma(x)`` of the data blurred by N(0, sigma^2 I)."""

LINEAR_RTOL = 1e-9
"""How far (relative to beta_T) a schedule's betas may be from a straight line in t and still be
read as a linear VP-SDE by :meth:`VPSDE.from_schedule` (float64 linspace is exact to ~1e-16)."""


def _tau(tau: torch.Tensor | float) -> torch.Tensor:
    """``tau`` as a float64 tensor, or a ValueError naming tau and the range [0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, torch.Tensor)):
        raise TypeError(f"tau must be a number or a real tensor, got {type(tau).__name__}")
    # a Python float becomes float64 directly (torch.as_tensor would round it to float32 first)
    t = tau if isinstance(tau, torch.Tensor) else torch.tensor(float(tau), dtype=torch.float64)
    t = t.detach().to("cpu", torch.float64)
    if t.numel() and (torch.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError(
            f"tau must lie in [0, 1] (SDE time: 0 = data, 1 = noise; book time t is tau * T), "
            f"got values in [{t.min().item():.6g}, {t.max().item():.6g}]"
        )
    return t


@dataclass(frozen=True)
class VPSDE:
    """dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw on tau in [0, 1], beta linear from beta_min to beta_max.

    Every method takes tau as a float or a float tensor (e.g. (B,) for a batch) and returns float64
    (the ``x`` methods return x's dtype). Book: Scores, SDEs and the probability-flow ODE (Part 4),
    eq. (eq-sde-vp). Song et al. 2021, eq. 11 and appendix B (beta_min = 0.1, beta_max = 20).
    """

    beta_min: float  # beta(0) >= 0
    beta_max: float  # beta(1) >= beta_min, > 0

    def __post_init__(self) -> None:
        check_float_in_range("beta_min", self.beta_min, 0.0, None)
        check_float_in_range("beta_max", self.beta_max, 0.0, None, low_open=True)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min = {self.beta_min}, got {self.beta_max}")

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> VPSDE:
        """The VP-SDE whose chain (beta_t = beta(t / T) / T) is ``schedule``, a linear schedule.

        beta(tau) = T (beta_1 + (tau T - 1) d) with d = (beta_T - beta_1) / (T - 1), a line through
        the points (t / T, T beta_t). Other schedules (cosine) have a non-linear beta(tau) and are
        refused with a ValueError.
        """
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        T = schedule.T
        if T < 2:
            raise ValueError(f"schedule must have T >= 2 steps to define a line, got T = {T}")
        beta = schedule.beta[1:]  # (T,) beta_1..beta_T
        d = (beta[-1] - beta[0]) / (T - 1)
        line = beta[0] + d * torch.arange(T, dtype=torch.float64)  # (T,)
        if (beta - line).abs().max() > LINEAR_RTOL * beta[-1]:
            raise ValueError(
                "schedule must be linear in t (dt.linear_schedule) to be read as a VP-SDE with "
                f"linear beta(tau); its betas are off a line by up to {(beta - line).abs().max():.3g}"
            )
        beta_min = T * (beta[0] - d).item()
        if beta_min < 0:
            raise ValueError(
                f"schedule's line extrapolates to beta(0) = {beta_min:.3g} < 0 (beta_1 must be "
                f">= (beta_T - beta_1) / (T - 1))"
            )
        return cls(beta_min=beta_min, beta_max=T * beta[-1].item())

    # ------------------------------------------------------------------ closed forms
    def beta(self, tau: torch.Tensor | float) -> torch.Tensor:
        """beta(tau) = beta_min + tau (beta_max - beta_min): the rate per unit SDE time."""
        return self.beta_min + _tau(tau) * (self.beta_max - self.beta_min)

    def beta_integral(self, tau: torch.Tensor | float) -> torch.Tensor:
        """B(tau) = int_0^tau beta(u) du = beta_min tau + (beta_max - beta_min) tau^2 / 2."""
        tau = _tau(tau)
        return self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau**2

    def alpha_bar(self, tau: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar(tau) = exp(-B(tau)), the squared mean coefficient of x(tau) given x(0)."""
        return torch.exp(-self.beta_integral(tau))

    def mean_coef(self, tau: torch.Tensor | float) -> torch.Tensor:
        """a(tau) = exp(-B(tau) / 2): E[x(tau) | x(0)] = a(tau) x(0). Song et al. 2021, eq. 33."""
        return torch.exp(-0.5 * self.beta_integral(tau))

    def std(self, tau: torch.Tensor | float) -> torch.Tensor:
        """s(tau) = sqrt(1 - exp(-B(tau))): the std of x(tau) given x(0) (expm1: exact near 0)."""
        return (-torch.expm1(-self.beta_integral(tau))).sqrt()

    # ------------------------------------------------------------------ coefficients
    def drift(self, x: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
        """f(x, tau) = -1/2 beta(tau) x, the forward drift; tau a float or (B,)."""
        check_float_tensor("x", x)
        return -0.5 * expand_like(self.beta(tau), x).to(x) * x

    def diffusion(self, tau: torch.Tensor | float) -> torch.Tensor:
        """g(tau) = sqrt(beta(tau)), the forward diffusion coefficient."""
        return self.beta(tau).sqrt()

    def reverse_drift(
        self, x: torch.Tensor, tau: torch.Tensor | float, score: torch.Tensor
    ) -> torch.Tensor:
        """f - g^2 score: the drift of the reverse-time SDE in forward time (run with dtau < 0).

        Book: eq. (eq-sde-reverse). Anderson 1982; Song et al. 2021, eq. 6.
        """
        return self.drift(x, tau) - expand_like(self.beta(tau), x).to(x) * score

    def ode_drift(
        self, x: torch.Tensor, tau: torch.Tensor | float, score: torch.Tensor
    ) -> torch.Tensor:
        """f - g^2 score / 2: the velocity of the probability-flow ODE.

        Book: eq. (eq-sde-pf-ode). Song et al. 2021, eq. 13.
        """
        return self.drift(x, tau) - 0.5 * expand_like(self.beta(tau), x).to(x) * score

    # ------------------------------------------------------------------ schedules
    def chain_schedule(self, T: int) -> NoiseSchedule:
        """The book's discrete chain with T steps: beta_t = beta(t / T) / T for t = 1..T.

        Its alpha_bar_t = prod (1 - beta_s) equals the SDE's exp(-B(t / T)) up to O(1 / T).
        Book: eq. (eq-sde-chain). Song et al. 2021, appendix B.
        """
        T = check_positive_int("T", T)
        if self.beta_max / T >= 1:
            raise ValueError(
                f"T must be > beta_max = {self.beta_max:g} so that beta_T < 1, got {T}"
            )
        t = torch.arange(1, T + 1, dtype=torch.float64)  # (T,)
        beta = self.beta(t / T) / T
        if (
            beta[0] <= 0
        ):  # beta_min = 0: beta_1 = (beta_max / T) / T is still > 0 unless beta_max = 0
            raise ValueError("beta(1 / T) must be > 0; use beta_min > 0 or a larger beta_max")
        return NoiseSchedule.from_betas(beta)

    def grid_schedule(self, taus: torch.Tensor | Sequence[float]) -> NoiseSchedule:
        """A NoiseSchedule whose alpha_bar[k] is the SDE's alpha_bar(taus[k]) exactly, k = 1..K.

        ``taus`` increasing in (0, 1]; index 0 is tau = 0. beta_k = 1 - alpha_bar(tau_k) /
        alpha_bar(tau_{k-1}). Use it to evaluate the book's oracles (``GaussianMixtureData``,
        ``GaussianData``) at SDE times: book index k stands for tau_k.
        """
        taus = _tau(torch.as_tensor(taus, dtype=torch.float64)).reshape(-1)
        if taus.numel() == 0 or taus[0] <= 0 or (taus[1:] <= taus[:-1]).any():
            raise ValueError("taus must be a non-empty, strictly increasing grid in (0, 1]")
        b = self.beta_integral(torch.cat([taus.new_zeros(1), taus]))  # (K+1,)
        return NoiseSchedule.from_betas(-torch.expm1(-(b[1:] - b[:-1])))


# ---------------------------------------------------------------------------- Langevin samplers


def _check_score_output(out: object, x: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"score(x) must return a tensor shaped like x {tuple(x.shape)}, got {shape} {where}"
        )
    return check_finite(f"score(x) {where}", out.detach().to(x.dtype))


def langevin_sample(
    score: Score,
    x: torch.Tensor,
    *,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Unadjusted Langevin dynamics: x <- x + (delta / 2) score(x) + sqrt(delta) z, ``steps`` times.

    delta = ``step_size``. As delta -> 0 and steps -> infinity the law of x tends to the density
    whose score is given; at fixed delta it has an O(delta) bias (no Metropolis correction).
    ``callback(i, x)`` sees the state after step i = 0, 1, ... The score may use autograd
    (x is passed detached; the update runs without a graph).
    Book: Scores, SDEs and the probability-flow ODE (Part 4), eq. (eq-sde-langevin).
    Song & Ermon 2019, eq. 4; Roberts & Tweedie 1996.
    """
    check_float_tensor("x", x)
    delta = check_float_in_range("step_size", step_size, 0.0, None, low_open=True)
    steps = check_positive_int("steps", steps)
    x = check_finite("x", x).detach()
    bar = tqdm(range(steps), desc="Langevin", leave=False) if progress else range(steps)
    for i in bar:
        s = _check_score_output(score(x), x, f"at step {i}")
        x = x + 0.5 * delta * s + math.sqrt(delta) * randn_like(x, generator)
        if callback is not None:
            callback(i, x)
    return x


def annealed_step_sizes(sigmas: Sequence[float], eps: float) -> list[float]:
    """Song & Ermon's step per level: alpha_i = eps sigma_i^2 / sigma_L^2 (sigma_L the smallest).

    The step scales with the variance of the level, so the signal-to-noise ratio of an update is
    the same at every level. Song & Ermon 2019, Algorithm 1 and sec. 4.3.
    """
    eps = check_float_in_range("eps", eps, 0.0, None, low_open=True)
    sig = [check_float_in_range("sigmas", s, 0.0, None, low_open=True) for s in sigmas]
    if not sig:
        raise ValueError("sigmas must contain at least one noise level")
    return [eps * s**2 / sig[-1] ** 2 for s in sig]


def annealed_langevin_sample(
    score: NoisyScore,
    x: torch.Tensor,
    sigmas: Sequence[float],
    step_sizes: Sequence[float],
    *,
    steps_per_level: int,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Annealed Langevin dynamics: ``steps_per_level`` Langevin steps on score(x, sigma_i), i = 1..L.

    ``sigmas`` decreasing (from the noisiest level), ``step_sizes`` one per level (Song & Ermon's
    rule is :func:`annealed_step_sizes`). Each level starts where the previous one stopped.
    ``callback(i, x)`` sees the state after each step (i counts over all levels).
    Book: Scores, SDEs and the probability-flow ODE (Part 4). Song & Ermon 2019, Algorithm 1.
    """
    check_float_tensor("x", x)
    steps_per_level = check_positive_int("steps_per_level", steps_per_level)
    sig = [check_float_in_range("sigmas", s, 0.0, None, low_open=True) for s in sigmas]
    deltas = [check_float_in_range("step_sizes", d, 0.0, None, low_open=True) for d in step_sizes]
    if not sig or len(deltas) != len(sig):
        raise ValueError(
            f"sigmas and step_sizes must be non-empty and of equal length, got {len(sig)} and "
            f"{len(deltas)}"
        )
    if any(a <= b for a, b in zip(sig, sig[1:], strict=False)):
        raise ValueError(f"sigmas must be strictly decreasing (noisiest first), got {sig[:4]}...")
    x = check_finite("x", x).detach()
    n = len(sig) * steps_per_level
    bar = tqdm(range(n), desc="annealed Langevin", leave=False) if progress else range(n)
    for i in bar:
        level = i // steps_per_level
        sigma, delta = sig[level], deltas[level]
        s = _check_score_output(score(x, sigma), x, f"at sigma = {sigma:.4g}")
        x = x + 0.5 * delta * s + math.sqrt(delta) * randn_like(x, generator)
        if callback is not None:
            callback(i, x)
    return x

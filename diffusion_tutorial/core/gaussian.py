"""Exact oracles for Gaussian data x_0 ~ N(mean, diag(std^2)): optimal denoiser and exact ODE flow.

For such data every quantity a diffusion model learns has a closed form, so samplers can be
tested against exact answers. With a_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t):

- marginal:      x_t ~ N(a_t mean, m_t^2) per coordinate, m_t^2 = a_t^2 std^2 + sigma_t^2;
- optimal eps:   E[eps | x_t] = sigma_t (x_t - a_t mean) / m_t^2  (the minimiser of L_simple);
- optimal x0:    E[x_0 | x_t] = mean + a_t std^2 (x_t - a_t mean) / m_t^2;
- PF-ODE flow:   the probability-flow ODE keeps z = (x_t - a_t mean) / m_t constant, so the exact
  map from time s to time t is x_t = a_t mean + m_t (x_s - a_s mean) / m_s (t = 0 included).

The flow is exact for the continuous ODE through the schedule's (a_t, sigma_t) points; it does not
depend on how time is parameterised between grid points. ``GaussianData`` and
``GaussianMixtureData`` accept fractional
book times t (a float tensor): alpha_bar_t is then ``core.time.NoiseLevel.from_t(t, schedule)``'s,
by interpolation in log-SNR, so the EDM samplers can be checked between grid times. Computations run in float64 and the
result is cast to the input dtype.

Book: Reverse process (the Gaussian case, Part 2). Song et al. 2021, eq. 13 (ODE).

:class:`GaussianMixtureData` extends the optimal denoiser to a mixture sum_k w_k N(mu_k, sigma_data_k^2 I),
where it is no longer linear in x_t, and gives the exact posterior variance of eps, whose mean over
x_t is the best loss any eps-predictor can reach at time t. Book: Example: DDPM (Part 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_tutorial.background.probability import MonteCarloEstimate, mc_mean
from diffusion_tutorial.checks import (
    check_float_tensor,
    check_positive_int,
    check_time_indices,
    expand_like,
)
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.core.time import NoiseLevel, check_book_times

__all__ = ["GaussianData", "GaussianMixtureData"]


@dataclass(frozen=True, eq=False)
class GaussianData:
    """Data distribution N(mean, diag(std^2)) for examples of shape ``mean.shape``.

    ``data.model(schedule)`` is the exact optimal eps-predictor ``model(x_t, t)``; ``data.flow``
    the exact probability-flow ODE map; ``data.sample(n)`` draws x_0.
    """

    mean: torch.Tensor  # (*shape)
    std: torch.Tensor  # (*shape), > 0

    def __post_init__(self) -> None:
        check_float_tensor("mean", self.mean)
        check_float_tensor("std", self.std)
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"mean and std must have the same shape, got {self.mean.shape}, {self.std.shape}"
            )
        if not (torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError("std must be finite and > 0")
        object.__setattr__(self, "mean", self.mean.detach().to(torch.float64))
        object.__setattr__(self, "std", self.std.detach().to(torch.float64))

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw n examples x_0 = mean + std * eps, shape (n, *mean.shape)."""
        eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * eps).to(dtype)  # (n, *shape)

    def _coefs(self, t: torch.Tensor | int, schedule: NoiseSchedule, x: torch.Tensor, low: int):
        t = check_book_times("t", t, x.shape[0], low, schedule.T, x.device).cpu()  # (B,)
        xd = x.detach().to(device="cpu", dtype=torch.float64)  # (B, *shape)
        if t.dtype.is_floating_point:  # a fractional book time: alpha_bar by the log-SNR rule
            alpha_bar = NoiseLevel.from_t(t, schedule).alpha_bar()  # (B,)
        else:
            alpha_bar = schedule.alpha_bar.cpu()[t]  # (B,)
        a = expand_like(alpha_bar.sqrt(), xd)  # (B, 1, ..., 1)
        sigma2 = expand_like(1 - alpha_bar, xd)  # (B, 1, ..., 1)
        m = (a**2 * self.std**2 + sigma2).sqrt()  # (B, *shape): std of x_t
        return xd, a, sigma2.sqrt(), m

    def marginal_std(self, t: torch.Tensor | int, schedule: NoiseSchedule, x: torch.Tensor):
        """Per-coordinate std of q(x_t): m_t = sqrt(alpha_bar_t std^2 + 1 - alpha_bar_t), like x."""
        _, _, _, m = self._coefs(t, schedule, x, low=0)
        return m.to(device=x.device, dtype=x.dtype)

    def eps_hat(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule):
        """Optimal eps-prediction E[eps | x_t] = sigma_t (x_t - a_t mean) / m_t^2; t in 1..T."""
        check_float_tensor("x_t", x_t)
        xd, a, sigma, m = self._coefs(t, schedule, x_t, low=1)
        return (sigma * (xd - a * self.mean) / m**2).to(device=x_t.device, dtype=x_t.dtype)

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule):
        """Optimal x0-prediction E[x_0 | x_t] = mean + a_t std^2 (x_t - a_t mean) / m_t^2; t in 0..T."""
        check_float_tensor("x_t", x_t)
        xd, a, _, m = self._coefs(t, schedule, x_t, low=0)
        out = self.mean + a * self.std**2 * (xd - a * self.mean) / m**2
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def model(self, schedule: NoiseSchedule):
        """The exact optimal eps-predictor as a sampler-ready callable ``model(x_t, t) -> eps_hat``."""

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.eps_hat(x_t, t, schedule)

        return model

    def flow(
        self,
        x_s: torch.Tensor,
        s: torch.Tensor | int,
        t: torch.Tensor | int,
        schedule: NoiseSchedule,
    ) -> torch.Tensor:
        """Exact probability-flow ODE map from time s to time t: x_t = a_t mean + m_t (x_s - a_s mean) / m_s.

        Works both ways (t < s denoises, t > s encodes); t = 0 gives the ODE's clean endpoint.
        """
        check_float_tensor("x_s", x_s)
        xd, a_s, _, m_s = self._coefs(s, schedule, x_s, low=0)
        _, a_t, _, m_t = self._coefs(t, schedule, x_s, low=0)
        z = (xd - a_s * self.mean) / m_s  # (B, *shape), invariant along the flow
        return (a_t * self.mean + m_t * z).to(device=x_s.device, dtype=x_s.dtype)

    def ode_endpoint(self, x_T: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """Exact clean endpoint of the probability-flow ODE started from x_T at t = T."""
        return self.flow(x_T, schedule.T, 0, schedule)


@dataclass(frozen=True, eq=False)
class GaussianMixtureData:
    """Data x_0 ~ sum_k w_k N(mu_k, sigma_data_k^2 I) in D dimensions: K isotropic Gaussian components.

    ``weights`` (K,) > 0 summing to 1, ``means`` (K, D), ``stds`` (K,) > 0. Given the component k,
    x_t = a_t x_0 + sigma_t eps is Gaussian with mean a_t mu_k and variance m_k^2 = a_t^2 sigma_data_k^2
    + sigma_t^2 per coordinate, so with responsibilities r_k(x_t) = p(k | x_t) (Bayes' rule):

    - E[eps | x_t] = sum_k r_k e_k, with e_k = sigma_t (x_t - a_t mu_k) / m_k^2;
    - tr Cov[eps | x_t] = sum_k r_k (D a_t^2 sigma_data_k^2 / m_k^2 + |e_k|^2) - |E[eps | x_t]|^2.

    Computations run in float64; results are cast to the input's dtype and device.
    Book: Example: DDPM (Part 2), eq. (eq-ddpmex-best-loss).
    """

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    stds: torch.Tensor  # (K,)

    def __post_init__(self) -> None:
        for name in ("weights", "means", "stds"):
            check_float_tensor(name, getattr(self, name))
        w, mu, s = self.weights, self.means, self.stds
        if mu.ndim != 2 or w.shape != (mu.shape[0],) or s.shape != (mu.shape[0],):
            raise ValueError(
                "means must have shape (K, D) and weights, stds shape (K,), got "
                f"{tuple(w.shape)}, {tuple(mu.shape)}, {tuple(s.shape)}"
            )
        if not (torch.isfinite(w).all() and (w > 0).all() and abs(w.sum().item() - 1) < 1e-6):
            raise ValueError(f"weights must be > 0 and sum to 1, got sum {w.sum().item():.6g}")
        if not (torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError("stds must be finite and > 0")
        if not torch.isfinite(mu).all():
            raise ValueError("means must be finite")
        for name in ("weights", "means", "stds"):
            object.__setattr__(self, name, getattr(self, name).detach().cpu().to(torch.float64))

    @property
    def dim(self) -> int:
        """The dimension D of one example."""
        return self.means.shape[1]

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw n examples (n, D): a component k ~ w, then x_0 = mu_k + sigma_data_k * eps."""
        n = check_positive_int("n", n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * eps).to(dtype)  # (n, D)

    def _posterior(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule, low):
        """log r_k (B, K), e_k (B, K, D) and the per-coordinate Var[eps | x_t, k] (B, K)."""
        check_float_tensor("x_t", x_t)
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {tuple(x_t.shape)}")
        t = check_book_times("t", t, x_t.shape[0], low, schedule.T, x_t.device).cpu()  # (B,)
        x = x_t.to(device="cpu", dtype=torch.float64)  # (B, D), differentiable (log_prob)
        if t.dtype.is_floating_point:  # a fractional book time: alpha_bar by the log-SNR rule
            alpha_bar = NoiseLevel.from_t(t, schedule).alpha_bar()[:, None]  # (B, 1)
        else:
            alpha_bar = schedule.alpha_bar.cpu()[t, None]  # (B, 1)
        a, sigma2 = alpha_bar.sqrt(), 1 - alpha_bar  # (B, 1)
        m2 = a**2 * self.stds**2 + sigma2  # (B, K): variance of x_t | k per coordinate
        diff = x[:, None, :] - a[:, :, None] * self.means  # (B, K, D): x_t - a_t mu_k
        log_lik = -0.5 * ((diff**2).sum(-1) / m2 + self.dim * torch.log(2 * torch.pi * m2))
        log_r = torch.log_softmax(self.weights.log() + log_lik, dim=1)  # (B, K)
        e = sigma2.sqrt()[:, :, None] * diff / m2[:, :, None]  # (B, K, D): E[eps | x_t, k]
        return log_r, e, a**2 * self.stds**2 / m2, log_lik

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule):
        """log q(x_t) (B,) of the marginal at time t in 0..T (t = 0: the data density)."""
        log_r, _, _, log_lik = self._posterior(x_t, t, schedule, low=0)
        out = torch.logsumexp(self.weights.log() + log_lik, dim=1)  # (B,)
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def eps_hat(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule):
        """The optimal eps-prediction E[eps | x_t] = sum_k r_k(x_t) e_k(x_t), (B, D); t in 1..T."""
        log_r, e, _, _ = self._posterior(x_t, t, schedule, low=1)
        out = (log_r.exp()[:, :, None] * e).sum(1)  # (B, D)
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def eps_posterior_var(self, x_t: torch.Tensor, t: torch.Tensor | int, schedule: NoiseSchedule):
        """tr Cov[eps | x_t] (B,): the expected squared error of the optimal eps-prediction at x_t.

        Law of total variance over the component: within-component variance plus the spread of
        the component means e_k around their average. Book: eq. (eq-ddpmex-best-loss).
        """
        log_r, e, var_k, _ = self._posterior(x_t, t, schedule, low=1)
        r = log_r.exp()  # (B, K)
        mean = (r[:, :, None] * e).sum(1)  # (B, D)
        second = (r * (self.dim * var_k + (e**2).sum(-1))).sum(1)  # (B,): E[|eps|^2 | x_t]
        out = (second - (mean**2).sum(-1)).clamp_min(0)  # (B,); rounding can go below 0
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def model(self, schedule: NoiseSchedule):
        """The exact optimal eps-predictor as a sampler-ready callable ``model(x_t, t) -> eps_hat``."""

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.eps_hat(x_t, t, schedule)

        return model

    def best_loss(
        self,
        t: int,
        schedule: NoiseSchedule,
        n: int,
        generator: torch.Generator | None = None,
    ) -> MonteCarloEstimate:
        """min_f E|eps - f(x_t, t)|^2 / D at time t, per coordinate like ``simple_loss``.

        The mean over x_t ~ q(x_t) of tr Cov[eps | x_t] / D, estimated from n exact draws of x_t
        (the conditional variance is exact, so only the average over x_t is Monte Carlo: a
        Rao-Blackwellised estimate with a smaller standard error than averaging |eps - eps_hat|^2).
        Book: Example: DDPM (Part 2), eq. (eq-ddpmex-best-loss).
        """
        t = check_time_indices("t", t, 1, 1, schedule.T, torch.device("cpu"))[0].item()
        x_0 = self.sample(n, generator, dtype=torch.float64)  # (n, D)
        eps = torch.randn(x_0.shape, generator=generator, dtype=torch.float64)
        alpha_bar = schedule.alpha_bar[t].item()
        x_t = alpha_bar**0.5 * x_0 + (1 - alpha_bar) ** 0.5 * eps  # (n, D)
        return mc_mean(self.eps_posterior_var(x_t, t, schedule) / self.dim)

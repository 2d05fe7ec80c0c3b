"""Exact oracles for Gaussian data x_0 ~ N(mean, diag(std^2)): optimal denoiser and exact ODE flow.

For such data every quantity a diffusion model learns has a closed form, so samplers can be
tested against exact answers. With a_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t):

- marginal:      x_t ~ N(a_t mean, m_t^2) per coordinate, m_t^2 = a_t^2 std^2 + sigma_t^2;
- optimal eps:   E[eps | x_t] = sigma_t (x_t - a_t mean) / m_t^2  (the minimiser of L_simple);
- optimal x0:    E[x_0 | x_t] = mean + a_t std^2 (x_t - a_t mean) / m_t^2;
- PF-ODE flow:   the probability-flow ODE keeps z = (x_t - a_t mean) / m_t constant, so the exact
  map from time s to time t is x_t = a_t mean + m_t (x_s - a_s mean) / m_s (t = 0 included).

The flow is exact for the continuous ODE through the schedule's (a_t, sigma_t) points; it does not
depend on how time is parameterised between grid points. Computations run in float64 and the
result is cast to the input dtype.

Book: Reverse process (the Gaussian case, Part 2). Song et al. 2021, eq. 13 (ODE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_tutorial.checks import check_float_tensor, check_time_indices, expand_like
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = ["GaussianData"]


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
        t = check_time_indices("t", t, x.shape[0], low, schedule.T, x.device).cpu()  # (B,)
        xd = x.detach().to(device="cpu", dtype=torch.float64)  # (B, *shape)
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

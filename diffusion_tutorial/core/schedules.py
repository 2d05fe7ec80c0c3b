"""Noise schedules: beta_t, alpha_t and alpha_bar_t, indexed like the book (t = 0..T).

Book: Forward process (schedules). Every array has length T + 1 with ``beta[0] = 0`` and
``alpha_bar[0] = 1``, so ``alpha_bar[t]`` is the paper's alpha_bar_t and code index == book index.
diffusers stores the same numbers shifted by one: ``alphas_cumprod[t - 1] == alpha_bar[t]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffusion_tutorial.checks import check_float_in_range, check_positive_int, check_time_indices

__all__ = [
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "scaled_linear_schedule",
    "SCHEDULES",
    "check_timesteps",
]


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """An immutable variance-preserving schedule: float64 ``beta``, ``alpha``, ``alpha_bar`` of length T+1.

    ``alpha[t] = 1 - beta[t]`` and ``alpha_bar[t] = prod_{s<=t} alpha[s]``; index 0 is the clean data
    (``beta[0] = 0``, ``alpha_bar[0] = 1``). Build one with :meth:`from_betas` or a named schedule.

    Book: Forward process, eq. (fwd-alpha-bar). Ho et al. 2020, eq. 4.
    """

    beta: torch.Tensor  # (T+1,) float64, beta[0] = 0
    alpha: torch.Tensor  # (T+1,) float64, alpha = 1 - beta
    alpha_bar: torch.Tensor  # (T+1,) float64, cumulative product of alpha

    def __post_init__(self) -> None:
        for name in ("beta", "alpha", "alpha_bar"):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or v.dtype != torch.float64 or v.ndim != 1:
                raise TypeError(
                    f"{name} must be a 1-D float64 tensor; use NoiseSchedule.from_betas"
                )
            if v.shape[0] < 2:
                raise ValueError(f"{name} must have length T + 1 >= 2, got {v.shape[0]}")
        if not (self.beta.shape == self.alpha.shape == self.alpha_bar.shape):
            raise ValueError("beta, alpha and alpha_bar must all have length T + 1")
        if self.beta[0] != 0 or self.alpha_bar[0] != 1:
            raise ValueError("beta[0] must be 0 and alpha_bar[0] must be 1 (book indexing)")
        _check_betas(self.beta[1:])
        if not torch.allclose(self.alpha, 1 - self.beta, rtol=0, atol=1e-12):
            raise ValueError("alpha must equal 1 - beta")
        if not torch.allclose(self.alpha_bar, torch.cumprod(self.alpha, 0), rtol=1e-10, atol=0):
            raise ValueError("alpha_bar must equal the cumulative product of alpha")
        if not self.alpha_bar[-1] > 0:
            raise ValueError("alpha_bar[T] underflowed to 0; use fewer steps or smaller betas")

    @classmethod
    def from_betas(cls, beta: torch.Tensor | Sequence[float]) -> NoiseSchedule:
        """Build a schedule from ``beta_1..beta_T`` (length T, each in (0, 1)); prepends beta_0 = 0.

        Book: Forward process, eq. (fwd-alpha-bar). Ho et al. 2020, eq. 4.
        """
        beta = torch.as_tensor(beta, dtype=torch.float64).detach().cpu()
        if beta.ndim != 1 or beta.shape[0] < 1:
            raise ValueError(
                f"beta must be a 1-D sequence of length T >= 1, got shape {tuple(beta.shape)}"
            )
        _check_betas(beta)
        beta = torch.cat([beta.new_zeros(1), beta])  # (T+1,)
        alpha = 1 - beta  # (T+1,)
        return cls(beta=beta, alpha=alpha, alpha_bar=torch.cumprod(alpha, 0))

    @property
    def T(self) -> int:
        """Number of diffusion steps T (arrays have length T + 1)."""
        return self.beta.shape[0] - 1

    @property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        """sqrt(alpha_bar_t): the signal scale of x_t (DPM-Solver's alpha_t, not ours)."""
        return self.alpha_bar.sqrt()

    @property
    def sigma(self) -> torch.Tensor:
        """sigma_t = sqrt(1 - alpha_bar_t): standard deviation of the noise in x_t (0 at t = 0)."""
        return (1 - self.alpha_bar).clamp_min(0).sqrt()

    @property
    def snr(self) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t); ``snr[0] = inf``. Kingma et al. 2021, eq. 2."""
        return self.alpha_bar / (1 - self.alpha_bar)

    @property
    def lam(self) -> torch.Tensor:
        """Half log-SNR lambda_t = log(sqrt(alpha_bar_t) / sigma_t); ``lam[0] = inf``. Lu et al. 2022."""
        return 0.5 * (torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar))

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t; 0 at t = 0 and t = 1.

        Book: Reverse process, eq. (posterior-variance). Ho et al. 2020, eq. 7.
        """
        out = torch.zeros_like(self.beta)  # (T+1,)
        out[1:] = (1 - self.alpha_bar[:-1]) / (1 - self.alpha_bar[1:]) * self.beta[1:]
        return out

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with the tensors on ``device`` (still float64; samplers cast per input anyway)."""
        return NoiseSchedule(
            beta=self.beta.to(device),
            alpha=self.alpha.to(device),
            alpha_bar=self.alpha_bar.to(device),
        )

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, alpha_bar[T]={self.alpha_bar[-1].item():.3g})"


def _check_betas(beta: torch.Tensor) -> None:
    """Raise ValueError unless every beta_1..beta_T is finite and strictly inside (0, 1)."""
    if not torch.isfinite(beta).all() or (beta <= 0).any() or (beta >= 1).any():
        bad = beta[~(torch.isfinite(beta) & (beta > 0) & (beta < 1))][0].item()
        raise ValueError(f"beta_1..beta_T must lie in (0, 1), got {bad}")


def _check_increasing_pair(beta_start: float, beta_end: float) -> None:
    check_float_in_range("beta_start", beta_start, 0.0, 1.0, low_open=True, high_open=True)
    check_float_in_range("beta_end", beta_end, 0.0, 1.0, low_open=True, high_open=True)
    if beta_end < beta_start:
        raise ValueError(f"beta_end must be >= beta_start={beta_start}, got {beta_end}")


def linear_schedule(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """DDPM's linear schedule: beta_t = beta_start + (t - 1) / (T - 1) * (beta_end - beta_start).

    The defaults are tuned for T = 1000 (alpha_bar_T ~ 4e-5). For another T scale both betas by
    1000 / T (as Nichol & Dhariwal 2021 do), otherwise alpha_bar_T is far from 0.
    Book: Forward process, eq. (linear-schedule). Ho et al. 2020, sec. 4.
    """
    T = check_positive_int("T", T)
    _check_increasing_pair(beta_start, beta_end)
    return NoiseSchedule.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Cosine schedule: alpha_bar_t = f(t) / f(0), f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2.

    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} is clipped at ``max_beta`` (only the last step is
    affected for the defaults), and alpha_bar is recomputed from the clipped betas.
    Book: Forward process, eq. (cosine-schedule). Nichol & Dhariwal 2021, eq. 17.
    """
    T = check_positive_int("T", T)
    s = check_float_in_range("s", s, 0.0, None, low_open=True)
    max_beta = check_float_in_range("max_beta", max_beta, 0.0, 1.0, low_open=True, high_open=True)
    t = torch.arange(T + 1, dtype=torch.float64)  # (T+1,)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
    alpha_bar = f / f[0]  # (T+1,)
    beta = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)  # (T,)
    return NoiseSchedule.from_betas(beta)


def scaled_linear_schedule(
    T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> NoiseSchedule:
    """Scaled-linear schedule: sqrt(beta_t) linear from sqrt(beta_start) to sqrt(beta_end).

    The schedule of Latent/Stable Diffusion (diffusers' ``"scaled_linear"``).
    Book: Forward process (other schedules). Rombach et al. 2022, appendix (LDM configs).
    """
    T = check_positive_int("T", T)
    _check_increasing_pair(beta_start, beta_end)
    root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
    return NoiseSchedule.from_betas(root**2)


SCHEDULES = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "scaled_linear": scaled_linear_schedule,
}
"""Name -> schedule function ``f(T) -> NoiseSchedule`` (checkpoints, the training CLI, pretrained)."""


def check_timesteps(
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    *,
    low: int = 1,
    name: str = "t",
) -> torch.Tensor:
    """Return ``t`` as an int64 tensor of shape (B,) on ``x``'s device, or raise if any is outside low..T.

    An int is broadcast to the batch. ``B = x.shape[0]``.
    """
    return check_time_indices(name, t, x.shape[0], low, schedule.T, x.device)

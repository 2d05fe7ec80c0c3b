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

from diffusion_tutorial.checks import check_float_in_range, check_positive_int

__all__ = [
    "NoiseSchedule",
    "linear_schedule",
    "cosine_schedule",
    "scaled_linear_schedule",
    "SCHEDULES",
    "ALPHA_BAR_MIN",
]

ALPHA_BAR_MIN = torch.finfo(torch.float32).tiny
"""Smallest allowed alpha_bar_T: float32's smallest normal number, 2**-126 ~ 1.18e-38.

Samplers and models run in float32. With alpha_bar_T >= 2**-126, alpha_bar_T itself, sqrt(alpha_bar_T)
>= 2**-63, 1 / sqrt(alpha_bar_T) <= 2**63 and lambda_T >= -43.7 are all finite, normal float32
numbers, so x0_hat = (x_t - sigma_t eps_hat) / sqrt(alpha_bar_T) cannot divide by zero. Below it
alpha_bar_T rounds to a subnormal or to 0 in float32 and samplers return inf or NaN: a schedule that
long (``linear_schedule(20000)``: alpha_bar_T ~ 1e-87) is refused.
"""


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """An immutable variance-preserving schedule: float64 ``beta``, ``alpha``, ``alpha_bar`` of length T+1.

    ``alpha[t] = 1 - beta[t]`` and ``alpha_bar[t] = prod_{s<=t} alpha[s]``; index 0 is the clean data
    (``beta[0] = 0``, ``alpha_bar[0] = 1``). Build one with :meth:`from_betas` or a named schedule.

    Book: Forward process (Part 2). Ho et al. 2020, eq. 4.
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
        if not self.alpha_bar[-1] >= ALPHA_BAR_MIN:
            raise ValueError(
                f"alpha_bar[T] = {self.alpha_bar[-1].item():.3g} for T = {self.T} is below "
                f"ALPHA_BAR_MIN = {ALPHA_BAR_MIN:.3g} (float32's smallest normal number), where "
                "float32 sampling divides by zero; use fewer steps T or smaller betas"
            )

    @classmethod
    def from_betas(cls, beta: torch.Tensor | Sequence[float]) -> NoiseSchedule:
        """Build a schedule from ``beta_1..beta_T`` (length T, each in (0, 1)); prepends beta_0 = 0.

        Book: Forward process (Part 2). Ho et al. 2020, eq. 4.
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

        Book: Reverse process (Part 2). Ho et al. 2020, eq. 7.
        """
        out = torch.zeros_like(self.beta)  # (T+1,)
        out[1:] = (1 - self.alpha_bar[:-1]) / (1 - self.alpha_bar[1:]) * self.beta[1:]
        return out

    @property
    def posterior_mean_coefs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients (c_x0[t], c_xt[t]) of mu_tilde_t = c_x0[t] x_0 + c_xt[t] x_t, each (T+1,) float64.

        c_x0[t] = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) and
        c_xt[t] = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); both 0 at t = 0 (undefined).
        The one place the posterior mean's coefficients are computed (``q_posterior``, DDPM sampling).
        Book: Reverse process (Part 2). Ho et al. 2020, eq. 7.
        """
        c_x0 = torch.zeros_like(self.beta)  # (T+1,)
        c_xt = torch.zeros_like(self.beta)  # (T+1,)
        one_minus_alpha_bar = 1 - self.alpha_bar[1:]  # (T,)
        c_x0[1:] = self.alpha_bar[:-1].sqrt() * self.beta[1:] / one_minus_alpha_bar
        c_xt[1:] = self.alpha[1:].sqrt() * (1 - self.alpha_bar[:-1]) / one_minus_alpha_bar
        return c_x0, c_xt

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


def _log_alpha_bar_T(beta: torch.Tensor) -> float:
    return torch.log1p(-beta).sum().item()  # log alpha_bar_T, exact where the product underflows


def _check_alpha_bar_T(betas, T: int, which: str) -> None:
    """Raise ValueError naming the allowed T when alpha_bar_T = prod(1 - betas(T)) < ALPHA_BAR_MIN.

    The allowed range 1..T_max is found by bisection (alpha_bar_T falls as T grows for fixed
    beta_start and beta_end), only on failure.
    """
    log_min = math.log(ALPHA_BAR_MIN)
    if _log_alpha_bar_T(betas(T)) >= log_min:
        return
    lo, hi = 0, T  # alpha_bar ok at lo (T = 0 is 1), too small at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _log_alpha_bar_T(betas(mid)) >= log_min else (lo, mid)
    allowed = f"1..{lo}" if lo >= 1 else "none (make the betas smaller)"
    raise ValueError(
        f"T must be in {allowed} for {which}: with T = {T}, alpha_bar[T] = "
        f"exp({_log_alpha_bar_T(betas(T)):.4g}) is below ALPHA_BAR_MIN = {ALPHA_BAR_MIN:.3g} "
        "(float32's smallest normal number) and float32 sampling would return NaN"
    )


def linear_schedule(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """DDPM's linear schedule: beta_t = beta_start + (t - 1) / (T - 1) * (beta_end - beta_start).

    The defaults are tuned for T = 1000 (alpha_bar_T ~ 4e-5). For another T scale both betas by
    1000 / T (as Nichol & Dhariwal 2021 do), otherwise alpha_bar_T is far from 0.
    Book: Forward process (Part 2). Ho et al. 2020, sec. 4.
    """
    T = check_positive_int("T", T)
    _check_increasing_pair(beta_start, beta_end)

    def betas(n: int) -> torch.Tensor:
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)  # (n,)

    _check_alpha_bar_T(betas, T, f"beta_start={beta_start:g}, beta_end={beta_end:g}")
    return NoiseSchedule.from_betas(betas(T))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Cosine schedule: alpha_bar_t = f(t) / f(0), f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2.

    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} is clipped at ``max_beta`` (only the last step is
    affected for the defaults), and alpha_bar is recomputed from the clipped betas.
    Book: Forward process (Part 2). Nichol & Dhariwal 2021, eq. 17.
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

    def betas(n: int) -> torch.Tensor:
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64)
        return root**2  # (n,)

    _check_alpha_bar_T(betas, T, f"beta_start={beta_start:g}, beta_end={beta_end:g}")
    return NoiseSchedule.from_betas(betas(T))


SCHEDULES = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "scaled_linear": scaled_linear_schedule,
}
"""Name -> schedule function ``f(T) -> NoiseSchedule`` (checkpoints, the training CLI, pretrained)."""

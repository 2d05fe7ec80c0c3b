"""The package's one converter between time conventions: book t, VP-SDE time, sigma, lambda, flow time.

Every convention names a point on the same variance-preserving path x = a x_0 + b eps, with
a = sqrt(alpha_bar) and b = sqrt(1 - alpha_bar). A :class:`NoiseLevel` stores that point as its
half log-SNR lam = log(a / b) (float64; +inf is clean data, -inf pure noise) and converts it to and
from each convention:

==================================  ====================================  ===============
convention                          in terms of lam                       clean ... noise
==================================  ====================================  ===============
book index t (fractional)           lam = schedule.lam interpolated in t  0 ... T
VP-SDE time tau = t / T             as the book index                     0 ... 1
VP sigma = b = sqrt(1 - alpha_bar)  sqrt(sigmoid(-2 lam))                 0 ... 1
EDM / VE sigma = b / a              exp(-lam)                             0 ... inf
alpha_bar = a^2                     sigmoid(2 lam)                        1 ... 0
flow time s, 0 at noise (Lipman)    sigmoid(lam) = a / (a + b)            1 ... 0
flow time 1 - s, 0 at data (SD3)    sigmoid(-lam) = b / (a + b)           0 ... 1
==================================  ====================================  ===============

The flow rows: x / (a + b) = (a / (a + b)) x_0 + (b / (a + b)) eps is a point of the linear path
x_FM = s x_0 + (1 - s) eps at s = a / (a + b) (Lipman et al. 2023, Liu et al. 2023: noise at
s = 0), or x_FM = (1 - r) x_0 + r eps at r = 1 - s (Esser et al. 2024, SD3 and minRF: data at
r = 0; the book writes 1 - s, since u is flow matching's velocity). So x_VP = (a + b) x_FM, and a / (a + b) = 1 / (1 + exp(-lam)) = sigmoid(lam).

Fractional book times (the rule): for t in [1, T], lam is linear in t between the grid values
``schedule.lam[floor(t)]`` and ``schedule.lam[floor(t) + 1]`` (interpolation in log-SNR; also
diffusers' ``_sigma_to_t``, which interpolates log EDM-sigma = -lam in its 0-based index t - 1).
On [0, 1], where lam_0 = inf, the EDM sigma is linear instead: sigma(t) = t sigma_1, so t = 0 is
the data. The map is continuous and strictly decreasing in t, so it inverts exactly.

Book: Notation (time conventions); Scores and SDEs, Flow matching. Song et al. 2021 (VP-SDE);
Karras et al. 2022 (EDM), sec. 2 and Table 1; Lu et al. 2022 (lambda); Lipman et al. 2023;
Esser et al. 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion_tutorial.checks import check_time_indices
from diffusion_tutorial.core.schedules import NoiseSchedule

__all__ = ["NoiseLevel", "check_book_times"]


def _as_float64(name: str, value: torch.Tensor | float, low: float, high: float) -> torch.Tensor:
    """``value`` as a float64 tensor, or raise naming ``name`` and the interval [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a real tensor, got {type(value).__name__}")
    v = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{name} must be a real number or tensor, got a {v.dtype} tensor")
    v = v.to(torch.float64)
    if v.numel() and (torch.isnan(v).any() or v.min() < low or v.max() > high):
        got = (
            "NaN"
            if torch.isnan(v).any()
            else f"values in [{v.min().item():.6g}, {v.max().item():.6g}]"
        )
        raise ValueError(f"{name} must lie in [{low:.6g}, {high:.6g}], got {got}")
    return v


def _grid_lam(schedule: NoiseSchedule, device: torch.device) -> torch.Tensor:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return schedule.lam.to(device)  # (T+1,) float64, lam[0] = inf, strictly decreasing


@dataclass(frozen=True, eq=False)
class NoiseLevel:
    """A point of the VP path, stored as its half log-SNR ``lam`` (float64, any shape).

    Build one with a ``from_*`` constructor and read any convention back, e.g.
    ``NoiseLevel.from_edm_sigma(sigma).t(schedule)`` is the fractional book time of an EDM sigma.
    The table of conventions is in the module docstring and on the notation page.
    """

    lam: torch.Tensor  # float64, +inf = data, -inf = noise

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _as_float64("lam", self.lam, -math.inf, math.inf))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_lam(cls, lam: torch.Tensor | float) -> NoiseLevel:
        """From the half log-SNR lam = log(sqrt(alpha_bar) / sqrt(1 - alpha_bar)) in [-inf, inf]."""
        return cls(lam)

    @classmethod
    def from_alpha_bar(cls, alpha_bar: torch.Tensor | float) -> NoiseLevel:
        """From alpha_bar in [0, 1]: lam = (log(alpha_bar) - log(1 - alpha_bar)) / 2."""
        ab = _as_float64("alpha_bar", alpha_bar, 0.0, 1.0)
        return cls(0.5 * (torch.log(ab) - torch.log1p(-ab)))

    @classmethod
    def from_vp_sigma(cls, sigma: torch.Tensor | float) -> NoiseLevel:
        """From the VP noise scale sigma = sqrt(1 - alpha_bar) in [0, 1]: lam = log(sqrt(1 - sigma^2) / sigma)."""
        s = _as_float64("sigma", sigma, 0.0, 1.0)
        return cls(0.5 * torch.log1p(-(s**2)) - torch.log(s))

    @classmethod
    def from_edm_sigma(cls, sigma: torch.Tensor | float) -> NoiseLevel:
        """From the EDM (VE) noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) in [0, inf]: lam = -log(sigma)."""
        s = _as_float64("sigma", sigma, 0.0, math.inf)
        return cls(-torch.log(s))

    @classmethod
    def from_flow_time_noise_at_0(cls, flow_t: torch.Tensor | float) -> NoiseLevel:
        """From flow time s = ``flow_t`` in [0, 1] of x = s x_0 + (1 - s) eps (Lipman, Liu): lam = log(s / (1 - s))."""
        s = _as_float64("flow_t", flow_t, 0.0, 1.0)
        return cls(torch.log(s) - torch.log1p(-s))

    @classmethod
    def from_flow_time_data_at_0(cls, flow_t: torch.Tensor | float) -> NoiseLevel:
        """From flow time r = 1 - s = ``flow_t`` in [0, 1] of x = (1 - r) x_0 + r eps (SD3, minRF): lam = log((1 - r) / r)."""
        u = _as_float64("flow_t", flow_t, 0.0, 1.0)
        return cls(torch.log1p(-u) - torch.log(u))

    @classmethod
    def from_t(cls, t: torch.Tensor | float, schedule: NoiseSchedule) -> NoiseLevel:
        """From a book time t in [0, T], integer or fractional (the rule is in the module docstring).

        At integer t the result is ``schedule.lam[t]`` exactly.
        """
        t = _as_float64("t", t, 0.0, float(schedule.T))
        grid = _grid_lam(schedule, t.device)  # (T+1,)
        T = schedule.T
        k = t.floor().clamp(1, max(T - 1, 1)).to(torch.int64)  # lam[k] >= lam(t) >= lam[k + 1]
        if T == 1:
            lam = grid[1].expand_as(t).clone()
        else:
            f = t - k  # in [0, 1] on [1, T]
            lam = torch.where(f == 0, grid[k], (1 - f) * grid[k] + f * grid[(k + 1).clamp(max=T)])
        # Below t = 1: sigma_EDM = t sigma_1, i.e. lam = lam_1 - log(t) (inf at t = 0).
        return cls(torch.where(t < 1, grid[1] - torch.log(t), lam))

    @classmethod
    def from_vp_time(cls, tau: torch.Tensor | float, schedule: NoiseSchedule) -> NoiseLevel:
        """From the VP-SDE time tau = t / T in [0, 1] on this schedule's grid (DPM-Solver's discrete wrapper)."""
        tau = _as_float64("tau", tau, 0.0, 1.0)
        return cls.from_t(tau * schedule.T, schedule)

    # ---------------------------------------------------------------- conventions
    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar = sigmoid(2 lam) in [0, 1]."""
        return torch.sigmoid(2 * self.lam)

    def vp_sigma(self) -> torch.Tensor:
        """VP noise scale sqrt(1 - alpha_bar) = sqrt(sigmoid(-2 lam)) in [0, 1]."""
        return torch.sigmoid(-2 * self.lam).sqrt()

    def edm_sigma(self) -> torch.Tensor:
        """EDM (VE) noise level sqrt((1 - alpha_bar) / alpha_bar) = exp(-lam) in [0, inf]."""
        return torch.exp(-self.lam)

    def flow_time_noise_at_0(self) -> torch.Tensor:
        """Flow time s = a / (a + b) = sigmoid(lam) of x = s x_0 + (1 - s) eps (1 at data)."""
        return torch.sigmoid(self.lam)

    def flow_time_data_at_0(self) -> torch.Tensor:
        """Flow time r = 1 - s = b / (a + b) = sigmoid(-lam) of x = (1 - r) x_0 + r eps (0 at data)."""
        return torch.sigmoid(-self.lam)

    def t(self, schedule: NoiseSchedule) -> torch.Tensor:
        """The fractional book time t in [0, T] with this lam (inverse of :meth:`from_t`).

        A level noisier than the schedule's last step (lam < lam_T, beyond a relative rounding
        allowance of 1e-9) is a ``ValueError``.
        """
        grid = _grid_lam(schedule, self.lam.device)  # (T+1,) decreasing
        T = schedule.T
        # Levels within rounding of lam_T (a sigma_T sent through exp and log) count as t = T.
        tol = 1e-9 * max(1.0, abs(grid[T].item()))
        lam = torch.where((self.lam < grid[T]) & (self.lam >= grid[T] - tol), grid[T], self.lam)
        if lam.numel() and lam.min() < grid[T]:
            raise ValueError(
                f"this noise level lies beyond the schedule's last step: lam must be >= "
                f"lam_T = {grid[T].item():.6g} (t <= T = {T}), got lam = {lam.min().item():.6g}"
            )
        # On [1, T]: the segment k with lam[k] >= lam >= lam[k + 1], searched on -lam (increasing).
        neg = -grid[1:].contiguous()  # (T,) increasing: -lam_1, ..., -lam_T
        j = torch.searchsorted(neg, (-lam).contiguous(), right=True).clamp(1, max(T - 1, 1))
        k = j  # book index of the segment's left end: neg[j - 1] = -lam[k]
        if T == 1:
            t_grid = torch.ones_like(lam)
        else:
            hi, lo = grid[k], grid[(k + 1).clamp(max=T)]
            t_grid = k + (hi - lam) / (hi - lo)
        # Below t = 1 (lam > lam_1): t = sigma_EDM / sigma_1 = exp(lam_1 - lam), 0 at lam = inf.
        return torch.where(lam >= grid[1], torch.exp(grid[1] - lam), t_grid)

    def vp_time(self, schedule: NoiseSchedule) -> torch.Tensor:
        """The VP-SDE time tau = t / T in [0, 1]."""
        return self.t(schedule) / schedule.T


def check_book_times(
    name: str,
    t: torch.Tensor | int,
    batch: int,
    low: int,
    high: int,
    device: torch.device,
    *,
    check_values: bool = True,
) -> torch.Tensor:
    """Book times for a network or an oracle: int64 (batch,) as ``check_time_indices``, or float (batch,).

    An integer ``t`` (an int or an integer tensor) goes through ``checks.check_time_indices``
    unchanged. A float or a floating-point tensor is a fractional book time: it keeps its dtype, and every
    value must be finite and in [low, high] (a NaN or a value outside is a ``ValueError`` naming
    ``name`` and the range; ``check_values=False`` skips that check, which waits for a GPU).
    """
    if isinstance(t, float):
        t = torch.tensor(t, dtype=torch.float64)
    if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"{name} must have shape ({batch},) (one time per example), got {tuple(t.shape)}"
            )
        if check_values and batch and (torch.isnan(t).any() or t.min() < low or t.max() > high):
            got = (
                "NaN"
                if torch.isnan(t).any()
                else f"values in [{t.min().item():.6g}, {t.max().item():.6g}]"
            )
            raise ValueError(f"{name} must be a book time in [{low}, {high}], got {got}")
        return t.to(device)
    return check_time_indices(name, t, batch, low, high, device, check_values=check_values)

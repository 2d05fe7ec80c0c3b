"""Self-check cells that read well: assert an identity and print one line saying how well it held.

``check_estimate`` compares a Monte Carlo estimate with an exact value in units of its standard
error; ``check_close`` compares a deterministic computation with an exact value. Both print a line
such as ``✓ E[X] = 3.500, estimate 3.497 ± 0.006 (0.5 SE)`` and raise ``AssertionError`` with the
same line (marked ✗) when the check fails. NaN never passes.

Book: Part 1, Expectation and variance, eqs. (eq-mc-estimator), (eq-mc-stderr).
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.background.probability import MonteCarloEstimate
from diffusion_tutorial.checks import check_float_in_range

__all__ = ["check_estimate", "check_close"]

_SHOW_AT_MOST = 4  # print every value of a check with up to this many entries


def _as_float64(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        return value.detach().to("cpu", torch.float64)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor(float(value), dtype=torch.float64)


def _decimals(scale: float) -> int:
    """Decimals that show the first significant digit of ``scale`` (a standard error)."""
    if not math.isfinite(scale) or scale <= 0:
        return 6
    return min(10, max(0, -math.floor(math.log10(scale))))


def _fmt(values: torch.Tensor, decimals: int) -> str:
    items = [f"{v:.{decimals}f}" for v in values.flatten().tolist()]
    return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"


def _finish(ok: bool, line: str) -> None:
    line = ("✓ " if ok else "✗ ") + line
    if not ok:
        raise AssertionError(line)
    print(line)


def check_estimate(label: str, est: MonteCarloEstimate, exact: object, n_se: float = 5.0) -> None:
    """Assert |estimate - exact| < n_se * std_error (every entry) and print one line about it.

    ``est`` is a :class:`MonteCarloEstimate`; ``exact`` a number or a tensor that broadcasts with it.
    A correct estimator fails a 5-standard-error check with probability about 6e-7 per entry
    (normal approximation), so the check is not flaky, yet it fails on a wrong formula whose bias
    exceeds a few standard errors. Book: Expectation and variance, eq. (eq-mc-stderr).
    """
    if not isinstance(est, MonteCarloEstimate):
        raise TypeError(f"est must be a MonteCarloEstimate, got {type(est).__name__}")
    check_float_in_range("n_se", n_se, 0.0, low_open=True)
    value = _as_float64("est.estimate", est.estimate)
    se = _as_float64("est.std_error", est.std_error)
    target = _as_float64("exact", exact)
    try:
        value, se, target = torch.broadcast_tensors(value, se, target)
    except RuntimeError:
        raise ValueError(
            f"exact {tuple(target.shape)} does not broadcast with the estimate {tuple(value.shape)}"
        ) from None
    # Distance in standard errors; 0 / 0 (an exact estimate with no spread) counts as 0.
    dist = torch.where((value - target) == 0, torch.zeros_like(value), (value - target).abs() / se)
    worst = dist.max().item() if dist.numel() else 0.0
    ok = bool(dist.numel()) and not torch.isnan(dist).any() and worst < n_se
    if value.numel() <= _SHOW_AT_MOST:
        d = _decimals(se.min().item())
        line = (
            f"{label} = {_fmt(target, d)}, estimate {_fmt(value, d)} ± {_fmt(se, d)} "
            f"({worst:.1f} SE{'' if ok else f', limit {n_se:g}'})"
        )
    else:
        line = (
            f"{label}: {value.numel()} estimates, the worst {worst:.1f} SE from exact "
            f"(limit {n_se:g} SE)"
        )
    _finish(ok, line)


def check_close(
    label: str, value: object, exact: object, atol: float = 0.0, rtol: float = 0.0
) -> None:
    """Assert |value - exact| <= atol + rtol * |exact| (every entry) and print one line about it.

    For identities that hold up to rounding or quadrature error; state why the tolerance is that
    size next to the call. Book: Part 1 (every chapter's self-check cells).
    """
    check_float_in_range("atol", atol, 0.0)
    check_float_in_range("rtol", rtol, 0.0)
    if atol == 0 and rtol == 0:
        raise ValueError("atol and rtol are both 0: give a tolerance (> 0) for at least one")
    got = _as_float64("value", value)
    target = _as_float64("exact", exact)
    try:
        got, target = torch.broadcast_tensors(got, target)
    except RuntimeError:
        raise ValueError(
            f"exact {tuple(target.shape)} does not broadcast with value {tuple(got.shape)}"
        ) from None
    err = (got - target).abs()
    excess = err - (atol + rtol * target.abs())
    worst_err = err.max().item() if err.numel() else float("nan")
    ok = bool(err.numel()) and not torch.isnan(err).any() and bool((excess <= 0).all())
    tol = " + ".join(
        s for s in (f"{atol:.0e}" if atol else "", f"{rtol:.0e}·|exact|" if rtol else "") if s
    )
    if got.numel() <= _SHOW_AT_MOST:
        line = (
            f"{label} = {_fmt(got, 6)} (exact {_fmt(target, 6)}, |error| {worst_err:.1e} ≤ {tol})"
        )
    else:
        line = f"{label}: {got.numel()} values, max |error| {worst_err:.1e} (allowed {tol})"
    if not ok:
        line = line.replace(" ≤ ", " > ").replace("(allowed", "(exceeds allowed")
    _finish(ok, line)

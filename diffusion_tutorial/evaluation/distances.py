"""Distances between two sets of feature vectors: the Fréchet distance and KID.

Both compare the *features* of images (here the penultimate layer of the book's MNIST classifier,
:mod:`diffusion_tutorial.evaluation.classifier`), two (N, D) sets with the same D. The Fréchet
distance {cite}`heusel2017gans` fits a Gaussian to each set; KID is an unbiased kernel MMD. The
input checks of every set-to-set metric live here too (:mod:`~diffusion_tutorial.evaluation.metrics`
re-exports these functions).

Book: Evaluating samples (Reference; FID and KID).
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_finite, check_float_tensor

__all__ = ["PSD_RTOL", "gaussian_frechet_distance", "frechet_distance", "kernel_distance"]


def _check_points(name: str, x: object, min_n: int = 1) -> torch.Tensor:
    check_float_tensor(name, x)
    if x.ndim != 2 or x.shape[0] < min_n or x.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (N, D) with N >= {min_n} and D >= 1, got {tuple(x.shape)}"
        )
    return check_finite(name, x)


def _check_pair(x: object, y: object, min_n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _check_points("x", x, min_n), _check_points("y", y, min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension D, got {x.shape[1]} and {y.shape[1]}"
        )
    return x, y.to(x.device, x.dtype)


# ------------------------------------------------------------------------------ Fréchet distance


PSD_RTOL = 1e-5
"""Relative tolerance of the covariance checks: eigenvalues >= -PSD_RTOL * max |eigenvalue| and
|C - C^T| <= PSD_RTOL * max |C|. Rounding in a covariance estimated in float32 (relative error
~1e-7 per entry, growing like sqrt(D)) stays well inside it; a covariance that is really not
positive semi-definite (``-I``) does not."""


def _check_covariance(name: str, c: torch.Tensor) -> torch.Tensor:
    """Raise ValueError unless ``c`` (float64) is finite, symmetric and PSD up to ``PSD_RTOL``."""
    check_finite(name, c)
    scale = c.abs().max().item()
    if (c - c.T).abs().max().item() > PSD_RTOL * scale:
        raise ValueError(f"{name} must be a symmetric covariance matrix (C = C^T)")
    evals = torch.linalg.eigvalsh((c + c.T) / 2)  # (D,) ascending
    lowest, largest = evals[0].item(), evals.abs().max().item()
    if lowest < -PSD_RTOL * largest:
        raise ValueError(
            f"{name} must be positive semi-definite (a covariance), but it has the eigenvalue "
            f"{lowest:.4g} (allowed: >= -{PSD_RTOL:g} * max |eigenvalue| = {-PSD_RTOL * largest:.3g})"
        )
    return c


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (float64)."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def _float64(name: str, v: object) -> torch.Tensor:
    """``v`` (a tensor, array or list of numbers) as a float64 tensor, or a TypeError naming it."""
    if isinstance(v, torch.Tensor):
        return v.double()
    try:
        if isinstance(v, (str, bytes)):
            raise TypeError
        return torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a tensor, array or list of numbers, got {type(v).__name__}"
        ) from err


def gaussian_frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2) between two Gaussians.

    The squared 2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2). Computed in
    float64 through the symmetric form cov1^1/2 cov2 cov1^1/2 (its eigenvalues are those of
    cov1 cov2, but eigh is stable where a general matrix square root is not). Both covariances
    must be symmetric positive semi-definite (up to ``PSD_RTOL``), else ``ValueError``.
    The four arguments may be tensors, NumPy arrays or (nested) lists of numbers.
    Book: Evaluating samples, eq. (eq-eval-frechet). Heusel et al. 2017, eq. 6.
    """
    mu1, mu2 = _float64("mu1", mu1).flatten(), _float64("mu2", mu2).flatten()
    cov1, cov2 = _float64("cov1", cov1), _float64("cov2", cov2)
    d = mu1.shape[0]
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}), got {tuple(c.shape)}")
    if mu2.shape != mu1.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {d} and {mu2.shape[0]}")
    for name, v in (("mu1", mu1), ("mu2", mu2)):
        check_finite(name, v)
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        _check_covariance(name, c)
    root1 = _sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1  # (D, D), symmetric PSD
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    dist = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_cross
    return max(dist.item(), 0.0)  # rounding can leave -1e-12 for identical inputs


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets.

    Biased upwards at small N (two samples of one distribution score a floor above 0).
    Book: Evaluating samples, eqs. (eq-eval-frechet), (eq-eval-mean-bias). Heusel et al. 2017, eq. 6.
    """
    f1, f2 = _check_pair(features1, features2, min_n=2)
    f1, f2 = f1.double(), f2.double()
    cov1, cov2 = f1.T.cov(), f2.T.cov()
    if not (torch.isfinite(cov1).all() and torch.isfinite(cov2).all()):
        largest = max(f1.abs().max().item(), f2.abs().max().item())
        raise ValueError(
            f"features1 and features2 are too large: their covariance overflows float64 "
            f"(largest |feature| = {largest:.3g}; squares must stay below ~1.8e308)"
        )
    return gaussian_frechet_distance(f1.mean(0), cov1, f2.mean(0), cov2)


def kernel_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """KID: unbiased squared MMD with the cubic kernel k(a, b) = (a . b / d + 1)^3 of d-dim features.

    Unlike the Fréchet distance it is unbiased at every sample size (its mean over draws is the
    population value, ~0 for two samples of one distribution), so a few hundred samples suffice
    to compare two samplers; it has no floor above 0, only a spread.
    Book: Evaluating samples, eqs. (eq-eval-mmd), (eq-eval-kid). Bińkowski et al. 2018, sec. 3.
    """
    f1, f2 = _check_pair(features1, features2, min_n=2)
    f1, f2 = f1.double(), f2.double()
    d = f1.shape[1]
    k11, k22, k12 = ((a @ b.T / d + 1) ** 3 for a, b in ((f1, f1), (f2, f2), (f1, f2)))
    n, m = f1.shape[0], f2.shape[0]
    term11 = (k11.sum() - k11.diagonal().sum()) / (n * (n - 1))  # i != j only: unbiased
    term22 = (k22.sum() - k22.diagonal().sum()) / (m * (m - 1))
    kid = (term11 + term22 - 2 * k12.mean()).item()
    if not math.isfinite(kid):  # inf - inf: the kernel overflowed
        largest = max(f1.abs().max().item(), f2.abs().max().item())
        raise ValueError(
            f"features1 and features2 are too large for KID: the cubic kernel (a . b / d + 1)^3 "
            f"overflows float64 (largest |feature| = {largest:.3g}; the kernel stays finite for "
            f"|a . b| / d below ~5e102, which network features are far from)"
        )
    return kid

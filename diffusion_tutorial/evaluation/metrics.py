"""Sample-quality metrics: sliced Wasserstein and MMD for 2-D data, MNIST-FID for images.

Every metric is compared with its **floor**: the value two independent samples of the *data*
of the same size give. A perfect model does not reach 0 but this floor, because finite samples
differ; a number means little without it.

MNIST-FID (own classifier features) is the Fréchet distance {cite}`heusel2017gans` between
Gaussians fitted to the penultimate features of the book's own small MNIST classifier
(:mod:`diffusion_tutorial.evaluation.classifier`). It is **not comparable to Inception FID** values
published for other models and data sets.

Book: Introduction (Part 2; 2-D distances and the floor); Evaluating samples (Reference; FID, KID).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from diffusion_tutorial.checks import (
    check_float_in_range,
    check_float_tensor,
    check_positive_int,
    check_values_in,
)
from diffusion_tutorial.data import mnist
from diffusion_tutorial.evaluation.classifier import (
    IMAGE_RANGE_TOL,
    accuracy,
    classifier_features,
    classifier_probs,
)
from diffusion_tutorial.evaluation.distances import (  # re-exported: one metrics namespace
    PSD_RTOL,
    _check_pair,
    _check_points,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_distance,
)

__all__ = [
    "MNIST_FID_NAME",
    "PSD_RTOL",
    "sliced_wasserstein",
    "mmd2_rbf",
    "data_floor",
    "compare_to_data",
    "gaussian_frechet_distance",
    "frechet_distance",
    "kernel_distance",
    "mnist_fid",
    "confident_fraction",
    "class_accuracy",
    "mnist_subset",
]

MNIST_FID_NAME = "MNIST-FID (own classifier features)"
"""The name to print next to every MNIST-FID number (it is not Inception FID)."""


# ------------------------------------------------------------------------------- 2-D point clouds


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance SW_2 = sqrt(E_theta W_2^2(theta^T x, theta^T y)), theta ~ U(sphere).

    Each 1-D Wasserstein distance compares sorted projections (quantile functions); with unequal
    sample sizes the quantiles are interpolated at max(N, M) levels. Estimated with
    ``n_projections`` random directions. Book: Introduction (Part 2). Bonneel et al. 2015, sec. 2.
    """
    x, y = _check_pair(x, y)
    n_projections = check_positive_int("n_projections", n_projections)
    dtype = torch.promote_types(x.dtype, torch.float32)  # torch.quantile needs float32 or float64
    x, y = x.to(dtype), y.to(dtype)
    theta = torch.randn(x.shape[1], n_projections, generator=generator)  # (D, P)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device, x.dtype)
    px = (x @ theta).sort(dim=0).values  # (N, P)
    py = (y @ theta).sort(dim=0).values  # (M, P)
    if px.shape[0] != py.shape[0]:
        k = max(px.shape[0], py.shape[0])
        levels = (torch.arange(k, device=x.device, dtype=x.dtype) + 0.5) / k  # (K,)
        px, py = torch.quantile(px, levels, dim=0), torch.quantile(py, levels, dim=0)  # (K, P)
    return ((px - py) ** 2).mean().sqrt().item()


def mmd2_rbf(
    x: torch.Tensor, y: torch.Tensor, *, bandwidths: Sequence[float] | float = (0.1, 0.3, 1.0)
) -> float:
    """Unbiased squared MMD with k(a, b) = mean_l exp(-|a - b|^2 / (2 h_l^2)), h_l in ``bandwidths``.

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (N(N-1)) + sum_{i!=j} k(y_i, y_j) / (M(M-1))
              - 2 sum_{i,j} k(x_i, y_j) / (N M).
    Unbiased, so it is ~0 (and can be slightly negative) when both sets come from one
    distribution. Several bandwidths catch both fine and coarse differences; one number is
    one bandwidth. The kernel is computed as exp(-(|a - b| / h)^2 / 2), so that a bandwidth
    whose square underflows gives the limit (1 on equal points, 0 elsewhere), not 0 / 0.
    Book: Introduction (Part 2); Evaluating samples, eq. (eq-eval-mmd). Gretton et al. 2012, Lemma 6 (eq. 3).
    """
    x, y = _check_pair(x, y, min_n=2)
    if isinstance(bandwidths, numbers.Real) and not isinstance(bandwidths, bool):
        bandwidths = (bandwidths,)
    if isinstance(bandwidths, (str, bytes)) or not hasattr(bandwidths, "__iter__"):
        raise TypeError(
            f"bandwidths must be a positive number or a sequence of them, got {bandwidths!r}"
        )
    hs = [check_float_in_range("bandwidth", h, 0.0, None, low_open=True) for h in bandwidths]
    if not hs:
        raise ValueError("bandwidths must contain at least one positive number")
    x, y = x.double(), y.double()

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Exact distances (no |a|^2 + |b|^2 - 2 a.b shortcut): equal points are at distance 0.
        d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # (Na, Nb)
        return torch.stack([torch.exp(-0.5 * (d / h) ** 2) for h in hs]).mean(0)  # (Na, Nb)

    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    # Off-diagonal sums: the diagonal k(x_i, x_i) = 1 would bias the estimate upwards.
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return (term_xx + term_yy - 2 * k_xy.mean()).item()


def data_floor(
    sample_data: Callable[..., torch.Tensor],
    n: int,
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    *,
    repeats: int = 3,
    generator: torch.Generator | None = None,
) -> float:
    """The metric between two independent data samples of size ``n``, averaged over ``repeats``.

    ``sample_data(n, generator=...)`` draws data, e.g. ``dt.data.swiss_roll``. A model whose
    samples score near this value is as close to the data as ``n`` points can show.
    """
    n, repeats = check_positive_int("n", n), check_positive_int("repeats", repeats)
    values = [
        metric(sample_data(n, generator=generator), sample_data(n, generator=generator))
        for _ in range(repeats)
    ]
    return sum(values) / repeats


def compare_to_data(
    samples: torch.Tensor,
    sample_data: Callable[..., torch.Tensor],
    *,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Sliced Wasserstein and MMD^2 of ``samples`` (N, D) against fresh data, each with its floor.

    Returns ``{"swd", "swd_floor", "mmd2", "mmd2_floor"}``; the floors use the same N.
    """
    samples = _check_points("samples", samples, min_n=2).cpu()
    n = samples.shape[0]

    def swd(a: torch.Tensor, b: torch.Tensor) -> float:
        return sliced_wasserstein(a, b, generator=generator)

    return {
        "swd": swd(samples, sample_data(n, generator=generator)),
        "swd_floor": data_floor(sample_data, n, swd, generator=generator),
        "mmd2": mmd2_rbf(samples, sample_data(n, generator=generator)),
        "mmd2_floor": data_floor(sample_data, n, mmd2_rbf, generator=generator),
    }


# ----------------------------------------------------------------------------- MNIST (classifier)


def mnist_fid(images: torch.Tensor, reference: torch.Tensor, classifier: torch.nn.Module) -> float:
    """MNIST-FID (own classifier features): Fréchet distance of the classifier's penultimate features.

    ``images`` and ``reference``: (N, 1, 28, 28) in [-1, 1] (up to ``IMAGE_RANGE_TOL``; clamp
    samples first). NOT comparable to Inception FID. Compare it with the real-vs-real value at the
    same N (``mnist_fid(train_subset, test_subset)``).
    """
    for name, x in (("images", images), ("reference", reference)):
        check_float_tensor(name, x)
        check_values_in(f"{name} (scale to [-1, 1] and clamp)", x, -1.0, 1.0, tol=IMAGE_RANGE_TOL)
    return frechet_distance(
        classifier_features(classifier, images), classifier_features(classifier, reference)
    )


def confident_fraction(
    classifier: torch.nn.Module, images: torch.Tensor, threshold: float = 0.9
) -> float:
    """Fraction of images whose most probable class has probability >= ``threshold``.

    A crude "looks like a digit" score: blurred or hybrid digits get low confidence. Read it next
    to MNIST-FID, never alone: like most classifiers it is overconfident far from the data (pure
    noise images get confidence >= 0.9 too), which MNIST-FID does catch.
    """
    threshold = check_float_in_range("threshold", threshold, 0.0, 1.0)
    return (
        (classifier_probs(classifier, images).max(dim=1).values >= threshold).float().mean().item()
    )


def class_accuracy(classifier: torch.nn.Module, images: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of class-conditional samples that the classifier assigns to the requested class ``y``.

    ``y``: integer labels (N,) in 0..num_classes-1 (0..9 for MNIST), else ``ValueError``/``TypeError``.
    """
    return accuracy(classifier, images, y)


def mnist_subset(
    n: int, *, train: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random MNIST images (n, 1, 28, 28) in [-1, 1] and their labels, from train or test set."""
    ds = mnist(train=train)
    n = check_positive_int("n", n)
    if n > len(ds):
        raise ValueError(f"n must be <= {len(ds)} (the size of the set), got {n}")
    idx = torch.randperm(len(ds), generator=generator)[:n]  # (n,)
    return ds.images[idx], ds.labels[idx]

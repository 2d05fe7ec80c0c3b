"""Tests for diffusion_tutorial.evaluation.metrics and mnist_classifier: identities and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_tutorial import data
from diffusion_tutorial.evaluation import metrics
from diffusion_tutorial.evaluation.classifier import (
    MNISTClassifier,
    classifier_features,
    classifier_probs,
    train_classifier,
)

from .conftest import mnist_available

# ------------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_identical_sets_is_zero(generator):
    x = torch.randn(300, 2, generator=generator)
    assert metrics.sliced_wasserstein(x, x, generator=generator) == 0.0  # exact: same sorted values


@pytest.mark.parametrize("shift", [(0.5, 0.0), (1.0, -2.0), (3.0, 3.0)])
def test_sliced_wasserstein_of_a_translation(shift, generator):
    # Translating by c shifts every projection by theta.c, so SW_2^2 = E[(theta.c)^2] = |c|^2 / D
    # exactly for uniform theta. The Monte Carlo over 4096 directions has relative std ~0.7/64 ~ 1 %
    # on SW_2^2, so 4 % on SW_2 is > 5 sigma.
    x = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    c = torch.tensor(shift, dtype=torch.float64)
    got = metrics.sliced_wasserstein(x, x + c, n_projections=4096, generator=generator)
    assert got == pytest.approx(c.norm().item() / math.sqrt(2), rel=0.04)


def test_sliced_wasserstein_grows_with_shift_and_handles_unequal_sizes(generator):
    x = data.two_moons(400, generator=generator)
    same = metrics.sliced_wasserstein(
        x, data.two_moons(300, generator=generator), generator=generator
    )
    values = [
        metrics.sliced_wasserstein(
            x, data.two_moons(300, generator=generator) + s, generator=generator
        )
        for s in (0.2, 0.5, 1.0)
    ]
    assert same < values[0] < values[1] < values[2]


# ------------------------------------------------------------------------------------------ MMD


def test_mmd2_of_a_set_with_itself_matches_its_closed_form(generator):
    # With y = x the unbiased estimate is 2/N (mean_{i!=j} k(x_i, x_j) - 1) exactly (k(x, x) = 1).
    x = torch.randn(100, 2, generator=generator, dtype=torch.float64)
    h = 0.5
    k = torch.exp(-torch.cdist(x, x).pow(2) / (2 * h * h))
    off_mean = (k.sum() - 100) / (100 * 99)
    expected = 2 / 100 * (off_mean - 1)
    assert metrics.mmd2_rbf(x, x, bandwidths=[h]) == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("mu", [0.0, 0.5, 1.5])
def test_mmd2_matches_gaussian_closed_form(mu, generator):
    # x ~ N(0, s^2 I), y ~ N(mu e1, s^2 I), RBF width h in D = 2:
    # E k = (h^2 / (h^2 + 2 s^2))^{D/2} exp(-|mu|^2 / (2 (h^2 + 2 s^2))), so
    # MMD^2 = 2 c (1 - exp(-mu^2 / (2 (h^2 + 2 s^2)))), c = h^2 / (h^2 + 2 s^2).
    # The unbiased estimate with N = M = 400 has std ~ 0.01 here; average 4 draws, tolerance 0.02.
    h, s = 1.0, 1.0
    c = h * h / (h * h + 2 * s * s)
    expected = 2 * c * (1 - math.exp(-(mu**2) / (2 * (h * h + 2 * s * s))))
    shift = torch.tensor([mu, 0.0], dtype=torch.float64)
    draws = [
        metrics.mmd2_rbf(
            torch.randn(400, 2, generator=generator, dtype=torch.float64) * s,
            torch.randn(400, 2, generator=generator, dtype=torch.float64) * s + shift,
            bandwidths=[h],
        )
        for _ in range(4)
    ]
    assert sum(draws) / 4 == pytest.approx(expected, abs=0.02)


def test_mmd2_is_symmetric(generator):
    x, y = torch.randn(50, 3, generator=generator), torch.randn(70, 3, generator=generator) + 1
    assert metrics.mmd2_rbf(x, y) == pytest.approx(metrics.mmd2_rbf(y, x), rel=1e-12)


def test_compare_to_data_on_data_is_near_the_floor(generator):
    # Samples that ARE data should score like the floor; a shifted copy far above it.
    # "Near": within 3x of the floor (both are O(1/sqrt(N)) noise at N = 300).
    good = metrics.compare_to_data(
        data.swiss_roll(300, generator=generator), data.swiss_roll, generator=generator
    )
    assert good["swd"] < 3 * good["swd_floor"]
    assert abs(good["mmd2"]) < 3 * abs(good["mmd2_floor"]) + 1e-3
    bad = metrics.compare_to_data(
        data.swiss_roll(300, generator=generator) + 0.5, data.swiss_roll, generator=generator
    )
    assert bad["swd"] > 5 * bad["swd_floor"] and bad["mmd2"] > 10 * abs(bad["mmd2_floor"])


# ----------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("d", [1, 3, 8])
def test_frechet_diagonal_closed_form(d, generator):
    # Diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2, s = std.
    kw = {"generator": generator, "dtype": torch.float64}
    mu1, mu2 = torch.randn(d, **kw), torch.randn(d, **kw)
    s1, s2 = torch.rand(d, **kw) + 0.1, torch.rand(d, **kw) + 0.1
    got = metrics.gaussian_frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2))
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert got == pytest.approx(expected.item(), rel=1e-9)  # float64 throughout


def test_frechet_general_matches_eigenvalues_of_the_product(generator):
    # Oracle: tr (cov1^1/2 cov2 cov1^1/2)^1/2 = sum sqrt(eig(cov1 cov2)) (same spectrum).
    a, b = (
        torch.randn(6, 6, generator=generator, dtype=torch.float64),
        torch.randn(6, 6, generator=generator, dtype=torch.float64),
    )
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(6), b @ b.T + 0.1 * torch.eye(6)
    mu = torch.zeros(6, dtype=torch.float64)
    tr_cross = torch.linalg.eigvals(cov1 @ cov2).real.clamp(min=0).sqrt().sum()
    expected = (cov1.trace() + cov2.trace() - 2 * tr_cross).item()
    assert metrics.gaussian_frechet_distance(mu, cov1, mu, cov2) == pytest.approx(
        expected, rel=1e-8
    )


def test_frechet_of_identical_and_translated_features(generator):
    f = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)  # sqrt rounding only
    c = torch.randn(16, generator=generator, dtype=torch.float64)
    # A translation leaves the covariance unchanged: d^2 = |c|^2.
    got = metrics.frechet_distance(f, f + c)
    assert got == pytest.approx(c.pow(2).sum().item(), rel=1e-8)


def test_frechet_is_stable_for_rank_deficient_covariances(generator):
    # Fewer samples than dimensions: singular covariances must not produce NaN or negatives.
    f1, f2 = torch.randn(10, 64, generator=generator), torch.randn(10, 64, generator=generator)
    got = metrics.frechet_distance(f1, f2)
    assert math.isfinite(got) and got >= 0


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: metrics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3)), ValueError),
        (lambda: metrics.sliced_wasserstein(torch.zeros(5), torch.zeros(5)), ValueError),
        (
            lambda: metrics.sliced_wasserstein(
                torch.zeros(5, 2, dtype=torch.int64), torch.zeros(5, 2)
            ),
            TypeError,
        ),
        (
            lambda: metrics.sliced_wasserstein(
                torch.zeros(5, 2), torch.zeros(5, 2), n_projections=0
            ),
            ValueError,
        ),
        (lambda: metrics.mmd2_rbf(torch.zeros(1, 2), torch.zeros(5, 2)), ValueError),
        (
            lambda: metrics.mmd2_rbf(torch.zeros(4, 2), torch.zeros(5, 2), bandwidths=[-1.0]),
            ValueError,
        ),
        (lambda: metrics.mmd2_rbf(torch.zeros(4, 2), torch.zeros(5, 2), bandwidths=[]), ValueError),
        (lambda: metrics.mmd2_rbf(torch.full((4, 2), math.nan), torch.zeros(5, 2)), ValueError),
        (lambda: metrics.frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4)), ValueError),
        (
            lambda: metrics.gaussian_frechet_distance(
                torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)
            ),
            ValueError,
        ),
        (
            lambda: metrics.confident_fraction(MNISTClassifier(), torch.zeros(2, 1, 28, 28), 1.5),
            ValueError,
        ),
        (lambda: classifier_features(MNISTClassifier(), torch.zeros(2, 3, 28, 28)), ValueError),
        (
            lambda: metrics.class_accuracy(
                MNISTClassifier(), torch.zeros(2, 1, 28, 28), torch.tensor([1, 2, 3])
            ),
            ValueError,
        ),
    ],
)
def test_bad_arguments_raise(call, error):
    with pytest.raises(error):
        call()


# -------------------------------------------------------------------- MNIST classifier metrics


def test_classifier_outputs(generator):
    clf = MNISTClassifier().eval()
    x = torch.rand(7, 1, 28, 28, generator=generator) * 2 - 1
    assert classifier_features(clf, x, batch_size=3).shape == (7, clf.config.hidden)
    p = classifier_probs(clf, x, batch_size=3)
    assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-6)
    assert 0.0 <= metrics.confident_fraction(clf, x) <= 1.0
    assert metrics.mnist_fid(x, x, clf) == pytest.approx(0.0, abs=1e-6)
    y = p.argmax(1)
    assert metrics.class_accuracy(clf, x, y) == 1.0  # its own predictions are always "right"


def test_train_classifier_is_reproducible_with_a_generator():
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(64) % 10
    a, b = [
        train_classifier(
            images,
            labels,
            epochs=1,
            batch_size=32,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        for _ in range(2)
    ]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.slow
@pytest.mark.skipif(not mnist_available(), reason="MNIST not available offline")
def test_shipped_classifier_accuracy_and_real_floor(generator):
    from diffusion_tutorial import pretrained

    clf = pretrained.load_classifier()
    test_x, test_y = metrics.mnist_subset(2000, train=False, generator=generator)
    train_x, _ = metrics.mnist_subset(2000, train=True, generator=generator)
    assert metrics.class_accuracy(clf, test_x, test_y) >= 0.98  # 99.15 % on the full test set
    floor = metrics.mnist_fid(train_x, test_x, clf)
    noisy_x = (train_x + 0.5 * torch.randn(train_x.shape, generator=generator)).clamp(-1, 1)
    noisy = metrics.mnist_fid(noisy_x, test_x, clf)
    assert floor < noisy / 5


def test_kernel_distance_is_unbiased_and_matches_the_polynomial_mmd(generator):
    # Two samples of one Gaussian: the mean over draws is ~0 (unbiased), never the positive
    # bias a plug-in (V-statistic) estimate has; a mean shift gives the closed form of the cubic
    # kernel's MMD for Gaussians only approximately, so compare with a direct double loop instead.
    vals = [
        metrics.kernel_distance(
            torch.randn(50, 4, generator=generator), torch.randn(60, 4, generator=generator)
        )
        for _ in range(200)
    ]
    mean = torch.tensor(vals).mean()
    se = torch.tensor(vals).std() / len(vals) ** 0.5
    assert abs(mean) < 4 * se
    x, y = torch.randn(7, 3, generator=generator), torch.randn(5, 3, generator=generator) + 1.0
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert metrics.kernel_distance(x, y) == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-6)
    assert metrics.kernel_distance(x, y + 1.0) > metrics.kernel_distance(x, y)


# ------------------------------------------------------- reliability II (issue 23): metrics


def _images(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=generator) * 2 - 1  # (n, 1, 28, 28) in [-1, 1]


@pytest.mark.parametrize("scale", [255.0, 1e6])
@pytest.mark.parametrize(
    "call",
    [
        lambda clf, x: metrics.confident_fraction(clf, x),
        lambda clf, x: metrics.class_accuracy(clf, x, torch.zeros(len(x), dtype=torch.int64)),
        lambda clf, x: classifier_features(clf, x),
        lambda clf, x: classifier_probs(clf, x),
    ],
)
def test_classifier_metrics_refuse_images_outside_minus_one_one(call, scale, generator):
    # Silently wrong before: images in [0, 255] gave confidence 1.0 and accuracy 0.0.
    x = torch.rand(4, 1, 28, 28, generator=generator) * scale
    with pytest.raises(ValueError, match=r"images.*\[-1, 1\]"):
        call(MNISTClassifier().eval(), x)


@pytest.mark.parametrize(
    "call",
    [
        lambda clf, x: metrics.confident_fraction(clf, x),
        lambda clf, x: metrics.class_accuracy(clf, x, torch.zeros(0, dtype=torch.int64)),
        lambda clf, x: classifier_features(clf, x),
    ],
)
def test_classifier_metrics_refuse_zero_images(call):
    # NaN before: the mean over no images.
    with pytest.raises(ValueError, match=r"images must hold at least one image.*\(0, 1, 28, 28\)"):
        call(MNISTClassifier().eval(), torch.zeros(0, 1, 28, 28))


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (
            torch.full((8, 1, 28, 28), math.nan),
            torch.zeros(8, dtype=torch.int64),
            ValueError,
            "images.*NaN",
        ),
        (
            torch.zeros(8, 1, 28, 28),
            torch.zeros(5, dtype=torch.int64),
            ValueError,
            r"labels.*\(8,\)",
        ),
        (torch.zeros(8, 1, 28, 28), torch.full((8,), 12), ValueError, r"labels.*0\.\.9.*12"),
        (torch.zeros(8, 1, 28, 28), torch.zeros(8), TypeError, "labels.*integer"),
    ],
)
def test_train_classifier_refuses_nan_images_and_bad_labels(images, labels, error, match):
    # NaN weights before (NaN images); IndexError or a torch message before (labels).
    with pytest.raises(error, match=match):
        train_classifier(images, labels, epochs=1, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_mnist_fid_converts_images_to_the_classifiers_dtype(dtype, generator):
    # torch's "Input type (double) and bias type (float)" before.
    clf = MNISTClassifier().eval()
    x, ref = _images(16, generator), _images(16, generator)
    expected = metrics.mnist_fid(x, ref, clf)
    got = metrics.mnist_fid(x.to(dtype), ref.to(dtype), clf)
    # Rounding the inputs to float16/bfloat16 (relative 2**-8) moves the features by ~1e-2 of
    # their scale; float64 rounds back to the same float32 values exactly.
    assert got == pytest.approx(expected, rel=0 if dtype == torch.float64 else 0.1)


@pytest.mark.parametrize("h", [1e-200, 1e-310, 5e-324])
def test_mmd2_with_a_bandwidth_that_underflows_is_the_delta_kernel_limit(h, generator):
    # NaN before: 2 h^2 underflowed to 0 and 0 / 0 sat on the diagonal. As h -> 0 the RBF kernel
    # becomes 1 on equal points and 0 elsewhere, so MMD^2_u of distinct points is exactly 0 and
    # a set sharing a point with y counts it in the cross term.
    x, y = torch.randn(6, 2, generator=generator), torch.randn(5, 2, generator=generator)
    assert metrics.mmd2_rbf(x, y, bandwidths=(h,)) == 0.0
    assert metrics.mmd2_rbf(x, y, bandwidths=(h,)) == metrics.mmd2_rbf(x, y, bandwidths=(1e-6,))
    y[0] = x[0]  # one shared point: the cross term is -2 * 1 / (6 * 5)
    assert metrics.mmd2_rbf(x, y, bandwidths=(h,)) == pytest.approx(-2 / 30, rel=1e-12)


def test_mmd2_accepts_one_bandwidth_as_a_number(generator):
    x, y = torch.randn(6, 2, generator=generator), torch.randn(5, 2, generator=generator)
    assert metrics.mmd2_rbf(x, y, bandwidths=1.0) == metrics.mmd2_rbf(x, y, bandwidths=(1.0,))
    with pytest.raises(TypeError, match="bandwidth"):
        metrics.mmd2_rbf(x, y, bandwidths="1.0")


def test_kernel_distance_refuses_features_whose_kernel_overflows(generator):
    # NaN before: (a . b / d + 1)^3 overflows float64 and inf - inf = NaN.
    f1, f2 = torch.randn(6, 3, generator=generator), torch.randn(5, 3, generator=generator)
    with pytest.raises(ValueError, match="features.*overflow.*float64"):
        metrics.kernel_distance(f1.double() * 1e110, f2.double() * 1e110)


@pytest.mark.parametrize(
    "call",
    [
        lambda a, b: metrics.kernel_distance(a, b),
        lambda a, b: metrics.frechet_distance(a, b),
        lambda a, b: metrics.sliced_wasserstein(a, b),
        lambda a, b: metrics.mmd2_rbf(a, b),
    ],
)
def test_zero_dimensional_features_are_refused(call):
    # NaN (kernel_distance divided by d = 0) or a silent 0 before.
    with pytest.raises(ValueError, match=r"shape \(N, D\) with N >= \d+ and D >= 1.*\(5, 0\)"):
        call(torch.zeros(5, 0), torch.zeros(5, 0))


def test_sliced_wasserstein_in_float16_with_unequal_sizes(generator):
    # torch.quantile refused float16 before ("quantile() input tensor must be either float or
    # double dtype"). The result must agree with float32 up to float16 rounding of the points.
    x, y = torch.randn(40, 2, generator=generator), torch.randn(30, 2, generator=generator) + 1
    expected = metrics.sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))
    got = metrics.sliced_wasserstein(x.half(), y.half(), generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(expected, rel=1e-2)  # float16 inputs: relative error ~1e-3


def test_gaussian_frechet_distance_accepts_lists_and_arrays():
    import numpy as np

    expected = metrics.gaussian_frechet_distance(
        torch.tensor([0.0, 1.0]), torch.eye(2), torch.tensor([1.0, 1.0]), 2 * torch.eye(2)
    )
    assert metrics.gaussian_frechet_distance(
        [0.0, 1.0], np.eye(2), (1.0, 1.0), [[2.0, 0.0], [0.0, 2.0]]
    ) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(TypeError, match="mu1 must be"):
        metrics.gaussian_frechet_distance("ab", torch.eye(2), [1.0, 1.0], torch.eye(2))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "-3"], "--batch-size must be >= 1"),
        (["--lr", "nan"], r"--lr must be in \(0, inf\]"),
        (["--lr", "0"], r"--lr must be in \(0, inf\]"),
    ],
)
def test_classifier_cli_refuses_bad_numbers_before_loading_data(argv, match, capsys, monkeypatch):
    from diffusion_tutorial.training import classifier_cli

    def no_data(*args, **kwargs):
        raise AssertionError("the data must not be loaded for a refused command")

    monkeypatch.setattr(classifier_cli, "mnist", no_data)
    with pytest.raises(SystemExit) as info:
        classifier_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0
    assert pytest.importorskip("re").search(match, err), err


def test_classifier_cli_refuses_an_out_path_that_is_a_folder(tmp_path, capsys, monkeypatch):
    from diffusion_tutorial.training import classifier_cli

    monkeypatch.setattr(classifier_cli, "mnist", lambda **kw: 1 / 0)
    with pytest.raises(SystemExit) as info:
        classifier_cli.main(["--out", str(tmp_path)])
    assert info.value.code == 2 and "--out must be a file path" in capsys.readouterr().err


def test_frechet_distance_names_the_features_when_their_covariance_overflows(generator):
    # Sibling of the KID case: "cov1 must be finite" named an argument the caller never passed.
    f1, f2 = torch.randn(6, 3, generator=generator), torch.randn(5, 3, generator=generator)
    with pytest.raises(ValueError, match="features1 and features2 are too large.*covariance"):
        metrics.frechet_distance(f1.double() * 1e160, f2.double() * 1e160)

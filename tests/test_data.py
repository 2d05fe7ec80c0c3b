"""Tests for diffusion_tutorial.data: data root, MNIST scaling, toy 2-D sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_tutorial import data
from tests.conftest import mnist_available


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_root() == tmp_path


def test_data_root_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.data_root() == Path(tmp_path) / "diffusion_tutorial"


@pytest.mark.skipif(not mnist_available(), reason="MNIST files not present offline")
def test_mnist_is_scaled_to_minus_one_one():
    ds = data.mnist(train=False)
    assert len(ds) == 10_000
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y <= 9
    # Raw pixels are 0..255; x / 127.5 - 1 maps them exactly onto [-1, 1].
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    assert ds.images.shape == (10_000, 1, 28, 28)


def test_mnist_missing_files_error_says_where_and_how(tmp_path, monkeypatch):
    # Make the download fail instantly instead of waiting on the network.
    import torchvision.datasets.mnist as tv_mnist

    def no_download(self):
        raise RuntimeError("offline")

    monkeypatch.setattr(tv_mnist.MNIST, "download", no_download)
    with pytest.raises(RuntimeError) as err:
        data.mnist(root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert data.DATA_ENV in message


@pytest.mark.parametrize("name", sorted(data.MNIST_FILE_SIZES))
def test_truncated_mnist_file_is_reported_as_truncated_not_missing(name, tmp_path, monkeypatch):
    # Before: "MNIST was not found", although the file was there (cut short by a broken copy).
    import torchvision.datasets.mnist as tv_mnist

    def no_download(self):
        raise AssertionError("a truncated file must not trigger a download")

    monkeypatch.setattr(tv_mnist.MNIST, "download", no_download)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / name).write_bytes(b"\0" * 1000)  # a 1000-byte stub of a bigger file
    with pytest.raises(RuntimeError, match="truncated or corrupt") as err:
        data.mnist(train=name.startswith("train"), root=tmp_path)
    assert str(raw / name) in str(err.value) and "1,000 bytes" in str(err.value)


@pytest.mark.parametrize("name", sorted(data.TOY_DATASETS))
def test_toy_sets_shape_dtype_and_seed(name):
    a = data.toy_data(name, 500, generator=torch.Generator().manual_seed(1))
    b = data.toy_data(name, 500, generator=torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same seed -> bitwise-identical data
    assert torch.isfinite(a).all()
    assert a.abs().max() < 3  # all sets live roughly in [-2, 2]^2


def test_checkerboard_only_dark_squares(generator):
    squares = 4
    x = data.checkerboard(4000, squares=squares, generator=generator)
    cell = ((x + 1) / 2 * squares).floor().long().clamp(0, squares - 1)  # (n, 2)
    assert ((cell.sum(dim=1) % 2) == 0).all()
    # Every dark square is visited (8 of 16 squares, 4000 points: each expects ~500).
    assert len(torch.unique(cell, dim=0)) == squares * squares // 2


def test_gaussian_ring_modes_on_circle(generator):
    x = data.gaussian_ring(4000, modes=8, radius=1.0, std=0.01, generator=generator)
    r = x.norm(dim=1)
    # std 0.01 per coordinate: radii within 5 standard deviations of 1.
    assert (r - 1).abs().max() < 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.swiss_roll(0), "n must be >= 1"),
        (lambda: data.two_moons(10, noise=-1.0), "noise must be in"),
        (lambda: data.gaussian_ring(10, modes=0), "modes must be >= 1"),
        (lambda: data.gaussian_grid(10, side=1), "side must be >= 2"),
        (lambda: data.checkerboard(10, squares=1), "squares must be >= 2"),
        (lambda: data.toy_data("spiral", 10), "name must be one of"),
    ],
)
def test_toy_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_toy_n_must_be_int():
    with pytest.raises(TypeError, match="n must be an int"):
        data.two_moons(10.5)

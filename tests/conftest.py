"""Shared test settings: offline data root, torch threads, the oracle in CI, a seeded generator."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The offline MNIST copy beside the checkout (development machines and CI); readers online
# download into their own cache instead.
_SHARED = ROOT.parent / "shared" / "data"
if "DIFFUSION_TUTORIAL_DATA" not in os.environ and (_SHARED / "MNIST" / "raw").is_dir():
    os.environ["DIFFUSION_TUTORIAL_DATA"] = str(_SHARED)

IN_CI = os.environ.get("CI", "").lower() == "true"

# Under pytest-xdist (`make unit` runs -n 2) each worker gets one torch thread: two workers with two
# threads each would oversubscribe two cores. A plain `pytest` run keeps up to two threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_configure(config: pytest.Config) -> None:
    """In CI the diffusers oracle must run: a missing `oracle` extra is an error, not a skip."""
    if IN_CI and importlib.util.find_spec("diffusers") is None:
        raise pytest.UsageError(
            "CI=true but diffusers is not installed, so tests/test_diffusers_oracle.py would be "
            "skipped; install the oracle extra (pip install -e '.[oracle]', as `make test` does)"
        )


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0: tests never touch the global RNG."""
    return torch.Generator().manual_seed(0)


def mnist_available() -> bool:
    root = Path(os.environ.get("DIFFUSION_TUTORIAL_DATA", "~/.cache/diffusion_tutorial"))
    return (root.expanduser() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


def toy_config(out: Path, **kw):
    """A seconds-long TrainConfig: 6 steps of batch 32 on 256 two-moons points, T = 50, CPU."""
    from diffusion_tutorial.training.config import TrainConfig

    base = dict(
        dataset="two_moons",
        toy_size=256,
        steps=6,
        batch_size=32,
        warmup_steps=2,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
        T=50,
        out_dir=str(out),
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def mnist_config(out: Path, **kw):
    """:func:`toy_config` on "mnist" with the tiny U-Net and batch 8; use with ``fake_mnist``."""
    # The tiny U-Net has dropout 0.1, so resumption must also restore the global CPU RNG state.
    return toy_config(out, **{"dataset": "mnist", "model": "tiny", "batch_size": 8, **kw})


@pytest.fixture
def fake_mnist(monkeypatch):
    """64 random 8x8 images in [-1, 1] with labels 0..9 in place of the MNIST training set
    (``training.build.mnist_train`` is the only thing replaced)."""
    from diffusion_tutorial.training import build

    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1  # (64, 1, 8, 8)
    labels = torch.arange(64) % 10  # (64,)
    monkeypatch.setattr(build, "mnist_train", lambda: (images, labels))


def tiny_unet_config(num_classes: int | None = None):
    """An 8x8 U-Net with 8 channels: tests network plumbing (times, labels, dtypes, guidance)
    as well as a 28x28 one, at a fraction of the cost."""
    from diffusion_tutorial.networks.unet import UNetConfig

    return UNetConfig(
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        num_heads=2,
        groups=4,
        num_classes=num_classes,
    )

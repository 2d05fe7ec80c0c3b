"""Shared test settings: offline data root and a seeded generator."""

from __future__ import annotations

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

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0: tests never touch the global RNG."""
    return torch.Generator().manual_seed(0)


def mnist_available() -> bool:
    root = Path(os.environ.get("DIFFUSION_TUTORIAL_DATA", "~/.cache/diffusion_tutorial"))
    return (root.expanduser() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()

"""Data: MNIST from a local data root, and toy 2-D data sets generated in code.

Book: Getting started.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range, check_positive_int

__all__ = [
    "DATA_ENV",
    "MNIST_FILE_SIZES",
    "data_root",
    "mnist",
    "swiss_roll",
    "two_moons",
    "gaussian_ring",
    "gaussian_grid",
    "checkerboard",
    "TOY_DATASETS",
    "toy_data",
]

DATA_ENV = "DIFFUSION_TUTORIAL_DATA"
"""Environment variable naming the data root (the folder that holds ``MNIST/raw/``)."""


def data_root() -> Path:
    """The data root: ``$DIFFUSION_TUTORIAL_DATA`` if set, else a per-user cache directory.

    The cache directory is ``$XDG_CACHE_HOME/diffusion_tutorial`` (``~/.cache/diffusion_tutorial``
    when ``XDG_CACHE_HOME`` is unset). On Windows it is ``%LOCALAPPDATA%\\diffusion_tutorial``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "diffusion_tutorial"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "diffusion_tutorial"


class _Scaled(Dataset):
    """Wrap torchvision's MNIST: images as float32 (1, 28, 28) in [-1, 1], labels as int."""

    def __init__(self, base) -> None:
        self.base = base
        # The whole set fits in memory (60,000 x 784 bytes): convert once, index fast.
        self.images = (
            base.data.unsqueeze(1).to(torch.float32).div_(127.5).sub_(1.0)
        )  # (N, 1, 28, 28)
        self.labels = base.targets.clone()  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


MNIST_FILE_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
"""Byte size of each uncompressed MNIST file (a 16- or 8-byte header, then one byte per pixel/label)."""


def _check_mnist_files(raw: Path) -> bool:
    """True when the four MNIST files are in ``raw`` with the right sizes; False when some are absent.

    Raises ``RuntimeError`` naming the file when one is present but truncated or corrupt (a wrong
    size): torchvision would otherwise fail to parse it or try to download over it.
    """
    names = list(MNIST_FILE_SIZES)  # torchvision reads both splits' files to find either
    present = [n for n in names if (raw / n).is_file()]
    for name in present:
        size = (raw / name).stat().st_size
        if size != MNIST_FILE_SIZES[name]:
            raise RuntimeError(
                f"the MNIST file {raw / name} is truncated or corrupt: {size:,} bytes instead of "
                f"{MNIST_FILE_SIZES[name]:,}. Delete it and run again to download it, or copy a "
                f"complete file there."
            )
    return len(present) == len(names)


def mnist(train: bool = True, root: str | os.PathLike | None = None) -> Dataset:
    """MNIST {cite}`lecun1998gradient` as a Dataset of ``(image, label)``, images in [-1, 1].

    Images are float32 tensors of shape (1, 28, 28), scaled by x / 127.5 - 1 so that a blank pixel is
    -1 and ink is +1, the range the diffusion chapters assume. ``dataset.images`` holds them all
    as one (N, 1, 28, 28) tensor and ``dataset.labels`` the labels, for fast batching.

    Looks in ``root`` (default :func:`data_root`) for torchvision's layout ``MNIST/raw/``; when the
    files are missing, torchvision downloads them there. A truncated or corrupt file is reported
    as such, with its path (not as "not found").
    """
    from torchvision.datasets import MNIST  # here, not at the top: torchvision takes ~1 s to import

    root = Path(root) if root is not None else data_root()
    raw = root / "MNIST" / "raw"
    if _check_mnist_files(raw):
        try:
            base = MNIST(str(root), train=train, download=False)
        except Exception as err:  # right sizes but unreadable: a corrupt header
            raise RuntimeError(
                f"the MNIST files in {raw} are corrupt ({type(err).__name__}: {err}); delete "
                f"them and run again to download them"
            ) from err
        return _Scaled(base)
    try:
        base = MNIST(str(root), train=train, download=True)
    except Exception as err:  # download failed: offline machine or blocked mirror
        raise RuntimeError(
            f"MNIST was not found under {raw} and could not be downloaded "
            f"({type(err).__name__}: {err}). Put the four MNIST files (train-images-idx3-ubyte, ...) "
            f"in <folder>/MNIST/raw/ and set the environment variable {DATA_ENV}=<folder>, "
            f"or connect to the internet and run again."
        ) from err
    return _Scaled(base)


# --------------------------------------------------------------------------- toy 2-D data
# Each returns a float32 tensor of shape (n, 2), roughly centred with unit-ish scale.


def _check_n(n: int) -> int:
    return check_positive_int("n", n)


def swiss_roll(
    n: int, *, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A 2-D swiss roll: points (r cos r, r sin r) / 10 with r in [1.5 pi, 4.5 pi], plus noise."""
    _check_n(n)
    check_float_in_range("noise", noise, 0.0)
    r = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))  # (n,)
    x = torch.stack([r * torch.cos(r), r * torch.sin(r)], dim=1) / 10  # (n, 2)
    return (x + noise * torch.randn(n, 2, generator=generator)).float()


def two_moons(
    n: int, *, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Two interleaving half circles, each point chosen from either moon with probability 1/2."""
    _check_n(n)
    check_float_in_range("noise", noise, 0.0)
    theta = math.pi * torch.rand(n, generator=generator)  # (n,)
    upper = torch.rand(n, generator=generator) < 0.5  # (n,)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1)  # (n, 2)
    return (pts + noise * torch.randn(n, 2, generator=generator)).float()


def gaussian_ring(
    n: int,
    *,
    modes: int = 8,
    radius: float = 1.0,
    std: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A mixture of ``modes`` equal Gaussians (standard deviation ``std``) evenly spaced on a circle."""
    _check_n(n)
    check_positive_int("modes", modes)
    check_float_in_range("radius", radius, 0.0, low_open=True)
    check_float_in_range("std", std, 0.0)
    k = torch.randint(modes, (n,), generator=generator)  # (n,)
    angle = 2 * math.pi * k / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
    return (centres + std * torch.randn(n, 2, generator=generator)).float()


def gaussian_grid(
    n: int, *, side: int = 5, std: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A mixture of ``side`` x ``side`` equal Gaussians on a grid spanning [-1, 1]^2."""
    _check_n(n)
    check_int_in_range("side", side, 2, None)
    check_float_in_range("std", std, 0.0)
    ij = torch.randint(side, (n, 2), generator=generator)  # (n, 2)
    centres = ij / (side - 1) * 2 - 1  # (n, 2)
    return (centres + std * torch.randn(n, 2, generator=generator)).float()


def checkerboard(
    n: int, *, squares: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform points on the dark squares (row + column even) of a ``squares``-wide board on [-1, 1]^2."""
    _check_n(n)
    check_int_in_range("squares", squares, 2, None)
    grid = torch.cartesian_prod(torch.arange(squares), torch.arange(squares))  # (squares^2, 2)
    dark = grid[grid.sum(dim=1) % 2 == 0]  # (K, 2): (column, row) of each dark square
    k = torch.randint(len(dark), (n,), generator=generator)  # (n,)
    u = torch.rand(n, 2, generator=generator)  # (n, 2): position inside the square
    return ((dark[k] + u) / squares * 2 - 1).float()


TOY_DATASETS = {
    "swiss_roll": swiss_roll,
    "two_moons": two_moons,
    "gaussian_ring": gaussian_ring,
    "gaussian_grid": gaussian_grid,
    "checkerboard": checkerboard,
}
"""Name -> generator function for the toy 2-D sets (used by the training CLI)."""


def toy_data(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points of the toy 2-D set called ``name`` (one of :data:`TOY_DATASETS`)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
    return TOY_DATASETS[name](n, generator=generator)

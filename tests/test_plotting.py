"""Tests for diffusion_tutorial.plotting: grids and animations that survive static HTML."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffusion_tutorial import plotting  # noqa: E402


def test_image_grid_maps_minus_one_one_to_unit_range(generator):
    images = torch.rand(10, 1, 28, 28, generator=generator) * 2 - 1
    grid = plotting.image_grid(images, nrow=5, padding=2)
    assert grid.shape == (2 * 30 + 2, 5 * 30 + 2, 3)
    assert grid.min() >= 0 and grid.max() <= 1
    # Top-left pixel of the first image: (x + 1) / 2.
    assert torch.isclose(grid[2, 2, 0], (images[0, 0, 0, 0] + 1) / 2)


def test_image_grid_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"images must be a tensor of shape \(B, C, H, W\)"):
        plotting.image_grid(torch.zeros(28, 28))


def test_animation_is_self_contained_html(generator):
    frames = [torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(3)]
    html = plotting.animation_html(plotting.animate_images(frames, nrow=2))
    assert "<script" in html and "data:image/png;base64" in html  # frames embedded, no files


def test_scatter_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"points must have shape \(n, 2\)"):
        plotting.scatter2d(torch.zeros(5, 3))

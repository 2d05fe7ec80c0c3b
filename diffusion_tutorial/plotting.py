"""Plotting: image grids, 2-D scatter plots and animations that survive static HTML.

The only module of the package that imports matplotlib. Book: Getting started.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import torch
from matplotlib import animation

__all__ = [
    "image_grid",
    "show_images",
    "scatter2d",
    "animate_images",
    "animate_points",
    "animation_html",
]

EMBED_LIMIT_MB = 64.0
"""An embedded animation holds every frame: allow more than matplotlib's 20 MB default."""


def animation_html(anim: animation.Animation) -> str:
    """The animation as self-contained HTML and JavaScript (``to_jshtml``), which also plays in the
    static book. Display it with ``IPython.display.HTML(animation_html(anim))``. The larger embed
    limit applies only inside this call; matplotlib's global settings are left as they were.
    """
    with matplotlib.rc_context({"animation.embed_limit": EMBED_LIMIT_MB}):
        return anim.to_jshtml()


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile a batch (B, C, H, W) in [-1, 1] into one (H', W', C) array in [0, 1] for ``imshow``."""
    from torchvision.utils import make_grid

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be a tensor of shape (B, C, H, W), got shape {shape}")
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)  # (B, C, H, W) in [0, 1]
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W')
    return grid.permute(1, 2, 0)  # (H', W', 3)


def show_images(
    images: torch.Tensor,
    nrow: int = 8,
    title: str | None = None,
    ax: plt.Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> plt.Axes:
    """Show a batch of images in [-1, 1] as one grid (uses ``torchvision.utils.make_grid``)."""
    grid = image_grid(images, nrow=nrow)
    if ax is None:
        rows = (len(images) + nrow - 1) // nrow
        _, ax = plt.subplots(figsize=figsize or (min(nrow, len(images)) * 0.8, rows * 0.8 + 0.4))
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter2d(
    points: torch.Tensor,
    ax: plt.Axes | None = None,
    title: str | None = None,
    lim: float | None = 2.0,
    **kwargs,
) -> plt.Axes:
    """Scatter plot of 2-D points (n, 2) with equal axes; ``kwargs`` go to ``ax.scatter``."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {tuple(points.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    pts = points.detach().float().cpu().numpy()
    kwargs = {"s": 2, "alpha": 0.5, **kwargs}
    ax.scatter(pts[:, 0], pts[:, 1], **kwargs)
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title:
        ax.set_title(title)
    return ax


def animate_images(
    frames: Sequence[torch.Tensor],
    nrow: int = 8,
    titles: Sequence[str] | None = None,
    interval: int = 120,
) -> animation.FuncAnimation:
    """Animate a sequence of image batches (each (B, C, H, W) in [-1, 1]) as a grid over time.

    Display it in a notebook with ``IPython.display.HTML(animation_html(anim))``: the result is
    plain HTML and JavaScript, so it also plays in the static book.
    """
    if len(frames) == 0:
        raise ValueError("frames must contain at least one batch of images")
    grids = [image_grid(f, nrow=nrow).numpy() for f in frames]
    fig, ax = plt.subplots(figsize=(4, 4 * grids[0].shape[0] / grids[0].shape[1]))
    ax.set_axis_off()
    im = ax.imshow(grids[0], interpolation="nearest")

    def update(i: int):
        im.set_data(grids[i])
        if titles is not None:
            ax.set_title(titles[i])
        return (im,)

    anim = animation.FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)
    plt.close(fig)  # show only the animation, not a stray static figure
    return anim


def animate_points(
    frames: Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    lim: float = 2.0,
    interval: int = 120,
) -> animation.FuncAnimation:
    """Animate a sequence of 2-D point clouds (each (n, 2)); display with :func:`animation_html`."""
    if len(frames) == 0:
        raise ValueError("frames must contain at least one point cloud")
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    pts0 = frames[0].detach().float().cpu().numpy()
    sc = ax.scatter(pts0[:, 0], pts0[:, 1], s=2, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")

    def update(i: int):
        sc.set_offsets(frames[i].detach().float().cpu().numpy())
        if titles is not None:
            ax.set_title(titles[i])
        return (sc,)

    anim = animation.FuncAnimation(fig, update, frames=len(frames), interval=interval, blit=False)
    plt.close(fig)
    return anim

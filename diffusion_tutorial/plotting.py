"""Plotting: image grids, 2-D scatter plots and animations that survive static HTML.

The only module of the package that imports matplotlib. Book: Getting started.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import torch
from matplotlib import animation

from diffusion_tutorial.networks.layout import unet_layers

__all__ = [
    "image_grid",
    "show_images",
    "scatter2d",
    "animate_images",
    "animate_points",
    "animation_html",
    "plot_unet",
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


_UNET_COLOURS = {
    "conv": "0.85",
    "out": "0.85",
    "res": "#9ecae1",
    "res+attn": "#fdae6b",
    "attn": "#fdd0a2",
    "downsample": "#c7e9c0",
    "upsample": "#dadaeb",
}


def plot_unet(model: torch.nn.Module, ax: plt.Axes | None = None) -> plt.Axes:
    """Draw a ``UNet`` from :func:`~diffusion_tutorial.networks.layout.unet_layers`: one box per layer, its output channels inside,
    one row per resolution, skip connections as grey brackets, and where t (and y) enter.

    Nothing is hard-coded: another configuration gives another figure.
    Book: Example: DDPM (Part 2; the U-Net).
    """
    rows = unet_layers(model)
    image = [r for r in rows if r.path != "emb"]
    cfg = model.config
    levels = sorted({r.size for r in image}, reverse=True)  # e.g. 28, 14, 7
    gap = 1.7  # vertical distance between resolutions
    pos = {i: (i, -gap * levels.index(r.size)) for i, r in enumerate(image)}
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8.0, 0.42 * len(image) + 1.5), 1.6 + 1.15 * len(levels)))
    w, h = 0.8, 0.5
    for i, r in enumerate(image):
        x, y = pos[i]
        ax.add_patch(
            matplotlib.patches.FancyBboxPatch(
                (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                facecolor=_UNET_COLOURS[r.kind], edgecolor="0.3", lw=0.6,
            )
        )  # fmt: skip
        ax.text(x, y, str(r.c_out), ha="center", va="center", fontsize=7)
        if r.emb:
            ax.plot(x, y - h / 2 - 0.13, marker="^", color="C3", ms=4, ls="none")
        if i > 0:
            (x0, y0) = pos[i - 1]
            ax.plot([x0 + w / 2, x - w / 2], [y0, y], color="0.2", lw=0.8, zorder=0)
        if r.skip is not None:  # a bracket over the boxes, higher for the wider ones
            (xs, ys) = pos[r.skip]
            height = 0.35 + 0.55 * (x - xs) / len(image)
            ax.plot(
                [xs, xs, x, x], [ys + h / 2, ys + h / 2 + height, y + h / 2 + height, y + h / 2],
                color="0.6", lw=0.8, zorder=0,
            )  # fmt: skip
            ax.annotate("", (x, y + h / 2), (x, y + h / 2 + 0.2),
                        arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.8})  # fmt: skip
    for k, size in enumerate(levels):
        total = sum(r.params for r in image if r.size == size)
        ax.text(-1.0, -gap * k, f"{size}x{size}", ha="right", va="center", fontsize=8)
        ax.text(len(image), -gap * k, f"{total:,} params", ha="left", va="center", fontsize=7)
    emb = {r.kind: r for r in rows if r.path == "emb"}
    E = 4 * cfg.base_channels
    lines = [
        f"time: t \u2192 sinusoidal embedding ({E} numbers) \u2192 MLP ({emb['time'].params:,} "
        f"params) \u2192 a vector of {E}, added inside every residual block (\u25b2)"
    ]
    if "label" in emb:
        lines.append(
            f"label: y \u2192 a learned table of {cfg.num_classes} + 1 (null) rows of {E} "
            f"({emb['label'].params:,} params), added to the time vector"
        )
    else:
        lines.append("label: none (an unconditional model has no input y)")
    ax.text(len(image) / 2, 1.2, "\n".join(lines), ha="center", va="bottom", fontsize=7.5)
    names = {
        "conv": "3x3 conv (in, out)",
        "res": "residual block",
        "res+attn": "residual block + self-attention",
        "attn": "self-attention",
        "downsample": "stride-2 conv (halves H, W)",
        "upsample": "upsample x2 + conv",
    }
    handles = [
        matplotlib.patches.Patch(facecolor=_UNET_COLOURS[k], edgecolor="0.3", label=label)
        for k, label in names.items()
        if any(r.kind == k for r in image)
    ]
    handles.append(
        matplotlib.lines.Line2D(
            [], [], marker="^", color="C3", ls="none", ms=4, label="receives the time (and label)"
        )
    )
    ax.legend(handles=handles, loc="lower center", ncol=4, fontsize=7,
              bbox_to_anchor=(0.5, -0.06), frameon=False)  # fmt: skip
    params = sum(r.params for r in rows)
    ax.set_title(
        f"U-Net, {params:,} parameters. In each box: output channels; grey: skip connections "
        "(concatenated)",
        fontsize=9,
    )
    ax.set_xlim(-2.4, len(image) + 2.2)
    ax.set_ylim(-gap * (len(levels) - 1) - 1.6, 2.0)
    ax.set_axis_off()
    return ax

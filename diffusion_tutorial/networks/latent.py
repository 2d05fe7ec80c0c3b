"""Latent diffusion's two maps: image x -> latent z = scaling_factor * mean(x), and z -> image.

A latent diffusion model (Rombach et al. 2022) learns the distribution of z, not of x. The
autoencoder's encoder means have no fixed scale (``networks.autoencoder`` keeps them of order one,
not of std one), while the noise schedule assumes data of std about one: at std s the
signal-to-noise ratio alpha_bar / (1 - alpha_bar) of every step is off by s**2. So z is the mean
times ``scaling_factor = 1 / std``, and a sample is divided by the same number before decoding
(Stable Diffusion's 0.18215; diffusers' ``AutoencoderKL`` stores it in its config as
``scaling_factor``, and so does :class:`~diffusion_tutorial.networks.autoencoder.AutoencoderConfig`).

The latent is the encoder's mean, not a sample of q(z | x): with the shipped KL weight the
posterior std is far below the latents' spread, and the mean makes ``encode_latent``
deterministic (the same image always gives the same z).

Book: Latent diffusion (Part 4). Rombach et al. 2022, Sec. 3 and Sec. 4.3.2 (the rescaling).
"""

from __future__ import annotations

import torch

from diffusion_tutorial.checks import check_float_in_range, check_positive_int
from diffusion_tutorial.networks.autoencoder import Autoencoder

__all__ = ["encode_latent", "decode_latent", "measure_scaling_factor"]


def _factor(autoencoder: Autoencoder, scaling_factor: float | None) -> float:
    """The factor to use: the one given (checked), else the autoencoder's recorded one."""
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(f"autoencoder must be an Autoencoder, got {type(autoencoder).__name__}")
    if scaling_factor is None:
        scaling_factor = autoencoder.config.scaling_factor
        if scaling_factor is None:
            raise ValueError(
                "autoencoder.config.scaling_factor is None (not measured, or a file written "
                "before it was recorded): pass scaling_factor=..., or measure it with "
                "networks.latent.measure_scaling_factor(autoencoder, train_images)"
            )
    return check_float_in_range("scaling_factor", scaling_factor, 0.0, None, low_open=True)


def encode_latent(
    autoencoder: Autoencoder, x: torch.Tensor, *, scaling_factor: float | None = None
) -> torch.Tensor:
    """z = scaling_factor * mean(x), the latent a diffusion model learns: (B, 1, 28, 28) -> (B, 4, 7, 7).

    ``x``: images in [-1, 1]. ``scaling_factor``: None uses ``autoencoder.config.scaling_factor``
    (1 / std of the training latents, so z has std about one); another positive number trains at
    another scale (the chapter's sweep). Deterministic (the encoder's mean, no sampling); no
    gradient is tracked. Rombach et al. 2022, Sec. 4.3.2.
    """
    factor = _factor(autoencoder, scaling_factor)
    with torch.no_grad():
        mean, _ = autoencoder.encode(x)  # (B, L, h, w)
    return factor * mean


def decode_latent(
    autoencoder: Autoencoder, z: torch.Tensor, *, scaling_factor: float | None = None
) -> torch.Tensor:
    """x_hat = decode(z / scaling_factor), images in [-1, 1]: (B, 4, 7, 7) -> (B, 1, 28, 28).

    The inverse of :func:`encode_latent`'s scaling, with the same ``scaling_factor`` (None: the
    autoencoder's own); decoding a latent sample without dividing by it is the classic bug of
    latent diffusion. No gradient is tracked.
    """
    factor = _factor(autoencoder, scaling_factor)
    with torch.no_grad():
        return autoencoder.decode(z / factor)  # (B, 1, H, W), tanh: in [-1, 1] in float32


@torch.no_grad()
def measure_scaling_factor(
    autoencoder: Autoencoder, images: torch.Tensor, *, batch_size: int = 1000
) -> float:
    """1 / std of the encoder means of ``images``, the std taken over ALL their elements at once.

    One number over every image, channel and position (Stable Diffusion's convention), not one
    per channel: the channels' own stds differ (for the shipped autoencoder from about 0.47 to
    1.07 on MNIST's training set), so z has std one overall, not per channel. The mean is not
    subtracted before the diffusion either (the std here is about the mean, which is near 0).
    Computed in float64. ``images``: (N, 1, 28, 28) in [-1, 1], e.g. the 60,000 training digits.
    """
    check_positive_int("batch_size", batch_size)
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(f"autoencoder must be an Autoencoder, got {type(autoencoder).__name__}")
    means = torch.cat([autoencoder.encode(b)[0] for b in images.split(batch_size)])  # (N, L, h, w)
    if means.numel() < 2:
        raise ValueError(f"images must hold at least one image, got shape {tuple(images.shape)}")
    return 1.0 / means.double().std().item()

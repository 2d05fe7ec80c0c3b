"""A small convolutional autoencoder for MNIST: x (1, 28, 28) in [-1, 1] <-> latent z (4, 7, 7).

The groundwork of latent diffusion (Rombach et al. 2022): a diffusion model can learn the
distribution of z = encode(x) instead of x and hand its samples to ``decode``. The encoder halves
H and W twice with stride-2 convolutions (28 -> 14 -> 7), so the latent has 4 * 7 * 7 = 196
numbers against the image's 784.

The encoder outputs a diagonal Gaussian q(z | x) = N(mean, diag(exp(logvar))). Training adds
``kl_weight * KL(q(z | x) || N(0, I))`` to the reconstruction error. That term keeps the latent
space smooth (nearby z decode to similar images, because the decoder sees a little noise around
every mean) and bounded (the means cannot drift to huge values, since KL grows with mean**2).
Rombach et al. 2022, Sec. 3 and Appendix G, use a tiny KL weight (~1e-6, "KL-reg.") or a
vector-quantised latent instead. The weight here multiplies a KL summed over the latent's 196
numbers, against a squared error summed over the 784 pixels (both per image, averaged over the
batch). The default ``kl_weight = 1e-4`` (a choice, not tuned) is small enough that the
reconstruction barely suffers and large enough that the latents stay of order one; their standard
deviation is NOT forced to 1, so a latent diffusion model divides them by their measured std, as
Stable Diffusion divides by 0.18215. ``kl_weight = 0`` gives a deterministic autoencoder (use
``mean`` and ignore ``logvar``).

Shape legend: B batch, C channels, H = W = 28 (image), h = w = 7 (latent), L = latent_channels.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_tutorial.background.probability import reparameterize
from diffusion_tutorial.checks import (
    check_finite,
    check_float_in_range,
    check_float_tensor,
    check_positive_int,
)

__all__ = ["AutoencoderConfig", "Autoencoder", "kl_to_standard_normal", "sample_latent"]

IMAGE_RANGE_TOL = 1e-3  # inputs may exceed [-1, 1] by rounding, not more


@dataclasses.dataclass
class AutoencoderConfig:
    """Hyper-parameters of :class:`Autoencoder`; JSON-serialisable (``AutoencoderConfig(**asdict(cfg))``).

    Widths are ``base_channels`` at 28x28 and ``2 * base_channels`` at 14x14 and 7x7;
    ``latent_channels`` is the latent's C; ``kl_weight`` is beta in rec + beta * KL (0: deterministic).
    ``scaling_factor`` is the number a latent diffusion model multiplies the encoder means by,
    z = scaling_factor * mean (Stable Diffusion's 0.18215, diffusers' ``AutoencoderKL`` config
    entry of the same name): 1 / std of the means over the training images, measured after
    training by ``networks.latent.measure_scaling_factor`` and stored with the weights. None:
    not measured (an untrained network, or a file written before the field existed);
    ``networks.latent.encode_latent`` refuses such an autoencoder unless given a factor.
    """

    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    latent_channels: int = 4
    groups: int = 8
    kl_weight: float = 1e-4
    scaling_factor: float | None = None

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "base_channels", "latent_channels", "groups"):
            check_positive_int(name, getattr(self, name))
        check_float_in_range("kl_weight", self.kl_weight, 0.0, None)
        if self.scaling_factor is not None:  # finite and > 0, or a clear error
            check_float_in_range("scaling_factor", self.scaling_factor, 0.0, None, low_open=True)
        if self.image_size % 4 != 0:
            raise ValueError(
                f"image_size must be divisible by 4 (two stride-2 downsamplings), got {self.image_size}"
            )
        if self.base_channels % self.groups != 0:
            raise ValueError(
                f"groups must divide base_channels, got groups={self.groups} and "
                f"base_channels={self.base_channels}"
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(L, h, w) of one latent, h = w = image_size / 4."""
        return (self.latent_channels, self.image_size // 4, self.image_size // 4)


class ConvBlock(nn.Module):
    """h = skip(x) + conv(act(norm(conv(act(norm(x)))))): the U-Net's residual block without time."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


class Autoencoder(nn.Module):
    """encode: x (B, 1, 28, 28) -> mean, logvar (B, 4, 7, 7); decode: z (B, 4, 7, 7) -> x_hat in (-1, 1).

    Book: Latent diffusion (Part 4). Rombach et al. 2022, Sec. 3 (perceptual compression with a
    KL-regularised autoencoder). The decoder ends in ``tanh``, so every output lies strictly
    inside (-1, 1), the range of the data and of MNIST-FID's classifier.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else AutoencoderConfig()
        c, g, L = cfg.base_channels, cfg.groups, cfg.latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c, 3, padding=1),  # (B, c, 28, 28)
            ConvBlock(c, c, g),
            nn.Conv2d(c, c, 3, stride=2, padding=1),  # (B, c, 14, 14)
            ConvBlock(c, 2 * c, g),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1),  # (B, 2c, 7, 7)
            ConvBlock(2 * c, 2 * c, g),
            nn.GroupNorm(g, 2 * c),
            nn.SiLU(),
            nn.Conv2d(2 * c, 2 * L, 3, padding=1),  # (B, 2L, 7, 7): mean and logvar
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(L, 2 * c, 3, padding=1),  # (B, 2c, 7, 7)
            ConvBlock(2 * c, 2 * c, g),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1),  # (B, 2c, 14, 14)
            ConvBlock(2 * c, c, g),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (B, c, 28, 28)
            ConvBlock(c, c, g),
            nn.GroupNorm(g, c),
            nn.SiLU(),
            nn.Conv2d(c, cfg.in_channels, 3, padding=1),  # (B, 1, 28, 28)
            nn.Tanh(),
        )

    def num_parameters(self) -> int:
        """The number of trainable parameters (encoder + decoder)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check(self, name: str, x: object, shape: tuple[int, int, int]) -> torch.Tensor:
        check_float_tensor(name, x)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}"
            )
        return check_finite(name, x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters of q(z | x): ``mean`` and ``logvar``, each (B, 4, 7, 7).

        ``x``: (B, 1, 28, 28) images in [-1, 1]. The latent a diffusion model learns is ``mean``
        (or :func:`sample_latent`); with ``kl_weight = 0`` ``logvar`` is untrained and meaningless.
        """
        cfg = self.config
        self._check("x", x, (cfg.in_channels, cfg.image_size, cfg.image_size))
        low, high = x.min().item(), x.max().item()
        if low < -1 - IMAGE_RANGE_TOL or high > 1 + IMAGE_RANGE_TOL:
            raise ValueError(
                f"x must hold images in [-1, 1] (dt.mnist's scale), got values in [{low:.3g}, {high:.3g}]"
            )
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # each (B, L, h, w)
        return mean, logvar.clamp(-30.0, 20.0)  # exp(logvar) stays a finite float32

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat (B, 1, 28, 28) in (-1, 1) (tanh) from latents ``z`` (B, 4, 7, 7)."""
        return self.decoder(self._check("z", z, self.config.latent_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """decode(mean of encode(x)): the deterministic reconstruction."""
        return self.decode(self.encode(x)[0])


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over every other dimension.

    KL = 1/2 * sum(mean**2 + exp(logvar) - 1 - logvar), the closed form for diagonal Gaussians
    (Kingma & Welling 2014, Appendix B). Returns shape (B,).
    """
    if mean.shape != logvar.shape:
        raise ValueError(
            f"mean and logvar must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}"
        )
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)  # (B, ...)
    return kl.flatten(1).sum(dim=1)  # (B,)


def sample_latent(
    mean: torch.Tensor, logvar: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): the reparameterised sample of q(z | x)
    (Part 1's :func:`~diffusion_tutorial.background.probability.reparameterize`)."""
    return reparameterize(mean, logvar, generator=generator)

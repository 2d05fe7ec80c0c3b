"""A small, readable U-Net that predicts the noise: eps_hat = eps_theta(x_t, t[, y]).

Book: Example: DDPM (Part 2; the U-Net). Ronneberger et al. 2015 (U-Net); Ho et al. 2020, Appendix B
(the DDPM variant: residual blocks, GroupNorm, sinusoidal time embedding, self-attention at a low
resolution); Ho & Salimans 2022 (a learned "null" class for classifier-free guidance).

Shape legend: B batch, C channels, H = W = image_size, E embedding width.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_tutorial.checks import check_float_in_range, check_positive_int
from diffusion_tutorial.core.time import check_book_times
from diffusion_tutorial.networks.embedding import (
    check_input_dtype,
    check_prediction,
    sinusoidal_embedding,
    validate_y,
)

__all__ = ["UNetConfig", "UNet", "PRESETS"]


@dataclasses.dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; JSON-serialisable (``UNetConfig(**asdict(cfg))`` round-trips).

    ``channel_mults[i] * base_channels`` is the width at resolution ``image_size / 2**i``;
    ``num_classes=None`` gives an unconditional model, otherwise labels ``0..num_classes-1`` plus
    the null label ``num_classes`` (used for classifier-free guidance). ``T`` is the largest time
    index the model accepts (book indices ``1..T``). ``prediction`` says what the output means:
    ``"eps"`` (the noise, L_simple) or ``"velocity"`` (the flow-matching velocity u, read through
    ``core.flow_matching.velocity_model``); files written before the field existed are ``"eps"``.
    """

    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention: bool = True
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int | None = None
    T: int = 1000
    groups: int = 8
    prediction: str = "eps"

    def __post_init__(self) -> None:
        # Refuse rather than coerce: int(1.7) == 1 and tuple('12') == ('1', '2') would silently
        # build another network than the one asked for (or the one a file describes).
        mults = self.channel_mults
        if not isinstance(mults, (tuple, list)) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in mults
        ):
            raise TypeError(
                f"channel_mults must be a tuple of positive ints such as (1, 2, 4), got {mults!r}"
            )
        self.channel_mults = tuple(mults)  # JSON gives a list
        if not isinstance(self.attention, bool):
            raise TypeError(
                f"attention must be True or False, got {type(self.attention).__name__} "
                f"{self.attention!r}"
            )
        for name in (
            "in_channels",
            "image_size",
            "base_channels",
            "num_res_blocks",
            "num_heads",
            "T",
            "groups",
        ):
            check_positive_int(name, getattr(self, name))
        check_float_in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be positive ints, got {self.channel_mults}")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor != 0:
            raise ValueError(
                f"image_size must be divisible by 2**(len(channel_mults)-1) = {factor}, "
                f"got {self.image_size}"
            )
        for m in self.channel_mults:
            if (m * self.base_channels) % self.groups != 0:
                raise ValueError(
                    f"groups must divide every width base_channels * channel_mults[i], "
                    f"got groups={self.groups} and width {m * self.base_channels}"
                )
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        check_prediction(self.prediction)


PRESETS: dict[str, UNetConfig] = {
    # ~1.0 M parameters, ~0.2 GFLOP per 28x28 image: the shipped MNIST models (a 2-core CPU
    # samples 64 images with 20 network evaluations in a few seconds).
    "mnist": UNetConfig(),
    # ~0.1 M parameters: for tests and quick notebook demos.
    "tiny": UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1),
    # ~1.0 M parameters for the 4x7x7 latents of latent diffusion (--dataset mnist-latent). One
    # resolution, no downsampling: a stride-2 convolution takes 7 to 4 and upsampling 4 to 8, so
    # the skips would not line up (UNetConfig refuses image_size 7 with two levels). At 7x7
    # (49 positions) attention after every block is cheap, and 3x3 convolutions in two residual
    # blocks already see the whole latent. Wider than `mnist` (64 channels at every block, not
    # 16..64) since 49 positions are cheap: 78 MFLOP per latent against 208 for a 28x28 digit
    # (torch.utils.flop_counter, conditional model).
    "latent": UNetConfig(
        in_channels=4, image_size=7, base_channels=64, channel_mults=(1,), num_res_blocks=2
    ),
}
"""Named model sizes for the training CLI (``--model``); set ``image_size``/``in_channels`` per dataset."""


class ResBlock(nn.Module):
    """h = x + conv(act(norm(conv(act(norm(x))) + proj(emb)))): a residual block told the time (and class)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = (
            h + self.emb_proj(F.silu(emb))[:, :, None, None]
        )  # add the time/class signal per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, C_out, H, W)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions, with num_heads heads."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, H*W, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class UNet(nn.Module):
    """The noise predictor eps_theta(x_t, t[, y]) -> eps_hat with the same shape as x_t.

    Book: Example: DDPM (Part 2). Ho et al. 2020, Appendix B; Ho & Salimans 2022, Algorithm 1.

    Down path: ``num_res_blocks`` residual blocks per resolution, then a stride-2 convolution;
    middle: residual block, self-attention, residual block at the lowest resolution; up path:
    ``num_res_blocks + 1`` blocks per resolution, each fed the matching down-path activation
    (the skip connection), then nearest-neighbour upsampling and a convolution.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else UNetConfig()
        ch, g = cfg.base_channels, cfg.groups
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # One extra row: index num_classes is the learned null class of classifier-free guidance.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        widths = [m * ch for m in cfg.channel_mults]
        lowest = len(widths) - 1
        self.down = nn.ModuleList()
        skip_widths, c = [ch], ch
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(
                    self._block(c, w, emb_dim, attend=cfg.attention and level == lowest)
                )
                c = w
                skip_widths.append(c)
            if level != lowest:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halve H and W
                skip_widths.append(c)
        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, cfg.dropout, g)]
            + ([SelfAttention(c, cfg.num_heads, g)] if cfg.attention else [])
            + [ResBlock(c, c, emb_dim, cfg.dropout, g)]
        )
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                c_skip = skip_widths.pop()
                self.up.append(
                    self._block(c + c_skip, w, emb_dim, cfg.attention and level == lowest)
                )
                c = w
            if level != 0:
                self.up.append(
                    nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c, 3, padding=1))
                )
        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predict eps_hat = 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, c_in: int, c_out: int, emb_dim: int, attend: bool) -> nn.Module:
        cfg = self.config
        res = ResBlock(c_in, c_out, emb_dim, cfg.dropout, cfg.groups)
        return (
            nn.ModuleList([res, SelfAttention(c_out, cfg.num_heads, cfg.groups)]) if attend else res
        )

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, ResBlock):
            return layer(h, emb)
        if isinstance(layer, nn.ModuleList):  # residual block followed by attention
            return layer[1](layer[0](h, emb))
        return layer(h)  # downsample, upsample or attention

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise: eps_hat = eps_theta(x_t, t, y), shape (B, C, H, W) like x_t.

        ``t``: int64 (B,) book indices 1..T (a scalar is broadcast), or a float tensor (B,) of
        fractional book times in [1, T]: a point between grid times, fed to the same sinusoidal
        embedding (its sigma and alpha_bar are those of ``core.time.NoiseLevel.from_t``, by
        interpolation in log-SNR). The model was trained only at integer t, so a fractional t
        relies on the network being smooth in t. Integer values, as int64 or as floats, give
        the integer-t output bit for bit. ``y``: int64 (B,) labels in 0..num_classes
        (num_classes = null); None on a conditional model means the null class.
        """
        cfg = self.config
        if (
            x_t.ndim != 4
            or x_t.shape[1] != cfg.in_channels
            or x_t.shape[2:] != (cfg.image_size,) * 2
        ):
            raise ValueError(
                f"x_t must have shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(x_t.shape)}"
            )
        check_input_dtype(x_t, self.conv_in.weight)
        B = x_t.shape[0]
        # Range checks wait for the GPU: skip them in CUDA training (the loss already checked t).
        checks = not (self.training and x_t.is_cuda)
        t = check_book_times("t", t, B, 1, cfg.T, x_t.device, check_values=checks)  # (B,)
        emb = self.time_mlp(sinusoidal_embedding(t, 4 * cfg.base_channels, dtype=x_t.dtype))
        if self.class_emb is not None:
            emb = emb + self.class_emb(
                validate_y(y, B, cfg.num_classes, x_t.device, checks)
            )  # (B, E)
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=None); do not pass y")

        h = self.conv_in(x_t)  # (B, ch, H, W)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)  # (B, C_level, H / 2**level, W / 2**level)
            skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb)  # (B, C_lowest, H_lowest, W_lowest)
        for layer in self.up:
            if not isinstance(layer, nn.Sequential):  # a block: concatenate its skip first
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H', W')
            h = self._run(layer, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_in, H, W)

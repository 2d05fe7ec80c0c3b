"""Tests for unet_layers / plot_unet: the U-Net figure is read from the model, so it must
agree with the network's forward pass for every configuration, not only the shipped one."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from diffusion_tutorial import plotting  # noqa: E402
from diffusion_tutorial.networks.layout import unet_layers  # noqa: E402
from diffusion_tutorial.networks.unet import PRESETS, UNet, UNetConfig  # noqa: E402

CONFIGS = {
    "mnist": PRESETS["mnist"],
    "tiny": PRESETS["tiny"],
    "conditional": dataclasses.replace(PRESETS["tiny"], num_classes=10),
    "no-attention, 4 levels, 3 channels": UNetConfig(
        in_channels=3,
        image_size=32,
        base_channels=8,
        channel_mults=(1, 2, 2, 4),
        num_res_blocks=1,
        attention=False,
    ),  # fmt: skip
}


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request) -> UNet:
    return UNet(CONFIGS[request.param])


def test_every_parameter_is_in_one_row(model):
    # a layer the walk forgot (or counted twice) changes the sum
    rows = unet_layers(model)
    assert sum(r.params for r in rows) == model.num_parameters()
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_resolutions_and_widths_follow_the_config(model):
    cfg = model.config
    rows = [r for r in unet_layers(model) if r.path != "emb"]
    sizes = sorted({r.size for r in rows}, reverse=True)
    assert sizes == [cfg.image_size // 2**k for k in range(len(cfg.channel_mults))]
    for r in rows:
        if r.kind in ("res", "res+attn"):  # a block's width is the width of its resolution
            level = sizes.index(r.size)
            assert r.c_out == cfg.base_channels * cfg.channel_mults[level], r
    assert rows[0].c_in == rows[-1].c_out == cfg.in_channels
    assert any(r.kind == "res+attn" for r in rows) == cfg.attention


def test_skips_pair_layers_as_the_forward_pass_concatenates(model):
    # the input of an up block = the previous output + the skip's output, at the same resolution
    rows = unet_layers(model)
    ups = [i for i, r in enumerate(rows) if r.skip is not None]
    assert len(ups) == len([r for r in rows if r.path in ("in", "down")])  # every push popped
    for i in ups:
        skip = rows[rows[i].skip]
        assert skip.path in ("in", "down") and skip.size == rows[i].size
        assert rows[i].c_in == rows[i - 1].c_out + skip.c_out, rows[i]


def test_time_and_label_rows(model):
    rows = {r.kind: r for r in unet_layers(model) if r.path == "emb"}
    assert rows["time"].params == sum(p.numel() for p in model.time_mlp.parameters())
    assert ("label" in rows) == (model.config.num_classes is not None)


def test_plot_unet_draws_and_leaves_the_mode_alone(model):
    model.train()
    ax = plotting.plot_unet(model)
    assert model.training  # the walk runs in eval mode and restores the caller's mode
    assert f"{model.num_parameters():,} parameters" in ax.get_title()
    plt.close(ax.figure)


def test_unet_layers_rejects_other_models():
    with pytest.raises(TypeError, match="model must be a diffusion_tutorial UNet"):
        unet_layers(object())

"""Tests for the U-Net, the MLP denoiser and the EMA: shapes, conditioning, errors, sizes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from diffusion_tutorial.networks.embedding import sinusoidal_embedding
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import PRESETS, UNet, UNetConfig
from diffusion_tutorial.training.ema import EMA

TINY = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_heads=2)
# For tests of the plumbing (time, labels, batching) rather than of image sizes: 8x8, 8 channels.
SMALL = dict(TINY, image_size=8, base_channels=8, groups=4)


def randomise(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Replace every weight by N(0, 0.05^2): the zero-initialised output layers would hide bugs."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    ("in_channels", "image_size", "mults"), [(1, 28, (1, 2, 2)), (3, 8, (1, 2)), (2, 4, (1,))]
)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_shape_matches_input(in_channels, image_size, mults, num_classes, generator):
    cfg = UNetConfig(
        **{**TINY, "channel_mults": mults},
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
    )
    model = UNet(cfg).eval()
    x_t = torch.randn(3, in_channels, image_size, image_size, generator=generator)
    t = torch.tensor([1, 500, 1000])
    y = torch.tensor([0, 9, 10]) if num_classes else None
    assert model(x_t, t, y).shape == x_t.shape


def test_zero_initialised_output_predicts_zero(generator):
    # conv_out starts at zero, so eps_hat = 0 at initialisation (a stable start for L_simple).
    model = UNet(UNetConfig(**SMALL)).eval()
    x_t = torch.randn(2, 1, 8, 8, generator=generator)
    assert torch.count_nonzero(model(x_t, torch.tensor([3, 7]))) == 0


def test_config_round_trips_through_json():
    cfg = UNetConfig(channel_mults=(1, 2, 4), num_classes=10)
    again = UNetConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg


def test_examples_are_independent_in_eval_mode(generator):
    # GroupNorm normalises each example on its own: a batch gives the same result as its parts.
    # Tolerance 1e-5: float32 convolutions may sum in a different order for another batch size.
    model = randomise(UNet(UNetConfig(**SMALL, num_classes=10)), generator)
    x_t = torch.randn(4, 1, 8, 8, generator=generator)
    t, y = torch.tensor([1, 10, 100, 1000]), torch.tensor([0, 3, 10, 7])
    full = model(x_t, t, y)
    torch.testing.assert_close(full[:2], model(x_t[:2], t[:2], y[:2]), atol=1e-5, rtol=1e-5)


def test_time_and_label_change_the_output(generator):
    model = randomise(UNet(UNetConfig(**SMALL, num_classes=10)), generator)
    x_t = torch.randn(1, 1, 8, 8, generator=generator)
    base = model(x_t, torch.tensor([10]), torch.tensor([3]))
    assert not torch.allclose(base, model(x_t, torch.tensor([900]), torch.tensor([3])))
    assert not torch.allclose(base, model(x_t, torch.tensor([10]), torch.tensor([4])))


def test_missing_label_means_null_class(generator):
    model = randomise(UNet(UNetConfig(**SMALL, num_classes=10)), generator)
    x_t, t = torch.randn(2, 1, 8, 8, generator=generator), torch.tensor([5, 50])
    torch.testing.assert_close(model(x_t, t), model(x_t, t, torch.tensor([10, 10])))


def test_scalar_time_is_broadcast(generator):
    model = randomise(UNet(UNetConfig(**SMALL)), generator)
    x_t = torch.randn(2, 1, 8, 8, generator=generator)
    torch.testing.assert_close(model(x_t, 17), model(x_t, torch.tensor([17, 17])))


def test_sinusoidal_embedding_pairs_lie_on_the_unit_circle():
    # sin^2 + cos^2 = 1 for every frequency: the embedding is a point on a product of circles.
    e = sinusoidal_embedding(torch.arange(1, 1001), 64)  # (1000, 64)
    assert e.shape == (1000, 64)
    torch.testing.assert_close(e[:, :32] ** 2 + e[:, 32:] ** 2, torch.ones(1000, 32))


@pytest.mark.parametrize(
    ("x_shape", "t", "y", "match"),
    [
        ((2, 3, 28, 28), [1, 2], None, "x_t must have shape"),  # wrong channels
        ((2, 1, 32, 32), [1, 2], None, "x_t must have shape"),  # wrong size
        ((2, 1, 28), [1, 2], None, "x_t must have shape"),  # not 4-D
        ((2, 1, 28, 28), [0, 2], None, "1..1000"),  # t below 1
        ((2, 1, 28, 28), [1, 1001], None, "1..1000"),  # t above T
        ((2, 1, 28, 28), [1, 2, 3], None, "shape"),  # one t too many
        ((2, 1, 28, 28), [1, 2], [0, 11], "0..9"),  # label above null
        ((2, 1, 28, 28), [1, 2], [-1, 0], "0..9"),  # negative label
    ],
)
def test_bad_input_raises_value_error(x_shape, t, y, match):
    model = UNet(UNetConfig(**TINY, num_classes=10)).eval()
    y = torch.tensor(y) if y is not None else None
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(x_shape), torch.tensor(t), y)


@pytest.mark.parametrize(
    ("t", "y"),
    [
        ([1, 2], [True, False]),  # bool labels are not class labels
        ([1, 2], [0.0, 1.0]),  # float labels
    ],
)
def test_non_integer_t_or_y_raises_type_error(t, y):
    model = UNet(UNetConfig(**TINY, num_classes=10)).eval()
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(2, 1, 28, 28), torch.tensor(t), None if y is None else torch.tensor(y))


def _old_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The embedding as the shipped models were trained with it: int64 t cast to float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@pytest.mark.parametrize("name", ["mnist", "mnist-cond"])
def test_shipped_models_give_todays_output_bit_for_bit_at_integer_t(name):
    """Integer t as int64 (the old path), float32 and float64 gives the same output, torch.equal.

    The embedding the network sees at int64 t is also checked against the formula as it was
    before fractional t existed (a forward hook on ``time_mlp``), so the shipped checkpoints
    see exactly the inputs they were trained on.
    """
    from diffusion_tutorial import pretrained

    model, _ = pretrained.load(name)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 17, 500, 999, 1000])
    x_t = torch.randn(len(t), 1, 28, 28, generator=g)
    y = torch.arange(len(t)) % 11 if name == "mnist-cond" else None  # 10 = the null class
    seen = []
    hook = model.time_mlp.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        old = model(x_t, t, y)
        for dtype in (torch.float32, torch.float64):
            assert torch.equal(model(x_t, t.to(dtype), y), old), dtype
    hook.remove()
    assert torch.equal(seen[0], _old_embedding(t, seen[0].shape[1]))
    assert all(torch.equal(e, seen[0]) for e in seen[1:])


def test_fractional_t_lies_between_its_neighbours(generator):
    """A fractional t is a point between grid times: the output moves continuously from t to t + 1."""
    model = randomise(UNet(UNetConfig(**SMALL)), generator)
    x_t = torch.randn(1, 1, 8, 8, generator=generator).expand(5, -1, -1, -1)
    t = torch.tensor([500.0, 500.25, 500.5, 500.75, 501.0])
    with torch.no_grad():
        out = model(x_t, t)
    steps = (out[1:] - out[:-1]).flatten(1).norm(dim=1)  # (4,)
    assert (steps > 0).all()  # a fractional t is not rounded to a grid time
    # Smooth in t: four quarter steps, each about a quarter of the whole move (not a jump).
    assert steps.max() < 0.5 * (out[-1] - out[0]).norm()


@pytest.mark.parametrize("t", [0.5, 1000.5, -1.0, float("nan")])
@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_out_of_range_fractional_t_names_t_and_the_range(t, net):
    if net == "unet":
        model, x_t = UNet(UNetConfig(**SMALL)).eval(), torch.zeros(2, 1, 8, 8)
    else:
        model, x_t = MLPDenoiser(MLPConfig(hidden=32)), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"t must be a book time in \[1, 1000\]"):
        model(x_t, torch.tensor([2.0, t]))


def test_mlp_float_t_holding_integers_is_bit_identical(generator):
    model = randomise(MLPDenoiser(MLPConfig(hidden=32)), generator)
    x_t = torch.randn(4, 2, generator=generator)
    t = torch.tensor([1, 10, 999, 1000])
    assert torch.equal(model(x_t, t.double()), model(x_t, t))
    assert not torch.equal(model(x_t, t + 0.5 * (t < 1000)), model(x_t, t))


def test_unconditional_model_rejects_labels():
    model = UNet(UNetConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 1, 28, 28), torch.tensor([1]), torch.tensor([0]))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image_size=30),
        dict(image_size=0),
        dict(image_size=-4),
        dict(channel_mults=()),
        dict(base_channels=12),
        dict(dropout=1.0),
        dict(groups=0),
        dict(groups=-8),
        dict(num_heads=0),
    ],
)
def test_bad_config_raises(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match="groups" if name == "base_channels" else name):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(image_size=8.0), dict(groups=2.0), dict(T=True)])
def test_non_int_config_raises_type_error(kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        UNetConfig(**kwargs)


def test_mnist_preset_fits_the_size_budget():
    # Shipped weights must be <= 8 MB as float32 safetensors: <= 2M parameters.
    for num_classes in (None, 10):
        n = UNet(dataclasses.replace(PRESETS["mnist"], num_classes=num_classes)).num_parameters()
        assert n * 4 <= 8e6


@pytest.mark.parametrize("num_classes", [None, 3])
def test_mlp_denoiser_shapes_and_errors(num_classes, generator):
    model = MLPDenoiser(MLPConfig(dim=2, hidden=32, num_classes=num_classes))
    x_t = torch.randn(5, 2, generator=generator)
    assert model(x_t, torch.full((5,), 7)).shape == (5, 2)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(5, 3), torch.full((5,), 7))
    with pytest.raises(ValueError, match="1..1000"):
        model(x_t, torch.full((5,), 0))


def test_ema_follows_the_formula(generator):
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    d = ema.current_decay()
    assert d == pytest.approx(0.1)  # warm-up: min(0.9, (1 + 0) / (10 + 0))
    ema.update(model)
    for p_ema, p0, p in zip(ema.model.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(p_ema, d * p0 + (1 - d) * p)
    assert ema.current_decay() == pytest.approx(min(0.9, 2 / 11))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_without_warmup_uses_the_full_decay_and_survives_a_state_round_trip():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)  # e.g. fine-tuning weights that are already an EMA
    assert ema.current_decay() == 0.9
    ema.update(model)
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.current_decay() == 0.9 and restored.num_updates == 1


# Reliability II (issue 23): a config is refused rather than coerced into another network.
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(channel_mults=(1.7, 2)),  # int(1.7) == 1: silently (1, 2) before
        dict(channel_mults=[1.5, 2, 4]),  # what a file's JSON metadata may say
        dict(channel_mults="12"),  # a string is iterable: ('1', '2') -> (1, 2) before
        dict(channel_mults=(True, 2)),
        dict(attention="no"),  # a non-empty string is truthy: attention on before
        dict(attention=0),
    ],
)
def test_config_values_of_the_wrong_type_are_refused_not_coerced(kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        UNetConfig(**kwargs)


def test_a_list_of_ints_from_json_is_still_a_valid_channel_mults():
    assert UNetConfig(channel_mults=[1, 2]).channel_mults == (1, 2)

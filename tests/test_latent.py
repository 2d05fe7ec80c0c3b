"""Tests for latent diffusion: the scaling factor in the file, encode/decode, the mnist-latent
training data and its U-Net preset, samplers on latents, and the CLI on --dataset mnist-latent.

The shipped autoencoder (``pretrained.load("mnist-autoencoder")``) is part of the package, so
most tests need no data; those on real digits skip without the MNIST files.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from diffusion_tutorial import model_files, pretrained
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.data import mnist
from diffusion_tutorial.networks.autoencoder import Autoencoder, AutoencoderConfig
from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.latent import decode_latent, encode_latent, measure_scaling_factor
from diffusion_tutorial.networks.unet import PRESETS, UNet, UNetConfig
from diffusion_tutorial.samplers import ddim_sample, dpm_solver_sample
from diffusion_tutorial.training import build, cli, outputs
from diffusion_tutorial.training.autoencoder import load_autoencoder, save_autoencoder
from diffusion_tutorial.training.config import TrainConfig

from .conftest import mnist_available
from .test_training import one_thread  # noqa: F401 (fixture: one torch thread)

# The shipped autoencoder's test MSE per pixel is 0.00257 over all 10,000 test digits
# (bench/results/autoencoder_sizing.md) and 0.00242 over the first 200 used below (deterministic:
# the encoder's mean, fixed digits; only float rounding varies across machines). 0.003 leaves
# margin above both, while decoding without dividing by the factor gives 0.0041 and multiplying
# by it instead 0.0102.
RECON_MSE_TOL = 0.003


@pytest.fixture(scope="module")
def autoencoder() -> Autoencoder:
    return pretrained.load("mnist-autoencoder")


def images(n: int, seed: int = 0) -> torch.Tensor:
    """n random 1x28x28 'images' in [-1, 1]: enough for shapes and exact identities."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1


def small_autoencoder(**kw) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(base_channels=8, groups=4, **kw)).eval()


# --- The scaling factor in the file ------------------------------------------------------------


def test_scaling_factor_round_trips_through_the_file(tmp_path):
    model = small_autoencoder(scaling_factor=0.731)
    path = save_autoencoder(tmp_path / "ae.safetensors", model, note="test")
    loaded, meta = load_autoencoder(path)
    assert loaded.config.scaling_factor == 0.731  # JSON keeps a float exactly
    assert meta["autoencoder_config"]["scaling_factor"] == 0.731
    x = images(3)
    assert torch.equal(encode_latent(loaded, x), encode_latent(model, x))


def test_a_file_without_a_scaling_factor_loads_and_encode_latent_refuses_it(tmp_path):
    # Written as before the field existed: the config JSON has no "scaling_factor".
    model = small_autoencoder()
    config = dataclasses.asdict(model.config)
    del config["scaling_factor"]
    meta = {"kind": json.dumps("autoencoder"), "autoencoder_config": json.dumps(config)}
    path = model_files._write(tmp_path / "old.safetensors", model, meta)
    loaded, _ = load_autoencoder(path)
    assert loaded.config.scaling_factor is None
    with pytest.raises(ValueError, match="scaling_factor is None"):
        encode_latent(loaded, images(2))
    with pytest.raises(ValueError, match="scaling_factor is None"):
        decode_latent(loaded, torch.zeros(2, 4, 7, 7))
    z = encode_latent(loaded, images(2), scaling_factor=2.0)  # an explicit factor still works
    assert torch.equal(z, 2.0 * loaded.encode(images(2))[0])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_scaling_factor_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderConfig(scaling_factor=bad)
    with pytest.raises(ValueError, match="scaling_factor"):
        encode_latent(small_autoencoder(scaling_factor=1.0), images(1), scaling_factor=bad)


def test_the_shipped_autoencoder_loads_with_its_factor(autoencoder):
    assert isinstance(autoencoder, Autoencoder) and not autoencoder.training
    assert autoencoder.config.latent_shape == (4, 7, 7)
    assert 0.5 < autoencoder.config.scaling_factor < 2.0  # 1 / 0.868: latents of order one
    card = pretrained.card("mnist-autoencoder")
    assert card["kind"] == "autoencoder" and "scaling_factor_measured_on" in card


def test_loading_the_shipped_autoencoder_checks_its_sha256(monkeypatch):
    entry = pretrained.REGISTRY["mnist-autoencoder"]
    monkeypatch.setitem(pretrained.REGISTRY, "mnist-autoencoder", entry._replace(sha256="0" * 64))
    with pytest.raises(pretrained.ChecksumError):
        pretrained.load("mnist-autoencoder")


def test_init_refuses_the_autoencoder_by_name(tmp_path):
    cfg = TrainConfig(dataset="mnist-latent", init="mnist-autoencoder", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--init .*autoencoder"):
        build.load_init(UNet(PRESETS["latent"]), cfg, linear_schedule(1000))


# --- encode_latent / decode_latent -------------------------------------------------------------


def test_encode_and_decode_shapes_and_range(autoencoder):
    z = encode_latent(autoencoder, images(5))
    assert z.shape == (5, 4, 7, 7)
    far = 3 * torch.randn(5, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    x_hat = decode_latent(autoencoder, far)  # even far-out latents
    assert x_hat.shape == (5, 1, 28, 28)
    assert x_hat.min() >= -1 and x_hat.max() <= 1  # tanh (float32 rounds to +-1 when it saturates)


def test_the_factor_is_applied_once_and_inverted_on_decoding(autoencoder):
    # Identities that fail if a map applies the factor twice, divides instead of multiplying,
    # or forgets it: z = f * mean exactly, and decode_latent(encode_latent(x)) = decode(mean).
    x, f = images(4), autoencoder.config.scaling_factor
    with torch.no_grad():
        mean = autoencoder.encode(x)[0]
        want = autoencoder.decode(mean)
    assert torch.allclose(encode_latent(autoencoder, x), f * mean, rtol=0, atol=0)
    # z / f * f differs from mean by float32 rounding (~1e-7 relative) only
    assert torch.allclose(
        decode_latent(autoencoder, encode_latent(autoencoder, x)), want, atol=1e-5
    )
    # Another factor: the same round trip, and z scales with it
    z_half = encode_latent(autoencoder, x, scaling_factor=0.5)
    assert torch.allclose(z_half, 0.5 * mean, rtol=0, atol=0)
    assert torch.allclose(decode_latent(autoencoder, z_half, scaling_factor=0.5), want, atol=1e-5)


def test_measure_scaling_factor_gives_unit_std_on_its_images(autoencoder):
    x = images(64)
    f = measure_scaling_factor(autoencoder, x, batch_size=16)  # batches must not matter
    z = encode_latent(autoencoder, x, scaling_factor=f)
    assert z.double().std().item() == pytest.approx(1.0, abs=1e-5)  # float32 latents


@pytest.mark.skipif(not mnist_available(), reason="MNIST files not found offline")
def test_decode_of_encode_reconstructs_real_digits(autoencoder):
    x = mnist(train=False).images[:200]  # (200, 1, 28, 28)
    x_hat = decode_latent(autoencoder, encode_latent(autoencoder, x))
    assert (x_hat - x).square().mean().item() < RECON_MSE_TOL


@pytest.mark.skipif(not mnist_available(), reason="MNIST files not found offline")
def test_training_latents_have_unit_std_after_scaling(monkeypatch):
    # The dataset's code path on the first 2,000 training digits. The factor is 1 / std over all
    # 60,000; on these 2,000 the std is 1.003 (a subset's std scatters by about 1 %), far inside
    # 0.05, while the factor applied twice (std 1.15) or inverted (0.75) is far outside.
    ds = mnist(train=True)
    monkeypatch.setattr(build, "mnist_train", lambda: (ds.images[:2000], ds.labels[:2000].long()))
    z, y = build.mnist_latent_train.__wrapped__(build.latent_scale(TrainConfig("mnist-latent")))
    assert z.shape == (2000, 4, 7, 7) and y.shape == (2000,)
    assert z.std().item() == pytest.approx(1.0, abs=0.05)


# --- The latent U-Net and the samplers on latents ----------------------------------------------


def test_latent_preset_maps_latents_to_latents():
    net = UNet(dataclasses.replace(PRESETS["latent"], num_classes=10))
    assert net.num_parameters() < 1.1e6  # the budget: about 1 M
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        out = net(x, torch.tensor([1, 1000]), torch.tensor([3, 10]))  # 10: the null class
    assert out.shape == (2, 4, 7, 7)


def test_two_resolutions_do_not_fit_a_7x7_latent():
    # Why the preset has one resolution: 7 -> 4 -> 8 would not line up with the skips.
    with pytest.raises(ValueError, match="image_size must be divisible"):
        UNetConfig(in_channels=4, image_size=7, channel_mults=(1, 2))


def tiny_latent_unet() -> UNet:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        PRESETS["latent"], base_channels=8, groups=4, num_heads=2, num_res_blocks=1
    )
    return UNet(dataclasses.replace(cfg, num_classes=10, T=50)).eval()


@pytest.mark.parametrize("sampler", [ddim_sample, dpm_solver_sample])
def test_eps_samplers_run_on_latents_with_guidance(sampler):
    net, schedule = tiny_latent_unet(), linear_schedule(50)
    y = torch.arange(6) % 10
    x_T = torch.randn(6, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_0 = sampler(classifier_free_guidance(net, y, 3.0), schedule, x_T, steps=5, progress=False)
    assert x_0.shape == (6, 4, 7, 7) and torch.isfinite(x_0).all()


def test_sample_grid_of_a_latent_model_is_decoded(tmp_path, autoencoder):
    cfg = TrainConfig(dataset="mnist-latent", conditional=True, T=50, out_dir=str(tmp_path))
    path = outputs.save_sample_grid(
        tiny_latent_unet(), linear_schedule(50), tmp_path / "g.png", cfg, n=4
    )
    from PIL import Image

    width, height = Image.open(path).size
    assert (width, height) == (4 * 28 + 5 * 2, 28 + 2 * 2)  # decoded 28x28 digits, padding 2


# --- The command line on --dataset mnist-latent ------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_latent_scale_must_be_finite_and_positive(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--dataset", "mnist-latent", "--latent-scale", value])
    assert exit_.value.code == 2
    assert "--latent-scale" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--dataset", "mnist", "--latent-scale", "1.0"], "--latent-scale applies to --dataset"),
        (["--dataset", "mnist-latent", "--model", "mnist"], "use --model latent"),
    ],
)
def test_latent_options_are_refused_where_they_do_not_fit(argv, match, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert match in capsys.readouterr().err


@pytest.fixture
def fake_latent_mnist(monkeypatch):
    """64 random 28x28 'digits' through the real mnist-latent path (the shipped encoder), uncached."""
    labels = torch.arange(64) % 10
    monkeypatch.setattr(build, "mnist_train", lambda: (images(64), labels))
    monkeypatch.setattr(build, "mnist_latent_train", build.mnist_latent_train.__wrapped__)


@pytest.mark.parametrize("scale", [None, 0.5])
def test_two_cli_steps_on_mnist_latent_export_a_latent_card(tmp_path, fake_latent_mnist, scale):
    export = tmp_path / "latent.safetensors"
    argv = ["--dataset", "mnist-latent", "--conditional", "--steps", "2", "--batch-size", "8"]
    argv += ["--T", "50", "--sample-every", "0", "--checkpoint-every", "0", "--log-every", "1"]
    argv += ["--out", str(tmp_path / "run"), "--export", str(export), "--no-progress"]
    argv += ["--device", "cpu"] + ([] if scale is None else ["--latent-scale", str(scale)])
    cli.main(argv)
    model, schedule = pretrained.load_file(export)
    assert model.config.in_channels == 4 and model.config.image_size == 7
    assert model.config.num_classes == 10 and schedule.T == 50
    card = pretrained.card_file(export)
    factor = pretrained.load("mnist-autoencoder").config.scaling_factor
    assert card["dataset"] == "mnist-latent"
    assert card["latent"]["autoencoder_sha256"] == pretrained.REGISTRY["mnist-autoencoder"].sha256
    assert card["latent"]["scaling_factor"] == (factor if scale is None else scale)
    assert card["train_config"]["latent_scale"] == scale
    # The data the run trained on are the encoder means times that factor.
    x, _ = build.load_dataset(TrainConfig("mnist-latent", latent_scale=scale))
    want = encode_latent(pretrained.load("mnist-autoencoder"), images(64), scaling_factor=scale)
    assert torch.equal(x, want)

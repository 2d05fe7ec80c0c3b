"""The latent-diffusion autoencoder: shapes, output range, the KL closed form, the reparameterised
sample, the config and file round trips, bad input.

Each test names the bug it was seen to catch (injected in a scratch edit, watched red, reverted).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffusion_tutorial.networks.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    kl_to_standard_normal,
    sample_latent,
)
from diffusion_tutorial.training.autoencoder import (
    autoencoder_loss,
    load_autoencoder,
    save_autoencoder,
    train,
)

SMALL = AutoencoderConfig(base_channels=8, groups=4)  # ~25 k parameters: fast on 1 thread


def _model(cfg: AutoencoderConfig = SMALL) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(cfg).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1  # (n, 1, 28, 28) in [-1, 1]


# Caught: a stride-1 second downsampling (latent 14x14 instead of 7x7).
@pytest.mark.parametrize("B", [1, 3])
def test_encode_decode_shapes(B):
    model = _model()
    mean, logvar = model.encode(_images(B))
    assert mean.shape == logvar.shape == (B, 4, 7, 7) == (B, *SMALL.latent_shape)
    assert model.decode(mean).shape == (B, 1, 28, 28)
    assert model(_images(B)).shape == (B, 1, 28, 28)


# Caught: the final tanh removed (outputs reach ~+-40 for latents of scale 100).
def test_decode_lies_in_the_data_range_for_any_latent():
    model = _model()
    g = torch.Generator().manual_seed(1)
    z = 100 * torch.randn(4, 4, 7, 7, generator=g)  # far outside what the encoder produces
    x_hat = model.decode(z)
    assert x_hat.min() >= -1 and x_hat.max() <= 1


# Caught: "- 1" dropped from the KL, exp(logvar / 2) in place of exp(logvar), a mean over the
# latent instead of a sum. Tolerance 1e-4 relative: float32 rounding of a sum of ~200 terms.
def test_kl_equals_the_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(3, 4, 7, 7, generator=g), torch.randn(3, 4, 7, 7, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)  # (3,)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected, rtol=1e-4, atol=1e-5)


# The same KL as a Monte Carlo average of log q(z) - log p(z) over z ~ q (an oracle that does
# not share the closed form). Caught: the same bugs. Tolerance 5 standard errors of the average.
def test_kl_matches_monte_carlo():
    mean, logvar = torch.tensor([[0.7, -1.2]]), torch.tensor([[-0.5, 0.8]])
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    gen = torch.Generator().manual_seed(3)
    z = sample_latent(mean.expand(200_000, 2), logvar.expand(200_000, 2), generator=gen)  # (N, 2)
    log_ratio = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1)  # (N,)
    se = log_ratio.std() / len(log_ratio) ** 0.5
    assert abs(log_ratio.mean() - kl_to_standard_normal(mean, logvar)[0]) < 5 * se


# Caught: exp(logvar) (the variance) used as the standard deviation.
# Tolerance: 5 standard errors of a mean (sigma / sqrt(N)) and of a variance (sigma^2 sqrt(2/N)).
def test_reparameterised_sample_has_the_encoder_mean_and_variance():
    N = 100_000
    mean, logvar = torch.tensor([0.3, -2.0, 1.5]), torch.tensor([-1.0, 0.0, 1.2])
    z = sample_latent(
        mean.expand(N, 3), logvar.expand(N, 3), generator=torch.Generator().manual_seed(4)
    )
    var = logvar.exp()
    assert ((z.mean(0) - mean).abs() < 5 * (var / N).sqrt()).all()
    assert ((z.var(0) - var).abs() < 5 * var * (2 / N) ** 0.5).all()


def test_config_round_trips_through_json():
    cfg = AutoencoderConfig(base_channels=16, latent_channels=3, kl_weight=0.0)
    assert AutoencoderConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


# Caught: the loader building the default config instead of the file's (a shape mismatch).
def test_file_round_trip_gives_the_same_network(tmp_path):
    model = _model()
    path = save_autoencoder(tmp_path / "ae.safetensors", model, train_command="test")
    loaded, meta = load_autoencoder(path)
    assert loaded.config == model.config and meta["train_command"] == "test"
    x = _images(2)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# Caught: the KL term left out of the loss, or beta applied to the reconstruction.
def test_loss_is_reconstruction_plus_beta_kl():
    model = _model(dataclasses.replace(SMALL, kl_weight=0.5))
    loss, rec, kl = autoencoder_loss(model, _images(4), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, rec + 0.5 * kl)
    assert kl > 0 and rec > 0


# Caught: a deterministic autoencoder (kl_weight = 0) that still samples (two losses differ).
def test_deterministic_autoencoder_does_not_sample():
    model = _model(dataclasses.replace(SMALL, kl_weight=0.0))
    x = _images(4)
    first = autoencoder_loss(model, x, generator=torch.Generator().manual_seed(6))[1]
    second = autoencoder_loss(model, x, generator=torch.Generator().manual_seed(7))[1]
    assert first == second


# Caught: optimizer.step() removed (the loss stays where it started).
def test_a_few_steps_reduce_the_reconstruction_error():
    model = _model()
    # Smooth images (7x7 noise upsampled), which a 4x7x7 latent can hold; iid pixel noise cannot.
    x = torch.nn.functional.interpolate(_images(8)[:, :, :7, :7], size=28, mode="bilinear")
    before = (model(x) - x).square().mean()
    train(
        model,
        x,
        steps=30,
        batch_size=8,
        lr=3e-3,
        generator=torch.Generator().manual_seed(8),
        progress=False,
    )
    with torch.no_grad():
        assert (model(x) - x).square().mean() < 0.8 * before


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda m: m.encode(torch.zeros(2, 28, 28)),
            ValueError,
            r"x must have shape \(B, 1, 28, 28\)",
        ),
        (
            lambda m: m.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)),
            TypeError,
            "x must be a floating",
        ),
        (
            lambda m: m.encode(torch.full((2, 1, 28, 28), 255.0)),
            ValueError,
            r"x must hold images in \[-1, 1\]",
        ),
        (
            lambda m: m.decode(torch.zeros(2, 4, 8, 8)),
            ValueError,
            r"z must have shape \(B, 4, 7, 7\)",
        ),
        (
            lambda m: m.decode(torch.full((1, 4, 7, 7), float("nan"))),
            ValueError,
            "z must be finite",
        ),
        (lambda m: AutoencoderConfig(kl_weight=-1e-3), ValueError, "kl_weight must be in"),
        (
            lambda m: AutoencoderConfig(image_size=30),
            ValueError,
            "image_size must be divisible by 4",
        ),
        (lambda m: AutoencoderConfig(base_channels=12, groups=8), ValueError, "groups must divide"),
        (
            lambda m: AutoencoderConfig(latent_channels=2.5),
            TypeError,
            "latent_channels must be an int",
        ),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call(_model())

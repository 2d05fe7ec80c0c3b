"""Tests for classifier-free guidance: limits w = 0 and 1, the formula, one batched forward pass."""

from __future__ import annotations

import pytest
import torch

from diffusion_tutorial.networks.guidance import classifier_free_guidance
from diffusion_tutorial.networks.unet import UNet, UNetConfig

from .conftest import tiny_unet_config

# Guidance is plumbing around the network: an 8x8 U-Net with 8 channels tests it as well as 28x28.
CFG = tiny_unet_config(num_classes=10)


@pytest.fixture
def model(generator) -> UNet:
    m = UNet(CFG)
    with torch.no_grad():  # random weights: the zero-initialised output would make eps_hat = 0
        for p in m.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return m.eval()


@pytest.fixture
def inputs(generator):
    return torch.randn(3, 1, 8, 8, generator=generator), torch.tensor([5, 500, 900])


# Tolerance 1e-5: the batched (2B) pass may sum convolutions in another order than two B passes.
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.5])
def test_guidance_formula(model, inputs, w):
    x_t, t = inputs
    y = torch.tensor([1, 2, 3])
    eps_cond = model(x_t, t, y)
    eps_uncond = model(x_t, t, torch.full_like(y, 10))
    got = classifier_free_guidance(model, y, w)(x_t, t)
    torch.testing.assert_close(got, eps_uncond + w * (eps_cond - eps_uncond), **TOL)


def test_scale_one_is_the_conditional_model_and_zero_the_null(model, inputs):
    x_t, t = inputs
    y = torch.tensor([4, 4, 0])
    torch.testing.assert_close(
        classifier_free_guidance(model, y, 1.0)(x_t, t), model(x_t, t, y), **TOL
    )
    torch.testing.assert_close(
        classifier_free_guidance(model, y, 0.0)(x_t, t), model(x_t, t), **TOL
    )


def test_one_batched_forward_pass(model, inputs):
    x_t, t = inputs
    batches = []
    model.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    classifier_free_guidance(model, torch.tensor([1, 2, 3]), 2.0)(x_t, t)
    assert batches == [6]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="conditional model"):
        classifier_free_guidance(
            UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1,), groups=4)),
            torch.tensor([0]),
            2.0,
        )
    with pytest.raises(ValueError, match="0..9"):
        classifier_free_guidance(model, torch.tensor([10]), 2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        classifier_free_guidance(model, torch.tensor([1]), -1.0)
    guided = classifier_free_guidance(model, torch.tensor([1, 2]), 2.0)
    with pytest.raises(ValueError, match="batch"):
        guided(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    ("y", "error", "match"),
    [
        (None, TypeError, "y must be an integer tensor"),  # was "Could not infer dtype"
        (torch.tensor([True, False]), TypeError, "bool"),
        (torch.tensor([1.0, 2.0]), TypeError, "float"),
        (torch.tensor([[1, 2]]), ValueError, "shape"),
        (torch.tensor([-1, 2]), ValueError, "0..9"),
    ],
)
def test_bad_labels_raise_a_clear_error(model, y, error, match):
    with pytest.raises(error, match=match):
        classifier_free_guidance(model, y, 2.0)


def test_scalar_time_is_broadcast_to_both_halves(model, inputs):
    x_t, _ = inputs
    y = torch.tensor([1, 2, 3])
    guided = classifier_free_guidance(model, y, 2.0)
    torch.testing.assert_close(guided(x_t, 40), guided(x_t, torch.full((3,), 40)), **TOL)

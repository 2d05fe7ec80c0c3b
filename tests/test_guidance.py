"""Tests for guidance: classifier-free (limits, formula, one batched pass, the two conventions and
diffusers' guider as an oracle) and classifier guidance (exact two-Gaussian oracle, x0_hat chain rule)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.networks.guidance import (
    classifier_free_guidance,
    classifier_guidance,
    guidance_scale_from_weight,
    guidance_weight_from_scale,
    x0_hat_classifier,
)
from diffusion_tutorial.networks.unet import UNet, UNetConfig
from diffusion_tutorial.samplers import ddim_sample

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


# ----------------------------------------------------------------- conventions and the diffusers guider


@pytest.mark.parametrize("w", [-1.0, 0.0, 0.5, 3.0])
def test_scale_weight_mapping_round_trip(w):
    s = guidance_scale_from_weight(w)
    assert s == 1.0 + w
    assert guidance_weight_from_scale(s) == w


def test_scale_weight_mapping_rejects_out_of_range():
    with pytest.raises(ValueError, match="w must be in"):
        guidance_scale_from_weight(-1.5)  # s = -0.5 would extrapolate past the unconditional model
    with pytest.raises(ValueError, match="guidance_scale must be in"):
        guidance_weight_from_scale(-0.1)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 6.5])
def test_ho_salimans_weight_is_scale_minus_one(model, inputs, w):
    """(1 + w) eps_cond - w eps_uncond (Ho & Salimans eq. 6) == the wrapper at s = 1 + w."""
    x_t, t = inputs
    y = torch.tensor([7, 0, 3])
    eps_cond, eps_uncond = model(x_t, t, y), model(x_t, t, torch.full_like(y, 10))
    ho = (1 + w) * eps_cond - w * eps_uncond
    got = classifier_free_guidance(model, y, guidance_scale_from_weight(w))(x_t, t)
    torch.testing.assert_close(got, ho, **TOL)
    # power: the mix-up "guidance_scale = w" is off by exactly eps_cond - eps_uncond, which must
    # exceed the tolerance for this test to catch it
    assert (eps_cond - eps_uncond).abs().max() > 10 * TOL["atol"]


class _TwoAnswers(nn.Module):
    """A conditional "model" that returns fixed eps_cond for real labels and eps_uncond for the
    null label 10, whatever x_t and t: the guider's inputs, run through classifier_free_guidance."""

    def __init__(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> None:
        super().__init__()
        self.config = tiny_unet_config(num_classes=10)
        self.answers = torch.stack([eps_cond, eps_uncond])  # (2, B, ...)

    def forward(self, x_t, t, y):
        B = self.answers.shape[1]
        row = torch.arange(len(y)) % B  # classifier_free_guidance batches [x_t; x_t] as 2B
        return self.answers[(y == 10).long(), row]


@pytest.mark.parametrize("w", [0.5, 2.0, 7.0])
def test_both_conventions_against_the_diffusers_guider(w):
    """diffusers' ClassifierFreeGuidance: guidance_scale = s by default, = w with the paper's
    formula; both equal the package's classifier_free_guidance at s = 1 + w on the same
    eps_cond and eps_uncond."""
    guiders = pytest.importorskip("diffusers.guiders")
    g = torch.Generator().manual_seed(1)
    eps_cond, eps_uncond = torch.randn(2, 4, 1, 8, 8, generator=g)
    guided = classifier_free_guidance(
        _TwoAnswers(eps_cond, eps_uncond), torch.tensor([1, 2, 3, 4]), guidance_scale_from_weight(w)
    )
    ours = guided(torch.zeros(4, 1, 8, 8), torch.full((4,), 500))
    native = guiders.ClassifierFreeGuidance(guidance_scale=1 + w)
    original = guiders.ClassifierFreeGuidance(guidance_scale=w, use_original_formulation=True)
    # float32 inputs; the two forms round differently: a few ulps of values of size ~10
    torch.testing.assert_close(
        native.forward(eps_cond, eps_uncond).pred, ours, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        original.forward(eps_cond, eps_uncond).pred, ours, atol=1e-5, rtol=1e-5
    )


# ------------------------------------------------------------------------- classifier guidance

SCHED = linear_schedule()
MEANS = torch.tensor([[-1.5, 0.0], [1.0, 0.5]], dtype=torch.float64)  # two classes in 2-D
VAR0 = 0.3**2  # each class N(mean_y, VAR0 I)
PRIOR = torch.tensor([0.3, 0.7], dtype=torch.float64)


def _class_terms(x_t, t):
    """Per class: a_t mean_y and the variance m_t^2 = a_t^2 VAR0 + sigma_t^2 of q(x_t | y)."""
    a = SCHED.sqrt_alpha_bar[t].double()[:, None, None]  # (B, 1, 1)
    m2 = a**2 * VAR0 + 1 - a**2  # (B, 1, 1)
    return a * MEANS, m2  # (B, 2, 2), (B, 1, 1)


def exact_classifier(x_t, t):
    """log p(y | x_t) + const: the exact noise-aware classifier of the two-Gaussian data."""
    centre, m2 = _class_terms(x_t, t)
    log_lik = -((x_t[:, None, :] - centre) ** 2).sum(-1) / (2 * m2[:, :, 0])  # (B, 2)
    return log_lik + PRIOR.log()


def exact_eps(x_t, t, y=None):
    """E[eps | x_t (, y)] = sigma_t sum_y p(y | x_t) (x_t - a_t mean_y) / m_t^2 (one class if y given)."""
    centre, m2 = _class_terms(x_t, t)
    eps_y = SCHED.sigma[t].double()[:, None, None] * (x_t[:, None, :] - centre) / m2  # (B, 2, 2)
    if y is not None:
        return eps_y[torch.arange(len(y)), y]
    resp = exact_classifier(x_t, t).softmax(1)  # (B, 2)
    return (resp[:, :, None] * eps_y).sum(1)


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_exact_classifier_guidance_equals_exact_classifier_free_guidance(generator, s):
    """grad log p(y | x_t) = grad log p(x_t | y) - grad log p(x_t): both guidances agree at equal s.

    float64 closed forms throughout, so 1e-10. At s = 1 both are the exact conditional eps; a
    missing sigma_t, a wrong sign or w in place of s would be off by O(1).
    """
    x_t = 2 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(1, SCHED.T + 1, (64,), generator=generator)
    y = torch.randint(0, 2, (64,), generator=generator)
    got = classifier_guidance(exact_eps, exact_classifier, y, s, SCHED)(x_t, t)
    eps_c, eps_u = exact_eps(x_t, t, y), exact_eps(x_t, t)
    torch.testing.assert_close(got, eps_u + s * (eps_c - eps_u), atol=1e-10, rtol=1e-10)


def test_x0_hat_classifier_differentiates_through_the_denoiser(generator):
    """For Gaussian data x0_hat = mean + a std^2 (x - a mean) / m^2 is linear in x_t, so
    grad_x log p(y | x0_hat(x_t)) = (a std^2 / m^2) grad_x0 log p(y | x0) at x0_hat (chain rule).
    Detaching the model (a common shortcut) drops the factor a std^2 / m^2 and fails here."""
    data = GaussianData(torch.tensor([0.2, -0.4]), torch.tensor([0.5, 0.8]))

    def model(x_t, t):  # data.eps_hat written out differentiably (GaussianData detaches its input)
        a = SCHED.sqrt_alpha_bar[t].double()[:, None]
        return (
            SCHED.sigma[t].double()[:, None]
            * (x_t - a * data.mean)
            / (a**2 * data.std**2 + 1 - a**2)
        )

    W = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.0]], dtype=torch.float64)  # (K=3, 2)
    clean = lambda x0: x0 @ W.T  # noqa: E731  linear logits (B, 3)
    x_t = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(50, 900, (16,), generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    s = 2.0
    got = classifier_guidance(model, x0_hat_classifier(model, clean, SCHED), y, s, SCHED)(x_t, t)
    x0_hat = data.x0_hat(x_t, t, SCHED)
    p = clean(x0_hat).softmax(1)  # (B, 3)
    grad_x0 = W[y] - p @ W  # grad of log_softmax(W x0)[y]  (B, 2)
    a = SCHED.sqrt_alpha_bar[t].double()[:, None]
    m2 = a**2 * data.std**2 + 1 - a**2
    grad_xt = a * data.std**2 / m2 * grad_x0
    torch.testing.assert_close(model(x_t, t), data.eps_hat(x_t, t, SCHED))
    expected = model(x_t, t) - s * SCHED.sigma[t].double()[:, None] * grad_xt
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_classifier_guidance_runs_inside_the_samplers(generator, mode):
    """The samplers run without autograd; the gradient must be taken anyway, and the guided
    DDIM endpoint must move towards the requested class."""
    x_T = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    y = torch.zeros(200, dtype=torch.int64)  # class 0 (prior 0.3)
    guided = classifier_guidance(exact_eps, exact_classifier, y, 3.0, SCHED)
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        x_0 = ddim_sample(guided, SCHED, x_T, steps=20, progress=False)
        x_u = ddim_sample(exact_eps, SCHED, x_T, steps=20, progress=False)
    near_0 = lambda x: ((x - MEANS[0]).norm(dim=1) < 1.0).float().mean()  # noqa: E731
    assert torch.isfinite(x_0).all()
    assert near_0(x_0) > 0.95 and near_0(x_u) < 0.5  # unguided: about the prior 0.3


def test_classifier_guidance_bad_arguments():
    with pytest.raises(ValueError, match="guidance_scale"):
        classifier_guidance(exact_eps, exact_classifier, torch.tensor([0]), -1.0, SCHED)
    with pytest.raises(TypeError, match="integer tensor"):
        classifier_guidance(exact_eps, exact_classifier, torch.tensor([0.0]), 1.0, SCHED)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        classifier_guidance(exact_eps, exact_classifier, torch.tensor([0]), 1.0, None)
    x_t = torch.zeros(2, 2, dtype=torch.float64)
    t = torch.tensor([10, 10])
    with pytest.raises(ValueError, match="0..1"):  # label 2 of a two-class classifier
        classifier_guidance(exact_eps, exact_classifier, torch.tensor([0, 2]), 1.0, SCHED)(x_t, t)
    with pytest.raises(ValueError, match="batch"):
        classifier_guidance(exact_eps, exact_classifier, torch.tensor([0]), 1.0, SCHED)(x_t, t)
    with pytest.raises(ValueError, match="logits"):
        flat = lambda x, t: x.sum(1)  # noqa: E731  (B,), not (B, K)
        classifier_guidance(exact_eps, flat, torch.tensor([0, 1]), 1.0, SCHED)(x_t, t)
    clf = nn.Linear(2, 3).train()
    with pytest.raises(ValueError, match="eval"):
        x0_hat_classifier(exact_eps, clf, SCHED)


# ------------------------------------------------------ reliability II (issue 23): guidance


@pytest.mark.parametrize(
    "classifier",
    [
        lambda x, t: torch.zeros(x.shape[0], 2, dtype=x.dtype),  # constant logits
        lambda x, t: exact_classifier(x, t).detach(),  # the graph cut by .detach()
    ],
)
def test_classifier_guidance_with_logits_that_ignore_x_t_is_a_clear_error(classifier):
    # autograd's "element 0 of tensors does not require grad" before.
    guided = classifier_guidance(exact_eps, classifier, torch.tensor([0, 1]), 1.0, SCHED)
    x_t = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="classifier.*do not depend on x_t.*detach"):
        guided(x_t, torch.tensor([10, 10]))


@pytest.mark.parametrize(
    ("x_t", "t", "match"),
    [
        (torch.zeros(3, 1, 8, 8), torch.tensor([1, 2]), r"t must have shape \(3,\).*got \(2,\)"),
        (torch.zeros(3, 1, 8, 8), torch.tensor([[1, 2, 3]]), r"t must have shape \(3,\)"),
        (torch.zeros(3, 1, 9, 9), torch.tensor([1, 2, 3]), r"x_t of shape \(3, 1, 9, 9\).*2B = 6"),
    ],
)
def test_classifier_free_guidance_reports_the_callers_batch(model, x_t, t, match):
    # The doubled internal batch (6,) was reported before, a shape the caller never passed.
    guided = classifier_free_guidance(model, torch.tensor([1, 2, 3]), 2.0)
    with pytest.raises(ValueError, match=match):
        guided(x_t, t)


def test_classifier_free_guidance_checks_the_models_output_shape(model):
    class Cropping(nn.Module):
        config = model.config

        def forward(self, x, t, y):
            return x[:, :, :4]  # a wrong shape, per half

    guided = classifier_free_guidance(Cropping(), torch.tensor([1, 2, 3]), 2.0)
    with pytest.raises(ValueError, match=r"shaped like x_t, \(3, 1, 8, 8\).*\(3, 1, 4, 8\)"):
        guided(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 3]))

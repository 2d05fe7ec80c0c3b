"""Reliability of the core, the networks and the metrics (issue 14): no silent NaN, clear errors,
networks that run in the dtype they are cast to, an import that writes nothing to $HOME.

Each test failed on the code before the fix; the error it expects names the argument.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from diffusion_tutorial.checks import check_labels
from diffusion_tutorial.core.forward import q_sample
from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.losses import decoder_nll, simple_loss, vlb_term
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.evaluation import metrics
from diffusion_tutorial.evaluation.classifier import MNISTClassifier
from diffusion_tutorial.networks.embedding import sinusoidal_embedding
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.networks.unet import UNet
from diffusion_tutorial.samplers import ddim_sample, dpm_solver_sample

from .conftest import tiny_unet_config

SCHED = linear_schedule(50, 1e-3, 0.2)
SMALL_UNET = tiny_unet_config(num_classes=3)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def zero_model(x_t, t):
    return torch.zeros_like(x_t)


def randomise(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """N(0, 0.05^2) weights: the zero-initialised output layers would make every output 0."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


# ------------------------------------------------------- 3. networks run in the dtype they are cast to


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unet_runs_in_the_dtype_it_is_cast_to(dtype, generator):
    # All four dtypes run on the CPU with torch 2.x (float16 convolutions and GroupNorm included).
    model = randomise(UNet(SMALL_UNET), generator)
    x_t = torch.randn(2, 1, 8, 8, generator=generator)
    t, y = torch.tensor([3, 40]), torch.tensor([0, 3])
    ref = model.double()(x_t.double(), t, y)
    out = model.to(dtype)(x_t.to(dtype), t, y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Agreement with float64 up to the dtype's rounding (bfloat16 keeps 8 bits: 2^-8 ~ 0.004 per
    # operation; 0.05 absolute covers ~10 layers of it on outputs of size ~0.3).
    atol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 0.05)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_runs_in_the_dtype_it_is_cast_to(dtype, generator):
    model = randomise(MLPDenoiser(MLPConfig(hidden=16, num_blocks=2, num_classes=2)), generator)
    x_t = torch.randn(4, 2, generator=generator)
    t, y = torch.tensor([1, 5, 50, 1000]), torch.tensor([0, 1, 2, 1])
    ref = model.double()(x_t.double(), t, y)
    out = model.to(dtype)(x_t.to(dtype), t, y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    atol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 0.05)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)


def test_float32_embedding_is_bit_identical_to_the_float32_formula():
    # The shipped float32 checkpoints were trained with this exact float32 computation.
    t = torch.arange(1, 1001)
    k = torch.arange(32, dtype=torch.float32)
    angles = t.float()[:, None] * torch.exp(-math.log(10_000.0) * k / 32)[None, :]
    expected = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    assert torch.equal(sinusoidal_embedding(t, 64), expected)
    assert sinusoidal_embedding(t, 64, dtype=torch.float64).dtype == torch.float64


def test_autocast_still_runs_a_float32_unet(generator):
    model = randomise(UNet(SMALL_UNET), generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 8, 8, generator=generator), torch.tensor([1, 2]))
    assert torch.isfinite(out).all()


def test_input_dtype_other_than_the_weights_is_a_clear_type_error():
    with pytest.raises(TypeError, match="x_t has dtype torch.float64"):
        UNet(SMALL_UNET)(torch.zeros(1, 1, 8, 8, dtype=torch.float64), torch.tensor([1]))
    with pytest.raises(TypeError, match="x_t has dtype torch.float16"):
        MLPDenoiser(MLPConfig(hidden=8))(torch.zeros(1, 2, dtype=torch.float16), 1)


# ----------------------------------------------------------- 6. NaN and inf never travel silently


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_simple_loss_refuses_non_finite_x0(bad):
    x_0 = torch.zeros(4, 3)
    x_0[1, 2] = bad
    with pytest.raises(ValueError, match="x_0 must be finite"):
        simple_loss(zero_model, x_0, SCHED)


def test_simple_loss_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="B >= 1"):
        simple_loss(zero_model, torch.zeros(0, 3), SCHED)


def test_q_sample_refuses_non_finite_x0_and_eps():
    x_0 = torch.tensor([[0.0, math.nan]])
    with pytest.raises(ValueError, match="x_0 must be finite"):
        q_sample(x_0, 3, SCHED)
    with pytest.raises(ValueError, match="eps must be finite"):
        q_sample(torch.zeros(1, 2), 3, SCHED, eps=torch.tensor([[math.inf, 0.0]]))


def test_decoder_nll_refuses_nan_pixels():
    # NaN < -1 and NaN > 1 are both False: a plain range check let NaN through to a NaN loss.
    with pytest.raises(ValueError, match="x_0 must be finite"):
        decoder_nll(zero_model, torch.tensor([[0.0, math.nan]]), SCHED)


def nan_at_t(bad_t: int):
    """A model whose output is NaN for the examples at time ``bad_t`` and 0 elsewhere."""

    def model(x_t, t):
        out = torch.zeros_like(x_t)
        out[t == bad_t] = math.nan
        return out

    return model


def test_losses_name_the_step_where_the_model_returned_nan():
    x_0 = torch.zeros(3, 2)
    t = torch.tensor([5, 17, 30])
    with pytest.raises(ValueError, match=r"NaN or inf at t=\[17\]"):
        simple_loss(nan_at_t(17), x_0, SCHED, t=t)
    with pytest.raises(ValueError, match=r"NaN or inf at t=\[30\]"):
        vlb_term(nan_at_t(30), x_0, t, SCHED)
    with pytest.raises(ValueError, match=r"NaN or inf at t=\[1\]"):
        decoder_nll(nan_at_t(1), x_0, SCHED)


# ----------------------------------------------------------------------- 9. clear errors (metrics)


def test_frechet_distance_refuses_a_covariance_that_is_not_psd():
    mu, eye = torch.zeros(3), torch.eye(3)
    with pytest.raises(ValueError, match="cov2 must be positive semi-definite"):
        metrics.gaussian_frechet_distance(mu, eye, mu, -eye)  # was 0.0
    with pytest.raises(ValueError, match="cov1 must be a symmetric"):
        metrics.gaussian_frechet_distance(mu, torch.triu(torch.ones(3, 3)), mu, eye)


def test_frechet_distance_accepts_float32_rounding_of_a_singular_covariance(generator):
    # 10 samples in 64 dimensions: rank 9, so 55 eigenvalues are 0 up to rounding (~ -1e-8 here).
    f = torch.randn(10, 64, generator=generator)
    cov = f.T.cov()  # float32
    assert metrics.gaussian_frechet_distance(f.mean(0), cov, f.mean(0), cov) == pytest.approx(
        0.0, abs=1e-4
    )


@pytest.mark.parametrize("scale", [255.0, 2.0])
def test_mnist_fid_refuses_images_outside_minus_one_one(scale):
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * scale
    with pytest.raises(ValueError, match=r"images .* must lie in \[-1, 1\]"):
        metrics.mnist_fid(images, images.clamp(-1, 1), MNISTClassifier())


@pytest.mark.parametrize(("y", "error"), [([0, 10], ValueError), ([-1, 0], ValueError)])
def test_class_accuracy_refuses_labels_outside_0_to_9(y, error):
    with pytest.raises(error, match="0..9"):
        metrics.class_accuracy(MNISTClassifier(), torch.zeros(2, 1, 28, 28), torch.tensor(y))


# -------------------------------------------------------------------- 9. nothing written to $HOME


def test_import_writes_nothing_to_home_and_skips_matplotlib(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MPL", "TORCH_HOME"))}
    env["HOME"] = str(tmp_path)
    code = (
        "import sys, diffusion_tutorial as dt; "
        "dt.linear_schedule(10, 0.01, 0.2); dt.UNet; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == [], f"import wrote to $HOME: {written}"


# ------------------------------------------- 5. the longest schedule allowed still samples in float32


def test_float32_samplers_stay_finite_at_the_alpha_bar_bound():
    # linear_schedule(20000) gave NaN samples; the longest allowed T (alpha_bar_T just above
    # float32's tiny) must give finite ones with the exact Gaussian denoiser.
    with pytest.raises(ValueError, match=r"T must be in 1\.\.(\d+)") as info:
        linear_schedule(20000)
    t_max = int(str(info.value).split("1..")[1].split(" ")[0])
    schedule = linear_schedule(t_max)
    model = GaussianData(torch.zeros(4), torch.full((4,), 0.5)).model(schedule)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))  # float32
    for sample in (ddim_sample, dpm_solver_sample):
        x_0 = sample(model, schedule, x_T, steps=20, progress=False)
        assert x_0.dtype == torch.float32 and torch.isfinite(x_0).all(), sample.__name__


@pytest.mark.parametrize(
    ("y", "error"),
    [(None, TypeError), (3, TypeError), ([True, False], TypeError), ([0.0, 1.0], TypeError)]
    + [([[1, 2]], ValueError), ([0, 10], ValueError), ([-1, 0], ValueError)],
)
def test_check_labels_refuses_what_is_not_a_label(y, error):
    with pytest.raises(error, match="y must"):
        check_labels("y", y if y is None or isinstance(y, int) else torch.tensor(y), None, 9)


def test_check_labels_accepts_lists_and_numpy_arrays():
    np = pytest.importorskip("numpy")
    for y in ([1, 9], np.array([1, 9]), torch.tensor([1, 9], dtype=torch.int32)):
        assert check_labels("y", y, 2, 9).tolist() == [1, 9]

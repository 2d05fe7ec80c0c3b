"""Tests for samplers.predictor_corrector against exact answers (no golden numbers).

The oracle is ``GaussianData``: for Gaussian data the optimal eps-predictor is exact, so the score
-eps_hat / sigma_t is the true score of q(x_t), q(x_t) is known in closed form, and every error is
the sampler's. Each test names the bug it was seen to catch (injected in a scratch copy).
"""

import math

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.samplers import ddim_sample, leading_timesteps, uniform_timesteps
from diffusion_tutorial.samplers.predictor_corrector import (
    langevin_corrector_step,
    predictor_corrector_sample,
)

SCHED = linear_schedule()
D = 16
MEAN = torch.linspace(-0.8, 0.8, D, dtype=torch.float64)
STD = 0.5  # isotropic: one Langevin step size suits every coordinate (see the corrector test)
DATA = GaussianData(MEAN, torch.full((D,), STD, dtype=torch.float64))
MODEL = DATA.model(SCHED)


def noise(n, seed=0, d=D):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


# Catches: the corrector drawing noise (or calling the model) when corrector_steps = 0, a
# predictor other than DDPM's posterior step (eta = 0, or the noise drawn before predict).
@pytest.mark.parametrize("grid", [leading_timesteps, uniform_timesteps])
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_no_corrector_is_the_ancestral_sampler(grid, steps):
    x_T = noise(64)
    pc = predictor_corrector_sample(
        MODEL, SCHED, x_T, steps=steps, corrector_steps=0, timesteps=grid, generator=gen(),
        progress=False,
    )  # fmt: skip
    ddim = ddim_sample(
        MODEL, SCHED, x_T, steps=steps, eta=1.0, timesteps=grid, generator=gen(), progress=False
    )
    assert torch.equal(pc, ddim)


# Catches: an NFE other than steps x (1 + corrector_steps) (a corrector that reuses the
# predictor's call, or one more corrector at t = 0), and callbacks at the wrong times.
@pytest.mark.parametrize("corrector_steps", [0, 1, 3])
def test_nfe_is_steps_times_one_plus_corrector_steps(corrector_steps):
    seen = []
    steps = 5
    predictor_corrector_sample(
        MODEL, SCHED, noise(8), steps=steps, corrector_steps=corrector_steps,
        callback=lambda i, t, x_t, x0_hat: seen.append((i, t)), progress=False,
    )  # fmt: skip
    ts = leading_timesteps(SCHED, steps).tolist()[:-1]
    assert [i for i, _ in seen] == list(range(steps * (1 + corrector_steps)))
    assert [t for _, t in seen] == [t for t in ts for _ in range(1 + corrector_steps)]


# The corrector alone is a Markov chain whose stationary law is q(x_t) up to its step-size
# bias: started at twice the right standard deviation, 150 steps bring the variance back to
# m_t^2. Unadjusted Langevin on N(mu, m^2) with step e has the stationary variance
# m^2 / (1 - e / (2 m^2)); with the batch-mean norms e ~ 2 alpha_t snr^2 m^2, so the bias is
# ~ +2.6 % at snr = 0.16, and the Monte Carlo error of the pooled variance (2,000 x 16 draws)
# is ~ 0.8 % per SE: the 6 % tolerance covers both. Catches (each seen red): the noise
# sqrt(step) instead of sqrt(2 step), no noise, the score -eps_hat without / sigma_t (t = 50),
# the drift's sign flipped, per-example norms where batch norms were asked for (16-D: +30 %).
@pytest.mark.parametrize("t", [50, 500])
def test_corrector_converges_to_the_marginal(t):
    alpha_bar = SCHED.alpha_bar[t].item()
    a, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    m = math.sqrt(alpha_bar * STD**2 + 1 - alpha_bar)  # std of q(x_t), per coordinate
    x = a * MEAN + 2 * m * noise(2000, seed=3)  # twice too wide
    g = gen(4)
    t_batch = torch.full((x.shape[0],), t)
    for _ in range(150):
        x = langevin_corrector_step(x, MODEL(x, t_batch), sigma, SCHED.alpha[t].item(), 0.16, g)
    ratio = ((x - a * MEAN) ** 2).mean().item() / m**2
    assert abs(ratio - 1) < 0.06, ratio
    assert ((x.mean(0) - a * MEAN) / m).abs().max() < 0.15  # 0.15 ~ 6 SE of a mean of 2,000


# The whole sampler with the exact score reproduces the data's mean and std. 200 predictor
# steps on the uniform grid; tolerances: the mean within 0.05 std (about 2 SE per coordinate
# pooled over 16 coordinates, plus the discretisation), the std within 4 % (Langevin's
# +1.3 % bias on the std, the 200-step predictor's own error and 1.1 % SE). Catches: the
# corrector's score with the wrong sign or scale (-eps_hat), a predictor without noise.
def test_pc_with_the_exact_score_reproduces_mean_and_std():
    x = predictor_corrector_sample(
        MODEL, SCHED, noise(4000, seed=5), steps=200, corrector_steps=1,
        timesteps=uniform_timesteps, generator=gen(6), progress=False,
    )  # fmt: skip
    assert ((x.mean(0) - MEAN) / STD).abs().mean() < 0.05
    assert abs((x - x.mean(0)).pow(2).mean().sqrt().item() / STD - 1) < 0.04


# With batch-mean norms a step depends on the whole batch; with per_example_norms=True an
# example's new state depends only on itself (same generator, same z). Catches norms taken over
# the wrong dimension (dim=0, or over the whole tensor) and a flag that is ignored.
def test_per_example_norms_make_each_step_independent_of_the_batch():
    x = noise(2, seed=9)
    other = x.clone()
    other[1] *= 3.0  # change the second example only
    eps = MODEL(x, torch.full((2,), 300))
    eps_other = MODEL(other, torch.full((2,), 300))
    sigma, alpha = SCHED.sigma[300].item(), SCHED.alpha[300].item()

    def step(x_, eps_, per_example):
        return langevin_corrector_step(
            x_, eps_, sigma, alpha, 0.16, gen(), per_example_norms=per_example
        )

    assert torch.equal(step(x, eps, True)[0], step(other, eps_other, True)[0])
    assert not torch.allclose(step(x, eps, False)[0], step(other, eps_other, False)[0])


# Why batch norms are the default: in 2-D the per-example step explodes near the mode. The
# stationary variance of the corrector on a 2-D Gaussian stays within 6 % of m_t^2 with batch
# norms (as in the 16-D test above) and is several times too large with per-example norms.
def test_batch_norms_keep_the_corrector_stable_in_2d():
    data = GaussianData(torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.5]))
    model, t = data.model(SCHED), 200
    alpha_bar = SCHED.alpha_bar[t].item()
    a, sigma = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    m = math.sqrt(alpha_bar * 0.25 + 1 - alpha_bar)
    ratios = {}
    for per_example in (False, True):
        x = a * data.mean + m * noise(4000, seed=10, d=2)
        g, t_batch = gen(11), torch.full((4000,), t)
        for _ in range(100):
            x = langevin_corrector_step(
                x, model(x, t_batch), sigma, SCHED.alpha[t].item(), 0.16, g,
                per_example_norms=per_example,
            )  # fmt: skip
        ratios[per_example] = ((x - a * data.mean) ** 2).mean().item() / m**2
    assert abs(ratios[False] - 1) < 0.06 and ratios[True] > 2, ratios


def test_same_seed_is_identical_and_dtype_kept():
    x_T = noise(16).float()
    a = predictor_corrector_sample(MODEL, SCHED, x_T, steps=4, generator=gen(), progress=False)
    b = predictor_corrector_sample(MODEL, SCHED, x_T, steps=4, generator=gen(), progress=False)
    assert a.dtype == torch.float32 and torch.equal(a, b)


# Catches a projection hook skipped after the Langevin steps or after the last predictor step.
def test_project_sees_every_new_state():
    seen = []

    def project(s, x_s):
        seen.append(s)
        return x_s

    predictor_corrector_sample(
        MODEL, SCHED, noise(4), steps=3, corrector_steps=2, project=project, progress=False
    )
    ts = leading_timesteps(SCHED, 3).tolist()
    assert seen == [ts[0], ts[0], ts[1], ts[1], ts[1], ts[2], ts[2], ts[2], 0]


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 1001}, ValueError, "steps"),
        ({"steps": 2.0}, TypeError, "steps"),
        ({"steps": 5, "corrector_steps": -1}, ValueError, "corrector_steps"),
        ({"steps": 5, "snr": 0.0}, ValueError, "snr"),
        ({"steps": 5, "snr": -0.1}, ValueError, "snr"),
        ({"steps": 5, "snr": float("nan")}, ValueError, "snr"),
        ({"steps": 5, "project": 3}, TypeError, "project"),
    ],
)
def test_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        predictor_corrector_sample(MODEL, SCHED, noise(2), progress=False, **kwargs)


def test_zero_score_is_a_clear_error():
    def zero_model(x_t, t):
        return torch.zeros_like(x_t)

    with pytest.raises(ValueError, match="nonzero score"):
        predictor_corrector_sample(zero_model, SCHED, noise(2), steps=2, progress=False)

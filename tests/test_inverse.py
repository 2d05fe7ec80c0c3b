"""Tests for diffusion_tutorial.samplers.inverse and .repaint (inpainting, super-resolution).

The model is the exact denoiser of Gaussian "images" (``GaussianData``, shape (1, 8, 8)), so the
tests are fast and every error is the projection's or the sampler's.
"""

import pytest
import torch

from diffusion_tutorial.core.gaussian import GaussianData
from diffusion_tutorial.core.schedules import linear_schedule
from diffusion_tutorial.samplers import (
    check_mask,
    ddim_sample,
    ddpm_sample,
    downsample,
    ilvr_projection,
    low_pass,
    renoise,
    repaint_path,
    repaint_sample,
    replacement_projection,
    upsample,
)

SCHED = linear_schedule()
COARSE = linear_schedule(10, 0.05, 0.4)  # T = 10: alpha_bar_t and alpha_bar_{t-1} far apart
SHAPE = (1, 8, 8)
g = torch.Generator().manual_seed(0)
DATA = GaussianData(
    0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64),
    0.2 + 0.5 * torch.rand(SHAPE, generator=g, dtype=torch.float64),
)
MASK = torch.zeros(1, *SHAPE, dtype=torch.float64)
MASK[..., :4, :] = 1  # top half known, bottom half to fill


def gen(seed):
    return torch.Generator().manual_seed(seed)


def noise(n, seed=1):
    return torch.randn(n, *SHAPE, generator=gen(seed), dtype=torch.float64)


def known_image(n, seed=2):
    return DATA.sample(n, gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------- inpainting
def _inpaint(name, x_known, schedule=SCHED, seed=3):
    model, gn = DATA.model(schedule), gen(seed)
    project = replacement_projection(x_known, MASK, schedule, generator=gn)
    x_T = noise(len(x_known))
    if name == "ddpm":
        return ddpm_sample(model, schedule, x_T, generator=gn, project=project, progress=False)
    if name == "ddim":
        return ddim_sample(model, schedule, x_T, steps=20, project=project, progress=False)
    return repaint_sample(
        model, schedule, x_T, project, steps=20, jump_length=5, resamplings=3, generator=gn,
        progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["ddpm", "ddim", "repaint"])
def test_replacement_reproduces_the_known_pixels_exactly(name):
    """At s = 0, q_sample returns x_known itself (sqrt(alpha_bar_0) = 1, sigma_0 = 0), so the
    known pixels of the result are x_known bit for bit; the unknown ones were generated."""
    x_known = known_image(16)
    out = _inpaint(name, x_known, schedule=COARSE if name == "ddpm" else SCHED)
    known = MASK.bool().expand_as(out)
    assert torch.equal(out[known], x_known[known])
    assert (out[~known] - x_known[~known]).abs().min() > 0  # the hole was filled, not copied


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_known_part_has_the_marginal_of_its_own_time(name):
    """After the projection at time s the known pixels are q(x_s | x_0): mean sqrt(alpha_bar_s)
    x_0 and std sigma_s. The callback sees each state at the time of the next model call. On the
    coarse schedule (DDPM) or the 20-step grid (DDIM) the std at the previous time differs by
    > 5 % from sigma_s, far beyond the 5-SE allowance (n = 4000: SE of a std 1.1 %), so pasting
    pixels noised to t instead of t - 1 (or s) fails."""
    n, x0 = 4000, known_image(1).expand(4000, *SHAPE)
    schedule = COARSE if name == "ddpm" else SCHED
    model, gn, seen = DATA.model(schedule), gen(4), {}
    project = replacement_projection(x0, MASK, schedule, generator=gn)

    def callback(i, t, x_t, x0_hat):
        seen[t] = x_t

    if name == "ddpm":
        ddpm_sample(model, schedule, noise(n), generator=gn, project=project, callback=callback,
                    progress=False)  # fmt: skip
    else:
        ddim_sample(model, schedule, noise(n), steps=20, eta=1.0, generator=gn, project=project,
                    callback=callback, progress=False)  # fmt: skip
    known = MASK[0].bool()
    first = max(seen)  # the start state x_T was not projected
    for t, x_t in seen.items():
        if t == first:
            continue
        ab = schedule.alpha_bar[t]
        z = (x_t[:, known] - ab.sqrt() * x0[:, known]) / (1 - ab).sqrt()  # (n, 32) ~ N(0, 1)
        assert (z.mean(0).abs() < 5 / n**0.5).all(), t
        assert ((z.std(0) - 1).abs() < 5 / (2 * n) ** 0.5).all(), t


def test_repaint_without_resampling_is_the_replacement_method():
    """resamplings=1 has no jumps: the same draws in the same order as DDIM(eta=1) + projection."""
    x_known, model = known_image(8), DATA.model(SCHED)
    outs = []
    for run in ("ddim", "repaint"):
        gn = gen(5)
        project = replacement_projection(x_known, MASK, SCHED, generator=gn)
        if run == "ddim":
            outs.append(ddim_sample(model, SCHED, noise(8), steps=15, eta=1.0, generator=gn,
                                    project=project, progress=False))  # fmt: skip
        else:
            outs.append(repaint_sample(model, SCHED, noise(8), project, steps=15, jump_length=5,
                                       resamplings=1, generator=gn, progress=False))  # fmt: skip
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("steps, jump, r", [(20, 5, 3), (50, 10, 4), (7, 3, 2), (6, 6, 1)])
def test_repaint_path(steps, jump, r):
    path = repaint_path(steps, jump, r)
    moves = [b - a for a, b in zip(path, path[1:], strict=False)]
    assert path[0] == 0 and path[-1] == steps
    assert set(moves) <= {1, -jump}
    blocks = steps // jump
    assert moves.count(1) == blocks * jump * r + (steps - blocks * jump)  # model calls
    assert moves.count(-jump) == blocks * (r - 1)


def test_renoise_gives_the_forward_marginal():
    """x_s ~ q(x_s | x_0) re-noised to u is q(x_u | x_0): mean sqrt(alpha_bar_u) x_0, std sigma_u.
    A jump with the coefficients of q(x_u | x_0) (sqrt(alpha_bar_u) x_s + sigma_u eps) would give
    mean sqrt(alpha_bar_u alpha_bar_s) x_0: off by 20 SE here."""
    n, x0, s, u = 20000, torch.full((20000, 1), 1.0, dtype=torch.float64), 100, 400
    x_s = SCHED.alpha_bar[s].sqrt() * x0 + SCHED.sigma[s] * torch.randn(n, 1, generator=gen(6),
                                                                        dtype=torch.float64)  # fmt: skip
    x_u = renoise(x_s, s, u, SCHED, gen(7))
    z = (x_u - SCHED.alpha_bar[u].sqrt() * x0) / SCHED.sigma[u]
    assert abs(z.mean()) < 5 / n**0.5 and abs(z.std() - 1) < 5 / (2 * n) ** 0.5


# ---------------------------------------------------------------- super-resolution
def test_low_pass_is_an_orthogonal_projection():
    x = noise(4)
    torch.testing.assert_close(low_pass(low_pass(x, 2), 2), low_pass(x, 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(downsample(upsample(x, 2), 2), x, rtol=0, atol=1e-15)
    y = noise(4, seed=9)
    inner = ((x - low_pass(x, 4)) * low_pass(y, 4)).sum()  # residual orthogonal to the low pass
    assert abs(inner) < 1e-12


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("sampler", ["ddim", "repaint"])
def test_ilvr_result_downsamples_to_the_observation(factor, sampler):
    """At s = 0 the projection sets down(x_0) = y: x - up(down x) + up(y), down of that is y up to
    rounding. float64, each block mean sums factor^2 <= 16 terms of size O(1): error ~1e-15, so
    1e-12 (skipping the projection at s = 0 leaves the model's error, ~1e-1)."""
    y = downsample(known_image(8), factor)
    model, gn = DATA.model(SCHED), gen(8)
    project = ilvr_projection(y, factor, SCHED, generator=gn)
    if sampler == "ddim":
        out = ddim_sample(model, SCHED, noise(8), steps=20, eta=1.0, generator=gn,
                          project=project, progress=False)  # fmt: skip
    else:
        out = repaint_sample(model, SCHED, noise(8), project, steps=20, generator=gn,
                             progress=False)  # fmt: skip
    torch.testing.assert_close(downsample(out, factor), y, rtol=0, atol=1e-12)
    assert (out - upsample(y, factor)).abs().max() > 1e-3  # detail was added, not only up(y)


def test_ilvr_low_pass_noise_is_block_averaged():
    """down(x_s) after the projection is sqrt(alpha_bar_s) y + sigma_s down(eps): std sigma_s /
    factor per low-resolution pixel. Noising y with fresh unit noise at low resolution would give
    std sigma_s, factor times too large."""
    n, factor, s = 4000, 4, 300
    y = downsample(known_image(1), factor).expand(n, 1, 2, 2)
    project = ilvr_projection(y, factor, SCHED, generator=gen(10))
    x_s = project(s, noise(n))
    z = (downsample(x_s, factor) - SCHED.alpha_bar[s].sqrt() * y) / (SCHED.sigma[s] / factor)
    assert (z.mean(0).abs() < 5 / n**0.5).all()
    assert ((z.std(0) - 1).abs() < 5 / (2 * n) ** 0.5).all()


# ---------------------------------------------------------------- bad input
X = torch.zeros(2, *SHAPE)


def _mask(value=None, shape=(2, 1, 8, 8)):
    m = torch.zeros(shape)
    m[..., :4, :] = 1
    return m if value is None else value


@pytest.mark.parametrize(
    "mask, err, match",
    [
        (_mask().numpy(), TypeError, "mask must be a torch.Tensor"),
        (_mask(shape=(2, 1, 4, 8)), ValueError, r"mask must have shape \(2, 1, 8, 8\)"),
        (_mask(shape=(2, 8, 8)), ValueError, "mask must have shape"),
        (_mask() * 255, ValueError, r"exactly 0 \(to fill\) or 1 \(known\).*\[0, 255\]"),
        (_mask() * 0.5, ValueError, r"mask values must be exactly 0"),
        (torch.ones(1, 1, 8, 8), ValueError, "every pixel of an example as known"),
        (torch.zeros(1, 1, 8, 8), ValueError, "no pixel of an example as known"),
        (torch.cat([_mask()[:1], torch.zeros(1, 1, 8, 8)]), ValueError, "no pixel"),
    ],
)
def test_bad_mask(mask, err, match):
    with pytest.raises(err, match=match):
        replacement_projection(X, mask, SCHED)


def test_good_masks():
    for m in (_mask(), _mask().bool(), _mask().long(), _mask()[:1], _mask()[:1, :, :, :1] * 0 + 1):
        if m.all():
            continue
        assert check_mask(m, X).dtype == torch.bool


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: downsample(X, 3), ValueError, r"factor must be one of \[2, 4, 8\]"),
        (lambda: downsample(X, 1), ValueError, r"factor must be one of \[2, 4, 8\]"),
        (lambda: downsample(X, 2.0), TypeError, r"factor must be an int in \[2, 4, 8\]"),
        (lambda: downsample(X[0], 2), ValueError, r"\(B, C, H, W\)"),
        (lambda: upsample(X, 0), ValueError, "factor must be >= 2"),
        (lambda: ilvr_projection(X[..., :4, :4], 1, SCHED), ValueError, "factor must be >= 2"),
        (lambda: ilvr_projection(X[..., :4, :4], 4, SCHED)(10, X), ValueError, "factor must be 2"),
        (lambda: ilvr_projection(X[..., :2, :2], 4, SCHED)(1001, X), ValueError, "s must be in"),
        (lambda: replacement_projection(X, _mask(), SCHED)(10, X[:1]), ValueError, "shape"),
        (lambda: repaint_path(10, 11, 2), ValueError, "jump_length must be in 1..10"),
        (lambda: repaint_path(10, 5, 0), ValueError, "resamplings must be >= 1"),
        (lambda: repaint_sample(None, SCHED, X, None), TypeError, "project must be a function"),
    ],
)
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------------------ reliability II (issue 23): up front


@pytest.mark.parametrize("schedule", [None, "linear", 1000])
@pytest.mark.parametrize("which", ["replacement", "ilvr"])
def test_a_projection_checks_its_schedule_when_built(which, schedule):
    # replacement_projection(x, m, None) was accepted and failed inside the sampler before.
    x = torch.zeros(2, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        if which == "replacement":
            replacement_projection(x, mask, schedule)
        else:
            ilvr_projection(torch.zeros(2, 1, 4, 4), 2, schedule)


def test_ilvr_refuses_a_factor_too_large_to_allocate():
    # Failed in the allocator before (an up(y) of 7e6 x 7e6 pixels).
    with pytest.raises(ValueError, match=r"factor 1000000 .* 7000000x7000000 .*2\*\*31"):
        ilvr_projection(torch.zeros(1, 1, 7, 7), 10**6, SCHED)

"""Flow matching: conversions, the VP <-> flow map, velocity fields, the flow sampler and the loss.

Oracles: exact per-example quantities (x_0, eps known), Gaussian data (marginal velocity, score
and loss floor in closed form, written here independently of the package), and DDIM (Euler on an
eps-model's velocity on DDIM's flow-time grid is DDIM). Each test names the bug it was seen to
catch (injected in a scratch edit, watched go red, reverted).
"""

from __future__ import annotations

import math

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.core import flow as fl
from diffusion_tutorial.core.flow_matching import (
    flow_matching_loss,
    flow_network_input,
    flow_time_range,
    velocity_from_eps_model,
    velocity_model,
)
from diffusion_tutorial.networks.unet import PRESETS
from diffusion_tutorial.samplers.flow import flow_sample, flow_timesteps

SCHEDULE = dt.linear_schedule(1000)
# Several noise levels, not only alpha_bar = 1/2 where a / (a + b) = b / (a + b) = 1/2 and a
# swapped formula would pass.
ALPHA_BARS = [0.02, 0.3, 0.5, 0.9, 0.995]


def _draw(shape=(64, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(shape, generator=g, dtype=torch.float64) * 0.7 + 0.2
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    return x_0, eps


# --- Gaussian data N(m, s^2) per coordinate: closed forms on the linear path ------------------
M = torch.tensor([0.3, -0.5, 0.0, 0.8], dtype=torch.float64)
S = torch.tensor([0.5, 1.0, 0.2, 0.7], dtype=torch.float64)
GAUSS = dt.GaussianData(M, S)


def exact_velocity(x: torch.Tensor, flow_t: torch.Tensor) -> torch.Tensor:
    """E[x_0 - eps | x_s] = m + (s s^2 - (1 - s)) (x - s m) / (s^2 s^2 + (1 - s)^2)."""
    flow_t = flow_t.reshape(-1, 1).to(torch.float64)
    var = flow_t**2 * S**2 + (1 - flow_t) ** 2
    return (M + (flow_t * S**2 - (1 - flow_t)) * (x - flow_t * M) / var).to(x.dtype)


def exact_score(x: torch.Tensor, flow_t: float) -> torch.Tensor:
    """grad log N(x; s m, s^2 s^2 + (1 - s)^2)."""
    return -(x - flow_t * M) / (flow_t**2 * S**2 + (1 - flow_t) ** 2)


# --- The VP <-> flow map ---------------------------------------------------------------------


@pytest.mark.parametrize("alpha_bar", ALPHA_BARS)
def test_vp_state_is_the_linear_path_rescaled(alpha_bar):
    """x_VP / (a + b) = s x_0 + (1 - s) eps at s = a / (a + b), and back.

    Caught: a level read as flow_time_data_at_0, b / (a + b), by the conversions: red at every
    alpha_bar but 1/2 (the scale a + b is symmetric in s <-> 1 - s, so the map alone cannot
    tell); vp_scale as sqrt(s^2 + (1 - s)^2) (inverted): red.
    """
    x_0, eps = _draw()
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x_vp = a * x_0 + b * eps
    flow_t = a / (a + b)  # computed here, not by the package
    level = dt.NoiseLevel.from_alpha_bar(alpha_bar)
    assert level.flow_time_noise_at_0().item() == pytest.approx(flow_t, abs=1e-13)
    x_fm = fl.flow_from_vp(x_vp, level)
    torch.testing.assert_close(x_fm, flow_t * x_0 + (1 - flow_t) * eps, rtol=0, atol=1e-12)
    # The state at s, read by a conversion given the level: x_0 - eps from eps.
    torch.testing.assert_close(fl.u_from_eps(x_fm, eps, level), x_0 - eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(fl.vp_from_flow(x_fm, flow_t), x_vp, rtol=0, atol=1e-12)
    assert fl.vp_scale(flow_t).item() == pytest.approx(a + b, abs=1e-13)


# --- Conversions with exact quantities -------------------------------------------------------


@pytest.mark.parametrize("t", [30, 250, 500, 800])
def test_conversions_read_one_state_every_way(t):
    """At book time t: u = x_0 - eps read from eps, x_0, v (the package's v of the VP state) and back.

    Caught: eps_from_u as x + s u (sign), x0_from_u with s for 1 - s, v_from_u's
    (2 s - 1) as (1 - 2 s): red. v is cross-checked with core.parameterization.v_from_eps,
    so a v of the flow state instead of the VP state is red too.
    """
    x_0, eps = _draw()
    level = dt.NoiseLevel.from_t(float(t), SCHEDULE)
    flow_t = level.flow_time_noise_at_0().item()
    x_vp = dt.q_sample(x_0, t, SCHEDULE, eps=eps)  # a x_0 + b eps
    x = fl.flow_from_vp(x_vp, level)
    u = x_0 - eps
    v = dt.v_from_eps(x_vp, eps, t, SCHEDULE)  # a eps - b x_0
    tol = dict(rtol=0, atol=1e-10)
    torch.testing.assert_close(fl.u_from_eps(x, eps, flow_t), u, **tol)
    torch.testing.assert_close(fl.eps_from_u(x, u, flow_t), eps, **tol)
    torch.testing.assert_close(fl.u_from_x0(x, x_0, flow_t), u, **tol)
    torch.testing.assert_close(fl.x0_from_u(x, u, flow_t), x_0, **tol)
    torch.testing.assert_close(fl.v_from_u(x, u, flow_t), v, **tol)
    torch.testing.assert_close(fl.u_from_v(x, v, flow_t), u, **tol)
    # The same through a NoiseLevel and a (B,) tensor of flow times.
    torch.testing.assert_close(fl.u_from_eps(x, eps, level), u, **tol)
    torch.testing.assert_close(
        fl.u_from_eps(x, eps, torch.full((64,), flow_t, dtype=torch.float64)), u, **tol
    )


@pytest.mark.parametrize("flow_t", [0.05, 0.3, 0.5, 0.75, 0.95])
def test_eps_model_velocity_and_score_are_the_exact_marginal_ones(flow_t):
    """velocity_from_eps_model(exact Gaussian eps-model) = the closed-form marginal velocity, and
    score_from_u of it = the closed-form score; u_from_score inverts it.

    Caught: the network input without the (a + b) scale, the time fed as s T instead of the
    book time of the same noise level, score_from_u dividing by s for 1 - s: each red.
    """
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, generator=g, dtype=torch.float64) * 0.8 + 0.1
    flow_ts = torch.full((256,), flow_t, dtype=torch.float64)
    u = velocity_from_eps_model(GAUSS.model(SCHEDULE), SCHEDULE)(x, flow_ts)
    torch.testing.assert_close(u, exact_velocity(x, flow_ts), rtol=0, atol=1e-9)
    score = fl.score_from_u(x, u, flow_t)
    torch.testing.assert_close(score, exact_score(x, flow_t), rtol=0, atol=1e-9)
    torch.testing.assert_close(fl.u_from_score(x, score, flow_t), u, rtol=0, atol=1e-9)


def test_conversions_refuse_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"flow_t must be flow times in \[0, 1\]"):
        fl.eps_from_u(x, x, 1.5)
    with pytest.raises(ValueError, match="flow_t must be > 0"):
        fl.u_from_eps(x, x, 0.0)
    with pytest.raises(ValueError, match="flow_t must be < 1"):
        fl.score_from_u(x, x, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        fl.eps_from_u(x, torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        fl.eps_from_u(x, x, torch.full((3,), 0.5))
    with pytest.raises(TypeError, match="level must be a NoiseLevel"):
        fl.flow_from_vp(x, 0.5)


# --- How a network reads flow time --------------------------------------------------------------


def test_network_input_is_the_vp_state_at_the_same_noise_level():
    """At the flow time of book time t the network reads x_VP and t itself; ends are clamped.

    Caught: t = s T (red: 1000 s is not the book time of s); no clamp (s = 0 gives
    t = inf, a ValueError from NoiseLevel.t).
    """
    ts = torch.tensor([1.0, 37.0, 500.0, 999.0, 1000.0], dtype=torch.float64)
    flow_t = dt.NoiseLevel.from_t(ts, SCHEDULE).flow_time_noise_at_0()
    x = torch.randn(5, 2, dtype=torch.float64)
    x_vp, t, _ = flow_network_input(x, flow_t, SCHEDULE)
    torch.testing.assert_close(t, ts, rtol=0, atol=1e-9)
    torch.testing.assert_close(x_vp, fl.vp_scale(flow_t)[:, None] * x, rtol=0, atol=1e-14)
    lo, hi = flow_time_range(SCHEDULE)
    assert lo == pytest.approx(flow_t[-1].item()) and hi == pytest.approx(flow_t[0].item())
    _, t_ends, flow_t_ends = flow_network_input(x[:2], torch.tensor([0.0, 1.0]), SCHEDULE)
    torch.testing.assert_close(t_ends, torch.tensor([1000.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(flow_t_ends, torch.tensor([lo, hi], dtype=torch.float64))


def test_wrappers_and_sampler_refuse_the_wrong_kind_of_network():
    eps_net = dt.UNet(PRESETS["tiny"])
    flow_net = dt.UNet(dt.UNetConfig(base_channels=16, channel_mults=(1, 2), prediction="velocity"))
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(TypeError, match="prediction 'eps'.*velocity_from_eps_model"):
        velocity_model(eps_net, SCHEDULE)
    with pytest.raises(TypeError, match="predicts 'velocity'.*velocity_model"):
        velocity_from_eps_model(flow_net, SCHEDULE)
    with pytest.raises(TypeError, match="flow_sample needs a velocity field.*velocity_from_eps"):
        flow_sample(eps_net, x, steps=2)
    with pytest.raises(TypeError, match=r"velocity_model\(net, schedule\)"):
        flow_sample(flow_net, x, steps=2)
    with pytest.raises(ValueError, match="prediction must be one of"):
        dt.UNetConfig(prediction="v")
    u = flow_sample(velocity_model(flow_net.eval(), SCHEDULE), x, steps=2, progress=False)
    assert u.shape == x.shape and torch.isfinite(u).all()


def test_sampler_reads_the_pair_pretrained_load_returns_by_its_prediction():
    """flow_sample((net, schedule)) wraps by net.config.prediction: an eps pair through
    velocity_from_eps_model, a velocity pair through velocity_model (swapping the two wrappers
    would change the samples, so both comparisons are exact)."""
    torch.manual_seed(0)
    eps_net = dt.UNet(PRESETS["tiny"]).eval()
    flow_net = dt.UNet(
        dt.UNetConfig(
            base_channels=16, channel_mults=(1, 2), num_res_blocks=1, prediction="velocity"
        )
    ).eval()
    for p in flow_net.parameters():  # the zero-initialised output would make every wrap agree
        p.data.normal_(0, 0.05)
    x = torch.randn(2, 1, 28, 28)
    kw = {"steps": 3, "progress": False}
    pair = flow_sample((eps_net, SCHEDULE), x, **kw)
    assert torch.equal(pair, flow_sample(velocity_from_eps_model(eps_net, SCHEDULE), x, **kw))
    pair = flow_sample((flow_net, SCHEDULE), x, method="heun", **kw)
    want = flow_sample(velocity_model(flow_net, SCHEDULE), x, method="heun", **kw)
    assert torch.equal(pair, want)
    with pytest.raises(TypeError, match="as pretrained.load returns"):
        flow_sample((lambda x, t: x, SCHEDULE), x, **kw)


# --- The flow sampler ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_on_the_eps_models_velocity_is_ddim(dtype):
    """Euler on velocity_from_eps_model(mnist), on the flow times of DDIM's grid, from
    x_T / (a_T + b_T), = ddim_sample(eta = 0) from x_T.

    Measured max |difference|: 5.7e-6 (float32; images of max |x| ~ 1) and 1.3e-14 (float64),
    5 steps. Tolerances 5e-5 and 1e-11. Caught: Euler with u at the step's end time, the grid
    in flow_time_data_at_0, u = (x - eps_hat) / (1 - s): each red.
    """
    model, schedule = dt.pretrained.load("mnist")
    model = model.to(dtype)
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ddim = dt.ddim_sample(model, schedule, x_T, steps=5, progress=False)
    flow_ts = flow_timesteps(schedule, 5)
    x_noise = (x_T.double() / fl.vp_scale(flow_ts[0])).to(dtype)
    out = flow_sample(
        velocity_from_eps_model(model, schedule),
        x_noise,
        steps=5,
        timesteps=flow_ts,
        progress=False,
    )
    tol = 5e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(out, ddim, rtol=0, atol=tol)


def test_clip_x0_is_ddims_clip_x0_and_keeps_images_in_range():
    """clip_x0 clips x0_hat = x + (1 - s) u and steps with the u it implies: on DDIM's grid, Euler
    with clip_x0 = ddim_sample(clip_x0=True) (float64; clipping u itself, or x instead of x0_hat,
    breaks it), and the last Euler step returns x0_hat, so the images lie in [-1, 1]."""
    model, schedule = dt.pretrained.load("mnist")
    model = model.double()
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ddim = dt.ddim_sample(model, schedule, x_T, steps=3, clip_x0=True, progress=False)
    flow_ts = flow_timesteps(schedule, 3)
    field = velocity_from_eps_model(model, schedule)
    kw = {"steps": 3, "timesteps": flow_ts, "progress": False}
    out = flow_sample(field, x_T / fl.vp_scale(flow_ts[0]), clip_x0=True, **kw)
    torch.testing.assert_close(out, ddim, rtol=0, atol=1e-11)
    assert out.abs().max() <= 1
    plain = flow_sample(field, x_T / fl.vp_scale(flow_ts[0]), **kw)
    assert plain.abs().max() > 1  # without clipping this draw leaves [-1, 1]: the test can see it


def _endpoint_error(method: str, steps: int) -> float:
    x = torch.randn(512, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = M + S * x  # the flow keeps (x - s m) / sqrt(s^2 s^2 + (1 - s)^2) constant
    out = flow_sample(exact_velocity, x, steps=steps, method=method, progress=False)
    return (out - exact).abs().max().item()


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2)])
def test_order_of_euler_and_heun_on_gaussian_data(method, order):
    """Endpoint error vs the exact flow of Gaussian data: slope -1 (Euler), -2 (Heun) in log-log.

    Tolerance +-0.15 on the fitted slope (log error on log steps, 8 -> 64 steps). Caught: Heun
    averaging u at the start twice (order 1: red), the Euler point built with h / 2 (red).
    """
    steps = [8, 16, 32, 64]
    errs = [_endpoint_error(method, n) for n in steps]
    xs = [math.log(n) for n in steps]
    ys = [math.log(e) for e in errs]
    mx, my = sum(xs) / 4, sum(ys) / 4
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )
    assert -slope == pytest.approx(order, abs=0.15), (errs, slope)


@pytest.mark.parametrize(("method", "calls"), [("euler", 6), ("heun", 11)])
def test_sampler_calls_and_callback(method, calls):
    """Euler: steps calls; Heun: 2 steps - 1 (no call at s = 1); callback sees x0_hat."""
    seen = []
    flow_ts_called = []

    def u(x, flow_t):
        flow_ts_called.append(flow_t[0].item())
        return exact_velocity(x, flow_t)

    x = torch.randn(4, 4, dtype=torch.float64)
    flow_sample(u, x, steps=6, method=method, progress=False, callback=lambda *a: seen.append(a))
    assert len(seen) == calls == len(flow_ts_called) and max(flow_ts_called) < 1
    i, flow_t, x_i, x0_hat = seen[-1]
    assert i == calls - 1
    torch.testing.assert_close(
        x0_hat, x_i + (1 - flow_t) * exact_velocity(x_i, torch.tensor([flow_t]))
    )


def test_sampler_refuses_bad_input():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="method must be one of"):
        flow_sample(exact_velocity, x, steps=2, method="rk4")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow_sample(exact_velocity, x, steps=0)
    with pytest.raises(ValueError, match="to exactly 1"):
        flow_sample(exact_velocity, x, steps=2, timesteps=[0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="strictly increasing"):
        flow_sample(exact_velocity, x, steps=2, timesteps=[0.5, 0.2, 1.0])
    with pytest.raises(ValueError, match="steps \\+ 1 = 3"):
        flow_sample(exact_velocity, x, steps=2, timesteps=[0.0, 1.0])
    with pytest.raises(TypeError, match="flow_timesteps"):
        flow_sample(exact_velocity, x, steps=2, timesteps=dt.leading_timesteps)
    with pytest.raises(ValueError, match="NaN or inf at flow_t = 0"):
        flow_sample(lambda x, flow_t: x * float("nan"), x, steps=2, progress=False)
    with pytest.raises(TypeError, match="x_noise must be a floating-point"):
        flow_sample(exact_velocity, torch.zeros(2, 4, dtype=torch.int64), steps=2)


# --- The loss -------------------------------------------------------------------------------


def _exact_network(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity as a network reads it: (x_VP, book time t) -> u."""
    flow_t = dt.NoiseLevel.from_t(t.double(), SCHEDULE).flow_time_noise_at_0()
    x = x_vp.double() / fl.vp_scale(flow_t)[:, None]
    return exact_velocity(x, flow_t).to(x_vp.dtype)


@pytest.mark.parametrize("flow_t", [0.1, 0.5, 0.9])
def test_loss_of_the_exact_velocity_is_its_floor(flow_t):
    """E || u - E[u | x_s] ||^2 per coordinate = s^2 / (s^2 s^2 + (1 - s)^2), the best loss.

    Monte Carlo with n = 20,000 examples x 4 coordinates; the loss per element is floor x chi^2_1,
    so the standard error is floor sqrt(2 / 80,000) = 0.5 % of the mean floor: tolerance 3 %.
    Caught: the target eps - x_0 (sign of u: loss ~ 4x), x_s built as (1 - s) x_0 + s eps
    (SD3's convention with the book's velocity: red at s = 0.1 and 0.9).
    """
    g = torch.Generator().manual_seed(5)
    x_0 = GAUSS.sample(20_000, g, dtype=torch.float64)
    loss = flow_matching_loss(
        _exact_network, x_0, SCHEDULE, generator=g, flow_t=torch.full((20_000,), flow_t)
    )
    floor = (S**2 / (flow_t**2 * S**2 + (1 - flow_t) ** 2)).mean().item()
    assert loss.item() == pytest.approx(floor, rel=0.03)


def test_loss_draws_flow_times_in_the_networks_range():
    """Drawn s stay in [s_min, s_max]: the network sees book times in [1, T], never clamped."""
    seen = []

    def net(x_vp, t):
        seen.append(t)
        return torch.zeros_like(x_vp)

    x_0 = GAUSS.sample(4096, torch.Generator().manual_seed(0))
    flow_matching_loss(net, x_0, SCHEDULE, generator=torch.Generator().manual_seed(1))
    t = torch.cat(seen)
    assert t.dtype == torch.float32 and 1 <= t.min() and t.max() <= 1000
    assert t.min() < 2 and t.max() > 990  # covers the range


def test_loss_with_a_couplings_noise_regresses_on_that_noise():
    """noise= replaces the independent eps draw: the loss is the mean squared error of the
    velocity field against x_0 - noise on x_s = s x_0 + (1 - s) noise (a loss that still drew
    its own eps, or paired noise with the wrong x_0, would differ)."""
    torch.manual_seed(0)
    net = dt.UNet(dt.UNetConfig(base_channels=16, channel_mults=(1, 2), prediction="velocity"))
    for p in net.parameters():  # the zero-initialised output would hide a wrong target
        p.data.normal_(0, 0.05)
    net.eval()
    g = torch.Generator().manual_seed(2)
    x_0, noise = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    flow_t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    s = flow_t.float()[:, None, None, None]
    u = velocity_model(net, SCHEDULE)(s * x_0 + (1 - s) * noise, flow_t)
    want = ((u - (x_0 - noise)) ** 2).mean()
    got = flow_matching_loss(net, x_0, SCHEDULE, flow_t=flow_t, noise=noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="noise must have the shape of x_0"):
        flow_matching_loss(net, x_0, SCHEDULE, noise=noise[:2])

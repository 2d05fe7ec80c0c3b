"""DPM-Solver++ (multistep, data prediction) of order 1 to 3 for the probability-flow ODE.

With a_t = sqrt(alpha_bar_t) (DPM-Solver's "alpha_t", not ours), sigma_t and lambda_t = log(a_t /
sigma_t), the exact solution of the ODE from t to s < t is (Lu et al. 2022b, eq. 8)

    x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0_hat(lambda) d lambda.

A multistep solver of order k replaces x0_hat(lambda) by the polynomial through the last k
predictions (in lambda) and integrates it *exactly* against e^lambda. With h = lambda_s - lambda_t
and u = lambda - lambda_t the needed integrals are

    I_0 = a_s (1 - e^-h),  I_1 = a_s (h - 1 + e^-h),  I_2 = a_s (h^2 - 2h + 2 - 2 e^-h),

(I_k = sigma_s int_0^h e^(lambda_t + u) u^k du). Order 1 is DDIM with eta = 0; order 2 is the
paper's DPM-Solver++(2M) (Algorithm 2, the line through the last two x0_hat evaluated at the
midpoint of the step); order 3 integrates the quadratic interpolant exactly (third order). The
last step goes to t = 0 where lambda = +inf: there the integral of any non-constant polynomial
diverges, so the last step is first order and returns x0_hat, exactly as every discrete-time
sampler does.

Large steps. A quadratic through three predictions one unit of lambda apart, extrapolated one
more unit, overshoots: on both benchmarks of ``bench/samplers.py`` (the exact Gaussian and the
trained MNIST model) order 3 is *less* accurate than order 2 once the steps exceed about 0.9 in
lambda (fewer than 12 steps on the linear schedule), and more accurate below. So a step of the
default ``order=3`` falls back to order 2 when it or one of the two steps before it is longer
than ``ORDER3_MAX_STEP``; the official code's ``lower_order_final`` (lower order for the final
steps when there are fewer than 15) is the same remedy applied to the last steps only.

Book: Fast sampling (DPM-Solver++). Lu et al. 2022, "DPM-Solver++", Algorithm 2 and eqs. 8-10.
"""

from __future__ import annotations

import math

import torch

from diffusion_tutorial.checks import check_int_in_range
from diffusion_tutorial.core.parameterization import Model
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.samplers.common import (
    Callback,
    TimestepFn,
    check_start,
    predict,
    progress_bar,
    resolve_timesteps,
)
from diffusion_tutorial.samplers.timesteps import logsnr_timesteps

__all__ = ["dpm_solver_sample", "exponential_integrals", "ORDER3_MAX_STEP"]

ORDER3_MAX_STEP = 0.9  # longest lambda step (and the two before it) taken at order 3


def exponential_integrals(h: float, a_s: float) -> tuple[float, float, float]:
    """(I_0, I_1, I_2) with I_k = a_s e^-h int_0^h e^u u^k du, stable for small h (series below 1e-2).

    Book: Fast sampling, eq. (dpm-integrals). Lu et al. 2022a, sec. 3.2 (phi functions).
    """
    em1 = math.expm1(-h)  # e^-h - 1
    if h < 1e-2:
        i2 = h**3 / 3 - h**4 / 12 + h**5 / 60 - h**6 / 360 + h**7 / 2520
    else:
        i2 = h * h - 2 * h - 2 * em1
    return a_s * -em1, a_s * (h + em1), a_s * i2


def _weights(h: float, h_prev: list[float], a_s: float, k: int) -> list[float]:
    """Weights w_j on the last k predictions D_0 (newest), D_1, D_2 so that the step adds sum_j w_j D_j.

    Order 2 is the paper's 2M: the linear interpolant evaluated at the midpoint u = h / 2 times
    I_0 (more accurate than integrating the line exactly when h ~ 1, see bench/samplers.py).
    Order 3 integrates the Newton interpolant D_0 + d01 u + d012 u (u + h_0) exactly, with
    d01 = (D_0 - D_1) / h_0 and d012 = (d01 - d12) / (h_0 + h_1), h_j the previous lambda steps.
    """
    i0, i1, i2 = exponential_integrals(h, a_s)
    if k == 1:
        return [i0]
    h0 = h_prev[-1]
    if k == 2:  # Lu et al. 2022b, Algorithm 2: D = (1 + 1/(2r)) D_0 - 1/(2r) D_1, r = h_0 / h
        return [i0 * (1 + h / (2 * h0)), -i0 * h / (2 * h0)]
    h1 = h_prev[-2]
    c = 1.0 / (h0 + h1)
    w0 = i0 + i1 * (1 / h0 + c) + i2 * c / h0
    w1 = -i1 * (1 / h0 + c * (1 + h0 / h1)) - i2 * c * (1 / h0 + 1 / h1)
    w2 = i1 * c * h0 / h1 + i2 * c / h1
    return [w0, w1, w2]


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int = 20,
    order: int = 3,
    timesteps: TimestepFn = logsnr_timesteps,
    clip_x0: bool = False,
    callback: Callback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Multistep DPM-Solver++ of order 1-3: x_s = (sigma_s / sigma_t) x_t + sum_j w_j x0_hat_j.

    ``steps`` model calls at ``timesteps(schedule, steps)`` (default: uniform in lambda, the
    paper's choice). The first steps use lower order until enough predictions exist, order 3
    falls back to 2 on steps longer than ``ORDER3_MAX_STEP`` in lambda, and the final step to
    t = 0 returns x0_hat (see the module notes). The defaults (order 3, uniform in lambda) are the
    most accurate setting in ``bench/samplers.py`` at 20 NFE; with fewer than 12 steps this is
    the paper's 2M throughout. Pass ``order=2`` for guided sampling, as the paper recommends.
    Deterministic. Returns x_0 in the dtype/device of ``x_T``.
    Book: Fast sampling, eq. (dpm-multistep). Lu et al. 2022b, Algorithm 2 (and its order-3 analogue).
    """
    x = check_start("x_T", x_T, schedule)
    order = check_int_in_range("order", order, 1, 3)
    ts = resolve_timesteps(timesteps, schedule, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    lam = schedule.lam.tolist()
    # Step 0: plan the whole trajectory (step sizes and weights) in float64 before any model call.
    plan = []
    h_prev: list[float] = []
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        if s == 0:
            plan.append((t, 0.0, [1.0]))  # lambda_0 = inf: x_0 = x0_hat
            break
        h = lam[s] - lam[t]
        k = min(order, i + 1)
        if k == 3 and max(h, *h_prev[-2:]) > ORDER3_MAX_STEP:
            k = 2  # large steps: the quadratic extrapolation overshoots (module notes)
        ratio = math.sqrt((1 - alpha_bar[s]) / (1 - alpha_bar[t]))  # sigma_s / sigma_t
        plan.append((t, ratio, _weights(h, h_prev, math.sqrt(alpha_bar[s]), k)))
        h_prev.append(h)
    history: list[torch.Tensor] = []  # newest x0_hat last
    for i in progress_bar(len(plan), progress, f"DPM-Solver++({order}M)"):
        t, ratio, weights = plan[i]
        # Step 1: data prediction at t.
        _, x0_hat = predict(model, x, t, alpha_bar[t] ** 0.5, (1 - alpha_bar[t]) ** 0.5, clip_x0)
        if callback is not None:
            callback(i, t, x, x0_hat)
        history = (history + [x0_hat])[-3:]
        # Step 2: exponential-integrator update with the interpolated x0_hat (newest first).
        x = ratio * x  # (B, ...)
        for w, d in zip(weights, reversed(history), strict=False):
            x = x + w * d
    return x

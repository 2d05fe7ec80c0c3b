"""Flow matching on 2-D points: couplings of noise and data, a small training loop, straightness.

A *coupling* says which noise point each data point is paired with on the straight path
x_s = s x_data + (1 - s) x_noise (flow time s, 0 at noise). It is a function
``pairs(batch_size, generator) -> (x_noise, x_data)``, each (B, D), the noise first:

- :func:`independent_pairs`: x_noise ~ N(0, I) and x_data drawn independently (flow matching as
  Lipman et al. 2023 and Liu et al. 2023 train it);
- :func:`minibatch_ot_pairs`: the same draws, re-paired within the minibatch by the assignment
  that minimises the summed squared distance (Tong et al. 2024, Pooladian et al. 2023);
- :func:`fixed_pairs`: stored pairs, e.g. (z, ODE endpoint of z) for reflow (Liu et al. 2023).

:func:`fit_velocity` regresses a velocity network on a coupling; :func:`straightness` and
:func:`euler_errors` measure how straight its paths are and what that buys a few-step Euler solver.

Book: Flow matching (Part 4). Liu et al. 2023, sec. 2-3 (reflow, straightness); Tong et al. 2024
(minibatch OT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from diffusion_tutorial.checks import (
    check_finite,
    check_float_in_range,
    check_float_tensor,
    check_positive_int,
)
from diffusion_tutorial.core.flow import VelocityModel, u_from_x0
from diffusion_tutorial.core.flow_matching import flow_matching_loss
from diffusion_tutorial.core.schedules import NoiseSchedule
from diffusion_tutorial.runtime import tqdm
from diffusion_tutorial.samplers.flow import flow_sample
from diffusion_tutorial.training.step import learning_rate

__all__ = [
    "Coupling",
    "independent_pairs",
    "minibatch_ot_pairs",
    "fixed_pairs",
    "fit_velocity",
    "straightness",
    "euler_errors",
]

Coupling = Callable[[int, torch.Generator | None], tuple[torch.Tensor, torch.Tensor]]
"""``pairs(batch_size, generator) -> (x_noise, x_data)``, each (B, D): noise first, data second."""


def _check_points(name: str, x: torch.Tensor) -> torch.Tensor:
    check_finite(name, check_float_tensor(name, x))
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
    return x


def independent_pairs(data: torch.Tensor) -> Coupling:
    """x_noise ~ N(0, I) and x_data drawn uniformly (with replacement) from ``data`` (N, D), independently."""
    _check_points("data", data)

    def pairs(batch_size: int, generator: torch.Generator | None = None):
        rows = torch.randint(data.shape[0], (batch_size,), generator=generator)
        x_noise = torch.randn((batch_size, data.shape[1]), generator=generator, dtype=data.dtype)
        return x_noise, data[rows]  # (B, D), (B, D)

    return pairs


def minibatch_ot_pairs(data: torch.Tensor) -> Coupling:
    """The draws of :func:`independent_pairs`, re-paired by the minibatch's optimal assignment.

    The permutation pi minimising sum_i |x_noise_i - x_data_pi(i)|^2 (``linear_sum_assignment``
    on the (B, B) squared distances, Hungarian method): an optimal transport plan between the
    two empirical minibatch distributions. Tong et al. 2024, Algorithm 1 (OT-CFM).
    """
    draw = independent_pairs(data)

    def pairs(batch_size: int, generator: torch.Generator | None = None):
        x_noise, x_data = draw(batch_size, generator)
        cost = torch.cdist(x_noise.double(), x_data.double()) ** 2  # (B, B)
        rows, cols = linear_sum_assignment(cost.numpy())
        return x_noise[torch.as_tensor(rows)], x_data[torch.as_tensor(cols)]

    return pairs


def fixed_pairs(x_noise: torch.Tensor, x_data: torch.Tensor) -> Coupling:
    """Rows of stored pairs (x_noise[i], x_data[i]), drawn uniformly with replacement (reflow's coupling).

    Noise first: reflow stores (z, Phi(z)) with Phi the flow's map from noise to data.
    """
    _check_points("x_noise", x_noise)
    _check_points("x_data", x_data)
    if x_noise.shape != x_data.shape:
        raise ValueError(
            f"x_noise and x_data must have the same shape, got {tuple(x_noise.shape)} and "
            f"{tuple(x_data.shape)}"
        )

    def pairs(batch_size: int, generator: torch.Generator | None = None):
        rows = torch.randint(x_noise.shape[0], (batch_size,), generator=generator)
        return x_noise[rows], x_data[rows]

    return pairs


def fit_velocity(
    net: nn.Module,
    schedule: NoiseSchedule,
    pairs: Coupling,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``net`` (``config.prediction == "velocity"``) on a coupling by Adam; returns the losses.

    Each step: (x_noise, x_data) = pairs(B), then ``flow_matching_loss(net, x_data, schedule,
    noise=x_noise)``: s ~ U[s_min, s_max], x_s = s x_data + (1 - s) x_noise and
    mean || (x_data - x_noise) - u_theta(x_s, s) ||^2; cosine decay of the learning rate to 0, as
    ``training.toy.fit``. With :func:`independent_pairs` this is plain flow matching.
    Book: Flow matching (Part 4), eq. (eq-fm-loss). Lipman et al. 2023, eq. 23.
    """
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_float_in_range("lr", lr, 0.0, None, low_open=True)
    net.train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    for k in tqdm(range(steps), desc="fit velocity", disable=not progress, mininterval=0.5):
        x_noise, x_data = pairs(batch_size, generator)  # (B, D) each
        # eq-fm-loss with the coupling's noise in place of an independent draw
        loss = flow_matching_loss(net, x_data, schedule, generator=generator, noise=x_noise)
        optimizer.param_groups[0]["lr"] = learning_rate(k, lr=lr, steps=steps, cosine=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    net.eval()
    return losses


@torch.no_grad()
def straightness(velocity: VelocityModel, x_noise: torch.Tensor, *, steps: int = 200) -> float:
    """S = E int_0^1 || (z_1 - z_0) - u(z_s, s) ||^2 ds along the flow's own paths z_s (Liu et al. 2023).

    The paths are Euler's with ``steps`` uniform steps from ``x_noise`` (B, D); the integral is the
    left Riemann sum over those steps, z_1 the path's endpoint. 0 exactly when every path is a
    straight line travelled at constant speed, which Euler then follows in one step.
    """
    _check_points("x_noise", x_noise)
    us: list[torch.Tensor] = []

    def record(i: int, flow_t: float, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        us.append(u_from_x0(x, x0_hat, flow_t))  # u = (x0_hat - x) / (1 - s)

    x_1 = flow_sample(velocity, x_noise, steps=steps, callback=record, progress=False)
    chord = x_1 - x_noise  # (B, D)
    return torch.stack([(chord - u).pow(2).sum(1).mean() for u in us]).mean().item()


@torch.no_grad()
def euler_errors(
    velocity: VelocityModel,
    x_noise: torch.Tensor,
    steps: Sequence[int],
    reference: torch.Tensor,
) -> dict[int, float]:
    """{k: E || Euler with k uniform steps - reference ||} for each k in ``steps``.

    ``reference`` (B, D): the same flow solved finely (e.g. Heun with many steps) from ``x_noise``.
    """
    _check_points("x_noise", x_noise)
    if reference.shape != x_noise.shape:
        raise ValueError(
            f"reference must have the shape of x_noise {tuple(x_noise.shape)}, got "
            f"{tuple(reference.shape)}"
        )
    return {
        k: (flow_sample(velocity, x_noise, steps=k, progress=False) - reference)
        .norm(dim=1)
        .mean()
        .item()
        for k in steps
    }

"""Consistency models on 2-D data whose probability-flow ODE is known exactly (Song et al. 2023).

Levels are EDM's: x_sigma = x_0 + sigma z, sigma in [eps, sigma_max]; the probability-flow ODE
is dx/dsigma = (x - D(x, sigma)) / sigma, D(x, sigma) = E[x_0 | x_sigma = x], in closed form for
a Gaussian mixture (``core.gaussian.GaussianMixtureData``; a point cloud is the mixture of its
points with a small std, D a softmax-weighted mean), so the ODE is solved to any accuracy.

A consistency function f(x_sigma, sigma) = x_eps maps every point of an ODE path to the path's
end at sigma = eps: :class:`ConsistencyFunction` (boundary condition f(x, eps) = x built in),
trained by :func:`fit_consistency` with the CD or CT loss (Algorithms 2, 3) in seconds on a CPU.

eps = 0.002 as Song et al.; sigma_max = 10, not their 80 for images: 14 times the per-coordinate
std ~0.71 of the unit-radius toy sets, so x_T ~ N(0, sigma_max^2 I) misses the true marginal's std
sqrt(sigma_max^2 + 0.5) by 0.25%, and a shorter range of log sigma is easier for a small network.

Book: One to four steps (Part 4). Song et al. 2023, "Consistency Models", Algorithms 2-3 and
Appendix C (c_skip, c_out); Karras et al. 2022 (EDM), Algorithm 1 (Heun) and eq. 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from diffusion_tutorial.checks import check_float_in_range, check_int_in_range, expand_like
from diffusion_tutorial.core.forward import randn_like
from diffusion_tutorial.core.gaussian import GaussianMixtureData
from diffusion_tutorial.core.time import NoiseLevel
from diffusion_tutorial.networks.mlp import MLPConfig, MLPDenoiser
from diffusion_tutorial.runtime import tqdm
from diffusion_tutorial.samplers.few_step import few_step_sample, sigma_range_schedule
from diffusion_tutorial.samplers.timesteps import karras_sigmas
from diffusion_tutorial.training.ema import EMA
from diffusion_tutorial.training.step import learning_rate

__all__ = [
    "EPS",
    "SIGMA_MAX",
    "SIGMA_DATA",
    "Denoiser",
    "ring_mixture",
    "exact_denoiser",
    "heun_step",
    "solve_ode",
    "ExactConsistencyFunction",
    "ConsistencyFunction",
    "consistency_sigmas",
    "consistency_distillation_loss",
    "consistency_training_loss",
    "fit_consistency",
    "sample_errors",
]

EPS, SIGMA_MAX, SIGMA_DATA = 0.002, 10.0, 0.5
"""Song et al.'s eps and sigma_data; sigma_max for unit-scale 2-D data (module docstring)."""

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x, sigma) -> x0_hat``: x (B, D), sigma float64 (B,) EDM levels; E[x_0 | x_0 + sigma z = x]."""


def _levels(sigma: torch.Tensor | float, x: torch.Tensor, eps: float, sigma_max: float):
    """sigma as a float64 (B,) tensor on x's device, checked to lie in [eps, sigma_max] (rel. 1e-9)."""
    s = torch.as_tensor(sigma, dtype=torch.float64).to(x.device).reshape(-1)
    s = s.expand(x.shape[0]) if s.numel() == 1 else s
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a number or shape ({x.shape[0]},), got {tuple(s.shape)}")
    if torch.isnan(s).any() or s.min() < eps * (1 - 1e-9) or s.max() > sigma_max * (1 + 1e-9):
        raise ValueError(f"sigma must lie in [eps, sigma_max] = [{eps}, {sigma_max}], got {s}")
    return s.clamp(eps, sigma_max)


def ring_mixture(modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixtureData:
    """The mixture ``data.gaussian_ring`` draws from: ``modes`` equal N(mu_k, std^2 I), mu_k on a circle."""
    modes = check_int_in_range("modes", modes, 1, None)
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes  # (K,)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (K, 2)
    weights = torch.full((modes,), 1 / modes, dtype=torch.float64)  # (K,)
    stds = torch.full((modes,), float(std), dtype=torch.float64)  # (K,)
    return GaussianMixtureData(weights, means, stds)


def exact_denoiser(
    mix: GaussianMixtureData, *, eps: float = EPS, sigma_max: float = SIGMA_MAX
) -> Denoiser:
    """The exact D(x, sigma) = x - sigma E[z | x_sigma = x] of a mixture, sigma in [eps, sigma_max].

    Through the mixture's exact eps-predictor at the VP state x / sqrt(1 + sigma^2) and the book
    time of sigma on :func:`~diffusion_tutorial.samplers.few_step.sigma_range_schedule` (the EDM
    samplers' D, Karras et al. 2022, Table 1). Float64 inside; returns x's dtype.
    """
    schedule = sigma_range_schedule(eps, sigma_max)

    def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = _levels(sigma, x, eps, sigma_max)  # (B,)
        t = NoiseLevel.from_edm_sigma(sigma).t(schedule).clamp(1, 2)  # (B,) fractional times
        x64 = x.double()
        z_hat = mix.eps_hat(x64 / expand_like((1 + sigma**2).sqrt(), x64), t, schedule)
        return (x64 - expand_like(sigma, x64) * z_hat).to(x.dtype)  # (B, D)

    return D


def heun_step(
    D: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Heun step of dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next > 0, (B,) each.

    d = (x - D(x, sigma)) / sigma, x' = x + h d, d' = (x' - D(x', sigma_next)) / sigma_next,
    result x + h (d + d') / 2 with h = sigma_next - sigma. Karras et al. 2022, Algorithm 1.
    """
    h = expand_like(sigma_next - sigma, x)  # (B, 1)
    d = (x - D(x, sigma)) / expand_like(sigma, x)
    x_euler = x + h * d
    d_next = (x_euler - D(x_euler, sigma_next)) / expand_like(sigma_next, x)
    return x + h * (d + d_next) / 2


def solve_ode(
    D: Denoiser, x: torch.Tensor, sigma: torch.Tensor | float, *, sigma_to: float, steps: int = 256
) -> torch.Tensor:
    """The ODE solved from each row's level ``sigma`` (B,) to ``sigma_to``: ``steps`` Heun steps, log-uniform.

    sigma_k = sigma (sigma_to / sigma)^(k / steps), error ~ steps^-2; rows at sigma_to stay put.
    """
    steps = check_int_in_range("steps", steps, 1, None)
    sigma = torch.as_tensor(sigma, dtype=torch.float64).to(x.device).reshape(-1).expand(len(x))
    frac = torch.arange(steps + 1, dtype=torch.float64, device=x.device) / steps  # (steps + 1,)
    grid = sigma[:, None] * ((sigma_to / sigma).log()[:, None] * frac).exp()  # (B, steps + 1)
    for k in range(steps):
        x = heun_step(D, x, grid[:, k], grid[:, k + 1])
    return x


class ExactConsistencyFunction:
    """f*(x, sigma): the exact consistency function of ``D``, by :func:`solve_ode` from sigma to eps."""

    steps: int = 256  # Heun steps per solve

    def __init__(self, D: Denoiser, *, eps: float = EPS, sigma_max: float = SIGMA_MAX) -> None:
        self.D, self.eps, self.sigma_max = D, float(eps), float(sigma_max)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = _levels(sigma, x, self.eps, self.sigma_max)
        return solve_ode(self.D, x.double(), sigma, sigma_to=self.eps, steps=self.steps).to(x.dtype)


class ConsistencyFunction(nn.Module):
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma), F an MLP (Song et al., App. C).

    c_skip = sigma_d^2 / ((sigma - eps)^2 + sigma_d^2), c_out = sigma_d (sigma - eps) /
    sqrt(sigma_d^2 + sigma^2), c_in = 1 / sqrt(sigma^2 + sigma_d^2) (EDM's input scaling), so
    c_skip(eps) = 1 and c_out(eps) = 0: **f(x, eps) = x exactly**, the boundary condition, for any
    weights. F is the book's :class:`~diffusion_tutorial.networks.mlp.MLPDenoiser` (Part 2),
    told log sigma through its time input, mapped linearly from [log eps, log sigma_max] to
    [1, 1000]. ``parametrised=False`` returns F itself: nothing ties f(x, eps) to x (the pitfall).
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        eps: float = EPS,
        sigma_max: float = SIGMA_MAX,
        sigma_data: float = SIGMA_DATA,
        hidden: int = 64,
        num_blocks: int = 3,
        parametrised: bool = True,
    ) -> None:
        super().__init__()
        sigma_range_schedule(eps, sigma_max)  # checks 0 < eps < sigma_max
        self.eps, self.sigma_max = float(eps), float(sigma_max)
        self.sigma_data = check_float_in_range("sigma_data", sigma_data, 0.0, None, low_open=True)
        self.parametrised = bool(parametrised)
        self.net = MLPDenoiser(MLPConfig(dim=dim, hidden=hidden, num_blocks=num_blocks, T=1000))

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """c_skip(sigma) = sigma_d^2 / ((sigma - eps)^2 + sigma_d^2); 1 at sigma = eps."""
        return self.sigma_data**2 / ((sigma - self.eps) ** 2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """c_out(sigma) = sigma_d (sigma - eps) / sqrt(sigma_d^2 + sigma^2); 0 at sigma = eps."""
        return self.sigma_data * (sigma - self.eps) / (self.sigma_data**2 + sigma**2).sqrt()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """f(x, sigma) (B, D) for x (B, D) and levels sigma (a number or (B,)) in [eps, sigma_max]."""
        sigma = _levels(sigma, x, self.eps, self.sigma_max)  # (B,) float64
        t = 1 + 999 * (sigma / self.eps).log() / math.log(self.sigma_max / self.eps)  # [1, 1000]
        c_in = expand_like((sigma**2 + self.sigma_data**2).rsqrt(), x)
        F = self.net(c_in * x, t.to(x.dtype))  # (B, D)
        if not self.parametrised:
            return F
        return expand_like(self.c_skip(sigma), x) * x + expand_like(self.c_out(sigma), x) * F


def consistency_sigmas(N: int, *, eps: float = EPS, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Song et al.'s levels t_1 = eps < t_2 < ... < t_N = sigma_max (rho = 7), float64 (N,), increasing.

    ``sigmas[n - 1]`` is the paper's t_n (code index n - 1). ``karras_sigmas`` reversed, its
    end points set to eps and sigma_max exactly. Karras et al. 2022, eq. 5; Song et al., sec. 3.
    """
    N = check_int_in_range("N", N, 2, None)
    sigmas = karras_sigmas(sigma_range_schedule(eps, sigma_max), N)[:-1].flip(0)  # (N,)
    sigmas[0], sigmas[-1] = eps, sigma_max
    return sigmas


def _pairs(x_0: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None):
    """n ~ U{1..N-1} per row, t_n and t_{n+1} (B,), z ~ N(0, I) and x_{n+1} = x_0 + t_{n+1} z."""
    n = torch.randint(len(sigmas) - 1, (x_0.shape[0],), generator=generator)  # (B,): n - 1
    sigmas = sigmas.to(device=x_0.device, dtype=torch.float64)
    z = randn_like(x_0, generator)  # (B, D)
    return sigmas[n], sigmas[n + 1], z, x_0 + expand_like(sigmas[n + 1], x_0) * z


def consistency_distillation_loss(
    f: nn.Module,
    f_target: nn.Module,
    x_0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    denoiser: Denoiser,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CD: mean || f(x_{n+1}, t_{n+1}) - f_target(x_hat_n, t_n) ||^2 with x_hat_n one Heun step of the ODE.

    1. n ~ U{1..N-1}, z ~ N(0, I), x_{n+1} = x_0 + t_{n+1} z (``sigmas`` from :func:`consistency_sigmas`);
    2. x_hat_n = :func:`heun_step` of the exact ODE (``denoiser``) from t_{n+1} to t_n;
    3. the squared L2 distance d, lambda = 1, the target under no_grad (theta^- = EMA).
    Song et al. 2023, Algorithm 2 and eq. 7.
    """
    sigma_n, sigma_next, _, x_next = _pairs(x_0, sigmas, generator)
    with torch.no_grad():
        x_hat = heun_step(denoiser, x_next, sigma_next, sigma_n)
        target = f_target(x_hat, sigma_n)
    return (f(x_next, sigma_next) - target).pow(2).sum(1).mean()


def consistency_training_loss(
    f: nn.Module,
    f_target: nn.Module,
    x_0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CT: as CD with x_hat_n = x_0 + t_n z, the same z: no teacher, no ODE (Song et al., Algorithm 3).

    x_0 + t_n z is an unbiased one-sample estimate of the ODE step (Song et al., Theorem 2).
    """
    sigma_n, sigma_next, z, x_next = _pairs(x_0, sigmas, generator)
    with torch.no_grad():
        target = f_target(x_0 + expand_like(sigma_n, x_0) * z, sigma_n)
    return (f(x_next, sigma_next) - target).pow(2).sum(1).mean()


def fit_consistency(
    f: ConsistencyFunction,
    x_0: torch.Tensor,
    *,
    steps: int,
    denoiser: Denoiser | None = None,
    N: int = 18,
    batch_size: int = 256,
    lr: float = 2e-3,
    mu: float = 0.95,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[ConsistencyFunction, list[float]]:
    """Train ``f`` on points ``x_0`` (M, D) by CD (``denoiser`` given) or CT (None); returns (f_target, losses).

    Each Adam step: a minibatch of x_0 (with replacement), the loss on :func:`consistency_sigmas`
    (N), then theta^- <- mu theta^- + (1 - mu) theta (``training.ema.EMA``, no warm-up); the
    learning rate decays to 0 on a cosine. ``f`` ends with the online weights, in eval mode;
    f_target is the EMA copy. Song et al. 2023, Algorithms 2-3.
    """
    steps = check_int_in_range("steps", steps, 1, None)
    batch_size = check_int_in_range("batch_size", batch_size, 1, None)
    lr = check_float_in_range("lr", lr, 0.0, None, low_open=True)
    sigmas = consistency_sigmas(N, eps=f.eps, sigma_max=f.sigma_max)
    target = EMA(f, decay=mu, warmup=False)
    loss_fn = consistency_training_loss  # CT, or CD against the exact ODE:
    if denoiser is not None:
        loss_fn = partial(consistency_distillation_loss, denoiser=denoiser)
    optimizer = torch.optim.Adam(f.parameters(), lr=lr)
    losses: list[float] = []
    f.train()
    for k in tqdm(range(steps), desc="fit consistency", disable=not progress, mininterval=0.5):
        rows = torch.randint(x_0.shape[0], (batch_size,), generator=generator)
        batch = x_0[rows.to(x_0.device)]  # (B, D)
        loss = loss_fn(f, target.model, batch, sigmas, generator=generator)
        optimizer.param_groups[0]["lr"] = learning_rate(k, lr=lr, steps=steps, cosine=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        target.update(f)
        losses.append(loss.item())
    f.eval()
    return target.model, losses


@torch.no_grad()
def sample_errors(
    f: Callable, reference: dict[int, torch.Tensor], x_T: torch.Tensor, *, seed: int = 0
) -> dict[int, float]:
    """{k: E || few_step_sample(f, k) - reference[k] ||} from the same x_T and re-noising.

    ``reference[k]``: the exact consistency function's k-step sample of x_T with the fresh noise
    of a generator seeded ``seed`` (:func:`few_step_sample` with ``ExactConsistencyFunction``),
    computed once for every model compared; k = 1 is the exact ODE solution from sigma_max x_T.
    """
    out = {}
    for k, ref in reference.items():
        x = few_step_sample(f, x_T, steps=k, generator=torch.Generator().manual_seed(seed))
        out[k] = (x.double() - ref.double()).norm(dim=1).mean().item()
    return out

"""Part 1 helpers: Monte Carlo estimates, Gaussian sampling and densities, KL divergences, the ELBO.

Book: Part 1 (Background). Names follow book/notation.md: ``var`` is a variance sigma^2, ``std`` a
standard deviation sigma, ``logvar`` is log sigma^2 (how encoders output a variance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from diffusion_tutorial.checks import check_float_tensor, check_int_in_range, check_positive_int

__all__ = [
    "MonteCarloEstimate",
    "mc_mean",
    "mc_variance",
    "mc_expectation",
    "sample_gaussian",
    "reparameterize",
    "gaussian_log_prob",
    "kl_gaussian",
    "kl_diag_gaussian",
    "kl_monte_carlo",
    "kl_gaussian_monte_carlo",
    "elbo_gaussian_encoder",
]

_LOG_2PI = math.log(2 * math.pi)


class MonteCarloEstimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (the standard deviation of the estimate)."""

    estimate: torch.Tensor
    std_error: torch.Tensor

    def interval(self, z: float = 1.96) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal-approximation interval ``estimate -/+ z * std_error`` (95% for z = 1.96)."""
        return self.estimate - z * self.std_error, self.estimate + z * self.std_error


def _check_samples(name: str, values: torch.Tensor, dim: int, min_n: int) -> int:
    check_float_tensor(name, values)
    if values.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension holding the samples")
    check_int_in_range("dim", dim, -values.ndim, values.ndim - 1)
    if values.shape[dim] < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples along dim {dim}")
    return values.shape[dim]


def _check_positive(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise unless ``x`` is a float tensor with every entry > 0 (a variance or a std)."""
    check_float_tensor(name, x)
    if not (x > 0).all():
        raise ValueError(f"{name} must be > 0 everywhere (a variance or std), got min {x.min()}")
    return x


def _check_broadcast(**tensors: torch.Tensor) -> tuple[int, ...]:
    """Return the broadcast shape of the named tensors, or raise ``ValueError`` naming them."""
    try:
        return tuple(torch.broadcast_shapes(*(t.shape for t in tensors.values())))
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in tensors.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def mc_mean(values: torch.Tensor, dim: int = 0) -> MonteCarloEstimate:
    """Sample mean (1/n) sum_i f(x_i) and its standard error s / sqrt(n).

    ``values`` holds f(x_i) for independent draws x_i along ``dim``; ``s`` is the unbiased sample
    standard deviation. Book: Expectation and variance, eqs. (eq-mc-estimator), (eq-mc-stderr).
    """
    n = _check_samples("values", values, dim, 2)
    mean = values.mean(dim)
    std_error = values.std(dim, correction=1) / math.sqrt(n)  # std of the mean, not a variance
    return MonteCarloEstimate(mean, std_error)


def mc_variance(values: torch.Tensor, dim: int = 0) -> MonteCarloEstimate:
    """Unbiased sample variance s^2 = sum_i (x_i - xbar)^2 / (n - 1) and its standard error.

    The standard error uses Var[s^2] = (m_4 - (n - 3) / (n - 1) s^4) / n with the plug-in fourth
    central moment m_4. Book: Expectation and variance, eq. (eq-variance).
    """
    n = _check_samples("values", values, dim, 4)
    centred = values - values.mean(dim, keepdim=True)
    var = centred.pow(2).sum(dim) / (n - 1)
    m4 = centred.pow(4).mean(dim)
    var_of_var = (m4 - (n - 3) / (n - 1) * var.pow(2)) / n
    return MonteCarloEstimate(var, var_of_var.clamp_min(0).sqrt())


def mc_expectation(
    f: Callable[[torch.Tensor], torch.Tensor],
    sample: Callable[[int, torch.Generator | None], torch.Tensor],
    n: int,
    generator: torch.Generator | None = None,
) -> MonteCarloEstimate:
    """Monte Carlo estimate of E_p[f(X)] ~= (1/n) sum_i f(x_i), x_i ~ p, with its standard error.

    ``sample(n, generator)`` returns n draws stacked along dim 0; ``f`` maps them to (n, ...).
    Book: Expectation and variance, eq. (eq-mc-estimator).
    """
    check_positive_int("n", n)
    return mc_mean(f(sample(n, generator)), dim=0)


def sample_gaussian(
    mu: torch.Tensor,
    std: torch.Tensor,
    sample_shape: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw z = mu + std * eps with eps ~ N(0, I): a sample of N(mu, std^2), differentiable in both.

    Note ``std`` is the standard deviation sigma, not the variance sigma^2. Returns shape
    ``sample_shape + broadcast(mu, std).shape``. Book: Reparameterization trick, eq. (eq-reparam-gaussian).
    Kingma & Welling 2014, sec. 2.4.
    """
    check_float_tensor("mu", mu)
    _check_positive("std", std)
    shape = tuple(sample_shape) + _check_broadcast(mu=mu, std=std)
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + std * eps  # (*sample_shape, *event_shape)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    sample_shape: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw z = mu + exp(logvar / 2) * eps: the VAE encoder's sample, with std = exp(logvar / 2).

    Book: Reparameterization trick, eq. (eq-reparam-gaussian). Kingma & Welling 2014, sec. 2.4.
    """
    check_float_tensor("logvar", logvar)
    return sample_gaussian(mu, torch.exp(0.5 * logvar), sample_shape, generator)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, var) = -0.5 * (log(2 pi var) + (x - mu)^2 / var).

    ``var`` is the variance sigma^2. Sum over event dimensions for a diagonal Gaussian.
    Book: Expectation and variance, eq. (eq-gaussian-density).
    """
    check_float_tensor("x", x)
    check_float_tensor("mu", mu)
    _check_positive("var", var)
    _check_broadcast(x=x, mu=mu, var=var)
    return -0.5 * (_LOG_2PI + torch.log(var) + (x - mu).pow(2) / var)


def kl_gaussian(
    mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor, var_p: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mu_q, var_q) || N(mu_p, var_p)).

    = 0.5 * (log(var_p / var_q) + (var_q + (mu_q - mu_p)^2) / var_p - 1), with variances (not stds).
    Book: KL divergence, eq. (eq-kl-gauss-1d). Kingma & Welling 2014, appendix B.
    """
    for name, m in (("mu_q", mu_q), ("mu_p", mu_p)):
        check_float_tensor(name, m)
    _check_positive("var_q", var_q)
    _check_positive("var_p", var_p)
    _check_broadcast(mu_q=mu_q, var_q=var_q, mu_p=mu_p, var_p=var_p)
    return 0.5 * (torch.log(var_p) - torch.log(var_q) + (var_q + (mu_q - mu_p).pow(2)) / var_p - 1)


def kl_diag_gaussian(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    mu_p: torch.Tensor,
    var_p: torch.Tensor,
    event_dims: int = 1,
) -> torch.Tensor:
    """KL between diagonal Gaussians: :func:`kl_gaussian` summed over the last ``event_dims`` dims.

    Independent coordinates make the KL additive. Book: KL divergence, eq. (eq-kl-gauss-diag).
    """
    kl = kl_gaussian(mu_q, var_q, mu_p, var_p)
    check_int_in_range("event_dims", event_dims, 0, kl.ndim)
    if event_dims == 0:
        return kl
    return kl.sum(dim=tuple(range(-event_dims, 0)))  # (batch_shape)


def kl_monte_carlo(log_q: torch.Tensor, log_p: torch.Tensor, dim: int = 0) -> MonteCarloEstimate:
    """Monte Carlo KL(q || p) ~= (1/n) sum_i [log q(z_i) - log p(z_i)] for z_i ~ q.

    ``log_q`` and ``log_p`` are the two log-densities evaluated at the same draws from q.
    Book: KL divergence, eq. (eq-kl-mc).
    """
    check_float_tensor("log_q", log_q)
    check_float_tensor("log_p", log_p)
    if log_q.shape != log_p.shape:
        raise ValueError(
            f"log_q and log_p must have the same shape, got {tuple(log_q.shape)} "
            f"and {tuple(log_p.shape)}"
        )
    return mc_mean(log_q - log_p, dim=dim)


def kl_gaussian_monte_carlo(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    mu_p: torch.Tensor,
    var_p: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
) -> MonteCarloEstimate:
    """Elementwise Monte Carlo estimate of KL(N(mu_q, var_q) || N(mu_p, var_p)) from n draws of q.

    An oracle for :func:`kl_gaussian`. Book: KL divergence, eq. (eq-kl-mc).
    """
    check_positive_int("n", n)
    _check_positive("var_q", var_q)
    z = sample_gaussian(mu_q, var_q.sqrt(), (n,), generator)  # (n, *shape)
    return kl_monte_carlo(gaussian_log_prob(z, mu_q, var_q), gaussian_log_prob(z, mu_p, var_p))


def elbo_gaussian_encoder(
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)), q = N(mu, exp(logvar)), per example.

    ``mu`` and ``logvar`` have shape (B, D). ``log_likelihood(x, z)`` takes x (B, ...) and z of
    shape (S, B, D) and returns log p(x | z) of shape (S, B). The expectation is a Monte Carlo
    average over ``n_samples`` reparameterized draws, so it is differentiable in ``mu`` and
    ``logvar``; the KL to the standard normal prior is in closed form. Returns shape (B,).
    Book: Evidence lower bound, eq. (eq-elbo-recon-kl). Kingma & Welling 2014, eq. 10.
    """
    check_float_tensor("x", x)
    check_positive_int("n_samples", n_samples)
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must both have shape (B, D), got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    if x.shape[0] != mu.shape[0]:
        raise ValueError(f"x and mu must share the batch size, got {x.shape[0]} and {mu.shape[0]}")
    z = reparameterize(mu, logvar, (n_samples,), generator)  # (S, B, D)
    log_lik = log_likelihood(x, z)  # (S, B)
    if log_lik.shape != z.shape[:2]:
        raise ValueError(f"log_likelihood must return shape (S, B) = {tuple(z.shape[:2])}")
    kl = kl_diag_gaussian(mu, logvar.exp(), torch.zeros_like(mu), torch.ones_like(mu))  # (B,)
    return log_lik.mean(0) - kl

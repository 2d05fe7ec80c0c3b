"""Latent-variable models for the ELBO chapter: an exact linear-Gaussian model and an MNIST VAE.

Book: Part 1, Evidence lower bound. Kingma & Welling 2014; Rezende et al. 2014.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_tutorial.background.probability import (
    elbo_gaussian_encoder,
    gaussian_log_prob,
    kl_diag_gaussian,
)
from diffusion_tutorial.checks import check_float_in_range, check_float_tensor, check_positive_int
from diffusion_tutorial.runtime import tqdm

__all__ = [
    "LinearGaussianModel",
    "VAE",
    "bernoulli_log_likelihood",
    "vae_elbo",
    "train_vae",
    "sample_vae",
]


@dataclass
class LinearGaussianModel:
    """p(z) = N(0, I_k), p(x | z) = N(W z + b, noise_var I_d): a latent model with exact log p(x).

    ``W`` has shape (d, k), ``b`` shape (d,), ``noise_var`` is the observation *variance*.
    Book: Evidence lower bound, eqs. (eq-lg-model), (eq-lg-evidence), (eq-lg-posterior).
    Bishop 2006, sec. 12.2 (probabilistic PCA).
    """

    W: torch.Tensor
    b: torch.Tensor
    noise_var: float

    def __post_init__(self) -> None:
        check_float_tensor("W", self.W)
        check_float_tensor("b", self.b)
        check_float_in_range("noise_var", self.noise_var, 0.0, low_open=True)
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[0],):
            raise ValueError(
                f"W must have shape (d, k) and b shape (d,), got {tuple(self.W.shape)} "
                f"and {tuple(self.b.shape)}"
            )

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (x, z) from the joint: z ~ N(0, I), x = W z + b + sqrt(noise_var) * eps."""
        check_positive_int("n", n)
        d, k = self.W.shape
        opts = {"dtype": self.W.dtype, "device": self.W.device, "generator": generator}
        z = torch.randn(n, k, **opts)  # (n, k)
        eps = torch.randn(n, d, **opts)  # (n, d)
        return z @ self.W.T + self.b + self.noise_var**0.5 * eps, z

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) = sum_j log N(x_j; (W z + b)_j, noise_var).

        ``x`` (B, d) and ``z`` (..., B, k) -> (..., B). Book: eq. (eq-lg-model).
        """
        mean = z @ self.W.T + self.b  # (..., B, d)
        var = torch.full_like(mean, self.noise_var)
        return gaussian_log_prob(x, mean, var).sum(-1)

    def elbo(self, x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Exact ELBO for q(z | x) = N(mu, diag(var)): E_q[log p(x | z)] - KL(q || N(0, I)).

        E_q[(x - W z - b)_j^2] = (x - W mu - b)_j^2 + sum_i W_ji^2 var_i, so no sampling is needed.
        ``x`` (B, d), ``mu`` and ``var`` (B, k) -> (B,). Book: eq. (eq-elbo-recon-kl).
        """
        resid = x - mu @ self.W.T - self.b  # (B, d)
        spread = var @ (self.W**2).T  # (B, d)
        d = self.W.shape[0]
        log_lik = -0.5 * (d * math.log(2 * math.pi * self.noise_var))
        log_lik = log_lik - 0.5 * (resid**2 + spread).sum(-1) / self.noise_var  # (B,)
        return log_lik - kl_diag_gaussian(mu, var, torch.zeros_like(mu), torch.ones_like(var))

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x) = N(b, W W^T + noise_var I). Book: eq. (eq-lg-evidence)."""
        d = self.W.shape[0]
        eye = torch.eye(d, dtype=self.W.dtype, device=self.W.device)
        return torch.distributions.MultivariateNormal(
            self.b, self.W @ self.W.T + self.noise_var * eye
        )

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for x of shape (B, d) -> (B,). Book: eq. (eq-lg-evidence)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z | x) = N(m, S), S = (I + W^T W / noise_var)^-1, m = S W^T (x - b) / noise_var.

        Returns the means (B, k) and the shared covariance (k, k). Book: eq. (eq-lg-posterior).
        """
        k = self.latent_dim
        eye = torch.eye(k, dtype=self.W.dtype, device=self.W.device)
        cov = torch.linalg.inv(eye + self.W.T @ self.W / self.noise_var)  # (k, k)
        mean = (x - self.b) @ self.W @ cov / self.noise_var  # (B, k); cov is symmetric
        return mean, cov


class VAE(nn.Module):
    """MLP VAE for 28x28 images: Gaussian q(z | x), Bernoulli decoder p(x | z), prior N(0, I).

    Book: Evidence lower bound, eq. (eq-vae-objective). Kingma & Welling 2014, appendix C.
    """

    def __init__(self, latent_dim: int = 16, hidden: int = 400, image_size: int = 28) -> None:
        super().__init__()
        check_positive_int("latent_dim", latent_dim)
        check_positive_int("hidden", hidden)
        check_positive_int("image_size", image_size)
        self.latent_dim = latent_dim
        self.image_size = image_size
        pixels = image_size * image_size
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)  # the encoder outputs log sigma^2
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, pixels)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, H, W) in [0, 1] -> (mu, logvar), each (B, latent_dim)."""
        h = self.encoder(x)  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (..., latent_dim) -> Bernoulli logits (..., 1, H, W)."""
        logits = self.decoder(z)  # (..., H * W)
        return logits.unflatten(-1, (1, self.image_size, self.image_size))  # (..., 1, H, W)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x | z) = sum_pixels [x log p + (1 - x) log(1 - p)], p = sigmoid(logits).

    A log-probability (its exponential sums to 1 over images) only for binary ``x`` in {0, 1}; for
    grey levels in (0, 1) the same formula is a negative binary cross-entropy, not a log-likelihood.
    ``x`` (B, 1, H, W) in [0, 1]; ``logits`` (..., B, 1, H, W) -> (..., B).
    Book: Evidence lower bound, eq. (eq-vae-objective).
    """
    x = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(-3).sum(-1)


def vae_elbo(
    model: VAE, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)) at images x (B, 1, H, W) -> (B,).

    A lower bound on log p(x) in nats when x is binary (binarise grey levels first, e.g. with
    ``torch.bernoulli``); for grey levels in [0, 1] it is the same formula but bounds no likelihood.
    Book: Evidence lower bound, eqs. (eq-elbo-recon-kl), (eq-vae-objective).
    """
    check_float_tensor("x", x)
    if x.min() < 0 or x.max() > 1:
        raise ValueError("x must be scaled to [0, 1] for a Bernoulli decoder (use (x + 1) / 2)")
    mu, logvar = model.encode(x)  # (B, D) each

    def log_likelihood(x_: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(x_, model.decode(z))  # (S, B)

    return elbo_gaussian_encoder(x, mu, logvar, log_likelihood, n_samples, generator)


def train_vae(
    model: VAE,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Maximise the mean ELBO with Adam on random minibatches of ``images`` (N, 1, H, W) in [0, 1].

    Returns the minibatch mean ELBO (nats per image) at every step. Book: Evidence lower bound.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_float_in_range("lr", lr, 0.0, low_open=True)
    check_float_tensor("images", images)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in tqdm(range(steps), desc="VAE", disable=not progress):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[idx]  # (B, 1, H, W)
        elbo = vae_elbo(model, x, generator=generator).mean()
        optimizer.zero_grad(set_to_none=True)
        (-elbo).backward()
        optimizer.step()
        history.append(elbo.item())
    model.eval()
    return history


@torch.no_grad()
def sample_vae(model: VAE, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoder means pi(z) = sigmoid(decode(z)) for z ~ N(0, I), shape (n, 1, H, W).

    These are pixel probabilities, not samples of the model: a sample is
    ``torch.bernoulli(sample_vae(...), generator=...)``. Book: Evidence lower bound.
    """
    check_positive_int("n", n)
    p = next(model.parameters())
    z = torch.randn(n, model.latent_dim, generator=generator, dtype=p.dtype, device=p.device)
    return torch.sigmoid(model.decode(z))  # (n, 1, H, W)

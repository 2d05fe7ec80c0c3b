"""Evaluation: the MNIST classifier behind MNIST-FID, sample-quality metrics, and likelihoods.

``evaluation.likelihood`` computes log p(x_0) of the probability-flow ODE and bits per
dimension (Part 4, Scores, SDEs and the probability-flow ODE); its functions are re-exported here.

Book: Example: DDPM (measuring sample quality).
"""

from diffusion_tutorial.evaluation.likelihood import (
    LikelihoodResult,
    bits_per_dim,
    dequantize,
    ode_likelihood,
)

__all__ = ["LikelihoodResult", "ode_likelihood", "bits_per_dim", "dequantize"]

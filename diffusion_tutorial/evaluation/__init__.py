"""Evaluation: the MNIST classifier behind MNIST-FID, and sample-quality metrics.

Book: Example: DDPM (measuring sample quality); Evaluating samples (Reference; FID, KID, the floor).
"""

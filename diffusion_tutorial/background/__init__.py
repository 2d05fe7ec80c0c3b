"""Part 1 (Background): Monte Carlo estimates, Gaussians, KL divergences, ELBOs and a small VAE."""

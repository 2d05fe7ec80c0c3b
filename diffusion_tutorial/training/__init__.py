"""Training: the configuration, the loop, checkpoints, the EMA of the weights and the command line.

``python -m diffusion_tutorial.train --help`` lists the options. Book: Example: DDPM (training).
"""

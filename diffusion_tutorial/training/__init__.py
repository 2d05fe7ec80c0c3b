"""Training: the configuration, the loop, checkpoints, the EMA of the weights and the command line.

``config`` (TrainConfig, the one source of every option) · ``build`` (data, network, start
weights) · ``step`` (one step of Algorithm 1 and the learning rate, shared by ``loop`` and the
toy ``fit`` of ``toy``) · ``setup`` (a run's checks and training objects) · ``loop`` (the
optimisation) · ``checkpoints`` (the run folder: checkpoint, loss log, resume and overwrite
rules) · ``lock`` (one run at a time per folder) · ``outputs`` (sample grids, exported
weights) · ``ema`` · ``cli``.
``python -m diffusion_tutorial.train --help`` lists the options.

Book: Example: DDPM (Part 2).
"""

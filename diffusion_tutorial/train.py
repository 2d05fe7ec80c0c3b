"""``python -m diffusion_tutorial.train``: the training command (see :mod:`diffusion_tutorial.training.cli`)."""

from diffusion_tutorial.training.cli import main

if __name__ == "__main__":
    main()

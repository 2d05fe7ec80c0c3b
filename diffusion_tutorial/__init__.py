"""diffusion_tutorial: the package behind *Diffusion Models, Step by Step*.

Import it as ``import diffusion_tutorial as dt``; each submodule is reachable as an attribute
(``dt.data``, ``dt.plotting``, ...), and the most used functions are re-exported here.
Every function's docstring names the chapter that derives it.
"""

from . import checks, data, plotting, runtime
from .checks import expand_like
from .data import data_root, mnist, toy_data
from .runtime import default_device, fast_or_full, is_fast

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # submodules
    "checks",
    "data",
    "plotting",
    "runtime",
    # re-exports
    "expand_like",
    "data_root",
    "mnist",
    "toy_data",
    "default_device",
    "fast_or_full",
    "is_fast",
]

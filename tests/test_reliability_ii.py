"""Reliability II (issue 23): hostile inputs to the sampler time grid end in clear errors.

The other cases of the issue are tested beside their modules (test_pretrained, test_metrics,
test_sweep, test_unet, test_guidance, test_inverse).
"""

from __future__ import annotations

import pytest
import torch

import diffusion_tutorial as dt
from diffusion_tutorial.samplers.common import resolve_timesteps

SCHED = dt.linear_schedule(50)


@pytest.mark.parametrize(
    ("grid", "error", "match"),
    [
        (["4", "2", "0"], TypeError, "integer book times.*str.*'4'"),  # "too many dimensions 'str'"
        ([4.0, 2.0, 0.0], TypeError, "integer book times.*float"),
        ([True, 1, 0], TypeError, "integer book times.*bool"),
        ([2**70, 1, 0], ValueError, r"from <= 50 to 0.*1180591620717411303424"),  # "Overflow ..."
        ([-(2**70), 1, 0], ValueError, "strictly decreasing"),
    ],
)
def test_timesteps_that_are_not_book_times_are_refused_clearly(grid, error, match):
    with pytest.raises(error, match=match):
        resolve_timesteps(lambda schedule, steps: grid, SCHED, 2)


def test_a_list_of_ints_and_an_int64_tensor_are_still_grids():
    assert resolve_timesteps(lambda s, n: [40, 20, 0], SCHED, 2) == [40, 20, 0]
    assert resolve_timesteps(lambda s, n: torch.tensor([40, 20, 0]), SCHED, 2) == [40, 20, 0]


@pytest.mark.parametrize("steps", ["5", 2**70, 5.0])
def test_steps_that_are_not_small_ints_are_refused_by_name(steps):
    x_T = torch.zeros(2, 1, 4, 4)
    with pytest.raises((TypeError, ValueError), match="steps must be"):
        dt.ddim_sample(lambda x, t: torch.zeros_like(x), SCHED, x_T, steps=steps, progress=False)


def test_a_list_of_integer_scalar_tensors_is_a_grid_and_of_float_ones_is_not():
    grid = list(torch.tensor([40, 20, 0]))  # 0-d int64 tensors
    assert resolve_timesteps(lambda s, n: grid, SCHED, 2) == [40, 20, 0]
    with pytest.raises(TypeError, match="integer book times"):
        resolve_timesteps(lambda s, n: list(torch.tensor([40.0, 20.0, 0.0])), SCHED, 2)

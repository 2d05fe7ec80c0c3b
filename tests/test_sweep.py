"""The committed sampler benchmark (package data) loads, is consistent, and its x_T is reproducible."""

from __future__ import annotations

import pytest
import torch

from diffusion_tutorial.evaluation import sweep

KEYS = {"seed", "n", "sampler", "label", "nfe", "fid", "kid", "floor_fid", "floor_kid", "seconds"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return sweep.sweep_results()


def test_rows_have_every_field_and_one_line_per_run(rows):
    assert rows, "the committed benchmark is empty"
    for r in rows:
        assert KEYS <= r.keys(), r
        assert r["fid"] >= 0 and r["seconds"] > 0 and r["nfe"] >= 1
    runs = [(r["seed"], r["n"], r["sampler"]) for r in rows]
    assert len(runs) == len(set(runs)), "a run appears twice"


def test_the_floor_is_one_number_per_draw(rows):
    # Every sampler of a draw is compared with the same reference and the same floor.
    for seed in {r["seed"] for r in rows}:
        floors = {(r["n"], r["floor_fid"], r["floor_kid"]) for r in rows if r["seed"] == seed}
        assert len({n for n, _, _ in floors}) == len(floors), floors


def test_sweep_fids_and_errors(rows):
    sampler = rows[0]["sampler"]
    fids = sweep.sweep_fids(rows, sampler)
    assert fids and all(isinstance(v, float) for v in fids.values())
    with pytest.raises(KeyError, match="not in the results"):
        sweep.sweep_fids(rows, "no-such-sampler")
    assert sweep.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert sweep.mean_sd([5.0]) == (5.0, 0.0)


def test_stored_samples_are_images_from_the_runs(rows):
    samples = sweep.sweep_samples(0)
    assert set(samples) <= {r["sampler"] for r in rows if r["seed"] == 0}
    for x in samples.values():
        assert x.shape[1:] == (1, 28, 28) and x.min() >= -1 and x.max() <= 1


def test_x_T_is_the_benchmarks_draw():
    # bench/mnist_sweep.py draws x_T = randn((n, 1, 28, 28)) from Generator().manual_seed(seed).
    x = sweep.sweep_x_T(1, n=8)
    torch.testing.assert_close(
        x, torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    )
    assert not torch.equal(x, sweep.sweep_x_T(2, n=8))

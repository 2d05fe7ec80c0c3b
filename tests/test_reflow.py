"""training.reflow: the pairs' noise, the pair files, and a resumable reflow fine-tune.

Oracles: the pairs' x_T re-drawn from the seed equals the stored draw; a fine-tune interrupted
and resumed equals one run straight through; the exported card records the method. Each test
names the bug it was seen to catch (injected in a scratch edit, watched go red, reverted).
"""

from __future__ import annotations

import dataclasses

import torch

import diffusion_tutorial as dt
from diffusion_tutorial.training import reflow

from .conftest import tiny_unet_config


def _tiny_flow_file(path):
    # the tests' tiny U-Net at MNIST's size (the pairs are 28x28), predicting a velocity
    config = dataclasses.replace(tiny_unet_config(), image_size=28, prediction="velocity")
    net = dt.UNet(config)
    dt.pretrained.save(path, net, schedule={"name": "linear", "T": 1000}, note="test")
    return path


def _write_shards(folder, shards, n=6):
    folder.mkdir()
    for k in shards:
        x_0 = torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(k)) * 2 - 1
        torch.save({"seed": reflow.PAIR_SEED + k, "x_0": x_0.half()}, folder / f"shard{k:03d}.pt")


def test_pairs_noise_is_the_seeded_draw_and_pairs_keep_rows_together(tmp_path):
    """x_T of shard k is randn from seed 100,000 + k, whatever order the files load in.

    Caught: the seed read as the shard index (every shard's x_T the same draw), and x_0 sorted
    apart from x_T.
    """
    _write_shards(tmp_path / "pairs", [3, 1])
    x_T, x_0 = reflow.load_pairs(tmp_path / "pairs")
    assert x_T.shape == x_0.shape == (12, 1, 28, 28)
    g = torch.Generator().manual_seed(reflow.PAIR_SEED + 1)
    assert torch.equal(x_T[:6], torch.randn((6, 1, 28, 28), generator=g))  # shard 1 first
    stored = torch.load(tmp_path / "pairs" / "shard003.pt", weights_only=True)["x_0"].float()
    assert torch.equal(x_0[6:], stored)
    assert not torch.equal(x_T[:6], x_T[6:])


def test_resumed_reflow_equals_an_uninterrupted_run_and_the_card_says_reflow(tmp_path):
    """4 steps straight through == 2 steps, stop, resume for 2 more (same weights, bit for bit).

    Caught: the flow-time generator's state not restored on resume, dropout's stream re-seeded
    instead of restored, and the step counter not restored (the resumed run trains 4 more).
    """
    _write_shards(tmp_path / "pairs", [0, 1])
    init = str(_tiny_flow_file(tmp_path / "init.safetensors"))
    common = ["train", "--pairs", str(tmp_path / "pairs"), "--init", init, "--batch-size", "4"]
    common += ["--warmup-steps", "1", "--checkpoint-every", "2", "--log-every", "1"]
    reflow.main([*common, "--steps", "4", "--out", str(tmp_path / "a")])
    reflow.main([*common, "--steps", "4", "--stop-at", "2", "--out", str(tmp_path / "b")])
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2
    export = str(tmp_path / "b.safetensors")
    reflow.main([*common, "--steps", "4", "--out", str(tmp_path / "b"), "--export", export])
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for name, w in a["net"].items():
        assert torch.equal(w, b["net"][name]), name
    assert [r[:2] for r in a["rows"]] == [r[:2] for r in b["rows"]]
    card = dt.pretrained.card_file(export)
    assert card["few_step"]["method"] == "reflow"
    assert card["init"]["from"] == init and card["steps"] == 4
    net, _ = dt.pretrained.load_file(export)
    assert net.config.prediction == "velocity"


def test_reflow_times_visit_the_samplers_grids_as_often_as_drawn():
    """grid_fraction = 1: only s = i / k of the 1-, 2- and 4-step grids, k equally likely, so
    P(0) = 7/12, P(1/2) = 1/4, P(1/4) = P(3/4) = 1/12; grid_fraction = 0: uniform on the covered
    range. Caught: i = ceil(u k) (s = 1 appears, never asked by a sampler), and the grid times
    drawn when the coin says uniform.
    """
    _, schedule = dt.pretrained.load("mnist-flow")
    g = torch.Generator().manual_seed(0)
    s = reflow.reflow_times(60_000, schedule, grid_fraction=1.0, generator=g)
    values, counts = s.unique(return_counts=True)
    assert values.tolist() == [0.0, 0.25, 0.5, 0.75]
    freq = (counts / s.numel()).tolist()  # binomial sd < 0.002 at n = 60,000
    for got, want in zip(freq, [7 / 12, 1 / 12, 1 / 4, 1 / 12], strict=True):
        assert abs(got - want) < 0.01
    u = reflow.reflow_times(60_000, schedule, grid_fraction=0.0, generator=g)
    lo, hi = dt.core.flow_matching.flow_time_range(schedule)
    assert lo <= u.min() and u.max() <= hi and abs(u.mean() - (lo + hi) / 2) < 0.01
    half = reflow.reflow_times(60_000, schedule, grid_fraction=0.5, generator=g)
    on_grid = torch.isin(half, torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64))
    assert abs(on_grid.double().mean() - 0.5) < 0.01
    try:
        reflow.reflow_times(4, schedule, grid_fraction=1.5)
    except ValueError as err:
        assert "grid_fraction" in str(err)
    else:
        raise AssertionError("grid_fraction = 1.5 was accepted")

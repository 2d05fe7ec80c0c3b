"""Tests for the training loop: exact resumption, time limit, export, CLI and DDP on 2 CPU processes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_tutorial import pretrained
from diffusion_tutorial.training.cli import parse_args
from diffusion_tutorial.training.loop import (
    TrainConfig,
    _autocast_dtype,
    batch_indices,
    learning_rate,
    train,
)

from .conftest import ROOT, mnist_available

needs_mnist = pytest.mark.skipif(not mnist_available(), reason="MNIST files not found offline")
# MNIST runs read 60,000 images and sample a grid: ~20 s each on 2 cores, so they are slow tests.
slow_mnist = [needs_mnist, pytest.mark.slow]


def toy_config(out: Path, **kw) -> TrainConfig:
    base = dict(
        dataset="two_moons",
        toy_size=256,
        steps=6,
        batch_size=32,
        warmup_steps=2,
        sample_every=0,
        checkpoint_every=0,
        log_every=1,
        out_dir=str(out),
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def mnist_config(out: Path, **kw) -> TrainConfig:
    # The tiny U-Net has dropout 0.1, so resumption must also restore the global CPU RNG state.
    return toy_config(out, dataset="mnist", model="tiny", batch_size=8, **kw)


@pytest.mark.parametrize("step", [0, 5, 12])
def test_batches_of_an_epoch_form_a_permutation(step):
    # n = 50, batch 10: 5 batches per epoch; the union of an epoch's batches is every index once.
    epoch_start = step - step % 5
    idx = torch.cat([batch_indices(s, 50, 10, seed=3) for s in range(epoch_start, epoch_start + 5)])
    assert torch.equal(idx.sort().values, torch.arange(50))
    assert torch.equal(batch_indices(step, 50, 10, seed=3), batch_indices(step, 50, 10, seed=3))


@pytest.mark.parametrize("make", [toy_config, pytest.param(mnist_config, marks=slow_mnist)])
@pytest.mark.parametrize("conditional", [False, True])
def test_resume_gives_the_same_losses(tmp_path, make, conditional):
    # Exact equality (no tolerance): on CPU the resumed run must replay the very same arithmetic.
    if conditional and make is toy_config:
        pytest.skip("toy sets have no labels")
    whole = train(make(tmp_path / "whole", conditional=conditional))
    first = train(make(tmp_path / "split", conditional=conditional, steps=3))
    second = train(make(tmp_path / "split", conditional=conditional, resume=True))
    assert first.step == 3 and second.step == 6
    assert first.losses + second.losses == whole.losses
    csv_rows = list(csv.DictReader((tmp_path / "split" / "loss.csv").open()))
    assert [float(r["loss"]) for r in csv_rows] == pytest.approx(
        [v for _, v in whole.losses], abs=1e-6
    )
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for key in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key


def test_resume_between_log_rows_averages_only_the_steps_it_ran(tmp_path):
    # Oracle: the per-step losses of an uninterrupted run (log_every=1). A run stopped at step 2
    # and resumed with log_every=3 logs steps 1-2, then step 3 alone, then the mean of steps 4-6.
    per_step = [v for _, v in train(toy_config(tmp_path / "whole")).losses]
    train(toy_config(tmp_path / "split", steps=2, log_every=3))
    resumed = train(toy_config(tmp_path / "split", log_every=3, resume=True))
    assert resumed.losses == [
        (3, pytest.approx(per_step[2])),
        (6, pytest.approx(sum(per_step[3:6]) / 3)),
    ]


def test_cosine_lr_decay_warms_up_then_halves_at_midpoint_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, steps=104, lr_decay="cosine")
    lrs = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up
    assert lrs[4] == pytest.approx(1e-3) and lrs[54] == pytest.approx(5e-4)  # cos(0), cos(pi/2)
    assert all(a > b for a, b in zip(lrs[4:-1], lrs[5:], strict=True)) and lrs[-1] > 0
    assert learning_rate(TrainConfig(lr=1e-3, warmup_steps=4), 90) == 1e-3  # "none": constant
    # A run logs the rate of each step it took, and a resumed run continues the same curve.
    whole = train(toy_config(tmp_path / "whole", lr_decay="cosine"))
    train(toy_config(tmp_path / "split", lr_decay="cosine", steps=3))
    second = train(toy_config(tmp_path / "split", lr_decay="cosine", resume=True))
    assert second.losses == whole.losses[3:]
    run = toy_config(tmp_path, lr_decay="cosine")
    rows = list(csv.DictReader((tmp_path / "split" / "loss.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [learning_rate(run, int(r["step"]) - 1) for r in rows], rel=1e-3
    )  # loss.csv keeps 4 significant digits


@needs_mnist
@pytest.mark.slow
def test_time_limit_stops_cleanly_and_exports(tmp_path):
    cfg = mnist_config(
        tmp_path,
        steps=100,
        sample_every=1000,
        time_limit_min=0.0,
        export=str(tmp_path / "w.safetensors"),
    )
    result = train(cfg)
    assert result.stopped_by_time_limit and result.step == 1
    assert (tmp_path / "checkpoint.pt").exists()
    assert list(tmp_path.glob("samples_*.png"))
    model, schedule = pretrained.load_file(tmp_path / "w.safetensors")
    assert schedule.T == 1000
    ema = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["ema"]["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    meta = pretrained.card_file(tmp_path / "w.safetensors")
    assert meta["steps"] == 1 and meta["parameters"] == model.num_parameters()


@needs_mnist
@pytest.mark.slow
def test_init_starts_from_exported_weights(tmp_path):
    # Run 1 exports its EMA weights (no sample grids: the export must not depend on them); run 2
    # starts from that file and exports after 0 steps, so its EMA must be exactly those weights.
    first = tmp_path / "first.safetensors"
    train(mnist_config(tmp_path / "a", steps=2, export=str(first)))
    second = tmp_path / "second.safetensors"
    train(mnist_config(tmp_path / "b", steps=0, init=str(first), export=str(second)))
    want, _ = pretrained.load_file(first)
    got, _ = pretrained.load_file(second)
    for key, value in want.state_dict().items():
        assert torch.equal(value, got.state_dict()[key]), key
    card = pretrained.card_file(second)  # steps count this run; "init" says where it started
    assert card["steps"] == 0
    assert card["init"] == {
        "from": str(first),
        "sha256": pretrained.sha256_file(first),
        "steps": 2,
        "batch_size": 8,
        "hardware": pretrained.card_file(first)["hardware"],
        "wall_time_s": pretrained.card_file(first)["wall_time_s"],
    }


def test_bad_init_raises(tmp_path):
    with pytest.raises(ValueError, match="init must be one of"):
        train(toy_config(tmp_path, init=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="different network"):
        train(toy_config(tmp_path, init="mnist"))  # the shipped U-Net into a 2-D MLP


def test_bf16_on_cpu_only_when_asked():
    cpu = torch.device("cpu")
    assert _autocast_dtype("bf16", cpu) == torch.bfloat16
    assert _autocast_dtype("auto", cpu) is None and _autocast_dtype("fp16", cpu) is None


def test_toy_run_writes_a_histogram_grid(tmp_path):
    train(toy_config(tmp_path, steps=2, sample_every=2))
    assert (tmp_path / "samples_0000002.png").exists()


def test_cli_arguments_map_to_the_config():
    cfg = parse_args(
        [
            "--dataset",
            "checkerboard",
            "--steps",
            "7",
            "--batch-size",
            "64",
            "--lr",
            "1e-3",
            "--schedule",
            "cosine",
            "--time-limit-min",
            "1.5",
            "--out",
            "x",
            "--resume",
            "--init",
            "mnist",
            "--lr-decay",
            "cosine",
        ]
    )
    assert (cfg.dataset, cfg.steps, cfg.batch_size, cfg.lr, cfg.schedule) == (
        "checkerboard",
        7,
        64,
        1e-3,
        "cosine",
    )
    assert cfg.time_limit_min == 1.5 and cfg.out_dir == "x" and cfg.resume and cfg.init == "mnist"
    assert cfg.lr_decay == "cosine" and parse_args([]).lr_decay == "none"
    assert "--steps 7" in cfg.command


def test_cli_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--dataset",
        "--model",
        "--conditional",
        "--p-uncond",
        "--resume",
        "--init",
        "--lr-decay",
        "--time-limit-min",
        "--sample-every",
        "torchrun",
    ):
        assert option in text


def test_bad_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        train(toy_config(tmp_path, conditional=True))
    with pytest.raises(ValueError, match="schedule"):
        train(toy_config(tmp_path, schedule="quadratic"))
    with pytest.raises(ValueError, match="precision"):
        train(toy_config(tmp_path, precision="fp8"))
    with pytest.raises(ValueError, match="lr_decay must be 'none' or 'cosine'"):
        train(toy_config(tmp_path, lr_decay="linear"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ddp_two_cpu_processes(tmp_path):
    # torchrun with 2 gloo processes: both ranks must agree and rank 0 must log every step.
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not available")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "diffusion_tutorial.train",
        "--dataset",
        "two_moons",
        "--toy-size",
        "256",
        "--steps",
        "4",
        "--batch-size",
        "32",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4

"""Tests for the training command line: options generated from TrainConfig, validated before any
work, exit statuses, and a 2-process DDP run under torchrun."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_tutorial.training.cli import build_parser, main, parse_args
from diffusion_tutorial.training.config import ConfigError, TrainConfig, flag

from .conftest import ROOT
from .test_training import _nan_after, one_thread  # noqa: F401 (fixture)

TOY = ["--dataset", "two_moons", "--toy-size", "256", "--batch-size", "32", "--T", "50"]
QUIET = ["--sample-every", "0", "--no-progress", "--device", "cpu"]


def test_every_config_field_is_an_option_with_its_default_and_help(capsys):
    # One source of truth: each field (but `command`) appears once in --help, and parsing
    # nothing gives back the dataclass defaults.
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "command"]
    for field in fields:
        assert len(re.findall(rf"^  {flag(field)}[ \n]", text, re.M)) == 1, flag(field)
    assert "torchrun" in text and "--overwrite" in text
    defaults = dataclasses.replace(parse_args([]), command="")
    assert defaults == TrainConfig()
    assert len(build_parser()._actions) == len(fields) + 1  # + --help


def test_cli_arguments_map_to_the_config():
    cfg = parse_args(
        [*("--dataset", "checkerboard", "--steps", "7", "--batch-size", "64", "--lr", "1e-3")]
        + [*("--schedule", "cosine", "--time-limit-min", "1.5", "--out", "x", "--resume")]
        + [*("--init", "mnist", "--lr-decay", "cosine", "--grad-clip", "none", "--no-progress")]
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
    assert cfg.grad_clip is None and not cfg.progress and "--steps 7" in cfg.command


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-10"], "--steps"),
        (["--log-every", "0"], "--log-every"),
        (["--checkpoint-every", "-1"], "--checkpoint-every"),
        (["--sample-every", "-1"], "--sample-every"),
        (["--p-uncond", "2"], "--p-uncond"),
        (["--warmup-steps", "-1"], "--warmup-steps"),
        (["--time-limit-min", "-1"], "--time-limit-min"),
        (["--grad-clip", "-1"], "--grad-clip"),
        (["--grad-clip", "0"], "--grad-clip"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--ema-decay", "1"], "--ema-decay"),
        (["--T", "0"], "--T"),
        (["--seed", "-1"], "--seed"),
        (["--dataset", "two_moons", "--model", "tiny"], "--model"),
        (["--dataset", "mnist", "--model", "mlp"], "--model"),
        (["--dataset", "two_moons", "--conditional"], "--conditional"),
        (["--dataset", "two_moons", "--toy-size", "10", "--batch-size", "32"], "--batch-size"),
        (["--dataset", "two_moons", "--model", "mlp", "--export", "w.st"], "--export"),
        (["--resume", "--overwrite"], "--overwrite"),
    ],
)
def test_bad_numbers_and_combinations_exit_2_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(
    "change",
    [{"schedule": "quadratic"}, {"precision": "fp8"}, {"lr_decay": "linear"}, {"steps": 2.5}],
)
def test_the_config_refuses_bad_values_from_python_too(change):
    with pytest.raises((ConfigError, TypeError), match=next(iter(change))):
        TrainConfig(**change)


def test_a_rerun_with_a_bad_option_leaves_the_run_untouched(tmp_path):
    # Before: `--batch-size 0` truncated loss.csv to its header, then failed.
    out = ["--out", str(tmp_path), *QUIET, "--log-every", "1"]
    main([*TOY, "--steps", "2", *out])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for bad in (["--batch-size", "0"], ["--steps", "0"], ["--grad-clip", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main([*TOY, "--steps", "4", *out, "--resume", *bad])
        assert exc.value.code == 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.usefixtures("fake_mnist")
def test_an_unwritable_export_path_fails_before_training(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    export = tmp_path / "a_file" / "w.safetensors"
    argv = ["--dataset", "mnist", "--model", "tiny", "--batch-size", "8", "--T", "50", *QUIET]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--steps", "1", "--out", str(tmp_path / "run"), "--export", str(export)])
    assert exc.value.code == 2 and "--export" in capsys.readouterr().err
    assert not (tmp_path / "run" / "loss.csv").exists()


def test_a_nan_loss_exits_1(tmp_path, monkeypatch, capsys):
    # The loss is NaN at step 2 and logged at step 2: the run stops there with status 1.
    _nan_after(monkeypatch, good_steps=1)
    with pytest.raises(SystemExit) as exc:
        main([*TOY, "--steps", "3", "--log-every", "1", "--out", str(tmp_path), *QUIET])
    assert exc.value.code == 1 and "NaN or inf" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ddp_two_cpu_processes(tmp_path):
    # torchrun with 2 gloo processes: both ranks must agree and rank 0 must log every step;
    # a resumed DDP run continues from the checkpoint (not bitwise: see restore_checkpoint).
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not available")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    args = [*TOY, "--log-every", "1", "--checkpoint-every", "2", *QUIET, "--out", str(tmp_path)]
    for extra in (["--steps", "3"], ["--steps", "4", "--resume"]):
        cmd = [*launch, "-m", "diffusion_tutorial.train", *args, *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


def _no_device(name: str) -> bool:
    kind, _, index = name.partition(":")
    if kind == "mps":
        return not torch.backends.mps.is_available()
    return not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--device", "cuda"], "--device cuda"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "mps"], "--device mps"),
        (["--device", "meta"], "--device must be"),
        (["--T", "100000"], "T must be in 1..8632"),
        (["--T", str(10**12)], "--T"),
    ],
)
def test_a_refused_device_or_T_is_one_error_line_and_exit_2(tmp_path, argv, says, capsys):
    # Before: --device cuda without a GPU and --T 100000 (linear) printed tracebacks.
    if argv[0] == "--device" and argv[1] != "meta" and not _no_device(argv[1]):
        pytest.skip(f"this machine has {argv[1]}")
    with pytest.raises(SystemExit) as exc:
        main([*TOY, "--steps", "1", *QUIET, *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and says in err, err
    assert "Traceback" not in err and len([x for x in err.splitlines() if "error:" in x]) == 1
    assert not (tmp_path / "run").exists()

"""Tests for the run folder: no run is wiped by accident, resume refuses what it cannot continue,
damaged checkpoints give our own error, and SIGKILL (mid-run or mid-write) loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from diffusion_tutorial.files import temp_files
from diffusion_tutorial.training import build
from diffusion_tutorial.training.config import ConfigError, TrainConfig
from diffusion_tutorial.training.loop import train

from .conftest import ROOT, mnist_config, toy_config
from .test_training import one_thread, rows, weights  # noqa: F401 (fixture)


def test_a_folder_that_holds_a_run_needs_resume_or_overwrite(tmp_path):
    train(toy_config(tmp_path, steps=2))
    (tmp_path / "samples_0000002.png").write_bytes(b"a grid")  # (sampling one is slow)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="holds a run.*--resume.*--overwrite"):
        train(toy_config(tmp_path, steps=2))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # --overwrite starts over: same result as a fresh folder, old sample grids gone.
    train(toy_config(tmp_path, steps=1, overwrite=True))
    train(toy_config(tmp_path / "fresh", steps=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "fresh",
        "loss.csv",
        "run.lock",
    ]
    assert (
        rows(tmp_path / "loss.csv")[0]["loss"] == rows(tmp_path / "fresh" / "loss.csv")[0]["loss"]
    )


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no .*checkpoint.pt to resume; pass no --resume"):
        train(toy_config(tmp_path, resume=True))
    assert not (tmp_path / "loss.csv").exists()
    # Killed before its first checkpoint: only loss.csv. The way out is --overwrite.
    (tmp_path / "loss.csv").write_text("step,loss,lr,wall_time_s\n1,0.5,1e-4,0.1\n")
    with pytest.raises(ConfigError, match="to resume; pass --overwrite"):
        train(toy_config(tmp_path, resume=True))
    assert train(toy_config(tmp_path, steps=1, overwrite=True)).step == 1


def test_paths_are_stored_as_text_and_bad_devices_refused(tmp_path):
    assert toy_config(tmp_path).out_dir == str(tmp_path)
    assert TrainConfig(out_dir=tmp_path, dataset="two_moons").out_dir == str(tmp_path)
    with pytest.raises(ConfigError, match="--device"):
        toy_config(tmp_path, device="gpu0")


@pytest.mark.parametrize(
    "change",
    [
        {"dataset": "checkerboard"},
        {"schedule": "cosine"},
        {"T": 40},
        {"lr": 1e-3},
        {"batch_size": 16},
        {"warmup_steps": 3},
        {"grad_clip": None},
        {"seed": 1},
        {"ema_decay": 0.99},
        {"toy_size": 128},
    ],
)
def test_resume_refuses_other_settings_and_says_which(tmp_path, change):
    train(toy_config(tmp_path, steps=2))
    before = (tmp_path / "loss.csv").read_bytes()
    name = "--" + next(iter(change)).replace("_", "-")
    with pytest.raises(ConfigError, match=f"keep them: {name} "):
        train(toy_config(tmp_path, resume=True, **change))
    assert (tmp_path / "loss.csv").read_bytes() == before


def test_resume_may_change_what_does_not_shape_the_run(tmp_path):
    train(toy_config(tmp_path, steps=2))
    result = train(toy_config(tmp_path, resume=True, steps=3, log_every=2, checkpoint_every=1))
    assert result.step == 3


def test_resume_refuses_a_checkpoint_beyond_steps(tmp_path):
    train(toy_config(tmp_path, steps=3))
    with pytest.raises(ConfigError, match="--steps must be >= the checkpoint's step 3"):
        train(toy_config(tmp_path, steps=2, resume=True))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_checkpoint"])
def test_a_damaged_checkpoint_gives_our_own_error(tmp_path, damage):
    train(toy_config(tmp_path, steps=2))
    ckpt = tmp_path / "checkpoint.pt"
    if damage == "garbage":
        ckpt.write_bytes(os.urandom(1000))
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        torch.save({"step": 2}, ckpt)
    with pytest.raises(ConfigError, match="checkpoint.pt is not a .*--overwrite") as exc:
        train(toy_config(tmp_path, resume=True))
    assert "weights_only" not in str(exc.value)


# --- SIGKILL: a child process trains and kills itself at a chosen moment ------------------------

_KILLER = """
import os, signal, sys
import torch
from diffusion_tutorial.training import cli
import diffusion_tutorial.training.step as one_step

torch.set_num_threads(1)
moment, at, calls = sys.argv[1], int(sys.argv[2]), []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if moment == "step":  # inside optimiser step `at`, after the checkpoint before it
    real_loss = one_step.simple_loss
    def simple_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            die()
        return real_loss(*args, **kwargs)
    one_step.simple_loss = simple_loss
else:  # while the `at`-th checkpoint is half written
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        calls.append(1)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == at:
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            die()
    torch.save = save
cli.main(sys.argv[3:])
"""


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "at", "kept_step"), [("step", 10, 8), ("write", 2, 4)])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, moment, at, kept_step):
    # Checkpoints every 4 steps of 12. Killed inside step 10, or while writing the checkpoint
    # of step 8: the checkpoint before still loads, the resumed run ends with exactly the
    # weights and loss rows of an uninterrupted run, and no temp file is left behind.
    args = ["--dataset", "two_moons", "--toy-size", "256", "--batch-size", "32", "--T", "50"]
    args += ["--steps", "12", "--checkpoint-every", "4", "--log-every", "3", "--sample-every", "0"]
    args += ["--warmup-steps", "2", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, moment, str(at), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = tmp_path / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == kept_step
    assert len(temp_files(ckpt)) == (moment == "write")  # the killed writer's temp file
    cfg = dict(steps=12, checkpoint_every=4, log_every=3)
    train(toy_config(tmp_path, resume=True, **cfg))
    train(toy_config(tmp_path / "whole", **cfg))
    assert temp_files(ckpt) == []
    a, b = weights(tmp_path / "whole" / "checkpoint.pt"), weights(ckpt)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["loss"] for r in rows(tmp_path / "loss.csv")] == [
        r["loss"] for r in rows(tmp_path / "whole" / "loss.csv")
    ]


# --- Issue 23, section 1: what the run folder must never lose ------------------------------------


@pytest.mark.usefixtures("fake_mnist")
@pytest.mark.parametrize(
    "name", ["checkpoint.pt", "loss.csv", "samples_0000002.png", "run.lock", "sub/../loss.csv"]
)
def test_export_may_not_replace_a_file_the_run_writes(tmp_path, name):
    # Before: --export <out>/checkpoint.pt made the run "damaged", <out>/loss.csv lost the log.
    train(mnist_config(tmp_path, steps=1))
    (tmp_path / "samples_0000002.png").write_bytes(b"a grid")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="--export .* the run's own"):
        train(mnist_config(tmp_path, steps=2, resume=True, export=str(tmp_path / name)))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.usefixtures("fake_mnist")
def test_export_may_go_into_the_run_folder_under_another_name(tmp_path):
    train(mnist_config(tmp_path, steps=1, export=str(tmp_path / "ema.safetensors")))
    assert (tmp_path / "ema.safetensors").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_overwrite_deletes_only_what_the_run_wrote(tmp_path):
    # Before: --overwrite deleted any samples_*.png, also a reader's own files.
    train(toy_config(tmp_path, steps=2))
    mine = ["samples_best.png", "samples_0001.png", "samples_0000002.png.bak", "notes.txt"]
    for name in [*mine, "samples_0000002.png"]:
        (tmp_path / name).write_bytes(b"kept")
    train(toy_config(tmp_path, steps=1, overwrite=True))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*mine, "checkpoint.pt", "loss.csv", "run.lock"])


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
    ],
    ids=["permissions", "io-error"],
)
def test_a_checkpoint_that_cannot_be_read_is_not_called_damaged(tmp_path, monkeypatch, error):
    # A good checkpoint that cannot be read now (permissions, a failing disk) must not get the
    # advice "pass --overwrite", which deletes it.
    train(toy_config(tmp_path, steps=2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ConfigError, match=error.strerror) as exc:
        train(toy_config(tmp_path, steps=3, resume=True))
    assert "not damaged" in str(exc.value) and "pass --overwrite" not in str(exc.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    "damage", [b"\xff\xfe\x00\x81 not text", b"step,loss\x00,lr\n1,2\n", b"no,header\n1,0.5\n"]
)
def test_a_damaged_loss_log_gives_our_own_error_on_resume(tmp_path, damage):
    # Before: a raw UnicodeDecodeError (or _csv.Error) from the loss log.
    train(toy_config(tmp_path, steps=2))
    (tmp_path / "loss.csv").write_bytes(damage)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="loss.csv is not a readable loss log.*--overwrite"):
        train(toy_config(tmp_path, steps=3, resume=True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("bad", "conditional"),
    [(200, True), (200, False), (10, True), (-1, True)],
    ids=["200-cond", "200-uncond", "null-class-10", "negative"],
)
def test_labels_outside_0_to_9_are_refused_before_the_folder_changes(
    tmp_path, monkeypatch, bad, conditional
):
    # Before: 200 failed at step 1 after the folder was written; 10 (the null class) trained.
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(64) % 10
    labels[37] = bad
    monkeypatch.setattr(build, "mnist_train", lambda: (images, labels))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"labels in 0\.\.9, got values in") as exc:
        train(mnist_config(out, steps=1, conditional=conditional))
    assert str(bad) in str(exc.value) and "--dataset mnist" in str(exc.value)
    assert not out.exists()

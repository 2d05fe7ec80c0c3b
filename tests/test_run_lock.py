"""Tests for the run folder's lock: one run owns a folder while it trains.

Real processes: a run in a child process is held at a gate inside step 3 (after it took the
lock), so the test decides when a second run starts and when the first goes on; no sleeps
decide the outcome.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion_tutorial.training import lock
from diffusion_tutorial.training.cli import main
from diffusion_tutorial.training.config import ConfigError
from diffusion_tutorial.training.lock import LOCK
from diffusion_tutorial.training.loop import train

from .conftest import ROOT, toy_config
from .test_training import one_thread, rows  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(lock.fcntl is None, reason="no fcntl: runs are not locked")

ARGS = ["--dataset", "two_moons", "--toy-size", "256", "--batch-size", "32", "--T", "50"]
ARGS += ["--steps", "6", "--log-every", "1", "--checkpoint-every", "2", "--warmup-steps", "2"]
ARGS += ["--sample-every", "0", "--device", "cpu", "--no-progress"]

# argv: gate, then the command line. The child announces itself (gate.imported.<pid>), waits for
# gate.start, and inside step 3 announces gate.ready.<pid> and waits for gate.go.
_GATED = """
import os, sys, time
from pathlib import Path
import torch
from diffusion_tutorial.training import cli
from diffusion_tutorial.training import step as one_step

torch.set_num_threads(1)
gate, calls, real_loss = sys.argv[1], [], one_step.simple_loss

def wait_for(name):
    while not os.path.exists(gate + name):
        time.sleep(0.01)

def simple_loss(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        Path(f"{gate}.ready.{os.getpid()}").touch()
        wait_for(".go")
    return real_loss(*args, **kwargs)

one_step.simple_loss = simple_loss
Path(f"{gate}.imported.{os.getpid()}").touch()
wait_for(".start")
cli.main(sys.argv[2:])
"""


def _start(gate: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _GATED, str(gate), *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _gated_run(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """A child run in ``out``, started and held inside step 3 (it holds the lock)."""
    gate = tmp_path / "gate"
    proc = _start(gate, out)
    gate.with_name("gate.start").touch()
    ready = gate.with_name(f"gate.ready.{proc.pid}")
    _wait(lambda: ready.exists() or proc.poll() is not None, "the child's step 3")
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    return proc, gate


def _finish(proc: subprocess.Popen, gate: Path) -> tuple[int, str]:
    gate.with_name("gate.go").touch()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_second_run_on_a_live_folder_exits_2_and_the_first_loses_nothing(tmp_path, capsys):
    # Before: `--overwrite` deleted the live run's rows, both runs printed "done" and loss.csv
    # mixed two runs. One child serves the three refused starts (a child costs ~5 s to import).
    out = tmp_path / "run"
    first, gate = _gated_run(tmp_path, out)
    try:
        assert (out / LOCK).read_text().split()[0] == str(first.pid)  # the holder's pid
        held = {p.name: p.read_bytes() for p in out.iterdir()}
        for extra in ([], ["--overwrite"], ["--resume"]):
            with pytest.raises(SystemExit) as exc:
                main([*ARGS, "--out", str(out), *extra])
            err = capsys.readouterr().err
            assert exc.value.code == 2, extra
            assert f"pid {first.pid}" in err and "--overwrite does not" in err, err
            assert "Traceback" not in err
            assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    finally:
        code, child_err = _finish(first, gate)
    assert code == 0, child_err[-2000:]
    # The first run's log and checkpoint are whole: the rows of an uninterrupted run.
    train(toy_config(tmp_path / "alone", steps=6, checkpoint_every=2))
    assert [(r["step"], r["loss"]) for r in rows(out / "loss.csv")] == [
        (r["step"], r["loss"]) for r in rows(tmp_path / "alone" / "loss.csv")
    ]


@pytest.mark.slow
def test_the_kernel_releases_the_lock_of_a_killed_run(tmp_path):
    # SIGKILL runs no clean-up: the lock must still go with the process, so --resume works.
    out = tmp_path / "run"
    first, gate = _gated_run(tmp_path, out)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert (out / LOCK).exists()  # the file stays; only the kernel's lock is gone
    assert train(toy_config(out, steps=6, checkpoint_every=2, resume=True)).step == 6


@pytest.mark.slow  # two children importing torch at once: ~20 s on two busy cores
@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["new", "overwrite"])
def test_two_runs_started_at_the_same_instant_exactly_one_wins(tmp_path, extra):
    # Before: both trained and interleaved their rows. Both children finish importing, then
    # one file releases them at the same moment.
    out, gate = tmp_path / "run", tmp_path / "gate"
    procs = [_start(gate, out, *extra) for _ in range(2)]
    try:
        imported = [gate.with_name(f"gate.imported.{p.pid}") for p in procs]
        _wait(lambda: all(f.exists() for f in imported), "both children to import")
        gate.with_name("gate.start").touch()
        ready = [gate.with_name(f"gate.ready.{p.pid}") for p in procs]
        # Either one child stops (refused) while the other waits in step 3, or both train.
        _wait(
            lambda: all(r.exists() for r in ready) or any(p.poll() is not None for p in procs),
            "one child to win",
        )
        assert not all(r.exists() for r in ready), "both runs train in the same folder"
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, loser_err = loser.communicate(timeout=60)
        assert loser.returncode == 2, loser_err[-2000:]
        assert f"pid {winner.pid}" in loser_err and "Traceback" not in loser_err
    finally:
        gate.with_name("gate.go").touch()
        for p in procs:
            p.communicate(timeout=120)
    assert winner.returncode == 0
    assert [int(r["step"]) for r in rows(out / "loss.csv")] == [1, 2, 3, 4, 5, 6]


def test_a_finished_run_leaves_the_folder_unlocked(tmp_path):
    # In one process too: each train() call releases the lock when it ends, also by an error.
    train(toy_config(tmp_path, steps=1))
    with pytest.raises(Exception, match="holds a run"):
        train(toy_config(tmp_path, steps=1))
    assert train(toy_config(tmp_path, steps=2, resume=True)).step == 2
    assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())


def test_without_fcntl_the_run_goes_on_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    # Windows has no fcntl: the run trains without a lock and says so once.
    monkeypatch.setattr(lock, "fcntl", None)
    assert train(toy_config(tmp_path, steps=1)).step == 1
    assert "no lock" in capsys.readouterr().out
    assert not (tmp_path / LOCK).exists()


def test_a_folder_where_no_lock_file_can_be_made_is_one_clear_error(tmp_path, monkeypatch):
    # A read-only disk: the run cannot write anyway; say so, never advise --overwrite.
    train(toy_config(tmp_path, steps=1))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(lock, "open", read_only, raising=False)
    with pytest.raises(ConfigError, match="run.lock .Read-only file system") as exc:
        train(toy_config(tmp_path, steps=2, resume=True))
    assert "--overwrite" not in str(exc.value)


def test_a_file_system_without_locks_trains_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    assert train(toy_config(tmp_path, steps=1)).step == 1
    assert "No locks available" in capsys.readouterr().out

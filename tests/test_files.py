"""Tests for diffusion_tutorial.files: the atomic writer and its temp files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from diffusion_tutorial.files import atomic_write, check_writable, temp_files


def _dead_pid() -> int:
    """The pid of a process that has exited (a finished child)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"one"))
    atomic_write(path, lambda tmp: tmp.write_bytes(b"two"))
    assert path.read_bytes() == b"two" and temp_files(path) == []
    assert os.listdir(path.parent) == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"old"))

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # even an interrupt cleans up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and temp_files(path) == []


@pytest.mark.skipif(os.name != "posix", reason="liveness of a pid is tested on POSIX only")
def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    dead = tmp_path / f".checkpoint.pt.tmp{_dead_pid()}"
    live = tmp_path / f".checkpoint.pt.tmp{os.getppid()}"  # our parent: alive, maybe writing
    dead.write_bytes(b"killed mid-write")
    live.write_bytes(b"still writing")
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert temp_files(path) == [live] and path.read_bytes() == b"new"


def test_check_writable_names_the_option(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--export: cannot"):
        check_writable(tmp_path / "file" / "w.st", "--export")
    with pytest.raises(ValueError, match="--export must be a file path"):
        check_writable(tmp_path, "--export")
    assert check_writable(tmp_path / "new" / "w.st", "--export").parent.is_dir()
    assert os.listdir(tmp_path / "new") == []

"""Writing files safely: one atomic writer for checkpoints, loss logs and safetensors weights.

A reader (or a resumed run) sees either the old file or the new one, never half of one, even when
the writing process is killed: the bytes go to a temp file beside the target, which is renamed
over the target only once complete. A temp file left by a killed process is removed at the next
write of the same target, so interrupted writes never accumulate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "check_writable", "temp_files"]


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The temp files of ``path``'s writers, live or stale: ``.<name>.tmp<pid>`` beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp*"))


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (POSIX); elsewhere assume it does."""
    if os.name != "posix":
        return True  # no safe liveness test without extra packages: keep the file
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` left by processes that no longer run (killed mid-write)."""
    for tmp in temp_files(path):
        suffix = tmp.name.rsplit(".tmp", 1)[-1]
        if suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix)):
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, then rename it onto ``path``.

    Steps: 1. create the folder; 2. remove temp files of dead writers of the same target;
    3. ``write`` the temp file ``.<name>.tmp<pid>`` (this process's own stale one is reused);
    4. flush it to disk and rename it over ``path`` (atomic on POSIX and Windows). On any error,
    the temp file is removed and the error re-raised; ``path`` is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not overtake the data on a power cut
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | os.PathLike, name: str) -> Path:
    """Raise ``ValueError`` naming the option ``name`` unless a file can be written at ``path``.

    Creates the missing folders (as the real write would) and a throw-away file in the target
    folder, so that a bad path fails before hours of training rather than after.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} must be a file path, but {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.tmp{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{name}: cannot write {path} ({err.strerror or err})") from err
    return path

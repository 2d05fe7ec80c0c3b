"""One run owns its folder: an exclusive lock on ``run.lock`` in the folder, held while it trains.

The lock is ``fcntl.flock`` on an open file, so the operating system releases it when the
process ends in any way, ``kill -9`` included; a stale lock cannot exist. The file holds the
holder's pid (and host) for the message a second run gets. It is never deleted: a run that
deleted it could let a third run lock a new file while the second still holds the old one.

Under ``torchrun`` only rank 0 takes the lock. Where ``fcntl`` does not exist (Windows) a run
says so and trains without a lock: do not start two runs in one folder there.

Book: Example: DDPM (Part 2; the training command, checkpoints and resuming).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType
from typing import IO

from diffusion_tutorial.training.config import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK", "RunLock"]

LOCK = "run.lock"


class RunLock:
    """The lock of the run folder ``out``, taken by :meth:`acquire` and released when the
    ``with`` block that holds this object ends (``enabled=False``: a no-op, for ranks > 0).

    Use: ``with RunLock(out) as lock: ... lock.acquire() ...``; the lock is taken as late as
    possible (after the checks that need no folder) and released however the block ends.
    """

    def __init__(self, out: str | os.PathLike, enabled: bool = True) -> None:
        self.out, self.enabled = Path(out), enabled
        self.path = self.out / LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ConfigError` naming the pid of the run that holds it.

        Opening in append mode never truncates: the holder's pid stays readable until this
        process holds the lock and writes its own.
        """
        if not self.enabled or self._file is not None:
            return
        if fcntl is None:
            print(
                f"note: no lock on {self.out} on this system (no fcntl): do not start a second "
                "run in this folder while this one trains",
                flush=True,
            )
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        except OSError as err:
            raise ConfigError(
                f"--out {self.out}: cannot create the run's lock file {self.path} "
                f"({err.strerror or err}); the run needs a folder it can write"
            ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another open file holds it
            f.seek(0)
            holder = f.read().split()
            f.close()
            who = f"pid {holder[0]}" if holder else "pid unknown"
            who += f" on {holder[1]}" if len(holder) > 1 else ""
            raise ConfigError(
                f"--out {self.out} is in use by another training run ({who}): "
                "wait for it to end or stop it, or choose another --out. --overwrite does not "
                "override a live run"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts)
            f.close()
            print(
                f"note: no lock on {self.out}: its file system refuses one "
                f"({err.strerror or err}); do not start a second run in this folder while this "
                "one trains",
                flush=True,
            )
            return
        f.truncate(0)
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        """Release the lock (closing the file releases it); the file stays."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

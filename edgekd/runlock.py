"""One writer per run directory: an advisory lock (fcntl.flock) on RUN_DIR/.lock.

The process that runs stages holds it for as long as it runs (under torchrun, rank 0 for the
job); a second process is refused at once with the holder's pid, host and start time. The kernel
drops a flock when its process dies, however it dies, so a lock file left by a killed run is
simply taken over (with a warning naming the dead holder). Read-only commands take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from edgekd.errors import RunLockedError
from edgekd.files import writing

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd: int | None = None
        self.took_over: dict | None = None  # the dead holder's record, when the lock was taken over

    def acquire(self) -> RunLock:
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}, running "
                   f"`{holder.get('command')}`") if holder else "another process"
            raise RunLockedError(f"{self.directory} is in use by another edgekd process ({who}); wait for it to "
                                 "finish, or pass --run-dir NEW_DIR for a separate run") from None
        previous = _read(fd)
        if previous:  # the kernel released a lock whose holder died without cleaning up
            self.took_over = previous
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join(["edgekd", *sys.argv[1:]])[:200]}
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # empty, not removed: unlinking a locked file lets two processes lock two inodes
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closes the flock too
        self._fd = None

    def stale_warning(self) -> str | None:
        p = self.took_over
        if not p:
            return None
        state = "no longer running" if p.get("host") != socket.gethostname() or not _alive(int(p.get("pid", 0))) \
            else "still running but no longer holding it"
        return (f"took over the lock of {self.directory} left by pid {p.get('pid')} on {p.get('host')} "
                f"(since {p.get('since')}, {state}); its unfinished stage resumes with --resume")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        data = json.loads(raw) if raw else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}

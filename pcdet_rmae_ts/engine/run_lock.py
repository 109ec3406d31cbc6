"""One run per output folder: a lock file holding the owner's PID and host.

A second run started in the same folder stops at once with a message naming the first; a lock left
by a run that died without cleaning up (kill -9, a crash of the machine) is taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = ".run.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class RunLock:
    """``acquire()`` creates ``<folder>/.run.lock`` atomically; ``release()`` removes it if still ours.

    ``stale_owner`` is set when a dead run's lock was taken over (the caller logs the warning)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.stale_owner: Optional[dict] = None
        self._held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
        self._held = True
        return True

    def acquire(self) -> "RunLock":
        if self._create():
            return self
        owner = _read(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            self.stale_owner = owner
            self.path.unlink(missing_ok=True)
            if self._create():
                return self
            owner = _read(self.path)  # another run took it over first
            pid, host = owner.get("pid"), owner.get("host")
        where = f"PID {pid} on host {host}" if pid else "an unknown process"
        started = f", started {owner['started']}" if owner.get("started") else ""
        raise RunLockedError(
            f"Another run ({where}{started}) is using {self.path.parent}. Wait for it to end or stop it, or "
            f"start this one elsewhere (--extra_tag NAME or --output_dir DIR). If no such run exists (e.g. it ran "
            f"on another host and died), delete {self.path}.")

    def release(self) -> None:
        if self._held and _read(self.path).get("pid") == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass
        self._held = False

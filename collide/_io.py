"""Files: the one atomic writer, the one set of hashing helpers, the code version.

Every file collide writes goes through :func:`atomic_file` (or the row store's
directory swap, which is built on the same rename), so a killed run leaves either the
old file or the new one, never half of one. Every hash that names an input, a config or
the code is made here, so two stages can never disagree about what "the same" means.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from collide.errors import BusyError


def temporary_name(path: Path) -> re.Pattern[str]:
    """The names :func:`atomic_file` gives the temporaries of ``path``, as a pattern: what
    a killed writer may have left, and nothing of another file (``.mnist-targets-...``
    is not a temporary of ``mnist.parquet``)."""
    return re.compile(rf"\.{re.escape(path.stem)}-[0-9a-f]{{8}}{re.escape(path.suffix)}")


def _new_temporary(path: Path) -> Path:
    """A new empty file beside ``path``, created with the process's umask (``mkstemp``'s
    0600 would make every output readable by its owner alone). It keeps the suffix:
    writers that pick a format by it (savefig) still can."""
    while True:
        tmp = path.parent / f".{path.stem}-{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place when the block ends
    without an error, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (the full 64 hex: checkpoints and weights record it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(paths: Iterable[str | Path]) -> str:
    """sha256 (16 hex) over the names and contents of ``paths``, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def json_digest(value: Any, length: int = 16) -> str:
    """sha256 (``length`` hex) of ``value`` as canonical JSON (sorted keys; other types by ``str``)."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex) of every Python source of the ``collide`` package."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def exclusive_lock(path: str | Path, *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, or raise :class:`BusyError` at once
    naming the holder (host, pid, since when). The lock is the kernel's (``flock``): a
    holder that dies, even by SIGKILL, releases it, and a stale file locks nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise BusyError(f"{what} is in use by {holder} (lock {path}): wait for that run to end, "
                            "or give this one another name (--set name=...) or results root") from None
        os.ftruncate(fd, 0)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def experiment_lock(results_root: str | Path, name: str) -> contextlib.AbstractContextManager[None]:
    """The lock of experiment ``name`` under ``results_root``, held by a run for its whole
    length and by ``collide tables`` while it rewrites that experiment's outputs.

    The file lives in the system's temporary folder, named by a hash of the absolute
    results root: taking it writes nothing into the results, so bad input found later
    still leaves them untouched. It guards runs on this machine.
    """
    root = Path(results_root).resolve()
    path = Path(tempfile.gettempdir()) / "collide-locks" / f"{json_digest(str(root))}-{name}.lock"
    return exclusive_lock(path, what=f"experiment {name!r} under {root}")

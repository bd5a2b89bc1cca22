"""Files: the one atomic writer, the one set of hashing helpers, the code version.

Every file collide writes goes through :func:`atomic_file` (or the row store's
directory swap, which is built on the same rename), so a killed run leaves either the
old file or the new one, never half of one. Every hash that names an input, a config or
the code is made here, so two stages can never disagree about what "the same" means.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import tempfile
import time
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


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def file_sha256(path: str | Path, *, follow: bool = True) -> str:
    """sha256 of a file's bytes, read in blocks (the full 64 hex: checkpoints and weights record it).
    ``follow=False``: a link is not opened (``OSError``), even one put there after a check."""
    h = hashlib.sha256()
    with open(path, "rb", opener=None if follow else _no_follow) as fh:
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


def private_dir(kind: str, *, runtime: bool = True) -> Path:
    """This user's own folder for ``kind``, created 0700: ``$XDG_RUNTIME_DIR/collide-<kind>``
    where that is set and ``runtime`` allows it, else ``<tmp>/collide-<kind>-<uid>``.

    Refused (:class:`BusyError`) when it is a link, another user's, or open to others: a
    folder anyone can write lets them plant links that a lock would follow, or block runs.
    ``runtime=False`` for what may grow large (Dask's spill files): the runtime folder is
    usually memory.
    """
    place = os.environ.get("XDG_RUNTIME_DIR") if runtime else None
    base = Path(place) / f"collide-{kind}" if place and Path(place).is_dir() else \
        Path(tempfile.gettempdir()) / f"collide-{kind}-{os.getuid()}"
    fix = "set XDG_RUNTIME_DIR to a folder of your own" if runtime else "set TMPDIR to a folder of your own"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError as exc:
        raise BusyError(f"cannot make the {kind} folder {base} ({exc.strerror}): {fix}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BusyError(f"the {kind} folder {base} is not a folder of this user's alone (a link, another user's, or "
                        f"mode {stat.S_IMODE(info.st_mode):o}): remove it, or {fix}")
    return base


def lock_dir() -> Path:
    """This user's own folder for locks (:func:`private_dir`)."""
    return private_dir("locks")


def _open_lock(path: Path) -> int:
    """The lock file, opened without following a link and without truncating it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BusyError(f"the lock {path} is a symbolic link: refusing to follow it; remove it") from None
        raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a holder that finished may
    have removed it between our open and our lock)."""
    try:
        on_disk = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


# A lock file untouched this long and held by nobody was left by a run that died.
STALE_LOCK_SECONDS = 60


def _sweep(folder: Path, keep: Path) -> None:
    """Remove lock files in ``folder`` that nobody holds (left by killed runs), each while
    holding it, so that a run about to take one finds it gone and makes a new one."""
    now = time.time()
    for other in folder.glob("*.lock"):
        try:
            if other == keep or other.is_symlink() or now - other.lstat().st_mtime < STALE_LOCK_SECONDS:
                continue  # a fresh file may be about to be taken: leave it
        except OSError:
            continue
        try:
            fd = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, other):
                other.unlink()
        except OSError:
            pass  # held: a live run's
        finally:
            os.close(fd)


@contextmanager
def exclusive_lock(path: str | Path, *, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, or raise :class:`BusyError` at once
    naming the holder (host, pid, since when). The lock is the kernel's (``flock``): a
    holder that dies, even by SIGKILL, releases it, and a stale file locks nothing.

    The file is opened without following links (a planted link is refused, never
    written through) and without truncating it; it is removed when the block ends, and
    stale lock files beside it go when the next lock is taken. With ``wait`` the lock is
    waited for instead of refused (a shared cache that another run is building).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BusyError(f"{what} is in use by {holder} (lock {path}): wait for that run to end, "
                            "or give this one another name (--set name=...) or results root") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # removed by the holder that just finished: take the new file
    try:
        _sweep(path.parent, path)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)  # our own file, locked, never a link
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still held: whoever opened it before now retries on a new file
    finally:
        os.close(fd)  # releases the flock


def lock_path(results_root: str | Path, name: str) -> Path:
    """The file :func:`experiment_lock` holds for experiment ``name`` under ``results_root``."""
    root = Path(results_root).resolve()
    return lock_dir() / f"{json_digest(str(root))}-{name}.lock"


def lock_holder(results_root: str | Path, name: str) -> str | None:
    """Who holds the experiment's lock now ("pid N on HOST since TIME"), or None when nobody does."""
    try:
        path = lock_path(results_root, name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, BusyError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # a shared lock we got is released with it
    return None


def cache_lock(path: str | Path, *, what: str) -> contextlib.AbstractContextManager[None]:
    """Wait for exclusive use of a cache that runs of different experiments share (a patch
    store and its kNN index under ``cache_root``): one run builds or repairs it while the
    others wait, then find it finished and reuse it."""
    key = json_digest(str(Path(path).resolve()))
    return exclusive_lock(lock_dir() / f"cache-{key}.lock", what=what, wait=True)


def experiment_lock(results_root: str | Path, name: str) -> contextlib.AbstractContextManager[None]:
    """The lock of experiment ``name`` under ``results_root``, held by a run for its whole
    length and by ``collide tables`` while it rewrites that experiment's outputs.

    The file lives in this user's own lock folder (:func:`lock_dir`, 0700), named by a
    hash of the absolute results root: taking it writes nothing into the results, so bad
    input found later still leaves them untouched. It guards this user's runs on this
    machine.
    """
    root = Path(results_root).resolve()
    return exclusive_lock(lock_path(results_root, name), what=f"experiment {name!r} under {root}")

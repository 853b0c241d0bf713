"""One writer per store: a lock file beside the store, naming its holder.

``nnsweep run`` and ``nnsweep verify --repair`` hold the lock of their store
(``<store>.lock``, a JSON file with host, pid, start time and command) from
before the store is created or checked until they end; a second writer is
refused with the holder's name. What it guarantees (docs/store.md):

- Local and shared POSIX filesystems: the file is locked with ``flock``, which
  the kernel releases when the holder dies however it dies, so a lock file left
  behind is stale by construction and is taken over. On NFS, Linux maps flock
  to NFS byte-range locks, which hold across hosts. Where a filesystem refuses
  flock (some Lustre mounts), the file is created exclusively (``O_EXCL``)
  instead, and a lock is stale when its holder ran on this host and that
  process no longer exists; a lock from another host must then be removed by
  hand once its run is gone.
- Object stores (``s3://``...): the lock object is created with a conditional
  write (S3's ``If-None-Match``), which is atomic on AWS S3 and on servers that
  implement it. The holder rewrites it every minute; a lock not refreshed for
  ten minutes, or held by a dead process on this host, is stale and replaced.
  Replacing a stale object lock is not atomic: two runs starting at the same
  moment against the same long-dead lock could both proceed.

The lock is re-entrant within one thread: code that already holds a store's
lock can call functions that take it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from .errors import StoreError
from .location import StoreLocation, as_location, short_path

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0  # an object-store lock is rewritten this often
STALE_SECONDS = 600.0  # and is stale when not rewritten for this long
_held: dict[tuple[str, int], int] = {}  # (lock path, thread) -> depth, for re-entry


class StoreLocked(StoreError):
    """Another process holds the store's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file as JSON."""

    host: str
    pid: int
    started: str
    command: str
    refreshed: float = 0.0  # time.time() of the last rewrite (object stores)
    token: str = ""

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(),
                   datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200],
                   time.time(), uuid.uuid4().hex)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # empty (being written) or not ours

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}, command {self.command!r}"

    def is_dead(self) -> bool:
        """True only if the holder ran on this host and that process is gone."""
        if self.host != socket.gethostname():
            return False
        import psutil

        try:
            started = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return True
        # a reused pid belongs to a process started after the lock was taken
        return started > datetime.datetime.fromisoformat(self.started).timestamp() + 1


def lock_path(loc: StoreLocation) -> str:
    """``<store>.lock``: beside the store, so it exists before the store and never inside it."""
    url = loc.url.removeprefix("file://") if loc.is_local else loc.url
    return url.rstrip("/") + ".lock"


@contextlib.contextmanager
def store_lock(where: str | StoreLocation) -> Iterator[None]:
    """Hold the store's lock for the duration of the block.

    Raises:
        StoreLocked: another process holds it (exit status 2 in the CLI).
        StoreError: the lock file cannot be created (permissions, a missing bucket).
    """
    loc = as_location(where)
    path = lock_path(loc)
    key = (path, threading.get_ident())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock = _FileLock(path, loc) if loc.is_local else _ObjectLock(path, loc)
    lock.acquire()
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        lock.release()


def _locked(loc: StoreLocation, path: str, holder: Holder | None) -> StoreLocked:
    who = str(holder) if holder else "a process that has not yet written its name"
    return StoreLocked(f"store {short_path(loc.url)} is in use by another nnsweep process ({who}; lock file "
                       f"{path}). Wait for it to finish or stop it, then run again. Nothing was written.")


def _cannot(loc: StoreLocation, path: str, e: Exception) -> StoreError:
    what = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
    return StoreError(f"cannot create the lock file {short_path(path)} for store {short_path(loc.url)} ({what}); "
                      "choose a --store path in a directory you can write to. Nothing was written.")


class _FileLock:
    """flock on ``path`` (falling back to exclusive creation where flock is refused)."""

    def __init__(self, path: str, loc: StoreLocation):
        self.path, self.loc, self.fd = path, loc, -1
        self.exclusive = False  # True once the filesystem has refused flock

    def acquire(self) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            for _ in range(20):
                if self._try():
                    return
        except OSError as e:
            raise _cannot(self.loc, self.path, e) from None
        raise _locked(self.loc, self.path, self._holder())

    def _try(self) -> bool:
        """One attempt; False when the file changed under us (retry), raises when held."""
        import fcntl

        if self.exclusive:
            return self._try_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked(self.loc, self.path, self._holder()) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.exclusive = True
            if self._holder() is None:  # the empty file our open just made, not a holder's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            return False
        try:  # the holder may have released and removed it between our open and flock
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        previous = Holder.parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        if previous:
            log.warning("took over the stale lock of %s on %s", previous, self.loc.url)
        self._write(fd)
        self.fd = fd
        return True

    def _try_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = self._holder()
            if holder and holder.is_dead():
                log.warning("removing the stale lock of %s on %s", holder, self.loc.url)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return False
            raise _locked(self.loc, self.path, holder) from None
        self._write(fd)
        self.fd = fd
        return True

    @staticmethod
    def _write(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().dumps().encode(), 0)
        os.fsync(fd)

    def _holder(self) -> Holder | None:
        for _ in range(20):  # the holder writes its name right after taking the lock
            try:
                with open(self.path) as f:
                    holder = Holder.parse(f.read())
            except FileNotFoundError:
                return None
            if holder:
                return holder
            time.sleep(0.05)
        return None

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still holding it: see the inode check in _try
        os.close(self.fd)


class _ObjectLock:
    """A lock object created with a conditional write and refreshed by a thread."""

    def __init__(self, path: str, loc: StoreLocation):
        import fsspec

        self.loc = loc
        self.fs, self.path = fsspec.core.url_to_fs(path, **loc.options)
        self.me = Holder.me()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, self.me.dumps().encode(), mode="create")
                break
            except FileExistsError:
                holder = self._holder()
                stale = holder is None or holder.is_dead() or time.time() - holder.refreshed > STALE_SECONDS
                if not stale:
                    raise _locked(self.loc, self.path, holder) from None
                log.warning("replacing the stale lock of %s on %s", holder, self.loc.url)
                self.fs.rm(self.path)
            except Exception as e:  # a missing bucket, no permission
                raise _cannot(self.loc, self.path, e) from None
        else:
            raise _locked(self.loc, self.path, self._holder())
        self.thread = threading.Thread(target=self._refresh, daemon=True, name="nnsweep-lock")
        self.thread.start()

    def _holder(self) -> Holder | None:
        try:
            return Holder.parse(self.fs.cat_file(self.path).decode(errors="replace"))
        except FileNotFoundError:
            return None

    def _refresh(self) -> None:
        while not self.stop.wait(REFRESH_SECONDS):
            self.me = dataclasses.replace(self.me, refreshed=time.time())
            try:
                self.fs.pipe_file(self.path, self.me.dumps().encode())
            except Exception as e:  # a network blip: the next refresh tries again
                log.warning("could not refresh the lock %s: %s", self.path, e)

    def release(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()
        holder = self._holder()
        if holder and holder.token == self.me.token:
            self.fs.rm(self.path)

# SPDX-License-Identifier: MIT
"""fasteners' inter-process API over libipl: a drop-in for code written for
fasteners.InterProcessLock and fasteners.InterProcessReaderWriterLock.

    from ipl import fasteners

    lock = fasteners.InterProcessLock("/tmp/app.lock")
    with lock:                                   # blocks; Ctrl-C still works
        ...
    if lock.acquire(timeout=2.5):                # False when not acquired in time
        try: ...
        finally: lock.release()

    rw = fasteners.InterProcessReaderWriterLock("/tmp/app.lock")
    with rw.read_lock(): ...
    with rw.write_lock(): ...

    @fasteners.interprocess_locked("/tmp/app.lock")
    def critical(): ...

The locks are the ones fasteners takes (whole-file fcntl on POSIX), so
fasteners processes and processes using this module exclude each other.

Differences from fasteners, on purpose:
- Two lock objects in one process exclude each other, as two processes do
  (fasteners' POSIX locks belong to the process, so they do not).
- Acquiring on an object that holds the lock raises WouldDeadlockError (a
  threading.ThreadError), never a silent re-lock; fasteners succeeds on
  POSIX (the kernel converts the lock) and fails on Windows.
- `sleep_func`, `delay` and `max_delay` are accepted and checked as
  fasteners checks them, but libipl waits in the kernel and takes the lock
  the moment it is released instead of polling. They are used only when a
  subclass overrides trylock(), which acquire() then polls as fasteners does.
- Errors are ipl.IplError subclasses: a bad path raises what fasteners'
  open() would (IsADirectoryError, PermissionError, ...), misuse raises a
  threading.ThreadError.
- A decorated call nested in another decorated call of the same thread on
  the same lock file (a decorated function that calls itself) raises
  ipl.WouldDeadlockError at once, except a read-locked call inside a
  read-locked one, which runs. (fasteners re-locks the file it holds, and
  the inner call's release silently drops the outer call's lock.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional, TypeVar

from . import EXCLUSIVE, SHARED, IplError, Lock, NotHeldError, PathArg, Status
from . import _native
from . import _recorded_call, _take_for_call

__all__ = [
    "InterProcessLock",
    "InterProcessReaderWriterLock",
    "interprocess_locked",
    "interprocess_read_locked",
    "interprocess_write_locked",
]

LOG = logging.getLogger(__name__)
BLATHER = 5  # fasteners' log level for lock traffic

F = TypeVar("F", bound=Callable[..., Any])


def _canonicalize_path(path: PathArg) -> bytes:
    """fasteners keeps its path as bytes in the file-system encoding."""
    if isinstance(path, (str, bytes)):
        return os.fsencode(path)
    return _canonicalize_path(str(path))


def _check_wait_arguments(delay: float, max_delay: float, timeout: Optional[float]) -> None:
    # The checks fasteners makes, so the same calls fail the same way.
    if delay < 0:
        raise ValueError("Delay must be greater than or equal to zero")
    if timeout is not None and timeout < 0:
        raise ValueError("Timeout must be greater than or equal to zero")


def _as_thread_error(path: bytes, error: BaseException) -> BaseException:
    """fasteners turns a failed lock call into a threading.ThreadError; ours
    that already are one (WouldDeadlockError, NotHeldError) stay as they are."""
    if isinstance(error, threading.ThreadError):
        return error
    thread_error = threading.ThreadError(
        "Unable to acquire lock on `%s` due to %s" % (os.fsdecode(path), error))
    thread_error.__cause__ = error
    return thread_error


class InterProcessLock:
    """An exclusive inter-process lock on the file at `path`.

    .lockfile is the open ipl.Lock while the lock is being acquired or held
    (fasteners: the open file), else None. trylock() and unlock() are the
    single steps acquire() and release() are built on, as in fasteners: a
    busy trylock() raises BlockingIOError (errno EAGAIN).
    """

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(self, path: PathArg, sleep_func: Callable[[float], Any] = time.sleep,
                 logger: Optional[logging.Logger] = None) -> None:
        self.lockfile: Any = None
        self.path = _canonicalize_path(path)
        self.acquired = False
        self.sleep_func = sleep_func
        self.logger = logger if logger is not None else LOG

    def _do_open(self) -> Lock:
        """The ipl.Lock that trylock() and unlock() use. A file object that
        the caller put in .lockfile (fasteners' own tests do) is replaced by
        an ipl.Lock on the file it names."""
        lockfile = self.lockfile
        if isinstance(lockfile, Lock) and not lockfile.closed:
            return lockfile
        if lockfile is None or getattr(lockfile, "closed", False):
            path = self.path
        else:
            path = _canonicalize_path(lockfile.name)
        self.lockfile = Lock(path)
        return self.lockfile

    def _do_close(self) -> None:
        if self.lockfile is not None:
            self.lockfile.close()
            self.lockfile = None

    def trylock(self) -> None:
        """One try, never sleeping. Raises BlockingIOError (EAGAIN) when the
        lock is held elsewhere, an IplError for anything else."""
        if not self._do_open().acquire(blocking=False):
            raise BlockingIOError(errno.EAGAIN, "lock held elsewhere", os.fsdecode(self.path))

    def unlock(self) -> None:
        """Releases what trylock() took; NotHeldError when nothing is held."""
        lockfile = self.lockfile
        if not isinstance(lockfile, Lock) or lockfile.closed:
            raise _native.error_for(Status.NOT_HELD, 0, self.path, "unlock")
        lockfile.release()

    def acquire(self, blocking: bool = True, delay: float = DELAY_INCREMENT,
                max_delay: float = MAX_DELAY, timeout: Optional[float] = None) -> bool:
        """Takes the lock: blocking=False tries once; otherwise waits at most
        `timeout` seconds (None: as long as it takes). Returns whether the
        lock was acquired."""
        _check_wait_arguments(delay, max_delay, timeout)
        start = time.monotonic()
        self._do_open()
        gotten = self._try_once()
        if not gotten and blocking:
            if type(self).trylock is InterProcessLock.trylock:
                remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
                gotten = self._wait_in_kernel(remaining)
            else:
                gotten = self._poll_trylock(start, delay, max_delay, timeout)
        if gotten:
            self.acquired = True
            self.logger.log(BLATHER, "Acquired file lock `%s` after waiting %0.3fs",
                            os.fsdecode(self.path), time.monotonic() - start)
        return gotten

    def _try_once(self) -> bool:
        try:
            self.trylock()
        except OSError as error:
            if not isinstance(error, IplError) and error.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise _as_thread_error(self.path, error) from error
        return True

    def _wait_in_kernel(self, timeout: Optional[float]) -> bool:
        try:
            return self._do_open().acquire(timeout=timeout)
        except IplError as error:
            raise _as_thread_error(self.path, error) from error

    def _poll_trylock(self, start: float, delay: float, max_delay: float,
                      timeout: Optional[float]) -> bool:
        """fasteners' retry loop, for a subclass with its own trylock()."""
        max_delay = max(delay, max_delay)
        attempts = 0
        while timeout is None or time.monotonic() - start < timeout:
            attempts += 1
            pause = min(delay * attempts, max_delay)
            if timeout is not None:
                pause = min(pause, max(0.0, timeout - (time.monotonic() - start)))
            self.sleep_func(pause)
            if self._try_once():
                return True
        return False

    def release(self) -> None:
        """Releases the lock; threading.ThreadError when it is not held."""
        if not self.acquired:
            raise threading.ThreadError("Unable to release an unacquired lock")
        try:
            self.unlock()
        except Exception as error:
            message = "Could not unlock the acquired lock opened on `%s`" % os.fsdecode(self.path)
            self.logger.exception(message)
            raise _as_thread_error(self.path, error) from error
        self.acquired = False
        self._do_close()
        self.logger.log(BLATHER, "Unlocked and closed file lock open on `%s`",
                        os.fsdecode(self.path))

    def exists(self) -> bool:
        """Whether the lock file exists."""
        return os.path.exists(self.path)

    def __enter__(self) -> "InterProcessLock":
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.release()


class InterProcessReaderWriterLock:
    """A reader-writer inter-process lock on the file at `path`: many
    readers or one writer. One object holds one lock at a time."""

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(self, path: PathArg, sleep_func: Callable[[float], Any] = time.sleep,
                 logger: Optional[logging.Logger] = None) -> None:
        self.lockfile: Optional[Lock] = None
        self.path = _canonicalize_path(path)
        self.sleep_func = sleep_func  # accepted; libipl waits in the kernel
        self.logger = logger if logger is not None else LOG

    def _do_open(self) -> Lock:
        if self.lockfile is None or self.lockfile.closed:
            self.lockfile = Lock(self.path)
        return self.lockfile

    def _do_close(self) -> None:
        if self.lockfile is not None:
            self.lockfile.close()
            self.lockfile = None

    def _acquire(self, blocking: bool, delay: float, max_delay: float,
                 timeout: Optional[float], shared: bool) -> bool:
        _check_wait_arguments(delay, max_delay, timeout)
        lockfile = self._do_open()  # a bad path raises what open() would
        try:
            gotten = lockfile.acquire(blocking, timeout, shared=shared)
        except IplError as error:
            raise _as_thread_error(self.path, error) from error
        if gotten:
            self.logger.log(BLATHER, "Acquired %s file lock `%s`",
                            "read" if shared else "write", os.fsdecode(self.path))
        return gotten

    def acquire_read_lock(self, blocking: bool = True, delay: float = DELAY_INCREMENT,
                          max_delay: float = MAX_DELAY, timeout: Optional[float] = None) -> bool:
        """Takes a shared lock; returns whether it was acquired."""
        return self._acquire(blocking, delay, max_delay, timeout, shared=True)

    def acquire_write_lock(self, blocking: bool = True, delay: float = DELAY_INCREMENT,
                           max_delay: float = MAX_DELAY, timeout: Optional[float] = None) -> bool:
        """Takes the exclusive lock; returns whether it was acquired."""
        return self._acquire(blocking, delay, max_delay, timeout, shared=False)

    def _release(self, mode: str) -> None:
        lockfile = self.lockfile
        if lockfile is None or lockfile.held_mode != mode:
            # Releasing a mode not held keeps what is held.
            raise NotHeldError(Status.NOT_HELD, 0, self.path, "release the %s lock" % (
                "read" if mode == SHARED else "write"))
        lockfile.release()
        self._do_close()

    def release_read_lock(self) -> None:
        """Releases the shared lock; NotHeldError when it is not held."""
        self._release(SHARED)

    def release_write_lock(self) -> None:
        """Releases the exclusive lock; NotHeldError when it is not held."""
        self._release(EXCLUSIVE)

    @contextlib.contextmanager
    def read_lock(self, delay: float = DELAY_INCREMENT,
                  max_delay: float = MAX_DELAY) -> Iterator[None]:
        self.acquire_read_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_read_lock()

    @contextlib.contextmanager
    def write_lock(self, delay: float = DELAY_INCREMENT,
                   max_delay: float = MAX_DELAY) -> Iterator[None]:
        self.acquire_write_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_write_lock()

    # fasteners' newer names for the same context managers.
    read_locked = read_lock
    write_locked = write_lock


# Each call takes the lock through a lock object of its own (fasteners shares
# one per decorator), so concurrent calls from threads of one process exclude
# each other too, as libipl handles do. A call nested in a decorated call of
# the same thread on the same lock file would wait for itself for ever; it
# raises ipl.WouldDeadlockError (a threading.ThreadError) at once instead
# (a read-locked call inside a read-locked one runs). See ipl.locked.


def _locked_around_each_call(take: Callable[[], Any], shared: bool) -> Callable[[F], F]:
    """take() -> (path, try_once, wait, release, close) for one call."""
    def decorator(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            path, try_once, wait, release, close = take()
            try:
                _take_for_call(path, shared, try_once, wait)
                try:
                    with _recorded_call(path, shared):
                        return function(*args, **kwargs)
                finally:
                    release()
            finally:
                close()
        return wrapper  # type: ignore[return-value]
    return decorator


def _exclusive_steps(path: PathArg):
    lock = InterProcessLock(path)
    return (lock.path, lambda: lock.acquire(blocking=False), lock.acquire, lock.release,
            lock._do_close)


def _reader_writer_steps(path: PathArg, shared: bool):
    rw = InterProcessReaderWriterLock(path)
    if shared:
        return (rw.path, lambda: rw.acquire_read_lock(blocking=False), rw.acquire_read_lock,
                rw.release_read_lock, rw._do_close)
    return (rw.path, lambda: rw.acquire_write_lock(blocking=False), rw.acquire_write_lock,
            rw.release_write_lock, rw._do_close)


def interprocess_locked(path: PathArg) -> Callable[[F], F]:
    """Decorator: takes the exclusive lock on `path` around each call."""
    return _locked_around_each_call(lambda: _exclusive_steps(path), shared=False)


def interprocess_read_locked(path: PathArg) -> Callable[[F], F]:
    """Decorator: takes the read (shared) lock on `path` around each call."""
    return _locked_around_each_call(lambda: _reader_writer_steps(path, True), shared=True)


def interprocess_write_locked(path: PathArg) -> Callable[[F], F]:
    """Decorator: takes the write (exclusive) lock on `path` around each call."""
    return _locked_around_each_call(lambda: _reader_writer_steps(path, False), shared=False)

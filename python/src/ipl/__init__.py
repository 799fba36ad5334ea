# SPDX-License-Identifier: MIT
"""libipl for Python: inter-process locks on a lock file (ctypes over the
installed libipl.so.1).

    import ipl

    lock = ipl.Lock("/var/lock/myapp/db.lock")     # opens (creates) the file
    with lock:                                     # exclusive; blocks
        ...
    if lock.acquire(timeout=2.5):                  # False: not in time
        try: ...
        finally: lock.release()
    with lock.shared(timeout=5):                   # shared; LockTimeoutError
        ...
    lock.close()                                   # or let it be collected

A Lock is one libipl handle: it holds at most one lock, exclusive or shared.
Two Lock objects on one file exclude each other exactly as two processes do,
also in one thread. Locks are not reentrant: acquiring on a Lock that holds
the lock raises WouldDeadlockError. The lock is fasteners' (whole-file fcntl
on POSIX), so fasteners processes and libipl processes exclude each other;
`ipl.fasteners` has fasteners' API.

Errors are IplError, an OSError with .status, .errno and .filename, in the
class of the builtin that fits (LockTimeoutError is a TimeoutError,
AccessError a PermissionError, a folder as lock file an IsADirectoryError).

Ctrl-C: a ctypes call blocked in C cannot be interrupted, so in the main
thread a wait is a loop of kernel waits of at most WAIT_SLICE_S each (the
lock is still handed over the moment it is released); KeyboardInterrupt
arrives within one slice and never leaves the lock held. (libipl's
ipl_cancel, when it exists, will end such a wait at once instead.)

fork(): a child made by os.fork() holds none of its parent's locks. Its
copies of the parent's Lock objects hold nothing; closing, collecting or
releasing them never releases the parent's lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time
import weakref
from typing import Iterator, Optional

from . import _native
from ._native import (
    OPEN_NO_CREATE,
    OPEN_NO_CREATE_DIRS,
    WAIT_FOREVER,
    AccessError,
    BadParentError,
    InternalError,
    InvalidArgumentError,
    IplError,
    LibraryNotFoundError,
    LockTimeoutError,
    NameTooLongError,
    NotHeldError,
    NotRegularFileError,
    OutOfMemoryError,
    PathArg,
    SignalInUseError,
    Status,
    UnsupportedError,
    WouldDeadlockError,
)
from ._version import __version__

__all__ = [
    "__version__",
    "Lock",
    "Status",
    "IplError",
    "LockTimeoutError",
    "InvalidArgumentError",
    "NotHeldError",
    "WouldDeadlockError",
    "AccessError",
    "NotRegularFileError",
    "NameTooLongError",
    "OutOfMemoryError",
    "BadParentError",
    "InternalError",
    "UnsupportedError",
    "SignalInUseError",
    "LibraryNotFoundError",
    "library_version",
    "library_path",
    "wait_signal",
    "set_wait_signal",
    "OPEN_NO_CREATE",
    "OPEN_NO_CREATE_DIRS",
    "WAIT_FOREVER",
    "WAIT_SIGNAL_AUTO",
]

WAIT_SIGNAL_AUTO = _native.WAIT_SIGNAL_AUTO

# The longest single C wait in the main thread: bounds how late Ctrl-C is seen.
WAIT_SLICE_S = 0.05
# The longest timeout passed to C (100 years, as ipl.hpp): a huge timeout
# stays a timed wait instead of overflowing int64 or meaning "forever".
MAX_WAIT_MS = 100 * 365 * 24 * 3600 * 1000

_lib = _native.lib

EXCLUSIVE = "exclusive"
SHARED = "shared"


def library_version() -> str:
    """The version of the libipl actually loaded (ipl_version_string)."""
    return _lib.ipl_version_string().decode()


def library_path() -> str:
    """The name the library was loaded by ($IPL_LIBRARY, else libipl.so.1 or
    what ctypes.util.find_library found)."""
    return _native.library_name


def wait_signal() -> int:
    """The signal libipl's timed waits use, 0 when they poll (ipl_wait_signal)."""
    return int(_lib.ipl_wait_signal())


def set_wait_signal(signo: int) -> None:
    """ipl_set_wait_signal: WAIT_SIGNAL_AUTO, 0 (poll) or a signal number."""
    status = _lib.ipl_set_wait_signal(signo)
    if status != Status.OK:
        raise _native.error_for(status, 0, None, "set the wait signal to %d" % signo)


def _timeout_ms(blocking: bool, timeout: Optional[float]) -> int:
    """The C API's timeout_ms: 0 tries once, WAIT_FOREVER blocks; seconds
    are rounded up to whole milliseconds, so a wait never ends early."""
    if timeout is not None:
        if timeout != timeout or timeout < 0:  # NaN or negative
            raise ValueError("timeout must be None or a number >= 0, not %r" % (timeout,))
    if not blocking:
        return 0
    if timeout is None:
        return WAIT_FOREVER
    if timeout * 1000 >= MAX_WAIT_MS:
        return MAX_WAIT_MS
    return math.ceil(timeout * 1000)


# Every open Lock, so that a child made by os.fork() can mark its copies as
# holding nothing (the lock stays the parent's) and give them fresh mutexes
# (another thread of the parent may have held one at the fork).
_open_locks: "weakref.WeakSet[Lock]" = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    for lock in list(_open_locks):
        lock._state = threading.Lock()
        lock._busy = False
        lock._held = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


class Lock:
    """One open lock file (one libipl handle), holding at most one lock.

    Lock(path, *, create=True, create_dirs=True, mode=None) opens the lock
    file, creating it (0666 minus the umask, or exactly `mode`, e.g. 0o664)
    and any missing parent folders unless told not to. The file is never
    written to. Raises an IplError subclass when the path cannot be a lock
    file (InvalidArgumentError, IsADirectoryError, AccessError, ...).

    Safe to share between threads: a second acquire while one is held or in
    progress raises WouldDeadlockError; release may come from another thread.
    """

    # Kept on the class: module globals may already be gone when __del__
    # runs at interpreter exit.
    _ipl_close = staticmethod(_lib.ipl_close)

    def __init__(self, path: PathArg, *, create: bool = True, create_dirs: bool = True,
                 mode: Optional[int] = None) -> None:
        self._raw: Optional[ctypes.c_void_p] = None
        self._state = threading.Lock()
        self._busy = False
        self._held: Optional[str] = None
        self.path = os.fspath(path)
        encoded = os.fsencode(self.path)
        if b"\0" in encoded:
            # ctypes would pass the shorter path before the NUL.
            raise _native.error_for(Status.INVALID, 0, path, "open")
        flags = (0 if create else OPEN_NO_CREATE) | (0 if create_dirs else OPEN_NO_CREATE_DIRS)
        raw = ctypes.c_void_p()
        os_error = ctypes.c_int(0)
        if mode is None:
            status = _lib.ipl_open_ex(encoded, flags, ctypes.byref(raw), ctypes.byref(os_error))
        else:
            if not isinstance(mode, int) or not 0 <= mode <= 0o777:
                raise ValueError("mode must be an int from 0 to 0o777, not %r" % (mode,))
            if not _native.has_open_mode:
                raise UnsupportedError(Status.UNSUPPORTED, 0, path,
                                       "open with a creation mode (libipl %s has no "
                                       "ipl_open_mode; it needs 0.2.0 or later) at"
                                       % library_version())
            status = _lib.ipl_open_mode(encoded, flags, mode, ctypes.byref(raw),
                                        ctypes.byref(os_error))
        if status != Status.OK:
            raise _native.error_for(status, os_error.value, path, "open")
        self._raw = raw
        _open_locks.add(self)

    # ---- Acquiring and releasing ---------------------------------------------

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None, *,
                shared: bool = False) -> bool:
        """Takes the lock (exclusive, or shared with shared=True).

        blocking=False tries once and never sleeps; otherwise it waits at
        most `timeout` seconds (None: as long as it takes). Returns True when
        acquired, False when held elsewhere until the end. Raises
        WouldDeadlockError when this Lock holds the lock already (any mode).
        """
        timeout_ms = _timeout_ms(blocking, timeout)
        c_acquire = _lib.ipl_acquire_read if shared else _lib.ipl_acquire
        c_release = _lib.ipl_release_read if shared else _lib.ipl_release
        with self._state:
            raw = self._open_handle("acquire")
            if self._busy or self._held is not None:
                raise _native.error_for(Status.WOULD_DEADLOCK, 0, self.path, "acquire")
            self._busy = True
        try:
            try:
                status = self._wait(c_acquire, raw, timeout_ms)
            except BaseException:
                # KeyboardInterrupt (or any exception) between slices, or just
                # after the slice that was granted: let go of what may have
                # been taken, so an acquire that raises holds nothing.
                c_release(raw)
                raise
            if status == Status.OK:
                self._held = SHARED if shared else EXCLUSIVE
                return True
            if status == Status.TIMEOUT:
                return False
            raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "acquire")
        finally:
            self._busy = False

    @staticmethod
    def _wait(c_acquire, raw: ctypes.c_void_p, timeout_ms: int) -> int:
        # Only the main thread runs Python's signal handlers, so only there
        # is a wait cut into slices (see the module's "Ctrl-C").
        if timeout_ms == 0 or threading.current_thread() is not threading.main_thread():
            return c_acquire(raw, timeout_ms)
        deadline = None if timeout_ms == WAIT_FOREVER else time.monotonic() + timeout_ms / 1000
        while True:
            if deadline is None:
                slice_s = WAIT_SLICE_S
            else:
                slice_s = min(WAIT_SLICE_S, deadline - time.monotonic())
            # Whole milliseconds, rounded up, so the total wait is never shorter
            # than asked; 0 makes the last call a single try.
            status = c_acquire(raw, max(0, math.ceil(slice_s * 1000)))
            if status != Status.TIMEOUT:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status

    def release(self) -> None:
        """Releases the lock this Lock holds (exclusive or shared). Raises
        NotHeldError when it holds none."""
        with self._state:
            raw = self._open_handle("release")
            held = self._held
            if held is None:
                raise _native.error_for(Status.NOT_HELD, 0, self.path, "release")
            c_release = _lib.ipl_release_read if held == SHARED else _lib.ipl_release
            status = c_release(raw)
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "release")
            self._held = None

    def _open_handle(self, action: str) -> ctypes.c_void_p:
        if self._raw is None:
            raise _native.error_for(Status.INVALID, 0, self.path, action + " (the Lock is closed)")
        return self._raw

    @property
    def held(self) -> bool:
        """Whether this Lock holds the lock (in either mode)."""
        return self._held is not None

    @property
    def held_mode(self) -> Optional[str]:
        """"exclusive", "shared", or None when nothing is held."""
        return self._held

    @property
    def closed(self) -> bool:
        return self._raw is None

    @property
    def name(self) -> PathArg:
        """The lock file's path, as given (file objects call it .name)."""
        return self.path

    # ---- Context managers -----------------------------------------------------

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.release()

    @contextlib.contextmanager
    def exclusive(self, timeout: Optional[float] = None) -> Iterator["Lock"]:
        """`with lock.exclusive(timeout=5):` holds the exclusive lock for the
        block; LockTimeoutError when not acquired in time."""
        with self._held_for_block(timeout, shared=False):
            yield self

    @contextlib.contextmanager
    def shared(self, timeout: Optional[float] = None) -> Iterator["Lock"]:
        """`with lock.shared(timeout=5):` holds a shared lock for the block;
        LockTimeoutError when not acquired in time."""
        with self._held_for_block(timeout, shared=True):
            yield self

    @contextlib.contextmanager
    def _held_for_block(self, timeout: Optional[float], shared: bool) -> Iterator[None]:
        if not self.acquire(timeout=timeout, shared=shared):
            raise LockTimeoutError(Status.TIMEOUT, 0, self.path,
                                   "acquire (shared)" if shared else "acquire")
        try:
            yield
        finally:
            self.release()

    # ---- Closing ---------------------------------------------------------------

    def close(self) -> None:
        """Releases what this Lock holds and closes the handle. Calling it
        again does nothing. Raises WouldDeadlockError while another thread
        is acquiring on this Lock."""
        with self._state:
            if self._busy:
                raise _native.error_for(Status.WOULD_DEADLOCK, 0, self.path,
                                        "close while another thread acquires")
            raw, self._raw = self._raw, None
            self._held = None
        if raw is not None:
            _open_locks.discard(self)
            _lib.ipl_close(raw)

    def __del__(self) -> None:
        # Collected: the handle (and any lock it holds) goes with it, as a
        # file object's lock goes when it is collected. In a forked child the
        # handle holds nothing, and ipl_close leaves the parent's lock alone.
        raw = getattr(self, "_raw", None)
        if raw is not None:
            self._raw = None
            self._ipl_close(raw)

    def os_error(self) -> int:
        """The errno behind the last OS-derived failure on this handle."""
        return int(_lib.ipl_os_error(self._raw)) if self._raw is not None else 0

    def __repr__(self) -> str:
        state = "closed" if self._raw is None else (self._held or "unlocked")
        return "<ipl.Lock %r %s>" % (self.path, state)

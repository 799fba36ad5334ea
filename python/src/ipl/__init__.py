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
thread (the only one Python runs signal handlers in) a wait that has to
sleep runs in a worker thread while the main thread waits for it, in a wait
that signals interrupt. On KeyboardInterrupt (or any exception a signal
handler raises) the main thread ends the worker's wait with ipl_cancel,
lets go of anything granted meanwhile, and re-raises: an interrupted
acquire never leaves the lock held, an interrupted upgrade keeps the
shared lock it had. Other threads wait in one C call; Lock.cancel() from
another thread ends such a wait (CanceledError).

Beyond acquire and release: Lock.query() (is the lock held elsewhere, how,
and by which process), Lock.downgrade() / Lock.upgrade() (exclusive to
shared and back, atomically / without deadlock), Lock.remove() (delete the
lock file while holding it), Lock.cancel(), Lock.check() (is the lock still
held: LostError when a file server or a replaced file took it away),
Lock(path, inheritable=True) and Lock.from_fd(fd) (locks on an open file
description that children inherit, as flock(1)'s; Linux OFD builds only,
else UnsupportedError).

Exceptions for the statuses without an obvious builtin: CanceledError and
LostError are IplErrors (OSErrors) only. A canceled wait is no
InterruptedError (code retries those) and Ctrl-C stays KeyboardInterrupt.

Decorators: @ipl.locked(path) (and shared=True) hold the lock around each
call, each call through its own handle. A decorated call nested in another
on the same lock file in the same thread, which would wait for itself for
ever, raises WouldDeadlockError at once (shared inside shared runs).

fork(): a child made by os.fork() holds none of its parent's locks. Its
copies of the parent's Lock objects hold nothing; closing, collecting or
releasing them never releases the parent's lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Tuple, TypeVar

from . import _native
from ._native import (
    OPEN_INHERITABLE,
    OPEN_NO_CREATE,
    OPEN_NO_CREATE_DIRS,
    WAIT_FOREVER,
    AccessError,
    BadParentError,
    CanceledError,
    InternalError,
    InvalidArgumentError,
    IplError,
    LibraryNotFoundError,
    LockState,
    LockTimeoutError,
    LostError,
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
    "LockState",
    "QueryResult",
    "locked",
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
    "CanceledError",
    "LostError",
    "LibraryNotFoundError",
    "library_version",
    "library_path",
    "wait_signal",
    "set_wait_signal",
    "OPEN_NO_CREATE",
    "OPEN_NO_CREATE_DIRS",
    "OPEN_INHERITABLE",
    "WAIT_FOREVER",
    "WAIT_SIGNAL_AUTO",
]

WAIT_SIGNAL_AUTO = _native.WAIT_SIGNAL_AUTO

# How often an interrupted wait is canceled again until it has returned (a
# cancel before the worker's wait has started does nothing, see ipl.h).
CANCEL_RETRY_S = 0.001
# The longest timeout passed to C (100 years, as ipl.hpp): a huge timeout
# stays a timed wait instead of overflowing int64 or meaning "forever".
MAX_WAIT_MS = 100 * 365 * 24 * 3600 * 1000

_lib = _native.lib

EXCLUSIVE = "exclusive"
SHARED = "shared"
# held_mode of a Lock.from_fd() whose description held a lock already, in a
# mode Python cannot tell (release() ends it whichever it is).
INHERITED = "inherited"


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


class QueryResult(NamedTuple):
    """What Lock.query() found: a snapshot, possibly stale at once."""

    state: LockState
    """How others hold the lock (never counting this Lock's own)."""
    holder_pid: Optional[int]
    """One holder's process id where the OS can tell (see ipl.h,
    ipl_query), else None."""


# ---- Waiting in the main thread -------------------------------------------------
# See the module's "Ctrl-C".


def _signals_python_handles() -> List[int]:
    """The signals with a Python-level handler: a worker blocks them, so the
    kernel delivers them to the main thread, whose wait they interrupt."""
    handled = []
    for number in signal.valid_signals():
        try:
            if callable(signal.getsignal(number)):
                handled.append(number)
        except (ValueError, OSError):
            pass
    return handled


def _cancel_until_done(raw: ctypes.c_void_p, done: threading.Event) -> None:
    # A cancel that comes before the worker's wait has begun does nothing
    # (ipl.h), so cancel again until the worker's call has returned.
    while not done.is_set():
        _lib.ipl_cancel(raw)
        try:
            done.wait(CANCEL_RETRY_S)
        except BaseException:  # another Ctrl-C: the wait ends in a moment
            pass


def _wait_in_worker(c_call: Callable[[Any, int], int], raw: ctypes.c_void_p,
                    timeout_ms: int) -> int:
    """c_call(raw, timeout_ms) in a worker thread, waited for by this (the
    main) thread in a wait that signals interrupt. When a signal handler
    raises (KeyboardInterrupt), the worker's wait is canceled, and the
    exception propagates once the worker's call has returned: the caller
    then lets go of whatever it granted."""
    outcome: List[int] = []
    done = threading.Event()
    blocked = _signals_python_handles() if hasattr(signal, "pthread_sigmask") else []

    def work() -> None:
        try:
            if blocked:
                signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            outcome.append(c_call(raw, timeout_ms))
        finally:
            done.set()

    worker = threading.Thread(target=work, name="ipl-wait", daemon=True)
    worker.start()
    try:
        done.wait()
    except BaseException:
        _cancel_until_done(raw, done)
        raise
    worker.join()
    return outcome[0] if outcome else Status.INTERNAL


# ---- Decorated calls ----------------------------------------------------------------
# Each decorated call takes the lock through a handle of its own, so a
# decorated function that calls itself (or another one on the same lock
# file) in the same thread would wait for its own outer call for ever. Each
# thread records the locks its decorated calls hold; a nested call that
# cannot get its lock at once looks there and raises WouldDeadlockError when
# the file is one this thread holds in a mode that excludes the one wanted.
# Shared inside shared never waits and runs. "The same file": the same
# absolute path or os.path.samefile(); records made before os.fork() are the
# parent's and are ignored in the child (which holds none of its locks).


class _HeldCalls(threading.local):
    def __init__(self) -> None:
        self.records: List[Tuple[bytes, bool, int]] = []


_held_calls = _HeldCalls()


def _same_file(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _held_by_an_outer_call(path: bytes, shared: bool) -> bool:
    pid = os.getpid()
    for held_path, held_shared, held_pid in _held_calls.records:
        if held_pid != pid or (shared and held_shared):
            continue
        if _same_file(held_path, path):
            return True
    return False


def _take_for_call(path: PathArg, shared: bool, try_once: Callable[[], bool],
                   wait: Callable[[], bool]) -> bool:
    """Takes a decorated call's lock: wait(), unless this thread is inside
    a decorated call whose lock the wait would be for (WouldDeadlockError at
    once). Returns what wait() returned (False: timed out)."""
    if _held_calls.records:
        if try_once():
            return True
        if _held_by_an_outer_call(os.path.abspath(os.fsencode(path)), shared):
            raise WouldDeadlockError(
                Status.WOULD_DEADLOCK, 0, path,
                "take the lock of a decorated call nested in one of this thread that holds it, on")
    return wait()


@contextlib.contextmanager
def _recorded_call(path: PathArg, shared: bool) -> Iterator[None]:
    """Records, for this thread, a decorated call's lock while it is held."""
    record = (os.path.abspath(os.fsencode(path)), shared, os.getpid())
    records = _held_calls.records
    records.append(record)
    try:
        yield
    finally:
        for index in range(len(records) - 1, -1, -1):
            if records[index] is record:
                del records[index]
                break


F = TypeVar("F", bound=Callable[..., Any])


def locked(path: PathArg, *, shared: bool = False, timeout: Optional[float] = None,
           create: bool = True, create_dirs: bool = True,
           mode: Optional[int] = None) -> Callable[[F], F]:
    """Decorator: each call of the function holds the lock on `path`
    (exclusive, or shared with shared=True), taken through a Lock of its
    own, so calls from several threads exclude each other as calls from
    several processes do. timeout: seconds to wait (None: as long as it
    takes), then LockTimeoutError. A call nested in a decorated call of the
    same thread on the same lock file raises WouldDeadlockError at once
    instead of waiting for itself for ever; shared inside shared runs.
    create, create_dirs, mode: as for Lock."""

    def decorator(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            lock = Lock(path, create=create, create_dirs=create_dirs, mode=mode)
            try:
                if not _take_for_call(lock.path, shared,
                                      lambda: lock.acquire(blocking=False, shared=shared),
                                      lambda: lock.acquire(timeout=timeout, shared=shared)):
                    raise LockTimeoutError(Status.TIMEOUT, 0, lock.path,
                                           "acquire (shared)" if shared else "acquire")
                try:
                    with _recorded_call(lock.path, shared):
                        return function(*args, **kwargs)
                finally:
                    if lock.held:
                        lock.release()
            finally:
                lock.close()
        return wrapper  # type: ignore[return-value]
    return decorator


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

    Lock(path, *, create=True, create_dirs=True, mode=None,
    inheritable=False) opens the lock file, creating it (0666 minus the
    umask, or exactly `mode`, e.g. 0o664) and any missing parent folders
    unless told not to. The file is never written to. Raises an IplError
    subclass when the path cannot be a lock file (InvalidArgumentError,
    IsADirectoryError, AccessError, ...).

    inheritable=True (IPL_OPEN_INHERITABLE; Linux OFD builds only, else
    UnsupportedError): the lock's descriptor is left open across fork and
    exec, so a child inherits the lock, which then lasts while any copy of
    the descriptor is open (this Lock's release() or close() still ends it
    at once). subprocess closes inherited descriptors unless
    close_fds=False; os.exec*, os.system and os.fork keep them. See also
    Lock.from_fd().

    Safe to share between threads: a second acquire while one is held or in
    progress raises WouldDeadlockError; release may come from another thread.
    """

    # Kept on the class: module globals may already be gone when __del__
    # runs at interpreter exit.
    _ipl_close = staticmethod(_lib.ipl_close)

    def __init__(self, path: PathArg, *, create: bool = True, create_dirs: bool = True,
                 mode: Optional[int] = None, inheritable: bool = False) -> None:
        self._raw: Optional[ctypes.c_void_p] = None
        self._state = threading.Lock()
        self._busy = False
        self._held: Optional[str] = None
        self.fd: Optional[int] = None
        self.path = os.fspath(path)
        encoded = os.fsencode(self.path)
        if b"\0" in encoded:
            # ctypes would pass the shorter path before the NUL.
            raise _native.error_for(Status.INVALID, 0, path, "open")
        flags = ((0 if create else OPEN_NO_CREATE) | (0 if create_dirs else OPEN_NO_CREATE_DIRS)
                 | (OPEN_INHERITABLE if inheritable else 0))
        raw = ctypes.c_void_p()
        os_error = ctypes.c_int(0)
        if mode is None:
            status = _lib.ipl_open_ex(encoded, flags, ctypes.byref(raw), ctypes.byref(os_error))
        else:
            if not isinstance(mode, int) or not 0 <= mode <= 0o777:
                raise ValueError("mode must be an int from 0 to 0o777, not %r" % (mode,))
            status = _lib.ipl_open_mode(encoded, flags, mode, ctypes.byref(raw),
                                        ctypes.byref(os_error))
        if status != Status.OK:
            raise _native.error_for(status, os_error.value, path, "open")
        self._raw = raw
        _open_locks.add(self)

    @classmethod
    def from_fd(cls, fd: int) -> "Lock":
        """A Lock over the caller's open descriptor `fd` (a regular file; an
        int or an object with fileno()), whose locks are taken on fd's open
        file description (ipl_open_fd): shared by every copy of it (dup,
        fork, exec), they outlive this process while a copy stays open, as
        flock(1)'s do. If the description holds a lock already (one an
        earlier process left on it), the Lock starts out holding it
        (held_mode "inherited"; release() ends it). libipl never closes fd:
        keep it open while the Lock lives. An exclusive lock needs fd open
        for writing, a shared one for reading (else AccessError). No path:
        .path is None, remove() raises UnsupportedError, and the Lock cannot
        be used in a forked child (UnsupportedError).
        Raises InvalidArgumentError (fd < 0), IplError with EBADF (fd not
        open), NotRegularFileError, UnsupportedError (the classic POSIX
        backend, Windows: their locks are not per description)."""
        if not isinstance(fd, int):
            fd = fd.fileno()
        self = cls.__new__(cls)
        self._raw = None
        self._state = threading.Lock()
        self._busy = False
        self._held = None
        self.fd = fd
        self.path = None  # type: ignore[assignment]
        raw = ctypes.c_void_p()
        os_error = ctypes.c_int(0)
        status = _lib.ipl_open_fd(fd, 0, ctypes.byref(raw), ctypes.byref(os_error))
        if status != Status.OK:
            raise _native.error_for(status, os_error.value, None, "open descriptor %d" % fd)
        self._raw = raw
        if _lib.ipl_check(raw) == Status.OK:
            self._held = INHERITED
        _open_locks.add(self)
        return self

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
                # KeyboardInterrupt (or any exception a signal handler
                # raised) while waiting: the wait was canceled, but may have
                # been granted first. Let go of it: an acquire that raises
                # holds nothing.
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
    def _wait(c_call: Callable[[Any, int], int], raw: ctypes.c_void_p, timeout_ms: int) -> int:
        """c_call(raw, timeout_ms): an acquire or an upgrade. Only the main
        thread runs Python's signal handlers, so only there does a wait
        that has to sleep go to a worker (see the module's "Ctrl-C")."""
        if timeout_ms == 0 or threading.current_thread() is not threading.main_thread():
            return c_call(raw, timeout_ms)
        # One try first: an uncontended lock needs no thread.
        start = time.monotonic()
        status = c_call(raw, 0)
        if status != Status.TIMEOUT:
            return status
        if timeout_ms != WAIT_FOREVER:
            # Rounded up: the whole wait is never shorter than asked.
            timeout_ms = math.ceil(timeout_ms - (time.monotonic() - start) * 1000)
            if timeout_ms <= 0:
                return status
        return _wait_in_worker(c_call, raw, timeout_ms)

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
            if held == INHERITED and status == Status.NOT_HELD:
                status = _lib.ipl_release_read(raw)  # it was a shared lock
            if status == Status.LOST:
                self._held = None  # gone already: nothing is held any more
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "release")
            self._held = None

    # ---- Beyond acquire and release -----------------------------------------------

    def query(self, find_holder: bool = True) -> QueryResult:
        """Is the lock held by anyone but this Lock right now, and how
        (ipl_query)? This Lock's own lock never counts: holding it
        exclusive, query() sees LockState.FREE. find_holder=False skips the
        look-up of a holder's process id (on Linux a scan of /proc for OFD
        holders). Raises WouldDeadlockError while another thread acquires
        on this Lock."""
        state = ctypes.c_int(0)
        pid = ctypes.c_int64(-1)
        with self._state:  # so that close() cannot free the handle meanwhile
            raw = self._open_handle("query")
            status = _lib.ipl_query(raw, ctypes.byref(state),
                                    ctypes.byref(pid) if find_holder else None)
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "query")
        return QueryResult(LockState(state.value), pid.value if pid.value >= 0 else None)

    def cancel(self) -> None:
        """Ends a wait in progress on this Lock in another thread (an
        acquire or an upgrade), which then raises CanceledError and holds
        what it held before. Does nothing when no wait is in progress, also
        to a wait that starts afterwards: call it again until the waiting
        thread has returned."""
        with self._state:  # so that close() cannot free the handle meanwhile
            raw = self._open_handle("cancel")
            _lib.ipl_cancel(raw)

    def downgrade(self) -> None:
        """Turns the exclusive lock this Lock holds into a shared one,
        atomically: no writer can get in between; other readers may join.
        NotHeldError unless this Lock holds the lock exclusive."""
        with self._state:
            raw = self._open_handle("downgrade")
            if self._busy or self._held != EXCLUSIVE:
                raise _native.error_for(Status.NOT_HELD, 0, self.path, "downgrade")
            status = _lib.ipl_downgrade(raw)
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "downgrade")
            self._held = SHARED

    def upgrade(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Turns the shared lock this Lock holds into the exclusive one,
        waiting (as acquire() waits) for the other readers to leave. The
        shared lock is kept while waiting and whenever this returns False or
        raises. Only one upgrade of a lock file waits at a time: when
        another one (any process) is waiting already, this raises
        WouldDeadlockError at once, and the caller should release its
        shared lock so that the other can finish. NotHeldError unless this
        Lock holds the lock shared; CanceledError after cancel()."""
        timeout_ms = _timeout_ms(blocking, timeout)
        with self._state:
            raw = self._open_handle("upgrade")
            if self._busy:
                raise _native.error_for(Status.WOULD_DEADLOCK, 0, self.path, "upgrade")
            if self._held != SHARED:
                raise _native.error_for(Status.NOT_HELD, 0, self.path, "upgrade")
            self._busy = True
        try:
            try:
                status = self._wait(_lib.ipl_upgrade, raw, timeout_ms)
            except BaseException:
                # Interrupted: an upgrade granted meanwhile goes back to
                # shared, the lock this Lock held when it was called.
                _lib.ipl_downgrade(raw)
                raise
            if status == Status.OK:
                self._held = EXCLUSIVE
                return True
            if status == Status.TIMEOUT:
                return False
            raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "upgrade")
        finally:
            self._busy = False

    def remove(self) -> None:
        """While holding the exclusive lock: removes the lock file and
        releases the lock (ipl_remove), so that nothing is left behind; a
        later acquire creates the file again. Remove only lock files that
        fasteners processes do not use (see ipl.h). NotHeldError unless this
        Lock holds the lock exclusive; AccessError when the file may not be
        removed (the lock is then kept)."""
        with self._state:
            raw = self._open_handle("remove")
            if self._busy or self._held != EXCLUSIVE:
                raise _native.error_for(Status.NOT_HELD, 0, self.path, "remove")
            status = _lib.ipl_remove(raw)
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "remove")
            self._held = None

    def check(self) -> None:
        """Is the lock this Lock holds still held (ipl_check)? Asks the OS
        (on a network file system, the server) and checks that the path
        still names the locked file; never waits for the lock, but an
        unreachable server can keep it waiting until the file system gives
        up (seconds). Returns None when it is; raises LostError when the
        lock is gone (the Lock then holds nothing), NotHeldError when the
        Lock holds none, WouldDeadlockError while another thread acquires
        on it."""
        with self._state:
            raw = self._open_handle("check")
            if self._busy:
                raise _native.error_for(Status.WOULD_DEADLOCK, 0, self.path, "check")
            status = _lib.ipl_check(raw)
            if status == Status.LOST:
                self._held = None
            if status != Status.OK:
                raise _native.error_for(status, _lib.ipl_os_error(raw), self.path, "check")

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
        """"exclusive", "shared", None when nothing is held, or
        "inherited" (see from_fd)."""
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
        if self.path is None:
            return "<ipl.Lock fd %d %s>" % (self.fd, state)
        return "<ipl.Lock %r %s>" % (self.path, state)

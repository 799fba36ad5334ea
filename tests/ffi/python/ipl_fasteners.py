"""libipl through ctypes, shaped like the fasteners API.

    import ipl_fasteners as fasteners

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

The locks are the same whole-file fcntl locks fasteners takes, so processes
using fasteners and processes using this module exclude each other.

The library is loaded from $IPL_LIBRARY when set, else from what
ctypes.util.find_library("ipl") finds, else "libipl.so.1".

Differences from fasteners, on purpose:
- `sleep_func`, `delay` and `max_delay` are accepted (so fasteners code runs
  unchanged) and checked as fasteners checks them, but not used: libipl sleeps
  in the kernel and wakes as soon as the lock is released, instead of polling.
- Errors raise IplError (a threading.ThreadError, as fasteners raises) that
  carries libipl's status number and its ipl_strerror() text. Acquiring a lock
  this object already holds is an error (IPL_E_WOULD_DEADLOCK), never a
  silent re-lock.

Why a blocking wait is cut into slices: a ctypes call that blocks in C cannot
be interrupted. Python's SIGINT handler only sets a flag; KeyboardInterrupt is
raised between bytecodes, so not before the C call returns (libipl, by
contract, resumes its wait after a signal). A wait is therefore a loop of
ipl_acquire() calls of at most WAIT_SLICE_S each, up to the caller's deadline:
Ctrl-C is seen within one slice, and the lock is still handed over at once
when released, since each slice is a kernel wait too. An acquire that raises
(KeyboardInterrupt included) closes its handle on the way out, so it does not
leave the lock held.
"""

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import threading
import time

__all__ = [
    "InterProcessLock",
    "InterProcessReaderWriterLock",
    "IplError",
    "interprocess_locked",
    "interprocess_read_locked",
    "interprocess_write_locked",
]

LOG = logging.getLogger(__name__)

# Status values pinned by include/ipl/ipl.h.
IPL_OK = 0
IPL_E_TIMEOUT = -1
IPL_E_INVALID = -2
IPL_E_NOT_HELD = -3
IPL_E_WOULD_DEADLOCK = -4
IPL_WAIT_FOREVER = -1

# The longest single ipl_acquire() call: bounds how late Ctrl-C is seen.
WAIT_SLICE_S = 0.05


def _load_library():
    name = os.environ.get("IPL_LIBRARY") or ctypes.util.find_library("ipl") or "libipl.so.1"
    lib = ctypes.CDLL(name)
    handle_out = ctypes.POINTER(ctypes.c_void_p)
    lib.ipl_open.argtypes = [ctypes.c_char_p, ctypes.c_uint32, handle_out]
    lib.ipl_open.restype = ctypes.c_int
    lib.ipl_open_ex.argtypes = [ctypes.c_char_p, ctypes.c_uint32, handle_out,
                                ctypes.POINTER(ctypes.c_int)]
    lib.ipl_open_ex.restype = ctypes.c_int
    lib.ipl_close.argtypes = [ctypes.c_void_p]
    lib.ipl_close.restype = None
    for acquire in (lib.ipl_acquire, lib.ipl_acquire_read, lib.ipl_acquire_write):
        acquire.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        acquire.restype = ctypes.c_int
    for release in (lib.ipl_release, lib.ipl_release_read, lib.ipl_release_write):
        release.argtypes = [ctypes.c_void_p]
        release.restype = ctypes.c_int
    lib.ipl_os_error.argtypes = [ctypes.c_void_p]
    lib.ipl_os_error.restype = ctypes.c_int
    lib.ipl_strerror.argtypes = [ctypes.c_int]
    lib.ipl_strerror.restype = ctypes.c_char_p
    lib.ipl_version_string.argtypes = []
    lib.ipl_version_string.restype = ctypes.c_char_p
    return lib


_lib = _load_library()


def library_version():
    """The version string of the libipl actually loaded."""
    return _lib.ipl_version_string().decode()


class IplError(threading.ThreadError):
    """A libipl call failed: .status is the IPL_E_* value, .os_error the errno
    behind it (0 when none), .strerror libipl's text for the status."""

    def __init__(self, action, path, status, os_error=0):
        self.status = status
        self.os_error = os_error
        self.strerror = _lib.ipl_strerror(status).decode()
        self.path = path
        text = "%s `%s`: %s (ipl status %d)" % (action, os.fsdecode(path), self.strerror, status)
        if os_error:
            text += ": " + os.strerror(os_error)
        super().__init__(text)


def _check_wait_arguments(delay, max_delay, timeout):
    # The same checks fasteners makes, so the same calls fail.
    if delay < 0:
        raise ValueError("Delay must be greater than or equal to zero")
    if timeout is not None and timeout < 0:
        raise ValueError("Timeout must be greater than or equal to zero")
    del max_delay  # accepted for fasteners compatibility; libipl does not poll


class _Handle:
    """One libipl handle on one lock file, opened for one acquisition and
    closed on release (as fasteners opens and closes its file). Safe to share
    between threads: a second acquire while one is held or in progress gets
    IPL_E_WOULD_DEADLOCK, as libipl answers for one handle."""

    def __init__(self, path):
        self.path = path
        self.raw = None
        self._busy = False
        self._state = threading.Lock()

    def acquire(self, c_acquire, blocking, timeout):
        """Returns True when acquired, False when not in time; raises IplError."""
        with self._state:
            if self.raw is not None or self._busy:
                raise IplError("Unable to acquire", self.path, IPL_E_WOULD_DEADLOCK)
            self._busy = True
        try:
            return self._open_and_acquire(c_acquire, blocking, timeout)
        finally:
            with self._state:
                self._busy = False

    def _open_and_acquire(self, c_acquire, blocking, timeout):
        raw = ctypes.c_void_p()  # NULL until opened; ipl_close(NULL) is a no-op
        try:
            os_error = ctypes.c_int(0)
            status = _lib.ipl_open_ex(self.path, 0, ctypes.byref(raw), ctypes.byref(os_error))
            if status != IPL_OK:
                raise IplError("Unable to open lock file", self.path, status, os_error.value)
            if not blocking:
                status = c_acquire(raw, 0)
            else:
                status = self._wait_in_slices(c_acquire, raw, timeout)
            if status == IPL_OK:
                with self._state:
                    self.raw = raw
                return True
            if status != IPL_E_TIMEOUT:
                raise IplError("Unable to acquire lock on", self.path, status,
                               _lib.ipl_os_error(raw))
        except BaseException:
            # IplError, or KeyboardInterrupt between two slices or just after
            # the one that succeeded: closing the handle releases whatever it
            # took, so an acquire that raises does not leave the lock held.
            with self._state:
                if self.raw is raw:
                    self.raw = None
            _lib.ipl_close(raw)
            raise
        _lib.ipl_close(raw)  # timed out: nothing held
        return False

    @staticmethod
    def _wait_in_slices(c_acquire, raw, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                slice_s = WAIT_SLICE_S
            else:
                slice_s = min(WAIT_SLICE_S, deadline - time.monotonic())
            # Whole milliseconds, rounded up, so the total wait is never
            # shorter than the timeout; 0 makes the final call a single try.
            slice_ms = max(0, math.ceil(slice_s * 1000))
            status = c_acquire(raw, slice_ms)
            if status != IPL_E_TIMEOUT:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return IPL_E_TIMEOUT

    def release(self, c_release):
        with self._state:
            raw = self.raw
            if raw is None:
                raise IplError("Unable to release", self.path, IPL_E_NOT_HELD)
            status = c_release(raw)
            if status != IPL_OK:
                raise IplError("Unable to release", self.path, status, _lib.ipl_os_error(raw))
            self.raw = None
        _lib.ipl_close(raw)

    def close(self):
        with self._state:
            raw, self.raw = self.raw, None
        if raw is not None:
            _lib.ipl_close(raw)

    @property
    def held(self):
        return self.raw is not None


class InterProcessLock:
    """An exclusive inter-process lock on the file at `path` (fasteners'
    InterProcessLock)."""

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(self, path, sleep_func=time.sleep, logger=None):
        self.path = os.fsencode(path)
        self.sleep_func = sleep_func  # unused: libipl waits in the kernel
        self.logger = logger if logger is not None else LOG
        self._handle = _Handle(self.path)

    @property
    def acquired(self):
        return self._handle.held

    def acquire(self, blocking=True, delay=DELAY_INCREMENT, max_delay=MAX_DELAY,
                timeout=None):
        """Takes the lock. blocking=False tries once; otherwise waits at most
        `timeout` seconds (None: no limit). Returns whether it was acquired."""
        _check_wait_arguments(delay, max_delay, timeout)
        gotten = self._handle.acquire(_lib.ipl_acquire, blocking, timeout)
        if gotten:
            self.logger.debug("Acquired file lock `%s`", os.fsdecode(self.path))
        return gotten

    def release(self):
        """Releases the lock; IplError (IPL_E_NOT_HELD) when not held."""
        self._handle.release(_lib.ipl_release)
        self.logger.debug("Unlocked file lock `%s`", os.fsdecode(self.path))

    def exists(self):
        return os.path.exists(self.path)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.release()

    def __del__(self):
        # Like fasteners' file object being collected: the lock goes with it.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


class InterProcessReaderWriterLock:
    """A reader-writer inter-process lock on the file at `path` (fasteners'
    InterProcessReaderWriterLock): many readers or one writer."""

    MAX_DELAY = 0.1
    DELAY_INCREMENT = 0.01

    def __init__(self, path, sleep_func=time.sleep, logger=None):
        self.path = os.fsencode(path)
        self.sleep_func = sleep_func  # unused: libipl waits in the kernel
        self.logger = logger if logger is not None else LOG
        self._handle = _Handle(self.path)

    def acquire_read_lock(self, blocking=True, delay=DELAY_INCREMENT,
                          max_delay=MAX_DELAY, timeout=None):
        _check_wait_arguments(delay, max_delay, timeout)
        return self._handle.acquire(_lib.ipl_acquire_read, blocking, timeout)

    def acquire_write_lock(self, blocking=True, delay=DELAY_INCREMENT,
                           max_delay=MAX_DELAY, timeout=None):
        _check_wait_arguments(delay, max_delay, timeout)
        return self._handle.acquire(_lib.ipl_acquire_write, blocking, timeout)

    def release_read_lock(self):
        self._handle.release(_lib.ipl_release_read)

    def release_write_lock(self):
        self._handle.release(_lib.ipl_release_write)

    @contextlib.contextmanager
    def read_lock(self, delay=DELAY_INCREMENT, max_delay=MAX_DELAY):
        self.acquire_read_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_read_lock()

    @contextlib.contextmanager
    def write_lock(self, delay=DELAY_INCREMENT, max_delay=MAX_DELAY):
        self.acquire_write_lock(delay=delay, max_delay=max_delay)
        try:
            yield
        finally:
            self.release_write_lock()

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


# Each call takes the lock through a lock object of its own (fasteners shares
# one per decorator), so concurrent calls from threads of one process exclude
# each other too, as libipl handles do.


def _locked_around_each_call(take_lock):
    """A decorator that enters the context manager take_lock() returns
    around each call of the function it decorates."""
    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            with take_lock():
                return f(*args, **kwargs)
        return wrapper
    return decorator


def interprocess_locked(path):
    """Decorator: takes the exclusive lock on `path` around each call."""
    return _locked_around_each_call(lambda: InterProcessLock(path))


def interprocess_read_locked(path):
    """Decorator: takes the read (shared) lock on `path` around each call."""
    return _locked_around_each_call(lambda: InterProcessReaderWriterLock(path).read_lock())


def interprocess_write_locked(path):
    """Decorator: takes the write (exclusive) lock on `path` around each call."""
    return _locked_around_each_call(lambda: InterProcessReaderWriterLock(path).write_lock())

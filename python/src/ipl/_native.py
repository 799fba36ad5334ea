# SPDX-License-Identifier: MIT
"""libipl's C API through ctypes: finding the shared library, declaring every
function of ipl.h, the pinned status values, and the exceptions they become.

Nothing here is public API; the package re-exports what is (see __init__).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import os
import sys
from typing import Dict, List, Optional, Tuple, Type, Union

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class Status(enum.IntEnum):
    """The status values pinned by ipl.h (IPL_OK, IPL_E_*)."""

    OK = 0
    TIMEOUT = -1
    INVALID = -2
    NOT_HELD = -3
    WOULD_DEADLOCK = -4
    ACCESS = -5
    NOT_REGULAR_FILE = -6
    NAME_TOO_LONG = -7
    NO_MEMORY = -8
    OS = -9
    BAD_PARENT = -10
    INTERNAL = -11
    UNSUPPORTED = -12
    SIGNAL_IN_USE = -13
    CANCELED = -14
    LOST = -15


class LockState(enum.IntEnum):
    """How others hold the lock, as Lock.query() reports it (IPL_STATE_*)."""

    FREE = 0
    SHARED = 1
    EXCLUSIVE = 2


WAIT_FOREVER = -1
WAIT_SIGNAL_AUTO = -1
OPEN_NO_CREATE = 0x1
OPEN_NO_CREATE_DIRS = 0x2
OPEN_INHERITABLE = 0x4

# The shared library's file name, by platform: the SONAME on ELF systems, the
# install name on macOS, the DLL MinGW's meson build makes on Windows.
if sys.platform == "win32":
    LIBRARY_NAMES = ("libipl-1.dll", "ipl.dll")
elif sys.platform == "darwin":
    LIBRARY_NAMES = ("libipl.1.dylib",)
else:
    LIBRARY_NAMES = ("libipl.so.1",)

INSTALL_HINT = (
    "Install libipl's shared library first: from the libipl sources, "
    "`meson setup build --prefix=/usr && ninja -C build && meson install -C build` "
    "(or your distribution's libipl package). Under another prefix, start Python "
    "with LD_LIBRARY_PATH=<prefix>/lib/<multiarch> (DYLD_LIBRARY_PATH on macOS, "
    "PATH on Windows), or set IPL_LIBRARY to the library's full path."
)


class LibraryNotFoundError(ImportError):
    """libipl's shared library could not be loaded (raised on import)."""


def _load() -> Tuple[ctypes.CDLL, str]:
    """The loaded library and the name it was loaded by. $IPL_LIBRARY, when
    set, is the only candidate: a wrong path must fail, not fall back."""
    explicit = os.environ.get("IPL_LIBRARY")
    if explicit:
        candidates: List[str] = [explicit]
    else:
        candidates = list(LIBRARY_NAMES)
        found = ctypes.util.find_library("ipl")
        if found and found not in candidates:
            candidates.append(found)
    failures = []
    for name in candidates:
        try:
            return ctypes.CDLL(name), name
        except OSError as error:
            failures.append("%s (%s)" % (name, error))
    source = "IPL_LIBRARY=" + explicit if explicit else "the dynamic linker's search path"
    raise LibraryNotFoundError(
        "libipl not found through %s; tried: %s. %s" % (source, "; ".join(failures), INSTALL_HINT))


# The functions of libipl 0.2.0 (version node IPL_2) this package needs.
NEWER_FUNCTIONS = ("ipl_open_mode", "ipl_open_fd", "ipl_query", "ipl_cancel", "ipl_downgrade",
                   "ipl_upgrade", "ipl_remove", "ipl_check")
MIN_LIBRARY_VERSION = "0.2.0"


def _declare(lib: ctypes.CDLL, name: str) -> None:
    """Gives every ipl.h function its C signature. Raises
    LibraryNotFoundError when the library is older than this package."""
    handle = ctypes.c_void_p
    handle_out = ctypes.POINTER(ctypes.c_void_p)
    c_int, c_int64, c_uint32 = ctypes.c_int, ctypes.c_int64, ctypes.c_uint32
    signatures = {
        "ipl_open": (c_int, [ctypes.c_char_p, c_uint32, handle_out]),
        "ipl_open_ex": (c_int, [ctypes.c_char_p, c_uint32, handle_out, ctypes.POINTER(c_int)]),
        "ipl_open_mode": (c_int, [ctypes.c_char_p, c_uint32, c_uint32, handle_out,
                                  ctypes.POINTER(c_int)]),
        "ipl_open_fd": (c_int, [c_int, c_uint32, handle_out, ctypes.POINTER(c_int)]),
        "ipl_close": (None, [handle]),
        "ipl_acquire": (c_int, [handle, c_int64]),
        "ipl_release": (c_int, [handle]),
        "ipl_acquire_read": (c_int, [handle, c_int64]),
        "ipl_release_read": (c_int, [handle]),
        "ipl_acquire_write": (c_int, [handle, c_int64]),
        "ipl_release_write": (c_int, [handle]),
        "ipl_query": (c_int, [handle, ctypes.POINTER(c_int), ctypes.POINTER(c_int64)]),
        "ipl_cancel": (c_int, [handle]),
        "ipl_downgrade": (c_int, [handle]),
        "ipl_upgrade": (c_int, [handle, c_int64]),
        "ipl_remove": (c_int, [handle]),
        "ipl_check": (c_int, [handle]),
        "ipl_set_wait_signal": (c_int, [c_int]),
        "ipl_wait_signal": (c_int, []),
        "ipl_os_error": (c_int, [handle]),
        "ipl_strerror": (ctypes.c_char_p, [c_int]),
        "ipl_version_number": (c_uint32, []),
        "ipl_version_string": (ctypes.c_char_p, []),
    }
    missing = [function for function in NEWER_FUNCTIONS if not hasattr(lib, function)]
    if missing:
        found = lib.ipl_version_string
        found.restype = ctypes.c_char_p
        raise LibraryNotFoundError(
            "%s is libipl %s, which lacks %s; this package needs libipl %s or later. %s" % (
                name, found().decode(), ", ".join(missing), MIN_LIBRARY_VERSION, INSTALL_HINT))
    for function_name, (restype, argtypes) in signatures.items():
        function = getattr(lib, function_name)
        function.restype = restype
        function.argtypes = argtypes


lib, library_name = _load()
_declare(lib, library_name)


def strerror(status: int) -> str:
    """libipl's text for a status (ipl_strerror)."""
    return lib.ipl_strerror(status).decode("utf-8", "replace")


# ---- Exceptions ---------------------------------------------------------------
#
# Every failure is an IplError, which is an OSError carrying the libipl status,
# the errno behind it and the lock file's path (.filename). Each status also
# has its own class, which inherits the builtin exception a Python programmer
# would catch for it: TimeoutError, PermissionError, IsADirectoryError, ...


class IplError(OSError):
    """A libipl call failed.

    .status   the Status (IPL_E_*)
    .errno    the OS error number behind it (ipl_os_error / ipl_open_ex), or,
              when libipl made no failing system call, the errno that names
              the same condition (e.g. ETIMEDOUT, EDEADLK); None when none does
    .os_error the OS error number libipl reported, 0 when none
    .strerror libipl's text for the status (ipl_strerror)
    .filename the lock file's path, as given
    """

    default_errno: Optional[int] = None

    def __init__(self, status: int, os_error: int = 0, path: Optional[PathArg] = None,
                 action: str = "lock") -> None:
        number = os_error or self.default_errno
        super().__init__(number, strerror(status), os.fspath(path) if path is not None else None)
        self.status = Status(status) if status in Status._value2member_map_ else status
        self.os_error = os_error
        self.action = action

    def __str__(self) -> str:
        where = ""
        if self.filename is not None:
            where = " %r" % (os.fsdecode(self.filename),)
        text = "cannot %s%s: %s (ipl status %d)" % (self.action, where, self.strerror, self.status)
        if self.os_error:
            text += ": %s (errno %d)" % (os.strerror(self.os_error), self.os_error)
        return text

    def __reduce__(self):
        # Pickled as the arguments it was made from (multiprocessing sends
        # exceptions between processes).
        return (error_for, (int(self.status), self.os_error, self.filename, self.action))


class LockTimeoutError(IplError, TimeoutError):
    """IPL_E_TIMEOUT: not acquired in time (raised by the context managers;
    acquire() returns False instead)."""
    default_errno = errno.ETIMEDOUT


class InvalidArgumentError(IplError, ValueError):
    """IPL_E_INVALID: an empty path, a path with a NUL byte, a bad timeout."""
    default_errno = errno.EINVAL


class NotHeldError(IplError, RuntimeError):
    """IPL_E_NOT_HELD: release of a lock (or mode) this object does not hold.
    A RuntimeError, i.e. a threading.ThreadError, as threading's locks raise."""


class WouldDeadlockError(IplError, RuntimeError):
    """IPL_E_WOULD_DEADLOCK: this object already holds the lock, or another
    thread is acquiring on it. Locks are not reentrant."""
    default_errno = errno.EDEADLK


class AccessError(IplError, PermissionError):
    """IPL_E_ACCESS: the OS denied access to the lock file or a folder."""
    default_errno = errno.EACCES


class NotRegularFileError(IplError):
    """IPL_E_NOT_REGULAR_FILE: the path names a folder, FIFO, device, ..."""


class _IsADirectory(NotRegularFileError, IsADirectoryError):
    """IPL_E_NOT_REGULAR_FILE for a folder: also an IsADirectoryError."""
    default_errno = errno.EISDIR


class NameTooLongError(IplError):
    """IPL_E_NAME_TOO_LONG: the path or one of its components is too long."""
    default_errno = errno.ENAMETOOLONG


class OutOfMemoryError(IplError, MemoryError):
    """IPL_E_NO_MEMORY."""
    default_errno = errno.ENOMEM


class BadParentError(IplError, NotADirectoryError):
    """IPL_E_BAD_PARENT: a parent of the lock file is not a folder, or is
    missing while create_dirs=False."""
    default_errno = errno.ENOTDIR


class InternalError(IplError):
    """IPL_E_INTERNAL: a bug in libipl."""


class UnsupportedError(IplError):
    """IPL_E_UNSUPPORTED: not possible on this platform or with this library."""
    default_errno = errno.ENOTSUP


class SignalInUseError(IplError):
    """IPL_E_SIGNAL_IN_USE: set_wait_signal() on a signal the program handles."""
    default_errno = errno.EBUSY


class LostError(IplError):
    """IPL_E_LOST: the lock this Lock held is gone without a release (a
    network file server restarted or was cut off, or the lock file was
    removed or replaced). The Lock holds nothing any more. Only an
    IplError (an OSError): no builtin names a lock taken away, and a
    ConnectionError would be wrong for a replaced file. .errno is the OS
    error libipl saw (e.g. ESTALE, ENOTCONN), else None."""


class CanceledError(IplError):
    """IPL_E_CANCELED: Lock.cancel() (from another thread) ended the wait.
    Nothing was acquired; an upgrade keeps its shared lock. Only an
    IplError (an OSError, errno ECANCELED): not an InterruptedError, which
    code may retry (PEP 475), and not asyncio.CancelledError, a
    BaseException meant for tasks. (Ctrl-C raises KeyboardInterrupt, never
    this.)"""
    default_errno = errno.ECANCELED


class _FileNotFound(IplError, FileNotFoundError):
    """IPL_E_OS with ENOENT (create=False and no lock file)."""


class _OSPermission(IplError, PermissionError):
    """IPL_E_OS with EACCES or EPERM."""


class _OSNotADirectory(IplError, NotADirectoryError):
    """IPL_E_OS with ENOTDIR."""


_BY_STATUS: Dict[int, Type[IplError]] = {
    Status.TIMEOUT: LockTimeoutError,
    Status.INVALID: InvalidArgumentError,
    Status.NOT_HELD: NotHeldError,
    Status.WOULD_DEADLOCK: WouldDeadlockError,
    Status.ACCESS: AccessError,
    Status.NOT_REGULAR_FILE: NotRegularFileError,
    Status.NAME_TOO_LONG: NameTooLongError,
    Status.NO_MEMORY: OutOfMemoryError,
    Status.BAD_PARENT: BadParentError,
    Status.INTERNAL: InternalError,
    Status.UNSUPPORTED: UnsupportedError,
    Status.SIGNAL_IN_USE: SignalInUseError,
    Status.CANCELED: CanceledError,
    Status.LOST: LostError,
}

_OS_BY_ERRNO: Dict[int, Type[IplError]] = {
    errno.ENOENT: _FileNotFound,
    errno.EACCES: _OSPermission,
    errno.EPERM: _OSPermission,
    errno.ENOTDIR: _OSNotADirectory,
}


def error_for(status: int, os_error: int = 0, path: Optional[PathArg] = None,
              action: str = "lock") -> IplError:
    """The exception for a failed call: the status's class, refined by the
    errno where a builtin names it better."""
    if status == Status.OS:
        cls = _OS_BY_ERRNO.get(os_error, IplError)
    elif status == Status.NOT_REGULAR_FILE and (
            os_error == errno.EISDIR or (path is not None and os.path.isdir(path))):
        cls = _IsADirectory
    else:
        cls = _BY_STATUS.get(status, IplError)
    return cls(status, os_error, path, action)

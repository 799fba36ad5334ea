# SPDX-License-Identifier: MIT
"""ipl.Lock: libipl's own API from Python."""

import errno
import gc
import os
import pickle
import stat
import threading
import time

import pytest

import ipl
from conftest import CHILD_BOUND_S, fasteners_try


def other_can_lock(path, shared=False):
    """Whether a separate handle of this process gets the lock right now."""
    probe = ipl.Lock(path)
    try:
        return probe.acquire(blocking=False, shared=shared)
    finally:
        probe.close()


# ---- Taking and releasing -----------------------------------------------------

# Catches: acquire not taking a real lock, release not dropping it, or two
# handles of one process not excluding each other.
def test_exclusive_excludes_another_handle_until_release(lock_path):
    lock = ipl.Lock(lock_path)
    assert not lock.held
    assert lock.acquire()
    assert lock.held and lock.held_mode == "exclusive"
    assert not other_can_lock(lock_path)
    assert not other_can_lock(lock_path, shared=True)
    lock.release()
    assert not lock.held and lock.held_mode is None
    assert other_can_lock(lock_path)


# Catches: the shared lock taken as exclusive, a writer let in beside
# readers, a reader beside a writer.
def test_readers_share_writers_exclude(lock_path):
    reader1, reader2, writer = ipl.Lock(lock_path), ipl.Lock(lock_path), ipl.Lock(lock_path)
    assert reader1.acquire(blocking=False, shared=True)
    assert reader2.acquire(blocking=False, shared=True)
    assert reader1.held_mode == "shared"
    assert not writer.acquire(blocking=False)
    reader1.release()
    assert not writer.acquire(timeout=0.05)
    reader2.release()
    assert writer.acquire(blocking=False)
    assert not reader1.acquire(blocking=False, shared=True)
    writer.release()


# Catches: a second acquire on one object silently "succeeding" or dropping
# the lock, and release of an unheld lock passing silently.
def test_not_reentrant_and_release_needs_a_held_lock(lock_path):
    lock = ipl.Lock(lock_path)
    with pytest.raises(ipl.NotHeldError) as raised:
        lock.release()
    assert isinstance(raised.value, threading.ThreadError)
    assert raised.value.status == ipl.Status.NOT_HELD
    assert lock.acquire(shared=True)
    for shared in (True, False):
        with pytest.raises(ipl.WouldDeadlockError) as raised:
            lock.acquire(blocking=False, shared=shared)
        assert raised.value.errno == errno.EDEADLK
    assert lock.held_mode == "shared"
    assert not other_can_lock(lock_path)
    lock.release()


# Catches: a non-blocking try that sleeps, or reports success while the lock
# is held elsewhere; a timed wait that ends early (rounding down, a deadline
# measured from the wrong moment, the first try taken as the whole wait).
def test_try_is_immediate_and_timeouts_are_never_cut_short(lock_path):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    lock = ipl.Lock(lock_path)
    start = time.monotonic()
    assert not lock.acquire(blocking=False)
    assert time.monotonic() - start < 1.0
    for timeout in (0.001, 0.049, 0.123):
        start = time.monotonic()
        assert not lock.acquire(timeout=timeout)
        elapsed = time.monotonic() - start
        assert timeout <= elapsed < timeout + 2.0
    assert not lock.held
    holder.release()


# Catches: a wait that notices a release only at its deadline (or polls
# slowly), or a blocking acquire that never returns; also a lock tied to
# the thread that took it (the release comes from another thread).
@pytest.mark.parametrize("timeout", [30.0, None])
def test_a_waiter_gets_the_lock_soon_after_the_release(lock_path, timeout):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    released_at = []

    def release_later():
        time.sleep(0.2)
        released_at.append(time.monotonic())
        holder.release()

    releaser = threading.Thread(target=release_later)
    releaser.start()
    waiter = ipl.Lock(lock_path)
    try:
        assert waiter.acquire(timeout=timeout)
        handoff = time.monotonic() - released_at[0]
    finally:
        releaser.join(CHILD_BOUND_S)
    assert handoff < 1.0, "hand-off took %.3f s" % handoff
    waiter.release()


# Catches: a second thread let into a handle that a first thread is still
# waiting on (a naive check would miss the moment between its try and its
# wait), and close() racing a wait.
def test_a_handle_being_acquired_refuses_other_threads(lock_path):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    shared_handle = ipl.Lock(lock_path)
    result = []
    waiter = threading.Thread(target=lambda: result.append(shared_handle.acquire(timeout=1.0)))
    waiter.start()
    try:
        time.sleep(0.2)
        with pytest.raises(ipl.WouldDeadlockError):
            shared_handle.acquire(blocking=False)
        with pytest.raises(ipl.WouldDeadlockError):
            shared_handle.close()
    finally:
        waiter.join(CHILD_BOUND_S)
    assert result == [False]
    holder.release()


# ---- Context managers, closing, collection -------------------------------------

# Catches: `with` not taking or not releasing the lock (also when the body
# raises), the timed context managers not raising on timeout, or raising
# something that is not a TimeoutError.
def test_context_managers(lock_path):
    lock = ipl.Lock(lock_path)
    with lock as entered:
        assert entered is lock
        assert not other_can_lock(lock_path)
    assert other_can_lock(lock_path)
    with pytest.raises(ZeroDivisionError):
        with lock.exclusive(timeout=1):
            assert lock.held_mode == "exclusive"
            1 / 0
    assert not lock.held
    with lock.shared():
        assert other_can_lock(lock_path, shared=True)
        assert not other_can_lock(lock_path)
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    start = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        with lock.shared(timeout=0.1):
            pytest.fail("entered a block whose lock is held elsewhere")
    assert time.monotonic() - start >= 0.1
    assert isinstance(raised.value, ipl.LockTimeoutError)
    assert raised.value.errno == errno.ETIMEDOUT
    assert raised.value.filename == lock_path


# Catches: close() or garbage collection that does not release the lock, a
# second close() that crashes, a closed Lock that still "works".
def test_close_and_collection_release(lock_path):
    lock = ipl.Lock(lock_path)
    assert lock.acquire()
    lock.close()
    assert lock.closed and not lock.held
    assert other_can_lock(lock_path)
    lock.close()
    with pytest.raises(ipl.InvalidArgumentError):
        lock.acquire()
    collected = ipl.Lock(lock_path)
    assert collected.acquire()
    del collected
    gc.collect()
    assert other_can_lock(lock_path)


# ---- Opening and errors -------------------------------------------------------

# Catches: lock files created only when their folder exists (fasteners'
# default creates missing folders), the lock file's contents touched.
def test_creates_missing_folders_and_never_writes_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "test.lock"
    lock = ipl.Lock(path)  # a PathLike
    assert path.is_file()
    path.write_bytes(b"keep me")
    assert lock.acquire()
    lock.release()
    lock.close()
    assert path.read_bytes() == b"keep me"


# Catches: errors that are not the builtin a Python programmer catches, or
# that lose the errno, the path or libipl's status.
def test_errors_subclass_the_builtins_with_errno_and_path(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(IsADirectoryError) as raised:
        ipl.Lock(folder)
    assert isinstance(raised.value, ipl.NotRegularFileError)
    assert raised.value.errno == errno.EISDIR
    assert raised.value.filename == folder
    assert raised.value.status == ipl.Status.NOT_REGULAR_FILE
    assert raised.value.strerror and raised.value.strerror in str(raised.value)

    missing = str(tmp_path / "missing.lock")
    with pytest.raises(FileNotFoundError) as raised:
        ipl.Lock(missing, create=False)
    assert raised.value.errno == errno.ENOENT and raised.value.filename == missing
    assert raised.value.status == ipl.Status.OS and raised.value.os_error == errno.ENOENT
    assert not os.path.exists(missing)

    with pytest.raises(ipl.BadParentError) as raised:
        ipl.Lock(tmp_path / "no" / "such" / "folder.lock", create_dirs=False)
    assert isinstance(raised.value, NotADirectoryError)
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        ipl.Lock(regular / "child.lock")

    with pytest.raises(ipl.NameTooLongError) as raised:
        ipl.Lock(tmp_path / ("x" * 300))
    assert raised.value.errno == errno.ENAMETOOLONG

    for bad in ("", str(tmp_path / "a\0b")):
        with pytest.raises(ValueError) as raised:
            ipl.Lock(bad)
        assert isinstance(raised.value, ipl.InvalidArgumentError)
    assert not (tmp_path / "a").exists(), "the path before the NUL was created"

    with pytest.raises(ValueError):
        ipl.Lock(tmp_path / "x.lock").acquire(timeout=-1)


# Catches: an exception that cannot cross a process boundary (multiprocessing
# pickles it) or comes back as another class or without its fields.
def test_errors_survive_pickling(tmp_path):
    with pytest.raises(ipl.IplError) as raised:
        ipl.Lock(str(tmp_path))
    error = raised.value
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.status, copy.errno, copy.filename, str(copy)) == \
        (error.status, error.errno, error.filename, str(error))


# Catches: the creation mode not reaching ipl_open_mode, or the umask still
# applied to it; an existing file's mode changed. Needs libipl >= 0.2.0.
def test_creation_mode_is_exact_whatever_the_umask(tmp_path):
    path = tmp_path / "sub" / "group.lock"
    old_umask = os.umask(0o077)
    try:
        lock = ipl.Lock(path, mode=0o664)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o775
    assert lock.acquire(blocking=False)
    lock.close()
    os.chmod(path, 0o600)
    ipl.Lock(path, mode=0o666).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        ipl.Lock(path, mode=0o1000)


# ---- Between processes ------------------------------------------------------------

# Catches: a lock another process does not see (in either direction, with
# fasteners on the other side), and one the kernel does not free when its
# holder is killed.
def test_other_processes_see_the_lock_and_a_killed_holder_frees_it(lock_path, start_child):
    lock = ipl.Lock(lock_path)
    assert lock.acquire()
    assert not fasteners_try(lock_path)
    lock.release()
    assert fasteners_try(lock_path)

    holder = start_child("ipl-hold", lock_path, "read")
    holder.expect("locked")
    assert lock.acquire(blocking=False, shared=True)
    lock.release()
    assert not lock.acquire(timeout=0.1)
    holder.kill()
    assert lock.acquire(timeout=CHILD_BOUND_S)
    lock.release()


# ---- Library and wait signal -------------------------------------------------------

# Catches: bad signal numbers accepted, or errors from set_wait_signal that
# are not IplErrors.
def test_wait_signal_settings():
    assert ipl.wait_signal() >= 0
    with pytest.raises(ipl.InvalidArgumentError):
        ipl.set_wait_signal(-5)
    ipl.set_wait_signal(ipl.WAIT_SIGNAL_AUTO)

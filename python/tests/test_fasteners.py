# SPDX-License-Identifier: MIT
"""ipl.fasteners: fasteners' API over libipl, against real fasteners
processes (Debian's python3-fasteners) where the other side matters."""

import errno
import os
import pathlib
import threading
import time

import pytest

import ipl
from ipl import fasteners
from conftest import CHILD_BOUND_S, fasteners_try

CTRL_C_BOUND_S = 2.0  # KeyboardInterrupt must arrive within this (generous)


def other_can_lock(path):
    probe = fasteners.InterProcessLock(path)
    if probe.acquire(blocking=False):
        probe.release()
        return True
    return False


def other_can_read(path):
    probe = fasteners.InterProcessReaderWriterLock(path)
    if probe.acquire_read_lock(blocking=False):
        probe.release_read_lock()
        return True
    return False


# ---- InterProcessLock -------------------------------------------------------------

# Catches: acquire not locking, release not unlocking, `acquired` and
# `lockfile` not following the state as in fasteners.
def test_acquire_release_and_their_state(lock_path):
    lock = fasteners.InterProcessLock(lock_path)
    assert lock.path == os.fsencode(lock_path)
    assert lock.lockfile is None and not lock.acquired
    assert lock.acquire()
    assert lock.acquired and lock.lockfile is not None
    assert lock.exists()
    assert not other_can_lock(lock_path)
    lock.release()
    assert not lock.acquired and lock.lockfile is None
    assert other_can_lock(lock_path)


# Catches: a missing trylock()/unlock() step API, a busy trylock() that does
# not raise the IOError fasteners raises (errno EAGAIN), and a .lockfile
# assigned by the caller (fasteners' own tests do) being ignored.
def test_trylock_unlock_and_an_assigned_lockfile(tmp_path, start_child):
    path = str(tmp_path / "lock")
    holder = start_child("fasteners-hold", path, "exclusive")
    holder.expect("locked")
    lock = fasteners.InterProcessLock(str(tmp_path / "named-elsewhere"))
    lock.lockfile = open(path, "w")
    with pytest.raises(IOError) as raised:
        lock.trylock()
    assert isinstance(raised.value, BlockingIOError)
    assert raised.value.errno == errno.EAGAIN
    holder.send("release")
    holder.expect("released")
    lock.trylock()
    assert not fasteners_try(path)
    lock.unlock()
    assert fasteners_try(path)
    with pytest.raises(ipl.NotHeldError):
        lock.unlock()


# Catches: an acquire() that bypasses trylock() (a subclass's trylock must
# decide), that does not turn its failure into the ThreadError fasteners
# raises, or that does not poll an overridden trylock with sleep_func.
def test_acquire_goes_through_trylock(lock_path):
    class Broken(fasteners.InterProcessLock):
        def trylock(self):
            raise OSError(errno.EBUSY, "device busy")

    with pytest.raises(threading.ThreadError):
        Broken(lock_path).acquire()

    sleeps = []

    class BusyTwice(fasteners.InterProcessLock):
        tries = 0

        def trylock(self):
            self.tries += 1
            if self.tries <= 2:
                raise BlockingIOError(errno.EAGAIN, "busy")
            super().trylock()

    lock = BusyTwice(lock_path, sleep_func=sleeps.append)
    assert lock.acquire(delay=0.01, max_delay=0.015)
    assert lock.tries == 3 and sleeps == [0.01, 0.015]
    assert not other_can_lock(lock_path)
    lock.release()

    lock = BusyTwice(lock_path, sleep_func=lambda s: None)
    assert not lock.acquire(blocking=False)


# Catches: release of an unacquired lock passing silently (fasteners raises
# threading.ThreadError), arguments fasteners rejects being accepted.
def test_misuse_raises_as_fasteners_does(lock_path):
    lock = fasteners.InterProcessLock(lock_path)
    with pytest.raises(threading.ThreadError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(timeout=-1)
    with pytest.raises(ValueError):
        lock.acquire(delay=-1)
    assert not lock.acquired


# Catches: the deliberate difference going unnoticed: re-acquiring on one
# object must raise (a ThreadError) and keep the lock, not re-lock.
def test_acquire_while_held_raises_and_keeps_the_lock(lock_path):
    lock = fasteners.InterProcessLock(lock_path)
    assert lock.acquire()
    with pytest.raises(ipl.WouldDeadlockError) as raised:
        lock.acquire(blocking=False)
    assert isinstance(raised.value, threading.ThreadError)
    assert lock.acquired and not other_can_lock(lock_path)
    lock.release()


# Catches: bad paths reported as "not acquired" (False) instead of the error
# open() raises in fasteners.
def test_bad_paths_raise_what_open_would(tmp_path):
    with pytest.raises(IsADirectoryError):
        fasteners.InterProcessLock(str(tmp_path)).acquire(blocking=False)
    with pytest.raises(ValueError):
        fasteners.InterProcessLock("").acquire(blocking=False)


# Catches: the lock file's contents touched, or a pathlib.Path refused.
def test_non_destructive_and_pathlike(tmp_path):
    path = tmp_path / "not-destroyed"
    path.write_text("test")
    with fasteners.InterProcessLock(pathlib.Path(path)):
        assert path.read_text() == "test"


# Catches: with-statement errors not releasing; decorators that do not lock,
# lock the wrong mode, lose arguments or results, or nest badly.
def test_context_manager_and_decorators(tmp_path):
    path = str(tmp_path / "lock")
    lock = fasteners.InterProcessLock(path)
    with pytest.raises(ZeroDivisionError):
        with lock:
            assert not other_can_lock(path)
            1 / 0
    assert other_can_lock(path)

    seen = {}

    @fasteners.interprocess_locked(path)
    def exclusive(x, y=0):
        seen["exclusive"] = (other_can_read(path), other_can_lock(path))
        return x + y

    @fasteners.interprocess_read_locked(path)
    def reader():
        seen["read"] = (other_can_read(path), other_can_lock(path))
        return "r"

    @fasteners.interprocess_write_locked(path)
    def writer():
        seen["write"] = (other_can_read(path), other_can_lock(path))
        return "w"

    assert (exclusive(2, y=3), reader(), writer()) == (5, "r", "w")
    assert seen == {"exclusive": (False, False), "read": (True, False), "write": (False, False)}
    assert exclusive.__name__ == "exclusive"

    @fasteners.interprocess_locked(str(tmp_path / "outer"))
    def outer():
        @fasteners.interprocess_locked(str(tmp_path / "inner"))
        def inner():
            return os.path.exists(str(tmp_path / "inner"))
        return inner()

    assert outer() is True


# Catches: one lock object shared by all calls of a decorated function, so
# calls from two threads either fail (would-deadlock) or overlap.
def test_decorated_calls_from_threads_exclude_each_other(lock_path):
    inside, overlaps, errors = [], [], []

    @fasteners.interprocess_locked(lock_path)
    def critical():
        if inside:
            overlaps.append(True)
        inside.append(True)
        time.sleep(0.005)
        inside.pop()

    def worker():
        try:
            for _ in range(10):
                critical()
        except Exception as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and overlaps == []


# ---- InterProcessReaderWriterLock ---------------------------------------------------

# Catches: read taken as write (or the reverse), releasing a mode not held
# dropping the mode held, context managers that do not release.
def test_reader_writer_lock(lock_path):
    reader1 = fasteners.InterProcessReaderWriterLock(lock_path)
    reader2 = fasteners.InterProcessReaderWriterLock(lock_path)
    writer = fasteners.InterProcessReaderWriterLock(lock_path)
    assert reader1.acquire_read_lock(blocking=False)
    assert reader2.acquire_read_lock(blocking=False)
    assert not writer.acquire_write_lock(blocking=False)
    start = time.monotonic()
    assert not writer.acquire_write_lock(timeout=0.1)
    assert time.monotonic() - start >= 0.1
    with pytest.raises(threading.ThreadError):
        reader1.release_write_lock()
    reader1.release_read_lock()
    reader2.release_read_lock()
    with pytest.raises(threading.ThreadError):
        reader1.release_read_lock()
    with writer.write_lock():
        assert not other_can_read(lock_path)
    with writer.read_locked():
        assert other_can_read(lock_path) and not other_can_lock(lock_path)
    with pytest.raises(KeyError):
        with writer.write_locked():
            raise KeyError("body failed")
    assert other_can_lock(lock_path)


# Catches: lost exclusion under real contention between processes: each of
# three processes increments a counter file 15 times under the write lock
# (read, sleep, write); any overlap loses an increment.
def test_processes_never_overlap_under_the_write_lock(tmp_path, start_child):
    path, counter = str(tmp_path / "lock"), tmp_path / "counter"
    counter.write_text("0")
    children = [start_child("count-under-lock", path, str(counter), "15", api)
                for api in ("fasteners", "fasteners-rw", "fasteners")]
    for child in children:
        child.expect("done", bound_s=60)
    assert counter.read_text() == "45"


# ---- Ctrl-C ----------------------------------------------------------------------

# Catches: a wait done as one long C call in the main thread (SIGINT is only
# seen when it returns, so the child hangs and the bound fails), a Ctrl-C
# that does not cancel the worker's wait (the child would stay blocked
# until the lock is free), and an interrupted acquire that leaves the lock
# held (or an interrupted upgrade that drops, or keeps upgraded, the shared
# lock it had).
@pytest.mark.parametrize("api,timeout", [("fasteners", "none"), ("fasteners", "60"),
                                         ("ipl", "none"), ("upgrade", "none"),
                                         ("upgrade", "60")])
def test_ctrl_c_interrupts_a_waiting_acquire(lock_path, start_child, api, timeout):
    holder = ipl.Lock(lock_path)
    assert holder.acquire(shared=(api == "upgrade"))
    child = start_child("wait-interruptible", lock_path, api, timeout)
    entered_ns = int(child.expect("acquiring")[0])
    time.sleep(0.3)  # well into the wait
    sent_ns = time.monotonic_ns()
    child.interrupt()
    caught_ns = int(child.expect("interrupted", CTRL_C_BOUND_S)[0])
    assert entered_ns < sent_ns < caught_ns
    assert (caught_ns - sent_ns) / 1e9 < CTRL_C_BOUND_S
    holder.release()
    child.send("report")
    if api == "upgrade":
        # The child still holds its shared lock, and only that.
        assert child.expect("acquired") == ["shared"]
        assert holder.acquire(blocking=False, shared=True)
        holder.release()
        assert not holder.acquire(timeout=0.2)
    else:
        # The child is alive and must hold nothing.
        assert child.expect("acquired") == ["False"]
        assert holder.acquire(timeout=1.0)
        holder.release()


# ---- Interoperability with fasteners ---------------------------------------------------

# Catches: a lock fasteners does not see (flock instead of fcntl, another
# byte range): fasteners holds, ours must wait and time out; then the
# reverse; then a release fasteners does not see.
def test_exclusive_against_fasteners_both_ways(lock_path, start_child):
    holder = start_child("fasteners-hold", lock_path, "exclusive")
    holder.expect("locked")
    lock = fasteners.InterProcessLock(lock_path)
    assert not lock.acquire(blocking=False)
    start = time.monotonic()
    assert not lock.acquire(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    holder.send("release")
    holder.expect("released")

    prober = start_child("fasteners-try", lock_path, "exclusive")
    prober.expect("ready")
    assert lock.acquire(timeout=CHILD_BOUND_S)
    prober.send("try")
    prober.expect("busy")
    lock.release()
    prober.send("try")
    prober.expect("locked")


# Catches: our read lock taken as a write lock (or the reverse) at the fcntl
# level: a fasteners reader coexists with ours, a fasteners writer is kept
# out by ours.
def test_reader_writer_modes_match_fasteners(lock_path, start_child):
    holder = start_child("fasteners-hold", lock_path, "read")
    holder.expect("locked")
    rw = fasteners.InterProcessReaderWriterLock(lock_path)
    assert rw.acquire_read_lock(blocking=False)
    rw.release_read_lock()
    assert not rw.acquire_write_lock(blocking=False)
    holder.send("release")
    holder.expect("released")
    writer_probe = start_child("fasteners-try", lock_path, "write")
    writer_probe.expect("ready")
    assert rw.acquire_read_lock(blocking=False)
    writer_probe.send("try")
    writer_probe.expect("busy")
    rw.release_read_lock()
    writer_probe.send("try")
    writer_probe.expect("locked")

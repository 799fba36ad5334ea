# SPDX-License-Identifier: MIT
"""libipl 0.2.0 from Python: query, cancel, downgrade/upgrade, remove,
check, from_fd and inheritable locks, the Ctrl-C path built on ipl_cancel,
and decorated calls that nest."""

import errno
import os
import signal
import threading
import time

import pytest

import ipl
from ipl import fasteners
from conftest import CHILD_BOUND_S, OFD_LOCKS, POSIX_LOCKS, fasteners_try


def third_party_can_lock(path, shared=False):
    """Whether a separate process (real fasteners) gets the lock now."""
    return fasteners_try(path, "read" if shared else "write")


def cancel_until_returned(lock, thread, bound_s=CHILD_BOUND_S):
    """lock.cancel() every millisecond until `thread` has ended; the time
    from the first cancel to its end, or None when it outlived bound_s."""
    first = time.monotonic()
    while thread.is_alive():
        if time.monotonic() - first > bound_s:
            return None
        lock.cancel()
        thread.join(0.001)
    return time.monotonic() - first


# ---- query ------------------------------------------------------------------------

# Catches: a state mapped onto the wrong LockState, a holder's pid lost (or
# -1 turned into a pid), find_holder=False still looking one up, this Lock's
# own lock counted; and, with fasteners as the holder, a classic fcntl
# holder not found (F_GETLK).
@pytest.mark.parametrize("holder_kind", ["ipl", "fasteners"])
def test_query_says_who_else_holds_the_lock_and_how(lock_path, start_child, holder_kind):
    lock = ipl.Lock(lock_path)
    assert lock.query() == ipl.QueryResult(ipl.LockState.FREE, None)
    mode = "ipl-hold" if holder_kind == "ipl" else "fasteners-hold"
    holder = start_child(mode, lock_path, "exclusive" if holder_kind == "fasteners" else "write")
    holder.expect("locked")
    seen = lock.query()
    assert seen.state == ipl.LockState.EXCLUSIVE
    assert seen.holder_pid == holder.process.pid
    assert lock.query(find_holder=False) == (ipl.LockState.EXCLUSIVE, None)
    holder.kill()

    reader = start_child(mode, lock_path, "read")
    reader.expect("locked")
    assert lock.acquire(blocking=False, shared=True)
    assert lock.query() == (ipl.LockState.SHARED, reader.process.pid)
    reader.kill()
    assert lock.query().state == ipl.LockState.FREE, "its own shared lock counted"
    lock.release()
    assert lock.acquire()
    assert lock.query().state == ipl.LockState.FREE, "its own exclusive lock counted"
    assert ipl.Lock(lock_path).query().state == ipl.LockState.EXCLUSIVE
    lock.close()
    with pytest.raises(ipl.InvalidArgumentError):
        lock.query()


# ---- cancel -------------------------------------------------------------------------

# Catches: cancel() not reaching ipl_cancel (the wait would only end when
# the holder lets go), a canceled wait reported as False ("not in time")
# instead of CanceledError, a canceled acquire that marks the Lock as held;
# both for a wait in another thread (one C call) and for the main thread's
# wait (which runs in a worker: cancel() must reach that one too).
@pytest.mark.parametrize("waiter_thread", ["main", "other"])
@pytest.mark.parametrize("timeout", [None, 60.0])
def test_cancel_from_another_thread_ends_a_wait(lock_path, waiter_thread, timeout):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    lock = ipl.Lock(lock_path)
    outcome = []

    def wait():
        try:
            outcome.append(lock.acquire(timeout=timeout))
        except ipl.IplError as error:
            outcome.append(error)

    if waiter_thread == "other":
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        took = cancel_until_returned(lock, waiter)
        if took is None:  # the rescue: cancel() did nothing
            holder.release()
            waiter.join(CHILD_BOUND_S)
    else:
        start = time.monotonic()
        canceled = []

        def cancel_soon():
            time.sleep(0.2)
            canceled.append(time.monotonic())
            # The main thread's call is the one waiting: this ends it.
            deadline = time.monotonic() + CHILD_BOUND_S
            while not outcome and time.monotonic() < deadline:
                lock.cancel()
                time.sleep(0.001)
            if not outcome:
                holder.release()  # the rescue: cancel() did nothing

        canceler = threading.Thread(target=cancel_soon)
        canceler.start()
        wait()
        took = time.monotonic() - canceled[0] if canceled else None
        canceler.join(CHILD_BOUND_S)
        assert time.monotonic() - start < CHILD_BOUND_S
    assert took is not None and took < 1.0, "cancel() did not end the wait"
    assert len(outcome) == 1 and isinstance(outcome[0], ipl.CanceledError), outcome
    assert outcome[0].status == ipl.Status.CANCELED
    assert not lock.held
    with pytest.raises(ipl.NotHeldError):
        lock.release()
    holder.release()
    assert lock.acquire(blocking=False)
    lock.release()


# Catches: a cancel() with no wait in progress that poisons the next wait
# (ipl.h: it does nothing), or that raises.
def test_cancel_without_a_wait_does_nothing(lock_path):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    lock = ipl.Lock(lock_path)
    lock.cancel()
    start = time.monotonic()
    assert not lock.acquire(timeout=0.3)
    assert time.monotonic() - start >= 0.3


# ---- The main thread's wait: one C call, ended by ipl_cancel -----------------------

class Interrupted(Exception):
    pass


# Catches: a main-thread wait cut into slices (many C calls; the point of
# ipl_cancel is one), an exception from a signal handler that does not end
# the wait at once (the worker's wait not canceled), and an interrupted
# acquire or upgrade that leaves the lock held (or drops the shared lock
# an upgrade had).
@pytest.mark.parametrize("what", ["acquire", "upgrade"])
def test_a_signal_handler_exception_ends_the_main_threads_wait(lock_path, monkeypatch, what):
    holder = ipl.Lock(lock_path)
    assert holder.acquire(shared=(what == "upgrade"))
    lock = ipl.Lock(lock_path)
    if what == "upgrade":
        assert lock.acquire(shared=True)
    name = "ipl_upgrade" if what == "upgrade" else "ipl_acquire"
    real = getattr(ipl._lib, name)
    calls = []

    def counted(raw, timeout_ms):
        calls.append(timeout_ms)
        return real(raw, timeout_ms)

    monkeypatch.setattr(ipl._lib, name, counted)

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    # The rescue, should the interrupted wait never end: the holder lets go.
    rescue = threading.Timer(CHILD_BOUND_S, holder.release)
    rescue.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            if what == "upgrade":
                lock.upgrade()
            else:
                lock.acquire()
        elapsed = time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        rescue.cancel()
    assert 0.29 <= elapsed < 1.0, elapsed
    # One try, then one wait without a limit: no slices.
    assert calls == [0, ipl.WAIT_FOREVER], calls
    holder.release()
    if what == "upgrade":
        assert lock.held_mode == "shared"
        assert third_party_can_lock(lock_path, shared=True)
        assert not third_party_can_lock(lock_path)
        lock.release()
    else:
        assert not lock.held
    assert third_party_can_lock(lock_path)


# ---- downgrade and upgrade -------------------------------------------------------------

# Catches: a downgrade that lets a writer in or keeps readers out, held_mode
# not following it, a downgrade or upgrade of a mode not held that does not
# raise NotHeldError (or drops what is held).
def test_downgrade_lets_readers_in_and_keeps_writers_out(lock_path):
    lock = ipl.Lock(lock_path)
    with pytest.raises(ipl.NotHeldError):
        lock.downgrade()
    with pytest.raises(ipl.NotHeldError):
        lock.upgrade()
    assert lock.acquire()
    lock.downgrade()
    assert lock.held_mode == "shared"
    assert third_party_can_lock(lock_path, shared=True)
    assert not third_party_can_lock(lock_path)
    with pytest.raises(ipl.NotHeldError):
        lock.downgrade()
    assert not third_party_can_lock(lock_path), "a failed downgrade dropped the lock"
    lock.release()
    assert third_party_can_lock(lock_path)


# Catches: an upgrade that does not wait for the other readers, a timeout
# that raises or ends early, a failed upgrade that drops the shared lock,
# held_mode not following a successful upgrade.
def test_upgrade_waits_for_the_other_readers(lock_path, start_child):
    reader = start_child("ipl-hold", lock_path, "read")
    reader.expect("locked")
    lock = ipl.Lock(lock_path)
    assert lock.acquire(shared=True)
    assert not lock.upgrade(blocking=False)
    start = time.monotonic()
    assert not lock.upgrade(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert lock.held_mode == "shared"
    assert third_party_can_lock(lock_path, shared=True)
    assert not third_party_can_lock(lock_path)
    threading.Timer(0.2, reader.kill).start()
    assert lock.upgrade(timeout=CHILD_BOUND_S)
    assert lock.held_mode == "exclusive"
    assert not third_party_can_lock(lock_path, shared=True)
    lock.release()
    assert third_party_can_lock(lock_path)


# Catches: two upgraders that wait for each other for ever: the second must
# raise WouldDeadlockError at once (not return False) and keep its shared
# lock, so that releasing it lets the first finish.
def test_a_second_upgrader_gets_would_deadlock_at_once(lock_path):
    first, second = ipl.Lock(lock_path), ipl.Lock(lock_path)
    assert first.acquire(shared=True) and second.acquire(shared=True)
    outcome = []
    upgrader = threading.Thread(target=lambda: outcome.append(first.upgrade(timeout=CHILD_BOUND_S)))
    upgrader.start()
    try:
        # Ask only once the first upgrade is under way (a query through a
        # handle that is acquiring raises WouldDeadlockError) and holds the
        # arbitration byte: a try before that would hold the byte itself for
        # an instant and could make the first upgrade the one that fails.
        deadline = time.monotonic() + CHILD_BOUND_S
        while True:
            try:
                first.query(find_holder=False)
            except ipl.WouldDeadlockError:
                break
            assert time.monotonic() < deadline, "the first upgrade never started"
            time.sleep(0.001)
        time.sleep(0.1)
        with pytest.raises(ipl.WouldDeadlockError):
            second.upgrade(blocking=False)
        start = time.monotonic()
        with pytest.raises(ipl.WouldDeadlockError):
            second.upgrade(timeout=CHILD_BOUND_S)
        assert time.monotonic() - start < 1.0
        assert second.held_mode == "shared"
        assert outcome == []
    finally:
        second.release()
        upgrader.join(CHILD_BOUND_S)
    assert outcome == [True]
    assert first.held_mode == "exclusive"
    assert not third_party_can_lock(lock_path, shared=True)
    first.release()


# ---- remove -------------------------------------------------------------------------

# Catches: remove() that leaves the file or the lock, that leaves the Lock
# believing it holds the lock, that works without the exclusive lock (the
# shared lock must be kept), and a Lock that cannot lock again afterwards.
def test_remove_deletes_the_file_and_releases(lock_path):
    lock = ipl.Lock(lock_path)
    with pytest.raises(ipl.NotHeldError):
        lock.remove()
    assert lock.acquire(shared=True)
    with pytest.raises(ipl.NotHeldError):
        lock.remove()
    assert os.path.exists(lock_path) and lock.held_mode == "shared"
    lock.release()
    assert lock.acquire()
    lock.remove()
    assert not os.path.exists(lock_path)
    assert not lock.held
    with pytest.raises(ipl.NotHeldError):
        lock.release()
    assert lock.acquire(blocking=False)  # creates it again
    assert os.path.exists(lock_path)
    assert not third_party_can_lock(lock_path)
    lock.release()


# Catches: a waiter left holding a lock on the removed file, which excludes
# nobody who opens the path afterwards.
def test_a_waiter_ends_up_locking_the_file_the_path_names(lock_path):
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    waiter = ipl.Lock(lock_path)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(waiter.acquire(timeout=CHILD_BOUND_S)))
    thread.start()
    time.sleep(0.2)
    holder.remove()
    thread.join(CHILD_BOUND_S)
    assert outcome == [True]
    assert os.path.exists(lock_path)
    assert not third_party_can_lock(lock_path)
    waiter.release()


# ---- check ------------------------------------------------------------------------

# Catches: check() that reports a lock still held when the path names
# another file now (the lock file was removed under it), that does not
# raise LostError (or leaves the Lock believing it holds the lock), that
# succeeds without a lock; and a Lock that cannot lock again after a loss.
@pytest.mark.parametrize("shared", [False, True])
def test_check_sees_a_lock_lost_with_its_file(lock_path, shared):
    lock = ipl.Lock(lock_path)
    with pytest.raises(ipl.NotHeldError):
        lock.check()
    assert lock.acquire(shared=shared)
    lock.check()
    assert lock.held
    os.unlink(lock_path)  # someone removes the lock file under us
    with pytest.raises(ipl.LostError) as raised:
        lock.check()
    assert raised.value.status == ipl.Status.LOST
    assert isinstance(raised.value, OSError)
    assert not lock.held
    with pytest.raises(ipl.NotHeldError):
        lock.release()
    assert lock.acquire(blocking=False)  # opens the path anew
    assert os.path.exists(lock_path)
    assert not third_party_can_lock(lock_path)
    lock.release()


# ---- from_fd and inheritable locks (Linux OFD builds) -------------------------------

def expect_unsupported(call):
    with pytest.raises(ipl.UnsupportedError) as raised:
        call()
    assert raised.value.status == ipl.Status.UNSUPPORTED


# Catches: from_fd locking anything but fd's open file description (the
# lock would end with the child that took it, or not be seen by others),
# a Lock over a description that holds a lock already that does not know
# it (release() would raise NotHeldError and leave the lock held), a bad
# descriptor not raising; on the classic backend, anything but
# UnsupportedError.
def test_from_fd_locks_the_open_file_description(lock_path, start_child):
    with pytest.raises(ipl.InvalidArgumentError):
        ipl.Lock.from_fd(-1)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not OFD_LOCKS:
            expect_unsupported(lambda: ipl.Lock.from_fd(fd))
            return
        lock = ipl.Lock.from_fd(fd)
        assert lock.path is None and lock.held_mode is None
        assert lock.acquire(blocking=False)
        assert not third_party_can_lock(lock_path, shared=True)
        assert ipl.Lock(lock_path).query() == (ipl.LockState.EXCLUSIVE, os.getpid())
        expect_unsupported(lock.remove)
        lock.release()
        assert third_party_can_lock(lock_path)
        lock.close()

        # A child locks the description it inherited and dies without
        # releasing: the lock is the description's, which we still have open.
        child = start_child("fd-lock-and-die", str(fd), pass_fds=(fd,))
        child.expect("locked")
        child.process.wait(timeout=CHILD_BOUND_S)
        assert not third_party_can_lock(lock_path), "the lock ended with the child"
        adopted = ipl.Lock.from_fd(fd)
        assert adopted.held_mode == "inherited"
        adopted.check()
        adopted.release()
        assert third_party_can_lock(lock_path)
        adopted.close()
    finally:
        os.close(fd)
    with pytest.raises(OSError) as raised:
        ipl.Lock.from_fd(fd)  # closed now
    assert raised.value.errno == errno.EBADF


def wait_until_free(path, bound_s=CHILD_BOUND_S):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if third_party_can_lock(path):
            return True
        time.sleep(0.05)
    return False


# Catches: an inheritable lock whose descriptor is still close-on-exec (the
# lock would end with its holder), and a plain lock whose descriptor leaks
# into exec'd children (the lock would outlive its holder); on the classic
# backend, anything but UnsupportedError.
@pytest.mark.parametrize("inheritable", ["inheritable", "plain"])
def test_an_inheritable_lock_lives_on_in_an_execd_child(lock_path, start_child, inheritable):
    if not OFD_LOCKS:
        if inheritable == "inheritable":
            expect_unsupported(lambda: ipl.Lock(lock_path, inheritable=True))
        else:
            pytest.skip("plain locks on the %s backend: covered by the other tests" % POSIX_LOCKS)
        return
    holder = start_child("inheritable-hold", lock_path, inheritable)
    grandchild = int(holder.expect("locked")[0])
    try:
        assert not third_party_can_lock(lock_path)
        holder.kill()
        if inheritable == "inheritable":
            time.sleep(0.1)
            assert not third_party_can_lock(lock_path), "the lock ended with its holder"
        else:
            assert wait_until_free(lock_path), "the exec'd child kept a plain lock"
    finally:
        if grandchild > 0:
            os.kill(grandchild, signal.SIGKILL)
    assert wait_until_free(lock_path), "the lock outlived every copy of its descriptor"


# ---- Decorators ------------------------------------------------------------------------

# Catches: ipl.locked not holding the lock during the call (or in the wrong
# mode), not releasing it after a call that raises, a timeout that does not
# raise LockTimeoutError, a lost result or name.
def test_locked_decorator(lock_path):
    seen = []

    @ipl.locked(lock_path)
    def exclusive(x, y=0):
        seen.append((third_party_can_lock(lock_path, shared=True), third_party_can_lock(lock_path)))
        return x + y

    @ipl.locked(lock_path, shared=True, timeout=0.1)
    def reader():
        seen.append((third_party_can_lock(lock_path, shared=True), third_party_can_lock(lock_path)))
        raise KeyError("body failed")

    assert exclusive(2, y=3) == 5 and exclusive.__name__ == "exclusive"
    with pytest.raises(KeyError):
        reader()
    assert seen == [(False, False), (True, False)]
    assert third_party_can_lock(lock_path)
    holder = ipl.Lock(lock_path)
    assert holder.acquire()
    start = time.monotonic()
    with pytest.raises(ipl.LockTimeoutError):
        reader()
    assert time.monotonic() - start >= 0.1
    holder.release()


NESTING = [
    # outer mode, inner mode ("self": the outer function calls itself), result
    ("exclusive", "self", "WouldDeadlockError"),
    ("write", "self", "WouldDeadlockError"),
    ("exclusive", "exclusive", "WouldDeadlockError"),
    ("read", "write", "WouldDeadlockError"),
    ("read", "exclusive", "WouldDeadlockError"),
    ("write", "read", "WouldDeadlockError"),
    ("exclusive", "read", "WouldDeadlockError"),
    ("read", "self", "ok"),  # shared beside shared never waits
    ("read", "read", "ok"),
]


# Catches: a nested decorated call that hangs (each call's own lock object
# waits for the outer call's), a nesting that cannot deadlock refused
# (read inside read, another file), a record that outlives its call (the
# inner call alone must then work), the outer lock dropped when the inner
# call raises.
@pytest.mark.parametrize("api", ["ipl", "fasteners"])
@pytest.mark.parametrize("outer,inner,expected", NESTING)
def test_nested_decorated_calls(tmp_path, start_child, api, outer, inner, expected):
    if api == "ipl" and "write" in (outer, inner):
        pytest.skip("ipl.locked has exclusive and shared only")
    path = str(tmp_path / "lock")
    expect_nested(start_child, api, outer, path, inner, path, expected)


def expect_nested(start_child, api, outer, outer_path, inner, inner_path, expected):
    child = start_child("nested-call", api, outer, outer_path, inner, inner_path)
    assert child.expect("inner", CHILD_BOUND_S) == [expected]
    # The outer call still holds its lock.
    if outer == "read":
        assert not third_party_can_lock(outer_path)
    else:
        assert not third_party_can_lock(outer_path, shared=True)
    child.send("finish")
    assert child.expect("alone", CHILD_BOUND_S) == ["ok"]


# Catches: "the same file" decided on path strings only (another spelling
# or a symbolic link would still hang), and a false alarm for another file.
@pytest.mark.parametrize("api", ["ipl", "fasteners"])
def test_nested_calls_on_other_names_for_the_file(tmp_path, start_child, api):
    path = str(tmp_path / "lock")
    open(path, "w").close()
    os.symlink(path, str(tmp_path / "link"))
    for inner_path, expected in [(str(tmp_path / "." / "lock"), "WouldDeadlockError"),
                                 (str(tmp_path / "link"), "WouldDeadlockError"),
                                 (os.path.relpath(path), "WouldDeadlockError"),
                                 (str(tmp_path / "other"), "ok")]:
        expect_nested(start_child, api, "exclusive", path, "exclusive", inner_path, expected)


# Catches: records shared by all threads: a call from another thread must
# wait for the outer call, as another process would, not raise.
@pytest.mark.parametrize("api", ["ipl", "fasteners"])
def test_another_threads_call_waits(lock_path, api):
    decorate = ipl.locked(lock_path) if api == "ipl" else fasteners.interprocess_locked(lock_path)
    inside, leave = threading.Event(), threading.Event()

    @decorate
    def critical(first):
        if first:
            inside.set()
            leave.wait(CHILD_BOUND_S)
        return first

    outcome = []
    outer = threading.Thread(target=lambda: outcome.append(critical(True)))
    outer.start()
    assert inside.wait(CHILD_BOUND_S)
    other_outcome = []

    def other():
        try:
            other_outcome.append(critical(False))
        except Exception as error:
            other_outcome.append(error)

    other_thread = threading.Thread(target=other)
    other_thread.start()
    other_thread.join(0.3)
    assert other_thread.is_alive() and other_outcome == [], other_outcome
    leave.set()
    outer.join(CHILD_BOUND_S)
    other_thread.join(CHILD_BOUND_S)
    assert outcome == [True] and other_outcome == [False]


# Catches: a forked child that takes its parent's decorated calls for its
# own: it holds none of their locks, so its decorated call must wait for
# the parent's (and then run), not raise WouldDeadlockError.
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_childs_call_waits_for_its_parents(lock_path):
    pids = []

    @ipl.locked(lock_path)
    def inner():
        return 7

    @ipl.locked(lock_path)
    def outer():
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = inner()
            except ipl.WouldDeadlockError:
                status = 2
            finally:
                os._exit(status)
        pids.append(pid)
        time.sleep(0.3)  # the child is waiting by now

    outer()
    deadline = time.monotonic() + CHILD_BOUND_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pids[0], os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 7, "2: the child raised WouldDeadlockError"
            return
        time.sleep(0.01)
    os.kill(pids[0], signal.SIGKILL)
    os.waitpid(pids[0], 0)
    pytest.fail("the child's decorated call never returned")

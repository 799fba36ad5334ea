# SPDX-License-Identifier: MIT
"""os.fork(): a lock belongs to the process that took it. A child's copies
of its parent's lock objects hold nothing, and whatever the child does with
them (drop them, close them, release them, exit) leaves the parent's lock
held, as a third process sees."""

import gc
import os
import time

import pytest

import ipl
from ipl import fasteners
from conftest import CHILD_BOUND_S, fasteners_try


def run_in_child(action):
    """Forks; the child runs action() and leaves with os._exit (status 0 when
    action returned True, 1 when False, 2 when it raised); returns that
    status, failing the test if the child outlives the bound."""
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            status = 0 if action() else 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + CHILD_BOUND_S
    while time.monotonic() < deadline:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wait_status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("forked child still running after %.0f s" % CHILD_BOUND_S)


# Catches (issue 10): a child's __del__/ipl_close of an inherited handle
# releasing the parent's lock (an OFD lock is shared by the descriptor the
# child inherited); a binding that releases in __del__ on the child's side.
def test_a_child_dropping_its_copy_keeps_the_parents_lock(lock_path):
    lock = fasteners.InterProcessLock(lock_path)
    assert lock.acquire()

    def drop_copy():
        nonlocal lock
        del lock
        gc.collect()
        return True

    assert run_in_child(drop_copy) == 0
    assert not fasteners_try(lock_path), "the child's exit released the parent's lock"
    lock.release()
    assert fasteners_try(lock_path)


# Catches: close() or release() in the child reaching the parent's lock; the
# child believing it holds the lock; a fresh handle in the child let in
# beside the parent.
@pytest.mark.parametrize("shared", [False, True])
def test_a_child_closing_or_releasing_its_copy_keeps_the_parents_lock(lock_path, shared):
    lock = ipl.Lock(lock_path)
    assert lock.acquire(shared=shared)

    def release_and_close():
        if lock.held:
            return False
        try:
            lock.release()
            return False
        except ipl.NotHeldError:
            pass
        fresh = ipl.Lock(lock_path)
        if fresh.acquire(blocking=False):  # exclusive: the parent holds it
            return False
        lock.close()
        return True

    assert run_in_child(release_and_close) == 0
    assert lock.held
    assert not fasteners_try(lock_path, "write"), "the child released the parent's lock"
    lock.release()
    assert fasteners_try(lock_path, "write")

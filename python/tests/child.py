# SPDX-License-Identifier: MIT
"""Helper processes for the tests (see conftest.Child):

    child.py MODE ARGS...

Each mode speaks one line at a time on stdout and reads commands on stdin;
a child whose stdin closes (its test is gone) exits.
"""

import os
import signal
import sys
import time

import ipl
from ipl import fasteners as ipl_fasteners


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def wait_for_command():
    """The next line from the test; "" when stdin closed."""
    return sys.stdin.readline().strip()


def wait_interruptible(path, api, timeout_text):
    """Blocks in acquire() (api "ipl", "fasteners") or in upgrade() (api
    "upgrade": holds the lock shared, then upgrades while the test holds
    it shared too) until Ctrl-C; reports when KeyboardInterrupt came, then
    answers "report" with what the lock object holds."""
    # KeyboardInterrupt even if whatever started us ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    timeout = None if timeout_text == "none" else float(timeout_text)
    if api == "fasteners":
        lock = ipl_fasteners.InterProcessLock(path)
        is_held = lambda: lock.acquired  # noqa: E731
        wait = lambda: lock.acquire(timeout=timeout)  # noqa: E731
    else:
        lock = ipl.Lock(path)
        is_held = lambda: lock.held_mode or False  # noqa: E731
        wait = lambda: lock.acquire(timeout=timeout)  # noqa: E731
        if api == "upgrade":
            if not lock.acquire(timeout=10, shared=True):
                say("error could not acquire")
                return
            wait = lambda: lock.upgrade(timeout=timeout)  # noqa: E731
    say("acquiring", time.monotonic_ns())
    try:
        say("returned", wait())
    except KeyboardInterrupt:
        say("interrupted", time.monotonic_ns())
    while wait_for_command() == "report":
        say("acquired", is_held())


def nested_call(api, outer_mode, outer_path, inner_mode, inner_path):
    """In a decorated call (api "ipl": ipl.locked; "fasteners": the
    fasteners decorators; modes exclusive, read, write) makes a decorated
    call, or with inner_mode "self" calls itself; says "inner ok" or
    "inner <exception class>", waits for "finish", returns; then makes the
    inner call alone and says "alone ok" (or the exception). A decorator
    that waits for its own outer call hangs here (the test kills us)."""
    def decorate(mode, path):
        if api == "ipl":
            return ipl.locked(path, shared=(mode == "read"))
        return {"exclusive": ipl_fasteners.interprocess_locked,
                "read": ipl_fasteners.interprocess_read_locked,
                "write": ipl_fasteners.interprocess_write_locked}[mode](path)

    def outcome(call):
        try:
            call()
            return "ok"
        except Exception as error:  # reported to the test
            return type(error).__name__

    depth = [0]

    @decorate(outer_mode, outer_path)
    def outer():
        depth[0] += 1
        if depth[0] > 1:
            return
        say("inner", outcome(inner))
        if wait_for_command() != "finish":
            sys.exit(1)

    inner = outer if inner_mode == "self" else decorate(inner_mode, inner_path)(lambda: None)
    outer()
    depth[0] = 1
    say("alone", outcome(inner))


def fasteners_lock_calls(path, kind):
    """(acquire, release) of a real fasteners lock of KIND on PATH."""
    import fasteners
    if kind == "exclusive":
        lock = fasteners.InterProcessLock(path)
        return lock.acquire, lock.release
    rw = fasteners.InterProcessReaderWriterLock(path)
    if kind == "read":
        return rw.acquire_read_lock, rw.release_read_lock
    return rw.acquire_write_lock, rw.release_write_lock


def fasteners_hold(path, kind):
    """Holds a real fasteners lock until told to release."""
    acquire, release = fasteners_lock_calls(path, kind)
    if not acquire(blocking=True, timeout=10):
        say("error could not acquire")
        return
    say("locked")
    wait_for_command()
    release()
    say("released")
    wait_for_command()


def fasteners_try(path, kind):
    """Each "try" line: a non-blocking real fasteners acquire, answered
    "locked" (and released at once) or "busy"."""
    acquire, release = fasteners_lock_calls(path, kind)
    say("ready")
    while wait_for_command() == "try":
        if acquire(blocking=False):
            release()
            say("locked")
        else:
            say("busy")


def fasteners_try_once(path, kind):
    acquire, release = fasteners_lock_calls(path, kind)
    if acquire(blocking=False):
        release()
        say("locked")
    else:
        say("busy")


def ipl_hold(path, kind):
    """Holds the lock through ipl.Lock until killed or stdin closes."""
    lock = ipl.Lock(path)
    if not lock.acquire(timeout=10, shared=(kind == "read")):
        say("error could not acquire")
        return
    say("locked")
    wait_for_command()


def inheritable_hold(path, inheritable):
    """Takes the exclusive lock through ipl.Lock(path, inheritable=...),
    starts a grandchild (a Python that sleeps 20 s, keeping every inherited
    descriptor: close_fds=False), says "locked <grandchild pid>", then waits
    to be killed. With an inheritable lock the grandchild's copy of the
    descriptor keeps the lock after we die."""
    import subprocess
    lock = ipl.Lock(path, inheritable=(inheritable == "inheritable"))
    if not lock.acquire(timeout=10):
        say("error could not acquire")
        return
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"],
                                  close_fds=False, stdin=subprocess.DEVNULL)
    say("locked", grandchild.pid)
    wait_for_command()


def fd_lock_and_die(fd):
    """Takes the exclusive lock on the inherited descriptor FD through
    ipl.Lock.from_fd, says "locked", and exits at once without releasing
    (os._exit: no close, no collection): the lock belongs to the open file
    description, which the test still has open."""
    lock = ipl.Lock.from_fd(int(fd))
    if not lock.acquire(timeout=10):
        say("error could not acquire")
        os._exit(1)
    say("locked")
    os._exit(0)


def count_under_lock(path, counter_path, rounds, api):
    """Read-modify-write of a counter file, `rounds` times, each under the
    exclusive lock: a lost exclusion loses increments."""
    if api == "fasteners-rw":
        rw = ipl_fasteners.InterProcessReaderWriterLock(path)
        hold = rw.write_lock
    else:
        hold = lambda: ipl_fasteners.InterProcessLock(path)  # noqa: E731
    for _ in range(int(rounds)):
        with hold():
            with open(counter_path) as counter:
                value = int(counter.read() or "0")
            time.sleep(0.001)  # widen the window a lost exclusion would use
            with open(counter_path, "w") as counter:
                counter.write(str(value + 1))
    say("done")


MODES = {
    "wait-interruptible": wait_interruptible,
    "fasteners-hold": fasteners_hold,
    "fasteners-try": fasteners_try,
    "fasteners-try-once": fasteners_try_once,
    "ipl-hold": ipl_hold,
    "count-under-lock": count_under_lock,
    "nested-call": nested_call,
    "inheritable-hold": inheritable_hold,
    "fd-lock-and-die": fd_lock_and_die,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])

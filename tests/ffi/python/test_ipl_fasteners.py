#!/usr/bin/env python3
"""Tests of ipl_fasteners (libipl through ctypes, shaped like fasteners).

    test_ipl_fasteners.py [-v]                 run the tests (unittest)
    test_ipl_fasteners.py --child MODE ARGS    a helper process (see CHILD_MODES)

Needs $IPL_LIBRARY (the libipl built in the same build folder) and the
fasteners module (the interpreter is meson's `fasteners_python`). Processes
that must conflict are real processes: this script re-executed as a child.
Every wait on a child is bounded; a child exits when its stdin closes.
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import ipl_fasteners

CHILD_BOUND_S = 10.0  # how long the parent waits for any one line of a child
CTRL_C_BOUND_S = 2.0  # KeyboardInterrupt must arrive within this (generous)


# ---- Helper processes ------------------------------------------------------

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def wait_for_command():
    """The next line from the parent; "" when stdin closed (parent gone)."""
    return sys.stdin.readline().strip()


def child_wait_interruptible(path, timeout_text):
    """Blocks in acquire() until Ctrl-C; reports when KeyboardInterrupt came."""
    # Ctrl-C raises KeyboardInterrupt even if our launcher ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    timeout = None if timeout_text == "none" else float(timeout_text)
    lock = ipl_fasteners.InterProcessLock(path)
    say("acquiring", time.monotonic_ns())
    try:
        gotten = lock.acquire(timeout=timeout)
        say("returned", gotten)
    except KeyboardInterrupt:
        say("interrupted", time.monotonic_ns())
    while True:
        command = wait_for_command()
        if command == "report":
            say("acquired", lock.acquired)
        else:
            return


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


def child_fasteners_hold(path, kind):
    """Holds a fasteners lock until told to release."""
    acquire, release = fasteners_lock_calls(path, kind)
    if not acquire(blocking=True, timeout=CHILD_BOUND_S):
        say("error could not acquire")
        return
    say("locked")
    wait_for_command()
    release()
    say("released")
    wait_for_command()


def child_fasteners_try(path, kind):
    """Each "try" line: a non-blocking fasteners acquire, answered locked
    (then released at once) or busy."""
    acquire, release = fasteners_lock_calls(path, kind)
    say("ready")
    while wait_for_command() == "try":
        if acquire(blocking=False):
            release()
            say("locked")
        else:
            say("busy")


CHILD_MODES = {
    "wait-interruptible": child_wait_interruptible,
    "fasteners-hold": child_fasteners_hold,
    "fasteners-try": child_fasteners_try,
}


class Child:
    """This script re-executed in a helper mode, driven line by line."""

    def __init__(self, mode, *args):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", mode] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pending = b""

    def send(self, line):
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def read_words(self, bound_s=CHILD_BOUND_S):
        """The child's next line as words; fails the test after bound_s."""
        deadline = time.monotonic() + bound_s
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError("child said nothing for %.1f s" % bound_s)
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError("child exited (status %s)" % self.process.poll())
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode().split()

    def expect(self, word, bound_s=CHILD_BOUND_S):
        words = self.read_words(bound_s)
        if not words or words[0] != word:
            raise AssertionError("child said %r, expected %r" % (words, word))
        return words[1:]

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=CHILD_BOUND_S)
        self.process.stdin.close()
        self.process.stdout.close()


# ---- Tests -------------------------------------------------------------------

class LockTestCase(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipl-ffi-py-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "test.lock")

    def start_child(self, mode, *args):
        child = Child(mode, *args)
        self.addCleanup(child.stop)
        return child

    def other_can_lock(self):
        """Whether a separate handle gets the exclusive lock right now."""
        probe = ipl_fasteners.InterProcessLock(self.path)
        if probe.acquire(blocking=False):
            probe.release()
            return True
        return False

    def other_can_read(self):
        probe = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        if probe.acquire_read_lock(blocking=False):
            probe.release_read_lock()
            return True
        return False


class LibraryTest(LockTestCase):
    # Catches: the tests silently running against some other installed libipl.
    def test_loads_the_library_named_by_ipl_library(self):
        self.assertIn("IPL_LIBRARY", os.environ)
        self.assertEqual(ipl_fasteners._lib._name, os.environ["IPL_LIBRARY"])
        self.assertRegex(ipl_fasteners.library_version(), r"^\d+\.\d+\.\d+$")


class ExclusiveLockTest(LockTestCase):
    # Catches: acquire not taking a real lock, or release not dropping it.
    def test_acquire_excludes_another_handle_until_release(self):
        lock = ipl_fasteners.InterProcessLock(self.path)
        self.assertFalse(lock.acquired)
        self.assertTrue(lock.acquire())
        self.assertTrue(lock.acquired)
        self.assertFalse(self.other_can_lock())
        lock.release()
        self.assertFalse(lock.acquired)
        self.assertTrue(self.other_can_lock())

    # Catches: a non-blocking try that waits, or that reports success while
    # the lock is held elsewhere.
    def test_non_blocking_acquire_fails_at_once_when_held(self):
        holder = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(holder.acquire(blocking=False))
        lock = ipl_fasteners.InterProcessLock(self.path)
        start = time.monotonic()
        self.assertFalse(lock.acquire(blocking=False))
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertFalse(lock.acquired)
        holder.release()

    # Catches: the sliced wait ending early (a slice rounded down, the deadline
    # measured from the wrong moment, a slice's timeout taken as the end).
    def test_timeout_is_never_cut_short(self):
        holder = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(holder.acquire())
        lock = ipl_fasteners.InterProcessLock(self.path)
        for timeout in (0.001, 0.049, 0.123, 0.26):
            start = time.monotonic()
            self.assertFalse(lock.acquire(timeout=timeout))
            elapsed = time.monotonic() - start
            self.assertGreaterEqual(elapsed, timeout)
            self.assertLess(elapsed, timeout + 2.0)
        holder.release()

    # Catches: a wait that only notices a release at its deadline (or polls
    # slowly), or a blocking acquire that never returns.
    def test_waits_return_soon_after_the_holder_releases(self):
        for timeout in (30.0, None):
            holder = ipl_fasteners.InterProcessLock(self.path)
            self.assertTrue(holder.acquire())
            released_at = []

            def release_later():
                time.sleep(0.2)
                released_at.append(time.monotonic())
                holder.release()  # from another thread than the acquiring one

            releaser = threading.Thread(target=release_later)
            releaser.start()
            lock = ipl_fasteners.InterProcessLock(self.path)
            self.assertTrue(lock.acquire(timeout=timeout))
            handoff = time.monotonic() - released_at[0]
            releaser.join()
            print("\n  hand-off after release (timeout=%s): %.1f ms" % (timeout, handoff * 1000),
                  file=sys.stderr)
            self.assertLess(handoff, 1.0)
            lock.release()

    # Catches: `with` not taking the lock, or not releasing it, also when the
    # body raises.
    def test_context_manager(self):
        lock = ipl_fasteners.InterProcessLock(self.path)
        with lock as entered:
            self.assertIs(entered, lock)
            self.assertTrue(lock.acquired)
            self.assertFalse(self.other_can_lock())
        self.assertTrue(self.other_can_lock())
        with self.assertRaises(ZeroDivisionError):
            with lock:
                1 / 0
        self.assertFalse(lock.acquired)
        self.assertTrue(self.other_can_lock())

    # Catches: lock files created only when their folder exists (fasteners
    # creates missing parent folders).
    def test_creates_missing_parent_folders(self):
        path = os.path.join(self.folder, "a", "b", "test.lock")
        lock = ipl_fasteners.InterProcessLock(path)
        self.assertTrue(lock.acquire(blocking=False))
        self.assertTrue(os.path.isfile(path))
        lock.release()


class ReaderWriterLockTest(LockTestCase):
    # Catches: the read lock taken as an exclusive lock, or a writer admitted
    # beside readers.
    def test_two_readers_coexist_and_exclude_a_writer(self):
        reader1 = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        reader2 = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        writer = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        self.assertTrue(reader1.acquire_read_lock(blocking=False))
        self.assertTrue(reader2.acquire_read_lock(blocking=False))
        self.assertFalse(writer.acquire_write_lock(blocking=False))
        start = time.monotonic()
        self.assertFalse(writer.acquire_write_lock(timeout=0.1))
        self.assertGreaterEqual(time.monotonic() - start, 0.1)
        reader1.release_read_lock()
        self.assertFalse(writer.acquire_write_lock(blocking=False))
        reader2.release_read_lock()
        self.assertTrue(writer.acquire_write_lock(blocking=False))
        writer.release_write_lock()

    # Catches: a writer that does not keep readers out.
    def test_writer_excludes_readers(self):
        writer = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        self.assertTrue(writer.acquire_write_lock())
        self.assertFalse(self.other_can_read())
        writer.release_write_lock()
        self.assertTrue(self.other_can_read())

    # Catches: read_lock()/write_lock() taking the wrong mode or not
    # releasing (also when the body raises).
    def test_context_managers(self):
        rw = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        with rw.read_lock():
            self.assertTrue(self.other_can_read())
            self.assertFalse(self.other_can_lock())
        self.assertTrue(self.other_can_lock())
        with self.assertRaises(KeyError):
            with rw.write_lock():
                self.assertFalse(self.other_can_read())
                raise KeyError("body failed")
        self.assertTrue(self.other_can_lock())


class DecoratorTest(LockTestCase):
    # Catches: a decorator that does not lock, locks the wrong mode, loses
    # the return value or arguments, or does not release after the call.
    def test_the_three_decorators(self):
        seen = {}

        @ipl_fasteners.interprocess_locked(self.path)
        def exclusive(x, y=0):
            seen["exclusive"] = (self.other_can_read(), self.other_can_lock())
            return x + y

        @ipl_fasteners.interprocess_read_locked(self.path)
        def reader():
            seen["read"] = (self.other_can_read(), self.other_can_lock())
            return "r"

        @ipl_fasteners.interprocess_write_locked(self.path)
        def writer():
            seen["write"] = (self.other_can_read(), self.other_can_lock())
            return "w"

        self.assertEqual(exclusive(2, y=3), 5)
        self.assertEqual(reader(), "r")
        self.assertEqual(writer(), "w")
        self.assertEqual(seen, {"exclusive": (False, False), "read": (True, False),
                                "write": (False, False)})
        self.assertEqual(exclusive.__name__, "exclusive")
        self.assertTrue(self.other_can_lock())

    # Catches: one lock object shared by all calls of a decorated function,
    # so calls from two threads either fail (would-deadlock) or overlap.
    def test_decorated_calls_from_threads_exclude_each_other(self):
        inside = []
        overlaps = []
        errors = []

        @ipl_fasteners.interprocess_locked(self.path)
        def critical():
            if inside:
                overlaps.append(True)
            inside.append(True)
            time.sleep(0.01)
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
        self.assertFalse(any(thread.is_alive() for thread in threads))
        self.assertEqual(errors, [])
        self.assertEqual(overlaps, [])


class ErrorTest(LockTestCase):
    # Catches: releasing an unheld lock silently, or an error without
    # libipl's status and text.
    def test_release_of_an_unheld_lock_raises(self):
        lock = ipl_fasteners.InterProcessLock(self.path)
        with self.assertRaises(ipl_fasteners.IplError) as raised:
            lock.release()
        self.assertIsInstance(raised.exception, threading.ThreadError)
        self.assertEqual(raised.exception.status, ipl_fasteners.IPL_E_NOT_HELD)
        self.assertTrue(raised.exception.strerror)
        self.assertIn(raised.exception.strerror, str(raised.exception))
        rw = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        with self.assertRaises(ipl_fasteners.IplError):
            rw.release_read_lock()
        self.assertTrue(rw.acquire_read_lock())
        with self.assertRaises(ipl_fasteners.IplError) as raised:
            rw.release_write_lock()  # holds read, not write: kept
        self.assertEqual(raised.exception.status, ipl_fasteners.IPL_E_NOT_HELD)
        self.assertFalse(self.other_can_lock())
        rw.release_read_lock()

    # Catches: a second acquire on the same object silently "succeeding" (a
    # re-lock) or dropping the lock already held.
    def test_acquire_while_held_raises_and_keeps_the_lock(self):
        lock = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(lock.acquire())
        with self.assertRaises(ipl_fasteners.IplError) as raised:
            lock.acquire(blocking=False)
        self.assertEqual(raised.exception.status, ipl_fasteners.IPL_E_WOULD_DEADLOCK)
        self.assertTrue(lock.acquired)
        self.assertFalse(self.other_can_lock())
        lock.release()

    # Catches: bad paths reported as "not acquired" (False) instead of an
    # error, or with the wrong status.
    def test_bad_paths_raise_with_the_ipl_status(self):
        cases = [("", ipl_fasteners.IPL_E_INVALID), (self.folder, -6)]  # -6: IPL_E_NOT_REGULAR_FILE
        for path, status in cases:
            lock = ipl_fasteners.InterProcessLock(path)
            with self.assertRaises(ipl_fasteners.IplError) as raised:
                lock.acquire(blocking=False)
            self.assertEqual(raised.exception.status, status)
            self.assertIn("ipl status %d" % status, str(raised.exception))
            self.assertFalse(lock.acquired)

    # Catches: arguments fasteners rejects being accepted (code that relied
    # on the ValueError would change behaviour).
    def test_negative_timeout_or_delay_is_a_value_error(self):
        lock = ipl_fasteners.InterProcessLock(self.path)
        with self.assertRaises(ValueError):
            lock.acquire(timeout=-1)
        with self.assertRaises(ValueError):
            lock.acquire(delay=-1)
        self.assertFalse(lock.acquired)


class CtrlCTest(LockTestCase):
    # Catches: a wait done as one long C call (SIGINT is only seen when it
    # returns, so the child hangs and the bound fails), and an interrupted
    # acquire that leaves the lock held (a helper thread left waiting, a
    # handle not closed).
    def check_ctrl_c(self, timeout_text):
        holder = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(holder.acquire())
        child = self.start_child("wait-interruptible", self.path, timeout_text)
        entered_ns = int(child.expect("acquiring")[0])
        # Let the child get well into its wait before Ctrl-C (it reports when
        # it entered acquire(), checked below). 330 ms is not a multiple of
        # the 50 ms wait slice, so the latency printed is a typical one, not
        # the lucky case of a slice just ending.
        time.sleep(0.33)
        sent_ns = time.monotonic_ns()
        os.kill(child.process.pid, signal.SIGINT)
        caught_ns = int(child.expect("interrupted", CTRL_C_BOUND_S)[0])
        latency_ms = (caught_ns - sent_ns) / 1e6
        print("\n  Ctrl-C -> KeyboardInterrupt (timeout=%s): %.1f ms" % (timeout_text, latency_ms),
              file=sys.stderr)
        self.assertLess(entered_ns, sent_ns)
        self.assertLess(latency_ms, CTRL_C_BOUND_S * 1000)
        # The child is still alive: once the holder lets go, nobody may hold
        # the lock on its behalf.
        holder.release()
        probe = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(probe.acquire(timeout=1.0))
        probe.release()
        child.send("report")
        self.assertEqual(child.expect("acquired"), ["False"])
        child.send("exit")

    def test_ctrl_c_interrupts_a_blocking_acquire(self):
        self.check_ctrl_c("none")

    def test_ctrl_c_interrupts_a_long_timed_acquire(self):
        self.check_ctrl_c("60")


class FastenersInteropTest(LockTestCase):
    # Catches: a lock fasteners does not see (flock instead of fcntl, another
    # byte range) — fasteners holds, ours must wait and time out.
    def test_fasteners_holds_ours_times_out(self):
        child = self.start_child("fasteners-hold", self.path, "exclusive")
        child.expect("locked")
        lock = ipl_fasteners.InterProcessLock(self.path)
        self.assertFalse(lock.acquire(blocking=False))
        start = time.monotonic()
        self.assertFalse(lock.acquire(timeout=0.2))
        self.assertGreaterEqual(time.monotonic() - start, 0.2)
        child.send("release")
        child.expect("released")
        self.assertTrue(lock.acquire(blocking=False))
        lock.release()

    # Catches: the same in the other direction — ours holds, fasteners'
    # non-blocking acquire must fail — and a release that fasteners does not
    # see.
    def test_ours_holds_fasteners_fails(self):
        child = self.start_child("fasteners-try", self.path, "exclusive")
        child.expect("ready")
        lock = ipl_fasteners.InterProcessLock(self.path)
        self.assertTrue(lock.acquire())
        child.send("try")
        child.expect("busy")
        lock.release()
        child.send("try")
        child.expect("locked")

    # Catches: our read lock taken as a write lock (or the reverse) on the
    # fcntl level: a fasteners reader must coexist with ours, a fasteners
    # writer must be kept out by ours.
    def test_reader_writer_modes_match_fasteners(self):
        holder = self.start_child("fasteners-hold", self.path, "read")
        holder.expect("locked")
        rw = ipl_fasteners.InterProcessReaderWriterLock(self.path)
        self.assertTrue(rw.acquire_read_lock(blocking=False))
        rw.release_read_lock()
        self.assertFalse(rw.acquire_write_lock(blocking=False))
        holder.send("release")
        holder.expect("released")
        writer_probe = self.start_child("fasteners-try", self.path, "write")
        writer_probe.expect("ready")
        self.assertTrue(rw.acquire_read_lock(blocking=False))
        writer_probe.send("try")
        writer_probe.expect("busy")
        rw.release_read_lock()
        writer_probe.send("try")
        writer_probe.expect("locked")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        CHILD_MODES[sys.argv[2]](*sys.argv[3:])
    else:
        unittest.main()

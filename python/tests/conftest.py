# SPDX-License-Identifier: MIT
"""Shared pieces of the tests of the ipl package: a lock path per test, and
helper processes (tests/child.py) driven line by line with a bound on every
wait, so a bug fails a test instead of hanging it.

The tests import the installed `ipl` (python/src is not on sys.path): CI
runs them in a venv that pip-installed ./python, against an installed
libipl; meson's ffi suite runs them with PYTHONPATH=python/src and
IPL_LIBRARY naming the build folder's library.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

CHILD_BOUND_S = 10.0  # how long a test waits for any one line of a child

# The POSIX lock kind of the libipl under test, as scripts/test-bindings
# built it (IPL_TEST_POSIX_LOCKS=ofd or classic); Linux builds default to
# OFD locks. On the classic backend ipl_open_fd and IPL_OPEN_INHERITABLE
# are IPL_E_UNSUPPORTED, and the tests expect exactly that there.
POSIX_LOCKS = os.environ.get("IPL_TEST_POSIX_LOCKS",
                             "ofd" if sys.platform.startswith("linux") else "classic")
OFD_LOCKS = POSIX_LOCKS == "ofd"
CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


class Child:
    """tests/child.py in one of its modes, in its own process."""

    def __init__(self, mode, *args, pass_fds=()):
        self.process = subprocess.Popen(
            [sys.executable, CHILD_SCRIPT, mode] + [os.fsdecode(a) for a in args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, pass_fds=pass_fds)
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
        assert words and words[0] == word, "child said %r, expected %r" % (words, word)
        return words[1:]

    def interrupt(self):
        os.kill(self.process.pid, signal.SIGINT)

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=CHILD_BOUND_S)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=CHILD_BOUND_S)
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "test.lock")


@pytest.fixture
def start_child():
    children = []

    def start(mode, *args, pass_fds=()):
        child = Child(mode, *args, pass_fds=pass_fds)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()


def fasteners_try(path, kind="exclusive"):
    """Whether a separate process using the real fasteners gets the lock now
    (a one-shot child; "locked" or "busy")."""
    child = Child("fasteners-try-once", path, kind)
    try:
        words = child.read_words()
    finally:
        child.stop()
    assert words in (["locked"], ["busy"]), words
    return words == ["locked"]

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A lock agent whose locks are Python fasteners' (tests/test_interop.cpp).

    fasteners_peer.py LOCK_PATH

It speaks the protocol of ipltest::lock_agent (tests/test_support.hpp), so
that a test drives this peer and a libipl agent through one class:

    (start)                  -> ready            fasteners is imported
                                error TEXT       it is not
    acquire MODE TIMEOUT_MS  -> rc STATUS T      one acquire call
    wait MODE TIMEOUT_MS     -> [waiting T] rc STATUS T
                                                 one try; when the lock is
                                                 held elsewhere (and
                                                 TIMEOUT_MS != 0) "waiting",
                                                 then the call
    release MODE [DELAY_MS]  -> rc STATUS T      after sleeping DELAY_MS
    close                    -> closed           lets go of what it holds
    exit, or EOF             -> (exits)

MODE: exclusive = fasteners.InterProcessLock; write / shared = the write /
read side of fasteners.InterProcessReaderWriterLock (as ipl_acquire,
ipl_acquire_write, ipl_acquire_read). TIMEOUT_MS: 0 = one try
(blocking=False), -1 = IPL_WAIT_FOREVER (blocking=True, no timeout), else
blocking=True with timeout=TIMEOUT_MS/1000 s. STATUS is the ipl status a
libipl agent would answer: IPL_OK (got it / let go), IPL_E_TIMEOUT (not got),
IPL_E_WOULD_DEADLOCK (already holds a lock), IPL_E_NOT_HELD (a release of
what it does not hold), IPL_E_INVALID (after close, or a bad timeout). T is
CLOCK_MONOTONIC in nanoseconds (time.monotonic_ns(), lock_agent::clock_ns()
in C++): just after an acquire call, just before a release or a wait.

A peer holds at most one lock. It keeps one lock object per class for its
whole life: fasteners' locks are classic POSIX record locks, owned by the
process, so closing any descriptor of the file (a second lock object being
garbage-collected, say) would silently drop a lock this process holds.

Every wait is bounded: the peer exits when its stdin closes (also in the
middle of a blocking acquire or a release delay), when the test stays silent
for IDLE_BOUND_S, and in any case after LIFETIME_BOUND_S.
"""

import os
import queue
import signal
import sys
import threading
import time

IDLE_BOUND_S = 30
LIFETIME_BOUND_S = 120

# ipl.h's statuses (pinned forever).
IPL_OK = 0
IPL_E_TIMEOUT = -1
IPL_E_INVALID = -2
IPL_E_NOT_HELD = -3
IPL_E_WOULD_DEADLOCK = -4
IPL_WAIT_FOREVER = -1


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 2:
        say("error usage: fasteners_peer.py LOCK_PATH")
        return 2
    lock_path = sys.argv[1]

    # The default SIGALRM action ends the process: a hard bound on its life.
    signal.alarm(LIFETIME_BOUND_S)

    try:
        import fasteners
    except ImportError as exc:
        message = ("error cannot import fasteners with %s (%s): %s"
                   % (sys.executable, sys.version.split()[0], exc))
        say(message)
        sys.stderr.write(message + "\n")
        return 3

    commands = queue.Queue()
    stdin_closed = threading.Event()

    def read_commands():
        while True:
            line = sys.stdin.readline()
            if not line:
                break
            commands.put(line.strip())
        stdin_closed.set()
        commands.put(None)

    threading.Thread(target=read_commands, daemon=True).start()

    # fasteners sleeps between tries through this function: a waiting peer
    # notices there that the test has gone away.
    def sleep_unless_test_gone(seconds):
        if stdin_closed.wait(seconds):
            os._exit(0)

    exclusive_lock = fasteners.InterProcessLock(
        lock_path, sleep_func=sleep_unless_test_gone)
    rw_lock = fasteners.InterProcessReaderWriterLock(
        lock_path, sleep_func=sleep_unless_test_gone)
    acquirers = {
        "exclusive": exclusive_lock.acquire,
        "write": rw_lock.acquire_write_lock,
        "shared": rw_lock.acquire_read_lock,
    }
    releasers = {
        "exclusive": exclusive_lock.release,
        "write": rw_lock.release_write_lock,
        "shared": rw_lock.release_read_lock,
    }
    state = {"held": None, "closed": False}

    def acquire(mode, timeout_ms):
        """One acquire call: its status."""
        if state["closed"] or (timeout_ms < 0 and timeout_ms != IPL_WAIT_FOREVER):
            return IPL_E_INVALID
        if state["held"] is not None:
            return IPL_E_WOULD_DEADLOCK
        if timeout_ms == 0:
            got = acquirers[mode](blocking=False)
        else:
            timeout_s = None if timeout_ms == IPL_WAIT_FOREVER else timeout_ms / 1000.0
            got = acquirers[mode](blocking=True, timeout=timeout_s)
        if not got:
            return IPL_E_TIMEOUT
        state["held"] = mode
        return IPL_OK

    def wait(mode, timeout_ms):
        """One try; if the lock is held elsewhere (and timeout_ms != 0), says
        "waiting T" and makes the call. Its status, and whether it waited."""
        status = acquire(mode, 0)
        if status != IPL_E_TIMEOUT or timeout_ms == 0:
            return status, False
        say("waiting %d" % time.monotonic_ns())
        return acquire(mode, timeout_ms), True

    def release(mode):
        if state["closed"]:
            return IPL_E_INVALID
        if state["held"] != mode:
            return IPL_E_NOT_HELD
        releasers[mode]()
        state["held"] = None
        return IPL_OK

    def say_status(status, at_ns):
        say("rc %d %d" % (status, at_ns))

    say("ready")
    while True:
        try:
            command = commands.get(timeout=IDLE_BOUND_S)
        except queue.Empty:
            return 4
        if command is None or command == "exit":
            return 0
        words = command.split()

        if words == ["close"]:
            if state["held"] is not None:
                release(state["held"])
            state["closed"] = True
            say("closed")
        elif (len(words) == 3 and words[0] in ("acquire", "wait")
              and words[1] in acquirers and is_integer(words[2])):
            mode, timeout_ms = words[1], int(words[2])
            if words[0] == "wait":
                status, _ = wait(mode, timeout_ms)
            else:
                status = acquire(mode, timeout_ms)
            say_status(status, time.monotonic_ns())
        elif (len(words) in (2, 3) and words[0] == "release"
              and words[1] in acquirers
              and (len(words) == 2 or is_integer(words[2]))):
            if len(words) == 3:
                sleep_unless_test_gone(max(0, int(words[2])) / 1000.0)
            released_at = time.monotonic_ns()
            say_status(release(words[1]), released_at)
        else:
            say("bad command: " + command)


def is_integer(word):
    return word.lstrip("-").isdigit()


if __name__ == "__main__":
    sys.exit(main())

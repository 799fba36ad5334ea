#!/usr/bin/env python3
"""A fasteners process for libipl's interop tests (tests/test_interop.cpp).

    fasteners_peer.py LOCK_PATH

The test drives this peer one line at a time. The peer answers every line
with one line "WORD MONOTONIC_NS" (or "error TEXT"), where MONOTONIC_NS is
CLOCK_MONOTONIC in nanoseconds, comparable with the test's own clock:

    (start)                  -> ready        the fasteners module is imported
    acquire KIND MODE        -> locked T     got it (T: just after)
                                busy T       MODE try: held elsewhere
                                waiting T    first try failed; waiting starts
                                             after T, then one more line:
                                             locked T or timeout T
    release                  -> released T   T: just before unlocking
    exit                     -> (exits)

KIND: exclusive = fasteners.InterProcessLock; read / write = the read / write
side of fasteners.InterProcessReaderWriterLock.
MODE: try (blocking=False); block (blocking=True, no timeout);
timeout=MS (blocking=True, timeout=MS/1000 seconds).

A peer holds at most one lock. It keeps one lock object per class for its
whole life: fasteners' locks are classic POSIX record locks, owned by the
process, so closing any descriptor of the file (a second lock object being
garbage-collected, say) would silently drop a lock this process holds.

Every wait is bounded: the peer exits when its stdin closes (also in the
middle of a blocking acquire), when the test stays silent for IDLE_BOUND_S,
and in any case after LIFETIME_BOUND_S.
"""

import os
import queue
import signal
import sys
import threading
import time

IDLE_BOUND_S = 30
LIFETIME_BOUND_S = 120


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def say_at(word):
    say("%s %d" % (word, time.monotonic_ns()))


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
        "read": rw_lock.acquire_read_lock,
        "write": rw_lock.acquire_write_lock,
    }
    releasers = {
        "exclusive": exclusive_lock.release,
        "read": rw_lock.release_read_lock,
        "write": rw_lock.release_write_lock,
    }
    held_kind = None

    say("ready")
    while True:
        try:
            command = commands.get(timeout=IDLE_BOUND_S)
        except queue.Empty:
            return 4
        if command is None or command == "exit":
            return 0
        words = command.split()

        if len(words) == 3 and words[0] == "acquire":
            kind, mode = words[1], words[2]
            if kind not in acquirers:
                say("error unknown kind: " + kind)
                continue
            if held_kind is not None:
                say("error already holding " + held_kind)
                continue
            timeout_s = None  # try / block
            if mode.startswith("timeout=") and mode[len("timeout="):].isdigit():
                timeout_s = int(mode[len("timeout="):]) / 1000.0
            elif mode not in ("try", "block"):
                say("error unknown mode: " + mode)
                continue
            acquire = acquirers[kind]
            if acquire(blocking=False):
                held_kind = kind
                say_at("locked")
            elif mode == "try":
                say_at("busy")
            else:
                say_at("waiting")
                if acquire(blocking=True, timeout=timeout_s):
                    held_kind = kind
                    say_at("locked")
                else:
                    say_at("timeout")

        elif command == "release":
            if held_kind is None:
                say("error release without a lock")
                continue
            released_at = time.monotonic_ns()
            releasers[held_kind]()
            held_kind = None
            say("released %d" % released_at)

        else:
            say("error unknown command: " + command)


if __name__ == "__main__":
    sys.exit(main())

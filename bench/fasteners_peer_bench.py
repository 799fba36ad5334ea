#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The fasteners side of libipl's benchmark (bench/ipl_bench).

    fasteners_peer_bench.py probe
    fasteners_peer_bench.py uncontended LOCK REPETITIONS SECONDS
    fasteners_peer_bench.py held LOCK WAIT_MS TIMEOUT_MS COUNT
    fasteners_peer_bench.py waiter LOCK MODE
    fasteners_peer_bench.py worker LOCK DATA

Every answer is one line "NAME VALUE..." on stdout; a one-shot command ends
with "done", and a failure is "error TEXT" (exit status 1). Times come from
time.monotonic_ns(), which is CLOCK_MONOTONIC, the benchmark's own clock.
The lock is fasteners.InterProcessLock (whole-file classic fcntl locks).
MODE is "block" (acquire(blocking=True)) or "timed"
(acquire(blocking=True, timeout=10): never expires in the benchmark).

probe        -> python VERSION, fasteners VERSION
uncontended  -> pair_try_ns, pair_timed_ns, pair_forever_ns: the CPU time
                (time.thread_time_ns) of one acquire + release of fasteners
                (try: blocking=False; timed: timeout=1; forever:
                blocking=True), median of REPETITIONS batches of SECONDS
                each; python_raw_pair_ns: fcntl.lockf lock + unlock on an
                open file, Python's own floor. NAME_wall: the same in wall
                time.
held         -> (the benchmark holds the lock in another process)
                cpu_waited_s, cpu_process_ms, cpu_thread_ms: one
                acquire(timeout=WAIT_MS) that must time out;
                overshoot_us: COUNT acquires with timeout=TIMEOUT_MS, each
                elapsed time minus TIMEOUT_MS.
waiter       -> "ready"; then per line read: "wait" -> "waiting", acquire,
                "acquired T" (T: just after acquire returned); "release" ->
                "released"; "exit" or end of input -> exits.
worker       -> "ready"; then per line "go END_NS MODE": until END_NS,
                acquire, add one to the int64 (little-endian) at offset 0 of
                DATA, release; then "ops N". "exit" or end of input -> exits.

Every run is bounded: the script ends itself after LIFETIME_BOUND_S.
"""

import fcntl
import os
import signal
import struct
import sys
import time

LIFETIME_BOUND_S = 600
CONTENDED_TIMEOUT_S = 10.0
PAIR_TIMEOUT_S = 1.0


def say(*words):
    sys.stdout.write(" ".join(str(word) for word in words) + "\n")
    sys.stdout.flush()


class PeerError(Exception):
    pass


def import_fasteners():
    try:
        import fasteners
    except ImportError as exc:
        raise PeerError("cannot import fasteners with %s (%s): %s"
                        % (sys.executable, sys.version.split()[0], exc))
    return fasteners


def acquire(lock, mode):
    if mode == "block":
        return lock.acquire(blocking=True)
    if mode == "timed":
        return lock.acquire(blocking=True, timeout=CONTENDED_TIMEOUT_S)
    raise PeerError("unknown mode %r" % mode)


def median(values):
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def probe():
    fasteners = import_fasteners()
    version = getattr(fasteners, "__version__", None)
    if version is None:
        from fasteners import version as version_module
        version = version_module.version_string()
    say("python", sys.version.split()[0])
    say("fasteners", version)


def uncontended(lock_path, repetitions, seconds):
    fasteners = import_fasteners()
    lock = fasteners.InterProcessLock(lock_path)
    raw_file = open(lock_path, "a")

    def fasteners_pair(kind):
        if kind == "try":
            got = lock.acquire(blocking=False)
        elif kind == "timed":
            got = lock.acquire(blocking=True, timeout=PAIR_TIMEOUT_S)
        else:
            got = lock.acquire(blocking=True)
        if not got:
            raise PeerError("uncontended fasteners acquire (%s) failed" % kind)
        lock.release()

    def raw_pair():
        fcntl.lockf(raw_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(raw_file, fcntl.LOCK_UN)

    figures = [
        ("pair_try_ns", lambda: fasteners_pair("try")),
        ("pair_timed_ns", lambda: fasteners_pair("timed")),
        ("pair_forever_ns", lambda: fasteners_pair("forever")),
        ("python_raw_pair_ns", raw_pair),
    ]
    cpu_samples = {name: [] for name, _ in figures}
    wall_samples = {name: [] for name, _ in figures}
    for repetition in range(repetitions):
        # Rotate the order so that no figure always runs first.
        for index in range(len(figures)):
            name, pair = figures[(index + repetition) % len(figures)]
            cpu_start = time.thread_time_ns()
            start = time.monotonic_ns()
            until = start + int(seconds * 1e9)
            pairs = 0
            now = start
            while now < until:
                for _ in range(16):
                    pair()
                pairs += 16
                now = time.monotonic_ns()
            cpu_samples[name].append((time.thread_time_ns() - cpu_start) / pairs)
            wall_samples[name].append((now - start) / pairs)
    for name, _ in figures:
        say(name, "%.1f" % median(cpu_samples[name]))
        say(name + "_wall", "%.1f" % median(wall_samples[name]))
    raw_file.close()


def held(lock_path, wait_ms, timeout_ms, count):
    fasteners = import_fasteners()
    lock = fasteners.InterProcessLock(lock_path)

    cpu_before = time.process_time_ns()
    thread_before = time.thread_time_ns()
    start = time.monotonic_ns()
    got = lock.acquire(blocking=True, timeout=wait_ms / 1000.0)
    end = time.monotonic_ns()
    cpu = time.process_time_ns() - cpu_before
    thread = time.thread_time_ns() - thread_before
    if got:
        raise PeerError("got a lock another process holds")
    say("cpu_waited_s", "%.6f" % ((end - start) / 1e9))
    say("cpu_process_ms", "%.6f" % (cpu / 1e6))
    say("cpu_thread_ms", "%.6f" % (thread / 1e6))

    overshoot_us = []
    for _ in range(count):
        start = time.monotonic_ns()
        got = lock.acquire(blocking=True, timeout=timeout_ms / 1000.0)
        elapsed = time.monotonic_ns() - start
        if got:
            raise PeerError("got a lock another process holds")
        # fasteners' timeouts may end early (its stop watch is not exact):
        # that shows as a negative overshoot, reported as measured.
        overshoot_us.append("%.1f" % ((elapsed - timeout_ms * 1e6) / 1e3))
    say("overshoot_us", *overshoot_us)


def waiter(lock_path, mode):
    fasteners = import_fasteners()
    lock = fasteners.InterProcessLock(lock_path)
    say("ready")
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        command = line.strip()
        if command == "wait":
            say("waiting")
            if not acquire(lock, mode):
                raise PeerError("acquire (%s) timed out" % mode)
            say("acquired", time.monotonic_ns())
        elif command == "release":
            lock.release()
            say("released")
        elif command == "exit":
            return
        else:
            raise PeerError("unknown command %r" % command)


def worker(lock_path, data_path):
    fasteners = import_fasteners()
    lock = fasteners.InterProcessLock(lock_path)
    data = os.open(data_path, os.O_RDWR)
    say("ready")
    while True:
        words = sys.stdin.readline().split()
        if not words or words == ["exit"]:
            break
        if len(words) != 3 or words[0] != "go":
            raise PeerError("expected 'go END_NS MODE', got %r" % words)
        end = int(words[1])
        mode = words[2]
        ops = 0
        while time.monotonic_ns() < end:
            if not acquire(lock, mode):
                raise PeerError("acquire (%s) timed out" % mode)
            (counter,) = struct.unpack("<q", os.pread(data, 8, 0))
            os.pwrite(data, struct.pack("<q", counter + 1), 0)
            lock.release()
            ops += 1
        say("ops", ops)
    os.close(data)


def main(argv):
    # The default SIGALRM action ends the process: a hard bound on its life.
    signal.alarm(LIFETIME_BOUND_S)
    command = argv[1] if len(argv) > 1 else ""
    args = argv[2:]
    try:
        if command == "probe" and not args:
            probe()
            say("done")
        elif command == "uncontended" and len(args) == 3:
            uncontended(args[0], int(args[1]), float(args[2]))
            say("done")
        elif command == "held" and len(args) == 4:
            held(args[0], int(args[1]), int(args[2]), int(args[3]))
            say("done")
        elif command == "waiter" and len(args) == 2:
            waiter(args[0], args[1])
        elif command == "worker" and len(args) == 2:
            worker(args[0], args[1])
        else:
            raise PeerError("usage: see the docstring of %s" % argv[0])
    except (PeerError, OSError) as exc:
        say("error", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

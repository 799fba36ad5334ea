// SPDX-License-Identifier: MIT
// Interop: libipl and Python's fasteners on the same lock file.
//
// fasteners runs for real, in a Python process (tests/fasteners_peer.py, run
// with $IPL_FASTENERS_PYTHON). libipl runs either in this process or, when a
// test needs a libipl call that waits, in a lock agent (test_support.hpp), so
// that a wait that never ends fails the test after kBound instead of hanging
// it. The fasteners peer speaks the lock agent's protocol: the tests drive
// both peers through one class, ipltest::lock_agent. Its "wait" command says
// "waiting" once the peer has found the lock held, and every answer carries
// T, CLOCK_MONOTONIC in nanoseconds, the same clock in every process, which
// lets a test check that a waiter got the lock only after the holder let go —
// exactly, without sleeping.
//
// If the interpreter cannot import fasteners these tests FAIL on purpose: a
// skipped interop test would hide a broken CI setup.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>

#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include "test_support.hpp"

#ifndef IPL_TESTS_SOURCE_DIR
#error "tests/meson.build must define IPL_TESTS_SOURCE_DIR (the absolute path of tests/)"
#endif

namespace {

using namespace ipltest;

std::string fasteners_python() {
  const char *python = getenv("IPL_FASTENERS_PYTHON");
  return python && *python ? python : "/usr/bin/python3";
}

// A fasteners process on `lock_path`, driven as a lock agent.
lock_agent fasteners_peer(const std::string &lock_path) {
  return lock_agent::program(
      {fasteners_python(), std::string(IPL_TESTS_SOURCE_DIR) + "/fasteners_peer.py", lock_path},
      "fasteners peer (" + fasteners_python() + ")");
}

// Prints the first fcntl record lock that blocks a whole-file write lock on
// args[0], as a process other than its owner sees it:
// "unlocked" or "<read|write> <l_start> <l_len>".
IPL_TEST_HELPER(interop_probe_lock_record) {
  if (args.size() != 1) return 2;
  const int fd = open(args[0].c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    helper_say("error open");
    return 1;
  }
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = 0;
  probe.l_len = 0;
  const int status = fcntl(fd, F_GETLK, &probe);
  close(fd);
  if (status != 0) {
    helper_say("error F_GETLK");
    return 1;
  }
  if (probe.l_type == F_UNLCK) {
    helper_say("unlocked");
  } else {
    helper_say(std::string(probe.l_type == F_RDLCK ? "read" : "write") + " " +
               std::to_string(probe.l_start) + " " + std::to_string(probe.l_len));
  }
  return 0;
}

// The lock record another process sees on `path` right now.
std::string probe_lock_record(const std::string &path) {
  child_process probe = child_process::helper("interop_probe_lock_record", {path});
  std::string record;
  if (!probe.read_line(&record)) record = "<no answer from the probe>";
  probe.wait();
  return record;
}

// A libipl handle owned by the test body.
struct open_lock {
  explicit open_lock(const std::string &path) { status = ipl_open(path.c_str(), 0, &lock); }
  ~open_lock() { ipl_close(lock); }
  open_lock(const open_lock &) = delete;
  open_lock &operator=(const open_lock &) = delete;
  ipl_lock *lock = nullptr;
  int status = IPL_E_INTERNAL;
};

// ---- Setup ------------------------------------------------------------

// Catches a CI setup whose interpreter lacks fasteners (or cannot be
// started): every other Interop test would fail too, this one says why in
// one line.
TEST(InteropSetup, FastenersPeerStartsAndImportsFasteners) {
  temp_dir dir;
  bool started = false;
  try {
    lock_agent py = fasteners_peer(dir.path("lock"));
    started = py.started();
  } catch (const std::exception &failure) {
    ADD_FAILURE() << "fasteners peer (" << fasteners_python()
                  << "): could not start: " << failure.what();
  }
  ASSERT_TRUE(started) << "set IPL_FASTENERS_PYTHON (meson option fasteners_python) "
                          "to a Python 3 with fasteners; CI installs python3-fasteners";
}

// ---- The record on the file is the one fasteners takes ----------------

// Catches a different byte range (e.g. byte 0 length 1, or from EOF), a
// shared lock in place of a write lock, and flock(2) (invisible to F_GETLK).
TEST(InteropLockRecord, ExclusiveIsTheRecordFastenersTakes) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  std::string fasteners_record;
  for (lock_mode mode : {lock_mode::exclusive, lock_mode::write}) {
    SCOPED_TRACE(mode_name(mode));
    ASSERT_EQ(py.acquire(mode, 0), IPL_OK);
    const std::string record = probe_lock_record(path);
    if (fasteners_record.empty()) fasteners_record = record;
    EXPECT_EQ(record, fasteners_record) << "fasteners' two exclusive kinds differ";
    ASSERT_EQ(py.release(mode), IPL_OK);
  }
  ASSERT_EQ(fasteners_record, "write 0 0");  // whole file, as documented

  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), fasteners_record) << "ipl_acquire";
  ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "unlocked") << "ipl_release left a record";
  ASSERT_EQ(ipl_acquire_write(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), fasteners_record) << "ipl_acquire_write";
  ASSERT_EQ(ipl_release_write(mine.lock), IPL_OK);
}

// Catches a shared lock taken as a write lock, or on a range that does not
// start at byte 0 (where every fasteners lock starts). libipl's shared lock
// stops one byte short of the whole file: the last byte (offset 2^63-1) is
// the upgrade byte (ipl.h, ipl_upgrade), so the record is "0, length
// 2^63-1" where fasteners' is "0, to the end" — the same conflicts, which
// the InteropFasteners*/InteropLibipl* tests check both ways.
TEST(InteropLockRecord, SharedIsTheRecordFastenersTakesButTheUpgradeByte) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::shared));
  const std::string fasteners_record = probe_lock_record(path);
  ASSERT_EQ(py.release(lock_mode::shared), IPL_OK);
  ASSERT_EQ(fasteners_record, "read 0 0");  // whole file, as documented

  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "read 0 9223372036854775807");
  ASSERT_EQ(ipl_release_read(mine.lock), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "unlocked") << "ipl_release_read left a record";
}

// ---- libipl holds, fasteners tries --------------------------------------

// Catches flock(2) or any lock fasteners' lockf() does not see (fasteners
// would get the lock), and a release that does not unlock (it never would).
TEST(InteropLibiplHolds, FastenersCannotTakeAnyKindUntilRelease) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());

  struct exclusive_api {
    const char *name;
    int (*acquire)(ipl_lock *, int64_t);
    int (*release)(ipl_lock *);
  };
  for (const exclusive_api &api : {exclusive_api{"ipl_acquire", ipl_acquire, ipl_release},
                                   exclusive_api{"ipl_acquire_write", ipl_acquire_write,
                                                 ipl_release_write}}) {
    SCOPED_TRACE(api.name);
    ASSERT_EQ(api.acquire(mine.lock, 0), IPL_OK);
    EXPECT_EQ(py.acquire(lock_mode::exclusive, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(py.acquire(lock_mode::write, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(py.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
    // fasteners' own timed wait gives up too.
    EXPECT_EQ(py.wait(lock_mode::exclusive, 200), kWaiting);
    EXPECT_EQ(py.reply(), IPL_E_TIMEOUT);
    ASSERT_EQ(api.release(mine.lock), IPL_OK);

    for (lock_mode mode : kAllModes) {
      SCOPED_TRACE(mode_name(mode));
      EXPECT_EQ(py.acquire(mode, 0), IPL_OK);
      ASSERT_EQ(py.release(mode), IPL_OK);
    }
  }
}

// ---- fasteners holds, libipl tries and waits -----------------------------

// Catches flock(2), or OFD locks that do not conflict with fasteners'
// classic locks: libipl would get a lock fasteners holds.
TEST(InteropFastenersHolds, LibiplCannotTakeAnyModeUntilRelease) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  for (lock_mode held : {lock_mode::exclusive, lock_mode::write}) {
    SCOPED_TRACE(mode_name(held));
    ASSERT_EQ(py.acquire(held, 0), IPL_OK);
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire_write(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_E_TIMEOUT);
    ASSERT_EQ(py.release(held), IPL_OK);
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  }
}

// Catches a timed wait that takes the lock although fasteners holds it (e.g.
// a blocking call that ignores classic locks), or gives up early.
TEST(InteropFastenersHolds, LibiplTimedWaitTimesOutWhileHeld) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::exclusive));
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::exclusive, 300), kWaiting);
  const int64_t started_ns = waiter.stamp_ns();
  ASSERT_EQ(waiter.reply(), IPL_E_TIMEOUT);
  EXPECT_GE(waiter.stamp_ns() - started_ns, int64_t(300) * 1000000);
  ASSERT_EQ(waiter.wait(lock_mode::shared, 100), kWaiting);
  ASSERT_EQ(waiter.reply(), IPL_E_TIMEOUT);
}

// How long a waiter must stay quiet while the lock is still held elsewhere: a
// wait that wrongly returns at once answers well within this.
constexpr std::chrono::milliseconds kQuietWindow = 150ms;

// `waiter` (libipl) has answered "waiting" for a lock that `holder`
// (fasteners) holds in `held`. Checks that the waiter stays quiet while the
// lock is held, then gets it after the holder releases — stamped after the
// release.
void release_and_expect_handoff(lock_agent &holder, lock_mode held, lock_agent &waiter) {
  EXPECT_TRUE(waiter.silent_for(kQuietWindow))
      << "the libipl waiter answered while fasteners still held the lock";
  ASSERT_EQ(holder.release(held), IPL_OK);
  const int64_t released_at = holder.stamp_ns();
  ASSERT_EQ(waiter.reply(), IPL_OK);
  EXPECT_GT(waiter.stamp_ns(), released_at) << "libipl got the lock before fasteners let go";
}

// libipl waits (timed or forever) while fasteners holds the exclusive lock:
// it must get the lock, and only after fasteners let go.
void libipl_wait_gets_lock_after_fasteners_release(int64_t libipl_timeout_ms) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::exclusive));
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::exclusive, libipl_timeout_ms), kWaiting);
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, lock_mode::exclusive, waiter));
  // The waiter really holds it now: fasteners cannot take it.
  EXPECT_EQ(py.acquire(lock_mode::exclusive, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(py.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
}

// Catches a timed wait that misses the release (returns IPL_E_TIMEOUT) or
// returns IPL_OK without the lock.
TEST(InteropFastenersHolds, LibiplTimedWaitGetsLockAfterRelease) {
  libipl_wait_gets_lock_after_fasteners_release(5000);
}

// Catches a forever wait that never wakes for a fasteners release (fails at
// kBound), or returns IPL_OK without the lock.
TEST(InteropFastenersHolds, LibiplForeverWaitGetsLockAfterRelease) {
  libipl_wait_gets_lock_after_fasteners_release(IPL_WAIT_FOREVER);
}

// ---- Reader-writer -------------------------------------------------------

// Catches a libipl read lock taken as a write lock (it would be refused).
TEST(InteropSharedLocks, FastenersReadThenLibiplReadCoexist) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::shared));
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(mine.lock), IPL_OK);
}

// Catches a libipl read lock taken as a write lock (fasteners would be refused).
TEST(InteropSharedLocks, LibiplReadThenFastenersReadCoexist) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  EXPECT_EQ(py.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(py.release(lock_mode::shared), IPL_OK);
}

// Catches a libipl write lock that is really shared, or that does not see
// fasteners' read lock; and a write wait that never wakes.
TEST(InteropSharedLocks, FastenersReadBlocksLibiplWrite) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::shared));
  {
    open_lock mine(path);
    ASSERT_EQ(mine.status, IPL_OK);
    EXPECT_EQ(ipl_acquire_write(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
  }
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::write, IPL_WAIT_FOREVER), kWaiting);
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, lock_mode::shared, waiter));
  // The waiter really holds a write lock now: fasteners cannot even read.
  EXPECT_EQ(py.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
}

// Catches a libipl read lock that is no lock at all (or flock(2)), and a
// release_read that does not unlock.
TEST(InteropSharedLocks, LibiplReadBlocksFastenersWrite) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  EXPECT_EQ(py.acquire(lock_mode::write, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(py.acquire(lock_mode::exclusive, 0), IPL_E_TIMEOUT);
  ASSERT_EQ(py.wait(lock_mode::write, IPL_WAIT_FOREVER), kWaiting);
  const int64_t released_at = lock_agent::clock_ns();
  ASSERT_EQ(ipl_release_read(mine.lock), IPL_OK);
  ASSERT_EQ(py.reply(), IPL_OK);
  EXPECT_GT(py.stamp_ns(), released_at);
}

// Catches a libipl read that does not see fasteners' write lock, and a read
// wait that never wakes.
TEST(InteropSharedLocks, FastenersWriteBlocksLibiplRead) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::write));
  {
    open_lock mine(path);
    ASSERT_EQ(mine.status, IPL_OK);
    EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_E_TIMEOUT);
  }
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::shared, IPL_WAIT_FOREVER), kWaiting);
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, lock_mode::write, waiter));
  // A shared holder still lets fasteners read, and still keeps its writer out.
  EXPECT_EQ(py.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(py.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(py.acquire(lock_mode::write, 0), IPL_E_TIMEOUT);
}

// ---- fasteners waits for libipl --------------------------------------------

// Catches a libipl lock fasteners does not see (its first try would succeed,
// no "waiting"), and a release that does not unlock (no IPL_OK in kBound).
TEST(InteropFastenersWaits, BlockingAcquireGetsLockOnlyAfterLibiplReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  struct fasteners_wait {
    lock_mode mode;
    int64_t timeout_ms;
  };
  const fasteners_wait waits[] = {{lock_mode::exclusive, IPL_WAIT_FOREVER},
                                  {lock_mode::write, IPL_WAIT_FOREVER},
                                  {lock_mode::shared, IPL_WAIT_FOREVER},
                                  {lock_mode::exclusive, 10000}};
  for (const fasteners_wait &wait : waits) {
    SCOPED_TRACE(std::string("wait ") + mode_name(wait.mode) + " " +
                 std::to_string(wait.timeout_ms));
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_EQ(py.wait(wait.mode, wait.timeout_ms), kWaiting);
    const int64_t released_at = lock_agent::clock_ns();
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
    ASSERT_EQ(py.reply(), IPL_OK);
    EXPECT_GT(py.stamp_ns(), released_at);
    ASSERT_EQ(py.release(wait.mode), IPL_OK);
  }
}

// ---- Crashes ------------------------------------------------------------

// Catches a lock that outlives its holder (e.g. state cached in libipl, or a
// lock-file scheme): the kernel drops a SIGKILLed fasteners process's lock.
TEST(InteropCrash, KilledFastenersHolderFreesLockForLibipl) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(held));
    lock_agent py = fasteners_peer(path);
    ASSERT_TRUE(py.hold(held));
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
    ASSERT_EQ(py.kill_and_reap(), -1000 - SIGKILL);
    // The kernel closes a process's files before its parent can reap it.
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  }
}

// Catches a forever wait that is not woken when the holder dies.
TEST(InteropCrash, KilledFastenersHolderWakesLibiplWaiter) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.hold(lock_mode::write));
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::exclusive, IPL_WAIT_FOREVER), kWaiting);
  EXPECT_TRUE(waiter.silent_for(kQuietWindow))
      << "the libipl waiter answered while fasteners still held the lock";
  ASSERT_EQ(py.kill_and_reap(), -1000 - SIGKILL);
  ASSERT_EQ(waiter.reply(), IPL_OK);
  // The waiter really holds it: a new fasteners process cannot take it.
  lock_agent another_py = fasteners_peer(path);
  ASSERT_TRUE(another_py.started());
  EXPECT_EQ(another_py.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
}

// Catches a libipl lock that outlives its SIGKILLed holder process.
TEST(InteropCrash, KilledLibiplHolderFreesLockForFasteners) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started());
  ASSERT_EQ(py.acquire(lock_mode::exclusive, 0), IPL_E_TIMEOUT);
  ASSERT_EQ(holder.kill_and_reap(), -1000 - SIGKILL);
  EXPECT_EQ(py.acquire(lock_mode::exclusive, 0), IPL_OK);
}

}  // namespace

// SPDX-License-Identifier: MIT
// FuseWait* tests: libipl's waits on a file system whose blocking lock call a
// signal cannot end. lockfs (tests/fuse/lockfs.c) grants locks itself and
// ignores FUSE_INTERRUPT, as a FUSE daemon may, and as NFS or CIFS can block:
// a thread in F_OFD_SETLKW there stays in the kernel until the holder lets
// go, whatever signal it gets. A timed wait that relies on a signal at its
// deadline would end only when the holder releases (issue 10, case 2): on
// such a file system libipl's timed waits must poll.
//
// The holder is another process (lock_agent) with its own handle on the
// mount. Every wait is bounded; a holder that would keep a broken waiter
// blocked releases after kHoldMs, so a regression fails instead of hanging.
#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <fstream>
#include <string>
#include <thread>

#include "test_support.hpp"
#include "test_support_fuse.hpp"

namespace {

using namespace std::chrono_literals;
using ipltest::fuse_mount;
using ipltest::kBound;
using ipltest::lock_agent;
using ipltest::lock_mode;
using ipltest::lockfs_locks;
using ipltest::open_owned_lock;
using ipltest::owned_lock;
using ipltest::status_text;
using steady = std::chrono::steady_clock;

// How long a holder keeps the lock before letting a (broken) blocked waiter go.
constexpr int64_t kHoldMs = 3000;

class fuse_wait_test : public testing::TestWithParam<lock_mode> {};

using handle = owned_lock;

// Lets the holder go after kHoldMs, on a thread of its own: a broken waiter
// blocked in the kernel is then released (and fails its checks) instead of
// hanging the test. The holder is not touched by the test thread meanwhile.
class release_later {
 public:
  explicit release_later(lock_agent &holder)
      : thread_([&holder] {
          std::this_thread::sleep_for(std::chrono::milliseconds(kHoldMs));
          holder.release(lock_mode::exclusive);
        }) {}
  ~release_later() { thread_.join(); }

 private:
  std::thread thread_;
};

// Signals queued for the real user of this process (the first number of
// "SigQ:" in /proc/self/status); -1 if unreadable.
long queued_signals() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.compare(0, 4, "SigQ") == 0) return std::stol(line.substr(line.find_first_of("0123456789")));
  }
  return -1;
}

// Catches: a timed wait that blocks in the kernel on a file system where the
// deadline's signal cannot end the call (it returns IPL_OK when the holder
// lets go, kHoldMs later, or hangs).
TEST_P(fuse_wait_test, TimedWaitEndsOnTimeWhereSignalsCannotInterrupt) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::uninterruptible);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  const release_later safety(holder);
  for (const int64_t timeout_ms : {50, 200}) {
    const auto start = steady::now();
    const int status = ipltest::acquire_in_mode(lock.get(), GetParam(), timeout_ms);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
    EXPECT_EQ(status, IPL_E_TIMEOUT) << status_text(status);
    EXPECT_GE(waited.count(), timeout_ms);
    EXPECT_LT(waited.count(), timeout_ms + 900) << "the wait overran its deadline";
  }
}

// Catches: a timed waiter on such a file system that misses the release
// (polling that stops, or a wait left blocked) — it must get the lock soon
// after the holder lets go, well within its timeout.
TEST_P(fuse_wait_test, TimedWaitGetsTheLockSoonAfterTheRelease) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::uninterruptible);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  std::thread releaser([&] {
    std::this_thread::sleep_for(300ms);
    holder.release(lock_mode::exclusive);
  });
  const auto start = steady::now();
  const int status = ipltest::acquire_in_mode(lock.get(), GetParam(), 10000);
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
  releaser.join();
  EXPECT_EQ(status, IPL_OK) << status_text(status);
  EXPECT_GE(waited.count(), 250);
  EXPECT_LT(waited.count(), 2000) << "the release was seen late";
  EXPECT_EQ(ipltest::try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the waiter's lock is not real";
}

// Catches: a waiter that keeps sending itself signals while it cannot be
// woken (a re-sent real-time signal queues each time, filling the user's
// RLIMIT_SIGPENDING): a libipl waiter on such a file system queues none.
TEST_P(fuse_wait_test, LongTimedWaitQueuesNoSignals) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::uninterruptible);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  const long before = queued_signals();
  ASSERT_GE(before, 0);
  const release_later safety(holder);
  long most = before;
  std::atomic<bool> waiting{true};
  std::thread sampler([&] {
    while (waiting.load()) {
      most = std::max(most, queued_signals());
      std::this_thread::sleep_for(20ms);
    }
  });
  const int status = ipltest::acquire_in_mode(lock.get(), GetParam(), 1500);
  waiting.store(false);
  sampler.join();
  EXPECT_EQ(status, IPL_E_TIMEOUT) << status_text(status);
  // SigQ counts the whole user's queued signals, and other processes of the
  // user (Wine, a debugger) queue some now and then; a waiter that re-sends
  // its signal every millisecond queues ~1500 in this wait.
  EXPECT_LE(most - before, 10) << "signals queued while waiting: " << most - before;
}

// Catches: forever waits broken by the change (they must still wait, and
// get the lock when the holder lets go).
TEST_P(fuse_wait_test, ForeverWaitGetsTheLockWhenReleased) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::uninterruptible);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  waiter.start_acquire(GetParam(), IPL_WAIT_FOREVER);
  EXPECT_TRUE(waiter.silent_for(300ms)) << "the forever wait returned while the lock was held";
  EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(waiter.reply(), IPL_OK);
  EXPECT_EQ(ipltest::try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(waiter.release(GetParam()), IPL_OK);
}

// Catches: a file system that refuses locks (ENOLCK: NFS without a lock
// daemon, a FUSE daemon without lock support that says so) reported as a
// generic OS error at every acquire, or worse as a lock "taken": ipl_open
// asks such a file system (not known to be local) and says
// IPL_E_UNSUPPORTED with the errno.
TEST(FuseUnsupported, OpenOnAFileSystemThatRefusesLocksIsUnsupported) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::refuse);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  ipl_lock *raw = nullptr;
  int os_error = 0;
  const int status = ipl_open_ex(path.c_str(), 0, &raw, &os_error);
  ipl_close(raw);
  EXPECT_EQ(status, IPL_E_UNSUPPORTED) << status_text(status);
  EXPECT_EQ(os_error, ENOLCK);
  EXPECT_EQ(raw, nullptr);
}

// Pins the documented limit: a FUSE file system without lock operations
// leaves locks to this host's kernel. They work between processes here
// (and would not across hosts); nothing tells libipl, so it cannot refuse.
TEST(FuseUnsupported, FileSystemWithoutLockOperationsLocksOnThisHostOnly) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::none);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("a.lock");
  handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(ipl_acquire(lock.get(), 0), IPL_OK);
  EXPECT_EQ(ipltest::try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(lock.get()), IPL_OK);
}

INSTANTIATE_TEST_SUITE_P(FuseWait, fuse_wait_test,
                         testing::Values(lock_mode::exclusive, lock_mode::shared),
                         [](const testing::TestParamInfo<lock_mode> &info) {
                           return std::string(ipltest::mode_name(info.param));
                         });

}  // namespace

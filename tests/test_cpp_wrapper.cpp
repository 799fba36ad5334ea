// SPDX-License-Identifier: MIT
// Tests of the C++ wrapper (include/ipl/ipl.hpp): error reporting, the
// standard lock requirements, timeout conversion, move semantics, the
// decorators, and exclusion of another process.
//
// ipl.hpp comes first so this file also proves the header compiles alone.
#include <ipl/ipl.hpp>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#ifdef _WIN32
#include <fcntl.h>
#include <io.h>
#else
#include <sys/wait.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using ipltest::child_process;
using ipltest::kBound;
using ipltest::temp_dir;
using steady = std::chrono::steady_clock;

// The lock types must be move-only with non-throwing moves and destructors,
// or they cannot live in containers and RAII guards safely.
static_assert(!std::is_copy_constructible_v<ipl::process_lock>);
static_assert(!std::is_copy_assignable_v<ipl::process_lock>);
static_assert(std::is_nothrow_move_constructible_v<ipl::process_lock>);
static_assert(std::is_nothrow_move_assignable_v<ipl::process_lock>);
static_assert(std::is_nothrow_destructible_v<ipl::process_lock>);
static_assert(!std::is_copy_constructible_v<ipl::shared_process_lock>);
static_assert(!std::is_copy_assignable_v<ipl::shared_process_lock>);
static_assert(std::is_nothrow_move_constructible_v<ipl::shared_process_lock>);
static_assert(std::is_nothrow_move_assignable_v<ipl::shared_process_lock>);
static_assert(std::is_nothrow_destructible_v<ipl::shared_process_lock>);
static_assert(std::is_base_of_v<std::exception, ipl::error>);

// ---- Probes through the C API, so a wrapper bug cannot hide itself --------

// Tries once to take the lock on `path` with a fresh C handle and lets it go
// at once. IPL_OK: it was free; IPL_E_TIMEOUT: held elsewhere.
int probe(const std::string &path, bool shared) {
  ipl_lock *handle = nullptr;
  int status = ipl_open(path.c_str(), 0, &handle);
  if (status != IPL_OK) return status;
  status = shared ? ipl_acquire_read(handle, 0) : ipl_acquire(handle, 0);
  ipl_close(handle);
  return status;
}
int probe_exclusive(const std::string &path) { return probe(path, false); }
int probe_shared(const std::string &path) { return probe(path, true); }

// Before a call that blocks (lock(), a decorated call) on a lock the test
// believes free: if an earlier step leaked it, fail instead of hanging.
#define ASSERT_FREE(path) \
  ASSERT_EQ(IPL_OK, probe_exclusive(path)) << "still held: a blocking call would hang"

// Runs `action` and checks it throws ipl::error with `expected` status.
template <class Action>
testing::AssertionResult throws_status(int expected, Action action) {
  try {
    action();
  } catch (const ipl::error &e) {
    if (e.status() == expected) return testing::AssertionSuccess();
    return testing::AssertionFailure()
           << "threw status " << e.status() << " (" << e.what()
           << "), expected " << expected << " (" << ipl_strerror(expected) << ")";
  } catch (const std::exception &e) {
    return testing::AssertionFailure() << "threw a non-ipl exception: " << e.what();
  }
  return testing::AssertionFailure()
         << "did not throw, expected status " << expected;
}

// A clock unlike the standard ones (another epoch, possibly negative
// readings, microsecond ticks), for try_lock_until's "any clock".
struct shifted_clock {
  using rep = int64_t;
  using period = std::micro;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<shifted_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static time_point now() {
    return time_point(
        std::chrono::duration_cast<duration>(steady::now().time_since_epoch()) -
        std::chrono::hours(100000));
  }
};

// ---- Helper processes ------------------------------------------------------

// "The lock held (or waited for) in another process" is the shared
// ipltest::lock_agent (test_support.hpp) throughout this file.

// Says "trying", makes the timed call named args[1] on the lock file
// args[0], then says "true", "false" or "error <status>".
IPL_TEST_HELPER(wrapper_timed_try) {
  using namespace std::chrono;
  const std::string &kind = args.at(1);
  ipl::shared_process_lock lock(args.at(0));
  ipltest::helper_say("trying");
  bool got = false;
  try {
    if (kind == "for_hours_max") {
      got = lock.try_lock_for(hours::max());
    } else if (kind == "for_nanoseconds_max") {
      got = lock.try_lock_for(nanoseconds::max());
    } else if (kind == "for_double_infinity") {
      got = lock.try_lock_for(
          duration<double>(std::numeric_limits<double>::infinity()));
    } else if (kind == "until_steady_max") {
      got = lock.try_lock_until(steady_clock::time_point::max());
    } else if (kind == "until_system_hours_max") {
      got = lock.try_lock_until(time_point<system_clock, hours>::max());
    } else if (kind == "shared_for_hours_max") {
      got = lock.try_lock_shared_for(hours::max());
    } else if (kind == "for_zero") {
      got = lock.try_lock_for(milliseconds(0));
    } else if (kind == "for_minus_5s") {
      got = lock.try_lock_for(seconds(-5));
    } else if (kind == "until_steady_1s_ago") {
      got = lock.try_lock_until(steady_clock::now() - seconds(1));
    } else if (kind == "for_minus_1ms") {
      got = lock.try_lock_for(milliseconds(-1));
    } else if (kind == "for_nan") {
      got = lock.try_lock_for(
          duration<double, std::milli>(std::numeric_limits<double>::quiet_NaN()));
    } else if (kind == "until_system_1ms_ago") {
      got = lock.try_lock_until(system_clock::now() - milliseconds(1));
    } else if (kind == "until_steady_min") {
      got = lock.try_lock_until(steady_clock::time_point::min());
    } else if (kind == "shared_for_minus_1ms") {
      got = lock.try_lock_shared_for(milliseconds(-1));
    } else {
      ipltest::helper_say("unknown kind");
      return 2;
    }
  } catch (const ipl::error &e) {
    ipltest::helper_say("error " + std::to_string(e.status()));
    return 0;
  }
  ipltest::helper_say(got ? "true" : "false");
  return 0;
}

// Two threads call one decorated callable (mode args[1]: exclusive, write or
// read, on lock file args[0]) and the helper reports, one "key value" line
// each: errors, first_error, and for exclusive/write done, most_inside and
// overlap_tried, for read met; then "end".
constexpr int kCallsPerThread = 200;

IPL_TEST_HELPER(wrapper_decorator_threads) {
  const std::string &path = args.at(0);
  const std::string &mode = args.at(1);
  const auto bound = kBound / 4;

  std::mutex state_mutex;
  std::condition_variable state_changed;
  int inside = 0;
  int most_inside = 0;
  int done = 0;
  bool first_inside = false;     // thread one is inside its holding call
  bool second_calling = false;   // thread two is about to call
  int readers_met = 0;

  // hold_for_overlap: stay inside until the other thread is calling, and a
  // little longer, so that its call overlaps this one.
  auto exclusive_body = [&](bool hold_for_overlap) {
    std::unique_lock<std::mutex> guard(state_mutex);
    most_inside = std::max(most_inside, ++inside);
    if (hold_for_overlap) {
      first_inside = true;
      state_changed.notify_all();
      state_changed.wait_for(guard, bound, [&] { return second_calling; });
      guard.unlock();
      // Not a handshake: the other call is correct whether or not it has
      // reached the lock yet; this pause makes the overlap the likely case.
      std::this_thread::sleep_for(100ms);
      guard.lock();
    } else {
      guard.unlock();
      std::this_thread::yield();
      guard.lock();
    }
    --inside;
    ++done;
  };
  auto read_body = [&](bool) {
    std::unique_lock<std::mutex> guard(state_mutex);
    ++inside;
    state_changed.notify_all();
    if (state_changed.wait_for(guard, bound, [&] { return inside >= 2; }))
      ++readers_met;
  };

  std::vector<std::string> errors;
  auto call = [&](auto &callable, bool hold_for_overlap) {
    try {
      callable(hold_for_overlap);
    } catch (const std::exception &e) {
      std::lock_guard<std::mutex> guard(state_mutex);
      errors.push_back(e.what());
    }
  };
  // Exclusive forms: thread one's first call stays inside until thread two
  // is calling; then both make kCallsPerThread more calls.
  auto run_exclusive = [&](auto callable) {
    std::thread first([&] {
      call(callable, true);
      for (int i = 0; i < kCallsPerThread; ++i) call(callable, false);
    });
    std::thread second([&] {
      {
        std::unique_lock<std::mutex> guard(state_mutex);
        state_changed.wait_for(guard, bound, [&] { return first_inside; });
        second_calling = true;
        state_changed.notify_all();
      }
      for (int i = 0; i < kCallsPerThread; ++i) call(callable, false);
    });
    first.join();
    second.join();
  };
  // Read form: one call per thread, each waiting inside for the other.
  auto run_read = [&](auto callable) {
    std::thread first([&] { call(callable, false); });
    std::thread second([&] { call(callable, false); });
    first.join();
    second.join();
  };

  if (mode == "exclusive")
    run_exclusive(ipl::interprocess_locked(path, exclusive_body));
  else if (mode == "write")
    run_exclusive(ipl::interprocess_write_locked(path, exclusive_body));
  else
    run_read(ipl::interprocess_read_locked(path, read_body));

  ipltest::helper_say("errors " + std::to_string(errors.size()));
  if (!errors.empty()) ipltest::helper_say("first_error " + errors.front());
  if (mode == "read") {
    ipltest::helper_say("met " + std::to_string(readers_met));
  } else {
    ipltest::helper_say("done " + std::to_string(done));
    ipltest::helper_say("most_inside " + std::to_string(most_inside));
    ipltest::helper_say(std::string("overlap_tried ") + (second_calling ? "1" : "0"));
  }
  ipltest::helper_say("end");
  return 0;
}

// ---- ipl::error --------------------------------------------------------------

// Catches: what() not taken from ipl_strerror, status or OS error dropped,
// opening through ipl_open (which loses the errno) instead of ipl_open_ex.
TEST(WrapperError, CarriesStatusOsErrorAndText) {
  const ipl::error plain(IPL_E_NOT_HELD);
  EXPECT_EQ(IPL_E_NOT_HELD, plain.status());
  EXPECT_EQ(0, plain.os_error());
  EXPECT_STREQ(ipl_strerror(IPL_E_NOT_HELD), plain.what());

  temp_dir dir;
  try {
    ipl::process_lock missing(dir.path("missing"), IPL_OPEN_NO_CREATE);
    ADD_FAILURE() << "opening a missing file with IPL_OPEN_NO_CREATE succeeded";
  } catch (const ipl::error &e) {
    EXPECT_EQ(IPL_E_OS, e.status());
    EXPECT_EQ(ENOENT, e.os_error());
    const std::string text = e.what();
    EXPECT_EQ(0u, text.find(ipl_strerror(IPL_E_OS))) << text;
    EXPECT_NE(std::string::npos, text.find(std::to_string(ENOENT))) << text;
  }
}

// ---- Opening -------------------------------------------------------------

// Catches: open errors swallowed or mis-mapped; a std::string with a NUL
// inside silently locking the shorter path.
TEST(WrapperOpen, BadPathsThrowTheirStatus) {
  temp_dir dir;
  EXPECT_TRUE(throws_status(IPL_E_NOT_REGULAR_FILE,
                            [&] { ipl::process_lock lock(dir.root()); }));
  EXPECT_TRUE(throws_status(IPL_E_NOT_REGULAR_FILE,
                            [&] { ipl::process_lock lock(dir.root().c_str()); }));
  EXPECT_TRUE(throws_status(IPL_E_NOT_REGULAR_FILE,
                            [&] { ipl::shared_process_lock lock(dir.root()); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock lock(""); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] {
    ipl::process_lock lock(static_cast<const char *>(nullptr));
  }));

  const std::string with_nul = dir.path("a") + std::string(1, '\0') + "b";
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { ipl::process_lock lock(with_nul); }));
  struct stat info {};
  EXPECT_NE(0, stat(dir.path("a").c_str(), &info)) << "the truncated path was created";

  // Flags reach ipl_open: without IPL_OPEN_NO_CREATE_DIRS this would succeed.
  EXPECT_TRUE(throws_status(IPL_E_BAD_PARENT, [&] {
    ipl::process_lock lock(dir.path("sub/lock"), IPL_OPEN_NO_CREATE_DIRS);
  }));
}

// ---- Lock, try_lock, unlock ----------------------------------------------------

// Catches: try_lock throwing on a conflict (or returning false on misuse),
// lock() silently succeeding on a handle that already holds the lock.
TEST(WrapperLock, TryLockIsFalseOnConflictAndRelockThrowsWouldDeadlock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock first(path);
  ipl::process_lock second(path);

  ASSERT_TRUE(first.try_lock());
  EXPECT_FALSE(second.try_lock());
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { first.try_lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { first.lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { first.try_lock_for(10ms); }));
  try {
    first.try_lock();
  } catch (const ipl::error &e) {
    EXPECT_EQ(0, e.os_error()) << "a libipl rule is not an OS error";
  }

  first.unlock();
  EXPECT_TRUE(second.try_lock());
  EXPECT_FALSE(first.try_lock());
  second.unlock();
  ASSERT_FREE(path);
  first.lock();
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
  first.unlock();
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
}

// Catches: unlock ignoring the status, or calling the wrong C release (a
// shared release for unlock(), an exclusive one for unlock_shared()).
TEST(WrapperLock, UnlockWhenNotHeldThrowsNotHeldAndKeepsTheOtherMode) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock exclusive(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { exclusive.unlock(); }));
  exclusive.lock();
  exclusive.unlock();
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { exclusive.unlock(); }));

  ipl::shared_process_lock rw(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock(); }));
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock_shared(); }));

  ASSERT_FREE(path);
  rw.lock();
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock_shared(); }));
  EXPECT_EQ(IPL_E_TIMEOUT, probe_shared(path)) << "the exclusive lock was dropped";
  rw.unlock();
  ASSERT_FREE(path);

  rw.lock_shared();
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock(); }));
  EXPECT_EQ(IPL_OK, probe_shared(path));
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path)) << "the shared lock was dropped";
  rw.unlock_shared();
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
}

// Catches: shared calls mapped to the exclusive C calls (or the reverse), a
// silent upgrade from shared to exclusive.
TEST(WrapperLock, SharedAndExclusiveModesConflictAsDocumented) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock reader1(path);
  ipl::shared_process_lock reader2(path);
  ipl::shared_process_lock writer(path);

  reader1.lock_shared();
  EXPECT_TRUE(reader2.try_lock_shared());
  EXPECT_FALSE(writer.try_lock());
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { reader1.try_lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { reader1.lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { reader1.try_lock_shared(); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { reader1.lock_shared(); }));
  reader1.unlock_shared();
  reader2.unlock_shared();

  ASSERT_FREE(path);
  writer.lock();
  EXPECT_FALSE(reader1.try_lock_shared());
  EXPECT_FALSE(reader2.try_lock());
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { writer.try_lock_shared(); }));
  writer.unlock();
  EXPECT_TRUE(reader1.try_lock_shared());
  reader1.unlock_shared();
}

// Catches: native_handle() returning something other than the object's own
// C handle; close() not releasing, or not idempotent; an empty object
// touching a stale handle instead of reporting IPL_E_INVALID.
TEST(WrapperLock, NativeHandleCloseAndEmptyObjects) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);
  ASSERT_TRUE(lock.is_open());
  ASSERT_TRUE(static_cast<bool>(lock));
  ASSERT_NE(nullptr, lock.native_handle());

  ASSERT_EQ(IPL_OK, ipl_acquire(lock.native_handle(), 0));
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
  lock.unlock();  // succeeds only when it is the same handle
  ASSERT_FREE(path);

  lock.lock();
  lock.close();
  EXPECT_EQ(IPL_OK, probe_exclusive(path)) << "close() did not release";
  EXPECT_FALSE(lock.is_open());
  EXPECT_FALSE(static_cast<bool>(lock));
  EXPECT_EQ(nullptr, lock.native_handle());
  lock.close();  // idempotent
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { lock.try_lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { lock.lock(); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { lock.unlock(); }));

  ipl::shared_process_lock empty;
  EXPECT_FALSE(empty.is_open());
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { empty.try_lock_shared(); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { empty.try_lock_shared_for(1ms); }));
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { empty.unlock_shared(); }));
}

// ---- The standard lock tools ---------------------------------------------------

// Catches: a lock()/unlock()/try_lock()/try_lock_for() that std::unique_lock
// cannot drive, or that does not lock and release the file.
TEST(WrapperStd, UniqueLockLocksAndReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);
  {
    std::unique_lock<ipl::process_lock> held(lock);
    EXPECT_TRUE(held.owns_lock());
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
    held.unlock();
    ASSERT_FREE(path);
    held.lock();
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
  }
  ASSERT_FREE(path) << " (unique_lock's destructor did not release)";

  ipl::process_lock other(path);
  std::unique_lock<ipl::process_lock> other_held(other);
  {
    std::unique_lock<ipl::process_lock> tried(lock, std::try_to_lock);
    EXPECT_FALSE(tried.owns_lock());
    std::unique_lock<ipl::process_lock> timed(lock, 50ms);
    EXPECT_FALSE(timed.owns_lock());
  }
  other_held.unlock();
  std::unique_lock<ipl::process_lock> timed(lock, 5s);
  EXPECT_TRUE(timed.owns_lock());
}

// Catches: process_lock not usable by std::scoped_lock / std::lock (which
// mix lock, try_lock and unlock), or one of the two files left unlocked.
TEST(WrapperStd, ScopedLockTakesTwoFiles) {
  temp_dir dir;
  const std::string path_a = dir.path("a.lock");
  const std::string path_b = dir.path("b.lock");
  ipl::process_lock a(path_a);
  ipl::process_lock b(path_b);
  {
    std::scoped_lock both(a, b);
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path_a));
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path_b));
  }
  ASSERT_FREE(path_a);
  ASSERT_FREE(path_b);
  {
    std::scoped_lock both(b, a);  // the other order works as well
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path_a));
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path_b));
  }
  EXPECT_EQ(IPL_OK, probe_exclusive(path_a));
  EXPECT_EQ(IPL_OK, probe_exclusive(path_b));
}

// Catches: shared_process_lock not meeting SharedTimedLockable, shared locks
// that exclude each other, or exclusive and shared that do not.
TEST(WrapperStd, SharedLockAndUniqueLockOnSharedProcessLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock reader1(path);
  ipl::shared_process_lock reader2(path);
  ipl::shared_process_lock writer(path);
  {
    std::shared_lock<ipl::shared_process_lock> read1(reader1);
    std::shared_lock<ipl::shared_process_lock> read2(reader2, std::try_to_lock);
    EXPECT_TRUE(read1.owns_lock());
    EXPECT_TRUE(read2.owns_lock());
    EXPECT_EQ(IPL_OK, probe_shared(path));
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
    std::unique_lock<ipl::shared_process_lock> write(writer, std::try_to_lock);
    EXPECT_FALSE(write.owns_lock());
  }
  ASSERT_FREE(path) << " (shared_lock did not release)";
  {
    std::unique_lock<ipl::shared_process_lock> write(writer);
    EXPECT_EQ(IPL_E_TIMEOUT, probe_shared(path));
    std::shared_lock<ipl::shared_process_lock> tried(reader1, std::try_to_lock);
    EXPECT_FALSE(tried.owns_lock());
    const auto start = steady::now();
    std::shared_lock<ipl::shared_process_lock> timed(reader1, 100ms);
    const auto elapsed = steady::now() - start;
    EXPECT_FALSE(timed.owns_lock());
    EXPECT_GE(elapsed, 100ms);
    EXPECT_LT(elapsed, kBound);
  }
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
  std::shared_lock<ipl::shared_process_lock> read(reader1, steady::now() + 5s);
  EXPECT_TRUE(read.owns_lock());
}

// ---- Timeouts ----------------------------------------------------------------

// Catches: truncating instead of rounding up (1ns -> 0 = try once), an
// overflow on huge durations (hours::max() wrapping negative, possibly to
// IPL_WAIT_FOREVER), a NaN or a negative duration reaching the C API.
TEST(WrapperTimeout, DurationConversionRoundsUpAndSaturates) {
  using namespace std::chrono;
  using ipl::wrapper_detail::timeout_ms_for;
  const int64_t cap = ipl::max_wait.count();
  EXPECT_EQ(int64_t(100) * 365 * 24 * 3600 * 1000, cap);

  EXPECT_EQ(0, timeout_ms_for(0ms));
  EXPECT_EQ(0, timeout_ms_for(-1ms));
  EXPECT_EQ(0, timeout_ms_for(hours::min()));
  EXPECT_EQ(0, timeout_ms_for(duration<double>(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_EQ(0, timeout_ms_for(duration<double>(-std::numeric_limits<double>::infinity())));

  EXPECT_EQ(1, timeout_ms_for(1ns));
  EXPECT_EQ(1, timeout_ms_for(1ms));
  EXPECT_EQ(2, timeout_ms_for(1001us));
  EXPECT_EQ(1500, timeout_ms_for(1500ms));
  EXPECT_EQ(3000, timeout_ms_for(3s));
  EXPECT_EQ(121, timeout_ms_for(duration<double>(0.1201)));
  EXPECT_EQ(1, timeout_ms_for(duration<double, std::milli>(0.25)));
  EXPECT_EQ(1, timeout_ms_for(duration<int64_t, std::atto>(1)));
  EXPECT_EQ(7 * 24 * 3600 * 1000LL, timeout_ms_for(duration<int, std::ratio<604800>>(1)));

  EXPECT_EQ(cap - 1, timeout_ms_for(ipl::max_wait - 1ms));
  EXPECT_EQ(cap, timeout_ms_for(ipl::max_wait));
  EXPECT_EQ(cap, timeout_ms_for(ipl::max_wait + 1ns));
  EXPECT_EQ(cap, timeout_ms_for(nanoseconds::max()));
  EXPECT_EQ(cap, timeout_ms_for(milliseconds::max()));
  EXPECT_EQ(cap, timeout_ms_for(hours::max()));
  EXPECT_EQ(cap, timeout_ms_for(duration<double>(std::numeric_limits<double>::infinity())));
  EXPECT_EQ(cap, timeout_ms_for(duration<double>(1e300)));
}

// Catches: deadlines in the past or at time_point::min() becoming a wait,
// far deadlines (time_point::max() of a coarse clock) overflowing the
// subtraction, a remaining time rounded down.
TEST(WrapperTimeout, DeadlineConversionUsesTheRemainingTime) {
  using namespace std::chrono;
  using ipl::wrapper_detail::timeout_ms_until;
  const int64_t cap = ipl::max_wait.count();

  EXPECT_EQ(0, timeout_ms_until(steady_clock::now() - 1s));
  EXPECT_EQ(0, timeout_ms_until(steady_clock::time_point::min()));
  EXPECT_EQ(0, timeout_ms_until(system_clock::time_point::min()));
  EXPECT_EQ(0, timeout_ms_until(time_point<system_clock, hours>::min()));
  EXPECT_EQ(cap, timeout_ms_until(steady_clock::time_point::max()));
  EXPECT_EQ(cap, timeout_ms_until(system_clock::time_point::max()));
  EXPECT_EQ(cap, timeout_ms_until(time_point<system_clock, hours>::max()));
  EXPECT_EQ(cap, timeout_ms_until(shifted_clock::time_point::max()));

  // Computed right after the deadline was set: at most 10 s, and rounded up
  // so only a slow machine makes it shorter.
  const int64_t ten_seconds = timeout_ms_until(steady_clock::now() + 10s);
  EXPECT_LE(ten_seconds, 10000);
  EXPECT_GT(ten_seconds, 9000);
  const int64_t on_system = timeout_ms_until(system_clock::now() + 10s);
  EXPECT_LE(on_system, 10000);
  EXPECT_GT(on_system, 9000);
  const int64_t on_shifted = timeout_ms_until(shifted_clock::now() + 10s);
  EXPECT_LE(on_shifted, 10000);
  EXPECT_GT(on_shifted, 9000);
}

// Catches: try_lock_for passing 0 (or seconds, or a truncated value) to the
// C API so a timed try returns before the time asked for; the _shared and
// the exclusive member of shared_process_lock included.
TEST(WrapperTimeout, TryLockForWaitsAtLeastTheDuration) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock holder(path);
  holder.lock();

  ipl::process_lock waiter(path);
  auto start = steady::now();
  EXPECT_FALSE(waiter.try_lock_for(150ms));
  auto elapsed = steady::now() - start;
  EXPECT_GE(elapsed, 150ms);
  EXPECT_LT(elapsed, kBound);

  // 500 µs rounds up to 1 ms; truncation would try once and return at once.
  start = steady::now();
  EXPECT_FALSE(waiter.try_lock_for(500us));
  EXPECT_GE(steady::now() - start, 500us);

  start = steady::now();
  EXPECT_FALSE(waiter.try_lock_for(std::chrono::duration<double>(0.12)));
  elapsed = steady::now() - start;
  EXPECT_GE(elapsed, 120ms);
  EXPECT_LT(elapsed, kBound);

  ipl::shared_process_lock rw(path);
  start = steady::now();
  EXPECT_FALSE(rw.try_lock_shared_for(120ms));
  elapsed = steady::now() - start;
  EXPECT_GE(elapsed, 120ms);
  EXPECT_LT(elapsed, kBound);
  start = steady::now();
  EXPECT_FALSE(rw.try_lock_for(120ms));
  elapsed = steady::now() - start;
  EXPECT_GE(elapsed, 120ms);
  EXPECT_LT(elapsed, kBound);

  holder.unlock();
  start = steady::now();
  EXPECT_TRUE(waiter.try_lock_for(10s));
  EXPECT_LT(steady::now() - start, kBound);
  waiter.unlock();
  EXPECT_TRUE(rw.try_lock_shared_for(10s));
  rw.unlock_shared();
}

// Catches: a wait that is granted as soon as the holder lets go (not only
// at the end of the timeout) reported as a failure.
TEST(WrapperTimeout, TryLockForSucceedsWhenReleasedDuringTheWait) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock holder(path);
  holder.lock();
  ipl::process_lock waiter(path);

  std::atomic<bool> result{false};
  std::atomic<bool> finished{false};
  std::thread thread([&] {
    result = waiter.try_lock_for(kBound);
    finished = true;
  });
  // Releasing before or after the thread starts waiting gives the same
  // answer; this pause only makes the in-wait hand-off the likely path.
  std::this_thread::sleep_for(100ms);
  const auto released = steady::now();
  holder.unlock();
  thread.join();
  EXPECT_TRUE(finished);
  EXPECT_TRUE(result);
  EXPECT_LT(steady::now() - released, kBound / 2);
}

// Catches: try_lock_until returning before its deadline (on the steady, the
// system and a user-defined clock), or only accepting one clock.
TEST(WrapperTimeout, TryLockUntilReturnsNoEarlierThanTheDeadline) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock holder(path);
  holder.lock();
  ipl::process_lock waiter(path);
  ipl::shared_process_lock rw(path);

  const auto start = steady::now();
  const auto steady_deadline = steady::now() + 150ms;
  EXPECT_FALSE(waiter.try_lock_until(steady_deadline));
  EXPECT_GE(steady::now(), steady_deadline);

  const auto system_deadline = std::chrono::system_clock::now() + 150ms;
  EXPECT_FALSE(waiter.try_lock_until(system_deadline));
  EXPECT_GE(std::chrono::system_clock::now(), system_deadline);

  const auto shifted_deadline = shifted_clock::now() + 150ms;
  EXPECT_FALSE(waiter.try_lock_until(shifted_deadline));
  EXPECT_GE(shifted_clock::now(), shifted_deadline);

  const auto shared_deadline = steady::now() + 120ms;
  EXPECT_FALSE(rw.try_lock_shared_until(shared_deadline));
  EXPECT_GE(steady::now(), shared_deadline);
  const auto shared_system_deadline = std::chrono::system_clock::now() + 120ms;
  EXPECT_FALSE(rw.try_lock_shared_until(shared_system_deadline));
  EXPECT_GE(std::chrono::system_clock::now(), shared_system_deadline);
  const auto write_deadline = steady::now() + 120ms;
  EXPECT_FALSE(rw.try_lock_until(write_deadline));
  EXPECT_GE(steady::now(), write_deadline);
  EXPECT_LT(steady::now() - start, kBound);

  // A past deadline tries once (ExtremeTimeoutsEndToEnd checks the held
  // case): the lock is granted once free.
  holder.unlock();
  EXPECT_TRUE(waiter.try_lock_until(std::chrono::system_clock::now() - 1s));
  waiter.unlock();
  EXPECT_TRUE(rw.try_lock_shared_until(steady::now() + 5s));
  rw.unlock_shared();
}

// Catches, through a real helper process so a wrong mapping cannot hang the
// test: huge durations/deadlines turned into short waits or errors by an
// overflow, and negative, NaN or past ones turned into IPL_WAIT_FOREVER.
TEST(WrapperTimeout, ExtremeTimeoutsEndToEnd) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock holder(path);
  ASSERT_TRUE(holder.try_lock());

  for (const std::string kind :
       {"for_hours_max", "for_nanoseconds_max", "for_double_infinity",
        "until_steady_max", "until_system_hours_max", "shared_for_hours_max"}) {
    SCOPED_TRACE(kind);
    child_process child = child_process::helper("wrapper_timed_try", {path, kind});
    ASSERT_TRUE(child.expect_line("trying"));
    EXPECT_TRUE(child.silent_for(300ms)) << "a huge timeout ended early";
    holder.unlock();
    std::string got;
    EXPECT_TRUE(child.expect_line("true", kBound, &got)) << got;
    child.close_stdin();
    EXPECT_EQ(0, ipltest::describe_status(child.wait()));
    ASSERT_TRUE(holder.try_lock_for(kBound));
  }

  for (const std::string kind :
       {"for_zero", "for_minus_5s", "for_minus_1ms", "for_nan",
        "until_steady_1s_ago", "until_system_1ms_ago", "until_steady_min",
        "shared_for_minus_1ms"}) {
    SCOPED_TRACE(kind);
    child_process child = child_process::helper("wrapper_timed_try", {path, kind});
    ASSERT_TRUE(child.expect_line("trying"));
    std::string got;
    EXPECT_TRUE(child.expect_line("false", 5s, &got))
        << "expected an immediate false, got: " << got;
    EXPECT_EQ(0, ipltest::describe_status(child.wait()));
  }
}

// ---- Move semantics ----------------------------------------------------------

// Catches: a moved-from object that still closes the handle (releasing the
// new owner's lock, or a double close that ASan reports), a move that drops
// the lock, move assignment that leaks the target's old lock.
TEST(WrapperMove, MovedToHoldsMovedFromIsEmpty) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  const std::string other_path = dir.path("other.lock");

  std::optional<ipl::process_lock> source(std::in_place, path);
  source->lock();
  ipl_lock *const handle = source->native_handle();

  ipl::process_lock target(std::move(*source));
  EXPECT_FALSE(source->is_open());
  EXPECT_EQ(nullptr, source->native_handle());
  EXPECT_EQ(handle, target.native_handle());
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { source->try_lock(); }));
  source.reset();  // the moved-from destructor must do nothing
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path)) << "the moved-to object lost the lock";

  // Move assignment: the target's old lock is released, the new one kept.
  ipl::process_lock assigned(other_path);
  assigned.lock();
  assigned = std::move(target);
  EXPECT_EQ(IPL_OK, probe_exclusive(other_path)) << "assignment kept the old lock";
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
  EXPECT_FALSE(target.is_open());

  ipl::process_lock &alias = assigned;
  assigned = std::move(alias);  // self-move keeps the lock
  EXPECT_TRUE(assigned.is_open());
  EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));

  assigned.unlock();  // the handle is still valid and still the holder
  ASSERT_FREE(path);
  assigned.lock();
  {
    ipl::process_lock last(std::move(assigned));
  }
  EXPECT_EQ(IPL_OK, probe_exclusive(path)) << "the destructor did not release";
}

// Catches: the same faults for shared_process_lock, holding a shared lock.
TEST(WrapperMove, SharedProcessLockMovesAndReleasesOnDestruction) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  {
    ipl::shared_process_lock reader(path);
    reader.lock_shared();
    ipl::shared_process_lock moved;
    moved = std::move(reader);
    EXPECT_FALSE(reader.is_open());
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
    EXPECT_EQ(IPL_OK, probe_shared(path));
    {
      ipl::shared_process_lock gone(std::move(reader));  // empty from empty
      EXPECT_FALSE(gone.is_open());
    }
    EXPECT_EQ(IPL_E_TIMEOUT, probe_exclusive(path));
    moved.unlock_shared();
    ASSERT_FREE(path);
    moved.lock();
    EXPECT_EQ(IPL_E_TIMEOUT, probe_shared(path));
  }
  EXPECT_EQ(IPL_OK, probe_exclusive(path)) << "the destructor did not release";
}

// ---- Decorators ----------------------------------------------------------------

// Catches: a decorator that does not lock around the call, locks in the
// wrong mode, or keeps the lock after the call.
TEST(WrapperDecorator, ExclusiveHoldsTheLockDuringEachCall) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  int calls = 0;
  int exclusive_probe = IPL_OK;
  int shared_probe = IPL_OK;
  auto locked = ipl::interprocess_locked(path, [&](int number, const std::string &text) {
    ++calls;
    exclusive_probe = probe_exclusive(path);
    shared_probe = probe_shared(path);
    return text + std::to_string(number);
  });
  for (int round = 0; round < 2; ++round) {
    ASSERT_FREE(path);
    exclusive_probe = shared_probe = IPL_OK;
    EXPECT_EQ("n7", locked(7, "n"));
    EXPECT_EQ(IPL_E_TIMEOUT, exclusive_probe);
    EXPECT_EQ(IPL_E_TIMEOUT, shared_probe);
  }
  EXPECT_EQ(IPL_OK, probe_exclusive(path)) << "the lock outlived the call";
  EXPECT_EQ(2, calls);
  EXPECT_EQ(path, locked.path());
}

// Catches: read_locked taking the exclusive lock (a second reader would
// fail) or no lock at all (a writer would succeed).
TEST(WrapperDecorator, ReadLockedSharesWithReadersButExcludesWriters) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  int exclusive_probe = IPL_OK;
  int shared_probe = IPL_E_INVALID;
  auto locked = ipl::interprocess_read_locked(path, [&] {
    exclusive_probe = probe_exclusive(path);
    shared_probe = probe_shared(path);
    return 42;
  });
  EXPECT_EQ(42, locked());
  EXPECT_EQ(IPL_E_TIMEOUT, exclusive_probe);
  EXPECT_EQ(IPL_OK, shared_probe);
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
}

// Catches: write_locked taking only a shared lock, or none.
TEST(WrapperDecorator, WriteLockedExcludesReadersAndWriters) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  int exclusive_probe = IPL_OK;
  int shared_probe = IPL_OK;
  auto locked = ipl::interprocess_write_locked(path, [&] {
    exclusive_probe = probe_exclusive(path);
    shared_probe = probe_shared(path);
  });
  locked();
  EXPECT_EQ(IPL_E_TIMEOUT, exclusive_probe);
  EXPECT_EQ(IPL_E_TIMEOUT, shared_probe);
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
}

// Catches: arguments copied instead of forwarded (references not updated,
// move-only types rejected), returned references decayed to copies, state
// of a mutable callable lost between calls, void results mishandled.
TEST(WrapperDecorator, ForwardsArgumentsAndResults) {
  temp_dir dir;
  const std::string path = dir.path("lock");

  auto increment = ipl::interprocess_locked(path, [](int &value) { ++value; });
  int counter = 0;
  increment(counter);
  ASSERT_FREE(path);
  increment(counter);
  EXPECT_EQ(2, counter);

  auto pass_through = ipl::interprocess_read_locked(
      path, [](std::unique_ptr<int> owned) { return owned; });
  ASSERT_FREE(path);
  std::unique_ptr<int> back = pass_through(std::make_unique<int>(5));
  ASSERT_NE(nullptr, back);
  EXPECT_EQ(5, *back);

  int target = 0;
  auto reference_to_target = ipl::interprocess_write_locked(
      path, [&target]() -> int & { return target; });
  static_assert(std::is_same_v<int &, decltype(reference_to_target())>);
  ASSERT_FREE(path);
  reference_to_target() = 9;
  EXPECT_EQ(9, target);

  auto count_calls = ipl::interprocess_locked(path, [n = 0]() mutable { return ++n; });
  ASSERT_FREE(path);
  EXPECT_EQ(1, count_calls());
  ASSERT_FREE(path);
  EXPECT_EQ(2, count_calls());

  const auto const_callable = ipl::interprocess_locked(
      path, [](const std::string &a, const std::string &b) { return a + b; });
  ASSERT_FREE(path);
  EXPECT_EQ("ab", const_callable("a", std::string("b")));

  std::string moved_into;
  auto sink = ipl::interprocess_locked(
      path, [&moved_into](std::string &&text) { moved_into = std::move(text); });
  std::string source(100, 'x');
  ASSERT_FREE(path);
  sink(std::move(source));
  EXPECT_EQ(std::string(100, 'x'), moved_into);
  EXPECT_EQ(IPL_OK, probe_exclusive(path));
}

// Catches: a lock kept (or a handle leaked) when the function throws, or the
// function's exception replaced by another.
TEST(WrapperDecorator, ReleasesWhenTheFunctionThrows) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  struct boom {};
  int held_inside = IPL_OK;
  auto thrower = [&] {
    held_inside = probe_exclusive(path);
    throw boom{};
  };
  const int fds_before = ipltest::open_fd_count();

  auto exclusive = ipl::interprocess_locked(path, thrower);
  EXPECT_THROW(exclusive(), boom);
  EXPECT_EQ(IPL_E_TIMEOUT, held_inside);
  ASSERT_FREE(path);

  held_inside = IPL_OK;
  auto read = ipl::interprocess_read_locked(path, thrower);
  EXPECT_THROW(read(), boom);
  EXPECT_EQ(IPL_E_TIMEOUT, held_inside);
  ASSERT_FREE(path);

  held_inside = IPL_OK;
  auto write = ipl::interprocess_write_locked(path, thrower);
  EXPECT_THROW(write(), boom);
  EXPECT_EQ(IPL_E_TIMEOUT, held_inside);
  EXPECT_EQ(IPL_OK, probe_exclusive(path));

  EXPECT_EQ(fds_before, ipltest::open_fd_count()) << "a handle leaked";
}

// Catches: open errors not reported (or the function run anyway) and the
// open flags not reaching ipl_open.
TEST(WrapperDecorator, OpenFailureThrowsBeforeTheFunctionRuns) {
  temp_dir dir;
  int calls = 0;
  auto on_directory = ipl::interprocess_locked(dir.root(), [&] { ++calls; });
  EXPECT_TRUE(throws_status(IPL_E_NOT_REGULAR_FILE, [&] { on_directory(); }));
  auto no_parent = ipl::interprocess_read_locked(
      dir.path("missing/lock"), [&] { ++calls; }, IPL_OPEN_NO_CREATE_DIRS);
  EXPECT_TRUE(throws_status(IPL_E_BAD_PARENT, [&] { no_parent(); }));
  EXPECT_EQ(0, calls);
}

// Catches: one handle shared by all calls of a decorated callable, which
// makes a second thread's call fail with IPL_E_WOULD_DEADLOCK (or, for the
// exclusive forms, lets two calls overlap). Runs in a helper process so a
// call that never returns fails the test instead of hanging it.
TEST(WrapperDecorator, TwoThreadsCallingTheSameCallable) {
  temp_dir dir;
  for (const std::string mode : {"exclusive", "write", "read"}) {
    SCOPED_TRACE(mode);
    child_process child = child_process::helper(
        "wrapper_decorator_threads", {dir.path(mode + ".lock"), mode});
    std::map<std::string, std::string> report;
    std::string line;
    while (child.read_line(&line) && line != "end") {
      const size_t space = line.find(' ');
      report[line.substr(0, space)] =
          space == std::string::npos ? "" : line.substr(space + 1);
    }
    ASSERT_EQ("end", line) << "the helper did not finish";
    EXPECT_EQ("0", report["errors"]) << "first error: " << report["first_error"];
    if (mode == "read") {
      EXPECT_EQ("2", report["met"]) << "the two readers were never inside together";
    } else {
      EXPECT_EQ(std::to_string(2 * kCallsPerThread + 1), report["done"]);
      EXPECT_EQ("1", report["most_inside"]) << "calls overlapped";
      EXPECT_EQ("1", report["overlap_tried"]) << "the overlapping call was not made";
    }
    EXPECT_EQ(0, ipltest::describe_status(child.wait()));
  }
}

// ---- Other processes -----------------------------------------------------------

// Catches: a wrapper lock that only excludes within the process (or takes
// no kernel lock at all), and a blocking lock() that returns before the
// other process lets go.
TEST(WrapperProcess, ProcessLockExcludesAHelperProcess) {
  using ipltest::lock_mode;
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);

  {
    ipltest::lock_agent holder(path);
    ASSERT_TRUE(holder.hold(lock_mode::exclusive));
    EXPECT_FALSE(lock.try_lock());
    const auto start = steady::now();
    EXPECT_FALSE(lock.try_lock_for(100ms));
    EXPECT_GE(steady::now() - start, 100ms);
    ASSERT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
    EXPECT_TRUE(lock.try_lock());
  }

  // We hold; the agent blocks in a wait without a limit until we unlock.
  ipltest::lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  ASSERT_EQ(waiter.wait(lock_mode::exclusive, IPL_WAIT_FOREVER), ipltest::kWaiting);
  EXPECT_TRUE(waiter.silent_for(300ms)) << "the agent got the lock we hold";
  lock.unlock();
  ASSERT_EQ(waiter.reply(), IPL_OK);
  EXPECT_FALSE(lock.try_lock());
  ASSERT_EQ(waiter.release(lock_mode::exclusive), IPL_OK);
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
}

// Catches: shared_process_lock's shared mode not being the kernel's shared
// lock across processes, and a lock surviving its holder's SIGKILL.
TEST(WrapperProcess, SharedAcrossProcessesAndReleasedOnKill) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock lock(path);

  ipltest::lock_agent reader(path);
  ASSERT_TRUE(reader.hold(ipltest::lock_mode::shared));
  EXPECT_TRUE(lock.try_lock_shared());
  lock.unlock_shared();
  EXPECT_FALSE(lock.try_lock());

  EXPECT_EQ(reader.kill_and_reap(), -1000 - SIGKILL);
  const auto start = steady::now();
  EXPECT_TRUE(lock.try_lock_for(kBound));
  EXPECT_LT(steady::now() - start, kBound);
  lock.unlock();
}

}  // namespace

// ---- fork() without exec (POSIX) ---------------------------------------------
// A lock belongs to the process that took it: in a forked child the
// wrapper's destructors, guards and decorators must leave the parent's lock
// alone. "Held" is asked of a third process (ipltest::lock_agent), so no
// in-process state can answer for the kernel. Children forked straight from
// a test use only async-signal-safe calls and libipl until _exit(), and
// never return into GoogleTest.
#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

namespace {

using ipltest::describe_status;
using ipltest::lock_mode;
using ipltest::status_text;
using ipltest::try_from_other_process;

// Forks; the child runs `body` and _exits with its result. -1 on failure.
// quiet: the child's stderr goes to /dev/null (a std::terminate message
// there is a failure the parent reports, or the point of the test).
template <class Body>
pid_t fork_running(Body body, bool quiet = false) {
  std::fflush(nullptr);  // nothing buffered twice
  const pid_t pid = fork();
  if (pid == 0) {
    if (quiet) {
      const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
      if (devnull >= 0) dup2(devnull, STDERR_FILENO);
    }
    _exit(body());
  }
  return pid;
}

// Waits (bounded) for child `pid`: describe_status() of its end, or -1 after
// kBound (it is then killed and reaped).
int wait_for_child(pid_t pid) {
  if (pid <= 0) return -1;
  const auto deadline = steady::now() + kBound;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return describe_status(status);
    if (done < 0 && errno != EINTR) return -1;
    if (steady::now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return -1;
    }
    std::this_thread::sleep_for(2ms);
  }
}

testing::AssertionResult held_by_someone(const std::string &path, const char *when) {
  const int status = try_from_other_process(path, lock_mode::exclusive);
  if (status == IPL_E_TIMEOUT) return testing::AssertionSuccess();
  return testing::AssertionFailure() << when << ": a third process's exclusive try gave "
                                     << status_text(status) << ", expected the lock to be held";
}

testing::AssertionResult free_for_all(const std::string &path, const char *when) {
  const int status = try_from_other_process(path, lock_mode::exclusive);
  if (status == IPL_OK) return testing::AssertionSuccess();
  return testing::AssertionFailure() << when << ": a third process's exclusive try gave "
                                     << status_text(status) << ", expected the lock to be free";
}

// Catches: a lock object destroyed in a forked child (its destructor's
// ipl_close) that releases the parent's lock, e.g. an implementation that
// unlocks before closing, or shares the parent's kernel lock.
TEST(WrapperFork, LockObjectDestroyedInTheChildLeavesTheParentsLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  {
    SCOPED_TRACE("process_lock");
    std::optional<ipl::process_lock> lock(std::in_place, path);
    lock->lock();
    const pid_t child = fork_running([&] {
      lock.reset();
      return 0;
    });
    ASSERT_GT(child, 0);
    EXPECT_EQ(wait_for_child(child), 0);
    EXPECT_TRUE(held_by_someone(path, "after the child destroyed its copy"));
    lock->unlock();
  }
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared_process_lock, shared" : "shared_process_lock, exclusive");
    std::optional<ipl::shared_process_lock> lock(std::in_place, path);
    if (shared)
      lock->lock_shared();
    else
      lock->lock();
    const pid_t child = fork_running([&] {
      lock.reset();
      return 0;
    });
    ASSERT_GT(child, 0);
    EXPECT_EQ(wait_for_child(child), 0);
    EXPECT_TRUE(held_by_someone(path, "after the child destroyed its copy"));
    if (shared)
      lock->unlock_shared();
    else
      lock->unlock();
  }
  EXPECT_TRUE(free_for_all(path, "after the parent unlocked"));
}

// Catches: a standard guard unwound in a forked child (its destructor calls
// unlock(), i.e. ipl_release on the inherited handle) that releases the
// parent's lock: the old OFD code's child unlocked the shared description.
TEST(WrapperFork, GuardUnwoundInTheChildLeavesTheParentsLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  {
    SCOPED_TRACE("std::unique_lock<process_lock>");
    ipl::process_lock lock(path);
    std::optional<std::unique_lock<ipl::process_lock>> guard(std::in_place, lock);
    const pid_t child = fork_running(
        [&] {
          guard.reset();
          return 0;
        },
        true);
    ASSERT_GT(child, 0);
    wait_for_child(child);  // how it ends: the next test
    EXPECT_TRUE(held_by_someone(path, "after the child's guard unlocked"));
  }
  {
    SCOPED_TRACE("std::shared_lock<shared_process_lock>");
    ipl::shared_process_lock lock(path);
    std::optional<std::shared_lock<ipl::shared_process_lock>> guard(std::in_place, lock);
    const pid_t child = fork_running(
        [&] {
          guard.reset();
          return 0;
        },
        true);
    ASSERT_GT(child, 0);
    wait_for_child(child);
    EXPECT_TRUE(held_by_someone(path, "after the child's guard unlocked"));
  }
  EXPECT_TRUE(free_for_all(path, "after the parent's guards were destroyed"));
}

// Catches: a std::unique_lock unwound in a forked child ending the child
// with std::terminate: its destructor calls unlock(), which throws
// ipl::error(IPL_E_NOT_HELD) for the inherited handle, from a noexcept
// destructor. A child that returns through the scope that took the lock (a
// common shape: fork inside a locked region, the child returns to main)
// must be able to end normally.
TEST(WrapperFork, GuardUnwoundInTheChildDoesNotTerminateTheChild) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);
  std::optional<std::unique_lock<ipl::process_lock>> guard(std::in_place, lock);
  const pid_t child = fork_running(
      [&] {
        guard.reset();
        return 0;
      },
      true);
  ASSERT_GT(child, 0);
  const int ended = wait_for_child(child);
  EXPECT_EQ(ended, 0) << "the child's std::unique_lock destructor ended it ("
                      << (ended == -1000 - SIGABRT ? "SIGABRT: std::terminate" : "see status")
                      << ")";
}

std::optional<ipl::process_lock> static_lock_for_fork;

// args: PATH. Takes the lock in a static-storage object, forks a child that
// calls exit(0) (so static destructors run there), says "child-exit N",
// then unlocks when told "release" and says "released".
IPL_TEST_HELPER(wrapper_fork_static_lock) {
  static_lock_for_fork.emplace(args.at(0));
  static_lock_for_fork->lock();
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) std::exit(0);  // runs static_lock_for_fork's destructor
  ipltest::helper_say("child-exit " + std::to_string(wait_for_child(child)));
  std::string line;
  if (!ipltest::helper_hear(&line) || line != "release") return 1;
  static_lock_for_fork->unlock();
  ipltest::helper_say("released");
  ipltest::helper_hear(&line);
  return 0;
}

// Catches: exit() in a forked child, whose static destructors close the
// inherited lock object, releasing the parent's lock.
TEST(WrapperFork, ExitInTheChildRunsStaticDestructorsAndLeavesTheParentsLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  child_process helper = child_process::helper("wrapper_fork_static_lock", {path});
  std::string line;
  ASSERT_TRUE(helper.expect_line("child-exit 0", kBound, &line)) << line;
  EXPECT_TRUE(held_by_someone(path, "after the child's exit()"));
  helper.write_line("release");
  ASSERT_TRUE(helper.expect_line("released"));
  EXPECT_TRUE(free_for_all(path, "after the holder unlocked"));
}

// Catches: a decorated function that forks, whose child returns from the
// function (running the decorator's release and close in the child) and so
// frees the parent's lock before the parent's call has returned.
TEST(WrapperFork, DecoratedFunctionThatForksHoldsTheLockUntilTheParentsCallReturns) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (const bool read : {false, true}) {
    SCOPED_TRACE(read ? "interprocess_read_locked" : "interprocess_locked");
    int child_end = -1;
    int seen_inside = ipltest::kNoReply;
    auto body = [&]() -> pid_t {
      std::fflush(nullptr);
      const pid_t pid = fork();
      if (pid > 0) {
        child_end = wait_for_child(pid);
        seen_inside = try_from_other_process(path, lock_mode::exclusive);
      }
      return pid;
    };
    // Made before the call, so the child has nothing to destroy but the
    // decorator's lock object on its way to _exit().
    auto exclusive_call = ipl::interprocess_locked(path, body);
    auto read_call = ipl::interprocess_read_locked(path, body);
    const pid_t pid = read ? read_call() : exclusive_call();
    if (pid == 0) _exit(0);  // the child, after the decorator let go there
    ASSERT_GT(pid, 0);
    EXPECT_EQ(child_end, 0);
    EXPECT_EQ(seen_inside, IPL_E_TIMEOUT)
        << "inside the parent's call, after the child returned from it: "
        << status_text(seen_inside);
    EXPECT_TRUE(free_for_all(path, "after the parent's call returned"));
  }
}

}  // namespace
#endif  // !_WIN32

// ---- libipl 0.2.0 in the wrapper: query, cancel, downgrade/upgrade, remove,
// ---- and decorated calls that nest ----------------------------------------------
// "Held" and "free" are asked of a third process (ipltest::lock_agent,
// try_from_other_process), so no in-process state can answer for the
// kernel. Every call that a broken wrapper would leave blocked has a way
// out: cancel() after kBound, the holder's release, or a helper process that
// the test kills.
#include <filesystem>
#include <functional>
#include <future>

namespace {

using ipltest::kNoReply;
using ipltest::lock_agent;
using lock_kind = ipltest::lock_mode;

// What a third process gets with one try in `mode`.
int third_try(const std::string &path, lock_kind mode) {
  return ipltest::try_from_other_process(path, mode);
}

// A thread that is always joined, also when an ASSERT or an exception
// leaves the test early: on the way out `rescue` is called every
// millisecond until the thread has ended (e.g. a cancel()), and after
// kBound `last_resort` once (e.g. the holder's release).
class rescued_thread {
 public:
  template <class Body>
  rescued_thread(Body body, std::function<void()> rescue, std::function<void()> last_resort)
      : rescue_(std::move(rescue)), last_resort_(std::move(last_resort)),
        thread_([this, body]() mutable {
          body();
          done_.store(true);
        }) {}
  ~rescued_thread() {
    const auto start = steady::now();
    bool last_used = false;
    while (!done_.load()) {
      try {
        if (!last_used && steady::now() - start > kBound) {
          last_used = true;
          last_resort_();
        }
        rescue_();
      } catch (...) {
      }
      std::this_thread::sleep_for(1ms);
    }
    thread_.join();
  }
  bool done() const { return done_.load(); }

 private:
  std::function<void()> rescue_;
  std::function<void()> last_resort_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Runs `blocking` (a call that should end by throwing ipl::error) in a thread
// and, from this thread, calls `cancel` every millisecond from `after` on
// until it returns. If it is still running after kBound, `rescue` (e.g. the
// holder's release) lets it end. The status it threw (IPL_OK: it returned),
// and how long after the first cancel it returned.
struct canceled_call {
  int status = kNoReply;
  std::chrono::microseconds latency{0};
  bool rescued = false;
};
template <class Blocking, class Cancel, class Rescue>
canceled_call cancel_while_waiting(Blocking blocking, Cancel cancel, Rescue rescue,
                                   std::chrono::milliseconds after = 200ms) {
  canceled_call result;
  std::promise<int> ended;
  std::future<int> status = ended.get_future();
  std::atomic<steady::rep> ended_at{0};
  std::thread waiter([&] {
    int seen = IPL_OK;
    try {
      blocking();
    } catch (const ipl::error &e) {
      seen = e.status();
    }
    ended_at.store(steady::now().time_since_epoch().count());
    ended.set_value(seen);
  });
  std::this_thread::sleep_for(after);  // a window: the call is waiting by now
  const auto first_cancel = steady::now();
  do {
    if (steady::now() - first_cancel > kBound) {
      result.rescued = true;
      rescue();
      status.wait();
      break;
    }
    cancel();
  } while (status.wait_for(1ms) != std::future_status::ready);
  waiter.join();
  result.latency = std::chrono::duration_cast<std::chrono::microseconds>(
      steady::time_point(steady::duration(ended_at.load())) - first_cancel);
  result.status = status.get();
  return result;
}

// Catches: a state mapped onto the wrong lock_state, a holder's pid dropped
// (or -1 turned into a pid), find_holder = false still asking for one, the
// object's own lock counted as someone else's. Windows (ipl.h, ipl_query):
// the state only (holder_pid -1: no pid), and a query while this object
// holds the lock shared is IPL_E_UNSUPPORTED (the probe cannot tell its
// shared lock from another's); the failed query keeps that lock.
TEST(WrapperQuery, ReportsWhoElseHoldsTheLockAndHow) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock lock(path);
  ipl::query_result seen = lock.query();
  EXPECT_EQ(seen.state, ipl::lock_state::free);
  EXPECT_FALSE(seen.holder_pid.has_value());

  lock_agent agent(path);
  ASSERT_TRUE(agent.started());
  const int64_t agent_pid = agent.process().pid();
  ASSERT_EQ(agent.acquire(lock_kind::exclusive, 0), IPL_OK);
  seen = lock.query();
  EXPECT_EQ(seen.state, ipl::lock_state::exclusive);
#ifdef _WIN32
  (void)agent_pid;
  EXPECT_FALSE(seen.holder_pid.has_value()) << "Windows cannot tell a holder's pid";
#else
  EXPECT_EQ(seen.holder_pid.value_or(-1), agent_pid);
#endif
  seen = lock.query(false);
  EXPECT_EQ(seen.state, ipl::lock_state::exclusive);
  EXPECT_FALSE(seen.holder_pid.has_value()) << "find_holder = false looked one up";
  ASSERT_EQ(agent.release(lock_kind::exclusive), IPL_OK);

  ASSERT_EQ(agent.acquire(lock_kind::shared, 0), IPL_OK);
#ifdef _WIN32
  seen = lock.query();
  EXPECT_EQ(seen.state, ipl::lock_state::shared);
  EXPECT_FALSE(seen.holder_pid.has_value()) << "Windows cannot tell a holder's pid";
  ASSERT_TRUE(lock.try_lock_shared());
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { lock.query(); }));
  ASSERT_EQ(agent.release(lock_kind::shared), IPL_OK);
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { lock.query(false); }));
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "a failed query dropped it";
#else
  ASSERT_TRUE(lock.try_lock_shared());
  seen = lock.query();
  EXPECT_EQ(seen.state, ipl::lock_state::shared);
  EXPECT_EQ(seen.holder_pid.value_or(-1), agent_pid);
  ASSERT_EQ(agent.release(lock_kind::shared), IPL_OK);
  EXPECT_EQ(lock.query().state, ipl::lock_state::free) << "its own shared lock counted";
#endif
  lock.unlock_shared();

  ipl::process_lock exclusive(path);
  exclusive.lock();
  EXPECT_EQ(exclusive.query().state, ipl::lock_state::free) << "its own lock counted";
  EXPECT_EQ(lock.query().state, ipl::lock_state::exclusive);
  exclusive.unlock();
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock().query(); }));
}

// Catches: cancel() not reaching ipl_cancel (the wait would only end at
// the rescue), IPL_E_CANCELED from a timed wait reported as false ("held
// elsewhere"), a canceled lock() marked as taken (a later unlock() must
// still throw IPL_E_NOT_HELD), an error without the std::errc condition.
// On Windows a forever wait is a blocking LockFileEx that cancel() cannot
// end (README, "Cancel"): there the timed waits (which poll) are canceled.
TEST(WrapperCancel, CancelFromAnotherThreadEndsTheWaitWithCanceled) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent agent(path);
  ASSERT_TRUE(agent.started());
  ASSERT_EQ(agent.acquire(lock_kind::exclusive, 0), IPL_OK);
  ipl::process_lock lock(path);
#ifdef _WIN32
  const bool waits_timed[] = {true};
#else
  const bool waits_timed[] = {false, true};
#endif
  for (const bool timed : waits_timed) {
    SCOPED_TRACE(timed ? "try_lock_for(kBound)" : "lock()");
    bool returned_false = false;
    const canceled_call call = cancel_while_waiting(
        [&] {
          if (timed)
            returned_false = !lock.try_lock_for(kBound);
          else
            lock.lock();
        },
        [&] { lock.cancel(); }, [&] { agent.release(lock_kind::exclusive); });
    ASSERT_FALSE(call.rescued) << "cancel() did not end the wait";
    EXPECT_EQ(call.status, IPL_E_CANCELED) << (returned_false ? "returned false" : "");
    EXPECT_LT(call.latency, 1000ms);
    std::printf("[ latency  ] cancel -> %s threw after %lld us\n",
                timed ? "try_lock_for" : "lock", static_cast<long long>(call.latency.count()));
    EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { lock.unlock(); }));
  }
  try {
    ipl::shared_process_lock rw(path);
    std::atomic<bool> returned{false};
    std::thread canceler([&] {
      std::this_thread::sleep_for(100ms);
      // Until the wait has ended (a cancel before it starts does nothing);
      // after kBound the agent's release ends it.
      for (const auto start = steady::now(); !returned.load();) {
        if (steady::now() - start > kBound) {
          agent.release(lock_kind::exclusive);
          break;
        }
        rw.cancel();
        std::this_thread::sleep_for(1ms);
      }
    });
    try {
#ifdef _WIN32
      const bool got = rw.try_lock_shared_for(kBound);
      ADD_FAILURE() << "try_lock_shared_for() returned " << got << " instead of throwing";
#else
      rw.lock_shared();
      ADD_FAILURE() << "lock_shared() returned while another process held the lock";
#endif
    } catch (const ipl::error &e) {
      EXPECT_EQ(e.status(), IPL_E_CANCELED);
      EXPECT_EQ(e.code(), std::errc::operation_canceled);
      EXPECT_EQ(e.os_error(), 0);
      EXPECT_EQ(e.path(), path);
    }
    returned.store(true);
    canceler.join();
  } catch (const std::exception &e) {
    ADD_FAILURE() << e.what();
  }
  // Nothing was taken: once the agent lets go, the object locks normally.
  ASSERT_EQ(agent.release(lock_kind::exclusive), IPL_OK);
  EXPECT_TRUE(lock.try_lock());
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  lock.unlock();
}

// Catches: a cancel() with no wait in progress that poisons the next wait
// (ipl.h: it does nothing), or that throws.
TEST(WrapperCancel, CancelWithoutAWaitDoesNothing) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent agent(path);
  ASSERT_TRUE(agent.started());
  ASSERT_EQ(agent.acquire(lock_kind::exclusive, 0), IPL_OK);
  ipl::process_lock lock(path);
  lock.cancel();
  lock.cancel();
  const auto start = steady::now();
  EXPECT_FALSE(lock.try_lock_for(300ms));
  EXPECT_GE(steady::now() - start, 300ms);
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock().cancel(); }));
}

// Catches: a downgrade that is not ipl_downgrade (a writer let in, or
// readers kept out), held-mode tracking not following it (unlock() must
// then throw IPL_E_NOT_HELD and keep the shared lock), a downgrade of a
// lock not held exclusive that does not throw or drops what is held.
TEST(WrapperUpgrade, DowngradeLetsReadersInAndKeepsWritersOut) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock rw(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.downgrade(); }));
  rw.lock();
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  rw.downgrade();
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock(); }));
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.downgrade(); }));
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "a failed call dropped it";
  rw.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);

  // The documented hand-over between standard guards.
  {
    std::unique_lock<ipl::shared_process_lock> writing(rw);
    rw.downgrade();
    std::shared_lock<ipl::shared_process_lock> reading(*writing.release(), std::adopt_lock);
    EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
    EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  }
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);
}

// Catches: an upgrade that does not wait for the other readers (or never
// ends once they leave), a timeout reported as an exception or a wait cut
// short, a failed upgrade that drops the shared lock, held-mode tracking
// not following a successful upgrade. Windows has no atomic upgrade
// (ipl.h, ipl_upgrade: IPL_E_UNSUPPORTED): there it catches an upgrade
// attempted anyway (it would wait for its own shared lock), a form that
// turns the status into false or waits, and a failure that drops the
// shared lock or changes the held mode.
TEST(WrapperUpgrade, UpgradeWaitsForOtherReadersAndKeepsTheSharedLockOnFailure) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock rw(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.try_upgrade(); }));
  lock_agent reader(path);
  ASSERT_TRUE(reader.started());
  ASSERT_EQ(reader.acquire(lock_kind::shared, 0), IPL_OK);
  rw.lock_shared();
#ifdef _WIN32
  auto start = steady::now();
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { rw.try_upgrade(); }));
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { rw.try_upgrade_for(kBound); }));
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] {
    rw.try_upgrade_until(std::chrono::system_clock::now() + kBound);
  }));
  EXPECT_LT(steady::now() - start, 1000ms) << "an upgrade waited";
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "a failed upgrade dropped it";
  // Alone, with no reader to wait for (so a forever upgrade that was
  // attempted after all would return instead of hanging): the same.
  ASSERT_EQ(reader.release(lock_kind::shared), IPL_OK);
  start = steady::now();
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { rw.upgrade(); }));
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { rw.try_upgrade(); }));
  EXPECT_LT(steady::now() - start, 1000ms) << "an upgrade waited";
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "a failed upgrade dropped it";
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock(); })) << "held mode changed";
  rw.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);
#else
  EXPECT_FALSE(rw.try_upgrade());
  auto start = steady::now();
  EXPECT_FALSE(rw.try_upgrade_for(200ms));
  auto waited = steady::now() - start;
  EXPECT_GE(waited, 200ms);
  EXPECT_LT(waited, 1000ms + 200ms);
  start = steady::now();
  EXPECT_FALSE(rw.try_upgrade_until(std::chrono::system_clock::now() + 150ms));
  EXPECT_GE(steady::now() - start, 140ms);  // system_clock to steady: a little slack
  // Still shared: other readers in, writers out.
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);

  std::thread leaver([&] {
    std::this_thread::sleep_for(200ms);
    reader.release(lock_kind::shared);
  });
  start = steady::now();
  bool upgraded = false;
  int threw = IPL_OK;
  try {
    upgraded = rw.try_upgrade_for(kBound);
  } catch (const ipl::error &e) {
    threw = e.status();
  }
  waited = steady::now() - start;
  leaver.join();
  ASSERT_EQ(threw, IPL_OK);
  ASSERT_TRUE(upgraded);
  EXPECT_LT(waited, kBound);
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT) << "not exclusive after upgrade";
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock_shared(); }));
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.upgrade(); }));
  rw.unlock();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);
#endif
}

// Catches: two upgraders that wait for each other for ever (the second
// must throw IPL_E_WOULD_DEADLOCK at once, from upgrade() and from the
// timed forms, which must not turn it into false), the loser's shared lock
// dropped, and cancel() not ending a waiting upgrade (which then keeps its
// shared lock). On Windows no upgrade waits (IPL_E_UNSUPPORTED, ipl.h), so
// two upgraders cannot deadlock and cancel() has no upgrade to end: both
// must get IPL_E_UNSUPPORTED at once and keep their shared locks.
TEST(WrapperUpgrade, SecondUpgraderThrowsWouldDeadlockAndCancelEndsAnUpgrade) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock first(path);
  ipl::shared_process_lock second(path);
  first.lock_shared();
  second.lock_shared();
#ifdef _WIN32
  for (ipl::shared_process_lock *upgrader : {&first, &second}) {
    const auto start = steady::now();
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { upgrader->try_upgrade_for(kBound); }));
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { upgrader->try_upgrade(); }));
    EXPECT_LT(steady::now() - start, 1000ms) << "an upgrade waited";
    upgrader->cancel();  // no wait in progress: nothing to do
  }
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  second.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "shared lock lost";
  first.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);
#else
  std::promise<int> first_result;
  std::future<int> first_done = first_result.get_future();
  const rescued_thread upgrader(
      [&] {
        int status = IPL_OK;
        try {
          first.upgrade();  // waits for `second` to leave
        } catch (const ipl::error &e) {
          status = e.status();
        }
        first_result.set_value(status);
      },
      [&] { first.cancel(); }, [&] { second.unlock_shared(); });
  // Until `first` waits, `second` just sees another reader (false).
  int seen = IPL_OK;
  const auto deadline = steady::now() + kBound;
  while (seen != IPL_E_WOULD_DEADLOCK && steady::now() < deadline) {
    try {
      if (second.try_upgrade()) {
        seen = IPL_OK;
        break;
      }
      std::this_thread::sleep_for(1ms);
    } catch (const ipl::error &e) {
      seen = e.status();
    }
  }
  EXPECT_EQ(seen, IPL_E_WOULD_DEADLOCK);
  const auto start = steady::now();
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { second.try_upgrade_for(kBound); }));
  EXPECT_TRUE(throws_status(IPL_E_WOULD_DEADLOCK, [&] { second.upgrade(); }));
  EXPECT_LT(steady::now() - start, 1000ms) << "the second upgrade waited";
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  EXPECT_EQ(first_done.wait_for(0ms), std::future_status::timeout) << "upgraded beside a reader";
  second.unlock_shared();  // the loser lets go, so the winner finishes
  ASSERT_EQ(first_done.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(first_done.get(), IPL_OK);
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  first.unlock();

  // A waiting upgrade ended by cancel() keeps its shared lock.
  first.lock_shared();
  second.lock_shared();
  const canceled_call call = cancel_while_waiting([&] { first.upgrade(); },
                                                  [&] { first.cancel(); },
                                                  [&] { second.unlock_shared(); });
  ASSERT_FALSE(call.rescued) << "cancel() did not end the upgrade";
  EXPECT_EQ(call.status, IPL_E_CANCELED);
  std::printf("[ latency  ] cancel -> upgrade threw after %lld us\n",
              static_cast<long long>(call.latency.count()));
  second.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT) << "shared lock lost";
  first.unlock_shared();
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK);
#endif
}

// Catches: remove() that leaves the file, that keeps the lock, that a
// guard still in scope turns into std::terminate (its unlock() must do
// nothing), that absorbs more than that one unlock(), or that a handle not
// holding the lock exclusive gets through (the shared lock is kept).
TEST(WrapperRemove, RemovesTheFileReleasesAndLeavesTheGuardQuiet) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { lock.remove(); }));
  {
    std::unique_lock<ipl::process_lock> guard(lock);
    lock.remove();
    struct stat info {};
    EXPECT_NE(stat(path.c_str(), &info), 0) << "the lock file is still there";
    EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK) << "still locked after remove()";
  }  // guard.unlock(): nothing to do, and no exception
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { lock.unlock(); }));
  lock.lock();  // creates it again
  struct stat info {};
  EXPECT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  lock.unlock();
#ifdef _WIN32
  // Without POSIX delete semantics (Wine, older Windows) a deleted file
  // stays at its path while any handle has it open (README, "Windows"):
  // for rw.remove() below to take it away, rw's must be the only one.
  lock.close();
#endif

  ipl::shared_process_lock rw(path);
  rw.lock_shared();
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.remove(); }));
  EXPECT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  rw.unlock_shared();
  rw.lock();
  rw.remove();
  EXPECT_NE(stat(path.c_str(), &info), 0);
  EXPECT_NO_THROW(rw.unlock());
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.unlock(); }));
}

// Catches: a waiter that ends up holding a lock on the removed file (which
// excludes nobody): after the remove, the waiter's lock must be on the
// file the path names, as a third process sees.
TEST(WrapperRemove, AWaiterEndsUpLockingTheFileThePathNames) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock holder(path);
  holder.lock();
  ipl::process_lock waiter(path);
  std::future<bool> got = std::async(std::launch::async, [&] { return waiter.try_lock_for(kBound); });
  std::this_thread::sleep_for(200ms);  // the waiter is waiting by now
  holder.remove();
  ASSERT_EQ(got.wait_for(kBound), std::future_status::ready);
  ASSERT_TRUE(got.get());
  struct stat info {};
  EXPECT_EQ(stat(path.c_str(), &info), 0) << "the waiter did not create the file again";
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  waiter.unlock();
}

// ---- Decorated calls that nest in one thread --------------------------------------

// Decorates `body` on `path` in mode "exclusive", "read" or "write".
std::function<int()> decorated(const std::string &mode, const std::string &path,
                               std::function<int()> body) {
  if (mode == "exclusive") return ipl::interprocess_locked(path, std::move(body));
  if (mode == "read") return ipl::interprocess_read_locked(path, std::move(body));
  return ipl::interprocess_write_locked(path, std::move(body));
}

// args: OUTER_MODE OUTER_PATH INNER_MODE INNER_PATH. In a decorated call
// (outer), makes a decorated call (inner) and says "inner S" (S: the status
// it threw, 0 when it returned), then waits for "finish" and returns. Then
// makes the inner call alone and says "alone S". With INNER_MODE "self-..."
// the outer callable calls itself once more instead. A wrapper that waits
// for its own outer call hangs here; the test kills the helper.
IPL_TEST_HELPER(wrapper_nested_call) {
  const std::string outer_mode = args.at(0), outer_path = args.at(1);
  const std::string inner_mode = args.at(2), inner_path = args.at(3);
  const auto status_of = [](const std::function<int()> &call) {
    try {
      return call();
    } catch (const ipl::error &e) {
      return e.status();
    }
  };
  int depth = 0;
  std::function<int()> outer;
  std::function<int()> inner = inner_mode == "self" ? std::function<int()>([&] { return outer(); })
                                                    : decorated(inner_mode, inner_path, [] { return 0; });
  outer = decorated(outer_mode, outer_path, [&]() -> int {
    if (++depth > 1) return 0;  // the nested call of "self"
    ipltest::helper_say("inner " + std::to_string(status_of(inner)));
    std::string line;
    if (!ipltest::helper_hear(&line) || line != "finish") return 1;
    return 0;
  });
  if (outer() != 0) return 1;
  depth = 1;  // "self": no second level this time
  ipltest::helper_say("alone " + std::to_string(status_of(inner_mode == "self" ? outer : inner)));
  return 0;
}

// Runs wrapper_nested_call and checks what the inner call did, that the
// outer call still held its lock after that (a third process is kept out
// of `outer_path` in the outer mode's conflicting mode), and that afterwards
// the inner call alone succeeds (no stale record).
void expect_nested(const std::string &outer_mode, const std::string &outer_path,
                   const std::string &inner_mode, const std::string &inner_path, int expected) {
  SCOPED_TRACE(outer_mode + " call, nested " + inner_mode + " call on " + inner_path);
  child_process helper = child_process::helper(
      "wrapper_nested_call", {outer_mode, outer_path, inner_mode, inner_path});
  std::string line;
  const auto start = steady::now();
  ASSERT_TRUE(helper.read_line(&line, kBound)) << "the nested call hung (or the helper died)";
  EXPECT_LT(steady::now() - start, kBound);
  EXPECT_EQ(line, "inner " + std::to_string(expected));
  EXPECT_EQ(third_try(outer_path, outer_mode == "read" ? lock_kind::exclusive : lock_kind::shared),
            IPL_E_TIMEOUT)
      << "the outer call lost its lock";
  helper.write_line("finish");
  EXPECT_TRUE(helper.expect_line("alone 0", kBound, &line)) << line;
  EXPECT_EQ(helper.wait(kBound), 0);
}

// Catches: the nested call hanging (each call's own handle waits for the
// outer one), a nesting that cannot deadlock refused (read in read, other
// files), a record that outlives its call, and the outer lock dropped when
// the inner call throws.
TEST(WrapperDecoratorNesting, ConflictingNestedCallsThrowWouldDeadlockAtOnce) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  const std::string other = dir.path("other");
  expect_nested("exclusive", path, "self", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("write", path, "self", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("exclusive", path, "exclusive", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("read", path, "write", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("read", path, "exclusive", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("write", path, "read", path, IPL_E_WOULD_DEADLOCK);
  expect_nested("exclusive", path, "read", path, IPL_E_WOULD_DEADLOCK);
  // Shared beside shared never waits: allowed.
  expect_nested("read", path, "self", path, 0);
  expect_nested("read", path, "read", path, 0);
  // Another file: no false alarm.
  expect_nested("exclusive", path, "exclusive", other, 0);
  expect_nested("write", path, "read", other, 0);
}

// Catches: "the same file" decided by comparing path strings only: another
// spelling, or a symbolic link, would still hang.
TEST(WrapperDecoratorNesting, AnotherNameForTheSameFileIsTheSameLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  { ipl::process_lock create(path); }
  expect_nested("exclusive", path, "exclusive", dir.path("./lock"), IPL_E_WOULD_DEADLOCK);
  expect_nested("read", path, "write", dir.root() + "//lock", IPL_E_WOULD_DEADLOCK);
#ifndef _WIN32
  const std::string link = dir.path("link");
  ASSERT_EQ(symlink(path.c_str(), link.c_str()), 0);
  expect_nested("exclusive", path, "exclusive", link, IPL_E_WOULD_DEADLOCK);
#endif
}

// Catches: records shared by every thread (a call from another thread
// must wait for the outer call, as another process would, not throw).
TEST(WrapperDecoratorNesting, AnotherThreadWaitsInsteadOfThrowing) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  std::promise<void> inside;
  std::promise<void> leave;
  std::shared_future<void> may_leave = leave.get_future().share();
  auto critical = ipl::interprocess_locked(path, [&](bool first) {
    if (first) {
      inside.set_value();
      may_leave.wait_for(kBound);
    }
    return first ? 1 : 2;
  });
  std::future<int> outer = std::async(std::launch::async, [&] { return critical(true); });
  ASSERT_EQ(inside.get_future().wait_for(kBound), std::future_status::ready);
  std::future<int> other = std::async(std::launch::async, [&] {
    try {
      return critical(false);
    } catch (const ipl::error &e) {
      return e.status();
    }
  });
  EXPECT_EQ(other.wait_for(300ms), std::future_status::timeout) << "did not wait";
  leave.set_value();
  ASSERT_EQ(other.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(outer.get(), 1);
  EXPECT_EQ(other.get(), 2);
}

}  // namespace

#ifndef _WIN32
#include <sys/wait.h>
#include <unistd.h>

namespace {

// Forks; the child runs `body` and _exits with its result; then waits for it
// (bounded; killed after kBound): its describe_status(), or -1.
template <class Body>
int run_forked(Body body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  if (pid < 0) return -1;
  const auto deadline = steady::now() + kBound;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return ipltest::describe_status(status);
    if (done < 0 && errno != EINTR) return -1;
    if (steady::now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return -1;
    }
    std::this_thread::sleep_for(2ms);
  }
}

// Catches: downgrade()/upgrade() that do not update the held mode: in a
// forked child (which holds nothing) the unlock of the mode now held must
// do nothing, and the unlock of the mode no longer held must throw; the
// parent's lock stays held whatever the child does.
TEST(WrapperUpgrade, HeldModeFollowsDowngradeAndUpgradeInAForkedChild) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock rw(path);
  rw.lock();
  rw.downgrade();
  // 0: as documented; 1: unlock_shared() threw; 2: unlock() did not throw.
  EXPECT_EQ(run_forked([&] {
              try {
                rw.unlock_shared();
              } catch (const ipl::error &) {
                return 1;
              }
              try {
                rw.unlock();
                return 2;
              } catch (const ipl::error &) {
                return 0;
              }
            }),
            0);
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_OK);
  rw.unlock_shared();

  rw.lock_shared();
  ASSERT_TRUE(rw.try_upgrade());
  EXPECT_EQ(run_forked([&] {
              try {
                std::unique_lock<ipl::shared_process_lock> guard(rw, std::adopt_lock);
              } catch (const ipl::error &) {
                return 1;
              }
              return 0;
            }),
            0);
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  rw.unlock();
}

// Catches: a forked child that takes its parent's decorated calls for its
// own: it holds none of their locks, so its decorated call must wait for
// the parent (and then run), not throw IPL_E_WOULD_DEADLOCK.
TEST(WrapperDecoratorNesting, AForkedChildWaitsForItsParentsCall) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  pid_t child = -1;
  // The child's decorated call happens inside the parent's.
  auto parent_call = ipl::interprocess_locked(path, [&]() -> int {
    std::fflush(nullptr);
    child = fork();
    if (child == 0) {
      int status;
      try {
        status = ipl::interprocess_locked(path, [] { return 7; })();
      } catch (const ipl::error &e) {
        status = 100 - e.status();  // 104 for IPL_E_WOULD_DEADLOCK
      }
      _exit(status);
    }
    std::this_thread::sleep_for(300ms);  // the child is waiting by now
    return 0;
  });
  EXPECT_EQ(parent_call(), 0);
  ASSERT_GT(child, 0);
  const auto deadline = steady::now() + kBound;
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(child, &status, WNOHANG)) == 0 && steady::now() < deadline)
    std::this_thread::sleep_for(2ms);
  if (done != child) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "the child's decorated call never returned";
  }
  EXPECT_EQ(ipltest::describe_status(status), 7)
      << "104: the child threw IPL_E_WOULD_DEADLOCK for its parent's call";
}

}  // namespace
#endif  // !_WIN32

// ---- check(), from_fd() and IPL_OPEN_INHERITABLE (libipl 0.2.0) -----------------
// from_fd() and IPL_OPEN_INHERITABLE need Linux OFD locks: on the classic
// backend (IPL_POSIX_LOCK_KIND "classic") they throw IPL_E_UNSUPPORTED, and
// these tests expect exactly that there. Windows refuses both and ignores
// create_mode (ipl.h): the WrapperOpenFd tests there expect exactly that.
namespace {

// Catches: check() that does not reach ipl_check (no IPL_E_LOST when the
// path names another file now), and a guard whose unlock() after the loss
// throws IPL_E_NOT_HELD (in a destructor: std::terminate); also a lock
// object that cannot lock again afterwards.
TEST(WrapperCheck, LostLockThrowsLostAndTheGuardLetsGoQuietly) {
  temp_dir dir;
#ifdef _WIN32
  // On Windows only the path is checked (ipl.h). The path must stop naming
  // the open, locked file: Wine keeps a deleted file at its path and
  // nothing renames over an open file there, but the folder above can be
  // moved away (src/win32_lockfileex.cpp, "What Wine 8 does differently").
  const std::string folder = dir.path("locks");
  const std::string path = folder + "/lock";
#else
  const std::string path = dir.path("lock");
#endif
  ipl::shared_process_lock rw(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { rw.check(); }));
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "shared" : "exclusive");
    {
      std::unique_lock<ipl::shared_process_lock> writing(rw, std::defer_lock);
      std::shared_lock<ipl::shared_process_lock> reading(rw, std::defer_lock);
      if (shared)
        reading.lock();
      else
        writing.lock();
      rw.check();
#ifdef _WIN32
      std::error_code moved;
      std::filesystem::rename(folder, folder + (shared ? ".old-shared" : ".old-exclusive"), moved);
      ASSERT_FALSE(moved) << moved.message();
#else
      ASSERT_EQ(unlink(path.c_str()), 0);
#endif
      EXPECT_TRUE(throws_status(IPL_E_LOST, [&] { rw.check(); }));
    }  // the guard's unlock after the loss: nothing to do, no throw
    ASSERT_TRUE(rw.try_lock());
    EXPECT_EQ(ipltest::try_from_other_process(path, ipltest::lock_mode::shared), IPL_E_TIMEOUT);
    rw.unlock();
  }
  ipl::process_lock lock(path);
  EXPECT_TRUE(throws_status(IPL_E_NOT_HELD, [&] { lock.check(); }));
  lock.lock();
  lock.check();
  lock.unlock();
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock().check(); }));
}

#ifdef _WIN32
// Catches: IPL_OPEN_INHERITABLE accepted on Windows, whose locks belong to a
// handle, not to a descriptor a child could inherit (ipl.h:
// IPL_E_UNSUPPORTED, and nothing is created), or dropped by the wrapper
// (the open would then succeed).
TEST(WrapperOpenFd, InheritableFlagIsUnsupportedOnWindows) {
  temp_dir dir;
  const std::string path = dir.path("sub/lock");
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED,
                            [&] { ipl::process_lock(path, IPL_OPEN_INHERITABLE); }));
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED,
                            [&] { ipl::shared_process_lock(path, IPL_OPEN_INHERITABLE); }));
  EXPECT_FALSE(std::filesystem::exists(dir.path("sub"))) << "a refused open created something";
}

// Catches: from_fd() accepted on Windows (ipl.h: IPL_E_UNSUPPORTED whatever
// fd is, after the argument checks), or a refused one that locked anything.
TEST(WrapperOpenFd, FromFdIsUnsupportedOnWindows) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock::from_fd(-1); }));
  const int fd = _open(path.c_str(), _O_RDWR | _O_CREAT | _O_BINARY, _S_IREAD | _S_IWRITE);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { ipl::process_lock::from_fd(fd); }));
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { ipl::shared_process_lock::from_fd(fd); }));
  EXPECT_EQ(third_try(path, lock_kind::exclusive), IPL_OK) << "a refused from_fd() locked it";
  _close(fd);
  EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { ipl::process_lock::from_fd(fd); }))
      << "a closed descriptor";
}

// Catches: create_mode not checked on Windows (01000 must be IPL_E_INVALID
// before anything is created), or not ignored otherwise: a file created
// with mode 0 or 0400 must still take an exclusive lock (it inherits its
// folder's ACL; ipl.h, ipl_open_mode).
TEST(WrapperOpenFd, CreateModeIsCheckedAndIgnoredOnWindows) {
  temp_dir dir;
  const std::string path = dir.path("sub/lock");
  ipl::process_lock lock(path, 0, 0);
  ipl::shared_process_lock rw(dir.path("rw.lock"), 0, 0400);
  EXPECT_TRUE(std::filesystem::is_regular_file(path));
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(third_try(path, lock_kind::shared), IPL_E_TIMEOUT);
  lock.unlock();
  ASSERT_TRUE(rw.try_lock());
  EXPECT_EQ(third_try(dir.path("rw.lock"), lock_kind::shared), IPL_E_TIMEOUT);
  rw.unlock();
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { ipl::process_lock(dir.path("x"), 0, 01000); }));
  EXPECT_FALSE(std::filesystem::exists(dir.path("x"))) << "a refused create_mode created the file";
}
#else
bool ofd_locks() { return std::string(IPL_POSIX_LOCK_KIND) == "ofd"; }

// The descriptor flags of this process's descriptor of `path` (the only one
// open), or -1 when there is none.
int descriptor_flags_of(const std::string &path) {
  struct stat wanted {};
  if (stat(path.c_str(), &wanted) != 0) return -1;
  for (int fd = 3; fd < 1024; ++fd) {
    struct stat info {};
    if (fstat(fd, &info) == 0 && info.st_dev == wanted.st_dev && info.st_ino == wanted.st_ino)
      return fcntl(fd, F_GETFD);
  }
  return -1;
}

// Catches: a wrapper that drops IPL_OPEN_INHERITABLE (the descriptor would
// stay close-on-exec) or passes it by default (every descriptor would leak
// into exec'd children); on the classic backend, anything but
// IPL_E_UNSUPPORTED. (Inheritance across exec itself: tests/test_beyond.cpp
// and the bindings' tests, with real processes.)
TEST(WrapperOpenFd, InheritableFlagReachesTheDescriptor) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  if (!ofd_locks()) {
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED,
                              [&] { ipl::process_lock(path, IPL_OPEN_INHERITABLE); }));
    return;
  }
  {
    ipl::process_lock plain(path);
    plain.lock();
    const int flags = descriptor_flags_of(path);
    ASSERT_GE(flags, 0);
    EXPECT_NE(flags & FD_CLOEXEC, 0);
  }
  ipl::shared_process_lock inheritable(path, IPL_OPEN_INHERITABLE);
  inheritable.lock_shared();
  const int flags = descriptor_flags_of(path);
  ASSERT_GE(flags, 0);
  EXPECT_EQ(flags & FD_CLOEXEC, 0);
  inheritable.unlock_shared();
}

// Catches: from_fd() locking anything but the descriptor's open file
// description (a child's lock on it would end with the child), an object
// that cannot release a lock the description held before it existed
// (unlock() would throw IPL_E_NOT_HELD and the lock would stay), remove()
// not refusing a handle without a path, errors without their status; on
// the classic backend, anything but IPL_E_UNSUPPORTED.
TEST(WrapperOpenFd, FromFdLocksTheOpenFileDescription) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [] { ipl::process_lock::from_fd(-1); }));
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  ASSERT_GE(fd, 0);
  if (!ofd_locks()) {
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { ipl::process_lock::from_fd(fd); }));
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { ipl::shared_process_lock::from_fd(fd); }));
    close(fd);
    return;
  }
  {
    ipl::process_lock lock = ipl::process_lock::from_fd(fd);
    EXPECT_EQ(lock.path(), "");
    ASSERT_TRUE(lock.try_lock());
    EXPECT_TRUE(held_by_someone(path, "from_fd lock held"));
    const ipl::query_result seen = ipl::process_lock(path).query();
    EXPECT_EQ(seen.state, ipl::lock_state::exclusive);
    EXPECT_EQ(seen.holder_pid, std::optional<std::int64_t>(getpid()));
    lock.check();
    EXPECT_TRUE(throws_status(IPL_E_UNSUPPORTED, [&] { lock.remove(); }));
    lock.unlock();
    EXPECT_TRUE(free_for_all(path, "after unlock"));
  }
  // A forked child locks the description and exits without releasing: the
  // lock is the description's, which this process still has open.
  const pid_t child = fork_running([fd] {
    ipl_lock *handle = nullptr;
    if (ipl_open_fd(fd, 0, &handle, nullptr) != IPL_OK) return 1;
    return ipl_acquire(handle, 0) == IPL_OK ? 0 : 2;  // no close: _exit
  });
  ASSERT_EQ(wait_for_child(child), 0);
  EXPECT_TRUE(held_by_someone(path, "after the child that locked the description died"));
  {
    ipl::shared_process_lock adopted = ipl::shared_process_lock::from_fd(fd);
    adopted.check();
    adopted.unlock();  // the exclusive lock the description held
  }
  EXPECT_TRUE(free_for_all(path, "after the adopted lock's unlock"));
  close(fd);
  EXPECT_TRUE(throws_status(IPL_E_OS, [&] { ipl::process_lock::from_fd(fd); }));
}

// Catches: the create_mode constructors not reaching ipl_open_mode (the
// umask would decide) and a mode above 0777 accepted.
TEST(WrapperOpenFd, CreateModeIsExactWhateverTheUmask) {
  temp_dir dir;
  const std::string path = dir.path("sub/lock");
  const mode_t old_mask = umask(077);
  ipl::process_lock lock(path, 0, 0664);
  ipl::shared_process_lock rw(dir.path("rw.lock"), 0, 0640);
  umask(old_mask);
  struct stat info {};
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0664u);
  ASSERT_EQ(stat(dir.path("rw.lock").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0640u);
  EXPECT_TRUE(throws_status(IPL_E_INVALID, [&] { ipl::process_lock(dir.path("x"), 0, 01000); }));
}
#endif  // _WIN32

}  // namespace

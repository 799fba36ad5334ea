// Tests of the C++ wrapper (include/ipl/ipl.hpp): error reporting, the
// standard lock requirements, timeout conversion, move semantics, the
// decorators, and exclusion of another process.
//
// ipl.hpp comes first so this file also proves the header compiles alone.
#include <ipl/ipl.hpp>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#ifndef _WIN32
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

// Holds the lock on args[0] in mode args[1] ("exclusive" or "shared") until
// told "release".
IPL_TEST_HELPER(wrapper_hold) {
  ipl::shared_process_lock lock(args.at(0));
  if (args.at(1) == "shared")
    lock.lock_shared();
  else
    lock.lock();
  ipltest::helper_say("locked");
  std::string line;
  if (!ipltest::helper_hear(&line) || line != "release") return 1;
  if (args.at(1) == "shared")
    lock.unlock_shared();
  else
    lock.unlock();
  ipltest::helper_say("released");
  ipltest::helper_hear(&line);  // stay until the test is done with us
  return 0;
}

// Says "waiting", blocks in process_lock::lock(), says "locked", then
// releases when told and says "released".
IPL_TEST_HELPER(wrapper_wait_lock) {
  ipl::process_lock lock(args.at(0));
  ipltest::helper_say("waiting");
  lock.lock();
  ipltest::helper_say("locked");
  std::string line;
  if (!ipltest::helper_hear(&line) || line != "release") return 1;
  lock.unlock();
  ipltest::helper_say("released");
  ipltest::helper_hear(&line);
  return 0;
}

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
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock lock(path);

  {
    child_process holder = child_process::helper("wrapper_hold", {path, "exclusive"});
    ASSERT_TRUE(holder.expect_line("locked"));
    EXPECT_FALSE(lock.try_lock());
    const auto start = steady::now();
    EXPECT_FALSE(lock.try_lock_for(100ms));
    EXPECT_GE(steady::now() - start, 100ms);
    holder.write_line("release");
    ASSERT_TRUE(holder.expect_line("released"));
    EXPECT_TRUE(lock.try_lock());
  }

  // We hold; the helper blocks in lock() until we unlock.
  child_process waiter = child_process::helper("wrapper_wait_lock", {path});
  ASSERT_TRUE(waiter.expect_line("waiting"));
  EXPECT_TRUE(waiter.silent_for(300ms)) << "the helper got the lock we hold";
  lock.unlock();
  ASSERT_TRUE(waiter.expect_line("locked"));
  EXPECT_FALSE(lock.try_lock());
  waiter.write_line("release");
  ASSERT_TRUE(waiter.expect_line("released"));
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
}

// Catches: shared_process_lock's shared mode not being the kernel's shared
// lock across processes, and a lock surviving its holder's SIGKILL.
TEST(WrapperProcess, SharedAcrossProcessesAndReleasedOnKill) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::shared_process_lock lock(path);

  child_process reader = child_process::helper("wrapper_hold", {path, "shared"});
  ASSERT_TRUE(reader.expect_line("locked"));
  EXPECT_TRUE(lock.try_lock_shared());
  lock.unlock_shared();
  EXPECT_FALSE(lock.try_lock());

  reader.send_signal(SIGKILL);
  const int status = reader.wait();
  EXPECT_EQ(ipltest::describe_status(status), -1000 - SIGKILL);
  const auto start = steady::now();
  EXPECT_TRUE(lock.try_lock_for(kBound));
  EXPECT_LT(steady::now() - start, kBound);
  lock.unlock();
}

}  // namespace

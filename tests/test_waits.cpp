// SPDX-License-Identifier: MIT
// Waiting: a try never sleeps; a timed wait keeps its deadline on the
// monotonic clock; signals never shorten or break a wait; a blocked waiter
// wakes when the holder releases or dies; the lock survives unrelated
// descriptors of its file being closed, and its descriptor never reaches an
// exec'd child.
//
// Holders and probers are real processes (lock agents, test_support.hpp); a
// crash is a SIGKILL. Every wait has a bound: a broken library fails a test,
// it never hangs the binary.
#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#ifndef _WIN32
#include <dirent.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/resource.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

#ifndef _WIN32
extern char **environ;
#endif

using namespace ipltest;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::steady_clock;

namespace {

// ---- Small tools -------------------------------------------------------------

using lock_handle = owned_lock;

int64_t nanoseconds_since(steady_clock::time_point start) {
  return std::chrono::duration_cast<nanoseconds>(steady_clock::now() - start).count();
}

constexpr int64_t kNanosPerMilli = 1000000;

#ifndef _WIN32
// The number of descriptors in `fd_dir` (/proc/self/fd or /proc/PID/fd) that
// refer to the same file (device and inode) as `path`; -1 on error.
int count_fds_on_file(const std::string &fd_dir, const std::string &path) {
  struct stat target {};
  if (stat(path.c_str(), &target) != 0) return -1;
  DIR *dir = opendir(fd_dir.c_str());
  if (!dir) return -1;
  int count = 0;
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    struct stat seen {};
    const std::string link = fd_dir + "/" + entry->d_name;
    if (stat(link.c_str(), &seen) == 0 && seen.st_dev == target.st_dev &&
        seen.st_ino == target.st_ino)
      ++count;
  }
  closedir(dir);
  return count;
}
#endif

// SIGKILLs a helper and reaps it; true when it died of that SIGKILL.
testing::AssertionResult kill_and_reap(child_process &child) {
  child.send_signal(SIGKILL);
  const int status = child.wait(kBound);
  if (describe_status(status) == -1000 - SIGKILL) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "helper did not die of SIGKILL: status " << describe_status(status);
}

// Makes timed waits poll for one test (ipl_set_wait_signal(0)), then puts
// back the wait signal the process had, so both of libipl's timed-wait
// mechanisms — the kernel wait ended by a timer signal, and the polling
// fallback — face the same checks.
class polling_timed_waits {
 public:
  polling_timed_waits() : previous_signal_(ipl_wait_signal()) {
    const int status = ipl_set_wait_signal(0);
    EXPECT_EQ(status, IPL_OK) << "ipl_set_wait_signal(0): " << status_text(status);
    EXPECT_EQ(ipl_wait_signal(), 0);
  }
  ~polling_timed_waits() { ipl_set_wait_signal(previous_signal_); }
  polling_timed_waits(const polling_timed_waits &) = delete;
  polling_timed_waits &operator=(const polling_timed_waits &) = delete;

 private:
  int previous_signal_;
};

// ---- Signal storms -----------------------------------------------------------

std::atomic<int> storm_signals_handled{0};

#ifndef _WIN32
void count_storm_signal(int) {
  storm_signals_handled.fetch_add(1, std::memory_order_relaxed);
}
#endif

enum class signal_storm { none, without_restart, with_restart };

// One acquire call on a handle of its own, made on a thread of its own, so
// the test can watch it block. Optionally, another thread sends the waiting
// thread SIGUSR1 every ~100 µs for as long as this object lives, with a
// counting handler installed (with or without SA_RESTART). Windows has no
// signals to storm with: there only signal_storm::none is used.
//
// If the call never returns (a bug), the destructor leaves the thread behind
// with its handle and the handler, instead of hanging the test binary or
// letting a late signal kill it.
class background_acquire {
 public:
  background_acquire(const std::string &path, lock_mode mode, int64_t timeout_ms,
                     signal_storm storm = signal_storm::none)
      : state_(std::make_shared<shared_state>()), storm_(storm) {
    const int open_status = ipl_open(path.c_str(), 0, &state_->lock);
    if (open_status != IPL_OK) {
      state_->status = open_status;
      state_->done = true;
      return;
    }
#ifndef _WIN32
    if (storm_ != signal_storm::none) {
      struct sigaction action {};
      action.sa_handler = count_storm_signal;
      sigemptyset(&action.sa_mask);
      action.sa_flags = storm_ == signal_storm::with_restart ? SA_RESTART : 0;
      sigaction(SIGUSR1, &action, &previous_action_);
      signals_at_start_ = storm_signals_handled.load();
    }
#endif
    std::shared_ptr<shared_state> state = state_;
    waiter_ = std::thread([state, mode, timeout_ms] {
      const steady_clock::time_point start = steady_clock::now();
      const int status = acquire_in_mode(state->lock, mode, timeout_ms);
      const int64_t elapsed = nanoseconds_since(start);
      std::lock_guard<std::mutex> guard(state->mutex);
      state->status = status;
      state->elapsed_ns = elapsed;
      state->done = true;
      state->finished.notify_all();
    });
#ifndef _WIN32
    if (storm_ != signal_storm::none) {
      const pthread_t target = waiter_.native_handle();
      sender_ = std::thread([this, target] {
        while (!stop_sending_.load()) {
          pthread_kill(target, SIGUSR1);
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
      });
    }
#endif
  }

  background_acquire(const background_acquire &) = delete;
  background_acquire &operator=(const background_acquire &) = delete;

  ~background_acquire() {
    stop_storm();
    if (!waiter_.joinable()) return;  // ipl_open failed: nothing to undo
    if (!finished_within(milliseconds(0))) {
      waiter_.detach();  // stuck: the call may still use its handle and handler
      return;
    }
    waiter_.join();
    ipl_close(state_->lock);
#ifndef _WIN32
    // The only target of the storm is gone, so no signal can still be pending.
    if (storm_ != signal_storm::none) sigaction(SIGUSR1, &previous_action_, nullptr);
#endif
  }

  // True when the acquire call has returned, waiting for it at most `bound`.
  bool finished_within(milliseconds bound) {
    std::unique_lock<std::mutex> guard(state_->mutex);
    return state_->finished.wait_for(guard, bound, [this] { return state_->done; });
  }

  // Stops sending signals (the handler stays until destruction).
  void stop_storm() {
    if (!sender_.joinable()) return;
    stop_sending_.store(true);
    sender_.join();
  }

  int status() {
    std::lock_guard<std::mutex> guard(state_->mutex);
    return state_->status;
  }
  int64_t elapsed_ns() {
    std::lock_guard<std::mutex> guard(state_->mutex);
    return state_->elapsed_ns;
  }
  // Signals the storm's handler has run since this object started it.
  int signals_handled() const { return storm_signals_handled.load() - signals_at_start_; }

 private:
  struct shared_state {
    ipl_lock *lock = nullptr;
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    int status = 1;  // not a status libipl returns
    int64_t elapsed_ns = 0;
  };

  std::shared_ptr<shared_state> state_;
  signal_storm storm_;
#ifndef _WIN32
  struct sigaction previous_action_ {};
#endif
  int signals_at_start_ = 0;
  std::atomic<bool> stop_sending_{false};
  std::thread waiter_;
  std::thread sender_;
};

}  // namespace

// ---- Helper processes ----------------------------------------------------------

#ifndef _WIN32
// args: PATH. Takes the exclusive lock, then starts a long-lived program
// (`sleep 30`) and says "locked PID"; waits to be killed.
IPL_TEST_HELPER(wait_hold_and_spawn) {
  if (args.size() != 1) return 2;
  ipl_lock *lock = nullptr;
  int status = ipl_open(args[0].c_str(), 0, &lock);
  if (status == IPL_OK) status = ipl_acquire(lock, 0);
  if (status != IPL_OK) {
    helper_say("error " + status_text(status));
    ipl_close(lock);
    return 1;
  }
  // The grandchild must not keep our stdout pipe open, nor read our stdin.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  char program[] = "sleep";
  char seconds[] = "30";
  char *argv[] = {program, seconds, nullptr};
  pid_t grandchild = -1;
  const int spawn_error = posix_spawnp(&grandchild, program, &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    helper_say(std::string("error spawn ") + strerror(spawn_error));
    ipl_close(lock);
    return 1;
  }
  helper_say("locked " + std::to_string(grandchild));
  std::string ignored;
  while (helper_hear(&ignored)) {
  }
  ipl_close(lock);
  return 0;
}

// args: PATH. Says "lock-file-fds N self-check M": N descriptors of this
// freshly exec'd process refer to PATH's file; M is the count after opening
// it once itself (so 1 shows the scan can see such a descriptor).
IPL_TEST_HELPER(wait_scan_fds) {
  if (args.size() != 1) return 2;
  const int inherited = count_fds_on_file("/proc/self/fd", args[0]);
  const int fd = open(args[0].c_str(), O_RDONLY);
  const int with_own = count_fds_on_file("/proc/self/fd", args[0]);
  if (fd >= 0) close(fd);
  helper_say("lock-file-fds " + std::to_string(inherited) + " self-check " +
             std::to_string(with_own - inherited));
  return 0;
}
#else
// args: PATH. Says "lock-file-fds N self-check M": N handles of this freshly
// started process refer to PATH's file; M is the count after opening it once
// itself (so 1 shows the scan can see such a handle).
IPL_TEST_HELPER(wait_scan_fds) {
  if (args.size() != 1) return 2;
  const int inherited = count_handles_on_file(args[0]);
  std::ifstream own(args[0].c_str());
  const int with_own = count_handles_on_file(args[0]);
  helper_say("lock-file-fds " + std::to_string(inherited) + " self-check " +
             std::to_string(with_own - inherited));
  return 0;
}
#endif

// ---- 1. Try never sleeps ---------------------------------------------------------

namespace {

struct try_burst_result {
  int calls = 0;
  int not_timeout = 0;         // calls that did not return IPL_E_TIMEOUT
  int first_unexpected = 0;    // the first such status
  long voluntary_switches = 0;  // of the calling thread, during the burst
  int64_t elapsed_ns = 0;
};

// 200 try calls on a lock held elsewhere, after one warm-up call outside the
// measurement (first-call costs such as lazy binding are not the property).
try_burst_result run_try_burst(ipl_lock *lock, lock_mode mode) {
  constexpr int kCalls = 200;
  int statuses[kCalls];
  try_burst_result result;
  result.calls = kCalls;
  const int warm_up = acquire_in_mode(lock, mode, 0);
  if (warm_up != IPL_E_TIMEOUT) {
    result.not_timeout = 1;
    result.first_unexpected = warm_up;
  }
#ifndef _WIN32
  rusage before {};
  rusage after {};
  getrusage(RUSAGE_THREAD, &before);
#endif
  const steady_clock::time_point start = steady_clock::now();
  for (int i = 0; i < kCalls; ++i) statuses[i] = acquire_in_mode(lock, mode, 0);
  result.elapsed_ns = nanoseconds_since(start);
#ifndef _WIN32
  getrusage(RUSAGE_THREAD, &after);
  result.voluntary_switches = after.ru_nvcsw - before.ru_nvcsw;
#endif
  for (int status : statuses) {
    if (status == IPL_E_TIMEOUT) continue;
    if (result.not_timeout++ == 0) result.first_unexpected = status;
  }
  return result;
}

// Checks a burst: every call IPL_E_TIMEOUT, and not one voluntary context
// switch. The thread only sleeps (switches voluntarily) when it blocks; a
// non-blocking fcntl on a held lock never does, so the count must be exactly
// 0 — measured stable under load on Linux 6.x. Involuntary switches
// (preemption on a busy machine) are counted apart and are allowed. The
// elapsed bound (2 s for 200 calls) only catches a spin of >= 10 ms per try.
// Windows keeps no per-thread count of voluntary switches: there the
// statuses and the elapsed bound are the check.
void expect_try_never_sleeps(ipl_lock *lock, lock_mode mode, const char *what) {
  const try_burst_result burst = run_try_burst(lock, mode);
  EXPECT_EQ(burst.not_timeout, 0)
      << what << ": first unexpected status " << status_text(burst.first_unexpected);
  EXPECT_EQ(burst.voluntary_switches, 0)
      << what << ": the thread slept during " << burst.calls << " try calls";
  EXPECT_LT(burst.elapsed_ns, 2000 * kNanosPerMilli)
      << what << ": " << burst.calls << " try calls took "
      << burst.elapsed_ns / kNanosPerMilli << " ms";
}

}  // namespace

// Catches: a try (timeout 0) that polls with a sleep, waits on a timer, or
// blocks in the kernel before giving up, when another process holds the lock.
TEST(WaitTry, NeverSleepsWhenAnotherProcessHoldsExclusive) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  expect_try_never_sleeps(lock.get(), lock_mode::exclusive, "ipl_acquire vs exclusive");
  expect_try_never_sleeps(lock.get(), lock_mode::shared, "ipl_acquire_read vs exclusive");
}

// Catches: the same for an exclusive try on a shared-held lock.
TEST(WaitTry, NeverSleepsWhenAnotherProcessHoldsShared) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::shared));
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  expect_try_never_sleeps(lock.get(), lock_mode::exclusive, "ipl_acquire vs shared");
}

// Catches: a try that sleeps or blocks (e.g. on an in-process condition or
// inode-table wait) when the holder is another handle of this very process.
TEST(WaitTry, NeverSleepsWhenAnotherHandleHoldsIt) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_handle holder = open_owned_lock(path);
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(holder && lock);
  ASSERT_EQ(ipl_acquire(holder.get(), 0), IPL_OK);
  expect_try_never_sleeps(lock.get(), lock_mode::exclusive, "ipl_acquire vs handle exclusive");
  expect_try_never_sleeps(lock.get(), lock_mode::shared, "ipl_acquire_read vs handle exclusive");
  ASSERT_EQ(ipl_release(holder.get()), IPL_OK);
  ASSERT_EQ(ipl_acquire_read(holder.get(), 0), IPL_OK);
  expect_try_never_sleeps(lock.get(), lock_mode::exclusive, "ipl_acquire vs handle shared");
}

// ---- 2. Timed waits --------------------------------------------------------------

namespace {

// A timed acquire on a held lock: IPL_E_TIMEOUT, never before `timeout_ms`
// has passed on the monotonic clock (exact), and not much after (+2 s).
void expect_times_out_on_time(ipl_lock *lock, lock_mode mode, int64_t timeout_ms) {
  const steady_clock::time_point start = steady_clock::now();
  const int status = acquire_in_mode(lock, mode, timeout_ms);
  const int64_t elapsed_ns = nanoseconds_since(start);
  const int64_t timeout_ns = timeout_ms * kNanosPerMilli;
  EXPECT_EQ(status, IPL_E_TIMEOUT)
      << mode_name(mode) << " wait of " << timeout_ms << " ms: " << status_text(status);
  EXPECT_GE(elapsed_ns, timeout_ns)
      << mode_name(mode) << " wait of " << timeout_ms << " ms returned after only "
      << elapsed_ns << " ns";
  EXPECT_LE(elapsed_ns, timeout_ns + 2000 * kNanosPerMilli)
      << mode_name(mode) << " wait of " << timeout_ms << " ms took "
      << elapsed_ns / kNanosPerMilli << " ms";
}

// 20 waits of 1 ms (a deadline rounded to whole milliseconds comes early in
// almost every one), then one each of 50 and 300 ms.
void expect_times_out_on_time_repeatedly(ipl_lock *lock, lock_mode mode) {
  for (int i = 0; i < 20; ++i) expect_times_out_on_time(lock, mode, 1);
  expect_times_out_on_time(lock, mode, 50);
  expect_times_out_on_time(lock, mode, 300);
}

void check_times_out_when_another_process_holds(lock_mode held) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(held));
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  expect_times_out_on_time_repeatedly(lock.get(), lock_mode::exclusive);
  if (held == lock_mode::exclusive) expect_times_out_on_time_repeatedly(lock.get(), lock_mode::shared);
}

void check_times_out_when_another_handle_holds() {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_handle holder = open_owned_lock(path);
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(holder && lock);
  ASSERT_EQ(ipl_acquire(holder.get(), 0), IPL_OK);
  expect_times_out_on_time_repeatedly(lock.get(), lock_mode::exclusive);
  expect_times_out_on_time_repeatedly(lock.get(), lock_mode::shared);
}

void check_gets_lock_when_holder_releases_mid_wait() {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  holder.start_release(lock_mode::exclusive, milliseconds(200));
  const steady_clock::time_point start = steady_clock::now();
  const int status = ipl_acquire(lock.get(), 5000);
  const int64_t elapsed_ns = nanoseconds_since(start);
  EXPECT_EQ(status, IPL_OK) << status_text(status);
  // 200 ms of holding plus a generous margin, still well before the 5 s.
  EXPECT_LT(elapsed_ns, 3000 * kNanosPerMilli)
      << "took " << elapsed_ns / kNanosPerMilli << " ms";
  // It got the lock because the holder released it, not behind its back.
  EXPECT_EQ(holder.reply(), IPL_OK);
}

#ifndef _WIN32
// Voluntary context switches of this thread during one 300 ms timed wait
// that times out on a lock another process holds.
long voluntary_switches_during_timed_wait(const std::string &path) {
  lock_handle lock = open_owned_lock(path);
  if (!lock) return -1;
  rusage before {};
  rusage after {};
  getrusage(RUSAGE_THREAD, &before);
  const int status = ipl_acquire(lock.get(), 300);
  getrusage(RUSAGE_THREAD, &after);
  EXPECT_EQ(status, IPL_E_TIMEOUT) << status_text(status);
  return after.ru_nvcsw - before.ru_nvcsw;
}
#endif

}  // namespace

// Catches: a deadline on the wall clock or rounded to whole ms (returning
// early), a timed wait treated as a try, or one that ignores its timeout.
TEST(WaitTimed, TimesOutOnTimeWhenAnotherProcessHolds) {
  check_times_out_when_another_process_holds(lock_mode::exclusive);
}

// Catches: the same in the polling fallback (e.g. one that gives up when
// the next back-off sleep would pass the deadline).
TEST(WaitTimed, TimesOutOnTimeWhenAnotherProcessHoldsPolling) {
  polling_timed_waits polling;
  check_times_out_when_another_process_holds(lock_mode::exclusive);
}

// Catches: the same on a shared-held lock (exclusive waiter).
TEST(WaitTimed, TimesOutOnTimeWhenAnotherProcessHoldsShared) {
  check_times_out_when_another_process_holds(lock_mode::shared);
}

// Catches: a wrong deadline in the in-process wait path (the only path for
// two handles of one process in the classic-fcntl build).
TEST(WaitTimed, TimesOutOnTimeWhenAnotherHandleHolds) {
  check_times_out_when_another_handle_holds();
}

// Catches: the same with timed waits polling.
TEST(WaitTimed, TimesOutOnTimeWhenAnotherHandleHoldsPolling) {
  polling_timed_waits polling;
  check_times_out_when_another_handle_holds();
}

// Catches: a timed wait that only checks again at its deadline (or never),
// instead of taking the lock once the holder lets go.
TEST(WaitTimed, GetsTheLockWhenTheHolderReleasesMidWait) {
  check_gets_lock_when_holder_releases_mid_wait();
}

// Catches: the same in the polling fallback (e.g. a back-off that grows
// without a cap).
TEST(WaitTimed, GetsTheLockWhenTheHolderReleasesMidWaitPolling) {
  polling_timed_waits polling;
  check_gets_lock_when_holder_releases_mid_wait();
}

#ifndef _WIN32
// Catches: timed waits that poll although the kernel-wait mechanism is on
// (ipl_wait_signal() != 0). A kernel wait sleeps once or a few times in
// 300 ms (the timer's signal ends it); polling with a back-off capped at
// 10 ms sleeps ~40 times. The polling run is the control that shows the
// count tells the two apart.
TEST(WaitTimed, SleepsInTheKernelNotPolling) {
  if (ipl_wait_signal() == 0) {
    const char *configured = getenv("IPL_WAIT_SIGNAL");
    ASSERT_NE(configured, nullptr)
        << "Linux timed waits should use a wait signal unless IPL_WAIT_SIGNAL "
           "turns it off";
    GTEST_SKIP() << "IPL_WAIT_SIGNAL=" << configured << " turned the wait signal off";
  }
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  const long kernel_switches = voluntary_switches_during_timed_wait(path);
  EXPECT_GE(kernel_switches, 0);
  EXPECT_LE(kernel_switches, 10) << "the timed wait woke up repeatedly";
  {
    polling_timed_waits polling;
    const long polling_switches = voluntary_switches_during_timed_wait(path);
    EXPECT_GT(polling_switches, 10) << "control: the polling fallback should wake often";
  }
}

// ---- 3. Signal storms ------------------------------------------------------------

namespace {

// (a) A 500 ms wait under a storm: IPL_E_TIMEOUT, not one ns early.
void check_timed_wait_times_out_in_storm(signal_storm storm) {
  if (kThreadSanitizer)
    GTEST_SKIP() << "ThreadSanitizer defers signal handlers while a thread is blocked in fcntl()";
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  background_acquire waiter(path, lock_mode::exclusive, 500, storm);
  ASSERT_TRUE(waiter.finished_within(milliseconds(500) + kBound));
  waiter.stop_storm();
  EXPECT_EQ(waiter.status(), IPL_E_TIMEOUT) << status_text(waiter.status());
  EXPECT_GE(waiter.elapsed_ns(), 500 * kNanosPerMilli)
      << "returned after only " << waiter.elapsed_ns() << " ns";
  EXPECT_LE(waiter.elapsed_ns(), 2500 * kNanosPerMilli)
      << "took " << waiter.elapsed_ns() / kNanosPerMilli << " ms";
  // The storm really reached the waiting thread.
  EXPECT_GE(waiter.signals_handled(), 20);
}

// (b), (c) A forever (or long timed) wait under a storm keeps waiting while
// the lock is held, and gets it once the holder releases.
void check_wait_survives_storm_until_release(signal_storm storm, int64_t timeout_ms) {
  if (kThreadSanitizer)
    GTEST_SKIP() << "ThreadSanitizer defers signal handlers while a thread is blocked in fcntl()";
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(lock_mode::exclusive));
  background_acquire waiter(path, lock_mode::exclusive, timeout_ms, storm);
  EXPECT_FALSE(waiter.finished_within(milliseconds(300)))
      << "returned while the lock was held: " << status_text(waiter.status());
  EXPECT_GE(waiter.signals_handled(), 20) << "the storm did not reach the waiter";
  EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
  ASSERT_TRUE(waiter.finished_within(kBound)) << "still waiting after the release";
  waiter.stop_storm();
  EXPECT_EQ(waiter.status(), IPL_OK) << status_text(waiter.status());
}

}  // namespace

// Catches: EINTR from an interrupted kernel wait (or sleep) returned as an
// error or as an early timeout, or a deadline restarted after each signal.
TEST(WaitSignalStorm, TimedWaitTimesOutOnTimeWithoutRestart) {
  check_timed_wait_times_out_in_storm(signal_storm::without_restart);
}

// Catches: the same with SA_RESTART (a wait that only copes with one kind).
TEST(WaitSignalStorm, TimedWaitTimesOutOnTimeWithRestart) {
  check_timed_wait_times_out_in_storm(signal_storm::with_restart);
}

// Catches: a forever wait that returns (with an error or, worse, "OK"
// without the lock) when a signal interrupts it.
TEST(WaitSignalStorm, ForeverWaitKeepsWaitingThenGetsLockWithoutRestart) {
  check_wait_survives_storm_until_release(signal_storm::without_restart, IPL_WAIT_FOREVER);
}

// Catches: the same with SA_RESTART.
TEST(WaitSignalStorm, ForeverWaitKeepsWaitingThenGetsLockWithRestart) {
  check_wait_survives_storm_until_release(signal_storm::with_restart, IPL_WAIT_FOREVER);
}

// Catches: a timed wait that breaks on a signal or misses the release while
// it re-arms after signals.
TEST(WaitSignalStorm, TimedWaitGetsLockMidStormWithoutRestart) {
  check_wait_survives_storm_until_release(signal_storm::without_restart, 60000);
}

// Catches: the same with SA_RESTART.
TEST(WaitSignalStorm, TimedWaitGetsLockMidStormWithRestart) {
  check_wait_survives_storm_until_release(signal_storm::with_restart, 60000);
}

// Catches: a polling fallback whose sleep, cut short by a signal, is
// mistaken for the deadline (early timeout) or restarts the whole wait.
TEST(WaitSignalStorm, TimedWaitTimesOutOnTimeWithoutRestartPolling) {
  polling_timed_waits polling;
  check_timed_wait_times_out_in_storm(signal_storm::without_restart);
}

// Catches: a polling fallback that gives up on EINTR mid-wait.
TEST(WaitSignalStorm, TimedWaitGetsLockMidStormWithoutRestartPolling) {
  polling_timed_waits polling;
  check_wait_survives_storm_until_release(signal_storm::without_restart, 60000);
}
#endif  // !_WIN32: the kernel-wait count and the signal storms

// ---- 4. Forever blocks until free --------------------------------------------------

namespace {

void check_forever_blocks_until_release(lock_mode holder_mode, lock_mode waiter_mode) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(holder_mode));
  background_acquire waiter(path, waiter_mode, IPL_WAIT_FOREVER);
  EXPECT_FALSE(waiter.finished_within(milliseconds(300)))
      << "returned while the lock was held: " << status_text(waiter.status());
  EXPECT_EQ(holder.release(holder_mode), IPL_OK);
  ASSERT_TRUE(waiter.finished_within(kBound)) << "still waiting after the release";
  EXPECT_EQ(waiter.status(), IPL_OK) << status_text(waiter.status());
}

}  // namespace

// Catches: IPL_WAIT_FOREVER treated as a try (or as an error / a short
// timeout), or a waiter that never wakes after the release.
TEST(WaitForever, ExclusiveBlocksUntilExclusiveHolderReleases) {
  check_forever_blocks_until_release(lock_mode::exclusive, lock_mode::exclusive);
}

// Catches: the same for a reader waiting on a writer.
TEST(WaitForever, SharedBlocksUntilExclusiveHolderReleases) {
  check_forever_blocks_until_release(lock_mode::exclusive, lock_mode::shared);
}

// Catches: the same for a writer waiting on a reader.
TEST(WaitForever, ExclusiveBlocksUntilSharedHolderReleases) {
  check_forever_blocks_until_release(lock_mode::shared, lock_mode::exclusive);
}

// ---- 5. Crash release ------------------------------------------------------------

namespace {

// A waiter already blocked when the holder is SIGKILLed gets the lock.
void check_blocked_waiter_gets_lock_after_crash(lock_mode holder_mode, int64_t timeout_ms) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(holder_mode));
  background_acquire waiter(path, lock_mode::exclusive, timeout_ms);
  EXPECT_FALSE(waiter.finished_within(milliseconds(200)))
      << "returned while the lock was held: " << status_text(waiter.status());
  ASSERT_TRUE(kill_and_reap(holder.process()));
  ASSERT_TRUE(waiter.finished_within(kBound)) << "still waiting after the holder died";
  EXPECT_EQ(waiter.status(), IPL_OK) << status_text(waiter.status());
}

// Right after the SIGKILLed holder is reaped, one try succeeds.
void check_try_succeeds_after_crash(lock_mode holder_mode) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.hold(holder_mode));
  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(ipl_acquire(lock.get(), 0), IPL_E_TIMEOUT) << "the holder's lock is not seen";
  ASSERT_TRUE(kill_and_reap(holder.process()));
  const int status = ipl_acquire(lock.get(), 0);
  EXPECT_EQ(status, IPL_OK) << status_text(status);
}

}  // namespace

// Catches: a lock that outlives its killed holder (e.g. a lock file with a
// pid in it, or state kept anywhere but in the kernel), or a waiter that
// does not notice the kernel's release.
TEST(WaitCrashRelease, ForeverWaiterGetsExclusiveLockOfKilledHolder) {
  check_blocked_waiter_gets_lock_after_crash(lock_mode::exclusive, IPL_WAIT_FOREVER);
}

// Catches: the same for a timed waiter (e.g. one polling at a fixed interval
// that misses the release, or one whose timer was lost).
TEST(WaitCrashRelease, TimedWaiterGetsExclusiveLockOfKilledHolder) {
  check_blocked_waiter_gets_lock_after_crash(lock_mode::exclusive, 60000);
}

// Catches: the same in the polling fallback.
TEST(WaitCrashRelease, TimedWaiterGetsExclusiveLockOfKilledHolderPolling) {
  polling_timed_waits polling;
  check_blocked_waiter_gets_lock_after_crash(lock_mode::exclusive, 60000);
}

// Catches: the same when the killed holder held a shared lock.
TEST(WaitCrashRelease, ForeverWaiterGetsSharedLockOfKilledHolder) {
  check_blocked_waiter_gets_lock_after_crash(lock_mode::shared, IPL_WAIT_FOREVER);
}

// Catches: the same, timed.
TEST(WaitCrashRelease, TimedWaiterGetsSharedLockOfKilledHolder) {
  check_blocked_waiter_gets_lock_after_crash(lock_mode::shared, 60000);
}

// Catches: a lock released lazily or by a clean-up the killed holder never ran.
TEST(WaitCrashRelease, TryRightAfterReapingSucceedsExclusive) {
  check_try_succeeds_after_crash(lock_mode::exclusive);
}

// Catches: the same for a shared holder.
TEST(WaitCrashRelease, TryRightAfterReapingSucceedsShared) {
  check_try_succeeds_after_crash(lock_mode::shared);
}

// ---- 6. Descriptors ----------------------------------------------------------------

// Catches: (classic build) a handle close that close()s its descriptor while
// another handle of the process holds a lock on the same inode — POSIX drops
// the process's locks on that file at the first close — or a release by one
// handle that unlocks the whole process's lock.
TEST(WaitDescriptors, OtherHandlesOpenedAndClosedKeepTheLock) {
  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(std::string("held ") + mode_name(held));
    temp_dir dir;
    const std::string path = dir.path("lock");
    const std::string alias = dir.path("alias");
    lock_handle opened_before = open_owned_lock(path);
    lock_handle holder = open_owned_lock(path);
    ASSERT_TRUE(opened_before && holder);
    ASSERT_EQ(acquire_in_mode(holder.get(), held, 0), IPL_OK);
    ASSERT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);

    opened_before.reset();
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after closing a handle opened before the lock was taken";

    open_owned_lock(path).reset();
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after opening and closing another handle";

    {
      lock_handle other = open_owned_lock(path);
      ASSERT_TRUE(other);
      EXPECT_EQ(ipl_acquire(other.get(), 0), IPL_E_TIMEOUT);
    }
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after a failed exclusive try on another handle, then its close";

    if (held == lock_mode::shared) {
      // A second reader in the process comes and goes.
      lock_handle reader = open_owned_lock(path);
      ASSERT_TRUE(reader);
      EXPECT_EQ(ipl_acquire_read(reader.get(), 0), IPL_OK);
      EXPECT_EQ(ipl_release_read(reader.get()), IPL_OK);
      EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
          << "after another handle took and released a shared lock";
      EXPECT_EQ(ipl_acquire_read(reader.get(), 0), IPL_OK);
      reader.reset();
      EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
          << "after another handle was closed while holding a shared lock";
    }

#ifndef _WIN32
    // The same file under another name (a hard link): same inode.
    ASSERT_EQ(link(path.c_str(), alias.c_str()), 0) << strerror(errno);
    open_owned_lock(alias).reset();
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after opening and closing a handle on a hard link of the file";
#endif

    // Control: the prober does see the lock go.
    ASSERT_EQ(release_in_mode(holder.get(), held), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  }
}

#ifndef _WIN32
// Catches: (OFD build) a lock owned by the process rather than by the handle's
// open file description, which any close() of the file drops.
TEST(WaitDescriptors, UnrelatedCloseBehindTheLibrarysBackKeepsTheLock) {
  if (std::string(IPL_POSIX_LOCK_KIND) == "classic")
    GTEST_SKIP() << "classic fcntl locks belong to the process, and POSIX drops "
                    "them all when any descriptor of the file is closed; only "
                    "OFD locks survive a close() the library cannot see";
  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(std::string("held ") + mode_name(held));
    temp_dir dir;
    const std::string path = dir.path("lock");
    const std::string alias = dir.path("alias");
    lock_handle holder = open_owned_lock(path);
    ASSERT_TRUE(holder);
    ASSERT_EQ(acquire_in_mode(holder.get(), held, 0), IPL_OK);
    ASSERT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);

    for (int flags : {O_RDONLY, O_RDWR}) {
      const int fd = open(path.c_str(), flags | O_CLOEXEC);
      ASSERT_GE(fd, 0) << strerror(errno);
      ASSERT_EQ(close(fd), 0);
      EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
          << "after open()+close() with flags " << flags;
    }

    FILE *stream = fopen(path.c_str(), "re");
    ASSERT_NE(stream, nullptr) << strerror(errno);
    ASSERT_EQ(fclose(stream), 0);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after fopen()+fclose()";

    ASSERT_EQ(link(path.c_str(), alias.c_str()), 0) << strerror(errno);
    const int alias_fd = open(alias.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(alias_fd, 0) << strerror(errno);
    ASSERT_EQ(close(alias_fd), 0);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "after open()+close() of a hard link of the file";

    // Control: the prober does see the lock go.
    ASSERT_EQ(release_in_mode(holder.get(), held), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  }
}

// Catches: a lock descriptor without O_CLOEXEC. The holder starts a
// long-lived program and is then SIGKILLed: with a leaked descriptor the
// program would share the open file description, and the OFD lock with it,
// so the lock would stay held by nobody who knows it.
TEST(WaitDescriptors, LockDiesWithHolderWhileItsExecdChildLivesOn) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  child_process holder = child_process::helper("wait_hold_and_spawn", {path});
  std::string line;
  ASSERT_TRUE(holder.read_line(&line)) << "no answer from the holder";
  const std::string prefix = "locked ";
  ASSERT_EQ(line.compare(0, prefix.size(), prefix), 0) << line;
  const pid_t grandchild = pid_t(std::stol(line.substr(prefix.size())));
  ASSERT_GT(grandchild, 0);
  // Kill the grandchild whatever happens below.
  struct grandchild_killer {
    pid_t pid;
    ~grandchild_killer() {
      if (pid > 0) kill(pid, SIGKILL);
    }
  } killer{grandchild};

  lock_handle lock = open_owned_lock(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(ipl_acquire(lock.get(), 0), IPL_E_TIMEOUT) << "the holder's lock is not seen";
  EXPECT_EQ(count_fds_on_file("/proc/" + std::to_string(grandchild) + "/fd", path), 0)
      << "the exec'd grandchild has a descriptor of the lock file";

  ASSERT_TRUE(kill_and_reap(holder));
  ASSERT_EQ(kill(grandchild, 0), 0) << "the grandchild must outlive the holder";
  const int status = ipl_acquire(lock.get(), 0);
  EXPECT_EQ(status, IPL_OK) << "the lock outlived its holder: " << status_text(status);
}
#endif  // !_WIN32

// Catches: a lock descriptor (opened by ipl_open, or a second one opened to
// lock) that reaches a child started while the lock is held. On Windows: an
// inheritable lock handle (child_process starts helpers with
// CreateProcessW(bInheritHandles = TRUE)); Wine drops a dead process's locks
// anyway, so only the handle scan shows such a leak there.
TEST(WaitDescriptors, ExecdChildHasNoLockDescriptor) {
  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(std::string("held ") + mode_name(held));
    temp_dir dir;
    const std::string path = dir.path("lock");
    lock_handle lock = open_owned_lock(path);
    ASSERT_TRUE(lock);
    ASSERT_EQ(acquire_in_mode(lock.get(), held, 0), IPL_OK);
    child_process scanner = child_process::helper("wait_scan_fds", {path});
    std::string got;
    EXPECT_TRUE(scanner.expect_line("lock-file-fds 0 self-check 1", kBound, &got))
        << "the scanner said \"" << got << "\"";
    EXPECT_EQ(describe_status(scanner.wait()), 0);
  }
}

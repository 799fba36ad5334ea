// SPDX-License-Identifier: MIT
// Conflict* and Stress* tests: who excludes whom, between handles of one
// thread, threads, and processes; misuse of a handle (re-acquire, releasing
// what it does not hold); ipl_close; one handle shared by many threads; and a
// multi-process, multi-thread stress run over a data file.
//
// Vocabulary: the "held" mode is the lock some handle already holds, the
// "wanted" mode is what another handle (or the same one, for misuse) asks for.
// ipl_acquire and ipl_acquire_write are distinct entry points of one mode, so
// the tables below list them separately to prove they behave the same.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ipl/ipl.h"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using ipltest::acquire_in_mode;
using ipltest::child_process;
using ipltest::kAllModes;
using ipltest::kBound;
using ipltest::kNoReply;
using ipltest::lock_agent;
using ipltest::lock_mode;
using ipltest::mode_name;
using ipltest::modes_conflict;
using ipltest::release_in_mode;
using ipltest::temp_dir;
using steady = std::chrono::steady_clock;

// How long a blocked waiter must stay blocked while the conflicting lock is
// still held. A negative check, so it can only be a window, not a handshake.
constexpr auto kStaysBlocked = 200ms;
// "Returned at once" on a noisy 2-core machine: generous on purpose.
constexpr auto kPrompt = 2000ms;

// ---- Handles ------------------------------------------------------------------

// Handles are shared_ptrs so a thread that hangs (and is detached, see
// bounded_thread) keeps its handle alive instead of using a freed one.
using handle = std::shared_ptr<ipl_lock>;

handle open_handle(const std::string &path) {
  ipl_lock *lock = nullptr;
  const int status = ipl_open(path.c_str(), 0, &lock);
  if (status != IPL_OK) {
    ADD_FAILURE() << "ipl_open(" << path << ") = " << status << " (" << ipl_strerror(status)
                  << ")";
    return nullptr;
  }
  return handle(lock, [](ipl_lock *l) { ipl_close(l); });
}

// ---- Threads with a bounded join ------------------------------------------------

// Runs `body` on a thread of its own; its int result can be waited for with
// a bound. A thread still running when this object dies is detached, not
// joined, so a hang in the library fails the test instead of hanging it.
class bounded_thread {
 public:
  explicit bounded_thread(std::function<int()> body) : state_(std::make_shared<state>()) {
    thread_ = std::thread([st = state_, body = std::move(body)] {
      const int result = body();
      std::lock_guard<std::mutex> guard(st->mutex);
      st->result = result;
      st->done = true;
      st->done_changed.notify_all();
    });
  }
  bounded_thread(const bounded_thread &) = delete;
  bounded_thread &operator=(const bounded_thread &) = delete;

  ~bounded_thread() {
    if (!thread_.joinable()) return;
    if (result_within(0ms).has_value())
      thread_.join();
    else
      thread_.detach();
  }

  // The body's result, or nothing if it has not returned within `bound`.
  std::optional<int> result_within(std::chrono::milliseconds bound) {
    std::unique_lock<std::mutex> guard(state_->mutex);
    if (!state_->done_changed.wait_for(guard, bound, [&] { return state_->done; }))
      return std::nullopt;
    return state_->result;
  }

  // True when the body is still running after `window` (a negative check).
  bool still_running_after(std::chrono::milliseconds window) {
    return !result_within(window).has_value();
  }

 private:
  struct state {
    std::mutex mutex;
    std::condition_variable done_changed;
    bool done = false;
    int result = 0;
  };
  std::shared_ptr<state> state_;
  std::thread thread_;
};

// ---- What others see ---------------------------------------------------------------

struct try_results {
  int exclusive = kNoReply;
  int shared = kNoReply;
};

// Tries both modes (timeout 0) from a fresh handle in this process,
// releasing whatever it gets.
try_results try_both_modes_here(const std::string &path) {
  try_results results;
  handle probe = open_handle(path);
  if (!probe) return results;
  results.exclusive = ipl_acquire(probe.get(), 0);
  if (results.exclusive == IPL_OK) {
    EXPECT_EQ(ipl_release(probe.get()), IPL_OK);
  }
  results.shared = ipl_acquire_read(probe.get(), 0);
  if (results.shared == IPL_OK) {
    EXPECT_EQ(ipl_release_read(probe.get()), IPL_OK);
  }
  return results;
}

// The same from another process (which sees the kernel's lock, not any
// in-process bookkeeping).
try_results try_both_modes_from_other_process(const std::string &path) {
  try_results results;
  lock_agent agent(path);
  if (!agent.started()) return results;
  results.exclusive = agent.acquire(lock_mode::exclusive, 0);
  if (results.exclusive == IPL_OK) {
    EXPECT_EQ(agent.release(lock_mode::exclusive), IPL_OK);
  }
  results.shared = agent.acquire(lock_mode::shared, 0);
  if (results.shared == IPL_OK) {
    EXPECT_EQ(agent.release(lock_mode::shared), IPL_OK);
  }
  return results;
}

// Checks that someone holds the lock on `path` in `mode`: from a fresh handle
// here and from another process, an exclusive try fails and a shared try
// succeeds exactly when `mode` is shared.
void expect_held_as(const std::string &path, lock_mode mode) {
  const int shared_expected = mode == lock_mode::shared ? IPL_OK : IPL_E_TIMEOUT;
  const try_results here = try_both_modes_here(path);
  EXPECT_EQ(here.exclusive, IPL_E_TIMEOUT) << "exclusive try, fresh handle in this process";
  EXPECT_EQ(here.shared, shared_expected) << "shared try, fresh handle in this process";
  const try_results there = try_both_modes_from_other_process(path);
  EXPECT_EQ(there.exclusive, IPL_E_TIMEOUT) << "exclusive try from another process";
  EXPECT_EQ(there.shared, shared_expected) << "shared try from another process";
}

// Checks that nobody holds the lock: exclusive tries succeed here and there.
void expect_free(const std::string &path) {
  const try_results here = try_both_modes_here(path);
  EXPECT_EQ(here.exclusive, IPL_OK) << "exclusive try, fresh handle in this process";
  const try_results there = try_both_modes_from_other_process(path);
  EXPECT_EQ(there.exclusive, IPL_OK) << "exclusive try from another process";
}

int64_t elapsed_ms(steady::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - since).count();
}

// ---- Mode pairs for the parameterised tests ------------------------------------------

struct mode_pair {
  lock_mode held;
  lock_mode wanted;
};

// How gtest shows a parameter in failure messages.
void PrintTo(const mode_pair &pair, std::ostream *out) {
  *out << mode_name(pair.held) << " then " << mode_name(pair.wanted);
}

std::vector<mode_pair> all_mode_pairs() {
  std::vector<mode_pair> pairs;
  for (lock_mode held : kAllModes)
    for (lock_mode wanted : kAllModes) pairs.push_back({held, wanted});
  return pairs;
}

std::vector<mode_pair> conflicting_mode_pairs() {
  std::vector<mode_pair> pairs;
  for (const mode_pair &pair : all_mode_pairs())
    if (modes_conflict(pair.held, pair.wanted)) pairs.push_back(pair);
  return pairs;
}

std::string pair_name(const testing::TestParamInfo<mode_pair> &info) {
  return std::string(mode_name(info.param.held)) + "_then_" + mode_name(info.param.wanted);
}

// =====================================================================================
// 1. The conflict matrix
// =====================================================================================

class ConflictMatrix : public testing::TestWithParam<mode_pair> {};

// Catches: handles of one process/thread not excluding each other (classic
// process-owned fcntl locks without an inode table), shared locks taken as
// exclusive or the reverse, ipl_acquire_write differing from ipl_acquire, and
// a failed try that changes the kernel lock (e.g. a classic F_SETLK F_RDLCK
// from the same process silently downgrading its write lock).
TEST_P(ConflictMatrix, TwoHandlesInOneThread) {
  const mode_pair modes = GetParam();
  const bool conflict = modes_conflict(modes.held, modes.wanted);
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle first = open_handle(path);
  handle second = open_handle(path);
  ASSERT_TRUE(first && second);

  ASSERT_EQ(acquire_in_mode(first.get(), modes.held, 0), IPL_OK);
  const int tried = acquire_in_mode(second.get(), modes.wanted, 0);
  EXPECT_EQ(tried, conflict ? IPL_E_TIMEOUT : IPL_OK);
  if (tried == IPL_OK) {
    EXPECT_EQ(release_in_mode(second.get(), modes.wanted), IPL_OK);
  } else {
    // A timed try sees the same conflict.
    EXPECT_EQ(acquire_in_mode(second.get(), modes.wanted, 30), IPL_E_TIMEOUT);
  }
  // The failed (or released) try left the first handle's lock as it was.
  expect_held_as(path, modes.held);

  ASSERT_EQ(release_in_mode(first.get(), modes.held), IPL_OK);
  EXPECT_EQ(acquire_in_mode(second.get(), modes.wanted, 0), IPL_OK)
      << "the lock was released; the second handle should get it";
  expect_held_as(path, modes.wanted);
  EXPECT_EQ(release_in_mode(second.get(), modes.wanted), IPL_OK);
  expect_free(path);
}

// Catches: in-process conflicts that are only checked on tries (a blocking
// acquire that ignores another thread's handle), a waiter that returns before
// the holder releases, and a waiter that is never woken after the release.
TEST_P(ConflictMatrix, TwoThreads) {
  const mode_pair modes = GetParam();
  const bool conflict = modes_conflict(modes.held, modes.wanted);
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle holder = open_handle(path);
  handle waiter = open_handle(path);
  ASSERT_TRUE(holder && waiter);
  ASSERT_EQ(acquire_in_mode(holder.get(), modes.held, 0), IPL_OK);

  bounded_thread try_thread(
      [waiter, modes] { return acquire_in_mode(waiter.get(), modes.wanted, 0); });
  const std::optional<int> tried = try_thread.result_within(kBound);
  ASSERT_TRUE(tried.has_value()) << "a try (timeout 0) did not return";
  EXPECT_EQ(*tried, conflict ? IPL_E_TIMEOUT : IPL_OK);
  if (*tried == IPL_OK) {
    ASSERT_EQ(release_in_mode(waiter.get(), modes.wanted), IPL_OK);
  }

  bounded_thread blocked([waiter, modes] {
    return acquire_in_mode(waiter.get(), modes.wanted, IPL_WAIT_FOREVER);
  });
  if (conflict) {
    EXPECT_TRUE(blocked.still_running_after(kStaysBlocked))
        << "a blocking acquire returned while the conflicting lock was held";
    ASSERT_EQ(release_in_mode(holder.get(), modes.held), IPL_OK);
  }
  const std::optional<int> got = blocked.result_within(kBound);
  ASSERT_TRUE(got.has_value()) << "the waiting thread never got the lock";
  EXPECT_EQ(*got, IPL_OK);
  if (conflict) {
    // Now the waiter's handle holds it and the former holder is shut out.
    EXPECT_EQ(acquire_in_mode(holder.get(), modes.held, 0), IPL_E_TIMEOUT);
  } else {
    EXPECT_EQ(release_in_mode(holder.get(), modes.held), IPL_OK);
  }
  EXPECT_EQ(release_in_mode(waiter.get(), modes.wanted), IPL_OK);
  expect_free(path);
}

// Catches: locks that only work within a process (e.g. a pure in-memory
// table), wrong fcntl lock types or ranges (shared taken as F_WRLCK, a
// partial range), and a cross-process waiter that is not woken on release.
TEST_P(ConflictMatrix, TwoProcesses) {
  const mode_pair modes = GetParam();
  const bool conflict = modes_conflict(modes.held, modes.wanted);
  const int expected_try = conflict ? IPL_E_TIMEOUT : IPL_OK;
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle mine = open_handle(path);
  ASSERT_TRUE(mine);
  lock_agent agent(path);
  ASSERT_TRUE(agent.started());

  // The other process holds `held`; this one tries `wanted`.
  ASSERT_EQ(agent.acquire(modes.held, 0), IPL_OK);
  const int tried = acquire_in_mode(mine.get(), modes.wanted, 0);
  EXPECT_EQ(tried, expected_try);
  if (tried == IPL_OK) {
    EXPECT_EQ(release_in_mode(mine.get(), modes.wanted), IPL_OK);
  } else {
    EXPECT_EQ(acquire_in_mode(mine.get(), modes.wanted, 30), IPL_E_TIMEOUT);
  }
  ASSERT_EQ(agent.release(modes.held), IPL_OK);

  // The other way round: this process holds `wanted`, the other tries `held`.
  ASSERT_EQ(acquire_in_mode(mine.get(), modes.wanted, 0), IPL_OK);
  const int agent_tried = agent.acquire(modes.held, 0);
  EXPECT_EQ(agent_tried, expected_try);
  if (agent_tried == IPL_OK) {
    EXPECT_EQ(agent.release(modes.held), IPL_OK);
  }

  // A blocking acquire in the other process waits exactly until we release.
  agent.start_acquire(modes.held, IPL_WAIT_FOREVER);
  if (conflict) {
    EXPECT_TRUE(agent.silent_for(kStaysBlocked))
        << "the other process's blocking acquire returned while we held the lock";
    ASSERT_EQ(release_in_mode(mine.get(), modes.wanted), IPL_OK);
  }
  EXPECT_EQ(agent.reply(), IPL_OK) << "the other process never got the lock";
  if (conflict) {
    EXPECT_EQ(acquire_in_mode(mine.get(), modes.wanted, 0), IPL_E_TIMEOUT);
  } else {
    EXPECT_EQ(release_in_mode(mine.get(), modes.wanted), IPL_OK);
  }
  EXPECT_EQ(agent.release(modes.held), IPL_OK);
  EXPECT_EQ(acquire_in_mode(mine.get(), modes.wanted, 0), IPL_OK);
  EXPECT_EQ(release_in_mode(mine.get(), modes.wanted), IPL_OK);
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictMatrix, testing::ValuesIn(all_mode_pairs()),
                         pair_name);

// =====================================================================================
// 2. Handoff: a waiter gets the lock after the release
// =====================================================================================

class ConflictHandoff : public testing::TestWithParam<mode_pair> {};

// Catches: a blocked waiter in this process that is not woken when a holder
// in another process releases (e.g. an in-process wait that only listens to
// in-process releases), or that returns early.
TEST_P(ConflictHandoff, ProcessHolderToThreadWaiter) {
  const mode_pair modes = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(modes.held, 0), IPL_OK);

  handle waiter = open_handle(path);
  ASSERT_TRUE(waiter);
  bounded_thread blocked([waiter, modes] {
    return acquire_in_mode(waiter.get(), modes.wanted, IPL_WAIT_FOREVER);
  });
  EXPECT_TRUE(blocked.still_running_after(kStaysBlocked))
      << "got the lock while another process held it";
  ASSERT_EQ(holder.release(modes.held), IPL_OK);
  const std::optional<int> got = blocked.result_within(kBound);
  ASSERT_TRUE(got.has_value()) << "the waiter was not woken by the other process's release";
  EXPECT_EQ(*got, IPL_OK);
  EXPECT_EQ(holder.acquire(modes.held, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(release_in_mode(waiter.get(), modes.wanted), IPL_OK);
}

// Catches: a handoff between two other processes that needs a third party, or
// a waiter that is not woken when the holder releases.
TEST_P(ConflictHandoff, ProcessHolderToProcessWaiter) {
  const mode_pair modes = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent holder(path);
  lock_agent waiter(path);
  ASSERT_TRUE(holder.started() && waiter.started());
  ASSERT_EQ(holder.acquire(modes.held, 0), IPL_OK);
  waiter.start_acquire(modes.wanted, IPL_WAIT_FOREVER);
  EXPECT_TRUE(waiter.silent_for(kStaysBlocked)) << "got the lock while it was held";
  ASSERT_EQ(holder.release(modes.held), IPL_OK);
  EXPECT_EQ(waiter.reply(), IPL_OK) << "the waiting process never got the lock";
  expect_held_as(path, modes.wanted);
  EXPECT_EQ(waiter.release(modes.wanted), IPL_OK);
}

// Catches: a thread waiter that is not woken by a release from another
// thread's handle in the same process (e.g. a lost notification in an
// in-process table), when the holder's release happens on the holder thread.
TEST_P(ConflictHandoff, ThreadHolderToThreadWaiter) {
  const mode_pair modes = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle holder = open_handle(path);
  handle waiter = open_handle(path);
  ASSERT_TRUE(holder && waiter);

  // The holder thread takes the lock, says so, and releases when told. The
  // signals live in a shared_ptr so a detached (hung) thread never outlives them.
  struct signals {
    std::mutex mutex;
    std::condition_variable changed;
    bool holding = false;
    bool may_release = false;
  };
  auto sync = std::make_shared<signals>();
  bounded_thread holder_thread([sync, holder, modes] {
    const int acquired = acquire_in_mode(holder.get(), modes.held, 0);
    std::unique_lock<std::mutex> guard(sync->mutex);
    sync->holding = true;
    sync->changed.notify_all();
    if (acquired != IPL_OK) return acquired;
    if (!sync->changed.wait_for(guard, kBound, [&] { return sync->may_release; }))
      return kNoReply;
    return release_in_mode(holder.get(), modes.held);
  });
  {
    std::unique_lock<std::mutex> guard(sync->mutex);
    ASSERT_TRUE(sync->changed.wait_for(guard, kBound, [&] { return sync->holding; }));
  }
  bounded_thread blocked([waiter, modes] {
    return acquire_in_mode(waiter.get(), modes.wanted, IPL_WAIT_FOREVER);
  });
  EXPECT_TRUE(blocked.still_running_after(kStaysBlocked)) << "got the lock while it was held";
  {
    std::lock_guard<std::mutex> guard(sync->mutex);
    sync->may_release = true;
    sync->changed.notify_all();
  }
  const std::optional<int> released = holder_thread.result_within(kBound);
  ASSERT_TRUE(released.has_value());
  EXPECT_EQ(*released, IPL_OK) << "the holder thread's acquire or release failed";
  const std::optional<int> got = blocked.result_within(kBound);
  ASSERT_TRUE(got.has_value()) << "the waiter was not woken by the release";
  EXPECT_EQ(*got, IPL_OK);
  EXPECT_EQ(release_in_mode(waiter.get(), modes.wanted), IPL_OK);
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictHandoff, testing::ValuesIn(conflicting_mode_pairs()),
                         pair_name);

// Catches: a release of one shared handle that drops the shared lock of every
// handle in the process (a classic-mode F_UNLCK while another handle of the
// same process still reads), letting a writer in too early.
TEST(ConflictHandoffWriter, WaitsUntilEveryReaderHasReleased) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle reader_one = open_handle(path);
  handle reader_two = open_handle(path);
  handle writer = open_handle(path);
  ASSERT_TRUE(reader_one && reader_two && writer);
  ASSERT_EQ(ipl_acquire_read(reader_one.get(), 0), IPL_OK);
  ASSERT_EQ(ipl_acquire_read(reader_two.get(), 0), IPL_OK);
  lock_agent outside_writer(path);
  ASSERT_TRUE(outside_writer.started());

  bounded_thread blocked([writer] { return ipl_acquire(writer.get(), IPL_WAIT_FOREVER); });
  outside_writer.start_acquire(lock_mode::exclusive, IPL_WAIT_FOREVER);
  ASSERT_EQ(ipl_release_read(reader_one.get()), IPL_OK);
  EXPECT_TRUE(blocked.still_running_after(kStaysBlocked))
      << "the writer thread got in while a reader still held the lock";
  EXPECT_TRUE(outside_writer.silent_for(50ms))
      << "a writer process got in while a reader here still held the lock";

  ASSERT_EQ(ipl_release_read(reader_two.get()), IPL_OK);
  // Now one of the two writers gets the lock first, the other only after it.
  std::optional<int> thread_got;
  int outside_got = kNoReply;
  const auto give_up_at = steady::now() + kBound;
  while (!thread_got && outside_got == kNoReply && steady::now() < give_up_at) {
    thread_got = blocked.result_within(10ms);
    if (!thread_got) outside_got = outside_writer.reply(10ms);
  }
  if (thread_got) {
    EXPECT_EQ(*thread_got, IPL_OK);
    EXPECT_TRUE(outside_writer.silent_for(50ms)) << "two writers at once";
    EXPECT_EQ(ipl_release(writer.get()), IPL_OK);
    EXPECT_EQ(outside_writer.reply(), IPL_OK) << "the writer process was never woken";
    EXPECT_EQ(outside_writer.release(lock_mode::exclusive), IPL_OK);
  } else if (outside_got != kNoReply) {
    EXPECT_EQ(outside_got, IPL_OK);
    EXPECT_TRUE(blocked.still_running_after(50ms)) << "two writers at once";
    EXPECT_EQ(outside_writer.release(lock_mode::exclusive), IPL_OK);
    const std::optional<int> got_later = blocked.result_within(kBound);
    ASSERT_TRUE(got_later.has_value()) << "the writer thread was never woken";
    EXPECT_EQ(*got_later, IPL_OK);
    EXPECT_EQ(ipl_release(writer.get()), IPL_OK);
  } else {
    FAIL() << "no writer got the lock after every reader released";
  }
  expect_free(path);
}

// Catches: lost wake-ups when several handles of one process wait at once
// (e.g. an in-process table that wakes one waiter and forgets the rest, or
// lets two of them in together).
TEST(ConflictHandoffWriter, ManyWaitingThreadsEachGetTheLockInTurn) {
  constexpr int kWaiters = 4;
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle holder = open_handle(path);
  ASSERT_TRUE(holder);
  ASSERT_EQ(ipl_acquire(holder.get(), 0), IPL_OK);

  auto inside = std::make_shared<std::atomic<int>>(0);
  auto overlaps = std::make_shared<std::atomic<int>>(0);
  std::vector<std::unique_ptr<bounded_thread>> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    handle mine = open_handle(path);
    ASSERT_TRUE(mine);
    waiters.push_back(std::make_unique<bounded_thread>([mine, inside, overlaps] {
      const int got = ipl_acquire(mine.get(), IPL_WAIT_FOREVER);
      if (got != IPL_OK) return got;
      if (inside->fetch_add(1) != 0) overlaps->fetch_add(1);
      std::this_thread::yield();
      inside->fetch_sub(1);
      return ipl_release(mine.get());
    }));
  }
  for (auto &waiter : waiters) EXPECT_TRUE(waiter->still_running_after(kStaysBlocked / kWaiters));
  ASSERT_EQ(ipl_release(holder.get()), IPL_OK);
  for (auto &waiter : waiters) {
    const std::optional<int> result = waiter->result_within(kBound);
    ASSERT_TRUE(result.has_value()) << "a waiter was never woken";
    EXPECT_EQ(*result, IPL_OK);
  }
  EXPECT_EQ(overlaps->load(), 0) << "two exclusive holders at once";
  expect_free(path);
}

// Catches: a handle waiting for the exclusive lock that shuts the other
// handles of its own process out of a shared lock that a reader in another
// process can take (handles must behave like processes, and fcntl locks have
// no writer preference: a pending writer does not block new readers).
TEST(ConflictHandoffWriter, PendingWriterDoesNotShutOutReadersOfItsProcess) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent outside_reader(path);
  ASSERT_TRUE(outside_reader.started());
  ASSERT_EQ(outside_reader.acquire(lock_mode::shared, 0), IPL_OK);

  handle writer = open_handle(path);
  handle reader = open_handle(path);
  ASSERT_TRUE(writer && reader);
  bounded_thread blocked([writer] { return ipl_acquire(writer.get(), IPL_WAIT_FOREVER); });
  EXPECT_TRUE(blocked.still_running_after(kStaysBlocked)) << "got in past a reader";

  // The baseline: a reader in another process gets in beside the pending writer.
  lock_agent second_outside_reader(path);
  ASSERT_TRUE(second_outside_reader.started());
  EXPECT_EQ(second_outside_reader.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(second_outside_reader.release(lock_mode::shared), IPL_OK);
  // A reader handle in the writer's own process must get in as well (OFD).
  // The classic backend cannot allow it: the pending F_SETLKW belongs to the
  // same process, so once granted it would silently convert that reader's
  // kernel read lock into the write lock. There the reader waits for the
  // writer instead (README, Limitations) — pinned here so it stays deliberate.
  const int reader_got = ipl_acquire_read(reader.get(), 0);
  if (std::string(IPL_POSIX_LOCK_KIND) == "classic") {
    EXPECT_EQ(reader_got, IPL_E_TIMEOUT) << "classic: a reader got in beside a pending writer";
  } else {
    EXPECT_EQ(reader_got, IPL_OK)
        << "a shared try failed only because another handle of this process waits";
  }
  // Releasing everything lets the writer in.
  if (reader_got == IPL_OK) {
    EXPECT_EQ(ipl_release_read(reader.get()), IPL_OK);
  }
  EXPECT_TRUE(blocked.still_running_after(50ms)) << "got in past the outside reader";
  ASSERT_EQ(outside_reader.release(lock_mode::shared), IPL_OK);
  const std::optional<int> got = blocked.result_within(kBound);
  ASSERT_TRUE(got.has_value()) << "the writer was never woken";
  EXPECT_EQ(*got, IPL_OK);
  expect_held_as(path, lock_mode::exclusive);
  EXPECT_EQ(ipl_release(writer.get()), IPL_OK);
}

// =====================================================================================
// 3. Misuse: acquiring on a handle that already holds the lock
// =====================================================================================

class ConflictReacquire : public testing::TestWithParam<mode_pair> {};

// Catches: re-entrant or silently converting acquires (an OFD lock re-taken
// on the same descriptor simply converts: read->write upgrades, write->read
// downgrades), a re-acquire that waits out its timeout instead of failing at
// once, and one that disturbs the lock already held.
TEST_P(ConflictReacquire, SameHandleFailsAtOnceAndKeepsItsLock) {
  const mode_pair modes = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(acquire_in_mode(lock.get(), modes.held, 0), IPL_OK);

  EXPECT_EQ(acquire_in_mode(lock.get(), modes.wanted, 0), IPL_E_WOULD_DEADLOCK);
  const auto timed_start = steady::now();
  EXPECT_EQ(acquire_in_mode(lock.get(), modes.wanted, 3000), IPL_E_WOULD_DEADLOCK);
  EXPECT_LT(elapsed_ms(timed_start), 1500) << "a timed re-acquire waited instead of failing";

  bounded_thread forever([lock, modes] {
    return acquire_in_mode(lock.get(), modes.wanted, IPL_WAIT_FOREVER);
  });
  const std::optional<int> forever_result = forever.result_within(kPrompt);
  ASSERT_TRUE(forever_result.has_value()) << "a re-acquire with IPL_WAIT_FOREVER hung";
  EXPECT_EQ(*forever_result, IPL_E_WOULD_DEADLOCK);

  expect_held_as(path, modes.held);
  EXPECT_EQ(release_in_mode(lock.get(), modes.held), IPL_OK);
  expect_free(path);
}

// The same with the re-acquire inside a helper process, where a hang is
// simply a missing reply (the process is killed afterwards).
// Catches: a re-acquire that blocks forever on the handle's own lock.
TEST_P(ConflictReacquire, ForeverInAnotherProcessFailsAtOnce) {
  const mode_pair modes = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  lock_agent agent(path);
  ASSERT_TRUE(agent.started());
  ASSERT_EQ(agent.acquire(modes.held, IPL_WAIT_FOREVER), IPL_OK);
  agent.start_acquire(modes.wanted, IPL_WAIT_FOREVER);
  EXPECT_EQ(agent.reply(kPrompt), IPL_E_WOULD_DEADLOCK)
      << "no reply means the re-acquire with IPL_WAIT_FOREVER hung";
  expect_held_as(path, modes.held);
  EXPECT_EQ(agent.release(modes.held), IPL_OK);
  expect_free(path);
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictReacquire, testing::ValuesIn(all_mode_pairs()),
                         pair_name);

// =====================================================================================
// 4. Releasing what the handle does not hold
// =====================================================================================

// Catches: a release that unlocks without checking the handle's own state —
// in classic mode an F_UNLCK from any descriptor drops the whole process's
// lock, which only another process can see.
TEST(ConflictRelease, FreshHandleReleaseIsNotHeldAndKeepsAnotherHandlesLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle fresh = open_handle(path);
  ASSERT_TRUE(fresh);
  EXPECT_EQ(ipl_release(fresh.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_read(fresh.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_write(fresh.get()), IPL_E_NOT_HELD);

  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(std::string("another handle holds ") + mode_name(held));
    handle holder = open_handle(path);
    ASSERT_TRUE(holder);
    ASSERT_EQ(acquire_in_mode(holder.get(), held, 0), IPL_OK);
    EXPECT_EQ(ipl_release(fresh.get()), IPL_E_NOT_HELD);
    EXPECT_EQ(ipl_release_read(fresh.get()), IPL_E_NOT_HELD);
    EXPECT_EQ(ipl_release_write(fresh.get()), IPL_E_NOT_HELD);
    expect_held_as(path, held);
    EXPECT_EQ(release_in_mode(holder.get(), held), IPL_OK);
  }
  // The failed releases did not spoil the fresh handle.
  EXPECT_EQ(ipl_acquire(fresh.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(fresh.get()), IPL_OK);
}

// Catches: ipl_release_read that releases an exclusive lock (a release that
// ignores the mode).
TEST(ConflictRelease, ReleaseReadWhileHoldingExclusiveKeepsIt) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  ASSERT_TRUE(lock);
  for (lock_mode held : {lock_mode::exclusive, lock_mode::write}) {
    SCOPED_TRACE(std::string("held via ") + mode_name(held));
    ASSERT_EQ(acquire_in_mode(lock.get(), held, 0), IPL_OK);
    EXPECT_EQ(ipl_release_read(lock.get()), IPL_E_NOT_HELD);
    expect_held_as(path, lock_mode::exclusive);
    EXPECT_EQ(release_in_mode(lock.get(), held), IPL_OK);
    expect_free(path);
  }
}

// Catches: ipl_release / ipl_release_write that release a shared lock.
TEST(ConflictRelease, ReleaseExclusiveWhileHoldingSharedKeepsIt) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(ipl_acquire_read(lock.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(lock.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_write(lock.get()), IPL_E_NOT_HELD);
  expect_held_as(path, lock_mode::shared);
  EXPECT_EQ(ipl_release_read(lock.get()), IPL_OK);
  expect_free(path);
}

// Catches: a release that succeeds twice (state not cleared), or a second
// release that drops a lock another handle has taken in between.
TEST(ConflictRelease, DoubleReleaseIsNotHeld) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  handle other = open_handle(path);
  ASSERT_TRUE(lock && other);
  for (lock_mode mode : kAllModes) {
    SCOPED_TRACE(mode_name(mode));
    ASSERT_EQ(acquire_in_mode(lock.get(), mode, 0), IPL_OK);
    EXPECT_EQ(release_in_mode(lock.get(), mode), IPL_OK);
    EXPECT_EQ(release_in_mode(lock.get(), mode), IPL_E_NOT_HELD);
    // Another handle takes the lock; a third release must not touch it.
    ASSERT_EQ(ipl_acquire(other.get(), 0), IPL_OK);
    EXPECT_EQ(release_in_mode(lock.get(), mode), IPL_E_NOT_HELD);
    expect_held_as(path, lock_mode::exclusive);
    EXPECT_EQ(ipl_release(other.get()), IPL_OK);
  }
  expect_free(path);
}

// Catches: treating "write" as a mode of its own rather than the exclusive
// lock (ipl_release not releasing what ipl_acquire_write took, or the reverse).
TEST(ConflictRelease, WriteAndExclusiveAreOneMode) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  ASSERT_TRUE(lock);
  ASSERT_EQ(ipl_acquire_write(lock.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(lock.get()), IPL_OK);
  expect_free(path);
  ASSERT_EQ(ipl_acquire(lock.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release_write(lock.get()), IPL_OK);
  expect_free(path);
}

// =====================================================================================
// 5. ipl_close releases what the handle holds
// =====================================================================================

// Catches: ipl_close that leaves the lock behind (e.g. a classic-mode inode
// table that defers the close but forgets the handle's lock).
TEST(ConflictClose, CloseReleasesTheLockForOtherHandles) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (lock_mode mode : kAllModes) {
    SCOPED_TRACE(mode_name(mode));
    ipl_lock *closing = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), 0, &closing), IPL_OK);
    ASSERT_EQ(acquire_in_mode(closing, mode, 0), IPL_OK);
    expect_held_as(path, mode == lock_mode::shared ? lock_mode::shared : lock_mode::exclusive);
    ipl_close(closing);
    expect_free(path);
  }
}

// Catches: a process's ipl_close that does not release for other processes,
// or does not wake a process blocked on the lock.
TEST(ConflictClose, CloseReleasesTheLockForOtherProcesses) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  {
    ipl_lock *closing = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), 0, &closing), IPL_OK);
    ASSERT_EQ(ipl_acquire(closing, 0), IPL_OK);
    lock_agent waiter(path);
    ASSERT_TRUE(waiter.started());
    waiter.start_acquire(lock_mode::exclusive, IPL_WAIT_FOREVER);
    EXPECT_TRUE(waiter.silent_for(kStaysBlocked)) << "got the lock before the close";
    ipl_close(closing);
    EXPECT_EQ(waiter.reply(), IPL_OK) << "the close did not hand the lock over";
  }
  // And the other way round: the other process closes its holding handle.
  lock_agent holder(path);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::shared, 0), IPL_OK);
  handle mine = open_handle(path);
  ASSERT_TRUE(mine);
  EXPECT_EQ(ipl_acquire(mine.get(), 0), IPL_E_TIMEOUT);
  ASSERT_TRUE(holder.close_handle());
  EXPECT_EQ(ipl_acquire(mine.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(mine.get()), IPL_OK);
}

// Catches: ipl_close of one handle dropping another handle's lock (classic
// mode: close() of any descriptor of the file drops the process's locks, so
// the inode table must defer it), also after that handle's try failed.
TEST(ConflictClose, ClosingAnIdleHandleKeepsAnotherHandlesLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(std::string("held ") + mode_name(held));
    handle holder = open_handle(path);
    ASSERT_TRUE(holder);
    ASSERT_EQ(acquire_in_mode(holder.get(), held, 0), IPL_OK);

    ipl_lock *idle = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), 0, &idle), IPL_OK);
    ipl_close(idle);
    expect_held_as(path, held);

    ipl_lock *tried = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), 0, &tried), IPL_OK);
    EXPECT_EQ(ipl_acquire(tried, 0), IPL_E_TIMEOUT);
    ipl_close(tried);
    expect_held_as(path, held);

    EXPECT_EQ(release_in_mode(holder.get(), held), IPL_OK);
  }
  expect_free(path);
}

// =====================================================================================
// 6. One handle used from several threads
// =====================================================================================

// Catches: per-thread ownership (a release from another thread refused or
// ignored, e.g. state kept in thread-local storage or a thread-owned mutex).
TEST(ConflictSharedHandle, AcquireInOneThreadReleaseInAnother) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  ASSERT_TRUE(lock);
  for (lock_mode mode : kAllModes) {
    SCOPED_TRACE(mode_name(mode));
    bounded_thread acquirer([lock, mode] { return acquire_in_mode(lock.get(), mode, 0); });
    const std::optional<int> acquired = acquirer.result_within(kBound);
    ASSERT_TRUE(acquired.has_value());
    ASSERT_EQ(*acquired, IPL_OK);
    expect_held_as(path, mode == lock_mode::shared ? lock_mode::shared : lock_mode::exclusive);

    bounded_thread releaser([lock, mode] { return release_in_mode(lock.get(), mode); });
    const std::optional<int> released = releaser.result_within(kBound);
    ASSERT_TRUE(released.has_value());
    EXPECT_EQ(*released, IPL_OK);
    expect_free(path);
  }
}

// Catches: unsynchronised handle state (two threads both told IPL_OK for one
// handle, a release lost or doubled, statuses outside the documented set),
// a lock left behind or a handle left "busy" after the storm, and handles
// that stop excluding each other under concurrency.
TEST(ConflictSharedHandle, ConcurrentCallsOnOneHandleAreSerialised) {
  constexpr int kSharedHandleThreads = 8;
  constexpr int kRivalHandleThreads = 2;
  constexpr auto kRunFor = 1000ms;
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle shared_handle = open_handle(path);
  handle rival_handle = open_handle(path);
  ASSERT_TRUE(shared_handle && rival_handle);

  // Counted from just after an acquire's IPL_OK to just before its release,
  // so for a correct library these windows never overlap wrongly. Shared
  // with the threads by shared_ptr: a hung thread is detached, not joined.
  struct tallies {
    std::atomic<int> shared_handle_holders{0};
    std::atomic<int> rival_handle_holders{0};
    std::atomic<int> writers_inside{0};
    std::atomic<int> readers_inside{0};
    std::atomic<int> violations{0};
    std::atomic<int> unexpected_statuses{0};
    std::atomic<int> last_unexpected_status{0};
    std::atomic<long> shared_handle_exclusive_ok{0};
    std::atomic<long> shared_handle_shared_ok{0};
    std::atomic<long> would_deadlock{0};
  };
  auto counts = std::make_shared<tallies>();
  const auto stop_at = steady::now() + kRunFor;

  auto hammer = [counts, stop_at](handle lock, bool is_shared_handle, unsigned seed) {
    tallies &t = *counts;
    std::atomic<int> &handle_holders =
        is_shared_handle ? t.shared_handle_holders : t.rival_handle_holders;
    std::minstd_rand random(seed);
    while (steady::now() < stop_at) {
      const lock_mode mode = kAllModes[random() % 3];
      const int64_t timeout_ms = int64_t(random() % 3);  // 0, 1 or 2 ms
      const int acquired = acquire_in_mode(lock.get(), mode, timeout_ms);
      if (acquired == IPL_E_WOULD_DEADLOCK) {
        t.would_deadlock.fetch_add(1);
        continue;
      }
      if (acquired == IPL_E_TIMEOUT) continue;
      if (acquired != IPL_OK) {
        t.unexpected_statuses.fetch_add(1);
        t.last_unexpected_status.store(acquired);
        continue;
      }
      if (handle_holders.fetch_add(1) != 0) t.violations.fetch_add(1);
      if (mode == lock_mode::shared) {
        t.readers_inside.fetch_add(1);
        if (t.writers_inside.load() != 0) t.violations.fetch_add(1);
        if (is_shared_handle) t.shared_handle_shared_ok.fetch_add(1);
        t.readers_inside.fetch_sub(1);
      } else {
        if (t.writers_inside.fetch_add(1) != 0 || t.readers_inside.load() != 0)
          t.violations.fetch_add(1);
        if (is_shared_handle) t.shared_handle_exclusive_ok.fetch_add(1);
        t.writers_inside.fetch_sub(1);
      }
      handle_holders.fetch_sub(1);
      const int released = release_in_mode(lock.get(), mode);
      if (released != IPL_OK) {
        t.unexpected_statuses.fetch_add(1);
        t.last_unexpected_status.store(released);
      }
    }
    return 0;
  };

  std::vector<std::unique_ptr<bounded_thread>> threads;
  for (int i = 0; i < kSharedHandleThreads; ++i)
    threads.push_back(std::make_unique<bounded_thread>(
        [hammer, shared_handle, i] { return hammer(shared_handle, true, unsigned(i + 1)); }));
  for (int i = 0; i < kRivalHandleThreads; ++i)
    threads.push_back(std::make_unique<bounded_thread>(
        [hammer, rival_handle, i] { return hammer(rival_handle, false, unsigned(100 + i)); }));
  // Every call has a timeout of at most 2 ms, so each thread ends soon
  // after kRunFor; one that does not is stuck in the library.
  for (auto &thread : threads)
    ASSERT_TRUE(thread->result_within(kRunFor + kBound).has_value()) << "a call hung";

  const tallies &t = *counts;
  EXPECT_EQ(t.violations.load(), 0) << "two holders at once (of one handle, or conflicting)";
  EXPECT_EQ(t.unexpected_statuses.load(), 0)
      << "undocumented status, e.g. " << t.last_unexpected_status.load();
  EXPECT_GT(t.shared_handle_exclusive_ok.load(), 0) << "the shared handle never got exclusive";
  EXPECT_GT(t.shared_handle_shared_ok.load(), 0) << "the shared handle never got shared";
  EXPECT_GT(t.would_deadlock.load(), 0) << "the threads never overlapped";

  // Afterwards both handles hold nothing, are usable, and the lock is free.
  for (ipl_lock *lock : {shared_handle.get(), rival_handle.get()}) {
    EXPECT_EQ(ipl_release(lock), IPL_E_NOT_HELD);
    EXPECT_EQ(ipl_release_read(lock), IPL_E_NOT_HELD);
  }
  expect_free(path);
  EXPECT_EQ(ipl_acquire(shared_handle.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(shared_handle.get()), IPL_OK);
}

// Catches: a second acquire on a handle while another thread is blocked
// acquiring on it that waits too (two waits racing to own one handle) instead
// of IPL_E_WOULD_DEADLOCK, and a release during the wait that does not say
// IPL_E_NOT_HELD or that cancels/disturbs the pending acquire.
TEST(ConflictSharedHandle, CallsDuringABlockedAcquireFailAtOnce) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle lock = open_handle(path);
  handle other = open_handle(path);
  ASSERT_TRUE(lock && other);
  ASSERT_EQ(ipl_acquire(other.get(), 0), IPL_OK);

  // Our own tries below may briefly make this acquire see
  // IPL_E_WOULD_DEADLOCK ("another thread is acquiring"); it then retries,
  // for a bounded time (not a count: under Wine one try can outlast 100000
  // retries).
  bounded_thread blocked([lock] {
    int status = IPL_E_WOULD_DEADLOCK;
    const auto give_up_at = steady::now() + kBound;
    while (status == IPL_E_WOULD_DEADLOCK && steady::now() < give_up_at) {
      status = ipl_acquire(lock.get(), IPL_WAIT_FOREVER);
      if (status == IPL_E_WOULD_DEADLOCK) std::this_thread::yield();
    }
    return status;
  });

  // The handshake: until the blocked acquire is under way a try gets
  // IPL_E_TIMEOUT (the other handle holds the lock); once it is, the try
  // must fail with IPL_E_WOULD_DEADLOCK.
  const auto give_up_at = steady::now() + 10s;
  int tried = IPL_E_TIMEOUT;
  while (steady::now() < give_up_at) {
    tried = ipl_acquire(lock.get(), 0);
    if (tried != IPL_E_TIMEOUT) break;
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(tried, IPL_E_WOULD_DEADLOCK)
      << "a try on a handle with a blocked acquire in flight did not say WOULD_DEADLOCK";
  EXPECT_EQ(ipl_acquire_read(lock.get(), 0), IPL_E_WOULD_DEADLOCK);
  bounded_thread forever([lock] { return ipl_acquire_write(lock.get(), IPL_WAIT_FOREVER); });
  const std::optional<int> forever_result = forever.result_within(kPrompt);
  ASSERT_TRUE(forever_result.has_value()) << "a second IPL_WAIT_FOREVER acquire blocked too";
  EXPECT_EQ(*forever_result, IPL_E_WOULD_DEADLOCK);
  EXPECT_EQ(ipl_release(lock.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_read(lock.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_write(lock.get()), IPL_E_NOT_HELD);

  EXPECT_TRUE(blocked.still_running_after(50ms)) << "the blocked acquire gave up";
  ASSERT_EQ(ipl_release(other.get()), IPL_OK);
  const std::optional<int> got = blocked.result_within(kBound);
  ASSERT_TRUE(got.has_value()) << "the blocked acquire never returned";
  EXPECT_EQ(*got, IPL_OK);
  expect_held_as(path, lock_mode::exclusive);
  EXPECT_EQ(ipl_release(lock.get()), IPL_OK);  // from this thread, not the acquirer
  expect_free(path);
}

// =====================================================================================
// 7. Stress: processes x threads over a data file
// =====================================================================================

// The data file holds the counter twice (offsets 0 and 8), written by two
// separate pwrite calls: only mutual exclusion keeps the copies equal and the
// read-modify-write from losing updates.
constexpr off_t kFirstCopy = 0;
constexpr off_t kSecondCopy = 8;

#ifdef _WIN32
// MinGW's C runtime has no pread/pwrite: every thread has a descriptor of
// its own, so a seek then a read or write does the same here. Its
// descriptors need O_BINARY for raw bytes and O_NOINHERIT to stay out of
// child processes, which is what O_CLOEXEC asks for.
#define O_CLOEXEC (O_BINARY | O_NOINHERIT)

ssize_t pread(int fd, void *buffer, size_t size, off_t offset) {
  if (_lseeki64(fd, offset, SEEK_SET) < 0) return -1;
  return _read(fd, buffer, unsigned(size));
}

ssize_t pwrite(int fd, const void *buffer, size_t size, off_t offset) {
  if (_lseeki64(fd, offset, SEEK_SET) < 0) return -1;
  return _write(fd, buffer, unsigned(size));
}
#endif

bool read_copy(int fd, off_t offset, uint64_t *value) {
  return pread(fd, value, sizeof *value, offset) == ssize_t(sizeof *value);
}

bool write_copy(int fd, off_t offset, uint64_t value) {
  return pwrite(fd, &value, sizeof value, offset) == ssize_t(sizeof value);
}

// args: lock path, data path, writer threads, rounds per writer, reader threads.
// Says "ready", waits for "go", runs, says "done ERRORS READS".
IPL_TEST_HELPER(stress_worker) {
  if (args.size() != 5) return 2;
  const std::string lock_path = args[0];
  const std::string data_path = args[1];
  const int writer_threads = std::atoi(args[2].c_str());
  const int rounds = std::atoi(args[3].c_str());
  const int reader_threads = std::atoi(args[4].c_str());
  // A bound for the whole run, so a lost wake-up ends as an error report.
  const auto give_up_at = steady::now() + 60s;

  std::atomic<int> errors{0};
  std::atomic<long> reads{0};
  std::atomic<int> writers_running{writer_threads};
  auto report = [&errors](const std::string &what) {
    if (errors.fetch_add(1) < 5) fprintf(stderr, "stress_worker %d: %s\n", int(getpid()), what.c_str());
  };

  // Opened before "go" so every thread starts contending at once.
  std::vector<ipl_lock *> locks;
  std::vector<int> data_fds;
  for (int i = 0; i < writer_threads + reader_threads; ++i) {
    ipl_lock *lock = nullptr;
    const int fd = open(data_path.c_str(), O_RDWR | O_CLOEXEC);
    if (ipl_open(lock_path.c_str(), 0, &lock) != IPL_OK || fd < 0) {
      ipltest::helper_say("open failed");
      return 3;
    }
    locks.push_back(lock);
    data_fds.push_back(fd);
  }
  ipltest::helper_say("ready");
  std::string line;
  if (!ipltest::helper_hear(&line) || line != "go") return 4;

  auto writer = [&](ipl_lock *lock, int fd, int thread_index) {
    for (int round = 0; round < rounds && errors.load() == 0; ++round) {
      // Vary the way in: blocking, timed (write entry point) and try-loops.
      int acquired = IPL_E_TIMEOUT;
      const int way = (round + thread_index) % 3;
      while (acquired == IPL_E_TIMEOUT && steady::now() < give_up_at) {
        if (way == 0) {
          acquired = ipl_acquire(lock, IPL_WAIT_FOREVER);
        } else if (way == 1) {
          acquired = ipl_acquire_write(lock, 20);
        } else {
          // A try-loop with a short back-off; spinning would starve the
          // holder of CPU on a 2-core machine.
          acquired = ipl_acquire(lock, 0);
          if (acquired == IPL_E_TIMEOUT) std::this_thread::sleep_for(1ms);
        }
      }
      if (acquired != IPL_OK) {
        report("writer acquire: " + std::to_string(acquired));
        break;
      }
      uint64_t first = 0;
      uint64_t second = 0;
      if (!read_copy(fd, kFirstCopy, &first) || !read_copy(fd, kSecondCopy, &second)) {
        report("writer read failed");
      } else if (first != second) {
        report("writer saw torn copies " + std::to_string(first) + "/" + std::to_string(second));
      } else {
        // No yield or sleep in here: under CPU load every one would cost the
        // holder a full scheduling round while all the others wait.
        if (!write_copy(fd, kFirstCopy, first + 1)) report("write failed");
        if (!write_copy(fd, kSecondCopy, first + 1)) report("write failed");
      }
      const int released = way == 1 ? ipl_release_write(lock) : ipl_release(lock);
      if (released != IPL_OK) report("writer release: " + std::to_string(released));
    }
    writers_running.fetch_sub(1);
  };

  auto reader = [&](ipl_lock *lock, int fd) {
    uint64_t last_seen = 0;
    bool blocking = true;
    // fcntl locks have no writer preference: readers that never stop could
    // starve a writer for as long as they run (it happens under CPU load).
    // So each reader reads a bounded number of times, while writers run.
    constexpr int kMaxReads = 100;
    int reads_done = 0;
    do {
      blocking = !blocking;
      int acquired = IPL_E_TIMEOUT;
      while (acquired == IPL_E_TIMEOUT && steady::now() < give_up_at)
        acquired = ipl_acquire_read(lock, blocking ? IPL_WAIT_FOREVER : 5);
      if (acquired != IPL_OK) {
        report("reader acquire: " + std::to_string(acquired));
        return;
      }
      uint64_t first = 0;
      uint64_t second = 0;
      if (!read_copy(fd, kFirstCopy, &first)) report("reader read failed");
      if (!read_copy(fd, kSecondCopy, &second)) report("reader read failed");
      if (first != second)
        report("reader saw torn copies " + std::to_string(first) + "/" + std::to_string(second));
      if (first < last_seen) report("counter went backwards");
      last_seen = first;
      reads.fetch_add(1);
      const int released = ipl_release_read(lock);
      if (released != IPL_OK) report("reader release: " + std::to_string(released));
      // Pause outside the lock, so that the writers get their turns.
      std::this_thread::sleep_for(2ms);
    } while (++reads_done < kMaxReads && writers_running.load() > 0 && errors.load() == 0);
  };

  std::vector<std::thread> threads;
  for (int i = 0; i < writer_threads; ++i)
    threads.emplace_back(writer, locks[size_t(i)], data_fds[size_t(i)], i);
  for (int i = writer_threads; i < writer_threads + reader_threads; ++i)
    threads.emplace_back(reader, locks[size_t(i)], data_fds[size_t(i)]);
  for (std::thread &thread : threads) thread.join();
  for (ipl_lock *lock : locks) ipl_close(lock);
  for (int fd : data_fds) close(fd);
  ipltest::helper_say("done " + std::to_string(errors.load()) + " " + std::to_string(reads.load()));
  return 0;
}

// Catches: any failure of mutual exclusion under real contention — between
// processes, between handles of one process's threads, between the timed,
// try and blocking paths, and between readers and writers (torn copies, lost
// increments) — and lost wake-ups (a worker that never finishes in time).
TEST(StressMutualExclusion, ProcessesAndThreadsKeepTheCounterConsistent) {
  constexpr int kProcesses = 4;
  constexpr int kWritersPerProcess = 4;
  constexpr int kRoundsPerWriter = 1000;
  constexpr int kReadersPerProcess = 1;
  temp_dir dir;
  const std::string lock_path = dir.path("lock");
  const std::string data_path = dir.path("data");
  {
    const int fd = open(data_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_copy(fd, kFirstCopy, 0) && write_copy(fd, kSecondCopy, 0));
    close(fd);
  }

  std::vector<child_process> workers;
  for (int i = 0; i < kProcesses; ++i)
    workers.push_back(child_process::helper(
        "stress_worker", {lock_path, data_path, std::to_string(kWritersPerProcess),
                          std::to_string(kRoundsPerWriter), std::to_string(kReadersPerProcess)}));
  for (child_process &worker : workers) ASSERT_TRUE(worker.expect_line("ready"));
  const auto started = steady::now();
  for (child_process &worker : workers) worker.write_line("go");

  long total_reads = 0;
  for (child_process &worker : workers) {
    std::string line;
    ASSERT_TRUE(worker.read_line(&line, 90s)) << "a worker did not finish (hang?)";
    std::istringstream words(line);
    std::string done_word;
    int errors = -1;
    long reads = 0;
    words >> done_word >> errors >> reads;
    ASSERT_EQ(done_word, "done") << line;
    EXPECT_EQ(errors, 0) << "worker " << worker.pid() << " found errors (see its stderr)";
    EXPECT_GT(reads, 0);
    total_reads += reads;
    EXPECT_EQ(ipltest::describe_status(worker.wait()), 0);
  }
  RecordProperty("elapsed_ms", int(elapsed_ms(started)));
  RecordProperty("reads", int(total_reads));

  const int fd = open(data_path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t first = 0;
  uint64_t second = 0;
  ASSERT_TRUE(read_copy(fd, kFirstCopy, &first) && read_copy(fd, kSecondCopy, &second));
  close(fd);
  const uint64_t expected = uint64_t(kProcesses) * kWritersPerProcess * kRoundsPerWriter;
  EXPECT_EQ(first, expected) << "lost (or extra) increments";
  EXPECT_EQ(second, expected);
}

}  // namespace

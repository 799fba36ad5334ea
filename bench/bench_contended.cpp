// SPDX-License-Identifier: MIT
// Figures 2-5: libipl under contention beside the kernel floor — handoff
// latency, CPU burnt while waiting, timeout overshoot, throughput and
// fairness. Contenders are real processes (fork) that open their own lock
// after the fork; they share stamps and counters through MAP_SHARED memory.
#include <errno.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "bench_figures.hpp"

namespace bench {
namespace {

static_assert(std::atomic<int64_t>::is_always_lock_free, "shared atomics must be lock-free");

constexpr int kMaxHandoffRounds = 100000;
constexpr int kMaxThroughputProcesses = 64;

// ---- Handoff ---------------------------------------------------------------------

struct handoff_state {
  std::atomic<int64_t> holder_ready{0};      // process 0 holds the lock before round 0
  std::atomic<int64_t> announced_round{-1};  // the waiter is about to call acquire
  std::atomic<int64_t> released_round{-1};   // the holder stamped and is releasing
  std::atomic<int64_t> release_ns{0};        // the holder's stamp, just before release
  std::atomic<int64_t> acquired_round{-1};   // the waiter got the lock
  std::atomic<int> not_seen_asleep{0};
  std::atomic<int> pids[2];
  int64_t latency_ns[kMaxHandoffRounds];  // each written by that round's waiter
};

// One of the two processes; `me` is 0 or 1. Round r is held by process r % 2
// and waited for by the other, so each process takes turns at both roles.
int handoff_process(handoff_state &state, int me, lock_kind kind, const std::string &lock_path,
                    int first_round, int rounds) {
  // A 30 s bound per wait: far beyond any round, also across a network file
  // system, so only a hang trips it.
  const int64_t bound = 30 * kSec;
  contender lock(kind, lock_path, kContendedTimedMs);
  state.pids[me].store(int(getpid()));
  if (me == 0) {
    lock.lock();
    state.holder_ready.store(1);
  } else {
    wait_until([&] { return state.holder_ready.load() == 1; }, bound, "the first holder");
  }
  for (int round = 0; round < rounds; ++round) {
    if (round % 2 == me) {
      // Holder: release only once the waiter is asleep in its acquire.
      wait_until([&] { return state.announced_round.load() == round; }, bound, "the waiter");
      sleep_for_ns(handoff_hold_ns(first_round + round));
      if (!wait_until_asleep(state.pids[1 - me].load(), 1 * kSec)) state.not_seen_asleep++;
      state.release_ns.store(monotonic_ns());
      state.released_round.store(round);
      lock.unlock();
      wait_until([&] { return state.acquired_round.load() == round; }, bound,
                 "the waiter to get the lock");
    } else {
      state.announced_round.store(round);
      lock.lock();
      const int64_t acquired_ns = monotonic_ns();
      if (state.released_round.load() != round) {
        fail("handoff round %d: got the lock while the other process held it", round);
      }
      state.latency_ns[round] = acquired_ns - state.release_ns.load();
      state.acquired_round.store(round);
    }
  }
  // The waiter of the last round holds the lock now.
  if ((rounds - 1) % 2 != me) lock.unlock();
  return 0;
}

// ---- CPU while waiting -------------------------------------------------------------

struct cpu_state {
  std::atomic<int64_t> waited_ns{0};
  std::atomic<int64_t> process_cpu_ns{0};
  std::atomic<int64_t> thread_cpu_ns{0};
};

void ignore_signal(int) {}

// The floor: a plain F_OFD_SETLKW that sleeps in the kernel until SIGALRM
// (installed without SA_RESTART) interrupts it.
int wait_raw_until_alarm(cpu_state &state, const std::string &lock_path, int64_t wait_ms) {
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = ignore_signal;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGALRM, &action, nullptr) != 0) fail("sigaction: %s", std::strerror(errno));
  const int fd = open_file(lock_path);
  itimerval alarm_at;
  std::memset(&alarm_at, 0, sizeof alarm_at);
  alarm_at.it_value.tv_sec = time_t(wait_ms / 1000);
  alarm_at.it_value.tv_usec = suseconds_t(wait_ms % 1000 * 1000);

  const int64_t cpu_before = process_cpu_ns();
  const int64_t thread_before = thread_cpu_ns();
  const int64_t start = monotonic_ns();
  if (setitimer(ITIMER_REAL, &alarm_at, nullptr) != 0) fail("setitimer: %s", std::strerror(errno));
  const int err = raw_ofd_lock(fd, true);
  const int64_t end = monotonic_ns();
  state.process_cpu_ns.store(process_cpu_ns() - cpu_before);
  state.thread_cpu_ns.store(thread_cpu_ns() - thread_before);
  state.waited_ns.store(end - start);
  if (err != EINTR)
    fail("F_OFD_SETLKW on a held lock ended with %s, not EINTR", std::strerror(err));
  close(fd);
  return 0;
}

int wait_ipl_until_timeout(cpu_state &state, const std::string &lock_path, int64_t wait_ms) {
  ipl_lock *handle = nullptr;
  const int opened = ipl_open(lock_path.c_str(), 0, &handle);
  if (opened != IPL_OK) fail("ipl_open: %s", ipl_strerror(opened));

  const int64_t cpu_before = process_cpu_ns();
  const int64_t thread_before = thread_cpu_ns();
  const int64_t start = monotonic_ns();
  const int status = ipl_acquire(handle, wait_ms);
  const int64_t end = monotonic_ns();
  state.process_cpu_ns.store(process_cpu_ns() - cpu_before);
  state.thread_cpu_ns.store(thread_cpu_ns() - thread_before);
  state.waited_ns.store(end - start);
  if (status != IPL_E_TIMEOUT) {
    fail("ipl_acquire(%lld ms) on a held lock gave \"%s\", not a timeout",
         static_cast<long long>(wait_ms), ipl_strerror(status));
  }
  if (end - start < wait_ms * kMs) {
    fail("ipl_acquire(%lld ms) timed out early, after %.3f ms", static_cast<long long>(wait_ms),
         double(end - start) / kMs);
  }
  ipl_close(handle);
  return 0;
}

// ---- Overshoot -----------------------------------------------------------------

constexpr int kMaxOvershootWaits = 10000;

struct overshoot_state {
  int64_t overshoot_ns[kMaxOvershootWaits];  // written by the waiting child
};

// ---- Throughput --------------------------------------------------------------------

struct throughput_state {
  std::atomic<int> ready{0};
  std::atomic<int64_t> end_ns{0};  // 0 until the start signal
  std::atomic<int64_t> ops[kMaxThroughputProcesses];
};

int throughput_process(throughput_state &state, int me, lock_kind kind,
                       const std::string &lock_path, const std::string &data_path) {
  contender lock(kind, lock_path, kContendedTimedMs);
  const int data_fd = open_file(data_path);
  state.ready++;
  wait_until([&] { return state.end_ns.load() != 0; }, 60 * kSec, "the start signal");
  const int64_t end = state.end_ns.load();
  int64_t ops = 0;
  while (monotonic_ns() < end) {
    lock.lock();
    int64_t counter = 0;
    if (pread(data_fd, &counter, sizeof counter, 0) != ssize_t(sizeof counter)) {
      fail("pread of the counter: %s", std::strerror(errno));
    }
    ++counter;
    if (pwrite(data_fd, &counter, sizeof counter, 0) != ssize_t(sizeof counter)) {
      fail("pwrite of the counter: %s", std::strerror(errno));
    }
    lock.unlock();
    ++ops;
  }
  state.ops[me].store(ops);
  close(data_fd);
  return 0;
}

}  // namespace

int64_t handoff_hold_ns(int round) {
  // A fixed scramble of the round number: 0..799 us, spread evenly.
  const uint32_t spread_us = uint32_t(round) * 2654435761u % 800u;
  return 200 * kUs + int64_t(spread_us) * kUs;
}

void measure_handoff(lock_kind kind, const std::string &lock_path,
                     const std::string &peer_lock_path, int first_round, int rounds,
                     handoff_sample *sample) {
  if (rounds < 1 || rounds > kMaxHandoffRounds) fail("handoff: %d rounds is out of range", rounds);
  shared_object<handoff_state> state;
  pid_t pids[2];
  for (int me = 0; me < 2; ++me) {
    const std::string &path = me == 0 ? lock_path : peer_lock_path;
    pids[me] =
        fork_child([&] { return handoff_process(*state, me, kind, path, first_round, rounds); });
  }
  const int64_t bound = 60 * kSec + int64_t(rounds) * 20 * kMs;
  for (pid_t pid : pids) wait_child(pid, bound, "a handoff process");

  for (int round = 0; round < rounds; ++round) {
    sample->latency_us.push_back(double(state->latency_ns[round]) / kUs);
  }
  sample->rounds_not_seen_asleep += state->not_seen_asleep.load();
}

cpu_while_waiting measure_cpu_while_waiting(lock_kind kind, const std::string &lock_path,
                                            int64_t wait_ms) {
  if (kind == lock_kind::ipl_try || kind == lock_kind::ipl_forever)
    fail("cpu: unsupported lock kind");
  shared_object<cpu_state> state;
  lock_holder holder(lock_path);
  // A fresh process, so that its CPU time is the wait's alone.
  const pid_t pid = fork_child([&] {
    if (kind == lock_kind::raw_ofd) return wait_raw_until_alarm(*state, lock_path, wait_ms);
    if (kind == lock_kind::ipl_timed_polling) use_polling_timed_waits();
    return wait_ipl_until_timeout(*state, lock_path, wait_ms);
  });
  wait_child(pid, 30 * kSec + wait_ms * kMs, "the waiting process");
  cpu_while_waiting result;
  result.waited_s = double(state->waited_ns.load()) / kSec;
  result.process_cpu_ms = double(state->process_cpu_ns.load()) / kMs;
  result.thread_cpu_ms = double(state->thread_cpu_ns.load()) / kMs;
  return result;
}

std::vector<double> measure_sleep_overshoot_us(int64_t timeout_ms, int count) {
  std::vector<double> overshoot_us;
  timespec duration;
  duration.tv_sec = time_t(timeout_ms / 1000);
  duration.tv_nsec = long(timeout_ms % 1000 * kMs);
  for (int i = 0; i < count; ++i) {
    const int64_t start = monotonic_ns();
    if (clock_nanosleep(CLOCK_MONOTONIC, 0, &duration, nullptr) != 0)
      fail("clock_nanosleep failed");
    overshoot_us.push_back(double(monotonic_ns() - start - timeout_ms * kMs) / kUs);
  }
  return overshoot_us;
}

std::vector<double> measure_ipl_timeout_overshoot_us(lock_kind kind, const std::string &lock_path,
                                                     int64_t timeout_ms, int count) {
  if (count < 1 || count > kMaxOvershootWaits) fail("overshoot: %d waits is out of range", count);
  shared_object<overshoot_state> state;
  lock_holder holder(lock_path);
  // A child process, so that turning the wait signal off stays in it.
  const pid_t pid = fork_child([&] {
    if (kind == lock_kind::ipl_timed_polling) use_polling_timed_waits();
    ipl_lock *handle = nullptr;
    const int opened = ipl_open(lock_path.c_str(), 0, &handle);
    if (opened != IPL_OK) fail("ipl_open: %s", ipl_strerror(opened));
    for (int i = 0; i < count; ++i) {
      const int64_t start = monotonic_ns();
      const int status = ipl_acquire(handle, timeout_ms);
      const int64_t elapsed = monotonic_ns() - start;
      if (status != IPL_E_TIMEOUT) {
        fail("ipl_acquire(%lld ms) on a held lock gave \"%s\", not a timeout",
             static_cast<long long>(timeout_ms), ipl_strerror(status));
      }
      if (elapsed < timeout_ms * kMs) {
        fail("ipl_acquire(%lld ms) timed out early, after %.3f ms",
             static_cast<long long>(timeout_ms), double(elapsed) / kMs);
      }
      state->overshoot_ns[i] = elapsed - timeout_ms * kMs;
    }
    ipl_close(handle);
    return 0;
  });
  wait_child(pid, 60 * kSec + count * (timeout_ms + 1000) * kMs, "the waiting process");
  std::vector<double> overshoot_us;
  for (int i = 0; i < count; ++i) overshoot_us.push_back(double(state->overshoot_ns[i]) / kUs);
  return overshoot_us;
}

double fairness_of(const std::vector<int64_t> &ops_per_process) {
  if (ops_per_process.empty()) return 0;
  const auto range = std::minmax_element(ops_per_process.begin(), ops_per_process.end());
  return *range.second > 0 ? double(*range.first) / double(*range.second) : 0;
}

double throughput_sample::ops_per_s() const {
  int64_t total = 0;
  for (int64_t ops : ops_per_process) total += ops;
  return seconds > 0 ? double(total) / seconds : 0;
}

double throughput_sample::fairness() const {
  return slice_fairness.empty() ? fairness_of(ops_per_process) : median(slice_fairness);
}

void throughput_sample::add_slice(const throughput_sample &slice) {
  seconds += slice.seconds;
  if (ops_per_process.size() < slice.ops_per_process.size()) {
    ops_per_process.resize(slice.ops_per_process.size(), 0);
  }
  for (size_t i = 0; i < slice.ops_per_process.size(); ++i)
    ops_per_process[i] += slice.ops_per_process[i];
  slice_fairness.push_back(slice.fairness());
}

void reset_counter(const std::string &data_path) {
  const int fd = open_file(data_path);
  const int64_t zero = 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, &zero, sizeof zero, 0) != ssize_t(sizeof zero)) {
    fail("resetting %s: %s", data_path.c_str(), std::strerror(errno));
  }
  close(fd);
}

int64_t read_counter(const std::string &data_path) {
  const int fd = open_file(data_path);
  int64_t counter = 0;
  if (pread(fd, &counter, sizeof counter, 0) != ssize_t(sizeof counter)) {
    fail("reading the counter in %s", data_path.c_str());
  }
  close(fd);
  return counter;
}

throughput_sample measure_throughput(lock_kind kind, const std::string &lock_path,
                                     const std::string &data_path, int processes, double seconds) {
  if (processes < 1 || processes > kMaxThroughputProcesses) fail("throughput: bad process count");
  reset_counter(data_path);
  shared_object<throughput_state> state;
  std::vector<pid_t> pids;
  for (int me = 0; me < processes; ++me) {
    pids.push_back(
        fork_child([&] { return throughput_process(*state, me, kind, lock_path, data_path); }));
  }
  wait_until([&] { return state->ready.load() == processes; }, 60 * kSec,
             "the contenders to start");
  state->end_ns.store(monotonic_ns() + int64_t(seconds * kSec));
  for (pid_t pid : pids) wait_child(pid, 60 * kSec + int64_t(seconds * kSec), "a contender");

  throughput_sample sample;
  sample.seconds = seconds;
  int64_t total = 0;
  for (int me = 0; me < processes; ++me) {
    sample.ops_per_process.push_back(state->ops[me].load());
    total += state->ops[me].load();
  }
  const int64_t counter = read_counter(data_path);
  if (counter != total) {
    fail(
        "throughput [%s, %d processes]: the counter reads %lld but %lld increments were made: "
        "mutual exclusion is broken",
        lock_kind_name(kind), processes, static_cast<long long>(counter),
        static_cast<long long>(total));
  }
  return sample;
}

}  // namespace bench

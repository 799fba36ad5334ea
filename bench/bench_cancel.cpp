// SPDX-License-Identifier: MIT
// bench_cancel: figure 7, how long ipl_cancel() takes to end a wait.
//
// Another process holds the lock (raw OFD) throughout. In a child process a
// waiting thread calls ipl_acquire (timed, 10 s, or IPL_WAIT_FOREVER); once
// that call is in progress (ipl_query on the handle says another thread is
// acquiring) and its thread has been seen asleep twice, the child's main
// thread stamps CLOCK_MONOTONIC and calls ipl_cancel(). The latency is that
// stamp to the waiting thread's stamp just after ipl_acquire returned
// IPL_E_CANCELED. A short, varying pause before each cancel lands it at
// different moments of a polling wait's back-off. The polling variants turn
// the wait signal off in the child (ipl_set_wait_signal(0)): the fallback
// for applications that own every signal.
//
// The floor is the kernel's own way to end a blocked lock wait from another
// thread: pthread_kill() of a thread asleep in F_OFD_SETLKW, with a handler
// installed without SA_RESTART, to its F_OFD_SETLKW returning EINTR.
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "bench_figures.hpp"

namespace bench {
namespace {

constexpr int64_t kTimedWaitMs = 10000;  // never reached: the cancel comes first

struct cancel_state {
  int64_t latency_ns[kMaxCancelWaits];
};

void ignore_signal(int) {}

// The scheduler state letter of one of this process's threads ('S': asleep).
char thread_state(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() ? text[paren + 2] : '?';
}

// Until the thread `tid` has been seen asleep twice, 100 us apart, while
// `still_waiting` holds (it fails the run itself when the wait ended).
void wait_until_thread_sleeps(const std::atomic<pid_t> &tid,
                              const std::function<bool()> &still_waiting) {
  wait_until(
      [&] {
        if (!still_waiting() || tid.load() == 0 || thread_state(tid.load()) != 'S') return false;
        sleep_for_ns(100 * kUs);
        return thread_state(tid.load()) == 'S';
      },
      10 * kSec, "the waiting thread to sleep in its wait");
}

// One wait canceled; returns the latency in ns.
int64_t cancel_one(ipl_lock *handle, bool forever, int round) {
  std::atomic<pid_t> tid{0};
  std::atomic<int64_t> returned_ns{0};
  std::atomic<int> status{1};  // 1: still waiting (not an ipl status)
  std::thread waiter([&] {
    tid.store(pid_t(syscall(SYS_gettid)));
    const int result = ipl_acquire(handle, forever ? IPL_WAIT_FOREVER : kTimedWaitMs);
    returned_ns.store(monotonic_ns());
    status.store(result);
  });
  int state = 0;
  // ipl_query refuses while another thread acquires on the handle: then
  // the wait is in progress, not about to start.
  wait_until_thread_sleeps(tid, [&] {
    if (status.load() != 1) {
      fail("cancel: the wait ended by itself: %s", ipl_strerror(status.load()));
    }
    return ipl_query(handle, &state, nullptr) == IPL_E_WOULD_DEADLOCK;
  });
  sleep_for_ns(int64_t(round % 10) * 300 * kUs);  // 0-2.7 ms: another phase of a back-off
  const int64_t canceled_at = monotonic_ns();
  const int canceled = ipl_cancel(handle);
  if (canceled != IPL_OK) fail("ipl_cancel: %s", ipl_strerror(canceled));
  wait_until([&] { return status.load() != 1; }, 10 * kSec, "the canceled wait to return");
  waiter.join();
  if (status.load() != IPL_E_CANCELED) {
    fail("a canceled ipl_acquire returned \"%s\", not IPL_E_CANCELED", ipl_strerror(status.load()));
  }
  return returned_ns.load() - canceled_at;
}

// The floor: one F_OFD_SETLKW ended by pthread_kill(); returns the latency
// in ns. A signal that lands just before the thread enters the call would
// leave it blocked: the thread is seen asleep first, and the signal is sent
// again (stamped anew) should the wait not end within a second.
int64_t interrupt_one(int fd) {
  std::atomic<pid_t> tid{0};
  std::atomic<int64_t> returned_ns{0};
  std::atomic<int> error{-1};  // -1: still waiting
  std::thread waiter([&] {
    tid.store(pid_t(syscall(SYS_gettid)));
    const int err = raw_ofd_lock(fd, true);
    returned_ns.store(monotonic_ns());
    error.store(err);
  });
  wait_until_thread_sleeps(tid, [&] {
    if (error.load() != -1) {
      fail("cancel floor: F_OFD_SETLKW on a held lock ended: %s", std::strerror(error.load()));
    }
    return true;
  });
  int64_t signaled_at = 0;
  for (int attempt = 0; error.load() == -1; ++attempt) {
    if (attempt == 10) fail("cancel floor: F_OFD_SETLKW was not ended by 10 signals");
    signaled_at = monotonic_ns();
    const int err = pthread_kill(waiter.native_handle(), SIGUSR1);
    if (err != 0) fail("pthread_kill: %s", std::strerror(err));
    const int64_t give_up = signaled_at + 1 * kSec;
    while (error.load() == -1 && monotonic_ns() < give_up) sleep_for_ns(20 * kUs);
  }
  waiter.join();
  if (error.load() != EINTR) {
    fail("cancel floor: F_OFD_SETLKW ended with %s, not EINTR", std::strerror(error.load()));
  }
  return returned_ns.load() - signaled_at;
}

}  // namespace

std::vector<double> measure_cancel_floor_us(const std::string &lock_path, int count) {
  if (count < 1 || count > kMaxCancelWaits) fail("cancel floor: %d waits is out of range", count);
  shared_object<cancel_state> state;
  lock_holder holder(lock_path);
  // A child process, so that the handler stays in it.
  const pid_t pid = fork_child([&] {
    struct sigaction action;
    std::memset(&action, 0, sizeof action);
    action.sa_handler = ignore_signal;  // no SA_RESTART: ending the wait is the point
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGUSR1, &action, nullptr) != 0) fail("sigaction: %s", std::strerror(errno));
    const int fd = open_file(lock_path);
    for (int i = 0; i < count; ++i) state->latency_ns[i] = interrupt_one(fd);
    close(fd);
    return 0;
  });
  wait_child(pid, 60 * kSec + int64_t(count) * 100 * kMs, "the interrupted process");
  std::vector<double> latency_us;
  for (int i = 0; i < count; ++i) latency_us.push_back(double(state->latency_ns[i]) / kUs);
  return latency_us;
}

std::vector<double> measure_cancel_latency_us(const std::string &lock_path, bool forever,
                                              bool polling, int count) {
  if (count < 1 || count > kMaxCancelWaits) fail("cancel: %d waits is out of range", count);
  shared_object<cancel_state> state;
  lock_holder holder(lock_path);
  // A child process, so that turning the wait signal off stays in it.
  const pid_t pid = fork_child([&] {
    if (polling) use_polling_timed_waits();
    ipl_lock *handle = nullptr;
    const int opened = ipl_open(lock_path.c_str(), 0, &handle);
    if (opened != IPL_OK) fail("ipl_open: %s", ipl_strerror(opened));
    for (int i = 0; i < count; ++i) state->latency_ns[i] = cancel_one(handle, forever, i);
    ipl_close(handle);
    return 0;
  });
  wait_child(pid, 60 * kSec + int64_t(count) * 100 * kMs, "the canceled process");
  std::vector<double> latency_us;
  for (int i = 0; i < count; ++i) latency_us.push_back(double(state->latency_ns[i]) / kUs);
  return latency_us;
}

}  // namespace bench

// linux_wait_signal.cpp — timed waits that sleep in the kernel.
//
// What the OS gives
//   A blocking F_OFD_SETLKW wakes microseconds after the holder releases,
//   but it has no timeout. A signal delivered to the waiting thread, handled
//   without SA_RESTART, makes it return EINTR; tgkill() sends a signal to one
//   thread.
//
// What it gets wrong
//   Signals are a process-wide resource: the disposition of a signal belongs
//   to the application, and a signal that lands a moment before the thread
//   enters the blocking call is simply lost (the call then blocks on). A
//   per-wait POSIX timer would work, but deleting it is a syscall on the
//   wake-up path, which costs a few microseconds of every hand-off.
//
// What we do about it
//   - We take a signal only while its disposition is the default (scanning
//     from SIGRTMAX down), install an empty handler without SA_RESTART, and
//     before every wait check that the handler is still ours. If the
//     application (or a runtime such as Go's, which handles nearly all)
//     owns it, or the signal is blocked in the calling thread, or no
//     watchdog thread can be started, the wait falls back to polling. We
//     never replace a handler we did not install.
//   - A timed waiter registers its deadline with one watchdog thread (started
//     on first need, all signals blocked, a small stack). The watchdog sleeps
//     until the earliest deadline, then tgkill()s that waiter, and again
//     every millisecond until it unregisters, so a signal lost to the race is
//     followed by another: a wait overshoots by ~1 ms at most in that rare
//     case. Registering and unregistering take a mutex and make no syscall
//     unless the watchdog must be woken, so the hand-off path stays at the
//     kernel floor.
//   - The watchdog signals only registered waiters, under its mutex. A waiter
//     that was signaled makes one syscall after unregistering, so the signal
//     is delivered to our empty handler there, never into application code.
//   - After fork() the child has no watchdog; a pthread_atfork handler resets
//     the state so the child starts its own when it needs one.
//   - IPL_WAIT_SIGNAL in the environment (0 = off, or a signal number) and
//     ipl_set_wait_signal() choose or disable it.
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <new>

#include "ipl/ipl.h"
#include "wait_signal.hpp"

namespace ipl::detail {
namespace {

constexpr std::chrono::milliseconds kResignalInterval{1};

std::mutex config_mutex;
std::atomic<bool> configured{false};  // auto-claim done or explicit choice made
std::atomic<int> active_signal{0};    // 0: none, timed waits poll

// Its only job is to exist: delivery without SA_RESTART makes the blocking
// fcntl() return EINTR. It touches nothing, not even errno.
void on_wait_signal(int) {}

bool handler_is(int signo, void (*handler)(int)) {
  struct sigaction current;
  if (sigaction(signo, nullptr, &current) != 0) return false;
  return !(current.sa_flags & SA_SIGINFO) && current.sa_handler == handler;
}

// Free for us: the default disposition, or our own handler from before.
bool is_available(int signo) {
  return handler_is(signo, SIG_DFL) || handler_is(signo, on_wait_signal);
}

bool install_handler(int signo) {
  struct sigaction ours;
  std::memset(&ours, 0, sizeof ours);
  ours.sa_handler = on_wait_signal;
  sigemptyset(&ours.sa_mask);
  ours.sa_flags = 0;  // no SA_RESTART: interrupting the wait is the point
  return sigaction(signo, &ours, nullptr) == 0;
}

bool is_valid_signal(int signo) {
  return signo > 0 && signo < NSIG && signo != SIGKILL && signo != SIGSTOP;
}

// Called with config_mutex held.
int claim_automatically() {
  const char *env = getenv("IPL_WAIT_SIGNAL");
  if (env && *env) {
    char *end = nullptr;
    const long wanted = strtol(env, &end, 10);
    if (*end != '\0' || !is_valid_signal(int(wanted))) return 0;  // "0", "off", junk
    const int signo = int(wanted);
    return is_available(signo) && install_handler(signo) ? signo : 0;
  }
  for (int signo = SIGRTMAX; signo >= SIGRTMIN; --signo) {
    if (is_available(signo) && install_handler(signo)) return signo;
  }
  return 0;
}

// The signal to use for this wait, or 0 to poll.
int signal_for_wait() {
  if (!configured.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> guard(config_mutex);
    if (!configured.load(std::memory_order_relaxed)) {
      active_signal.store(claim_automatically(), std::memory_order_relaxed);
      configured.store(true, std::memory_order_release);
    }
  }
  int signo = active_signal.load(std::memory_order_relaxed);
  if (signo != 0 && !handler_is(signo, on_wait_signal)) {
    // The application took the signal over: give it up for good.
    active_signal.compare_exchange_strong(signo, 0, std::memory_order_relaxed);
    return 0;
  }
  return signo;
}

bool blocked_in_this_thread(int signo) {
  sigset_t mask;
  if (pthread_sigmask(SIG_BLOCK, nullptr, &mask) != 0) return true;
  return sigismember(&mask, signo) == 1;
}

using waiter = deadline_interrupt::waiter;
using clock = wait_deadline::clock;

// The deadline watchdog. Heap-allocated and never destroyed: its thread
// outlives static destructors.
class watchdog {
 public:
  // Adds `w` and makes sure a thread will signal it; false if no thread
  // could be started (the caller then polls).
  bool add(waiter *w) {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!running_ && !start_thread()) return false;
    w->prev = nullptr;
    w->next = head_;
    if (head_) head_->prev = w;
    head_ = w;
    // Wake the watchdog only when it sleeps past this deadline.
    if (w->next_signal < sleeping_until_) wake_.notify_one();
    return true;
  }

  // Removes `w`; true if it has been signaled.
  bool remove(waiter *w) {
    std::lock_guard<std::mutex> guard(mutex_);
    if (w->prev) w->prev->next = w->next; else head_ = w->next;
    if (w->next) w->next->prev = w->prev;
    return w->signaled;
  }

  static watchdog &instance() {
    static watchdog *the_watchdog = new watchdog;
    return *the_watchdog;
  }

 private:
  watchdog() {
    pthread_atfork([] { instance().mutex_.lock(); },
                   [] { instance().mutex_.unlock(); },
                   [] {
                     // Only the forking thread exists in the child, and it
                     // is not waiting: no waiters, no watchdog thread.
                     watchdog &self = instance();
                     self.head_ = nullptr;
                     self.running_ = false;
                     self.sleeping_until_ = clock::time_point::max();
                     self.mutex_.unlock();
                   });
  }

  // Called with mutex_ held.
  bool start_thread() {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return false;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    // The thread inherits a mask blocking everything, so the application's
    // process-directed signals are never handled on it.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_t thread;
    const int rc = pthread_create(&thread, &attr, &watchdog::run, this);
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    pthread_attr_destroy(&attr);
    running_ = rc == 0;
    return running_;
  }

  static void *run(void *self) {
    static_cast<watchdog *>(self)->loop();
    return nullptr;
  }

  void loop() {
    const pid_t pid = getpid();
    std::unique_lock<std::mutex> guard(mutex_);
    for (;;) {
      const clock::time_point now = clock::now();
      clock::time_point earliest = clock::time_point::max();
      for (waiter *w = head_; w; w = w->next) {
        if (w->next_signal <= now) {
          tgkill(pid, w->thread_id, w->signo);
          w->signaled = true;
          w->next_signal = now + kResignalInterval;
        }
        earliest = std::min(earliest, w->next_signal);
      }
      sleeping_until_ = earliest;
      if (earliest == clock::time_point::max()) {
        wake_.wait(guard);
      } else {
        wake_.wait_until(guard, earliest);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  waiter *head_ = nullptr;
  bool running_ = false;
  clock::time_point sleeping_until_ = clock::time_point::max();
};
}  // namespace

deadline_interrupt::deadline_interrupt(wait_deadline::clock::time_point deadline) {
  const int signo = signal_for_wait();
  if (signo == 0 || blocked_in_this_thread(signo)) return;
  self_.thread_id = gettid();
  self_.signo = signo;
  self_.next_signal = deadline;
  armed_ = watchdog::instance().add(&self_);
}

deadline_interrupt::~deadline_interrupt() {
  if (!armed_) return;
  if (watchdog::instance().remove(&self_)) {
    // A signal may be pending on this thread: a syscall's return delivers
    // it to our empty handler here, not later inside application code.
    sigset_t pending;
    sigpending(&pending);
  }
}

int set_wait_signal(int signo) {
  std::lock_guard<std::mutex> guard(config_mutex);
  int chosen = 0;
  if (signo == IPL_WAIT_SIGNAL_AUTO) {
    chosen = claim_automatically();
  } else if (signo != 0) {
    if (!is_valid_signal(signo)) return IPL_E_INVALID;
    if (!is_available(signo)) return IPL_E_SIGNAL_IN_USE;
    if (!install_handler(signo)) return IPL_E_INVALID;  // e.g. reserved by libc
    chosen = signo;
  }
  // A signal we stop using keeps our empty handler: a wait in another thread
  // may still have a timer armed with it, and the default action of most
  // signals would kill the process.
  active_signal.store(chosen, std::memory_order_relaxed);
  configured.store(true, std::memory_order_release);
  return IPL_OK;
}

int current_wait_signal() {
  return signal_for_wait();
}

}  // namespace ipl::detail

// SPDX-License-Identifier: MIT
// linux_wait_signal.cpp — timed waits that sleep in the kernel.
//
// What the OS gives
//   A blocking F_OFD_SETLKW wakes microseconds after the holder releases,
//   but it has no timeout. A signal delivered to the waiting thread, handled
//   without SA_RESTART, makes it return EINTR. A POSIX timer with
//   SIGEV_THREAD_ID sends a signal to one thread at an absolute time on
//   CLOCK_MONOTONIC.
//
// What it gets wrong
//   - Signals are a process-wide resource: the disposition of a signal
//     belongs to the application, and a signal that lands a moment before
//     the thread enters the blocking call is simply lost (the call then
//     blocks on).
//   - Real-time signals sent with tgkill() queue, one entry each, against the
//     user's RLIMIT_SIGPENDING; once that queue is full every send fails
//     with EAGAIN, for every process of the user. A sender that re-sends
//     while a waiter is stuck fills it; a waiter whose deadline signal
//     cannot be sent is never woken.
//   - On some file systems (FUSE, NFS, CIFS) a signal does not end a
//     blocking lock call at all: FUSE forwards it as an interrupt request
//     and, when the daemon ignores that, waits uninterruptibly.
//
// What we do about it
//   - We take a signal only while its disposition is the default (scanning
//     from SIGRTMAX down), install an empty handler without SA_RESTART, and
//     before every wait check that the handler is still ours. If the
//     application (or a runtime such as Go's) owns it, or the signal is
//     blocked in the calling thread, the wait polls instead. We never replace
//     a handler we did not install.
//   - Each thread that makes a timed wait gets one POSIX timer (made on its
//     first contended timed wait, kept until the thread exits). A wait arms
//     it for the deadline, repeating every millisecond, so a signal lost to
//     the race is followed by another; the wait disarms it when the call
//     returns (one timer_settime(), ~0.5 us here). A timer's signal entry is
//     allocated when the timer is made, never at expiry, and a timer never
//     queues a second signal while its first is pending (the kernel counts
//     an overrun instead): a stuck waiter holds one queue entry, and a
//     deadline can never fail to fire. If the timer cannot be made (the
//     queue limit is reached, RLIMIT_SIGPENDING is 0), the wait polls.
//   - signal_can_interrupt_lock_wait() lets the kernel path be used only on
//     file systems known to be local (fstatfs); on any other a timed wait
//     polls, so it ends on time even where a lock call cannot be interrupted.
//   - The timer and the signal are the thread's own: no other thread is ever
//     signaled, and a signal that fires just as the wait returns is
//     delivered to our empty handler on the return from disarming.
//   - A timer does not survive fork(): a thread's timer remembers the
//     process token it was made under (posix_fcntl.cpp) and is made anew
//     in a child.
//   - IPL_WAIT_SIGNAL in the environment (0 = off, or a signal number) and
//     ipl_set_wait_signal() choose or disable it.
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#include "ipl/ipl.h"
#include "posix_fcntl.hpp"
#include "posix_syscalls.hpp"
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
  if (sys::calls.sigaction(signo, nullptr, &current) != 0) return false;
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
  return sys::calls.sigaction(signo, &ours, nullptr) == 0;
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
  if (sys::calls.pthread_sigmask(SIG_BLOCK, nullptr, &mask) != 0) return true;
  return sigismember(&mask, signo) == 1;
}

timespec to_timespec(wait_deadline::clock::duration since_epoch) {
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  timespec ts;
  ts.tv_sec = time_t(secs.count());
  ts.tv_nsec = long(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
  return ts;
}

// The calling thread's wait timer (see the top of the file).
class thread_timer {
 public:
  ~thread_timer() {
    if (made_ && token_ == posix::process_token()) sys::calls.timer_delete(id_);
  }

  // Makes the timer, or makes it anew after a fork or a change of signal;
  // false if that cannot be done.
  bool ready_for(int signo) {
    const uint64_t token = posix::process_token();
    if (made_ && token_ == token && signo_ == signo) return true;
    if (made_ && token_ == token) sys::calls.timer_delete(id_);
    made_ = false;
    sigevent event;
    std::memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = signo;
#ifdef sigev_notify_thread_id
    event.sigev_notify_thread_id = gettid();
#else
    event._sigev_un._tid = gettid();
#endif
    // Fails with EAGAIN when the user's real-time signal queue is full.
    if (sys::calls.timer_create(CLOCK_MONOTONIC, &event, &id_) != 0) return false;
    made_ = true;
    token_ = token;
    signo_ = signo;
    return true;
  }

  // Sends the signal to this thread at `when` and every kResignalInterval
  // after; false if that cannot be done. Any thread may call it once the
  // timer is ready.
  bool arm(wait_deadline::clock::time_point when) {
    itimerspec spec;
    // steady_clock is CLOCK_MONOTONIC in libstdc++ and libc++.
    spec.it_value = to_timespec(when.time_since_epoch());
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;  // 0 disarms
    spec.it_interval = to_timespec(kResignalInterval);
    return sys::calls.timer_settime(id_, TIMER_ABSTIME, &spec) == 0;
  }

  // Stops it. A signal already sent is delivered, to our empty handler,
  // as this system call returns.
  void disarm() {
    itimerspec off;
    std::memset(&off, 0, sizeof off);
    sys::calls.timer_settime(id_, 0, &off);
  }

 private:
  timer_t id_{};
  bool made_ = false;
  uint64_t token_ = 0;
  int signo_ = 0;
};

thread_local thread_timer this_thread_timer;

// f_type values (linux/magic.h) of local file systems, on which a signal
// ends a blocking fcntl lock wait.
bool is_local_file_system(long type) {
  switch (static_cast<unsigned long>(type) & 0xffffffffUL) {
    case 0xEF53:      // ext2, ext3, ext4
    case 0x58465342:  // xfs
    case 0x9123683E:  // btrfs
    case 0x01021994:  // tmpfs
    case 0x858458F6:  // ramfs
    case 0xF2F52010:  // f2fs
    case 0x2FC12FC1:  // zfs
    case 0xCA451A4E:  // bcachefs
    case 0x794C7630:  // overlayfs
    case 0x52654973:  // reiserfs
    case 0x3153464A:  // jfs
    case 0x3434:      // nilfs2
    case 0x4D44:      // vfat, msdos
    case 0x2011BAB0:  // exfat
    case 0x7366746E:  // ntfs3
    case 0x482B:      // hfsplus
    case 0xF15F:      // ecryptfs
    case 0x73717368:  // squashfs
    case 0x9660:      // iso9660
    case 0x15013346:  // udf
      return true;
    default:
      return false;
  }
}

}  // namespace

bool signal_can_interrupt_lock_wait(int fd) {
  struct statfs fs;
  if (sys::calls.fstatfs(fd, &fs) != 0) return false;
  return is_local_file_system(long(fs.f_type));
}

deadline_interrupt::deadline_interrupt(const wait_deadline &deadline) {
  const int signo = signal_for_wait();
  if (signo == 0 || blocked_in_this_thread(signo)) return;
  if (!this_thread_timer.ready_for(signo)) return;
  owner_timer_ = &this_thread_timer;
  timed_ = deadline.is_timed();
  armed_ = !timed_ || this_thread_timer.arm(deadline.when());
}

deadline_interrupt::~deadline_interrupt() {
  if (armed_ && (timed_ || fired_.load(std::memory_order_acquire))) this_thread_timer.disarm();
}

void deadline_interrupt::fire_now() {
  // The owner's timer, armed from this (canceling) thread: thread_local
  // objects are reached through the owner, not through this thread.
  if (!armed_) return;
  fired_.store(true, std::memory_order_release);
  static_cast<thread_timer *>(owner_timer_)->arm(wait_deadline::clock::now());
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
  // may still have its timer armed with it, and the default action of most
  // signals would kill the process.
  active_signal.store(chosen, std::memory_order_relaxed);
  configured.store(true, std::memory_order_release);
  return IPL_OK;
}

int current_wait_signal() {
  return signal_for_wait();
}

}  // namespace ipl::detail

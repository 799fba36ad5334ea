// SPDX-License-Identifier: MIT
// The signal that interrupts a blocking lock wait at its deadline, so that
// timed waits sleep in the kernel instead of polling. Linux implements it
// (linux_wait_signal.cpp); elsewhere it is never available
// (no_wait_signal.cpp) and timed waits poll.
#ifndef IPL_SRC_WAIT_SIGNAL_HPP
#define IPL_SRC_WAIT_SIGNAL_HPP

#include <atomic>

#include "wait_deadline.hpp"

namespace ipl::detail {

// While it lives, the calling thread's wait timer is armed: the kernel sends
// the thread the wait signal at the deadline and every millisecond after,
// until it is destroyed. The repeats close the race of a signal that lands
// just before the thread enters the blocking call; a timer never has more
// than one signal queued, however long the thread stays blocked. For a
// forever wait the timer is made but not armed: only fire_now() (from
// ipl_cancel, on any thread) sets it off.
// armed() is false when the signal cannot be used right now (disabled, not
// ours any more, blocked in this thread, or no timer could be made — e.g.
// the real-time signal queue limit is reached): the caller must then poll.
class deadline_interrupt {
 public:
  explicit deadline_interrupt(const wait_deadline &deadline);
  ~deadline_interrupt();
  deadline_interrupt(const deadline_interrupt &) = delete;
  deadline_interrupt &operator=(const deadline_interrupt &) = delete;

  bool armed() const { return armed_; }
  // Sends the signal now, and every millisecond until destruction. May be
  // called from another thread while the owner is blocked, never after the
  // owner has left its wait (wait_cancel guarantees that).
  void fire_now();

 private:
  bool armed_ = false;
  bool timed_ = false;
  std::atomic<bool> fired_{false};
  void *owner_timer_ = nullptr;  // the owning thread's timer, for fire_now()
};

// Whether a signal ends a blocking lock call on the open file `fd`. False on
// file systems whose lock calls may wait uninterruptibly (FUSE, NFS, CIFS,
// and any other not known to be local): timed waits there poll.
bool signal_can_interrupt_lock_wait(int fd);

// ipl_set_wait_signal / ipl_wait_signal, as documented in ipl.h.
int set_wait_signal(int signo);
int current_wait_signal();

}  // namespace ipl::detail

#endif  // IPL_SRC_WAIT_SIGNAL_HPP

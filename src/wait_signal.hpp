// The signal that interrupts a blocking lock wait at its deadline, so that
// timed waits sleep in the kernel instead of polling. Linux implements it
// (linux_wait_signal.cpp); elsewhere it is never available
// (no_wait_signal.cpp) and timed waits poll.
#ifndef IPL_SRC_WAIT_SIGNAL_HPP
#define IPL_SRC_WAIT_SIGNAL_HPP

#include "wait_deadline.hpp"

namespace ipl::detail {

// While it lives, the calling thread is registered with the deadline
// watchdog, which sends it the wait signal at `deadline` and again every
// millisecond after, until it is destroyed. The repeats close the race of a
// signal that lands just before the thread enters the blocking call.
// armed() is false when the signal cannot be used right now (disabled, not
// ours any more, blocked in this thread, or no watchdog thread): the caller
// must then poll.
class deadline_interrupt {
 public:
  explicit deadline_interrupt(wait_deadline::clock::time_point deadline);
  ~deadline_interrupt();
  deadline_interrupt(const deadline_interrupt &) = delete;
  deadline_interrupt &operator=(const deadline_interrupt &) = delete;

  bool armed() const { return armed_; }

  // The watchdog's bookkeeping, guarded by its mutex: an intrusive list
  // node, so registering never allocates.
  struct waiter {
    waiter *prev = nullptr;
    waiter *next = nullptr;
    int thread_id = 0;
    int signo = 0;
    wait_deadline::clock::time_point next_signal{};
    bool signaled = false;
  };

 private:
  bool armed_ = false;
  waiter self_;
};

// ipl_set_wait_signal / ipl_wait_signal, as documented in ipl.h.
int set_wait_signal(int signo);
int current_wait_signal();

}  // namespace ipl::detail

#endif  // IPL_SRC_WAIT_SIGNAL_HPP

// SPDX-License-Identifier: MIT
// wait_policy: how a lock is waited for, on every platform. The backend
// supplies the OS calls for one lock request (try, block); the policy decides
// when to call which, keeps the deadline and lets ipl_cancel() end the wait.
//
//   timeout 0         one try; never sleeps.
//   IPL_WAIT_FOREVER  a blocking kernel wait that the wait signal can end
//                     (for ipl_cancel), re-entered when another signal
//                     ends it; where no signal can end it, tries with
//                     back-off, so that the wait stays cancelable.
//   timeout > 0       one try; then, where a signal can end the kernel's
//                     blocking call on this file and the wait signal can be
//                     armed (wait_signal.hpp), a blocking wait ended by that
//                     signal at the deadline; otherwise tries with capped,
//                     jittered back-off (50 us doubling to 10 ms, +-25 %).
//                     IPL_E_TIMEOUT only once the deadline has passed.
#ifndef IPL_SRC_WAIT_POLICY_HPP
#define IPL_SRC_WAIT_POLICY_HPP

#include <atomic>
#include <mutex>

#include "platform.hpp"
#include "wait_deadline.hpp"

namespace ipl::detail {

// Not an ipl status: a blocking wait ended by a signal (EINTR).
constexpr int kInterrupted = 1;

// Something that ends the current blocking step of a wait at once: the
// wait signal's timer, the polling sleep, the classic backend's in-process
// wait. Called by wait_cancel::cancel() with its mutex held.
class waker {
 public:
  virtual void wake() = 0;

 protected:
  ~waker() = default;
};

// One wait in progress, as ipl_cancel() sees it. The waiting thread enters
// each blocking step with its waker and leaves it afterwards; cancel() from
// any thread marks the wait canceled and wakes the step in progress.
class wait_cancel {
 public:
  void cancel();
  bool canceled() const { return canceled_.load(std::memory_order_acquire); }
  // False (and nothing entered) when the wait is canceled already. Never
  // call with a mutex held that the waker takes.
  bool enter(waker *step);
  void leave();

 private:
  std::mutex mutex_;
  std::atomic<bool> canceled_{false};
  waker *step_ = nullptr;
};

// Enters a blocking step for its scope.
class cancel_step {
 public:
  cancel_step(wait_cancel *cancel, waker *step)
      : cancel_(cancel), entered_(cancel ? cancel->enter(step) : true) {}
  ~cancel_step() {
    if (cancel_ && entered_) cancel_->leave();
  }
  cancel_step(const cancel_step &) = delete;
  cancel_step &operator=(const cancel_step &) = delete;
  // False when the wait was canceled before the step began.
  bool entered() const { return entered_; }

 private:
  wait_cancel *cancel_;
  bool entered_;
};

// The OS calls of one lock request, in one mode.
class lock_attempts {
 public:
  virtual ~lock_attempts() = default;
  // One attempt that never sleeps: IPL_OK, IPL_E_TIMEOUT when the lock is
  // held elsewhere, or an OS failure.
  virtual os_result try_lock() = 0;
  // Sleeps in the kernel until the lock is granted: IPL_OK, kInterrupted
  // when a signal ended the sleep, or an OS failure.
  virtual os_result wait_lock() = 0;
  // Whether a signal ends wait_lock() (false where the OS call cannot be
  // interrupted, or has no way to be).
  virtual bool wait_is_interruptible() const = 0;
  // For a forever wait that cannot be interrupted: true blocks in
  // wait_lock() anyway (ipl_cancel cannot end it), false polls.
  virtual bool forever_blocks_uninterruptibly() const = 0;
};

os_result wait_for_lock(lock_attempts &attempts, const wait_context &wait);

// Statuses of a wait that ended early.
constexpr os_result kTimedOut{IPL_E_TIMEOUT, 0};
constexpr os_result kCanceled{IPL_E_CANCELED, 0};

}  // namespace ipl::detail

#endif  // IPL_SRC_WAIT_POLICY_HPP

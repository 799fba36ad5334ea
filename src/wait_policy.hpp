// wait_policy: how a lock is waited for within a deadline, on every
// platform. The backend supplies the OS calls for one lock request (try,
// block, sleep); the policy decides when to call which.
//
//   timeout 0         one try; never sleeps.
//   IPL_WAIT_FOREVER  a blocking kernel wait, re-entered when a signal ends it.
//   timeout > 0       one try; then, where a signal can end the kernel's
//                     blocking call on this file and the wait signal can be
//                     armed (wait_signal.hpp), a blocking wait ended by that
//                     signal at the deadline; otherwise tries with capped,
//                     jittered back-off (50 us doubling to 10 ms, +-25 %).
//                     IPL_E_TIMEOUT only once the deadline has passed.
#ifndef IPL_SRC_WAIT_POLICY_HPP
#define IPL_SRC_WAIT_POLICY_HPP

#include "platform.hpp"
#include "wait_deadline.hpp"

namespace ipl::detail {

// Not an ipl status: a blocking wait ended by a signal (EINTR).
constexpr int kInterrupted = 1;

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
  // interrupted, or has no way to be: timed waits then poll).
  virtual bool wait_is_interruptible() const = 0;
  // Sleeps until `until` on the monotonic clock (or a little later; never
  // earlier unless a signal ends the sleep).
  virtual void sleep_until(wait_deadline::clock::time_point until) = 0;
};

os_result wait_for_lock(lock_attempts &attempts, const wait_deadline &deadline);

}  // namespace ipl::detail

#endif  // IPL_SRC_WAIT_POLICY_HPP

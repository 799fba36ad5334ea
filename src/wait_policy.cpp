#include "wait_policy.hpp"

#include <algorithm>
#include <chrono>
#include <random>

#include "wait_signal.hpp"

namespace ipl::detail {
namespace {

// Jittered back-off so that many pollers do not wake in lock-step.
class backoff {
 public:
  std::chrono::microseconds next() {
    const auto now = current_;
    current_ = std::min(current_ * 2, kCap);
    std::uniform_int_distribution<long> jitter(long(now.count()) * 3 / 4,
                                               long(now.count()) * 5 / 4);
    return std::chrono::microseconds(jitter(random_));
  }

 private:
  static constexpr std::chrono::microseconds kFirst{50};
  static constexpr std::chrono::microseconds kCap{10000};
  std::chrono::microseconds current_ = kFirst;
  std::minstd_rand random_{std::random_device{}()};
};

const os_result kTimedOut{IPL_E_TIMEOUT, 0};

// Blocks until granted; a signal (other than at the deadline) just
// re-enters the wait, so signals never shorten or break it.
os_result wait_in_kernel(lock_attempts &attempts, const wait_deadline &deadline) {
  for (;;) {
    const os_result result = attempts.wait_lock();
    if (result.status != kInterrupted) return result;
    if (deadline.is_timed() && deadline.expired()) return kTimedOut;
  }
}

os_result poll(lock_attempts &attempts, const wait_deadline &deadline) {
  backoff delay;
  for (;;) {
    attempts.sleep_until(std::min(wait_deadline::clock::now() + delay.next(), deadline.when()));
    const os_result result = attempts.try_lock();
    if (result.status != IPL_E_TIMEOUT) return result;
    if (deadline.expired()) return kTimedOut;
  }
}

}  // namespace

os_result wait_for_lock(lock_attempts &attempts, const wait_deadline &deadline) {
  if (deadline.is_forever()) return wait_in_kernel(attempts, deadline);

  // One try first: an uncontended lock needs no timer, and a try never sleeps.
  const os_result tried = attempts.try_lock();
  if (tried.status != IPL_E_TIMEOUT || deadline.expired()) return tried;

  if (attempts.wait_is_interruptible()) {
    const deadline_interrupt interrupt(deadline.when());
    if (interrupt.armed()) return wait_in_kernel(attempts, deadline);
  }
  return poll(attempts, deadline);
}

}  // namespace ipl::detail

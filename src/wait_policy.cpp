// SPDX-License-Identifier: MIT
#include "wait_policy.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>

#include "wait_signal.hpp"

namespace ipl::detail {

void wait_cancel::cancel() {
  std::lock_guard<std::mutex> guard(mutex_);
  canceled_.store(true, std::memory_order_release);
  if (step_) step_->wake();
}

bool wait_cancel::enter(waker *step) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (canceled()) return false;
  step_ = step;
  return true;
}

void wait_cancel::leave() {
  std::lock_guard<std::mutex> guard(mutex_);
  step_ = nullptr;
}

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

bool is_canceled(const wait_context &wait) { return wait.cancel && wait.cancel->canceled(); }

// The wait signal as a waker: fires the thread's timer now.
class interrupt_waker final : public waker {
 public:
  explicit interrupt_waker(deadline_interrupt &interrupt) : interrupt_(interrupt) {}
  void wake() override { interrupt_.fire_now(); }

 private:
  deadline_interrupt &interrupt_;
};

// Blocks until granted, with `interrupt` armed; a signal that is neither
// the deadline nor a cancel just re-enters the wait, so signals never
// shorten or break it.
os_result wait_in_kernel(lock_attempts &attempts, const wait_context &wait,
                         deadline_interrupt &interrupt) {
  interrupt_waker wake_me(interrupt);
  const cancel_step step(wait.cancel, &wake_me);
  if (!step.entered()) return kCanceled;
  for (;;) {
    const os_result result = attempts.wait_lock();
    if (result.status != kInterrupted) return result;
    if (is_canceled(wait)) return kCanceled;
    if (wait.deadline.is_timed() && wait.deadline.expired()) return kTimedOut;
  }
}

class sleep_waker final : public waker {
 public:
  explicit sleep_waker(poll_sleep &sleep) : sleep_(sleep) {}
  void wake() override { sleep_.wake(); }

 private:
  poll_sleep &sleep_;
};

os_result poll(lock_attempts &attempts, const wait_context &wait) {
  const std::unique_ptr<poll_sleep> sleep = make_poll_sleep();
  sleep_waker wake_me(*sleep);
  const cancel_step step(wait.cancel, &wake_me);
  if (!step.entered()) return kCanceled;
  backoff delay;
  for (;;) {
    auto until = wait_deadline::clock::now() + delay.next();
    if (wait.deadline.is_timed()) until = std::min(until, wait.deadline.when());
    sleep->sleep_until(until);
    if (is_canceled(wait)) return kCanceled;
    const os_result result = attempts.try_lock();
    if (result.status != IPL_E_TIMEOUT) return result;
    if (wait.deadline.is_timed() && wait.deadline.expired()) return kTimedOut;
  }
}

}  // namespace

os_result wait_for_lock(lock_attempts &attempts, const wait_context &wait) {
  // One try first: an uncontended lock needs no timer, and a try never
  // sleeps.
  const wait_deadline &deadline = wait.deadline;
  const os_result tried = attempts.try_lock();
  if (tried.status != IPL_E_TIMEOUT || deadline.expired()) return tried;
  if (is_canceled(wait)) return kCanceled;

  if (attempts.wait_is_interruptible()) {
    deadline_interrupt interrupt(deadline);
    if (interrupt.armed()) return wait_in_kernel(attempts, wait, interrupt);
  }
  if (deadline.is_forever() && attempts.forever_blocks_uninterruptibly()) {
    for (;;) {
      const os_result result = attempts.wait_lock();
      if (result.status != kInterrupted) return result;
    }
  }
  return poll(attempts, wait);
}

}  // namespace ipl::detail

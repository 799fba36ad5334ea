#include "lock_handle.hpp"

#include <utility>

namespace ipl::detail {

lock_handle::lock_handle(std::unique_ptr<lock_file> file) : file_(std::move(file)) {}

lock_handle::~lock_handle() = default;

int lock_handle::finish(const os_result &result) {
  if (result.os_error != 0) last_os_error_.store(result.os_error, std::memory_order_relaxed);
  return result.status;
}

int lock_handle::acquire(lock_mode mode, int64_t timeout_ms) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    // Held in any mode, or being acquired by another thread: waiting would
    // either deadlock on ourselves or silently upgrade/downgrade.
    if (state_ != state::idle) return IPL_E_WOULD_DEADLOCK;
    state_ = state::acquiring;
  }
  // The deadline starts after the bookkeeping, so it covers only the wait.
  const os_result result = file_->lock(mode, wait_deadline::from_timeout_ms(timeout_ms));
  {
    std::lock_guard<std::mutex> guard(mutex_);
    state_ = result.status == IPL_OK ? held_state(mode) : state::idle;
  }
  return finish(result);
}

int lock_handle::release(lock_mode mode) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (state_ != held_state(mode)) return IPL_E_NOT_HELD;
  const os_result result = file_->unlock();
  // On an OS failure the lock may still be held: keep the state so that the
  // caller can retry, and ipl_close() still releases by closing.
  if (result.status == IPL_OK) state_ = state::idle;
  return finish(result);
}

}  // namespace ipl::detail

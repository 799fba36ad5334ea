#include "lock_handle.hpp"

#include <new>
#include <utility>

namespace ipl::detail {
namespace {

// A path that names a new file after every grant is being replaced in a
// loop: give up after this many reopens in one call (ipl.h documents it).
constexpr int kMaxReopens = 100;

struct handle_registry {
  std::mutex mutex;
  lock_handle *head = nullptr;
};

// Never destroyed: handles may be closed from static destructors.
handle_registry &the_registry() {
  static handle_registry *registry = new handle_registry;
  return *registry;
}

}  // namespace

lock_handle::lock_handle(std::unique_ptr<lock_file> file) : file_(std::move(file)) {
  handle_registry &registry = the_registry();
  std::lock_guard<std::mutex> guard(registry.mutex);
  next_ = registry.head;
  if (next_) next_->prev_ = this;
  registry.head = this;
}

lock_handle::~lock_handle() {
  {
    handle_registry &registry = the_registry();
    std::lock_guard<std::mutex> guard(registry.mutex);
    if (prev_) prev_->next_ = next_; else registry.head = next_;
    if (next_) next_->prev_ = prev_;
  }
  file_.reset();  // releases what is held (nothing of a parent's, after fork)
}

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
  const os_result result = acquire_at_path(mode, wait_deadline::from_timeout_ms(timeout_ms));
  {
    std::lock_guard<std::mutex> guard(mutex_);
    state_ = result.status == IPL_OK ? held_state(mode) : state::idle;
  }
  return finish(result);
}

os_result lock_handle::acquire_at_path(lock_mode mode, const wait_deadline &deadline) {
  for (int reopens = 0;; ++reopens) {
    if (needs_reopen_) {
      const os_result reopened = file_->reopen();
      if (reopened.status != IPL_OK) return reopened;
      needs_reopen_ = false;
    }
    if (mode == lock_mode::exclusive && !file_->writable())
      return os_result{IPL_E_ACCESS, file_->write_denied_error()};
    const os_result locked = file_->lock(mode, deadline);
    if (locked.status != IPL_OK) return locked;
    bool same = false;
    const os_result checked = file_->still_at_path(&same);
    if (checked.status == IPL_OK && same) return {};
    // A lock on a file the path no longer names excludes nobody who opens
    // the path from now on: let go of it, and lock what the path names.
    file_->unlock();
    if (checked.status != IPL_OK) return checked;
    if (reopens == kMaxReopens) return os_result{IPL_E_OS, kReplacedTooOftenError};
    needs_reopen_ = true;
  }
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

void lock_handle::lock_all_for_fork() {
  handle_registry &registry = the_registry();
  registry.mutex.lock();
  for (lock_handle *handle = registry.head; handle; handle = handle->next_) handle->mutex_.lock();
}

void lock_handle::unlock_all_after_fork() {
  handle_registry &registry = the_registry();
  for (lock_handle *handle = registry.head; handle; handle = handle->next_) handle->mutex_.unlock();
  registry.mutex.unlock();
}

void lock_handle::forget_parent_in_child(fork_kind kind) {
  handle_registry &registry = the_registry();
  if (kind == fork_kind::unnoticed) new (&registry.mutex) std::mutex;
  for (lock_handle *handle = registry.head; handle; handle = handle->next_) {
    if (kind == fork_kind::unnoticed) new (&handle->mutex_) std::mutex;
    // Whatever the parent held or was acquiring is the parent's.
    handle->state_ = state::idle;
    handle->needs_reopen_ = true;
    if (kind == fork_kind::after_prepare) handle->mutex_.unlock();
  }
  if (kind == fork_kind::after_prepare) registry.mutex.unlock();
}

void core_prepare_fork() { lock_handle::lock_all_for_fork(); }
void core_after_fork_parent() { lock_handle::unlock_all_after_fork(); }
void core_after_fork_child(fork_kind kind) { lock_handle::forget_parent_in_child(kind); }

}  // namespace ipl::detail

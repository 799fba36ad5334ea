// SPDX-License-Identifier: MIT
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

lock_handle::lock_handle(std::unique_ptr<lock_file> file, lock_mode held_mode)
    : lock_handle(std::move(file)) {
  state_ = held_state(held_mode);
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
  wait_cancel cancel;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    // Held in any mode, or being acquired by another thread: waiting would
    // either deadlock on ourselves or silently upgrade/downgrade.
    if (state_ != state::idle) return IPL_E_WOULD_DEADLOCK;
    state_ = state::acquiring;
    current_wait_ = &cancel;
  }
  // The deadline starts after the bookkeeping, so it covers only the wait.
  const os_result result =
      acquire_at_path(mode, wait_context{wait_deadline::from_timeout_ms(timeout_ms), &cancel});
  {
    std::lock_guard<std::mutex> guard(mutex_);
    state_ = result.status == IPL_OK ? held_state(mode) : state::idle;
    current_wait_ = nullptr;
  }
  return finish(result);
}

os_result lock_handle::acquire_at_path(lock_mode mode, const wait_context &wait) {
  for (int reopens = 0;; ++reopens) {
    if (needs_reopen_) {
      const os_result reopened = file_->reopen();
      if (reopened.status != IPL_OK) return reopened;
      needs_reopen_ = false;
    }
    if (mode == lock_mode::exclusive && !file_->writable())
      return os_result{IPL_E_ACCESS, file_->write_denied_error()};
    const os_result locked = file_->lock(mode, wait);
    if (locked.status != IPL_OK) return locked;
    bool same = false;
    const os_result checked = file_->still_at_path(&same);
    if (checked.status == IPL_OK && same) return {};
    // A lock on a file the path no longer names excludes nobody who opens
    // the path from now on: let go of it, and lock what the path names.
    const os_result unlocked = file_->unlock();
    if (checked.status == IPL_OK && reopens < kMaxReopens) {
      needs_reopen_ = true;
      continue;
    }
    // Giving up: an unlock that failed may have left the lock held, and
    // only closing the descriptor (reopening the path) lets go of it now.
    if (unlocked.status != IPL_OK) needs_reopen_ = file_->reopen().status != IPL_OK;
    return checked.status != IPL_OK ? checked : os_result{IPL_E_OS, kReplacedTooOftenError};
  }
}

int lock_handle::release(lock_mode mode) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (state_ != held_state(mode)) return IPL_E_NOT_HELD;
  const os_result result = file_->unlock();
  // On an OS failure the lock may still be held: keep the state so that the
  // caller can retry, and ipl_close() still releases by closing. A lost
  // lock is gone either way.
  if (result.status == IPL_OK) state_ = state::idle;
  if (result.status == IPL_E_LOST) forget_lost_lock();
  return finish(result);
}

int lock_handle::check() {
  std::lock_guard<std::mutex> guard(mutex_);
  if (state_ == state::acquiring || state_ == state::upgrading) return IPL_E_WOULD_DEADLOCK;
  if (state_ == state::idle) return IPL_E_NOT_HELD;
  const os_result result =
      file_->check(state_ == state::held_exclusive ? lock_mode::exclusive : lock_mode::shared);
  if (result.status == IPL_E_LOST) {
    // What may be left (a lock on a file no longer at the path) excludes
    // nobody who opens the path: let it go.
    file_->unlock();
    forget_lost_lock();
  }
  return finish(result);
}

void lock_handle::forget_lost_lock() {
  state_ = state::idle;
  needs_reopen_ = true;
}

int lock_handle::cancel() {
  std::lock_guard<std::mutex> guard(mutex_);
  if (current_wait_) current_wait_->cancel();
  return IPL_OK;
}

int lock_handle::downgrade() {
  std::lock_guard<std::mutex> guard(mutex_);
  if (state_ != state::held_exclusive) return IPL_E_NOT_HELD;
  const os_result result = file_->downgrade();
  if (result.status == IPL_OK) state_ = state::held_shared;
  return finish(result);
}

int lock_handle::upgrade(int64_t timeout_ms) {
  wait_cancel cancel;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (state_ != state::held_shared) return IPL_E_NOT_HELD;
    if (!file_->writable()) return finish(os_result{IPL_E_ACCESS, file_->write_denied_error()});
    state_ = state::upgrading;
    current_wait_ = &cancel;
  }
  const os_result result =
      file_->upgrade(wait_context{wait_deadline::from_timeout_ms(timeout_ms), &cancel});
  {
    std::lock_guard<std::mutex> guard(mutex_);
    // Every failure keeps the shared lock (lock_file::upgrade).
    state_ = result.status == IPL_OK ? state::held_exclusive : state::held_shared;
    current_wait_ = nullptr;
  }
  return finish(result);
}

int lock_handle::query(int *state_out, int64_t *holder_pid) {
  std::lock_guard<std::mutex> guard(mutex_);
  // Another thread is using the file (and may reopen it) without the mutex.
  if (state_ == state::acquiring || state_ == state::upgrading) return IPL_E_WOULD_DEADLOCK;
  const bool holding = state_ != state::idle;
  if (!holding) {
    // Ask about the file the path names now, as an acquire would lock it.
    bool same = false;
    if (!needs_reopen_) {
      const os_result checked = file_->still_at_path(&same);
      if (checked.status != IPL_OK) return finish(checked);
    }
    if (!same) {
      // Never created here: a query must not undo an ipl_remove.
      bool found = false;
      const os_result reopened = file_->reopen_existing(&found);
      needs_reopen_ = reopened.status != IPL_OK || !found;
      if (reopened.status != IPL_OK) return finish(reopened);
      if (!found) {
        // Nothing at the path: nobody who opens it can be excluded.
        *state_out = IPL_STATE_FREE;
        if (holder_pid) *holder_pid = -1;
        return IPL_OK;
      }
    }
  }
  int state_seen = IPL_STATE_FREE;
  int64_t pid_seen = -1;
  const os_result result = file_->query(
      holding, state_ == state::held_exclusive ? lock_mode::exclusive : lock_mode::shared,
      &state_seen, holder_pid ? &pid_seen : nullptr);
  if (result.status == IPL_OK) {
    *state_out = state_seen;
    if (holder_pid) *holder_pid = pid_seen;
  }
  return finish(result);
}

int lock_handle::remove() {
  std::lock_guard<std::mutex> guard(mutex_);
  if (state_ != state::held_exclusive) return IPL_E_NOT_HELD;
  const os_result result = file_->remove();
  if (result.status == IPL_OK) {
    state_ = state::idle;
    // Gone from its path: the next acquire opens (creates) it anew.
    needs_reopen_ = true;
  }
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
    // Whatever the parent held or was acquiring is the parent's, and so is
    // the wait in progress (on a stack of a thread not in this process).
    handle->state_ = state::idle;
    handle->current_wait_ = nullptr;
    handle->needs_reopen_ = true;
    if (kind == fork_kind::after_prepare) handle->mutex_.unlock();
  }
  if (kind == fork_kind::after_prepare) registry.mutex.unlock();
}

void core_prepare_fork() { lock_handle::lock_all_for_fork(); }
void core_after_fork_parent() { lock_handle::unlock_all_after_fork(); }
void core_after_fork_child(fork_kind kind) { lock_handle::forget_parent_in_child(kind); }

}  // namespace ipl::detail

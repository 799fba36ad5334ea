// SPDX-License-Identifier: MIT
// lock_handle: the state machine behind one ipl_lock.
//
// A handle holds at most one lock. Its state lives under a mutex, but the
// mutex is never held while waiting for the OS, so a release from another
// thread, or a second caller told "would deadlock", never waits behind a
// blocked acquire.
//
// Every acquire ends with the path identity check: once the OS has granted
// the lock, the handle asks its lock_file whether the path still names the
// locked file, and if not (removed or replaced meanwhile) it lets go,
// reopens the path and waits again, within the same deadline.
//
// Handles are kept in a registry so that the fork handlers can hold every
// handle's mutex across fork() (no parent thread is inside one when the
// child is made) and reset every handle in the child: there it holds
// nothing, and its next acquire reopens the path (its lock_file reports
// inherited(), and its descriptor was closed at the fork).
#ifndef IPL_SRC_LOCK_HANDLE_HPP
#define IPL_SRC_LOCK_HANDLE_HPP

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "platform.hpp"
#include "wait_policy.hpp"

namespace ipl::detail {

class lock_handle {
 public:
  explicit lock_handle(std::unique_ptr<lock_file> file);
  // A handle whose file holds a lock in `mode` already (ipl_open_fd).
  lock_handle(std::unique_ptr<lock_file> file, lock_mode held_mode);
  ~lock_handle();  // releases what the handle holds (closing the file does)
  lock_handle(const lock_handle &) = delete;
  lock_handle &operator=(const lock_handle &) = delete;

  // timeout_ms as in ipl.h, already validated.
  int acquire(lock_mode mode, int64_t timeout_ms);
  int release(lock_mode mode);
  int query(int *state, int64_t *holder_pid);
  int cancel();
  int downgrade();
  int upgrade(int64_t timeout_ms);
  int remove();
  int check();
  int last_os_error() const { return last_os_error_.load(std::memory_order_relaxed); }

  // The fork handlers' side (platform.hpp: core_*_fork).
  static void lock_all_for_fork();
  static void unlock_all_after_fork();
  static void forget_parent_in_child(fork_kind kind);

 private:
  // upgrading: holds the lock shared and waits for it exclusive.
  enum class state { idle, acquiring, held_shared, held_exclusive, upgrading };

  static state held_state(lock_mode mode) {
    return mode == lock_mode::shared ? state::held_shared : state::held_exclusive;
  }
  int finish(const os_result &result);
  // With mutex_ held: the lock is gone (IPL_E_LOST); the next acquire
  // reopens the path.
  void forget_lost_lock();
  // With mutex_ held: a handle from the parent of a fork holds nothing here.
  void forget_if_inherited();
  // The wait and the identity check; called with state_ == acquiring.
  os_result acquire_at_path(lock_mode mode, const wait_context &wait);

  std::mutex mutex_;
  state state_ = state::idle;
  // The wait in progress (acquiring, upgrading), for cancel().
  wait_cancel *current_wait_ = nullptr;
  // The lock_file has no usable descriptor (inherited, or a reopen failed):
  // the next acquire reopens the path first. Only touched with mutex_ held
  // or by the one thread in state acquiring.
  bool needs_reopen_ = false;
  std::atomic<int> last_os_error_{0};
  std::unique_ptr<lock_file> file_;

  // The registry: an intrusive list, so registering never allocates.
  lock_handle *prev_ = nullptr;
  lock_handle *next_ = nullptr;
};

}  // namespace ipl::detail

#endif  // IPL_SRC_LOCK_HANDLE_HPP

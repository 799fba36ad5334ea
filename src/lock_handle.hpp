// lock_handle: the state machine behind one ipl_lock.
//
// A handle holds at most one lock. Its state lives under a mutex, but the
// mutex is never held while waiting for the OS, so a release from another
// thread, or a second caller told "would deadlock", never waits behind a
// blocked acquire.
#ifndef IPL_SRC_LOCK_HANDLE_HPP
#define IPL_SRC_LOCK_HANDLE_HPP

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "platform.hpp"

namespace ipl::detail {

class lock_handle {
 public:
  explicit lock_handle(std::unique_ptr<lock_file> file);
  ~lock_handle();  // releases what the handle holds (closing the file does)
  lock_handle(const lock_handle &) = delete;
  lock_handle &operator=(const lock_handle &) = delete;

  // timeout_ms as in ipl.h, already validated.
  int acquire(lock_mode mode, int64_t timeout_ms);
  int release(lock_mode mode);
  int last_os_error() const { return last_os_error_.load(std::memory_order_relaxed); }

 private:
  enum class state { idle, acquiring, held_shared, held_exclusive };

  static state held_state(lock_mode mode) {
    return mode == lock_mode::shared ? state::held_shared : state::held_exclusive;
  }
  int finish(const os_result &result);

  std::mutex mutex_;
  state state_ = state::idle;
  std::atomic<int> last_os_error_{0};
  std::unique_ptr<lock_file> file_;
};

}  // namespace ipl::detail

#endif  // IPL_SRC_LOCK_HANDLE_HPP

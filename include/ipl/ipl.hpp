// SPDX-License-Identifier: MIT
// ipl.hpp — header-only C++17 wrapper over the libipl C API (ipl.h).
//
// Everything here is a translation of ipl.h into C++ shapes; the behaviour
// (what conflicts with what, how waits are measured, what each status means)
// is the C API's and is documented there.
//
//   ipl::error                 the exception: a std::system_error whose code()
//                              is the IPL_E_* status in ipl::category(), with
//                              the OS error and the lock file's path
//   ipl::process_lock          exclusive lock on a lock file (TimedLockable)
//   ipl::shared_process_lock   reader-writer lock on a lock file
//                              (TimedLockable and SharedTimedLockable)
//   ipl::lock_state, ipl::query_result
//                              what query() reports: is the lock held
//                              elsewhere, how, and by which process
//   ipl::interprocess_locked, ipl::interprocess_read_locked,
//   ipl::interprocess_write_locked
//                              wrap a callable so every call runs under the
//                              lock, like fasteners' decorators; a decorated
//                              call nested in one on the same lock file in
//                              the same thread throws instead of hanging
//
// The lock types are move-only RAII owners of one ipl_lock handle, so the
// standard tools just work:
//
//   ipl::process_lock lock("/run/myapp/lock");
//   std::unique_lock<ipl::process_lock> held(lock, std::chrono::seconds(5));
//   if (!held) { /* another process holds it */ }
//
//   ipl::shared_process_lock rw("/run/myapp/db.lock");
//   std::shared_lock<ipl::shared_process_lock> reading(rw);
//
// Beyond lock and unlock (libipl 0.2.0), on both lock types: query(),
// cancel(), remove(), check() (is the lock still held: ipl::error with
// IPL_E_LOST when a file server or a replaced file took it away), the
// from_fd() factories (locks on the open file description of a caller's
// descriptor, as flock(1)'s) and the IPL_OPEN_INHERITABLE flag (children
// inherit the lock); shared_process_lock adds downgrade() and upgrade().
//
// Errors: an expected outcome is not an exception. try_lock* (and
// try_upgrade*) return false when the lock is held elsewhere (IPL_E_TIMEOUT);
// every other failure throws ipl::error, e.g. IPL_E_WOULD_DEADLOCK when this
// object already holds the lock (locks are not reentrant and never upgraded
// silently), IPL_E_CANCELED when cancel() ended the wait.
//
// Timeouts (try_lock_for / try_lock_until and their _shared forms):
//   - durations are rounded UP to whole milliseconds, so a wait never ends
//     before the time asked for;
//   - zero, negative and NaN durations, and deadlines already past, try once
//     without sleeping (timeout 0);
//   - durations longer than ipl::max_wait (100 years) saturate to it: a
//     huge value never overflows int64 and never becomes IPL_WAIT_FOREVER,
//     so a timed call stays a timed call;
//   - try_lock_until with any clock waits for the time remaining from
//     Clock::now() to the deadline, measured (by libipl) on the monotonic
//     clock: a later jump of a non-steady clock does not move the end.
//
// Threads: as in the C API, calls on one object from several threads are
// safe, except that moving, close() and destruction must not race with other
// calls on the same object. cancel() is meant for another thread: it ends a
// wait in progress on the object (lock(), try_lock_for(), upgrade(), ...),
// which then throws ipl::error(IPL_E_CANCELED) and holds what it held
// before. With no wait in progress cancel() does nothing, also to a wait
// that starts later: call it again until the waiting thread has returned.
// On Windows a forever wait (lock(), lock_shared()) cannot be canceled;
// timed waits can (see ipl_cancel in ipl.h).
#ifndef IPL_IPL_HPP
#define IPL_IPL_HPP

// One clear error instead of a page of them: the wrapper is C++17 (inline
// variables, if constexpr, std::invoke_result_t). Older C++ can use ipl.h.
#if defined(_MSVC_LANG) ? (_MSVC_LANG < 201703L) : (__cplusplus < 201703L)
#error "ipl.hpp needs C++17 or later (e.g. -std=c++17); before C++17, use the C API <ipl/ipl.h>"
#else

#include <ipl/ipl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <ratio>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef _WIN32
#include <unistd.h>  // getpid(): decorator records of a forked child's parent
#endif

// Helpers live in ipl::wrapper_detail, not ipl::detail: the library's own
// internals use ipl::detail, and a program linking libipl statically must
// never see two different definitions of one name there.
namespace ipl {

// The longest wait the timed calls pass to the C API: 100 years. Longer
// durations saturate to this (see "Timeouts" above).
inline constexpr std::chrono::milliseconds max_wait =
    std::chrono::hours(24 * 365 * 100);

namespace wrapper_detail {

// "<ipl_strerror text>", then ": <OS text> (OS error N)" with an OS error,
// then ": '<path>'" with a path.
inline std::string describe(int status, int os_error, const std::string &path) {
  std::string text = ipl_strerror(status);
  if (os_error != 0) {
    text += ": " + std::system_category().message(os_error) +
            " (OS error " + std::to_string(os_error) + ")";
  }
  if (!path.empty()) text += ": '" + path + "'";
  return text;
}

// The error category of libipl's statuses (see ipl::category()).
class status_category final : public std::error_category {
 public:
  const char *name() const noexcept override { return "ipl"; }
  std::string message(int status) const override { return ipl_strerror(status); }
  // Lets code compare with the portable conditions: e.code() ==
  // std::errc::timed_out, std::errc::resource_deadlock_would_occur, ...
  std::error_condition default_error_condition(int status) const noexcept override {
    switch (status) {
      case IPL_E_TIMEOUT: return std::errc::timed_out;
      case IPL_E_INVALID: return std::errc::invalid_argument;
      case IPL_E_NOT_HELD: return std::errc::operation_not_permitted;
      case IPL_E_WOULD_DEADLOCK: return std::errc::resource_deadlock_would_occur;
      case IPL_E_ACCESS: return std::errc::permission_denied;
      case IPL_E_NAME_TOO_LONG: return std::errc::filename_too_long;
      case IPL_E_NO_MEMORY: return std::errc::not_enough_memory;
      case IPL_E_BAD_PARENT: return std::errc::not_a_directory;
      case IPL_E_UNSUPPORTED: return std::errc::not_supported;
      case IPL_E_SIGNAL_IN_USE: return std::errc::device_or_resource_busy;
      case IPL_E_CANCELED: return std::errc::operation_canceled;
      default: return std::error_condition(status, *this);
    }
  }
};

}  // namespace wrapper_detail

// The std::error_category of libipl's IPL_E_* statuses: name() "ipl",
// message() ipl_strerror(). Its conditions map onto std::errc where one
// fits (IPL_E_TIMEOUT is std::errc::timed_out, and so on).
inline const std::error_category &category() noexcept {
  static const wrapper_detail::status_category instance;
  return instance;
}

// The exception thrown for every failure other than "held elsewhere" in a
// try_lock*. A std::system_error: code() is the IPL_E_* status in
// ipl::category(). what() is ipl_strerror(status()), followed by the OS text
// and number when os_error() is not 0, and by the path when there is one.
class error : public std::system_error {
 public:
  explicit error(int status, int os_error = 0, std::string path = std::string())
      : std::system_error(std::error_code(status, category())),
        os_error_(os_error),
        detail_(std::make_shared<const detail_text>(
            detail_text{wrapper_detail::describe(status, os_error, path), std::move(path)})) {}

  // The IPL_E_* status (negative); code().value().
  int status() const noexcept { return code().value(); }
  // The errno / GetLastError() value behind an OS-derived status; else 0.
  int os_error() const noexcept { return os_error_; }
  // The same as a std::error_code in std::system_category() (errno values
  // compare equal to std::errc), or an empty error_code when there is none.
  std::error_code os_error_code() const noexcept {
    return os_error_ != 0 ? std::error_code(os_error_, std::system_category())
                          : std::error_code();
  }
  // The lock file's path, as given to the lock object ("" when unknown).
  const std::string &path() const noexcept { return detail_->path; }
  const char *what() const noexcept override { return detail_->what.c_str(); }

 private:
  // Shared, so that copying an exception never allocates (or throws).
  struct detail_text {
    std::string what;
    std::string path;
  };
  int os_error_;
  std::shared_ptr<const detail_text> detail_;
};

// How the lock is held by others, as query() reports it (IPL_STATE_*).
enum class lock_state : int {
  free = IPL_STATE_FREE,            // nobody else holds it
  shared = IPL_STATE_SHARED,        // one or more others hold it shared
  exclusive = IPL_STATE_EXCLUSIVE,  // another holds it exclusive
};

// What query() found (ipl_query): a snapshot, possibly stale at once.
struct query_result {
  lock_state state = lock_state::free;
  // The process id of one holder where the OS can tell (ipl.h, ipl_query:
  // classic fcntl holders such as fasteners through F_GETLK, OFD holders
  // through /proc/PID/fdinfo where this process may read it); empty when
  // free, unknown, not asked for, or on Windows.
  std::optional<std::int64_t> holder_pid;
};

namespace wrapper_detail {

// The mode a lock object took last and has not yet unlocked: set by every
// successful lock, downgrade() and upgrade(), cleared by unlock() (not by
// remove(), whose release the next unlock() absorbs, see released()).
enum held_mode : int { held_none = 0, held_exclusive = 1, held_shared = 2 };

// Sole owner of one ipl_lock handle: opens it, closes it exactly once, and
// keeps the path it was opened with for the errors it throws, and what the
// object holds (so that unlocking in a forked child is not an error: see
// released()).
class handle_owner {
 public:
  handle_owner() noexcept = default;
  // create_mode < 0: ipl_open_ex; else ipl_open_mode with it.
  handle_owner(const char *path, uint32_t flags, int64_t create_mode = -1)
      : path_(path != nullptr ? path : "") {
    int os_error = 0;
    const int status =
        create_mode < 0
            ? ipl_open_ex(path, flags, &handle_, &os_error)
            : ipl_open_mode(path, flags, static_cast<uint32_t>(create_mode), &handle_,
                            &os_error);
    if (status != IPL_OK) throw error(status, os_error, path_);
  }
  handle_owner(const std::string &path, uint32_t flags, int64_t create_mode = -1)
      : handle_owner(c_path(path), flags, create_mode) {}
  // ipl_open_fd: no path (errors carry "").
  struct from_fd_t {};
  handle_owner(from_fd_t, int fd) {
    int os_error = 0;
    const int status = ipl_open_fd(fd, 0, &handle_, &os_error);
    if (status != IPL_OK) throw error(status, os_error, path_);
  }

  handle_owner(handle_owner &&other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)),
        path_(std::move(other.path_)),
        held_(other.held_.exchange(held_none)) {}
  handle_owner &operator=(handle_owner &&other) noexcept {
    if (this != &other) {
      close();
      handle_ = std::exchange(other.handle_, nullptr);
      path_ = std::move(other.path_);
      held_.store(other.held_.exchange(held_none));
    }
    return *this;
  }
  handle_owner(const handle_owner &) = delete;
  handle_owner &operator=(const handle_owner &) = delete;
  ~handle_owner() { close(); }

  // ipl_close releases whatever the handle holds; NULL is a no-op there.
  void close() noexcept {
    ipl_close(std::exchange(handle_, nullptr));
    held_.store(held_none);
  }
  ipl_lock *get() const noexcept { return handle_; }
  const std::string &path() const noexcept { return path_; }

  void taken(held_mode mode) noexcept { held_.store(mode); }
  // The release of `mode` returned `status`. IPL_E_NOT_HELD while this
  // object took `mode` means the handle came from the parent of a forked
  // child, where it holds nothing (ipl.h, "fork()"), or that remove() let
  // go of the lock, or that check() found it lost (IPL_E_LOST): there is
  // nothing to release, and a std::unique_lock unwound in the child, or
  // after remove() or a lost lock, must not throw.
  // True when there is nothing more to report.
  // IPL_E_LOST: the lock is gone already (ipl.h), so nothing is held any
  // more either; a guard's unlock() must not turn that into std::terminate.
  bool released(int status, held_mode mode) noexcept {
    if (status == IPL_OK || status == IPL_E_LOST) {
      held_.store(held_none);
      return true;
    }
    int expected = mode;
    return status == IPL_E_NOT_HELD && held_.compare_exchange_strong(expected, held_none);
  }

 private:
  // A std::string with a NUL inside would silently name a shorter path.
  static const char *c_path(const std::string &path) {
    if (path.find('\0') != std::string::npos) throw error(IPL_E_INVALID, 0, path);
    return path.c_str();
  }

  ipl_lock *handle_ = nullptr;
  std::string path_;
  std::atomic<int> held_{held_none};
};

// Statuses that come from libipl's own rules carry no OS error; for the
// others the handle's ipl_os_error() says which one.
inline bool is_os_derived(int status) noexcept {
  switch (status) {
    case IPL_OK:
    case IPL_E_TIMEOUT:
    case IPL_E_INVALID:
    case IPL_E_NOT_HELD:
    case IPL_E_WOULD_DEADLOCK:
    case IPL_E_INTERNAL:
    case IPL_E_CANCELED:
      return false;
    default:
      return true;
  }
}

// Throws ipl::error unless status is IPL_OK.
inline void check(int status, const handle_owner &file) {
  if (status != IPL_OK)
    throw error(status, is_os_derived(status) ? ipl_os_error(file.get()) : 0, file.path());
}

// The result of an acquire of `mode`: true when granted, false when held
// elsewhere (IPL_E_TIMEOUT); throws ipl::error for anything else.
inline bool acquired(int status, handle_owner &file, held_mode mode) {
  if (status == IPL_E_TIMEOUT) return false;
  check(status, file);
  file.taken(mode);
  return true;
}

// A blocking acquire of `mode`: throws ipl::error unless granted.
inline void locked(int status, handle_owner &file, held_mode mode) {
  check(status, file);
  file.taken(mode);
}

// A release of `mode`: throws ipl::error unless released (or inherited
// across fork, see handle_owner::released).
inline void unlocked(int status, handle_owner &file, held_mode mode) {
  if (!file.released(status, mode)) check(status, file);
}

// ipl_query on the object's handle; throws ipl::error on failure.
inline query_result query(const handle_owner &file, bool find_holder) {
  int state = IPL_STATE_FREE;
  int64_t pid = -1;
  check(ipl_query(file.get(), &state, find_holder ? &pid : nullptr), file);
  query_result result;
  result.state = static_cast<lock_state>(state);
  if (pid >= 0) result.holder_pid = pid;
  return result;
}

// The C API's timeout_ms for a relative wait (see "Timeouts" above).
template <class Rep, class Period>
int64_t timeout_ms_for(const std::chrono::duration<Rep, Period> &wait) {
  using namespace std::chrono;
  if (!(wait > wait.zero())) return 0;  // zero, negative or NaN: try once
  // Compare in floating point so that even hours::max() cannot overflow.
  const duration<long double, std::milli> wanted = wait;
  if (wanted >= duration<long double, std::milli>(max_wait))
    return max_wait.count();
  // Below max_wait: the integer conversion cannot overflow.
  return std::min(ceil<milliseconds>(wait), max_wait).count();
}

// The C API's timeout_ms for an absolute deadline on any clock.
template <class Clock, class Duration>
int64_t timeout_ms_until(const std::chrono::time_point<Clock, Duration> &deadline) {
  using namespace std::chrono;
  using fp_ms = duration<long double, std::milli>;
  const auto now = Clock::now();
  // Far deadlines (time_point::max(), min()) are settled in floating point,
  // where subtracting cannot overflow.
  const fp_ms gap =
      fp_ms(deadline.time_since_epoch()) - fp_ms(now.time_since_epoch());
  if (gap >= fp_ms(max_wait)) return max_wait.count();
  if (gap <= -fp_ms(max_wait)) return 0;
  // Near deadlines are computed exactly, so rounding stays upward.
  if (!(deadline > now)) return 0;
  return timeout_ms_for(deadline - now);
}

}  // namespace wrapper_detail

// An exclusive inter-process lock on one lock file (ipl_acquire /
// ipl_release). Meets TimedLockable: use it with std::unique_lock,
// std::scoped_lock, std::lock. Two process_lock objects on the same file
// exclude each other like two processes, even in one thread.
//
// An empty object (default-constructed, moved-from or closed) holds no
// handle; every lock call on it throws ipl::error(IPL_E_INVALID).
class process_lock {
  static constexpr wrapper_detail::held_mode kExclusive = wrapper_detail::held_exclusive;

 public:
  using native_handle_type = ipl_lock *;

  // An empty object.
  process_lock() noexcept = default;
  // Opens (by default creating, with missing parent folders) the lock file.
  // Holds no lock yet. flags: IPL_OPEN_* bits. Throws ipl::error, e.g.
  // IPL_E_NOT_REGULAR_FILE for a directory, IPL_E_INVALID for an empty path
  // or a path containing NUL.
  explicit process_lock(const char *path, uint32_t flags = 0)
      : file_(path, flags) {}
  explicit process_lock(const std::string &path, uint32_t flags = 0)
      : file_(path, flags) {}
  // As above, giving a lock file this creates exactly the permissions
  // create_mode (0 to 0777, e.g. 0664), whatever the umask (ipl_open_mode;
  // folders it creates get search permission where it gives read). Throws
  // ipl::error(IPL_E_INVALID) for create_mode > 0777.
  process_lock(const std::string &path, uint32_t flags, uint32_t create_mode)
      : file_(path, flags, static_cast<int64_t>(create_mode)) {}

  // A lock object over the caller's descriptor `fd` of a regular file
  // (ipl_open_fd): its locks are taken on fd's open file description, shared
  // by every copy of it (dup, fork, exec), and outlive this process while a
  // copy stays open, as flock(1)'s. If the description holds a lock already
  // (one an earlier process left on it), the object starts out holding it:
  // unlock() ends it. libipl never closes fd: keep it open while the object
  // lives. No path: path() is "", remove() throws IPL_E_UNSUPPORTED. Throws
  // ipl::error: IPL_E_INVALID (fd < 0), IPL_E_OS (EBADF),
  // IPL_E_NOT_REGULAR_FILE, IPL_E_UNSUPPORTED (the classic POSIX backend
  // and Windows, whose locks are not per description).
  static process_lock from_fd(int fd) {
    process_lock lock;
    lock.file_ = wrapper_detail::handle_owner(wrapper_detail::handle_owner::from_fd_t{}, fd);
    return lock;
  }

  // Move-only. A moved-from object is empty; move assignment first closes
  // (and so releases) what the target held.
  process_lock(process_lock &&) noexcept = default;
  process_lock &operator=(process_lock &&) noexcept = default;
  process_lock(const process_lock &) = delete;
  process_lock &operator=(const process_lock &) = delete;
  // Closes the handle, which releases the lock if held. Never throws.
  ~process_lock() = default;

  // Blocks until the lock is granted. Throws ipl::error, e.g.
  // IPL_E_WOULD_DEADLOCK when this object already holds it.
  void lock() {
    wrapper_detail::locked(ipl_acquire(handle(), IPL_WAIT_FOREVER), file_, kExclusive);
  }
  // Tries once, never sleeps. true: granted; false: held elsewhere.
  // Throws ipl::error otherwise (e.g. IPL_E_WOULD_DEADLOCK).
  bool try_lock() {
    return wrapper_detail::acquired(ipl_acquire(handle(), 0), file_, kExclusive);
  }
  // Waits at most `wait` (rounded up to whole ms). As try_lock otherwise.
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period> &wait) {
    return wrapper_detail::acquired(
        ipl_acquire(handle(), wrapper_detail::timeout_ms_for(wait)), file_, kExclusive);
  }
  // Waits until `deadline` of any clock. As try_lock otherwise.
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration> &deadline) {
    return wrapper_detail::acquired(
        ipl_acquire(handle(), wrapper_detail::timeout_ms_until(deadline)), file_, kExclusive);
  }
  // Releases the lock. Throws ipl::error(IPL_E_NOT_HELD) when this object
  // did not take it; never throws when it did (so a std::unique_lock
  // destructor calling it is safe), also in a forked child, where the
  // object holds nothing and unlock() does nothing (ipl.h, "fork()"), and
  // when the lock was lost (IPL_E_LOST: it is gone already).
  void unlock() { wrapper_detail::unlocked(ipl_release(handle()), file_, kExclusive); }

  // ---- Beyond lock and unlock (libipl 0.2.0)

  // Is the lock held by anyone but this object right now, and how
  // (ipl_query)? This object's own lock never counts: while it holds the
  // lock, query() sees lock_state::free. find_holder = false skips the
  // look-up of a holder's process id (on Linux a scan of /proc for OFD
  // holders; see ipl.h). Throws ipl::error, e.g. IPL_E_WOULD_DEADLOCK while
  // another thread is acquiring on this object.
  query_result query(bool find_holder = true) const {
    return wrapper_detail::query(file_, find_holder);
  }
  // Ends a wait in progress on this object, from another thread (see
  // "Threads" above); the waiting call throws ipl::error(IPL_E_CANCELED).
  // Does nothing when no wait is in progress.
  void cancel() { wrapper_detail::check(ipl_cancel(handle()), file_); }
  // While holding the lock: removes the lock file and releases the lock
  // (ipl_remove), so that nothing is left behind; a later lock() creates
  // the file again. A guard that took the lock may stay in scope: the next
  // unlock() (its destructor's) then does nothing. Remove only lock files
  // that fasteners processes do not use (ipl.h says why). Throws
  // ipl::error: IPL_E_NOT_HELD when this object does not hold the lock,
  // IPL_E_ACCESS when the file may not be removed (the lock is kept).
  void remove() { wrapper_detail::check(ipl_remove(handle()), file_); }
  // Is the lock this object holds still held (ipl_check)? Asks the OS (on a
  // network file system, the server) and checks that the path still names
  // the locked file; never waits for the lock, but an unreachable server
  // can keep it waiting until the file system gives up. Throws
  // ipl::error(IPL_E_LOST) when the lock is gone: the object then holds
  // nothing, and the next unlock() (a guard's) does nothing, as after
  // remove(). IPL_E_NOT_HELD when the object holds no lock.
  void check() { wrapper_detail::check(ipl_check(handle()), file_); }

  // Closes the handle (releasing the lock if held); the object becomes
  // empty. Calling it again, or on an empty object, does nothing.
  void close() noexcept { file_.close(); }
  bool is_open() const noexcept { return file_.get() != nullptr; }
  explicit operator bool() const noexcept { return is_open(); }
  // The C handle, still owned by this object (NULL when empty), for mixing
  // with ipl.h calls.
  native_handle_type native_handle() const noexcept { return file_.get(); }
  // The lock file's path, as given ("" for an empty object).
  const std::string &path() const noexcept { return file_.path(); }

 private:
  ipl_lock *handle() const noexcept { return file_.get(); }

  wrapper_detail::handle_owner file_;
};

// A reader-writer inter-process lock on one lock file: exclusive (write)
// through lock()/unlock() and friends (ipl_acquire_write /
// ipl_release_write), shared (read) through the *_shared members
// (ipl_acquire_read / ipl_release_read). Meets TimedLockable and
// SharedTimedLockable: use it with std::unique_lock and std::shared_lock.
// One object holds at most one lock: asking for a second (in either mode)
// throws ipl::error(IPL_E_WOULD_DEADLOCK); there is no silent upgrade, only
// the explicit downgrade() and upgrade().
//
// Construction, moving, closing and empty objects are as for process_lock.
class shared_process_lock {
  static constexpr wrapper_detail::held_mode kExclusive = wrapper_detail::held_exclusive;
  static constexpr wrapper_detail::held_mode kShared = wrapper_detail::held_shared;

 public:
  using native_handle_type = ipl_lock *;

  shared_process_lock() noexcept = default;
  explicit shared_process_lock(const char *path, uint32_t flags = 0)
      : file_(path, flags) {}
  explicit shared_process_lock(const std::string &path, uint32_t flags = 0)
      : file_(path, flags) {}
  shared_process_lock(const std::string &path, uint32_t flags, uint32_t create_mode)
      : file_(path, flags, static_cast<int64_t>(create_mode)) {}
  // As process_lock::from_fd (an inherited shared lock: unlock_shared()).
  static shared_process_lock from_fd(int fd) {
    shared_process_lock lock;
    lock.file_ = wrapper_detail::handle_owner(wrapper_detail::handle_owner::from_fd_t{}, fd);
    return lock;
  }

  shared_process_lock(shared_process_lock &&) noexcept = default;
  shared_process_lock &operator=(shared_process_lock &&) noexcept = default;
  shared_process_lock(const shared_process_lock &) = delete;
  shared_process_lock &operator=(const shared_process_lock &) = delete;
  ~shared_process_lock() = default;

  // ---- Exclusive (write): as process_lock.
  void lock() {
    wrapper_detail::locked(ipl_acquire_write(handle(), IPL_WAIT_FOREVER), file_, kExclusive);
  }
  bool try_lock() {
    return wrapper_detail::acquired(ipl_acquire_write(handle(), 0), file_, kExclusive);
  }
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period> &wait) {
    return wrapper_detail::acquired(
        ipl_acquire_write(handle(), wrapper_detail::timeout_ms_for(wait)), file_, kExclusive);
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration> &deadline) {
    return wrapper_detail::acquired(
        ipl_acquire_write(handle(), wrapper_detail::timeout_ms_until(deadline)), file_,
        kExclusive);
  }
  // Throws ipl::error(IPL_E_NOT_HELD) unless this object took the
  // exclusive lock (a shared lock it holds is kept). In a forked child it
  // does nothing, as process_lock::unlock.
  void unlock() { wrapper_detail::unlocked(ipl_release_write(handle()), file_, kExclusive); }

  // ---- Shared (read): the same contract, in shared mode.
  void lock_shared() {
    wrapper_detail::locked(ipl_acquire_read(handle(), IPL_WAIT_FOREVER), file_, kShared);
  }
  bool try_lock_shared() {
    return wrapper_detail::acquired(ipl_acquire_read(handle(), 0), file_, kShared);
  }
  template <class Rep, class Period>
  bool try_lock_shared_for(const std::chrono::duration<Rep, Period> &wait) {
    return wrapper_detail::acquired(
        ipl_acquire_read(handle(), wrapper_detail::timeout_ms_for(wait)), file_, kShared);
  }
  template <class Clock, class Duration>
  bool try_lock_shared_until(
      const std::chrono::time_point<Clock, Duration> &deadline) {
    return wrapper_detail::acquired(
        ipl_acquire_read(handle(), wrapper_detail::timeout_ms_until(deadline)), file_, kShared);
  }
  // Throws ipl::error(IPL_E_NOT_HELD) unless this object took a shared
  // lock (an exclusive lock it holds is kept). In a forked child it does
  // nothing, as process_lock::unlock.
  void unlock_shared() { wrapper_detail::unlocked(ipl_release_read(handle()), file_, kShared); }

  // ---- Changing the mode held (libipl 0.2.0)
  // Afterwards the object holds the other mode, so a guard of the old mode
  // must let go without unlocking and one of the new mode adopt the lock:
  //   rw.downgrade();                      // std::unique_lock w held it
  //   std::shared_lock r(*w.release(), std::adopt_lock);
  //   if (rw.try_upgrade_for(1s))          // std::shared_lock r held it
  //     std::unique_lock w(*r.release(), std::adopt_lock);

  // Exclusive to shared, atomically (ipl_downgrade): at no moment can a
  // writer get in; other readers may join at once. Throws
  // ipl::error(IPL_E_NOT_HELD) unless this object holds the lock exclusive
  // (what it holds is kept).
  void downgrade() { wrapper_detail::locked(ipl_downgrade(handle()), file_, kShared); }

  // Shared to exclusive (ipl_upgrade), waiting until the other readers
  // have left. The shared lock is kept while waiting and on every failure.
  // Only one upgrade of a lock file waits at a time: when another handle
  // (in any process) is upgrading already, this one throws
  // ipl::error(IPL_E_WOULD_DEADLOCK) at once, and should then release its
  // shared lock so that the other can finish. Also throws IPL_E_NOT_HELD
  // (no shared lock held), IPL_E_CANCELED, IPL_E_ACCESS (the lock file is
  // read-only for this process), IPL_E_UNSUPPORTED (Windows).
  void upgrade() {
    wrapper_detail::locked(ipl_upgrade(handle(), IPL_WAIT_FOREVER), file_, kExclusive);
  }
  // One try, never sleeping: false when other readers hold it; throws as
  // upgrade() otherwise (IPL_E_WOULD_DEADLOCK too: it is no "busy").
  bool try_upgrade() {
    return wrapper_detail::acquired(ipl_upgrade(handle(), 0), file_, kExclusive);
  }
  // Waits at most `wait` (as try_lock_for); false when not in time.
  template <class Rep, class Period>
  bool try_upgrade_for(const std::chrono::duration<Rep, Period> &wait) {
    return wrapper_detail::acquired(
        ipl_upgrade(handle(), wrapper_detail::timeout_ms_for(wait)), file_, kExclusive);
  }
  // Waits until `deadline` of any clock (as try_lock_until).
  template <class Clock, class Duration>
  bool try_upgrade_until(const std::chrono::time_point<Clock, Duration> &deadline) {
    return wrapper_detail::acquired(
        ipl_upgrade(handle(), wrapper_detail::timeout_ms_until(deadline)), file_, kExclusive);
  }

  // ---- Query, cancel, remove, check: as process_lock (remove() needs the
  // exclusive lock; after it, or after check() threw IPL_E_LOST, the next
  // unlock() or unlock_shared() does nothing).
  query_result query(bool find_holder = true) const {
    return wrapper_detail::query(file_, find_holder);
  }
  void cancel() { wrapper_detail::check(ipl_cancel(handle()), file_); }
  void remove() { wrapper_detail::check(ipl_remove(handle()), file_); }
  void check() { wrapper_detail::check(ipl_check(handle()), file_); }

  void close() noexcept { file_.close(); }
  bool is_open() const noexcept { return file_.get() != nullptr; }
  explicit operator bool() const noexcept { return is_open(); }
  native_handle_type native_handle() const noexcept { return file_.get(); }
  // The lock file's path, as given ("" for an empty object).
  const std::string &path() const noexcept { return file_.path(); }

 private:
  ipl_lock *handle() const noexcept { return file_.get(); }

  wrapper_detail::handle_owner file_;
};

namespace wrapper_detail {

enum class call_mode { exclusive, read, write };

// Nested decorated calls. Each call opens its own handle (see
// locked_callable), so a decorated function that calls itself, or another
// decorated function on the same lock file, in the same thread would wait
// for its own outer call for ever. Each thread keeps a record of the locks
// its decorated calls hold (outermost first); a nested call that cannot get
// its lock at once looks there, and when the lock file is one this thread
// holds in a mode that excludes the one wanted, it throws
// ipl::error(IPL_E_WOULD_DEADLOCK) instead of waiting.
//
// What nests: read inside read on the same file runs (the inner call takes
// a second shared lock beside the outer one; shared locks never wait for
// each other, so this cannot deadlock). Everything else on the same file
// throws: exclusive or write inside any call, read inside an exclusive or
// write call. Calls on other files, and calls from other threads (which
// wait for this one, as other processes do), are unaffected.
//
// "The same file": the same path as given, or a path that names the same
// file (std::filesystem::equivalent: a symlink, a hard link, another
// spelling), checked only when the nested lock is busy. In a child made by
// fork() the records of the parent's calls are ignored: the child holds
// none of the parent's locks, and waits for them like any other process.
struct held_call {
  const std::string *path;  // the lock object's, alive while the record is
  bool shared;
  long long process;  // the process that made the call (see fork above)
};

inline std::vector<held_call> &held_calls() {
  thread_local std::vector<held_call> calls;
  return calls;
}

inline long long current_process() noexcept {
#ifdef _WIN32
  return 0;  // no fork()
#else
  return static_cast<long long>(::getpid());
#endif
}

// Paths are UTF-8 (ipl.h), which std::filesystem::path reads as such only
// from char8_t text or u8path on Windows; elsewhere bytes are bytes.
inline std::filesystem::path filesystem_path(const std::string &utf8) {
#if defined(_WIN32) && defined(__cpp_char8_t)
  return std::filesystem::path(std::u8string(utf8.begin(), utf8.end()));
#elif defined(_WIN32)
  return std::filesystem::u8path(utf8);
#else
  return std::filesystem::path(utf8);
#endif
}

inline bool same_lock_file(const std::string &a, const std::string &b) {
  if (a == b) return true;
  std::error_code failed;  // a path that cannot be examined names no held file
  const bool same = std::filesystem::equivalent(filesystem_path(a), filesystem_path(b), failed);
  return same && !failed;
}

// Would waiting for `path` in this mode wait for a call of this thread?
inline bool held_by_an_outer_call(const std::string &path, bool shared) {
  const long long process = current_process();
  for (const held_call &held : held_calls()) {
    if (held.process != process) continue;
    if (shared && held.shared) continue;  // shared beside shared never waits
    if (same_lock_file(*held.path, path)) return true;
  }
  return false;
}

// Records a decorated call's lock for as long as it holds it.
class held_call_record {
 public:
  held_call_record(const std::string &path, bool shared) : path_(&path) {
    held_calls().push_back(held_call{path_, shared, current_process()});
  }
  ~held_call_record() {
    std::vector<held_call> &calls = held_calls();
    // Calls end in reverse order; search anyway, so a record is never lost.
    for (auto it = calls.rbegin(); it != calls.rend(); ++it) {
      if (it->path == path_) {
        calls.erase(std::next(it).base());
        break;
      }
    }
  }
  held_call_record(const held_call_record &) = delete;
  held_call_record &operator=(const held_call_record &) = delete;

 private:
  const std::string *path_;
};

// Takes a decorated call's lock: blocks, unless the wait would be for an
// outer decorated call of this thread (then IPL_E_WOULD_DEADLOCK at once).
template <class Lock>
void lock_for_call(Lock &lock, bool shared) {
  const auto take = [&](bool try_once) -> bool {
    if constexpr (std::is_same_v<Lock, shared_process_lock>) {
      if (shared) {
        if (try_once) return lock.try_lock_shared();
        lock.lock_shared();
        return true;
      }
    }
    if (try_once) return lock.try_lock();
    lock.lock();
    return true;
  };
  if (!held_calls().empty()) {  // nested in a decorated call of this thread
    if (take(true)) return;
    if (held_by_an_outer_call(lock.path(), shared))
      throw error(IPL_E_WOULD_DEADLOCK, 0, lock.path());
  }
  take(false);
}

// The callable returned by the interprocess_*locked functions.
//
// Handle strategy: every call opens its own handle, locks it, runs the
// function and closes the handle (which releases). A handle holds at most one
// lock and re-locking it is IPL_E_WOULD_DEADLOCK, so one handle shared by
// calls from several threads would make concurrent calls fail; a handle per
// call makes calls from several threads exclude (or, for read, share) each
// other exactly as calls from several processes do. The price is one
// open()/close() per call, small beside taking an inter-process lock.
// Nested calls in one thread: see held_call above.
template <class F, call_mode Mode>
class locked_callable {
 public:
  locked_callable(std::string path, F function, uint32_t flags)
      : path_(std::move(path)), function_(std::move(function)), flags_(flags) {}

  template <class... Args>
  std::invoke_result_t<F &, Args...> operator()(Args &&...args) {
    return call(function_, std::forward<Args>(args)...);
  }
  template <class... Args>
  std::invoke_result_t<const F &, Args...> operator()(Args &&...args) const {
    return call(function_, std::forward<Args>(args)...);
  }

  const std::string &path() const noexcept { return path_; }

 private:
  using lock_type =
      std::conditional_t<Mode == call_mode::exclusive, process_lock, shared_process_lock>;
  static constexpr bool kShared = Mode == call_mode::read;

  template <class Function, class... Args>
  decltype(auto) call(Function &function, Args &&...args) const {
    // The lock object outlives the return value's construction, so the
    // lock covers it; its destructor releases, also when function throws.
    // The record goes first (declared last), while the lock is still held.
    lock_type lock(path_, flags_);
    lock_for_call(lock, kShared);
    const held_call_record record(lock.path(), kShared);
    return std::invoke(function, std::forward<Args>(args)...);
  }

  std::string path_;
  F function_;
  uint32_t flags_;
};

}  // namespace wrapper_detail

// The callable type the interprocess_*locked functions return.
template <class F, wrapper_detail::call_mode Mode>
using locked_callable = wrapper_detail::locked_callable<std::decay_t<F>, Mode>;

// Wraps `function` so that every call takes the exclusive lock on the lock
// file at `path` (waiting as long as it takes), calls `function` with the
// arguments forwarded, releases the lock and hands back its result (void
// included) or lets its exception through, after releasing. The file is
// opened on each call (flags: IPL_OPEN_* bits), so opening errors and lock
// errors are thrown as ipl::error from the call, before `function` runs.
// The returned callable may be called from several threads at once.
template <class F>
locked_callable<F, wrapper_detail::call_mode::exclusive>
interprocess_locked(std::string path, F &&function, uint32_t flags = 0) {
  return locked_callable<F, wrapper_detail::call_mode::exclusive>(
      std::move(path), std::forward<F>(function), flags);
}

// As interprocess_locked, holding the shared (read) lock around each call:
// calls run concurrently with other readers, never with a writer.
template <class F>
locked_callable<F, wrapper_detail::call_mode::read>
interprocess_read_locked(std::string path, F &&function, uint32_t flags = 0) {
  return locked_callable<F, wrapper_detail::call_mode::read>(
      std::move(path), std::forward<F>(function), flags);
}

// As interprocess_locked, holding the exclusive (write) lock of the
// reader-writer lock around each call (the same lock as interprocess_locked).
template <class F>
locked_callable<F, wrapper_detail::call_mode::write>
interprocess_write_locked(std::string path, F &&function, uint32_t flags = 0) {
  return locked_callable<F, wrapper_detail::call_mode::write>(
      std::move(path), std::forward<F>(function), flags);
}

}  // namespace ipl

#endif  // C++17
#endif  // IPL_IPL_HPP

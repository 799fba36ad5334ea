// SPDX-License-Identifier: MIT
// The extern "C" trampolines: argument checks, status codes, and a catch-all
// around every call into the core, so that no exception ever unwinds
// through C (std::bad_alloc becomes IPL_E_NO_MEMORY, anything else
// IPL_E_INTERNAL).
#include <cstdint>
#include <memory>
#include <new>
#include <utility>

#include "ipl/ipl.h"
#include "lock_handle.hpp"
#include "platform.hpp"
#include "wait_signal.hpp"

using ipl::detail::lock_handle;
using ipl::detail::lock_mode;

// The opaque C type wraps the C++ object.
struct ipl_lock {
  explicit ipl_lock(std::unique_ptr<ipl::detail::lock_file> file) : handle(std::move(file)) {}
  ipl_lock(std::unique_ptr<ipl::detail::lock_file> file, lock_mode held)
      : handle(std::move(file), held) {}
  lock_handle handle;
};

namespace {

constexpr uint32_t kKnownOpenFlags =
    IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS | IPL_OPEN_INHERITABLE;

bool valid_timeout(int64_t timeout_ms) { return timeout_ms >= 0 || timeout_ms == IPL_WAIT_FOREVER; }

template <typename Body>
int guarded(Body &&body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    return IPL_E_NO_MEMORY;
  } catch (...) {
    return IPL_E_INTERNAL;
  }
}

constexpr uint32_t kMaxCreateMode = 0777;

int open_handle(const char *path, uint32_t flags, int create_mode, ipl_lock **out,
                int *os_error) noexcept {
  ipl::detail::notice_fork();
  if (os_error) *os_error = 0;
  if (out) *out = nullptr;
  if (!path || !out || path[0] == '\0' || (flags & ~kKnownOpenFlags) != 0) return IPL_E_INVALID;
  return guarded([&] {
    std::unique_ptr<ipl::detail::lock_file> file;
    const ipl::detail::os_result opened =
        ipl::detail::open_lock_file(ipl::detail::open_request{path, flags, create_mode}, &file);
    if (opened.status != IPL_OK) {
      if (os_error) *os_error = opened.os_error;
      return opened.status;
    }
    *out = new ipl_lock(std::move(file));
    return IPL_OK;
  });
}

int acquire(ipl_lock *lock, lock_mode mode, int64_t timeout_ms) noexcept {
  ipl::detail::notice_fork();
  if (!lock || !valid_timeout(timeout_ms)) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.acquire(mode, timeout_ms); });
}

int release(ipl_lock *lock, lock_mode mode) noexcept {
  ipl::detail::notice_fork();
  if (!lock) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.release(mode); });
}

}  // namespace

extern "C" {

IPL_API int ipl_open_mode(const char *path, uint32_t flags, uint32_t create_mode, ipl_lock **out,
                          int *os_error) {
  if (create_mode > kMaxCreateMode) {
    if (os_error) *os_error = 0;
    if (out) *out = nullptr;
    return IPL_E_INVALID;
  }
  return open_handle(path, flags, int(create_mode), out, os_error);
}

IPL_API int ipl_open_fd(int fd, uint32_t flags, ipl_lock **out, int *os_error) {
  ipl::detail::notice_fork();
  if (os_error) *os_error = 0;
  if (out) *out = nullptr;
  if (fd < 0 || !out || flags != 0) return IPL_E_INVALID;
  return guarded([&] {
    std::unique_ptr<ipl::detail::lock_file> file;
    bool held = false;
    lock_mode held_mode = lock_mode::exclusive;
    const ipl::detail::os_result opened =
        ipl::detail::open_descriptor_lock(fd, &file, &held, &held_mode);
    if (opened.status != IPL_OK) {
      if (os_error) *os_error = opened.os_error;
      return opened.status;
    }
    *out = held ? new ipl_lock(std::move(file), held_mode) : new ipl_lock(std::move(file));
    return IPL_OK;
  });
}

IPL_API int ipl_open_ex(const char *path, uint32_t flags, ipl_lock **out, int *os_error) {
  return open_handle(path, flags, ipl::detail::kDefaultCreateMode, out, os_error);
}

IPL_API int ipl_open(const char *path, uint32_t flags, ipl_lock **out) {
  return ipl_open_ex(path, flags, out, nullptr);
}

IPL_API void ipl_close(ipl_lock *lock) {
  if (!lock) return;
  ipl::detail::notice_fork();
  // Destructors release and close; they do not throw.
  delete lock;
}

IPL_API int ipl_acquire(ipl_lock *lock, int64_t timeout_ms) {
  return acquire(lock, lock_mode::exclusive, timeout_ms);
}

IPL_API int ipl_release(ipl_lock *lock) { return release(lock, lock_mode::exclusive); }

IPL_API int ipl_acquire_read(ipl_lock *lock, int64_t timeout_ms) {
  return acquire(lock, lock_mode::shared, timeout_ms);
}

IPL_API int ipl_release_read(ipl_lock *lock) { return release(lock, lock_mode::shared); }

IPL_API int ipl_acquire_write(ipl_lock *lock, int64_t timeout_ms) {
  return acquire(lock, lock_mode::exclusive, timeout_ms);
}

IPL_API int ipl_release_write(ipl_lock *lock) { return release(lock, lock_mode::exclusive); }

IPL_API int ipl_query(ipl_lock *lock, int *state, int64_t *holder_pid) {
  ipl::detail::notice_fork();
  if (!lock || !state) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.query(state, holder_pid); });
}

IPL_API int ipl_cancel(ipl_lock *lock) {
  ipl::detail::notice_fork();
  if (!lock) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.cancel(); });
}

IPL_API int ipl_downgrade(ipl_lock *lock) {
  ipl::detail::notice_fork();
  if (!lock) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.downgrade(); });
}

IPL_API int ipl_upgrade(ipl_lock *lock, int64_t timeout_ms) {
  ipl::detail::notice_fork();
  if (!lock || !valid_timeout(timeout_ms)) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.upgrade(timeout_ms); });
}

IPL_API int ipl_remove(ipl_lock *lock) {
  ipl::detail::notice_fork();
  if (!lock) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.remove(); });
}

IPL_API int ipl_check(ipl_lock *lock) {
  ipl::detail::notice_fork();
  if (!lock) return IPL_E_INVALID;
  return guarded([&] { return lock->handle.check(); });
}

IPL_API int ipl_os_error(const ipl_lock *lock) { return lock ? lock->handle.last_os_error() : 0; }

IPL_API const char *ipl_strerror(int status) {
  switch (status) {
    case IPL_OK: return "success";
    case IPL_E_TIMEOUT: return "lock not acquired in time (held elsewhere)";
    case IPL_E_INVALID: return "invalid argument";
    case IPL_E_NOT_HELD: return "lock not held by this handle";
    case IPL_E_WOULD_DEADLOCK: return "would deadlock: the lock is held or being acquired through this handle (or this thread), or another upgrade is waiting";
    case IPL_E_ACCESS: return "permission denied";
    case IPL_E_NOT_REGULAR_FILE: return "not a regular file";
    case IPL_E_NAME_TOO_LONG: return "file name too long";
    case IPL_E_NO_MEMORY: return "out of memory";
    case IPL_E_OS: return "operating system error";
    case IPL_E_BAD_PARENT: return "a parent of the lock file is not a folder or is missing";
    case IPL_E_INTERNAL: return "internal error in libipl";
    case IPL_E_UNSUPPORTED: return "not supported here (platform, lock backend or file system)";
    case IPL_E_SIGNAL_IN_USE: return "the signal has an application handler";
    case IPL_E_CANCELED: return "the wait was canceled";
    case IPL_E_LOST: return "the lock was lost (file server, connection, or lock file replaced)";
    default: return "unknown status";
  }
}

IPL_API int ipl_set_wait_signal(int signo) {
  return guarded([&] { return ipl::detail::set_wait_signal(signo); });
}

IPL_API int ipl_wait_signal(void) {
  return guarded([&] { return ipl::detail::current_wait_signal(); });
}

IPL_API uint32_t ipl_version_number(void) { return IPL_VERSION_NUMBER; }

IPL_API const char *ipl_version_string(void) { return IPL_VERSION_STRING; }

}  // extern "C"

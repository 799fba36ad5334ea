// The one interface between the core and the OS. Each backend
// (posix_fcntl.cpp, win32_lockfileex.cpp) implements it; the build picks one.
#ifndef IPL_SRC_PLATFORM_HPP
#define IPL_SRC_PLATFORM_HPP

#include <cstdint>
#include <memory>

#include "ipl/ipl.h"
#include "wait_deadline.hpp"

namespace ipl::detail {

enum class lock_mode { shared, exclusive };

// The outcome of an OS operation: an IPL status, and for OS-derived
// failures the errno / GetLastError() value behind it.
struct os_result {
  int status = IPL_OK;
  int os_error = 0;
};

// One open lock file. The core guarantees that calls on one lock_file never
// overlap, that lock() is only called while nothing is held, and unlock()
// only while something is.
class lock_file {
 public:
  virtual ~lock_file() = default;  // releases whatever is held, closes
  // Takes the whole-file lock in `mode`, waiting no longer than `deadline`.
  // IPL_OK, IPL_E_TIMEOUT, or an OS-derived failure.
  virtual os_result lock(lock_mode mode, const wait_deadline &deadline) = 0;
  virtual os_result unlock() = 0;
};

// Opens (by default creating, with parent folders) the lock file at `path`,
// a non-empty NUL-terminated UTF-8 string; flags are already validated.
os_result open_lock_file(const char *path, uint32_t flags, std::unique_ptr<lock_file> *out);

// A short name of the backend, for diagnostics ("posix-ofd", ...).
const char *backend_name();

}  // namespace ipl::detail

#endif  // IPL_SRC_PLATFORM_HPP

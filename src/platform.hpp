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

// create_mode for "0666 minus the umask", as fasteners creates its files.
constexpr int kDefaultCreateMode = -1;

// What ipl_open* asked for, already validated: a non-empty NUL-terminated
// UTF-8 path, known flag bits, create_mode 0..0777 or kDefaultCreateMode.
struct open_request {
  const char *path;
  uint32_t flags;
  int create_mode;
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

  // False when read-write access was denied and the file was opened
  // read-only: only shared locks then. write_denied_error() is the OS
  // error of the refused read-write open.
  virtual bool writable() const = 0;
  virtual int write_denied_error() const = 0;

  // Called while a lock is held: does the path this file was opened from
  // still name this very file? *same = false when the file was removed or
  // replaced. An OS failure (e.g. EACCES on a folder) is returned as such.
  virtual os_result still_at_path(bool *same) = 0;

  // Opens the path again, as open_lock_file() did, dropping the current
  // descriptor (which holds nothing, or belongs to the parent of a fork).
  // On failure the file has no descriptor; only reopen() and destruction
  // may follow.
  virtual os_result reopen() = 0;

  // True in a child process forked after this file was opened: the
  // descriptor was the parent's (libipl closed the child's copy at the
  // fork) and nothing is held here. Only reopen() and destruction may
  // follow; destruction then touches nothing of the parent's.
  virtual bool inherited() const = 0;
};

// The OS error reported (with IPL_E_OS) when the lock file was replaced
// after more grants in a row than one acquire allows (ESTALE on POSIX).
extern const int kReplacedTooOftenError;

// Opens (by default creating, with parent folders) the lock file.
os_result open_lock_file(const open_request &request, std::unique_ptr<lock_file> *out);

// A short name of the backend, for diagnostics ("posix-ofd", ...).
const char *backend_name();

// Called first in every C API entry point, before any libipl mutex is
// taken: on POSIX it notices a fork that ran no atfork handlers (glibc's
// _Fork) and resets the child's state then. A no-op elsewhere.
void notice_fork();

// ---- Implemented by the core, called by backends whose OS can fork -------
// The core's handles have mutexes of their own. The backend's fork
// handlers call these: core_prepare_fork before fork() (takes the core's
// registry and every handle's mutex), core_after_fork_parent in the parent
// (gives them back), core_after_fork_child in the child (only the forking
// thread exists there): every handle then holds nothing and reopens its
// path on its next acquire.
enum class fork_kind {
  after_prepare,  // the atfork handlers ran: this thread holds the mutexes
  unnoticed,      // no handlers ran (_Fork): mutexes are made anew
};
void core_prepare_fork();
void core_after_fork_parent();
void core_after_fork_child(fork_kind kind);

}  // namespace ipl::detail

#endif  // IPL_SRC_PLATFORM_HPP

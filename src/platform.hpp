// SPDX-License-Identifier: MIT
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

class wait_cancel;

// How long a wait may last, and what can end it early (ipl_cancel()).
struct wait_context {
  wait_deadline deadline;
  wait_cancel *cancel = nullptr;  // NULL: the wait cannot be canceled
};

// One open lock file. The core guarantees that calls on one lock_file never
// overlap (query() aside: it may run beside lock(), see lock_handle), that
// lock() is only called while nothing is held, unlock() and remove() only
// while something is, downgrade() only while exclusive and upgrade() only
// while shared is held.
class lock_file {
 public:
  virtual ~lock_file() = default;  // releases whatever is held, closes

  // Takes the whole-file lock in `mode`, waiting as `wait` allows.
  // IPL_OK, IPL_E_TIMEOUT, IPL_E_CANCELED, or an OS-derived failure.
  virtual os_result lock(lock_mode mode, const wait_context &wait) = 0;
  virtual os_result unlock() = 0;

  // Exclusive to shared, atomically. On failure the exclusive lock is kept.
  virtual os_result downgrade() = 0;
  // Shared to exclusive, keeping the shared lock while waiting and on any
  // failure; IPL_E_WOULD_DEADLOCK when another upgrade of this lock waits.
  virtual os_result upgrade(const wait_context &wait) = 0;

  // Who else holds the lock: *state an IPL_STATE_*, never counting this
  // file's own lock (held_mode when `holding`); *holder_pid when not NULL.
  virtual os_result query(bool holding, lock_mode held_mode, int *state,
                          int64_t *holder_pid) = 0;

  // Called while a lock (held_mode) is held: is it still? IPL_OK,
  // IPL_E_LOST (it is gone: the file server lost it, or the path names
  // another file now), or an OS failure. Never waits.
  virtual os_result check(lock_mode held_mode) = 0;

  // Called while the exclusive lock is held: removes the file from its
  // path if the path still names it, then unlocks. On failure to remove
  // it, the lock is kept.
  virtual os_result remove() = 0;

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
  // As reopen(), but never creating the file or its folders (ipl_query must
  // not undo an ipl_remove): when the path names nothing, IPL_OK with
  // *found = false, and no descriptor, as after a failed reopen.
  virtual os_result reopen_existing(bool *found) = 0;

  // True in a child process forked after this file was opened: the
  // descriptor was the parent's (libipl closed the child's copy at the
  // fork) and nothing is held here. Only reopen() and destruction may
  // follow; destruction then touches nothing of the parent's.
  virtual bool inherited() const = 0;
};

// The polling wait's sleep, which ipl_cancel() can cut short. Made when a
// wait starts to poll; wake() may come from any thread, before or during a
// sleep (a wake before the sleep makes it return at once).
class poll_sleep {
 public:
  virtual ~poll_sleep() = default;
  virtual void sleep_until(wait_deadline::clock::time_point until) = 0;
  virtual void wake() = 0;
};
std::unique_ptr<poll_sleep> make_poll_sleep();

// The OS error reported (with IPL_E_OS) when the lock file was replaced
// after more grants in a row than one acquire allows (ESTALE on POSIX).
extern const int kReplacedTooOftenError;

// Opens (by default creating, with parent folders) the lock file.
os_result open_lock_file(const open_request &request, std::unique_ptr<lock_file> *out);

// ipl_open_fd: a lock_file over the caller's descriptor, locking its open
// file description; *held (and *held_mode) when the description holds a
// lock already. IPL_E_UNSUPPORTED where locks are not per description.
os_result open_descriptor_lock(int fd, std::unique_ptr<lock_file> *out, bool *held,
                               lock_mode *held_mode);

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

// SPDX-License-Identifier: MIT
// What the two POSIX lock kinds share (posix_fcntl.cpp): opening the lock
// file, the descriptors libipl owns across fork(), the path identity check,
// and waiting for an fcntl lock. posix_ofd.cpp (Linux open-file-description
// locks) and posix_classic.cpp (classic fcntl locks plus the per-process
// inode table) each build a lock_file on top; Meson compiles exactly one.
#ifndef IPL_SRC_POSIX_FCNTL_HPP
#define IPL_SRC_POSIX_FCNTL_HPP

#include <sys/types.h>

#include <stdint.h>

#include <memory>
#include <string>

#include "platform.hpp"
#include "wait_policy.hpp"

namespace ipl::detail::posix {

// ---- Errors ------------------------------------------------------------------

os_result failure(int status, int err);
// Maps an errno from open()/mkdir()/stat() to a named status.
os_result open_failure(int err);
// Maps an errno from a lock operation: ENOLCK, EOPNOTSUPP, ENOSYS (the file
// system does not do locks) are IPL_E_UNSUPPORTED.
os_result lock_failure(int err);

// ---- Descriptors libipl owns ---------------------------------------------------

// An open lock file: a registered descriptor and what is known about it.
struct opened_file {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  bool writable = true;
  int write_denied_error = 0;  // errno of the refused O_RDWR open
  bool interruptible = true;   // a signal ends a blocking lock wait on it
  uint64_t token = 0;          // process_token() when it was opened
  bool readable = true;        // open for reading (a shared lock needs it)
  bool registered = true;      // closed in forked children (not inheritable)
};

// ipl_open_fd: what a caller's descriptor is (a regular file; its access
// mode), without taking it over: not registered, never closed by libipl.
os_result describe_descriptor(int fd, opened_file *out);

// The lock kind's hook into opening: a descriptor the process already has
// on (dev, ino) that the new handle may take over instead of opening the
// file again (the classic backend's parked descriptors; *writable says how
// it was opened), or -1.
using reuse_hook = int (*)(dev_t dev, ino_t ino, bool *writable);

// Opens `path` (absolute) as open_lock_file() documents in platform.hpp and
// ipl.h: regular files only, O_RDWR with a read-only fallback, the creation
// mode, parent folders, a descriptor >= 3, close-on-exec, registered.
os_result open_file(const std::string &path, uint32_t flags, int create_mode, reuse_hook reuse,
                    opened_file *out);

// What open_file() with IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS
// returned, for lock_file::reopen_existing(): a path that names nothing
// (ENOENT) is IPL_OK with *found = false.
os_result missing_as_not_found(const os_result &opened, bool *found);

// `path` made absolute against the current directory (as given when
// getcwd() fails), so that a later chdir() cannot change what it names.
std::string absolute_path(const char *path);

// Closes a registered descriptor (it leaves the registry first).
void close_registered(int fd);

// Adds / removes a descriptor the lock kind manages itself (the classic
// backend's parked descriptors stay registered while parked).
void register_descriptor(int fd);

// Does `path` still name (dev, ino)? *same = false when it names nothing or
// another file; an OS failure (EACCES, ELOOP, ...) is returned.
os_result still_names(const std::string &path, dev_t dev, ino_t ino, bool *same);

// ---- fork() --------------------------------------------------------------------

// A number that differs in every child forked from this process (see the
// top of posix_fcntl.cpp). Calling it first in a child whose fork ran no
// atfork handlers resets libipl's state there.
uint64_t process_token();

// The lock kind's part of the fork handlers (posix_ofd.cpp: nothing;
// posix_classic.cpp: its inode table). prepare locks the kind's mutexes,
// parent unlocks them, child resets the kind's state (only the forking
// thread exists; the child holds no lock) after unlocking them or, for a
// fork that ran no handlers, without touching them.
void kind_prepare_fork();
void kind_after_fork_parent();
void kind_after_fork_child(fork_kind kind);

// ---- Taking the kernel lock ----------------------------------------------------

// The byte ranges libipl locks (l_start, l_len; l_len 0 = to the end of the
// file and beyond). Exclusive locks cover the whole file, exactly as
// fasteners' lockf(). Shared locks stop one byte short: the last byte,
// offset 2^63-1, is where an upgrade (ipl_upgrade) announces itself, taken
// exclusive by the one handle allowed to wait for an upgrade. Every libipl
// and fasteners lock still conflicts as before (all cover byte 0).
struct byte_range {
  off_t start;
  off_t length;
};
constexpr off_t kLastByte = INT64_MAX;
constexpr byte_range kWholeFile{0, 0};
constexpr byte_range kSharedRange{0, kLastByte};  // bytes 0 .. 2^63-2
constexpr byte_range kUpgradeByte{kLastByte, 1};

constexpr byte_range range_of(lock_mode mode) {
  return mode == lock_mode::exclusive ? kWholeFile : kSharedRange;
}

// The fcntl commands of one lock kind.
struct lock_commands {
  int try_cmd;
  int wait_cmd;
};

// Takes the lock in `mode` (or `type` on `range`) through the core's wait
// policy (wait_policy.hpp): tries, blocks in the kernel where the wait
// signal can end the call, or polls.
os_result set_lock(const opened_file &file, lock_commands cmds, lock_mode mode,
                   const wait_context &wait);
os_result set_range(const opened_file &file, lock_commands cmds, short type, byte_range range,
                    const wait_context &wait);
// An unlock failing with an error that says the lock is gone anyway
// (EBADFD, ENOTCONN, ESTALE, EBADF) is IPL_E_LOST.
os_result clear_lock(int fd, int try_cmd);
os_result clear_range(int fd, int try_cmd, byte_range range);

// ipl_check: is the lock held in `mode` still held, and the file still at
// `path`? IPL_OK, IPL_E_LOST, or an OS failure.
os_result check_held(const opened_file &file, const std::string &path, int try_cmd,
                     lock_mode mode);
// The same for an exclusive OFD lock, without ever taking a lost lock back:
// F_OFD_GETLK through our description (others' locks) and through a second
// one (ours); falls back to check_held() if no second one can be opened.
os_result check_exclusive_ofd(const opened_file &file, const std::string &path);

// Exclusive to shared without a moment of freedom (see kSharedRange).
os_result convert_to_shared(int fd, int try_cmd);

// The first lock of someone else that conflicts with an exclusive lock on
// `range`: its type (F_UNLCK: none) and pid (-1 for OFD locks).
os_result conflicting_lock(int fd, int get_cmd, byte_range range, short *type, pid_t *pid);

// Takes kUpgradeByte exclusive for an upgrade: IPL_E_WOULD_DEADLOCK at once
// when another upgrade holds it; waits (polling, within `wait`) while a
// foreign shared lock covers it.
os_result take_upgrade_byte(const opened_file &file, lock_commands cmds, int get_cmd,
                            const wait_context &wait);

// The pid of a process holding a lock on (dev, ino), found through the
// "lock:" lines of /proc/PID/fdinfo/FD (bounded; the caller's own `own_fd`
// is skipped); -1 when none can be seen.
int64_t find_holder_pid(dev_t dev, ino_t ino, int own_fd);

// ipl_remove's unlink: only if `path` still names (dev, ino).
os_result unlink_if_still_named(const std::string &path, dev_t dev, ino_t ino);

std::unique_ptr<poll_sleep> make_sleep();

}  // namespace ipl::detail::posix

#endif  // IPL_SRC_POSIX_FCNTL_HPP

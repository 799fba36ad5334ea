// SPDX-License-Identifier: MIT
// posix_syscalls.hpp — the one seam between the POSIX backend and the OS.
//
// Every system call the POSIX backend (posix_fcntl.cpp, posix_ofd.cpp,
// posix_classic.cpp) and the Linux wait signal (linux_wait_signal.cpp) make
// goes through `sys::calls`, a table of function pointers that holds the
// real calls, as SQLite's aSyscall[] does. The fault tests
// (tests/test_faults.cpp) link the same object code as libipl.so (the
// static core library) and swap entries to inject EINTR, EIO, ENOLCK,
// EMFILE, ... without a special build. Nothing here is exported from
// libipl.so: the shared library's version script keeps only ipl_*.
#ifndef IPL_SRC_POSIX_SYSCALLS_HPP
#define IPL_SRC_POSIX_SYSCALLS_HPP

#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

struct statfs;

namespace ipl::detail::sys {

struct syscall_table {
  int (*open)(const char *path, int flags, mode_t mode);
  int (*close)(int fd);
  // fcntl() with a struct flock: F_SETLK, F_SETLKW, F_OFD_SETLK, ...
  int (*fcntl_lock)(int fd, int cmd, struct flock *region);
  // fcntl(fd, F_DUPFD_CLOEXEC, min_fd)
  int (*dup_cloexec)(int fd, int min_fd);
  int (*stat)(const char *path, struct stat *st);
  int (*fstat)(int fd, struct stat *st);
  int (*fstatfs)(int fd, struct statfs *st);
  int (*mkdir)(const char *path, mode_t mode);
  int (*unlink)(const char *path);
  int (*chmod)(const char *path, mode_t mode);
  int (*fchmod)(int fd, mode_t mode);
  char *(*getcwd)(char *buffer, size_t size);
  int (*clock_nanosleep)(clockid_t clock, int flags, const struct timespec *until,
                         struct timespec *left);
  int (*sigaction)(int signo, const struct sigaction *act, struct sigaction *old);
  int (*pthread_sigmask)(int how, const sigset_t *set, sigset_t *old);
  // Linux's per-thread timers (linux_wait_signal.cpp); ENOSYS elsewhere.
  int (*timer_create)(clockid_t clock, struct sigevent *event, void *timer_id);
  int (*timer_settime)(void *timer_id, int flags, const struct itimerspec *value);
  int (*timer_delete)(void *timer_id);
};

// The table in use; starts with the real calls. Only tests change it, and
// only while no other thread is inside libipl.
extern syscall_table calls;

// The real calls, to restore `calls` or to wrap them.
const syscall_table &real_calls();

}  // namespace ipl::detail::sys

#endif  // IPL_SRC_POSIX_SYSCALLS_HPP

// SPDX-License-Identifier: MIT
// The real system calls behind sys::calls (see posix_syscalls.hpp).
#include "posix_syscalls.hpp"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/vfs.h>
#else
#include <sys/mount.h>
#endif

namespace ipl::detail::sys {
namespace {

int real_open(const char *path, int flags, mode_t mode) { return ::open(path, flags, mode); }
int real_close(int fd) { return ::close(fd); }
int real_fcntl_lock(int fd, int cmd, struct flock *region) { return ::fcntl(fd, cmd, region); }
int real_dup_cloexec(int fd, int min_fd) { return ::fcntl(fd, F_DUPFD_CLOEXEC, min_fd); }
int real_stat(const char *path, struct stat *st) { return ::stat(path, st); }
int real_fstat(int fd, struct stat *st) { return ::fstat(fd, st); }
int real_fstatfs(int fd, struct statfs *st) { return ::fstatfs(fd, st); }
int real_mkdir(const char *path, mode_t mode) { return ::mkdir(path, mode); }
int real_unlink(const char *path) { return ::unlink(path); }
int real_chmod(const char *path, mode_t mode) { return ::chmod(path, mode); }
int real_fchmod(int fd, mode_t mode) { return ::fchmod(fd, mode); }
char *real_getcwd(char *buffer, size_t size) { return ::getcwd(buffer, size); }
int real_clock_nanosleep(clockid_t clock, int flags, const struct timespec *until,
                         struct timespec *left) {
  return ::clock_nanosleep(clock, flags, until, left);
}
int real_sigaction(int signo, const struct sigaction *act, struct sigaction *old) {
  return ::sigaction(signo, act, old);
}
int real_pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
  return ::pthread_sigmask(how, set, old);
}

#ifdef __linux__
// timer_t is a pointer on Linux.
static_assert(sizeof(timer_t) == sizeof(void *), "timer_t is passed as void *");
int real_timer_create(clockid_t clock, struct sigevent *event, void *timer_id) {
  return ::timer_create(clock, event, static_cast<timer_t *>(timer_id));
}
int real_timer_settime(void *timer_id, int flags, const struct itimerspec *value) {
  return ::timer_settime(static_cast<timer_t>(timer_id), flags, value, nullptr);
}
int real_timer_delete(void *timer_id) { return ::timer_delete(static_cast<timer_t>(timer_id)); }
#else
int real_timer_create(clockid_t, struct sigevent *, void *) {
  errno = ENOSYS;
  return -1;
}
int real_timer_settime(void *, int, const struct itimerspec *) {
  errno = ENOSYS;
  return -1;
}
int real_timer_delete(void *) {
  errno = ENOSYS;
  return -1;
}
#endif

constexpr syscall_table kReal = {
    real_open,       real_close,           real_fcntl_lock,      real_dup_cloexec,
    real_stat,       real_fstat,           real_fstatfs,         real_mkdir,
    real_unlink,
    real_chmod,      real_fchmod,          real_getcwd,          real_clock_nanosleep,
    real_sigaction,  real_pthread_sigmask, real_timer_create,    real_timer_settime,
    real_timer_delete,
};

}  // namespace

syscall_table calls = kReal;

const syscall_table &real_calls() { return kReal; }

}  // namespace ipl::detail::sys

// SPDX-License-Identifier: MIT
#include "bench_support.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace bench {
namespace {

// Set in forked helpers: they leave through _exit.
bool in_forked_child = false;

int64_t read_clock(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t(ts.tv_sec) * kSec + ts.tv_nsec;
}

struct flock whole_file(short type) {
  struct flock region;
  std::memset(&region, 0, sizeof region);  // l_pid must be 0 for OFD locks
  region.l_type = type;
  region.l_whence = SEEK_SET;
  region.l_start = 0;
  region.l_len = 0;
  return region;
}

}  // namespace

int64_t monotonic_ns() { return read_clock(CLOCK_MONOTONIC); }
int64_t thread_cpu_ns() { return read_clock(CLOCK_THREAD_CPUTIME_ID); }
int64_t process_cpu_ns() { return read_clock(CLOCK_PROCESS_CPUTIME_ID); }

void sleep_for_ns(int64_t ns) {
  const int64_t until = monotonic_ns() + ns;
  timespec ts;
  ts.tv_sec = time_t(until / kSec);
  ts.tv_nsec = long(until % kSec);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

void fail(const char *format, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "ipl_bench: error%s: ", in_forked_child ? " (helper process)" : "");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  if (in_forked_child) _exit(2);
  std::exit(2);
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  // Nearest rank: the smallest value with at least p% of the sample at or below it.
  const double rank = std::ceil(p / 100.0 * double(values.size()));
  const size_t index = rank < 1 ? 0 : std::min(values.size() - 1, size_t(rank) - 1);
  return values[index];
}

pid_t fork_child(const std::function<int()> &body) {
  // Flush first so the child does not inherit (and later repeat) buffered text.
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) fail("fork: %s", std::strerror(errno));
  if (pid > 0) return pid;
  in_forked_child = true;
  // A helper never outlives the benchmark, however it ends.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(3);
  _exit(body());
}

void wait_child(pid_t pid, int64_t bound_ns, const char *what) {
  const int64_t deadline = monotonic_ns() + bound_ns;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) fail("waitpid (%s): %s", what, std::strerror(errno));
    if (monotonic_ns() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fail("%s did not finish within %.0f s", what, double(bound_ns) / kSec);
    }
    sleep_for_ns(1 * kMs);
  }
  if (WIFSIGNALED(status)) fail("%s was killed by signal %d", what, WTERMSIG(status));
  if (WEXITSTATUS(status) != 0) fail("%s exited with status %d", what, WEXITSTATUS(status));
}

void wait_until(const std::function<bool()> &ready, int64_t bound_ns, const char *what) {
  const int64_t deadline = monotonic_ns() + bound_ns;
  while (!ready()) {
    if (monotonic_ns() > deadline) fail("timed out waiting for %s", what);
    sleep_for_ns(20 * kUs);
  }
}

char process_state(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return '?';
  char text[512];
  const ssize_t got = read(fd, text, sizeof text - 1);
  close(fd);
  if (got <= 0) return '?';
  text[got] = '\0';
  // "pid (comm) S ...": comm may hold spaces and parentheses, so look for
  // the last ')'.
  const char *close_paren = std::strrchr(text, ')');
  if (close_paren == nullptr || close_paren[1] != ' ' || close_paren[2] == '\0') return '?';
  return close_paren[2];
}

bool wait_until_asleep(pid_t pid, int64_t bound_ns) {
  const int64_t deadline = monotonic_ns() + bound_ns;
  for (;;) {
    if (process_state(pid) == 'S') return true;
    if (monotonic_ns() > deadline) return false;
    sleep_for_ns(10 * kUs);
  }
}

const char *lock_kind_name(lock_kind kind) {
  switch (kind) {
    case lock_kind::raw_ofd:
      return "raw OFD";
    case lock_kind::ipl_try:
      return "libipl try";
    case lock_kind::ipl_timed:
      return "libipl timed";
    case lock_kind::ipl_forever:
      return "libipl forever";
    case lock_kind::ipl_timed_polling:
      return "libipl timed (polling)";
  }
  return "?";
}

void use_polling_timed_waits() {
#ifdef IPL_WAIT_SIGNAL_AUTO
  const int status = ipl_set_wait_signal(0);
  if (status != IPL_OK) fail("ipl_set_wait_signal(0): %s", ipl_strerror(status));
#else
  fail("this libipl has no ipl_set_wait_signal(): cannot measure its polling fallback");
#endif
}

std::string timed_wait_mechanism() {
#ifdef IPL_WAIT_SIGNAL_AUTO
  const int signo = ipl_wait_signal();
  return signo > 0 ? "signal " + std::to_string(signo) : "polling";
#else
  return "unknown";
#endif
}

int raw_ofd_lock(int fd, bool wait) {
  struct flock region = whole_file(F_WRLCK);
  return fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &region) == 0 ? 0 : errno;
}

int raw_ofd_unlock(int fd) {
  struct flock region = whole_file(F_UNLCK);
  return fcntl(fd, F_OFD_SETLK, &region) == 0 ? 0 : errno;
}

int open_file(const std::string &path) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("open %s: %s", path.c_str(), std::strerror(errno));
  return fd;
}

contender::contender(lock_kind kind, const std::string &path, int64_t timed_ms)
    : kind_(kind), timed_ms_(timed_ms) {
  if (kind_ == lock_kind::ipl_timed_polling) use_polling_timed_waits();
  if (kind_ == lock_kind::raw_ofd) {
    fd_ = open_file(path);
    return;
  }
  const int status = ipl_open(path.c_str(), 0, &handle_);
  if (status != IPL_OK) fail("ipl_open %s: %s", path.c_str(), ipl_strerror(status));
}

contender::~contender() {
  if (fd_ >= 0) close(fd_);
  ipl_close(handle_);
}

void contender::lock() {
  if (kind_ == lock_kind::raw_ofd) {
    int err;
    while ((err = raw_ofd_lock(fd_, true)) == EINTR) {
    }
    if (err != 0) fail("F_OFD_SETLKW: %s", std::strerror(err));
    return;
  }
  int64_t timeout_ms = IPL_WAIT_FOREVER;
  if (kind_ == lock_kind::ipl_try) timeout_ms = 0;
  if (kind_ == lock_kind::ipl_timed || kind_ == lock_kind::ipl_timed_polling)
    timeout_ms = timed_ms_;
  const int status = ipl_acquire(handle_, timeout_ms);
  if (status != IPL_OK) {
    fail("ipl_acquire(%lld ms) [%s]: %s (os error %d)", static_cast<long long>(timeout_ms),
         lock_kind_name(kind_), ipl_strerror(status), ipl_os_error(handle_));
  }
}

void contender::unlock() {
  if (kind_ == lock_kind::raw_ofd) {
    const int err = raw_ofd_unlock(fd_);
    if (err != 0) fail("F_OFD_SETLK unlock: %s", std::strerror(err));
    return;
  }
  const int status = ipl_release(handle_);
  if (status != IPL_OK) fail("ipl_release [%s]: %s", lock_kind_name(kind_), ipl_strerror(status));
}

lock_holder::lock_holder(const std::string &path) {
  int ready_pipe[2];
  int release_pipe[2];
  if (pipe2(ready_pipe, O_CLOEXEC) != 0 || pipe2(release_pipe, O_CLOEXEC) != 0) {
    fail("pipe: %s", std::strerror(errno));
  }
  pid_ = fork_child([&]() {
    close(ready_pipe[0]);
    close(release_pipe[1]);
    const int fd = open_file(path);
    const int err = raw_ofd_lock(fd, false);
    if (err != 0) fail("lock holder: the lock is busy or failed: %s", std::strerror(err));
    const char locked = 'L';
    if (write(ready_pipe[1], &locked, 1) != 1) return 4;
    // Hold until the benchmark closes its end (or dies: EOF too).
    char ignored;
    while (read(release_pipe[0], &ignored, 1) < 0 && errno == EINTR) {
    }
    return 0;
  });
  close(ready_pipe[1]);
  close(release_pipe[0]);
  release_fd_ = release_pipe[1];
  pollfd ready = {ready_pipe[0], POLLIN, 0};
  char answer = 0;
  if (poll(&ready, 1, 10000) != 1 || read(ready_pipe[0], &answer, 1) != 1 || answer != 'L') {
    fail("the lock holder process did not take the lock within 10 s");
  }
  close(ready_pipe[0]);
}

lock_holder::~lock_holder() {
  close(release_fd_);
  wait_child(pid_, 10 * kSec, "the lock holder process");
}

}  // namespace bench

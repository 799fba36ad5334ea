// SPDX-License-Identifier: MIT
// The fault suite: OS failures injected through the syscall seam
// (src/posix_syscalls.hpp, ipl::detail::sys::calls). This file is built into
// its own test binary, ipl_fault_tests, which links the static core library
// (the same object code as libipl.so) and so can swap entries of the table.
//
// The fixture routes the seam's entries through counting fakes and puts
// the real table back afterwards. Each test scripts a few failures ("fail
// the next 3 calls of fcntl with F_OFD_SETLK and F_UNLCK with EIO, then
// call the real one"), or swaps in a fake of its own for a race, and checks
// the status, ipl_os_error(), who holds the lock afterwards (a lock agent
// in another process, or a second handle), and — in the fixture — that no
// descriptor and no thread is left over. Each test says which broken
// implementation it catches.
//
// A test's gtest name starts with "Fault" (the meson test runs Fault*).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <ipl/ipl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "posix_syscalls.hpp"
#include "test_support.hpp"
#include "wait_signal.hpp"

namespace {

namespace sys = ipl::detail::sys;
using namespace std::chrono_literals;
using agent_mode = ipltest::lock_mode;
using steady = std::chrono::steady_clock;

// ---- Which lock kind this binary was built with ------------------------------

#ifndef IPL_POSIX_LOCK_KIND
#error "tests/meson.build passes IPL_POSIX_LOCK_KIND"
#endif
constexpr bool kOfd = std::string_view(IPL_POSIX_LOCK_KIND) == "ofd";
constexpr int kTryCmd = kOfd ? F_OFD_SETLK : F_SETLK;
constexpr int kWaitCmd = kOfd ? F_OFD_SETLKW : F_SETLKW;

// ---- The script the fakes follow ------------------------------------------------

enum entry {
  e_open,
  e_close,
  e_fcntl_lock,
  e_dup_cloexec,
  e_stat,
  e_fstat,
  e_fstatfs,
  e_mkdir,
  e_sigaction,
  e_pthread_sigmask,
  e_timer_create,
  e_timer_settime,
  e_timer_delete,
  kEntries
};

constexpr int kAny = INT_MIN;            // rule::cmd / rule::type: every value
constexpr int kLockTypes = INT_MIN + 1;  // rule::type: F_RDLCK or F_WRLCK
constexpr int kAlways = INT_MAX;         // rule::times: no end

// What one seam entry does: calls matching the filter are counted; after
// `skip` of them, `times` fail with `err` (each after `delay`); every other
// call goes to the real one. `alternate`: from the first failure on, every
// other matching call fails, so each retrying call site sees one failure.
struct rule {
  int err = 0;  // 0: never fail
  int skip = 0;
  int times = 0;
  bool alternate = false;
  std::chrono::milliseconds delay{0};
  int cmd = kAny;         // fcntl_lock: the command
  int type = kAny;        // fcntl_lock: l_type
  int with_flags = 0;       // open: bits the flags must have
  int without_flags = 0;    // open: bits they must not have
  bool after_real = false;  // fcntl_lock: the real call is made, then fails
};

struct tally {
  std::atomic<int> calls{0};    // every call of the entry
  std::atomic<int> matched{0};  // calls that matched the rule's filter
  std::atomic<int> failed{0};   // calls the rule failed
};

rule rules[kEntries];
tally tallies[kEntries];
// The folders the mkdir() fakes below were asked for, in order.
std::vector<std::string> mkdir_paths;

// How a wait went: non-blocking lock attempts (F_OFD_SETLK / F_SETLK with
// F_RDLCK or F_WRLCK) and blocking ones (F_OFD_SETLKW / F_SETLKW). A wait
// that sleeps in the kernel tries once and blocks; a polling wait tries
// every 50 us to 10 ms and never blocks.
std::atomic<int> lock_tries{0};
std::atomic<int> blocking_waits{0};

// Set by a test whose waits must poll: a blocking lock call then fails at
// once, with an errno no lock call gives, so that a wait that wrongly
// blocks (with no timer to end it) fails the test instead of hanging it.
constexpr int kBlockedWithoutTimer = ENOTRECOVERABLE;
std::atomic<bool> blocking_waits_forbidden{false};

// Sets an entry's rule and starts its tally from zero.
rule &script(entry e, const rule &r) {
  rules[e] = r;
  tallies[e].calls = 0;
  tallies[e].matched = 0;
  tallies[e].failed = 0;
  return rules[e];
}

void reset_script() {
  mkdir_paths.clear();
  blocking_waits_forbidden = false;
  lock_tries = 0;
  blocking_waits = 0;
  for (int e = 0; e < kEntries; ++e) {
    rules[e] = rule{};
    tallies[e].calls = 0;
    tallies[e].matched = 0;
    tallies[e].failed = 0;
  }
}

// Counts the call; true when the rule says it fails.
bool inject(entry e, bool matches) {
  tally &t = tallies[e];
  t.calls.fetch_add(1);
  if (!matches) return false;
  int n = t.matched.fetch_add(1) - rules[e].skip;
  const rule &r = rules[e];
  if (r.err == 0 || n < 0) return false;
  if (r.alternate) {
    if (n % 2 != 0) return false;
    n /= 2;
  }
  if (r.times != kAlways && n >= r.times) return false;
  if (r.delay.count() > 0) std::this_thread::sleep_for(r.delay);
  t.failed.fetch_add(1);
  return true;
}

int fail_with(int err) {
  errno = err;
  return -1;
}

const sys::syscall_table &real() { return sys::real_calls(); }

int fake_open(const char *path, int flags, mode_t mode) {
  const rule &r = rules[e_open];
  const bool matches = (flags & r.with_flags) == r.with_flags && (flags & r.without_flags) == 0;
  if (inject(e_open, matches)) return fail_with(r.err);
  return real().open(path, flags, mode);
}

int fake_close(int fd) {
  inject(e_close, false);
  return real().close(fd);
}

bool type_matches(int wanted, short type) {
  if (wanted == kAny) return true;
  if (wanted == kLockTypes) return type == F_RDLCK || type == F_WRLCK;
  return type == wanted;
}

int fake_fcntl_lock(int fd, int cmd, struct flock *region) {
  if (cmd == kTryCmd && region->l_type != F_UNLCK) lock_tries.fetch_add(1);
  if (cmd == kWaitCmd) {
    blocking_waits.fetch_add(1);
    if (blocking_waits_forbidden) return fail_with(kBlockedWithoutTimer);
  }
  const rule &r = rules[e_fcntl_lock];
  const bool matches = (r.cmd == kAny || r.cmd == cmd) && type_matches(r.type, region->l_type);
  if (inject(e_fcntl_lock, matches)) {
    if (r.after_real) real().fcntl_lock(fd, cmd, region);
    return fail_with(r.err);
  }
  return real().fcntl_lock(fd, cmd, region);
}

int fake_dup_cloexec(int fd, int min_fd) {
  if (inject(e_dup_cloexec, true)) return fail_with(rules[e_dup_cloexec].err);
  return real().dup_cloexec(fd, min_fd);
}

int fake_stat(const char *path, struct stat *st) {
  if (inject(e_stat, true)) return fail_with(rules[e_stat].err);
  return real().stat(path, st);
}

int fake_fstat(int fd, struct stat *st) {
  if (inject(e_fstat, true)) return fail_with(rules[e_fstat].err);
  return real().fstat(fd, st);
}

int fake_fstatfs(int fd, struct statfs *st) {
  if (inject(e_fstatfs, true)) return fail_with(rules[e_fstatfs].err);
  return real().fstatfs(fd, st);
}

int fake_mkdir(const char *path, mode_t mode) {
  if (inject(e_mkdir, true)) return fail_with(rules[e_mkdir].err);
  return real().mkdir(path, mode);
}

int fake_sigaction(int signo, const struct sigaction *act, struct sigaction *old) {
  if (inject(e_sigaction, true)) return fail_with(rules[e_sigaction].err);
  return real().sigaction(signo, act, old);
}

// pthread_sigmask returns the error number itself.
int fake_pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
  if (inject(e_pthread_sigmask, true)) return rules[e_pthread_sigmask].err;
  return real().pthread_sigmask(how, set, old);
}

int fake_timer_create(clockid_t clock, struct sigevent *event, void *timer_id) {
  if (inject(e_timer_create, true)) return fail_with(rules[e_timer_create].err);
  return real().timer_create(clock, event, timer_id);
}

int fake_timer_settime(void *timer_id, int flags, const struct itimerspec *value) {
  // Only arming is faulted: a disarm (all zero) always reaches the kernel.
  const bool arming = value->it_value.tv_sec != 0 || value->it_value.tv_nsec != 0;
  if (inject(e_timer_settime, arming)) return fail_with(rules[e_timer_settime].err);
  return real().timer_settime(timer_id, flags, value);
}

int fake_timer_delete(void *timer_id) {
  inject(e_timer_delete, false);
  return real().timer_delete(timer_id);
}

void install_counting_fakes() {
  sys::calls = real();
  sys::calls.open = fake_open;
  sys::calls.close = fake_close;
  sys::calls.fcntl_lock = fake_fcntl_lock;
  sys::calls.dup_cloexec = fake_dup_cloexec;
  sys::calls.stat = fake_stat;
  sys::calls.fstat = fake_fstat;
  sys::calls.fstatfs = fake_fstatfs;
  sys::calls.mkdir = fake_mkdir;
  sys::calls.sigaction = fake_sigaction;
  sys::calls.pthread_sigmask = fake_pthread_sigmask;
  sys::calls.timer_create = fake_timer_create;
  sys::calls.timer_settime = fake_timer_settime;
  sys::calls.timer_delete = fake_timer_delete;
}

// ---- Fakes for races and foreign state ---------------------------------------

// Another process creates the folder between our failed open and our mkdir.
int mkdir_loses_race(const char *path, mode_t mode) {
  inject(e_mkdir, true);
  mkdir_paths.push_back(path);
  real().mkdir(path, mode);
  return fail_with(EEXIST);
}

// Another process puts a regular file where the folder should go.
int mkdir_finds_a_file(const char *path, mode_t) {
  inject(e_mkdir, true);
  mkdir_paths.push_back(path);
  const int fd = ::open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  return fail_with(EEXIST);
}

// Another process creates the lock file between our failed open and our
// O_EXCL create.
int open_loses_create_race(const char *path, int flags, mode_t mode) {
  if (inject(e_open, (flags & O_CREAT) != 0)) {
    const int fd = ::open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
    return fail_with(EEXIST);
  }
  return real().open(path, flags, mode);
}

// A network client whose cache lags (GlusterFS, two mounts creating one
// file at once): the file exists, so the O_EXCL create says EEXIST, but the
// first plain opens still say ENOENT.
std::atomic<int> lagging_plain_opens{0};
int open_cache_lags(const char *path, int flags, mode_t mode) {
  if (!(flags & O_CREAT) && lagging_plain_opens.fetch_sub(1) > 0) return fail_with(ENOENT);
  return real().open(path, flags, mode);
}

// Read-write access denied (as for a file of another user); the read-only
// fallback then follows the script.
int open_write_denied(const char *path, int flags, mode_t mode) {
  if ((flags & O_ACCMODE) == O_RDWR) {
    inject(e_open, false);
    return fail_with(EACCES);
  }
  return fake_open(path, flags, mode);
}

// A file system of this type, whatever the file really is on.
long reported_fs_type = 0;
int fstatfs_reports_type(int fd, struct statfs *st) {
  inject(e_fstatfs, false);
  const int rc = real().fstatfs(fd, st);
  if (rc == 0) st->f_type = reported_fs_type;
  return rc;
}

// The application (say, a language runtime) has put its own handler on the
// wait signal: sigaction() reports it, and any attempt to install over it
// is counted in tallies[e_sigaction].failed.
int foreign_signal = 0;
void foreign_handler(int) {}
int sigaction_foreign_handler(int signo, const struct sigaction *act, struct sigaction *old) {
  inject(e_sigaction, false);
  if (signo == foreign_signal && act) {
    tallies[e_sigaction].failed.fetch_add(1);
    return fail_with(EPERM);  // refuse: the test's process keeps libipl's handler
  }
  const int rc = real().sigaction(signo, act, old);
  if (rc == 0 && old && signo == foreign_signal) {
    std::memset(old, 0, sizeof *old);
    old->sa_handler = foreign_handler;
  }
  return rc;
}

// The lock file, made without libipl (whose calls the tallies count).
void create_file(const std::string &path) {
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  ::close(fd);
}

// ---- Observations ------------------------------------------------------------

int thread_count() {
  int count = 0;
  DIR *dir = opendir("/proc/self/task");
  if (!dir) return -1;
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

std::chrono::milliseconds since(steady::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
}

// Waits (bounded) until `counter` reaches `at_least`; false after the
// bound, or as soon as `gave_up` is set (the waiting thread has returned).
bool reaches(const std::atomic<int> &counter, int at_least, const std::atomic<bool> &gave_up) {
  const auto start = steady::now();
  while (counter.load() < at_least) {
    if (gave_up.load() || since(start) > ipltest::kBound) return counter.load() >= at_least;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Waits (bounded) until a waiting thread has returned; if it has not,
// cancels its wait (so that the test can join it) and says false.
bool returns_in_time(const std::atomic<bool> &returned, ipl_lock *lock,
                     std::chrono::milliseconds bound = ipltest::kBound) {
  const auto start = steady::now();
  while (!returned.load()) {
    if (since(start) > bound) {
      while (!returned.load()) {
        ipl_cancel(lock);
        std::this_thread::sleep_for(10ms);
      }
      return false;
    }
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// What a fresh process gets with one try: IPL_OK (the lock was free),
// IPL_E_TIMEOUT (someone holds it).
int other_process_try(const std::string &path, agent_mode mode = agent_mode::exclusive) {
  return ipltest::try_from_other_process(path, mode);
}

std::string errno_name(int err) {
  switch (err) {
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENOLCK: return "ENOLCK";
    case ENOMEM: return "ENOMEM";
    case EDEADLK: return "EDEADLK";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    default: return "E" + std::to_string(err);
  }
}

// An ipl_lock that is closed however the test ends.
struct handle {
  ipl_lock *lock = nullptr;
  handle() = default;
  explicit handle(const std::string &path) { EXPECT_EQ(ipl_open(path.c_str(), 0, &lock), IPL_OK); }
  ~handle() { ipl_close(lock); }
  handle(const handle &) = delete;
  handle &operator=(const handle &) = delete;
  void close() {
    ipl_close(lock);
    lock = nullptr;
  }
  operator ipl_lock *() const { return lock; }
};

// A lock held by another process.
struct held_elsewhere {
  explicit held_elsewhere(const std::string &path, agent_mode mode = agent_mode::exclusive)
      : agent(path), mode(mode) {
    ok = agent.started() && agent.acquire(mode, 0) == IPL_OK;
  }
  bool release() { return agent.release(mode) == IPL_OK; }
  ipltest::lock_agent agent;
  agent_mode mode;
  bool ok = false;
};

// A timed acquire; its status and how long it took.
struct timed_result {
  int status = IPL_E_INTERNAL;
  std::chrono::milliseconds took{0};
};

timed_result timed_acquire(ipl_lock *lock, int64_t timeout_ms,
                           agent_mode mode = agent_mode::exclusive) {
  const auto start = steady::now();
  timed_result r;
  r.status = ipltest::acquire_in_mode(lock, mode, timeout_ms);
  r.took = since(start);
  return r;
}

// The same, in a new thread: a thread's wait timer is made on its first
// contended timed wait, so a fresh thread shows whether timer_create is
// called at all.
timed_result timed_acquire_in_new_thread(ipl_lock *lock, int64_t timeout_ms) {
  timed_result r;
  std::thread waiter([&] { r = timed_acquire(lock, timeout_ms); });
  waiter.join();
  return r;
}

// ---- The fixture ---------------------------------------------------------------

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_signal_ = ipl_wait_signal();
    reset_script();
    install_counting_fakes();
    // ThreadSanitizer starts a thread of its own when the first thread is
    // made: make one before counting, so that it is not counted as ours.
    static const bool runtime_threads_started = [] {
      std::thread([] {}).join();
      return true;
    }();
    (void)runtime_threads_started;
    fds_before_ = ipltest::open_fd_count();
    threads_before_ = thread_count();
  }

  void TearDown() override {
    sys::calls = sys::real_calls();
    reset_script();
    if (ipl_wait_signal() != saved_signal_) ipl_set_wait_signal(saved_signal_);
    // Every handle and agent of the test is gone by now.
    EXPECT_EQ(ipltest::open_fd_count(), fds_before_) << "descriptors leaked";
    EXPECT_EQ(thread_count(), threads_before_) << "threads left over";
  }

  // Whether timed waits can sleep in the kernel here (a wait signal, and a
  // lock file on a file system known to be local).
  bool kernel_waits_available(const std::string &path) {
    if (ipl_wait_signal() == 0) return false;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    const bool local = ipl::detail::signal_can_interrupt_lock_wait(fd);
    ::close(fd);
    return local;
  }

  ipltest::temp_dir dir_;
  std::string path_ = dir_.path("lock");
  int saved_signal_ = 0;
  int fds_before_ = 0;
  int threads_before_ = 0;
};

// The areas of the suite, for the test names.
using FaultOpen = FaultTest;
using FaultLock = FaultTest;
using FaultUnlock = FaultTest;
using FaultSignal = FaultTest;

// Checks that the lock at `path` is held by `lock` in `mode` and nobody
// else, releases it, and checks that another process then gets it.
void expect_held_then_release(const std::string &path, ipl_lock *lock, agent_mode mode) {
  EXPECT_EQ(other_process_try(path, agent_mode::exclusive), IPL_E_TIMEOUT) << "lock not held";
  EXPECT_EQ(ipltest::release_in_mode(lock, mode), IPL_OK);
  EXPECT_EQ(other_process_try(path, agent_mode::exclusive), IPL_OK) << "lock left behind";
}

// ================================================================================
// Opening the lock file
// ================================================================================

// ---- EINTR at every open() --------------------------------------------------------

enum class open_case { existing, new_file, new_in_new_folders };

struct open_eintr_param {
  open_case which;
  int sites;  // the open() calls on the way, each interrupted once
  const char *name;
};

class FaultOpenEintr : public FaultTest, public ::testing::WithParamInterface<open_eintr_param> {};

// Catches: an open() not retried on EINTR (IPL_E_OS with EINTR), at any of
// the open sites (existing file, O_EXCL create, create after mkdir).
TEST_P(FaultOpenEintr, IsRetriedAtEveryOpen) {
  const open_eintr_param p = GetParam();
  std::string path = path_;
  if (p.which == open_case::existing) {
    create_file(path);
  } else if (p.which == open_case::new_in_new_folders) {
    path = dir_.path("a/b/lock");
  }
  script(e_open, rule{EINTR, 0, kAlways, true});
  handle lock;
  int os_error = -1;
  ASSERT_EQ(ipl_open_ex(path.c_str(), 0, &lock.lock, &os_error), IPL_OK) << errno_name(os_error);
  EXPECT_GE(tallies[e_open].failed.load(), p.sites);
  EXPECT_EQ(tallies[e_open].failed.load() * 2, tallies[e_open].matched.load())
      << "an interrupted open() was not retried";
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path, lock, agent_mode::exclusive);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultOpenEintr,
                         ::testing::Values(open_eintr_param{open_case::existing, 1, "existing"},
                                           open_eintr_param{open_case::new_file, 2, "new_file"},
                                           open_eintr_param{open_case::new_in_new_folders, 3,
                                                            "new_in_new_folders"}),
                         [](const auto &info) { return std::string(info.param.name); });

// Catches: the read-only fallback's open() not retried on EINTR.
TEST_F(FaultOpen, EintrInReadOnlyFallbackIsRetried) {
  create_file(path_);
  sys::calls.open = open_write_denied;
  script(e_open, rule{EINTR, 0, 2});
  handle lock;
  ASSERT_EQ(ipl_open(path_.c_str(), 0, &lock.lock), IPL_OK);
  EXPECT_EQ(tallies[e_open].failed.load(), 2);
  sys::calls = sys::real_calls();
  EXPECT_EQ(ipl_acquire(lock, 0), IPL_E_ACCESS);  // read-only: shared locks only
  EXPECT_EQ(ipl_os_error(lock), EACCES);
  ASSERT_EQ(ipl_acquire_read(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::shared);
}

// ---- ENOMEM, EMFILE, ENFILE at open() ---------------------------------------------

struct open_failure_param {
  int err;
  int status;
  bool existing;
};

class FaultOpenFailure : public FaultTest,
                         public ::testing::WithParamInterface<open_failure_param> {};

// Catches: a failed open() mapped to the wrong status or errno (ENOMEM not
// IPL_E_NO_MEMORY; EMFILE/ENFILE not IPL_E_OS with that errno), *out left
// set, a descriptor leaked, or a lock file created by a failed open.
TEST_P(FaultOpenFailure, ReportsTheStatusAndLeaksNothing) {
  const open_failure_param p = GetParam();
  if (p.existing) {
    create_file(path_);
  }
  script(e_open, rule{p.err, 0, kAlways});
  if (!p.existing) rules[e_open].with_flags = O_CREAT;  // the create itself fails
  const int fds = ipltest::open_fd_count();
  int dummy = 0;
  ipl_lock *lock = reinterpret_cast<ipl_lock *>(&dummy);
  int os_error = 0;
  EXPECT_EQ(ipl_open_ex(path_.c_str(), 0, &lock, &os_error), p.status);
  EXPECT_EQ(os_error, p.err) << errno_name(os_error);
  EXPECT_EQ(lock, nullptr);
  EXPECT_EQ(ipltest::open_fd_count(), fds);
  struct stat st;
  EXPECT_EQ(::stat(path_.c_str(), &st) == 0, p.existing) << "a failed open created the file";
  // The fault clears: the same call works.
  script(e_open, rule{});
  handle again;
  ASSERT_EQ(ipl_open(path_.c_str(), 0, &again.lock), IPL_OK);
  ASSERT_EQ(ipl_acquire(again, 0), IPL_OK);
  expect_held_then_release(path_, again, agent_mode::exclusive);
}

INSTANTIATE_TEST_SUITE_P(
    Fault, FaultOpenFailure,
    ::testing::Values(open_failure_param{ENOMEM, IPL_E_NO_MEMORY, true},
                      open_failure_param{ENOMEM, IPL_E_NO_MEMORY, false},
                      open_failure_param{EMFILE, IPL_E_OS, true},
                      open_failure_param{EMFILE, IPL_E_OS, false},
                      open_failure_param{ENFILE, IPL_E_OS, true},
                      open_failure_param{ENFILE, IPL_E_OS, false}),
    [](const auto &info) {
      return errno_name(info.param.err) + (info.param.existing ? "_existing" : "_new_file");
    });

// ---- fstat() failing after open() --------------------------------------------------

class FaultOpenFstat : public FaultTest, public ::testing::WithParamInterface<open_failure_param> {};

// Catches: the descriptor opened before the failed fstat() not closed (a
// leak), or the failure mapped to the wrong status / errno.
TEST_P(FaultOpenFstat, ClosesTheDescriptor) {
  const open_failure_param p = GetParam();
  if (p.existing) {
    create_file(path_);
  }
  script(e_fstat, rule{p.err, 0, kAlways});
  const int fds = ipltest::open_fd_count();
  const int opens_before = tallies[e_open].calls.load();
  int dummy = 0;
  ipl_lock *lock = reinterpret_cast<ipl_lock *>(&dummy);
  int os_error = 0;
  EXPECT_EQ(ipl_open_ex(path_.c_str(), 0, &lock, &os_error), p.status);
  EXPECT_EQ(os_error, p.err) << errno_name(os_error);
  EXPECT_EQ(lock, nullptr);
  EXPECT_GT(tallies[e_open].calls.load(), opens_before) << "fstat() failed before any open()";
  EXPECT_EQ(tallies[e_fstat].failed.load(), 1);
  EXPECT_EQ(ipltest::open_fd_count(), fds) << "the opened descriptor leaked";
  EXPECT_EQ(other_process_try(path_), IPL_OK);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultOpenFstat,
                         ::testing::Values(open_failure_param{EIO, IPL_E_OS, true},
                                           open_failure_param{EIO, IPL_E_OS, false},
                                           open_failure_param{ENOMEM, IPL_E_NO_MEMORY, true}),
                         [](const auto &info) {
                           return errno_name(info.param.err) +
                                  (info.param.existing ? "_existing" : "_new_file");
                         });

// ---- Races with other creators ------------------------------------------------------

// Catches: mkdir()'s EEXIST, when another process made the folder between
// our failed open and our mkdir, treated as a failure.
TEST_F(FaultOpen, ParentCreatedConcurrently) {
  const std::string path = dir_.path("a/b/lock");
  sys::calls.mkdir = mkdir_loses_race;
  handle lock;
  int os_error = -1;
  ASSERT_EQ(ipl_open_ex(path.c_str(), 0, &lock.lock, &os_error), IPL_OK) << errno_name(os_error);
  // a and a/b: both "made by another process" first.
  EXPECT_EQ(mkdir_paths.size() >= 2 ? mkdir_paths[mkdir_paths.size() - 2] : "", dir_.path("a"));
  EXPECT_EQ(mkdir_paths.empty() ? "" : mkdir_paths.back(), dir_.path("a/b"));
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path, lock, agent_mode::exclusive);
}

// Catches: mkdir()'s EEXIST accepted without checking that the thing is a
// folder (a confusing IPL_E_OS / endless create rounds instead of
// IPL_E_BAD_PARENT), or a descriptor leaked on the way out.
TEST_F(FaultOpen, ParentTurnsOutToBeAFile) {
  const std::string path = dir_.path("a/b/lock");
  sys::calls.mkdir = mkdir_finds_a_file;
  ipl_lock *lock = nullptr;
  int os_error = 0;
  EXPECT_EQ(ipl_open_ex(path.c_str(), 0, &lock, &os_error), IPL_E_BAD_PARENT);
  EXPECT_EQ(os_error, ENOTDIR) << errno_name(os_error);
  EXPECT_EQ(lock, nullptr);
  // It stops at the file: a/b is never tried.
  EXPECT_EQ(mkdir_paths.empty() ? "" : mkdir_paths.back(), dir_.path("a"));
}

// Catches: the O_EXCL create's EEXIST, when another process created the
// file between our failed open and our create, treated as a failure.
TEST_F(FaultOpen, FileCreatedConcurrently) {
  sys::calls.open = open_loses_create_race;
  handle lock;
  int os_error = -1;
  ASSERT_EQ(ipl_open_ex(path_.c_str(), 0, &lock.lock, &os_error), IPL_OK) << errno_name(os_error);
  EXPECT_EQ(tallies[e_open].matched.load(), 1);
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// Catches: a create that raced with a remove (EEXIST, then ENOENT on the
// open) reported as a failure instead of going round again.
TEST_F(FaultOpen, CreateRaceWithRemoveSettles) {
  script(e_open, rule{EEXIST, 0, 2});
  rules[e_open].with_flags = O_CREAT;
  handle lock;
  int os_error = -1;
  ASSERT_EQ(ipl_open_ex(path_.c_str(), 0, &lock.lock, &os_error), IPL_OK) << errno_name(os_error);
  EXPECT_EQ(tallies[e_open].failed.load(), 2);
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// Catches: the EEXIST-then-ENOENT round reported as a failure with the
// errno of the dangling-symlink probe (readlink on a regular file: EINVAL)
// instead of going round again.
TEST_F(FaultOpen, CreateRaceWithALaggingCacheSettles) {
  const int existing = ::open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(existing, 0);
  ::close(existing);
  lagging_plain_opens = 3;  // the first open, then two rounds
  sys::calls.open = open_cache_lags;
  handle lock;
  int os_error = -1;
  ASSERT_EQ(ipl_open_ex(path_.c_str(), 0, &lock.lock, &os_error), IPL_OK) << errno_name(os_error);
  EXPECT_LT(lagging_plain_opens.load(), 0) << "the lagging opens were not all made";
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// Catches: an unbounded create loop when EEXIST and ENOENT alternate for
// ever (the fake gives in after 1000 rounds, so a loop without a bound
// shows as IPL_OK here instead of hanging).
TEST_F(FaultOpen, CreateRaceIsBounded) {
  script(e_open, rule{EEXIST, 0, 1000});
  rules[e_open].with_flags = O_CREAT;
  ipl_lock *lock = nullptr;
  int os_error = 0;
  EXPECT_EQ(ipl_open_ex(path_.c_str(), 0, &lock, &os_error), IPL_E_OS);
  EXPECT_NE(os_error, 0);
  EXPECT_EQ(lock, nullptr);
  EXPECT_LE(tallies[e_open].failed.load(), 100);
  ipl_close(lock);
}

// ---- Descriptors and standard streams (helper processes) ----------------------------

// UBSan's vptr check opens a pipe the first time it meets a dynamic type
// (to probe the object's memory): with no descriptor free it reports every
// new virtual call as invalid, and halts the helper. Meeting the types
// first, while descriptors are free, fills its cache.
void meet_dynamic_types(const std::string &path) {
  ipl_lock *lock = nullptr;
  if (ipl_open(path.c_str(), 0, &lock) == IPL_OK && ipl_acquire(lock, 0) == IPL_OK) {
    ipl_release(lock);
  }
  ipl_close(lock);
  std::ostringstream text;
  text << "types " << 1 << " " << path;
  ipltest::helper_say(text.str());
}

// With stdin closed, open() returns descriptor 0, which libipl moves above
// 2 with F_DUPFD_CLOEXEC; here that move fails ("inject": the seam says
// EMFILE; "rlimit": RLIMIT_NOFILE is 3, so no descriptor >= 3 exists).
// Says "types ..." (meet_dynamic_types), then "first <status> <os_error>
// <out:null|set> <fd0:free|taken> <fds before> <fds after>", then, with the OS healthy again, "then <status>
// <lock status> <fd0:free|taken>".
IPL_TEST_HELPER(fault_no_descriptor_above_stdio) {
  const std::string &path = args.at(0);
  const bool inject_it = args.at(1) == "inject";
  meet_dynamic_types(path);
  ::close(STDIN_FILENO);
  const int before = ipltest::open_fd_count();
  rlimit saved;
  getrlimit(RLIMIT_NOFILE, &saved);
  if (inject_it) {
    sys::calls.dup_cloexec = [](int, int) { return fail_with(EMFILE); };
  } else {
    rlimit low = saved;
    low.rlim_cur = 3;
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) return 4;
  }
  int dummy = 0;
  ipl_lock *lock = reinterpret_cast<ipl_lock *>(&dummy);
  int os_error = 0;
  const int status = ipl_open_ex(path.c_str(), 0, &lock, &os_error);
  sys::calls = sys::real_calls();
  setrlimit(RLIMIT_NOFILE, &saved);
  const bool fd0_free = fcntl(STDIN_FILENO, F_GETFD) == -1 && errno == EBADF;
  const int after = ipltest::open_fd_count();
  std::ostringstream first;
  first << "first " << status << " " << os_error << " " << (lock ? "set" : "null") << " "
        << (fd0_free ? "free" : "taken") << " " << before << " " << after;
  ipltest::helper_say(first.str());
  if (status == IPL_OK && lock != reinterpret_cast<ipl_lock *>(&dummy)) ipl_close(lock);

  ipl_lock *healthy = nullptr;
  const int reopened = ipl_open(path.c_str(), 0, &healthy);
  const int locked = reopened == IPL_OK ? ipl_acquire(healthy, 0) : reopened;
  const bool fd0_still_free = fcntl(STDIN_FILENO, F_GETFD) == -1 && errno == EBADF;
  std::ostringstream then;
  then << "then " << reopened << " " << locked << " " << (fd0_still_free ? "free" : "taken");
  ipltest::helper_say(then.str());
  ipl_close(healthy);
  return 0;
}

class FaultOpenStdio : public FaultTest, public ::testing::WithParamInterface<const char *> {};

// Catches: the descriptor that landed on 0 left open (a leak, and the next
// "stdin" read would read the lock file) when it cannot be moved up, a
// vague status (EINVAL: F_DUPFD's answer to "no descriptor >= 3 under the
// limit" is not what the user needs to hear), or *out left set.
TEST_P(FaultOpenStdio, NoDescriptorAboveStdio) {
  auto child = ipltest::child_process::helper("fault_no_descriptor_above_stdio",
                                              {path_, GetParam()});
  std::string line;
  ASSERT_TRUE(child.read_line(&line)) << "helper said nothing";
  ASSERT_EQ(line.rfind("types ", 0), 0u) << line;
  ASSERT_TRUE(child.read_line(&line)) << "helper said nothing";
  std::istringstream first(line);
  std::string word, out, fd0;
  int status = 0, os_error = 0, before = 0, after = 0;
  first >> word >> status >> os_error >> out >> fd0 >> before >> after;
  ASSERT_EQ(word, "first") << line;
  EXPECT_EQ(status, IPL_E_OS) << line;
  EXPECT_EQ(os_error, EMFILE) << line << " (" << errno_name(os_error) << ")";
  EXPECT_EQ(out, "null") << line;
  EXPECT_EQ(fd0, "free") << "the descriptor on 0 leaked: " << line;
  EXPECT_EQ(after, before) << line;
  ASSERT_TRUE(child.read_line(&line)) << "helper said nothing";
  EXPECT_EQ(line, "then 0 0 free");
  EXPECT_EQ(ipltest::describe_status(child.wait()), 0);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultOpenStdio, ::testing::Values("inject", "rlimit"),
                         [](const auto &info) { return std::string(info.param); });

// A real EMFILE: RLIMIT_NOFILE set so that every descriptor is taken. Says
// "types ...", then "full <status> <os_error> <out:null|set>", then with one descriptor free
// "one <status> <lock status>".
IPL_TEST_HELPER(fault_descriptor_limit) {
  const std::string &path = args.at(0);
  meet_dynamic_types(path);
  rlimit saved;
  getrlimit(RLIMIT_NOFILE, &saved);
  rlimit low = saved;
  low.rlim_cur = 16;
  if (setrlimit(RLIMIT_NOFILE, &low) != 0) return 4;
  std::vector<int> fillers;
  for (;;) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    fillers.push_back(fd);
  }
  if (errno != EMFILE || fillers.empty()) return 5;
  int dummy = 0;
  ipl_lock *lock = reinterpret_cast<ipl_lock *>(&dummy);
  int os_error = 0;
  const int status = ipl_open_ex(path.c_str(), 0, &lock, &os_error);
  std::ostringstream full;
  full << "full " << status << " " << os_error << " " << (lock ? "set" : "null");
  // One free descriptor (the highest, so the lock's lands above 2) is enough.
  ::close(fillers.back());
  fillers.pop_back();
  ipl_lock *fits = nullptr;
  const int opened = ipl_open(path.c_str(), 0, &fits);
  const int locked = opened == IPL_OK ? ipl_acquire(fits, 0) : opened;
  std::ostringstream one;
  one << "one " << opened << " " << locked;
  ipl_close(fits);
  for (int fd : fillers) ::close(fd);
  setrlimit(RLIMIT_NOFILE, &saved);
  ipltest::helper_say(full.str());
  ipltest::helper_say(one.str());
  return 0;
}

// Catches: a real EMFILE reported as anything but IPL_E_OS with EMFILE, and
// an open that needs more than the one descriptor it keeps.
TEST_F(FaultOpen, RealDescriptorLimit) {
  auto child = ipltest::child_process::helper("fault_descriptor_limit", {path_});
  std::string line;
  ASSERT_TRUE(child.read_line(&line));
  ASSERT_EQ(line.rfind("types ", 0), 0u) << line;
  ASSERT_TRUE(child.read_line(&line));
  EXPECT_EQ(line, "full " + std::to_string(IPL_E_OS) + " " + std::to_string(EMFILE) + " null");
  ASSERT_TRUE(child.read_line(&line));
  EXPECT_EQ(line, "one 0 0");
  EXPECT_EQ(ipltest::describe_status(child.wait()), 0);
}

// ================================================================================
// Taking the lock
// ================================================================================

// ---- EINTR -----------------------------------------------------------------------

struct mode_timeout_param {
  agent_mode mode;
  int64_t timeout_ms;
};

std::string mode_timeout_name(const mode_timeout_param &p) {
  const std::string t = p.timeout_ms == IPL_WAIT_FOREVER ? "forever"
                        : p.timeout_ms == 0             ? "try"
                                                        : "timed";
  return std::string(ipltest::mode_name(p.mode)) + "_" + t;
}

class FaultLockTryEintr : public FaultTest,
                          public ::testing::WithParamInterface<mode_timeout_param> {};

// Catches: an interrupted non-blocking fcntl() (the try, and the first try
// of a timed wait) reported as IPL_E_OS/EINTR or as "held elsewhere".
TEST_P(FaultLockTryEintr, IsRetried) {
  const mode_timeout_param p = GetParam();
  handle lock(path_);
  script(e_fcntl_lock, rule{EINTR, 0, 3});
  rules[e_fcntl_lock].cmd = kTryCmd;
  rules[e_fcntl_lock].type = kLockTypes;
  const timed_result r = timed_acquire(lock, p.timeout_ms, p.mode);
  ASSERT_EQ(r.status, IPL_OK) << ipltest::status_text(r.status) << " " << errno_name(ipl_os_error(lock));
  EXPECT_EQ(tallies[e_fcntl_lock].failed.load(), 3);
  expect_held_then_release(path_, lock, p.mode);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultLockTryEintr,
                         ::testing::Values(mode_timeout_param{agent_mode::exclusive, 0},
                                           mode_timeout_param{agent_mode::shared, 0},
                                           mode_timeout_param{agent_mode::exclusive, 5000},
                                           mode_timeout_param{agent_mode::shared, 5000}),
                         [](const auto &info) { return mode_timeout_name(info.param); });

class FaultLockWaitEintr : public FaultTest,
                           public ::testing::WithParamInterface<mode_timeout_param> {};

// Catches: a blocking wait (forever, or timed in the kernel) that ends on
// EINTR (IPL_E_OS/EINTR, or IPL_E_TIMEOUT before the deadline) instead of
// re-entering the kernel wait and getting the lock once it is released.
TEST_P(FaultLockWaitEintr, IsReentered) {
  const mode_timeout_param p = GetParam();
  if (!kernel_waits_available(path_)) {
    GTEST_SKIP() << "waits poll here (no wait signal, or not a local file system)";
  }
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  script(e_fcntl_lock, rule{EINTR, 0, 3});
  rules[e_fcntl_lock].delay = 10ms;
  rules[e_fcntl_lock].cmd = kWaitCmd;
  rules[e_fcntl_lock].type = kLockTypes;
  timed_result r;
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    r = timed_acquire(lock, p.timeout_ms, p.mode);
    returned = true;
  });
  // The fourth wait call is the real one: the holder lets go.
  const bool reentered = reaches(tallies[e_fcntl_lock].matched, 4, returned);
  EXPECT_TRUE(holder.release());
  const bool ended = returns_in_time(returned, lock);
  waiter.join();
  ASSERT_TRUE(reentered) << "the wait was not entered a fourth time";
  ASSERT_TRUE(ended) << "the wait did not end when the lock was released";
  ASSERT_EQ(r.status, IPL_OK) << ipltest::status_text(r.status) << " " << errno_name(ipl_os_error(lock));
  EXPECT_EQ(tallies[e_fcntl_lock].failed.load(), 3);
  expect_held_then_release(path_, lock, p.mode);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultLockWaitEintr,
                         ::testing::Values(mode_timeout_param{agent_mode::exclusive, IPL_WAIT_FOREVER},
                                           mode_timeout_param{agent_mode::shared, IPL_WAIT_FOREVER},
                                           mode_timeout_param{agent_mode::exclusive, 10000},
                                           mode_timeout_param{agent_mode::shared, 10000}),
                         [](const auto &info) { return mode_timeout_name(info.param); });

// Catches: a timed kernel wait that takes an early EINTR (a signal of the
// application's) for its deadline and times out early.
TEST_F(FaultLock, EintrDoesNotEndATimedWaitEarly) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  script(e_fcntl_lock, rule{EINTR, 0, 5});
  rules[e_fcntl_lock].delay = 20ms;
  rules[e_fcntl_lock].cmd = kWaitCmd;
  const timed_result r = timed_acquire(lock, 400);
  EXPECT_EQ(r.status, IPL_E_TIMEOUT) << ipltest::status_text(r.status);
  EXPECT_GE(r.took, 400ms) << "timed out early";
  EXPECT_LT(r.took, 1400ms) << "timed out far too late";
  EXPECT_EQ(tallies[e_fcntl_lock].failed.load(), 5);
  EXPECT_GE(tallies[e_fcntl_lock].matched.load(), 6) << "the real wait was never entered";
  EXPECT_EQ(ipl_release(lock), IPL_E_NOT_HELD);
}

// ---- Real signals during a wait ---------------------------------------------------

// The application's own signal, handled without SA_RESTART: every delivery
// ends a blocking system call of the thread with EINTR.
std::atomic<int> app_signals{0};
void on_app_signal(int) { app_signals.fetch_add(1); }

// Sends SIGUSR1 to one thread every 2 ms while it lives.
class signal_pest {
 public:
  explicit signal_pest(pthread_t target) : target_(target) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_app_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, &saved_);
    app_signals = 0;
    thread_ = std::thread([this] {
      while (!stop_) {
        pthread_kill(target_, SIGUSR1);
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  // Stop before the target is joined (its id stays valid until then).
  void stop() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
    }
  }
  ~signal_pest() {
    stop();
    sigaction(SIGUSR1, &saved_, nullptr);
  }

 private:
  pthread_t target_;
  struct sigaction saved_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct signal_param {
  bool wait_signal;  // false: ipl_set_wait_signal(0), so the wait polls
  int64_t timeout_ms;
  const char *name;
};

class FaultLockSignals : public FaultTest, public ::testing::WithParamInterface<signal_param> {};

// Catches: a wait (kernel or polling, timed or forever) that an
// application's signal ends early: a timeout before the deadline, an
// IPL_E_OS/EINTR, or a forever wait that gives up.
TEST_P(FaultLockSignals, DoNotEndAWaitEarly) {
  const signal_param p = GetParam();
  if (p.wait_signal && !kernel_waits_available(path_)) {
    GTEST_SKIP() << "timed waits poll here";
  }
  if (!p.wait_signal) {
    ASSERT_EQ(ipl_set_wait_signal(0), IPL_OK);
    blocking_waits_forbidden = true;
  }
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  timed_result r;
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    r = timed_acquire(lock, p.timeout_ms);
    returned = true;
  });
  signal_pest pest(waiter.native_handle());
  bool released = false;
  if (p.timeout_ms == IPL_WAIT_FOREVER) {
    // Many signals reach the waiting thread; then the holder lets go.
    const bool pestered = reaches(app_signals, 50, returned);
    EXPECT_TRUE(pestered) << "the wait ended early";
    released = holder.release();
  }
  const bool ended = returns_in_time(returned, lock);
  pest.stop();
  waiter.join();
  ASSERT_TRUE(ended) << "the wait did not end (ipl_cancel ended it)";
  EXPECT_GE(app_signals.load(), 10) << "the signals did not reach the waiting thread";
  if (p.timeout_ms == IPL_WAIT_FOREVER) {
    EXPECT_TRUE(released);
    ASSERT_EQ(r.status, IPL_OK) << ipltest::status_text(r.status) << " "
                                << errno_name(ipl_os_error(lock));
    expect_held_then_release(path_, lock, agent_mode::exclusive);
  } else {
    EXPECT_EQ(r.status, IPL_E_TIMEOUT) << ipltest::status_text(r.status) << " "
                                       << errno_name(ipl_os_error(lock));
    EXPECT_GE(r.took, std::chrono::milliseconds(p.timeout_ms)) << "timed out early";
    EXPECT_LT(r.took, std::chrono::milliseconds(p.timeout_ms + 1000)) << "far too late";
  }
  if (!p.wait_signal) {
    EXPECT_EQ(blocking_waits.load(), 0) << "blocked in the kernel";
  }
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultLockSignals,
                         ::testing::Values(signal_param{true, 300, "kernel_timed"},
                                           signal_param{true, IPL_WAIT_FOREVER, "kernel_forever"},
                                           signal_param{false, 300, "polling_timed"},
                                           signal_param{false, IPL_WAIT_FOREVER,
                                                        "polling_forever"}),
                         [](const auto &info) { return std::string(info.param.name); });

// ---- EIO, ENOLCK, ENOMEM, EDEADLK on lock ------------------------------------------------

enum class wait_path { try_once, timed_kernel, timed_polling, forever_kernel, forever_polling };

struct lock_failure_param {
  int err;
  int status;
  wait_path path;
  agent_mode mode;
};

std::string lock_failure_name(const lock_failure_param &p) {
  const char *path = p.path == wait_path::try_once         ? "try"
                     : p.path == wait_path::timed_kernel   ? "timed_kernel"
                     : p.path == wait_path::timed_polling  ? "timed_polling"
                     : p.path == wait_path::forever_kernel ? "forever_kernel"
                                                           : "forever_polling";
  return errno_name(p.err) + "_" + path + "_" + ipltest::mode_name(p.mode);
}

class FaultLockFailure : public FaultTest,
                         public ::testing::WithParamInterface<lock_failure_param> {};

// Catches: a failed lock call mapped to the wrong status or errno, turned
// into a timeout or into more waiting (the timed cases must fail at once,
// not at the deadline), or leaving the handle (or the classic inode table)
// believing it holds the lock, so that release works or a later acquire
// fails.
TEST_P(FaultLockFailure, IsReportedAndNothingIsHeld) {
  const lock_failure_param p = GetParam();
  const bool kernel = p.path == wait_path::timed_kernel || p.path == wait_path::forever_kernel;
  const bool polling = p.path == wait_path::timed_polling || p.path == wait_path::forever_polling;
  if (kernel && !kernel_waits_available(path_)) {
    GTEST_SKIP() << "waits poll here";
  }
  if (polling) {
    ASSERT_EQ(ipl_set_wait_signal(0), IPL_OK);
    blocking_waits_forbidden = true;
  }
  // A wait begins with one try: the lock must be held elsewhere to get
  // past it.
  std::unique_ptr<held_elsewhere> holder;
  if (p.path != wait_path::try_once) {
    holder = std::make_unique<held_elsewhere>(path_);
    ASSERT_TRUE(holder->ok);
  }
  handle lock(path_);
  rule &r = script(e_fcntl_lock, rule{p.err, 0, kAlways});
  r.type = kLockTypes;
  if (kernel) {
    r.cmd = kWaitCmd;
  } else {
    r.cmd = kTryCmd;
    if (polling) r.skip = 1;  // the first try sees the holder
  }
  const int64_t timeout = p.path == wait_path::try_once                                 ? 0
                          : p.path == wait_path::timed_kernel ||
                                    p.path == wait_path::timed_polling ? 2000
                                                                       : IPL_WAIT_FOREVER;
  timed_result got;
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    got = timed_acquire(lock, timeout, p.mode);
    returned = true;
  });
  // A failure ends the wait at once (a broken forever wait is canceled).
  const bool ended = returns_in_time(returned, lock, 3s);
  waiter.join();
  ASSERT_TRUE(ended) << "the wait went on after the failure (ipl_cancel ended it)";
  EXPECT_EQ(got.status, p.status) << ipltest::status_text(got.status);
  EXPECT_EQ(ipl_os_error(lock), p.err) << errno_name(ipl_os_error(lock));
  EXPECT_LT(got.took, 1000ms) << "the failure was not reported at once";
  EXPECT_GE(tallies[e_fcntl_lock].failed.load(), 1);
  // The handle holds nothing, and nothing is left behind.
  EXPECT_EQ(ipltest::release_in_mode(lock, p.mode), IPL_E_NOT_HELD);
  if (holder) {
    EXPECT_TRUE(holder->release());
  }
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "the failed acquire left a lock behind";
  // The fault clears: the same handle gets the lock.
  r = rule{};
  ASSERT_EQ(ipltest::acquire_in_mode(lock, p.mode, 0), IPL_OK);
  expect_held_then_release(path_, lock, p.mode);
}

std::vector<lock_failure_param> lock_failure_params() {
  std::vector<lock_failure_param> params;
  const std::pair<int, int> errors[] = {
      {EIO, IPL_E_OS},
      {ENOLCK, IPL_E_UNSUPPORTED},  // ipl.h: "the file system does not do locks"
      {ENOMEM, IPL_E_NO_MEMORY},
      {EDEADLK, IPL_E_WOULD_DEADLOCK}};
  for (const auto &e : errors) {
    for (wait_path path : {wait_path::try_once, wait_path::timed_kernel, wait_path::timed_polling,
                           wait_path::forever_kernel, wait_path::forever_polling}) {
      for (agent_mode mode : {agent_mode::exclusive, agent_mode::shared}) {
        params.push_back(lock_failure_param{e.first, e.second, path, mode});
      }
    }
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultLockFailure, ::testing::ValuesIn(lock_failure_params()),
                         [](const auto &info) { return lock_failure_name(info.param); });

// Catches: a failed identity check after the grant (stat() of the path
// fails) reported wrongly, or leaving the granted lock behind.
TEST_F(FaultLock, IdentityCheckFailureLeavesNothingHeld) {
  handle lock(path_);
  script(e_stat, rule{EIO, 0, 1});
  EXPECT_EQ(ipl_acquire(lock, 0), IPL_E_OS);
  EXPECT_EQ(ipl_os_error(lock), EIO);
  EXPECT_EQ(tallies[e_stat].failed.load(), 1);
  EXPECT_EQ(ipl_release(lock), IPL_E_NOT_HELD);
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "the granted lock was left behind";
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// Catches: the lock granted before a failed identity check left held by
// an idle handle when unlocking it fails too (closing the descriptor is
// what must let go then), until the handle's next acquire or close.
TEST_F(FaultLock, IdentityCheckAndUnlockFailureLeavesNothingHeld) {
  handle lock(path_);
  script(e_stat, rule{EIO, 0, 1});
  rule &unlock = script(e_fcntl_lock, rule{EIO, 0, kAlways});
  unlock.cmd = kTryCmd;
  unlock.type = F_UNLCK;
  EXPECT_EQ(ipl_acquire(lock, 0), IPL_E_OS);
  EXPECT_EQ(ipl_os_error(lock), EIO);
  EXPECT_EQ(ipl_release(lock), IPL_E_NOT_HELD);
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "the granted lock was left behind";
  script(e_fcntl_lock, rule{});
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// ---- Downgrade, upgrade, query, check, remove --------------------------------------

// Catches: a lock call outside acquire and release (the downgrade's two
// steps, the upgrade byte and the upgrade's wait, ipl_query's F_GETLK,
// ipl_check, ipl_remove's unlock) that reports EINTR (IPL_E_OS) instead of
// retrying it. Every other lock call is interrupted, so each call site
// sees one EINTR before its call goes through.
TEST_F(FaultLock, EintrAtEveryOtherLockCallIsRetried) {
  handle lock(path_);
  handle other(path_);
  script(e_fcntl_lock, rule{EINTR, 0, kAlways, true});
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  int state = -1;
  int64_t pid = 0;
  EXPECT_EQ(ipl_query(other, &state, &pid), IPL_OK) << errno_name(ipl_os_error(other));
  EXPECT_EQ(state, IPL_STATE_EXCLUSIVE);
  EXPECT_EQ(pid, int64_t(getpid()));
  EXPECT_EQ(ipl_check(lock), IPL_OK) << errno_name(ipl_os_error(lock));
  ASSERT_EQ(ipl_downgrade(lock), IPL_OK) << errno_name(ipl_os_error(lock));
  EXPECT_EQ(other_process_try(path_, agent_mode::shared), IPL_OK) << "not shared after downgrade";
  EXPECT_EQ(other_process_try(path_, agent_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_check(lock), IPL_OK) << errno_name(ipl_os_error(lock));
  ASSERT_EQ(ipl_upgrade(lock, 5000), IPL_OK) << errno_name(ipl_os_error(lock));
  EXPECT_EQ(other_process_try(path_, agent_mode::shared), IPL_E_TIMEOUT) << "not exclusive";
  ASSERT_EQ(ipl_remove(lock), IPL_OK) << errno_name(ipl_os_error(lock));
  struct stat st;
  EXPECT_NE(::stat(path_.c_str(), &st), 0) << "the lock file was not removed";
  ASSERT_EQ(ipl_acquire_read(lock, 5000), IPL_OK) << errno_name(ipl_os_error(lock));
  EXPECT_EQ(ipl_release_read(lock), IPL_OK);
  const int failed = tallies[e_fcntl_lock].failed.load();
  EXPECT_GE(failed, 10);
  EXPECT_EQ(failed * 2, tallies[e_fcntl_lock].matched.load())
      << "an interrupted lock call was not retried";
  script(e_fcntl_lock, rule{});
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "a lock was left behind";
}

struct step_failure_param {
  int type;  // the l_type of the failing F_SETLK / F_OFD_SETLK
  int err;
  int status;
  const char *name;
};

class FaultDowngradeFailure : public FaultTest,
                              public ::testing::WithParamInterface<step_failure_param> {};

// A downgrade is two lock calls (the upgrade byte unlocked, then the
// range made shared). Catches: a failed step reported wrongly, or leaving
// the lock shared in effect (a reader gets in) while the handle holds it
// exclusive, or the handle's state lost, so that a retry cannot work.
TEST_P(FaultDowngradeFailure, KeepsTheLockExclusive) {
  const step_failure_param p = GetParam();
  handle lock(path_);
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  rule &r = script(e_fcntl_lock, rule{p.err, 0, kAlways});
  r.cmd = kTryCmd;
  r.type = p.type;
  const int status = ipl_downgrade(lock);
  EXPECT_EQ(status, p.status) << ipltest::status_text(status);
  EXPECT_EQ(ipl_os_error(lock), p.err) << errno_name(ipl_os_error(lock));
  EXPECT_GE(tallies[e_fcntl_lock].failed.load(), 1);
  EXPECT_EQ(other_process_try(path_, agent_mode::shared), IPL_E_TIMEOUT)
      << "a reader got in: the failed downgrade left the lock shared";
  EXPECT_EQ(ipl_release_read(lock), IPL_E_NOT_HELD) << "the handle thinks it holds it shared";
  script(e_fcntl_lock, rule{});
  ASSERT_EQ(ipl_downgrade(lock), IPL_OK) << "the retried downgrade failed";
  EXPECT_EQ(other_process_try(path_, agent_mode::shared), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::shared);
}

INSTANTIATE_TEST_SUITE_P(
    Fault, FaultDowngradeFailure,
    ::testing::Values(step_failure_param{F_UNLCK, EIO, IPL_E_OS, "unlock_EIO"},
                      step_failure_param{F_RDLCK, EIO, IPL_E_OS, "shared_EIO"},
                      step_failure_param{F_RDLCK, ENOLCK, IPL_E_UNSUPPORTED, "shared_ENOLCK"}),
    [](const auto &info) { return std::string(info.param.name); });

// Catches: a failed upgrade that drops the shared lock (ipl.h: kept on
// every failure), or keeps the upgrade byte (every later upgrade then says
// IPL_E_WOULD_DEADLOCK), or is reported wrongly.
TEST_F(FaultLock, UpgradeFailureKeepsTheLockShared) {
  handle lock(path_);
  ASSERT_EQ(ipl_acquire_read(lock, 0), IPL_OK);
  // The first exclusive try takes the upgrade byte; the second, on the
  // shared range, fails.
  rule &r = script(e_fcntl_lock, rule{EIO, 1, 1});
  r.cmd = kTryCmd;
  r.type = F_WRLCK;
  EXPECT_EQ(ipl_upgrade(lock, 0), IPL_E_OS);
  EXPECT_EQ(ipl_os_error(lock), EIO) << errno_name(ipl_os_error(lock));
  EXPECT_EQ(tallies[e_fcntl_lock].failed.load(), 1);
  EXPECT_EQ(other_process_try(path_, agent_mode::exclusive), IPL_E_TIMEOUT)
      << "the failed upgrade dropped the shared lock";
  EXPECT_EQ(other_process_try(path_, agent_mode::shared), IPL_OK)
      << "the failed upgrade left the lock exclusive";
  EXPECT_EQ(ipl_release(lock), IPL_E_NOT_HELD) << "the handle thinks it holds it exclusive";
  ASSERT_EQ(ipl_upgrade(lock, 0), IPL_OK) << "the upgrade byte was kept";
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

// ================================================================================
// Releasing the lock
// ================================================================================

class FaultUnlockEintr : public FaultTest, public ::testing::WithParamInterface<agent_mode> {};

// Catches: an interrupted F_UNLCK not retried (release reports
// IPL_E_OS/EINTR and the lock stays held).
TEST_P(FaultUnlockEintr, IsRetried) {
  const agent_mode mode = GetParam();
  handle lock(path_);
  ASSERT_EQ(ipltest::acquire_in_mode(lock, mode, 0), IPL_OK);
  script(e_fcntl_lock, rule{EINTR, 0, 3});
  rules[e_fcntl_lock].cmd = kTryCmd;
  rules[e_fcntl_lock].type = F_UNLCK;
  EXPECT_EQ(ipltest::release_in_mode(lock, mode), IPL_OK);
  EXPECT_EQ(tallies[e_fcntl_lock].failed.load(), 3);
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "the lock was not released";
  EXPECT_EQ(ipltest::release_in_mode(lock, mode), IPL_E_NOT_HELD);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultUnlockEintr,
                         ::testing::Values(agent_mode::exclusive, agent_mode::shared),
                         [](const auto &info) { return std::string(ipltest::mode_name(info.param)); });

struct unlock_failure_param {
  int err;
  int status;
  agent_mode mode;
};

class FaultUnlockFailure : public FaultTest,
                           public ::testing::WithParamInterface<unlock_failure_param> {
 protected:
  void hold_then_fail_release(handle &lock) {
    const unlock_failure_param p = GetParam();
    ASSERT_EQ(ipltest::acquire_in_mode(lock, p.mode, 0), IPL_OK);
    script(e_fcntl_lock, rule{p.err, 0, kAlways});
    rules[e_fcntl_lock].cmd = kTryCmd;
    rules[e_fcntl_lock].type = F_UNLCK;
    EXPECT_EQ(ipltest::release_in_mode(lock, p.mode), p.status);
    EXPECT_EQ(ipl_os_error(lock), p.err) << errno_name(ipl_os_error(lock));
    EXPECT_GE(tallies[e_fcntl_lock].failed.load(), 1);
  }
};

// Catches: a failed unlock that forgets the lock (the handle, or the
// classic backend's inode table, marks it free), so that the retried
// release is IPL_E_NOT_HELD, or says IPL_OK without unlocking (the lock is
// left behind), or the handle's state is lost, or the inode table is left
// in a state where this process can never lock the file again.
TEST_P(FaultUnlockFailure, KeepsTheLockForARetry) {
  const unlock_failure_param p = GetParam();
  handle lock(path_);
  hold_then_fail_release(lock);
  // Still held, by this handle.
  EXPECT_EQ(other_process_try(path_), IPL_E_TIMEOUT) << "the failed unlock dropped the lock";
  EXPECT_EQ(ipltest::acquire_in_mode(lock, p.mode, 0), IPL_E_WOULD_DEADLOCK)
      << "the handle forgot what it holds";
  // The fault clears: the retried release works, and frees the lock.
  script(e_fcntl_lock, rule{});
  EXPECT_EQ(ipltest::release_in_mode(lock, p.mode), IPL_OK);
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "the retried release left the lock behind";
  EXPECT_EQ(ipltest::release_in_mode(lock, p.mode), IPL_E_NOT_HELD);
  handle second(path_);
  EXPECT_EQ(ipl_acquire(second, 0), IPL_OK) << "this process cannot lock the file any more";
  EXPECT_EQ(ipl_release(second), IPL_OK);
  EXPECT_EQ(ipltest::acquire_in_mode(lock, p.mode, 0), IPL_OK);
}

// Catches: a failed unlock after which another handle of this process may
// take the lock while the kernel lock is still held (the classic backend's
// inode table marking it free: the second handle's fcntl() then just
// converts the process's own lock), two holders at once.
TEST_P(FaultUnlockFailure, NoOtherHandleGetsItMeanwhile) {
  const unlock_failure_param p = GetParam();
  handle lock(path_);
  hold_then_fail_release(lock);
  handle second(path_);
  ASSERT_EQ(ipl_acquire(second, 0), IPL_E_TIMEOUT)
      << "another handle of this process got a lock that is still held";
  ASSERT_EQ(ipl_acquire(second, 100), IPL_E_TIMEOUT)
      << "another handle of this process got a lock that is still held";
  script(e_fcntl_lock, rule{});
  EXPECT_EQ(ipltest::release_in_mode(lock, p.mode), IPL_OK);
  EXPECT_EQ(ipl_acquire(second, 0), IPL_OK);
  expect_held_then_release(path_, second, agent_mode::exclusive);
}

// Catches: ipl_close that keeps (or parks) the descriptor, or keeps the
// lock in some other way, when its unlock fails: closing the descriptor is
// what must free it.
TEST_P(FaultUnlockFailure, CloseStillFreesTheLock) {
  handle lock(path_);
  hold_then_fail_release(lock);
  const int fds = ipltest::open_fd_count();
  lock.close();  // unlock still failing
  EXPECT_EQ(ipltest::open_fd_count(), fds - 1) << "the descriptor was not closed";
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "ipl_close left the lock behind";
  handle again(path_);
  EXPECT_EQ(ipl_acquire(again, 0), IPL_OK);
  script(e_fcntl_lock, rule{});
}

// Catches: as above, for a handle closed while it holds the lock (no
// release first) and unlock fails.
TEST_P(FaultUnlockFailure, CloseWithoutReleaseFreesTheLock) {
  const unlock_failure_param p = GetParam();
  handle lock(path_);
  ASSERT_EQ(ipltest::acquire_in_mode(lock, p.mode, 0), IPL_OK);
  script(e_fcntl_lock, rule{p.err, 0, kAlways});
  rules[e_fcntl_lock].cmd = kTryCmd;
  rules[e_fcntl_lock].type = F_UNLCK;
  const int fds = ipltest::open_fd_count();
  lock.close();
  EXPECT_EQ(ipltest::open_fd_count(), fds - 1) << "the descriptor was not closed";
  EXPECT_EQ(other_process_try(path_), IPL_OK) << "ipl_close left the lock behind";
  handle again(path_);
  EXPECT_EQ(ipl_acquire(again, 0), IPL_OK);
  script(e_fcntl_lock, rule{});
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultUnlockFailure,
                         ::testing::Values(
                             unlock_failure_param{EIO, IPL_E_OS, agent_mode::exclusive},
                             unlock_failure_param{EIO, IPL_E_OS, agent_mode::shared},
                             unlock_failure_param{ENOLCK, IPL_E_UNSUPPORTED, agent_mode::exclusive},
                             unlock_failure_param{ENOLCK, IPL_E_UNSUPPORTED, agent_mode::shared},
                             unlock_failure_param{ENOMEM, IPL_E_NO_MEMORY, agent_mode::exclusive},
                             unlock_failure_param{ENOMEM, IPL_E_NO_MEMORY, agent_mode::shared}),
                         [](const auto &info) {
                           return errno_name(info.param.err) + "_" +
                                  ipltest::mode_name(info.param.mode);
                         });

class FaultUnlockLost : public FaultTest, public ::testing::WithParamInterface<agent_mode> {};

// An unlock that says the lock is gone (ESTALE: the server forgot the
// file; here the kernel did unlock) is IPL_E_LOST: the handle holds
// nothing, and its next acquire opens the path anew. Catches: a LOST
// release that keeps the handle's state (a second release not
// IPL_E_NOT_HELD), a classic inode table that still counts the lock (so
// another handle of this process can never get it), or a handle that
// cannot lock again afterwards.
TEST_P(FaultUnlockLost, HandleHoldsNothingAndLocksAgain) {
  const agent_mode mode = GetParam();
  handle lock(path_);
  ASSERT_EQ(ipltest::acquire_in_mode(lock, mode, 0), IPL_OK);
  rule &r = script(e_fcntl_lock, rule{ESTALE, 0, 1});
  r.cmd = kTryCmd;
  r.type = F_UNLCK;
  r.after_real = true;
  EXPECT_EQ(ipltest::release_in_mode(lock, mode), IPL_E_LOST);
  EXPECT_EQ(ipl_os_error(lock), ESTALE) << errno_name(ipl_os_error(lock));
  EXPECT_EQ(ipltest::release_in_mode(lock, mode), IPL_E_NOT_HELD);
  {
    handle second(path_);
    EXPECT_EQ(ipl_acquire(second, 0), IPL_OK) << "the lost lock is still counted as held";
  }
  ASSERT_EQ(ipltest::acquire_in_mode(lock, mode, 0), IPL_OK);
  expect_held_then_release(path_, lock, mode);
  ASSERT_EQ(ipl_acquire(lock, 0), IPL_OK);
  expect_held_then_release(path_, lock, agent_mode::exclusive);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultUnlockLost,
                         ::testing::Values(agent_mode::exclusive, agent_mode::shared),
                         [](const auto &info) { return std::string(ipltest::mode_name(info.param)); });

// ================================================================================
// The wait signal (linux_wait_signal.cpp)
// ================================================================================

// A timed wait that must poll: it times out on time, never blocks in the
// kernel, and tries again and again.
void expect_polled_to_deadline(const timed_result &r, int64_t timeout_ms) {
  EXPECT_EQ(r.status, IPL_E_TIMEOUT) << ipltest::status_text(r.status);
  EXPECT_EQ(blocking_waits.load(), 0) << "blocked in the kernel";
  EXPECT_GE(r.took, std::chrono::milliseconds(timeout_ms)) << "timed out early";
  EXPECT_LT(r.took, std::chrono::milliseconds(timeout_ms + 1000)) << "timed out far too late";
  EXPECT_GE(lock_tries.load(), 3) << "did not poll";
}

// A forever wait that must poll (so that ipl_cancel can end it): it never
// blocks in the kernel, and gets the lock once the holder lets go.
void expect_forever_polls_until_released(ipl_lock *lock, held_elsewhere &holder) {
  const int tries_before = lock_tries.load();
  timed_result r;
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    r = timed_acquire(lock, IPL_WAIT_FOREVER);
    returned = true;
  });
  const bool polling = reaches(lock_tries, tries_before + 3, returned);
  EXPECT_TRUE(holder.release());
  const bool ended = returns_in_time(returned, lock);
  waiter.join();
  EXPECT_TRUE(polling) << "did not poll";
  ASSERT_TRUE(ended) << "the wait did not end when the lock was released";
  ASSERT_EQ(r.status, IPL_OK) << ipltest::status_text(r.status) << " "
                              << errno_name(ipl_os_error(lock));
  EXPECT_EQ(blocking_waits.load(), 0) << "blocked in the kernel";
  EXPECT_EQ(ipl_release(lock), IPL_OK);
}

// The control for the tests below: without faults, a timed wait in a
// fresh thread makes its timer, arms it, and sleeps in the kernel after one
// try. Catches: a fake table that is not in use, or a library that polls
// anyway (every "it polls" check below would then prove nothing).
TEST_F(FaultSignal, ControlKernelWaitUsesTheTimer) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  const timed_result r = timed_acquire_in_new_thread(lock, 200);
  EXPECT_EQ(r.status, IPL_E_TIMEOUT);
  EXPECT_GE(r.took, 200ms);
  EXPECT_EQ(tallies[e_timer_create].calls.load(), 1);
  EXPECT_EQ(tallies[e_timer_settime].matched.load(), 1);  // armed once
  EXPECT_EQ(tallies[e_timer_delete].calls.load(), 1);     // at the thread's exit
  EXPECT_EQ(lock_tries.load(), 1);
  EXPECT_GE(blocking_waits.load(), 1);
}

// Catches: a wait that relies on a timer it could not make (EAGAIN: the
// user's real-time signal queue is full) and then blocks past its deadline
// (or, forever, where ipl_cancel cannot end it), or fails; also a thread
// that, once refused, never tries to make its timer again.
TEST_F(FaultSignal, TimerCreateFailsSoTheWaitPolls) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  script(e_timer_create, rule{EAGAIN, 0, kAlways});
  blocking_waits_forbidden = true;
  timed_result first, second;
  int creates = -1, armings = -1, blocking = -1, tries = -1;
  std::thread waiter([&] {
    first = timed_acquire(lock, 200);
    creates = tallies[e_timer_create].failed.load();
    armings = tallies[e_timer_settime].calls.load();
    blocking = blocking_waits.load();
    tries = lock_tries.load();
    // The queue drains: the next wait of this thread makes its timer.
    script(e_timer_create, rule{});
    blocking_waits_forbidden = false;
    lock_tries = 0;
    blocking_waits = 0;
    second = timed_acquire(lock, 100);
  });
  waiter.join();
  EXPECT_EQ(first.status, IPL_E_TIMEOUT) << ipltest::status_text(first.status);
  EXPECT_GE(first.took, 200ms) << "timed out early";
  EXPECT_LT(first.took, 1200ms) << "timed out far too late";
  EXPECT_EQ(creates, 1);
  EXPECT_EQ(armings, 0) << "armed a timer that does not exist";
  EXPECT_EQ(blocking, 0) << "blocked in the kernel without a timer";
  EXPECT_GE(tries, 3) << "did not poll";
  EXPECT_EQ(second.status, IPL_E_TIMEOUT);
  EXPECT_GE(second.took, 100ms);
  EXPECT_EQ(tallies[e_timer_create].calls.load(), 1) << "did not try to make the timer again";
  EXPECT_EQ(lock_tries.load(), 1) << "polled although the timer works";
  EXPECT_GE(blocking_waits.load(), 1) << "did not wait in the kernel";
  // A forever wait without a timer polls too.
  script(e_timer_create, rule{EAGAIN, 0, kAlways});
  blocking_waits_forbidden = true;
  lock_tries = 0;
  blocking_waits = 0;
  expect_forever_polls_until_released(lock, holder);
}

// Catches: a timed wait that blocks in the kernel although its timer could
// not be armed (it would never be woken at the deadline).
TEST_F(FaultSignal, TimerSettimeFailsSoTheWaitPolls) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  script(e_timer_settime, rule{EINVAL, 0, kAlways});
  blocking_waits_forbidden = true;
  const timed_result r = timed_acquire_in_new_thread(lock, 200);
  expect_polled_to_deadline(r, 200);
  EXPECT_EQ(tallies[e_timer_settime].failed.load(), 1);
}

// Catches: a wait that uses a signal the application has taken over (its
// handler would run, or the kernel wait would never be interrupted), or
// that installs libipl's handler over the application's.
TEST_F(FaultSignal, ForeignHandlerSoTheWaitPolls) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  foreign_signal = ipl_wait_signal();
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  sys::calls.sigaction = sigaction_foreign_handler;
  blocking_waits_forbidden = true;
  const timed_result r = timed_acquire_in_new_thread(lock, 200);
  expect_polled_to_deadline(r, 200);
  EXPECT_EQ(tallies[e_timer_create].calls.load(), 0);
  EXPECT_EQ(tallies[e_timer_settime].calls.load(), 0);
  EXPECT_EQ(ipl_wait_signal(), 0) << "the signal was not given up";
  expect_forever_polls_until_released(lock, holder);
  EXPECT_EQ(tallies[e_sigaction].failed.load(), 0) << "tried to replace the application's handler";
}

// Catches: a wait that cannot tell whether its signal is blocked
// (pthread_sigmask fails) and relies on it anyway.
TEST_F(FaultSignal, SigmaskUnknownSoTheWaitPolls) {
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  handle lock(path_);
  script(e_pthread_sigmask, rule{EINVAL, 0, kAlways});
  blocking_waits_forbidden = true;
  const timed_result r = timed_acquire_in_new_thread(lock, 200);
  expect_polled_to_deadline(r, 200);
  EXPECT_GE(tallies[e_pthread_sigmask].failed.load(), 1);
  EXPECT_EQ(tallies[e_timer_settime].calls.load(), 0);
  expect_forever_polls_until_released(lock, holder);
}

// fstatfs() says FUSE (0x65735546) or NFS (0x6969), or fails (EIO).
struct fs_param {
  long type;
  int err;
  const char *name;
};

class FaultSignalFileSystem : public FaultTest, public ::testing::WithParamInterface<fs_param> {};

// Catches: a wait (timed or forever) that blocks in the kernel on a file
// system where a signal may not end the lock call (it could wait past its
// deadline, e.g. uninterruptibly on FUSE, and ipl_cancel could not end
// it), or where the file system is unknown.
TEST_P(FaultSignalFileSystem, WaitsPoll) {
  const fs_param p = GetParam();
  if (!kernel_waits_available(path_)) GTEST_SKIP() << "timed waits poll here";
  held_elsewhere holder(path_);
  ASSERT_TRUE(holder.ok);
  // The file system is asked about when the handle opens the file.
  script(e_fstatfs, p.err ? rule{p.err, 0, kAlways} : rule{});
  if (!p.err) {
    reported_fs_type = p.type;
    sys::calls.fstatfs = fstatfs_reports_type;
  }
  handle lock(path_);
  ASSERT_NE(lock.lock, nullptr);
  EXPECT_GE(tallies[e_fstatfs].calls.load(), 1) << "fstatfs() not asked at open";
  blocking_waits_forbidden = true;
  const timed_result r = timed_acquire_in_new_thread(lock, 200);
  expect_polled_to_deadline(r, 200);
  EXPECT_EQ(tallies[e_timer_create].calls.load(), 0);
  EXPECT_EQ(tallies[e_timer_settime].calls.load(), 0);
  expect_forever_polls_until_released(lock, holder);
  EXPECT_EQ(tallies[e_timer_settime].calls.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Fault, FaultSignalFileSystem,
                         ::testing::Values(fs_param{0x65735546, 0, "fuse"},
                                           fs_param{0x6969, 0, "nfs"},
                                           fs_param{0, EIO, "fstatfs_fails"}),
                         [](const auto &info) { return std::string(info.param.name); });

}  // namespace

// SPDX-License-Identifier: MIT
// API contract tests: argument checking, the statuses of ipl_open for every
// kind of bad path, fasteners' defaults (folders created, 0666 minus umask,
// the file never written), descriptor hygiene, ipl_strerror and versions.
#include <gtest/gtest.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifndef _WIN32
#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#else
#include <direct.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ipl/ipl.h"
#include "test_support.hpp"

using ipltest::child_process;
using ipltest::kBound;
using ipltest::open_fd_count;
using ipltest::temp_dir;

// The status values are pinned: a renumbering breaks every compiled caller.
static_assert(IPL_OK == 0, "IPL_OK is pinned");
static_assert(IPL_E_TIMEOUT == -1, "IPL_E_TIMEOUT is pinned");
static_assert(IPL_E_INVALID == -2, "IPL_E_INVALID is pinned");
static_assert(IPL_E_NOT_HELD == -3, "IPL_E_NOT_HELD is pinned");
static_assert(IPL_E_WOULD_DEADLOCK == -4, "IPL_E_WOULD_DEADLOCK is pinned");
static_assert(IPL_E_ACCESS == -5, "IPL_E_ACCESS is pinned");
static_assert(IPL_E_NOT_REGULAR_FILE == -6, "IPL_E_NOT_REGULAR_FILE is pinned");
static_assert(IPL_E_NAME_TOO_LONG == -7, "IPL_E_NAME_TOO_LONG is pinned");
static_assert(IPL_E_NO_MEMORY == -8, "IPL_E_NO_MEMORY is pinned");
static_assert(IPL_E_OS == -9, "IPL_E_OS is pinned");
static_assert(IPL_E_BAD_PARENT == -10, "IPL_E_BAD_PARENT is pinned");
static_assert(IPL_E_INTERNAL == -11, "IPL_E_INTERNAL is pinned");
static_assert(IPL_E_UNSUPPORTED == -12, "IPL_E_UNSUPPORTED is pinned");
static_assert(IPL_E_SIGNAL_IN_USE == -13, "IPL_E_SIGNAL_IN_USE is pinned");
static_assert(IPL_WAIT_FOREVER == -1, "IPL_WAIT_FOREVER is pinned");
static_assert(IPL_OPEN_NO_CREATE == 0x1u, "IPL_OPEN_NO_CREATE is pinned");
static_assert(IPL_OPEN_NO_CREATE_DIRS == 0x2u, "IPL_OPEN_NO_CREATE_DIRS is pinned");

namespace {

// A non-NULL value for out-pointers, so a failing ipl_open that forgets to
// clear *out is caught. Never dereferenced.
int out_sentinel_storage;
ipl_lock *out_sentinel() { return reinterpret_cast<ipl_lock *>(&out_sentinel_storage); }

// The timeouts that must be rejected: negative, but not IPL_WAIT_FOREVER.
const int64_t kBadTimeouts[] = {-2, -5, -1000, int64_t(INT64_MIN)};

// Opens `path` with both ipl_open and ipl_open_ex and checks that both fail
// with `expected`, both clear *out, and agree. The OS error from ipl_open_ex
// goes to *os_error when given.
testing::AssertionResult open_fails_with(const std::string &path, uint32_t flags,
                                         int expected, int *os_error = nullptr) {
  ipl_lock *out = out_sentinel();
  const int status = ipl_open(path.c_str(), flags, &out);
  if (status == IPL_OK) ipl_close(out);
  if (status != expected)
    return testing::AssertionFailure()
           << "ipl_open(\"" << path << "\", " << flags << ") gave " << status << " ("
           << ipl_strerror(status) << "), expected " << expected << " ("
           << ipl_strerror(expected) << ")";
  if (out != nullptr)
    return testing::AssertionFailure() << "ipl_open failed but left *out non-NULL";

  ipl_lock *out_ex = out_sentinel();
  int error = -12345;
  const int status_ex = ipl_open_ex(path.c_str(), flags, &out_ex, &error);
  if (status_ex == IPL_OK) ipl_close(out_ex);
  if (status_ex != expected)
    return testing::AssertionFailure()
           << "ipl_open_ex(\"" << path << "\", " << flags << ") gave " << status_ex
           << ", expected " << expected;
  if (out_ex != nullptr)
    return testing::AssertionFailure() << "ipl_open_ex failed but left *out non-NULL";
  if (error == -12345)
    return testing::AssertionFailure() << "ipl_open_ex failed but did not set *os_error";
  if (os_error) *os_error = error;
  return testing::AssertionSuccess();
}

// Opens a handle that must succeed.
ipl_lock *open_ok(const std::string &path, uint32_t flags = 0) {
  ipl_lock *lock = nullptr;
  const int status = ipl_open(path.c_str(), flags, &lock);
  EXPECT_EQ(status, IPL_OK) << path << ": " << ipl_strerror(status);
  return status == IPL_OK ? lock : nullptr;
}

// Closes a handle at scope exit.
struct handle_guard {
  ipl_lock *lock;
  explicit handle_guard(ipl_lock *l) : lock(l) {}
  ~handle_guard() { ipl_close(lock); }
  handle_guard(const handle_guard &) = delete;
  handle_guard &operator=(const handle_guard &) = delete;
};

#ifndef _WIN32
// Sets the umask for a scope and restores the previous one.
struct umask_guard {
  mode_t previous;
  explicit umask_guard(mode_t mask) : previous(umask(mask)) {}
  ~umask_guard() { umask(previous); }
  umask_guard(const umask_guard &) = delete;
  umask_guard &operator=(const umask_guard &) = delete;
};
#endif

void write_file(const std::string &path, const std::string &content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

#ifndef _WIN32
bool exists(const std::string &path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

mode_t permission_bits(const std::string &path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path << ": " << strerror(errno);
  return st.st_mode & 07777;
}

// The error ipl_open_ex reports for a missing file with IPL_OPEN_NO_CREATE.
constexpr int kFileNotFoundError = ENOENT;
const char kDevicePath[] = "/dev/null";
#else
bool exists(const std::string &path) {
  std::error_code ignored;
  return std::filesystem::symlink_status(std::filesystem::u8path(path), ignored).type() !=
         std::filesystem::file_type::not_found;
}

#ifndef NAME_MAX
#define NAME_MAX 255  // per name on NTFS too (UTF-16 units)
#endif

// MinGW's mkdir takes no mode.
int mkdir(const char *path, int) { return _mkdir(path); }

constexpr int kFileNotFoundError = 2;  // ERROR_FILE_NOT_FOUND
const char kDevicePath[] = "NUL";
#endif

// The result line of the api_open_report helper: "<status> <os_error> <out_null>".
struct open_report {
  int status = 1;
  int os_error = -1;
  int out_null = -1;
};

bool parse_open_report(const std::string &line, open_report *report) {
  std::istringstream in(line);
  return bool(in >> report->status >> report->os_error >> report->out_null);
}

}  // namespace

// ---- Helpers (run in child processes) --------------------------------------

// Args: path, flags, and optionally "drop" to become uid/gid 65534 first.
// Says "<status> <os_error> <out_null>" for ipl_open_ex, or "cannot-drop".
IPL_TEST_HELPER(api_open_report) {
  if (args.size() < 2) return 2;
#ifndef _WIN32
  if (args.size() > 2 && args[2] == "drop") {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
      ipltest::helper_say("cannot-drop " + std::string(strerror(errno)));
      return 3;
    }
  }
#endif
  ipl_lock *out = out_sentinel();
  int os_error = -12345;
  const int status = ipl_open_ex(args[0].c_str(), uint32_t(std::stoul(args[1])), &out,
                                 &os_error);
  const bool out_null = out == nullptr;
  if (status == IPL_OK) ipl_close(out);
  ipltest::helper_say(std::to_string(status) + " " + std::to_string(os_error) + " " +
                      (out_null ? "1" : "0"));
  return 0;
}

// Args: path. The lock is held elsewhere; every acquire with a bad timeout
// must return IPL_E_INVALID at once. Says "ok" or the first failure.
IPL_TEST_HELPER(api_bad_timeouts_contended) {
  if (args.size() != 1) return 2;
  ipl_lock *lock = nullptr;
  if (ipl_open(args[0].c_str(), 0, &lock) != IPL_OK) {
    ipltest::helper_say("open failed");
    return 1;
  }
  using acquire_fn = int (*)(ipl_lock *, int64_t);
  const std::pair<const char *, acquire_fn> functions[] = {
      {"ipl_acquire", ipl_acquire},
      {"ipl_acquire_read", ipl_acquire_read},
      {"ipl_acquire_write", ipl_acquire_write}};
  std::string verdict = "ok";
  for (const auto &function : functions) {
    for (const int64_t timeout : kBadTimeouts) {
      const int status = function.second(lock, timeout);
      if (status != IPL_E_INVALID && verdict == "ok")
        verdict = std::string(function.first) + "(" + std::to_string(timeout) +
                  ") gave " + std::to_string(status);
    }
  }
  ipl_close(lock);
  ipltest::helper_say(verdict);
  return 0;
}

// Args: folder, relative path. Changes into the folder, opens the relative
// path, takes the exclusive lock, says "locked" and holds it until "release".
IPL_TEST_HELPER(api_relative_lock) {
  if (args.size() != 2) return 2;
  if (chdir(args[0].c_str()) != 0) {
    ipltest::helper_say("chdir failed");
    return 1;
  }
  ipl_lock *lock = nullptr;
  const int open_status = ipl_open(args[1].c_str(), 0, &lock);
  if (open_status != IPL_OK) {
    ipltest::helper_say("open " + std::to_string(open_status));
    return 1;
  }
  const int status = ipl_acquire(lock, 0);
  ipltest::helper_say(status == IPL_OK ? "locked" : "acquire " + std::to_string(status));
  std::string line;
  ipltest::helper_hear(&line);
  ipl_close(lock);
  return 0;
}

// ---- 1. Bad input ----------------------------------------------------------

// Catches: a NULL path dereferenced (crash) or passed to open(); *out left stale;
// os_error left unset or non-zero for a non-OS failure.
TEST(ApiBadInput, NullPathIsInvalidAndClearsOut) {
  ipl_lock *out = out_sentinel();
  EXPECT_EQ(ipl_open(nullptr, 0, &out), IPL_E_INVALID);
  EXPECT_EQ(out, nullptr);

  out = out_sentinel();
  int os_error = -12345;
  EXPECT_EQ(ipl_open_ex(nullptr, 0, &out, &os_error), IPL_E_INVALID);
  EXPECT_EQ(out, nullptr);
  EXPECT_EQ(os_error, 0);
}

// Catches: writing through a NULL out (crash); opening (and leaking or
// creating) the file before checking out.
TEST(ApiBadInput, NullOutIsInvalidAndCreatesNothing) {
  temp_dir dir;
  const std::string path = dir.path("sub/never.lock");
  const int fds_before = open_fd_count();
  EXPECT_EQ(ipl_open(path.c_str(), 0, nullptr), IPL_E_INVALID);
  int os_error = -12345;
  EXPECT_EQ(ipl_open_ex(path.c_str(), 0, nullptr, &os_error), IPL_E_INVALID);
  EXPECT_EQ(os_error, 0);
  EXPECT_FALSE(exists(dir.path("sub"))) << "a rejected call created folders";
  EXPECT_EQ(open_fd_count(), fds_before);
}

// Catches: "" treated as the current folder or passed to open() (ENOENT → IPL_E_OS).
TEST(ApiBadInput, EmptyPathIsInvalid) {
  EXPECT_TRUE(open_fails_with("", 0, IPL_E_INVALID));
  EXPECT_TRUE(open_fails_with("", IPL_OPEN_NO_CREATE, IPL_E_INVALID));
  int os_error = -1;
  ASSERT_TRUE(open_fails_with("", 0, IPL_E_INVALID, &os_error));
  EXPECT_EQ(os_error, 0);
}

// Catches: unknown flag bits silently ignored (SQLite's mistake), or checked
// only after the file was created.
TEST(ApiBadInput, UnknownFlagBitsAreInvalidAndCreateNothing) {
  temp_dir dir;
  const std::string path = dir.path("sub/flags.lock");
  const uint32_t bad_flags[] = {0x80000000u, 0x8u, 0x8u | IPL_OPEN_NO_CREATE,
                                0x10u | IPL_OPEN_NO_CREATE_DIRS, 0xffffffffu, 0x100u};
  for (const uint32_t flags : bad_flags) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    int os_error = -1;
    EXPECT_TRUE(open_fails_with(path, flags, IPL_E_INVALID, &os_error));
    EXPECT_EQ(os_error, 0);
  }
  EXPECT_FALSE(exists(dir.path("sub"))) << "a call with bad flags created folders";

  // The same flags on an existing file are still rejected.
  write_file(dir.path("exists.lock"), "");
  for (const uint32_t flags : bad_flags)
    EXPECT_TRUE(open_fails_with(dir.path("exists.lock"), flags, IPL_E_INVALID));
}

// Catches: NULL handle dereferenced in any entry point, or a NULL handle with
// IPL_WAIT_FOREVER blocking.
TEST(ApiBadInput, NullHandleIsInvalidEverywhere) {
  for (const int64_t timeout : {int64_t(0), int64_t(10), int64_t(IPL_WAIT_FOREVER),
                                int64_t(-2), int64_t(INT64_MIN), int64_t(INT64_MAX)}) {
    SCOPED_TRACE("timeout " + std::to_string(timeout));
    EXPECT_EQ(ipl_acquire(nullptr, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_read(nullptr, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_write(nullptr, timeout), IPL_E_INVALID);
  }
  EXPECT_EQ(ipl_release(nullptr), IPL_E_INVALID);
  EXPECT_EQ(ipl_release_read(nullptr), IPL_E_INVALID);
  EXPECT_EQ(ipl_release_write(nullptr), IPL_E_INVALID);
  EXPECT_EQ(ipl_os_error(nullptr), 0);
  ipl_close(nullptr);  // must be a harmless no-op: reaching the next line is the test
  SUCCEED();
}

// Catches: a signal number that cannot be used (negative other than AUTO,
// beyond NSIG, or one that can never be handled) accepted, or a rejected
// call that still changed the signal in use.
#ifndef _WIN32
TEST(ApiBadInput, UnusableWaitSignalIsInvalidAndChangesNothing) {
  const int signal_before = ipl_wait_signal();
  for (const int signo : {-2, -5, INT_MIN, INT_MAX, 100000, SIGKILL, SIGSTOP}) {
    SCOPED_TRACE("signal " + std::to_string(signo));
    EXPECT_EQ(ipl_set_wait_signal(signo), IPL_E_INVALID);
    EXPECT_EQ(ipl_wait_signal(), signal_before);
  }
}
#else
// Windows has no wait signal (timed waits poll, see the backend).
// Catches: a negative number other than AUTO accepted or reported as
// IPL_E_UNSUPPORTED, a signal number accepted where there is no mechanism,
// or 0 / AUTO (valid everywhere) rejected.
TEST(ApiBadInput, WaitSignalOnWindowsIsUnsupportedButOffAndAutoAreFine) {
  for (const int signo : {-2, -5, INT_MIN}) {
    SCOPED_TRACE("signal " + std::to_string(signo));
    EXPECT_EQ(ipl_set_wait_signal(signo), IPL_E_INVALID);
  }
  for (const int signo : {1, 9, 15, 64, INT_MAX}) {
    SCOPED_TRACE("signal " + std::to_string(signo));
    EXPECT_EQ(ipl_set_wait_signal(signo), IPL_E_UNSUPPORTED);
  }
  EXPECT_EQ(ipl_set_wait_signal(0), IPL_OK);
  EXPECT_EQ(ipl_set_wait_signal(IPL_WAIT_SIGNAL_AUTO), IPL_OK);
  EXPECT_EQ(ipl_wait_signal(), 0);
}
#endif

// Catches: a negative timeout treated as "forever" or as 0 (lock taken) on an
// idle handle, or a rejected call that still changed the handle's state.
TEST(ApiBadInput, BadTimeoutOnIdleHandleIsInvalidAndTakesNothing) {
  temp_dir dir;
  const std::string path = dir.path("idle.lock");
  handle_guard first(open_ok(path));
  handle_guard second(open_ok(path));
  ASSERT_NE(first.lock, nullptr);
  ASSERT_NE(second.lock, nullptr);

  for (const int64_t timeout : kBadTimeouts) {
    SCOPED_TRACE("timeout " + std::to_string(timeout));
    EXPECT_EQ(ipl_acquire(first.lock, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_read(first.lock, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_write(first.lock, timeout), IPL_E_INVALID);
  }
  // The first handle holds nothing: another handle gets the exclusive lock,
  // and the first has nothing to release.
  EXPECT_EQ(ipl_acquire(second.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release(second.lock), IPL_OK);
  EXPECT_EQ(ipl_release(first.lock), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_read(first.lock), IPL_E_NOT_HELD);
  // And it is still usable.
  EXPECT_EQ(ipl_acquire(first.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release(first.lock), IPL_OK);
}

// Catches: a bad timeout on a handle that holds read reported as
// IPL_E_WOULD_DEADLOCK, or dropping / upgrading the held lock.
TEST(ApiBadInput, BadTimeoutWhileHoldingReadKeepsTheReadLock) {
  temp_dir dir;
  const std::string path = dir.path("read.lock");
  handle_guard holder(open_ok(path));
  handle_guard observer(open_ok(path));
  ASSERT_NE(holder.lock, nullptr);
  ASSERT_NE(observer.lock, nullptr);
  ASSERT_EQ(ipl_acquire_read(holder.lock, 0), IPL_OK);

  for (const int64_t timeout : kBadTimeouts) {
    SCOPED_TRACE("timeout " + std::to_string(timeout));
    EXPECT_EQ(ipl_acquire(holder.lock, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_write(holder.lock, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire_read(holder.lock, timeout), IPL_E_INVALID);
  }
  // Still shared, not dropped and not upgraded: a writer is shut out, a
  // reader gets in.
  EXPECT_EQ(ipl_acquire(observer.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_acquire_read(observer.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(observer.lock), IPL_OK);
  // The holder still knows it holds read.
  EXPECT_EQ(ipl_release_read(holder.lock), IPL_OK);
  EXPECT_EQ(ipl_acquire(observer.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release(observer.lock), IPL_OK);
}

// Catches: a bad timeout on an exclusive holder dropping or downgrading it.
TEST(ApiBadInput, BadTimeoutWhileHoldingExclusiveKeepsTheExclusiveLock) {
  temp_dir dir;
  const std::string path = dir.path("write.lock");
  handle_guard holder(open_ok(path));
  handle_guard observer(open_ok(path));
  ASSERT_NE(holder.lock, nullptr);
  ASSERT_NE(observer.lock, nullptr);
  ASSERT_EQ(ipl_acquire(holder.lock, 0), IPL_OK);

  for (const int64_t timeout : kBadTimeouts) {
    SCOPED_TRACE("timeout " + std::to_string(timeout));
    EXPECT_EQ(ipl_acquire_read(holder.lock, timeout), IPL_E_INVALID);
    EXPECT_EQ(ipl_acquire(holder.lock, timeout), IPL_E_INVALID);
  }
  EXPECT_EQ(ipl_acquire_read(observer.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(holder.lock), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(observer.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(observer.lock), IPL_OK);
}

// Catches: "timeout < 0 means wait forever" (the call would block on the held
// lock; the helper then never answers and the bounded read fails the test).
TEST(ApiBadInput, BadTimeoutUnderContentionReturnsAtOnce) {
  temp_dir dir;
  const std::string path = dir.path("contended.lock");
  handle_guard holder(open_ok(path));
  ASSERT_NE(holder.lock, nullptr);
  ASSERT_EQ(ipl_acquire(holder.lock, 0), IPL_OK);

  child_process helper = child_process::helper("api_bad_timeouts_contended", {path});
  std::string got;
  EXPECT_TRUE(helper.expect_line("ok", kBound, &got)) << got;
  EXPECT_EQ(ipltest::describe_status(helper.wait()), 0);
  EXPECT_EQ(ipl_release(holder.lock), IPL_OK);
}

// Catches: a deadline computed as now + timeout overflowing for huge (valid)
// timeouts (UBSan reports it; a wrapped deadline may give an instant timeout).
TEST(ApiBadInput, HugeTimeoutIsValid) {
  temp_dir dir;
  handle_guard lock(open_ok(dir.path("huge.lock")));
  ASSERT_NE(lock.lock, nullptr);
  EXPECT_EQ(ipl_acquire(lock.lock, INT64_MAX), IPL_OK);
  EXPECT_EQ(ipl_release(lock.lock), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(lock.lock, INT64_MAX), IPL_OK);
  EXPECT_EQ(ipl_release_read(lock.lock), IPL_OK);
}

// Catches: descriptors leaked on the argument-checking paths.
TEST(ApiBadInput, RejectedCallsLeakNoDescriptors) {
  temp_dir dir;
  const std::string path = dir.path("leak.lock");
  handle_guard lock(open_ok(path));
  ASSERT_NE(lock.lock, nullptr);
  const int fds_before = open_fd_count();
  for (int i = 0; i < 200; ++i) {
    ipl_lock *out = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), 0x8u, &out), IPL_E_INVALID);
    ASSERT_EQ(ipl_open(path.c_str(), 0, nullptr), IPL_E_INVALID);
    ASSERT_EQ(ipl_acquire(lock.lock, -2), IPL_E_INVALID);
  }
  EXPECT_EQ(open_fd_count(), fds_before);
}

// ---- 2. Not a regular file --------------------------------------------------

// Catches: locking a folder (open(O_RDONLY) works on folders) or reporting EISDIR as IPL_E_OS.
TEST(ApiNotRegularFile, DirectoryIsRejected) {
  temp_dir dir;
  ASSERT_EQ(mkdir(dir.path("folder").c_str(), 0755), 0);
  for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE, IPL_OPEN_NO_CREATE_DIRS,
                               IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    EXPECT_TRUE(open_fails_with(dir.path("folder"), flags, IPL_E_NOT_REGULAR_FILE));
    EXPECT_TRUE(open_fails_with(dir.root(), flags, IPL_E_NOT_REGULAR_FILE));
  }
}

#ifndef _WIN32
// Catches: open() of a FIFO without O_NONBLOCK (blocks until a peer shows
// up: the helper never answers), or accepting a FIFO as a lock file.
TEST(ApiNotRegularFile, FifoIsRejectedWithoutBlocking) {
  temp_dir dir;
  const std::string fifo = dir.path("pipe");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0666), 0) << strerror(errno);
  for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    child_process helper =
        child_process::helper("api_open_report", {fifo, std::to_string(flags)});
    std::string line;
    ASSERT_TRUE(helper.read_line(&line, kBound))
        << "ipl_open of a FIFO did not return within the bound (it blocks)";
    open_report report;
    ASSERT_TRUE(parse_open_report(line, &report)) << line;
    EXPECT_EQ(report.status, IPL_E_NOT_REGULAR_FILE) << ipl_strerror(report.status);
    EXPECT_EQ(report.out_null, 1);
    EXPECT_EQ(ipltest::describe_status(helper.wait()), 0);
  }
}

// Catches: a character device (O_RDWR on /dev/null succeeds) accepted as a lock file.
TEST(ApiNotRegularFile, DeviceIsRejected) {
  for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    EXPECT_TRUE(open_fails_with(kDevicePath, flags, IPL_E_NOT_REGULAR_FILE));
  }
}

// Catches: a socket file's ENXIO reported as a generic IPL_E_OS.
TEST(ApiNotRegularFile, SocketIsRejected) {
  temp_dir dir;
  const std::string socket_path = dir.path("sock");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(socket_path.size(), sizeof address.sun_path);
  memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr *>(&address), sizeof address), 0)
      << strerror(errno);
  EXPECT_TRUE(open_fails_with(socket_path, 0, IPL_E_NOT_REGULAR_FILE));
  EXPECT_TRUE(open_fails_with(socket_path, IPL_OPEN_NO_CREATE, IPL_E_NOT_REGULAR_FILE));
  close(fd);
}

#else
// Catches: a DOS device name (in any folder, any case, with an extension),
// the \\.\ device namespace or a named pipe opened as a lock file — or
// opened at all: opening COM1 can block or toggle a modem line, so each
// name is tried in a helper process with a bounded wait.
TEST(ApiNotRegularFile, DeviceNamesAreRejectedWithoutOpening) {
  temp_dir dir;
  const std::string names[] = {
      "NUL",           "nul",           "CON",
      "COM1",          "lpt1",          "AUX",
      "PRN",           "CONOUT$",       "NUL.txt",
      "com1.lock",     dir.path("NUL"), dir.path("sub/CON"),
      "\\\\.\\NUL",      "//./NUL",       "\\\\.\\pipe\\ipl-test-pipe",
  };
  for (const std::string &name : names) {
    for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE}) {
      SCOPED_TRACE(name + " flags " + std::to_string(flags));
      child_process helper =
          child_process::helper("api_open_report", {name, std::to_string(flags)});
      std::string line;
      ASSERT_TRUE(helper.read_line(&line, kBound))
          << "ipl_open of a device did not return within the bound (it blocks)";
      open_report report;
      ASSERT_TRUE(parse_open_report(line, &report)) << line;
      EXPECT_EQ(report.status, IPL_E_NOT_REGULAR_FILE) << ipl_strerror(report.status);
      EXPECT_EQ(report.os_error, 0) << "a device was opened";
      EXPECT_EQ(report.out_null, 1);
      EXPECT_EQ(ipltest::describe_status(helper.wait()), 0);
    }
  }
  EXPECT_FALSE(exists(dir.path("sub"))) << "folders created for a device name";
  // Control: names that only look like devices are ordinary files.
  for (const char *ordinary : {"NULL", "CONSOLE", "COM", "LPT10", "nul-ish.lock"}) {
    SCOPED_TRACE(ordinary);
    handle_guard lock(open_ok(dir.path(ordinary)));
    EXPECT_NE(lock.lock, nullptr);
  }
}
#endif

// ---- 3. Parents and creation flags ------------------------------------------

// Catches: ENOTDIR reported as IPL_E_OS, or the parent file replaced / written.
TEST(ApiBadParent, ParentThatIsAFileIsBadParent) {
  temp_dir dir;
  const std::string file = dir.path("f");
  write_file(file, "keep me");
  for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE, IPL_OPEN_NO_CREATE_DIRS}) {
    SCOPED_TRACE("flags " + std::to_string(flags));
    EXPECT_TRUE(open_fails_with(file + "/lock", flags, IPL_E_BAD_PARENT));
  }
  // Deeper: the folder-creating path meets the file on the way down.
  EXPECT_TRUE(open_fails_with(file + "/sub/deeper/lock", 0, IPL_E_BAD_PARENT));
  EXPECT_EQ(read_file(file), "keep me");
}

// Catches: IPL_OPEN_NO_CREATE_DIRS ignored (folders created) or ENOENT
// reported as IPL_E_OS instead of IPL_E_BAD_PARENT.
TEST(ApiBadParent, NoCreateDirsWithMissingParentIsBadParent) {
  temp_dir dir;
  EXPECT_TRUE(open_fails_with(dir.path("missing/lock"), IPL_OPEN_NO_CREATE_DIRS,
                              IPL_E_BAD_PARENT));
  EXPECT_TRUE(open_fails_with(dir.path("missing/deeper/lock"), IPL_OPEN_NO_CREATE_DIRS,
                              IPL_E_BAD_PARENT));
  EXPECT_FALSE(exists(dir.path("missing")));

  // With the parent present, the flag still creates the file itself.
  handle_guard lock(open_ok(dir.path("present.lock"), IPL_OPEN_NO_CREATE_DIRS));
  EXPECT_NE(lock.lock, nullptr);
  EXPECT_TRUE(exists(dir.path("present.lock")));
}

// Catches: IPL_OPEN_NO_CREATE ignored (O_CREAT still passed), or the errno
// not handed back through ipl_open_ex.
TEST(ApiBadParent, NoCreateOnMissingFileIsOsErrorEnoent) {
  temp_dir dir;
  const std::string path = dir.path("absent.lock");
  int os_error = 0;
  ASSERT_TRUE(open_fails_with(path, IPL_OPEN_NO_CREATE, IPL_E_OS, &os_error));
  EXPECT_EQ(os_error, kFileNotFoundError) << strerror(os_error);
  EXPECT_FALSE(exists(path));
  ASSERT_TRUE(open_fails_with(path, IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS,
                              IPL_E_OS, &os_error));
  EXPECT_EQ(os_error, kFileNotFoundError);
  EXPECT_FALSE(exists(path));

  // An existing file opens fine with the flag, and ipl_open_ex accepts a NULL os_error.
  write_file(path, "");
  ipl_lock *lock = nullptr;
  EXPECT_EQ(ipl_open_ex(path.c_str(), IPL_OPEN_NO_CREATE, &lock, nullptr), IPL_OK);
  EXPECT_NE(lock, nullptr);
  ipl_close(lock);
}

// ---- 4. Names too long -------------------------------------------------------

// Catches: ENAMETOOLONG reported as IPL_E_OS, or a long component truncated.
TEST(ApiNameTooLong, ComponentLongerThanNameMax) {
  temp_dir dir;
  const std::string long_name(NAME_MAX + 1, 'n');
  EXPECT_TRUE(open_fails_with(dir.path(long_name), 0, IPL_E_NAME_TOO_LONG));
  EXPECT_TRUE(open_fails_with(dir.path(long_name), IPL_OPEN_NO_CREATE, IPL_E_NAME_TOO_LONG));
  // In a parent folder that would have to be created.
  EXPECT_TRUE(open_fails_with(dir.path(long_name + "/lock"), 0, IPL_E_NAME_TOO_LONG));
  // A name of exactly NAME_MAX is fine.
  handle_guard lock(open_ok(dir.path(std::string(NAME_MAX, 'n'))));
  EXPECT_NE(lock.lock, nullptr);
}

#ifndef _WIN32
// Catches: a whole path over PATH_MAX reported as IPL_E_OS or opened by
// walking it piecewise.
TEST(ApiNameTooLong, PathLongerThanPathMax) {
  temp_dir dir;
  std::string path = dir.root();
  const std::string component(200, 'p');  // each one well under NAME_MAX
  while (path.size() <= size_t(PATH_MAX) + 100) path += "/" + component;
  path += "/lock";
  EXPECT_TRUE(open_fails_with(path, 0, IPL_E_NAME_TOO_LONG));
  EXPECT_TRUE(open_fails_with(path, IPL_OPEN_NO_CREATE, IPL_E_NAME_TOO_LONG));
}
#else
// Catches: paths over MAX_PATH (260) refused or truncated — Windows opens
// them only with the \\?\ prefix, which also needs '\' separators and an
// absolute path — or folders of such a path not created.
TEST(ApiNameTooLong, PathLongerThanMaxPathWorks) {
  temp_dir dir;
  std::string path = dir.path("long");
  const std::string component(100, 'p');
  while (path.size() <= 600) path += "/" + component;
  path += "/lock";
  handle_guard first(open_ok(path));
  ASSERT_NE(first.lock, nullptr);
  handle_guard second(open_ok(path, IPL_OPEN_NO_CREATE));
  ASSERT_NE(second.lock, nullptr);
  ASSERT_EQ(ipl_acquire(first.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(second.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(first.lock), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(second.lock, 0), IPL_OK);
}

// Catches: a path over Windows' 32767-character limit reported as IPL_E_OS.
TEST(ApiNameTooLong, PathLongerThanTheWindowsLimit) {
  temp_dir dir;
  std::string path = dir.root();
  const std::string component(200, 'p');
  while (path.size() <= 33000) path += "/" + component;
  path += "/lock";
  EXPECT_TRUE(open_fails_with(path, 0, IPL_E_NAME_TOO_LONG));
  EXPECT_TRUE(open_fails_with(path, IPL_OPEN_NO_CREATE, IPL_E_NAME_TOO_LONG));
}
#endif

// ---- 5. Access denied ----------------------------------------------------------

#ifndef _WIN32
namespace {

// Runs ipl_open_ex as an unprivileged user: as root in a helper process that
// drops to uid/gid 65534; otherwise directly. False (with *why) when the
// privilege drop is impossible here.
bool open_unprivileged(const std::string &path, open_report *report, std::string *why) {
  if (geteuid() != 0) {
    ipl_lock *out = out_sentinel();
    report->os_error = -12345;
    report->status = ipl_open_ex(path.c_str(), 0, &out, &report->os_error);
    report->out_null = out == nullptr;
    if (report->status == IPL_OK) ipl_close(out);
    return true;
  }
  child_process helper = child_process::helper("api_open_report", {path, "0", "drop"});
  std::string line;
  if (!helper.read_line(&line, kBound)) {
    *why = "helper gave no answer";
    return false;
  }
  if (line.rfind("cannot-drop", 0) == 0) {
    *why = line;
    return false;
  }
  helper.wait();
  return parse_open_report(line, report);
}

void chmod_or_fail(const std::string &path, mode_t mode) {
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path << ": " << strerror(errno);
}

}  // namespace

// Catches: EACCES reported as IPL_E_OS (or as IPL_E_BAD_PARENT when creating
// a folder is denied), or the errno not handed back by ipl_open_ex.
TEST(ApiAccess, DeniedFolderOrFileIsAccess) {
  temp_dir dir;
  const bool as_root = geteuid() == 0;
  // As root the denial comes from root-owned modes seen by uid 65534; as an
  // ordinary user from modes that deny the owner.
  const mode_t private_mode = as_root ? 0700 : 0000;
  const mode_t read_only_mode = as_root ? 0755 : 0555;
  const mode_t private_file_mode = as_root ? 0600 : 0000;

  chmod_or_fail(dir.root(), 0755);  // mkdtemp's 0700 would deny uid 65534 everything
  ASSERT_EQ(mkdir(dir.path("public").c_str(), 0777), 0);
  chmod_or_fail(dir.path("public"), 0777);
  ASSERT_EQ(mkdir(dir.path("private").c_str(), 0777), 0);
  write_file(dir.path("private/existing.lock"), "");
  chmod_or_fail(dir.path("private/existing.lock"), 0666);
  ASSERT_EQ(mkdir(dir.path("read_only").c_str(), 0777), 0);
  write_file(dir.path("public/owner_only.lock"), "");
  chmod_or_fail(dir.path("public/owner_only.lock"), private_file_mode);
  chmod_or_fail(dir.path("private"), private_mode);
  chmod_or_fail(dir.path("read_only"), read_only_mode);
  if (!as_root && access(dir.path("private/existing.lock").c_str(), F_OK) == 0) {
    chmod_or_fail(dir.path("private"), 0700);
    GTEST_SKIP() << "permissions are not enforced for this user (CAP_DAC_OVERRIDE?)";
  }

  // Control: the unprivileged user can lock where it is allowed to, so the
  // denials below come from the modes, not from the test setup.
  open_report report;
  std::string why;
  if (!open_unprivileged(dir.path("public/allowed.lock"), &report, &why)) {
    GTEST_SKIP() << "cannot run as an unprivileged user: " << why;
  }
  EXPECT_EQ(report.status, IPL_OK) << ipl_strerror(report.status);

  const std::string denied_paths[] = {
      dir.path("private/new.lock"),        // cannot search the folder
      dir.path("private/existing.lock"),   // ditto, file already there
      dir.path("public/owner_only.lock"),  // the file itself is not ours
      dir.path("read_only/sub/new.lock"),  // cannot create the missing folder
  };
  for (const std::string &path : denied_paths) {
    SCOPED_TRACE(path);
    ASSERT_TRUE(open_unprivileged(path, &report, &why)) << why;
    EXPECT_EQ(report.status, IPL_E_ACCESS) << ipl_strerror(report.status);
    EXPECT_EQ(report.os_error, EACCES) << strerror(report.os_error);
    EXPECT_EQ(report.out_null, 1);
  }
  EXPECT_FALSE(exists(dir.path("read_only/sub")));

  // Let temp_dir clean up also when not root.
  chmod(dir.path("private").c_str(), 0700);
  chmod(dir.path("read_only").c_str(), 0700);
}

#endif

// ---- 6. fasteners' defaults ------------------------------------------------------

// Catches: missing parent folders not created (fasteners' ensure_tree), or
// only the last level created.
TEST(ApiDefaults, MissingParentFoldersAreCreated) {
  temp_dir dir;
  const std::string path = dir.path("one/two/three/four/lock");
  handle_guard lock(open_ok(path));
  ASSERT_NE(lock.lock, nullptr);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  ASSERT_EQ(stat(dir.path("one/two/three/four").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(ipl_acquire(lock.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release(lock.lock), IPL_OK);

  // Some levels present, some missing.
  handle_guard second(open_ok(dir.path("one/two/other/five/lock")));
  EXPECT_NE(second.lock, nullptr);
}

// Catches: mkdir's EEXIST treated as an error when another thread or process
// creates the same folder at the same moment.
TEST(ApiDefaults, ConcurrentOpensCreatingTheSameFoldersAllSucceed) {
  temp_dir dir;
  constexpr int kThreads = 8;
  constexpr int kRounds = 30;
  std::atomic<int> failures{0};
  for (int round = 0; round < kRounds; ++round) {
    const std::string base = dir.path("race" + std::to_string(round));
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        ipl_lock *lock = nullptr;
        const std::string path = base + "/a/b/c/lock" + std::to_string(t % 2);
        if (ipl_open(path.c_str(), 0, &lock) != IPL_OK) failures.fetch_add(1);
        ipl_close(lock);
      });
    }
    for (auto &thread : threads) thread.join();
  }
  EXPECT_EQ(failures.load(), 0);
}

#ifndef _WIN32
// Catches: a hard-coded mode (0644 or 0600) or a mode that ignores the umask.
TEST(ApiDefaults, FileModeIs0666MinusUmask) {
  temp_dir dir;
  const std::pair<mode_t, mode_t> cases[] = {{022, 0644}, {0, 0666}, {027, 0640}};
  for (const auto &mask_and_mode : cases) {
    const std::string path = dir.path("mode" + std::to_string(mask_and_mode.first) + ".lock");
    {
      umask_guard mask(mask_and_mode.first);
      handle_guard lock(open_ok(path));
      ASSERT_NE(lock.lock, nullptr);
    }
    EXPECT_EQ(permission_bits(path), mask_and_mode.second)
        << "umask " << std::oct << mask_and_mode.first;
  }
}
#endif

namespace {

#ifndef _WIN32
struct file_snapshot {
  std::string content;
  off_t size = -1;
  timespec mtime{};
};

file_snapshot snapshot(const std::string &path) {
  file_snapshot shot;
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0);
  shot.content = read_file(path);
  shot.size = st.st_size;
  shot.mtime = st.st_mtim;
  return shot;
}

// A fixed old mtime: any write or truncation would move it to "now".
void set_old_mtime(const std::string &path) {
  const timespec times[2] = {{1000000000, 123456789}, {1000000000, 123456789}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << strerror(errno);
}
#else
// The same through std::filesystem (no utimensat on Windows); the mtime is
// split like a timespec so the tests read the same.
struct file_snapshot {
  std::string content;
  int64_t size = -1;
  struct {
    int64_t tv_sec = 0;
    int64_t tv_nsec = 0;
  } mtime;
};

file_snapshot snapshot(const std::string &path) {
  file_snapshot shot;
  const auto file = std::filesystem::u8path(path);
  shot.content = read_file(path);
  shot.size = int64_t(std::filesystem::file_size(file));
  const auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::filesystem::last_write_time(file).time_since_epoch());
  shot.mtime.tv_sec = since_epoch.count() / 1000000000;
  shot.mtime.tv_nsec = since_epoch.count() % 1000000000;
  return shot;
}

// A fixed old mtime: any write or truncation would move it to "now".
void set_old_mtime(const std::string &path) {
  const auto file = std::filesystem::u8path(path);
  std::filesystem::last_write_time(
      file, std::filesystem::last_write_time(file) - std::chrono::hours(24 * 365));
}
#endif

// Opens several handles, takes and releases every mode, closes while holding.
void exercise_lock_file(const std::string &path) {
  for (const uint32_t flags : {0u, IPL_OPEN_NO_CREATE, IPL_OPEN_NO_CREATE_DIRS}) {
    handle_guard first(open_ok(path, flags));
    handle_guard second(open_ok(path, flags));
    ASSERT_NE(first.lock, nullptr);
    ASSERT_NE(second.lock, nullptr);
    EXPECT_EQ(ipl_acquire(first.lock, 0), IPL_OK);
    EXPECT_EQ(ipl_release(first.lock), IPL_OK);
    EXPECT_EQ(ipl_acquire_write(second.lock, 0), IPL_OK);
    EXPECT_EQ(ipl_release_write(second.lock), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(first.lock, 0), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(second.lock, 0), IPL_OK);
    EXPECT_EQ(ipl_release_read(first.lock), IPL_OK);
    EXPECT_EQ(ipl_release_read(second.lock), IPL_OK);
    EXPECT_EQ(ipl_acquire(second.lock, 0), IPL_OK);  // closed while held
  }
}

}  // namespace

// Catches: O_TRUNC, O_APPEND writes, or writing a lock byte (fasteners on
// Windows locks the byte at end of file; the file must keep its content).
TEST(ApiDefaults, LockFileIsNeverWrittenOrTruncated) {
  temp_dir dir;
  const std::string path = dir.path("filled.lock");
  std::string content = "pid 12345\n";
  for (int i = 0; i < 256; ++i) content += char(i);
  write_file(path, content);
  set_old_mtime(path);
  const file_snapshot before = snapshot(path);
  ASSERT_EQ(before.content, content);

  exercise_lock_file(path);

  const file_snapshot after = snapshot(path);
  EXPECT_EQ(after.content, before.content);
  EXPECT_EQ(after.size, before.size);
  EXPECT_EQ(after.mtime.tv_sec, before.mtime.tv_sec);
  EXPECT_EQ(after.mtime.tv_nsec, before.mtime.tv_nsec);
}

// Catches: an empty lock file grown to one byte so that byte 0 exists, or
// truncated (O_TRUNC updates the mtime even of an empty file).
TEST(ApiDefaults, EmptyLockFileStaysEmpty) {
  temp_dir dir;
  const std::string path = dir.path("empty.lock");
  {
    handle_guard creator(open_ok(path));  // created by the library itself
    ASSERT_NE(creator.lock, nullptr);
  }
  set_old_mtime(path);
  const file_snapshot before = snapshot(path);
  ASSERT_EQ(before.size, 0);

  exercise_lock_file(path);

  const file_snapshot after = snapshot(path);
  EXPECT_EQ(after.size, 0);
  EXPECT_EQ(after.mtime.tv_sec, before.mtime.tv_sec);
  EXPECT_EQ(after.mtime.tv_nsec, before.mtime.tv_nsec);
}

// ---- 7. Descriptor hygiene -----------------------------------------------------

// Catches: a descriptor leaked by open, lock, release or close (including
// close while a lock is held, and the classic backend's deferred closes).
TEST(ApiFdLeak, OpenLockReleaseCloseCyclesLeakNothing) {
  temp_dir dir;
  const std::string path = dir.path("cycle.lock");
  const int fds_before = open_fd_count();
  int failures = 0;
  for (int i = 0; i < 2000; ++i) {
    ipl_lock *lock = nullptr;
    if (ipl_open(path.c_str(), 0, &lock) != IPL_OK) {
      ++failures;
      continue;
    }
    const bool exclusive = i % 2 == 0;
    if ((exclusive ? ipl_acquire(lock, 0) : ipl_acquire_read(lock, 0)) != IPL_OK) ++failures;
    // Every third cycle closes while still holding the lock.
    if (i % 3 != 0 && (exclusive ? ipl_release(lock) : ipl_release_read(lock)) != IPL_OK)
      ++failures;
    ipl_close(lock);
  }
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(open_fd_count(), fds_before);
}

// Catches: a descriptor leaked on a failure path (opened, found not to be a
// regular file, not closed; a folder descriptor kept after ENOTDIR; ...).
TEST(ApiFdLeak, FailingOpensLeakNothing) {
  temp_dir dir;
  ASSERT_EQ(mkdir(dir.path("folder").c_str(), 0755), 0);
  write_file(dir.path("file"), "x");
  const std::string long_name(NAME_MAX + 1, 'n');
  const std::pair<std::string, uint32_t> failing[] = {
      {dir.path("folder"), 0},
      {dir.path("file/lock"), 0},
      {dir.path("missing.lock"), IPL_OPEN_NO_CREATE},
      {dir.path("missing/lock"), IPL_OPEN_NO_CREATE_DIRS},
      {dir.path(long_name), 0},
      {kDevicePath, 0},
  };
  const int fds_before = open_fd_count();
  int unexpected_successes = 0;
  for (int i = 0; i < 2000; ++i) {
    const auto &attempt = failing[i % std::size(failing)];
    ipl_lock *lock = nullptr;
    if (ipl_open(attempt.first.c_str(), attempt.second, &lock) == IPL_OK) {
      ++unexpected_successes;
      ipl_close(lock);
    }
  }
  EXPECT_EQ(unexpected_successes, 0);
  EXPECT_EQ(open_fd_count(), fds_before);
}

// Catches: a fixed-size handle table, descriptors kept after close when many
// handles share the inode, or shared locks of many handles not coexisting.
TEST(ApiFdLeak, TwoThousandHandlesAtOnce) {
  constexpr int kHandles = 2000;
#ifndef _WIN32
  rlimit original{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &original), 0);
  const rlim_t needed = rlim_t(open_fd_count()) + kHandles + 64;
  rlimit raised = original;
  if (original.rlim_cur != RLIM_INFINITY && original.rlim_cur < needed) {
    if (original.rlim_max != RLIM_INFINITY && original.rlim_max < needed)
      GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << original.rlim_max << " < " << needed;
    raised.rlim_cur = original.rlim_max;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &raised), 0) << strerror(errno);
  }
#endif

  temp_dir dir;
  const std::string path = dir.path("many.lock");
  const int fds_before = open_fd_count();
  std::vector<ipl_lock *> handles;
  int failures = 0;
  for (int i = 0; i < kHandles; ++i) {
    ipl_lock *lock = nullptr;
    if (ipl_open(path.c_str(), 0, &lock) != IPL_OK) {
      ++failures;
      continue;
    }
    handles.push_back(lock);
    if (ipl_acquire_read(lock, 0) != IPL_OK) ++failures;
  }
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(std::set<ipl_lock *>(handles.begin(), handles.end()).size(), handles.size());

  {
    handle_guard writer(open_ok(path));
    ASSERT_NE(writer.lock, nullptr);
    EXPECT_EQ(ipl_acquire(writer.lock, 0), IPL_E_TIMEOUT);  // 2000 readers hold it
    for (size_t i = 0; i < handles.size(); ++i) {
      if (i % 2 == 0) {
        EXPECT_EQ(ipl_release_read(handles[i]), IPL_OK);
      }
      ipl_close(handles[i]);
    }
    EXPECT_EQ(ipl_acquire(writer.lock, 0), IPL_OK);  // all released by close
  }
  EXPECT_EQ(open_fd_count(), fds_before);
#ifndef _WIN32
  if (raised.rlim_cur != original.rlim_cur) setrlimit(RLIMIT_NOFILE, &original);
#endif
}

// ---- 8. Texts and versions ---------------------------------------------------------

// Every status the header defines; a new status belongs here too.
const int kAllStatuses[] = {IPL_OK,
                            IPL_E_TIMEOUT,
                            IPL_E_INVALID,
                            IPL_E_NOT_HELD,
                            IPL_E_WOULD_DEADLOCK,
                            IPL_E_ACCESS,
                            IPL_E_NOT_REGULAR_FILE,
                            IPL_E_NAME_TOO_LONG,
                            IPL_E_NO_MEMORY,
                            IPL_E_OS,
                            IPL_E_BAD_PARENT,
                            IPL_E_INTERNAL,
                            IPL_E_UNSUPPORTED,
                            IPL_E_SIGNAL_IN_USE};

// Catches: a missing or shared text for a status, NULL for unknown values,
// or a switch that falls off its end.
TEST(ApiStrerror, EveryStatusHasItsOwnTextAndUnknownIsNeverNull) {
  std::set<std::string> texts;
  for (const int status : kAllStatuses) {
    const char *text = ipl_strerror(status);
    ASSERT_NE(text, nullptr) << status;
    EXPECT_GT(strlen(text), 0u) << status;
    EXPECT_STRNE(text, "unknown status") << status;
    texts.insert(text);
  }
  EXPECT_EQ(texts.size(), std::size(kAllStatuses)) << "two statuses share a text";

  for (const int unknown : {12345, -999, INT_MIN, INT_MAX, 1, -100}) {
    const char *text = ipl_strerror(unknown);
    ASSERT_NE(text, nullptr) << unknown;
    EXPECT_STREQ(text, "unknown status") << unknown;
  }
}

// Catches: a library built from another version than the header (or a
// version function returning a stale constant).
TEST(ApiVersion, RuntimeVersionMatchesHeader) {
  EXPECT_EQ(ipl_version_number(), uint32_t(IPL_VERSION_NUMBER));
  ASSERT_NE(ipl_version_string(), nullptr);
  EXPECT_STREQ(ipl_version_string(), IPL_VERSION_STRING);
  const std::string expected = std::to_string(IPL_VERSION_MAJOR) + "." +
                               std::to_string(IPL_VERSION_MINOR) + "." +
                               std::to_string(IPL_VERSION_PATCH);
  EXPECT_EQ(std::string(IPL_VERSION_STRING), expected);
}

// ---- 9. Pinned status values -------------------------------------------------------

// Catches: a renumbered status in the header (static_asserts above fail the
// build) or a library that returns different numbers than the header's.
TEST(ApiPinnedValues, StatusValuesAreFixed) {
  EXPECT_EQ(IPL_OK, 0);
  EXPECT_EQ(IPL_E_TIMEOUT, -1);
  EXPECT_EQ(IPL_E_INVALID, -2);
  EXPECT_EQ(IPL_E_NOT_HELD, -3);
  EXPECT_EQ(IPL_E_WOULD_DEADLOCK, -4);

  // The compiled library returns the same numbers.
  temp_dir dir;
  EXPECT_EQ(ipl_open(nullptr, 0, nullptr), -2);
  handle_guard first(open_ok(dir.path("pinned.lock")));
  handle_guard second(open_ok(dir.path("pinned.lock")));
  ASSERT_NE(first.lock, nullptr);
  ASSERT_NE(second.lock, nullptr);
  EXPECT_EQ(ipl_release(first.lock), -3);
  EXPECT_EQ(ipl_acquire(first.lock, 0), 0);
  EXPECT_EQ(ipl_acquire(first.lock, 0), -4);
  EXPECT_EQ(ipl_acquire(second.lock, 0), -1);
  EXPECT_EQ(ipl_release(first.lock), 0);
}

// ---- 10. Symlinks -------------------------------------------------------------------
#ifndef _WIN32

// Catches: a symlink replaced by a new file (O_NOFOLLOW, unlink+create) so
// the two names lock different files.
TEST(ApiSymlink, LockThroughSymlinkLocksTheTarget) {
  temp_dir dir;
  const std::string target = dir.path("real.lock");
  const std::string link = dir.path("link.lock");
  write_file(target, "");
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0) << strerror(errno);

  handle_guard via_link(open_ok(link));
  handle_guard direct(open_ok(target));
  ASSERT_NE(via_link.lock, nullptr);
  ASSERT_NE(direct.lock, nullptr);
  ASSERT_EQ(ipl_acquire(via_link.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(direct.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(via_link.lock), IPL_OK);
  ASSERT_EQ(ipl_acquire_read(direct.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire(via_link.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release_read(direct.lock), IPL_OK);

  struct stat st {};
  ASSERT_EQ(lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the symlink was replaced";
}

// Catches: a symlinked parent folder not followed (or "created" over).
TEST(ApiSymlink, LockThroughSymlinkedFolderLocksTheSameFile) {
  temp_dir dir;
  ASSERT_EQ(mkdir(dir.path("real_dir").c_str(), 0755), 0);
  ASSERT_EQ(symlink(dir.path("real_dir").c_str(), dir.path("link_dir").c_str()), 0);

  handle_guard via_link(open_ok(dir.path("link_dir/lock")));
  handle_guard direct(open_ok(dir.path("real_dir/lock")));
  ASSERT_NE(via_link.lock, nullptr);
  ASSERT_NE(direct.lock, nullptr);
  ASSERT_EQ(ipl_acquire(direct.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire(via_link.lock, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(direct.lock), IPL_OK);
}

// Catches: a dangling symlink at the path refused with ENOENT (O_EXCL never
// follows a link: EEXIST, then a plain open says ENOENT) where fasteners
// and flock(1) create the file it points to; or folders created for the
// target; or a relative target resolved against the working folder.
TEST(ApiSymlink, DanglingSymlinkCreatesItsTarget) {
  temp_dir dir;
  ASSERT_EQ(mkdir(dir.path("sub").c_str(), 0755), 0);
  const std::string link = dir.path("sub/link.lock");
  ASSERT_EQ(symlink("target.lock", link.c_str()), 0) << strerror(errno);  // relative
  for (int round = 0; round < 2; ++round) {  // created, then opened through the link
    SCOPED_TRACE("round " + std::to_string(round));
    const uint32_t create_mode = 0640u;
    ipl_lock *lock = nullptr;
    int os_error = -1;
    ASSERT_EQ(ipl_open_mode(link.c_str(), 0, create_mode, &lock, &os_error), IPL_OK)
        << "os_error " << os_error;
    handle_guard via_link(lock);
    struct stat st {};
    ASSERT_EQ(stat(dir.path("sub/target.lock").c_str(), &st), 0) << "the target was not created";
    EXPECT_EQ(st.st_mode & 0777u, create_mode);
    handle_guard direct(open_ok(dir.path("sub/target.lock")));
    ASSERT_EQ(ipl_acquire(via_link.lock, 0), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(direct.lock, 0), IPL_E_TIMEOUT) << "two files were locked";
    EXPECT_EQ(ipl_release(via_link.lock), IPL_OK);
    ASSERT_EQ(lstat(link.c_str(), &st), 0);
    EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the symlink was replaced";
  }
  // A link into a missing folder: libipl creates no folder for it.
  const std::string far_link = dir.path("far.lock");
  ASSERT_EQ(symlink(dir.path("nowhere/target.lock").c_str(), far_link.c_str()), 0);
  int os_error = -1;
  EXPECT_TRUE(open_fails_with(far_link, 0, IPL_E_OS, &os_error));
  EXPECT_EQ(os_error, ENOENT);
  EXPECT_FALSE(exists(dir.path("nowhere")));
}

#endif  // !_WIN32 (symlinks need a privilege on Windows)

#ifdef _WIN32
// ---- 10b. UTF-8 paths (Windows) ----------------------------------------------------

// Catches: the UTF-8 path handed to an ANSI call (CreateFileA, the C
// runtime's narrow open): the file would get a mangled name, so the name
// below would not exist and a second handle would lock another file.
TEST(ApiUtf8Path, NonAsciiNamesAreUtf8) {
  temp_dir dir;
  const std::string folder = dir.path("d\xc3\xa9j\xc3\xa0-vu");           // "déjà-vu"
  const std::string path = folder + "/\xe6\x97\xa5\xe6\x9c\xac-\xf0\x9f\x94\x92.lock";  // CJK + U+1F512
  handle_guard first(open_ok(path));
  ASSERT_NE(first.lock, nullptr);
  EXPECT_TRUE(exists(folder)) << "the folder was not created under its UTF-8 name";
  EXPECT_TRUE(exists(path)) << "the file was not created under its UTF-8 name";
  handle_guard second(open_ok(path, IPL_OPEN_NO_CREATE));
  ASSERT_NE(second.lock, nullptr);
  ASSERT_EQ(ipl_acquire(first.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(second.lock, 0), IPL_E_TIMEOUT);
}

// Catches: invalid UTF-8 passed on (replaced by U+FFFD, or read as ANSI) so
// that some other file is locked, instead of a clear failure.
TEST(ApiUtf8Path, InvalidUtf8IsAnOsError) {
  temp_dir dir;
  int os_error = 0;
  EXPECT_TRUE(open_fails_with(dir.path("bad-\xff\xfe.lock"), 0, IPL_E_OS, &os_error));
  EXPECT_EQ(os_error, 1113);  // ERROR_NO_UNICODE_TRANSLATION
  EXPECT_TRUE(open_fails_with(dir.path("cut-\xc3"), 0, IPL_E_OS));
}
#endif

// ---- 11. Relative paths --------------------------------------------------------------

// Catches: relative paths rejected, resolved against the wrong folder, or
// folder creation that only handles absolute paths.
TEST(ApiRelativePath, RelativePathLocksTheSameFile) {
  temp_dir dir;
  const std::pair<std::string, std::string> cases[] = {
      {"plain.lock", dir.path("plain.lock")},
      {"./dotted.lock", dir.path("dotted.lock")},
      {"made/here/nested.lock", dir.path("made/here/nested.lock")},
  };
  for (const auto &relative_and_absolute : cases) {
    SCOPED_TRACE(relative_and_absolute.first);
    child_process helper =
        child_process::helper("api_relative_lock", {dir.root(), relative_and_absolute.first});
    std::string got;
    ASSERT_TRUE(helper.expect_line("locked", kBound, &got)) << got;
    handle_guard absolute(open_ok(relative_and_absolute.second, IPL_OPEN_NO_CREATE));
    ASSERT_NE(absolute.lock, nullptr) << "the relative path created another file";
    EXPECT_EQ(ipl_acquire_read(absolute.lock, 0), IPL_E_TIMEOUT);
    helper.write_line("release");
    EXPECT_EQ(ipltest::describe_status(helper.wait()), 0);
    EXPECT_EQ(ipl_acquire(absolute.lock, 0), IPL_OK);
  }
}

#ifndef _WIN32
// Catches: relative paths with ".." components mishandled (in this process,
// against its own working folder).
TEST(ApiRelativePath, RelativePathFromCurrentFolder) {
  temp_dir dir;
  const std::string absolute = dir.path("from_cwd.lock");
  const std::string relative =
      std::filesystem::relative(absolute, std::filesystem::current_path()).string();
  ASSERT_FALSE(relative.empty());
  ASSERT_NE(relative[0], '/');
  handle_guard via_relative(open_ok(relative));
  handle_guard via_absolute(open_ok(absolute, IPL_OPEN_NO_CREATE));
  ASSERT_NE(via_relative.lock, nullptr);
  ASSERT_NE(via_absolute.lock, nullptr);
  ASSERT_EQ(ipl_acquire(via_relative.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire(via_absolute.lock, 0), IPL_E_TIMEOUT);
}
#endif

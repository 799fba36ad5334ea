// SPDX-License-Identifier: MIT
// ipl_open_fd and IPL_OPEN_INHERITABLE (libipl 0.2.0, POSIX only): locks
// that belong to an open file description which other processes share.
//
// ipl_open_fd makes a handle over the caller's descriptor: its lock is the
// description's, so it outlives the handle's process while any copy of the
// descriptor stays open, and a later handle over the same description
// starts out holding it (what `iplock -u 9` relies on). IPL_OPEN_INHERITABLE
// leaves the lock's descriptor open across exec and fork, so a child keeps
// the lock after its parent dies, as with flock(1). Both need Linux OFD
// locks: the classic backend answers IPL_E_UNSUPPORTED and creates nothing,
// and the tests of the OFD behaviour skip there, saying why.
//
// "Held elsewhere" is always asked of another process (try_from_other_process),
// never of a handle of the process under test.
#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

extern char **environ;

namespace {

using namespace ipltest;
using steady = std::chrono::steady_clock;

const bool kOfdBuild = std::string(IPL_POSIX_LOCK_KIND) == "ofd";
const char kNeedsOfd[] =
    "needs Linux OFD locks: the classic backend's locks belong to a process, not to an open "
    "file description, so ipl_open_fd and IPL_OPEN_INHERITABLE are IPL_E_UNSUPPORTED there "
    "(ApiOpenFdClassic, ApiInheritableClassic check that)";

bool file_exists(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// True once another process can take `path` exclusive, within kBound (a
// process that ends releases its locks a moment after its pipes close).
bool wait_until_free(const std::string &path) {
  const auto deadline = steady::now() + kBound;
  while (steady::now() < deadline) {
    if (try_from_other_process(path, lock_mode::exclusive) == IPL_OK) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// ---- Helpers (child side) ---------------------------------------------------

// args: FD MODE. A handle over the inherited descriptor FD takes MODE
// (one try), says "rc STATUS", and the process ends without ipl_close.
IPL_TEST_HELPER(open_fd_lock_then_exit) {
  if (args.size() != 2) return 90;
  lock_mode mode;
  if (!mode_from_name(args[1], &mode)) return 91;
  ipl_lock *handle = nullptr;
  int status = ipl_open_fd(std::atoi(args[0].c_str()), 0, &handle, nullptr);
  if (status == IPL_OK) status = acquire_in_mode(handle, mode, 0);
  helper_say("rc " + std::to_string(status));
  return 0;  // the handle is never closed: the description keeps the lock
}

// Waits until the file PATH exists (at most kBound), then ends. Only stat()
// and nanosleep(): it also runs in a forked child.
int wait_for_file(const char *path) {
  struct timespec step = {0, 5 * 1000 * 1000};
  for (long waited_ms = 0; waited_ms < long(kBound.count()); waited_ms += 5) {
    struct stat st;
    if (stat(path, &st) == 0) return 0;
    nanosleep(&step, nullptr);
  }
  return 3;
}

// args: PATH. The exec'd child of inheritable_holder.
IPL_TEST_HELPER(open_fd_wait_for_file) {
  if (args.size() != 1) return 90;
  return wait_for_file(args[0].c_str());
}

// args: PATH FLAGS MODE HOW GO. Opens PATH with FLAGS (a number), takes
// MODE, then starts a child that keeps running until the file GO exists:
// HOW "exec" re-executes this binary (open_fd_wait_for_file), "fork" forks
// without exec. Says "child PID" (or "failed STEP STATUS"), then obeys
// "release" ("rc STATUS"), "acquire" ("rc STATUS") and "close" ("closed")
// until EOF.
IPL_TEST_HELPER(inheritable_holder) {
  if (args.size() != 5) return 90;
  lock_mode mode;
  if (!mode_from_name(args[2], &mode)) return 91;
  ipl_lock *handle = nullptr;
  int status = ipl_open_ex(args[0].c_str(), uint32_t(std::atol(args[1].c_str())), &handle, nullptr);
  if (status != IPL_OK) {
    helper_say("failed open " + std::to_string(status));
    return 0;
  }
  status = acquire_in_mode(handle, mode, 0);
  if (status != IPL_OK) {
    helper_say("failed acquire " + std::to_string(status));
    return 0;
  }
  const std::string go = args[4];
  pid_t child = -1;
  if (args[3] == "fork") {
    child = fork();
    if (child == 0) _exit(wait_for_file(go.c_str()));
  } else {
    const std::string self = self_exe();
    std::vector<char *> argv{const_cast<char *>(self.c_str()), const_cast<char *>("--ipl-helper"),
                             const_cast<char *>("open_fd_wait_for_file"),
                             const_cast<char *>(go.c_str()), nullptr};
    if (posix_spawn(&child, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) child = -1;
  }
  if (child <= 0) {
    helper_say("failed spawn 0");
    return 0;
  }
  helper_say("child " + std::to_string(child));
  std::string line;
  while (helper_hear(&line)) {
    if (line == "release") helper_say("rc " + std::to_string(release_in_mode(handle, mode)));
    if (line == "acquire") helper_say("rc " + std::to_string(acquire_in_mode(handle, mode, 0)));
    if (line == "close") {
      ipl_close(handle);
      handle = nullptr;
      helper_say("closed");
    }
  }
  return 0;
}

// ---- Test side --------------------------------------------------------------

// Opens `path` (created) with `access`, close-on-exec.
int open_file(const std::string &path, int access) {
  return open(path.c_str(), access | O_CREAT | O_CLOEXEC, 0666);
}

// Starts helper `name` with descriptor `fd` inherited (it is close-on-exec
// again once the helper runs, so no other process of the test gets it).
child_process helper_with_descriptor(int fd, const std::string &name,
                                     const std::vector<std::string> &args) {
  fcntl(fd, F_SETFD, 0);
  child_process child = child_process::helper(name, args);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return child;
}

// In another process: a handle over a copy of fd's description takes `mode`
// and that process ends without closing it. True when it got the lock.
bool lock_from_a_process_that_exits(int fd, lock_mode mode) {
  child_process locker =
      helper_with_descriptor(fd, "open_fd_lock_then_exit", {std::to_string(fd), mode_name(mode)});
  const bool locked = locker.expect_line("rc 0");
  EXPECT_EQ(describe_status(locker.wait()), 0);
  return locked;
}

// A child of a forked test process reports through its exit code only.
int exit_code_of(pid_t child) {
  if (child <= 0) return -1;
  const auto deadline = steady::now() + kBound;
  int status = 0;
  while (steady::now() < deadline) {
    const pid_t done = waitpid(child, &status, WNOHANG);
    if (done == child) return describe_status(status);
    if (done < 0) return -1;
    std::this_thread::sleep_for(2ms);
  }
  kill(child, SIGKILL);
  waitpid(child, &status, 0);
  return -1;
}

// ---- Bad input (every build) ----------------------------------------------------

// Catches: argument checks that come after the backend (a classic build
// saying IPL_E_UNSUPPORTED, or anything touching fd -1), a stale *out, an
// os_error left unset, or IPL_OPEN_* flags accepted where none are defined.
TEST(ApiOpenFdBadInput, InvalidArgumentsAreInvalidOnEveryBackend) {
  temp_dir dir;
  const int fd = open_file(dir.path("lock"), O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *out = reinterpret_cast<ipl_lock *>(&dir);  // never a real handle
  int os_error = 12345;
  EXPECT_EQ(ipl_open_fd(-1, 0, &out, &os_error), IPL_E_INVALID);
  EXPECT_EQ(out, nullptr);
  EXPECT_EQ(os_error, 0);
  for (const uint32_t flags : {IPL_OPEN_NO_CREATE, IPL_OPEN_NO_CREATE_DIRS, IPL_OPEN_INHERITABLE,
                               0x80000000u}) {
    out = reinterpret_cast<ipl_lock *>(&dir);
    EXPECT_EQ(ipl_open_fd(fd, flags, &out, nullptr), IPL_E_INVALID) << flags;
    EXPECT_EQ(out, nullptr) << flags;
  }
  EXPECT_EQ(ipl_open_fd(fd, 0, nullptr, &os_error), IPL_E_INVALID);
  close(fd);
}

// ---- ipl_open_fd (OFD) ------------------------------------------------------------

// Catches: a closed descriptor accepted (a handle over nothing) or reported
// as something else than IPL_E_OS with EBADF; a directory, FIFO, pipe or
// device accepted, or reported with an os_error (libipl found it, no system
// call failed).
TEST(ApiOpenFd, UnusableDescriptorsAreRefused) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const int closed = open_file(dir.path("lock"), O_RDWR);
  ASSERT_GE(closed, 0);
  ASSERT_EQ(close(closed), 0);
  ipl_lock *out = nullptr;
  int os_error = 0;
  EXPECT_EQ(ipl_open_fd(closed, 0, &out, &os_error), IPL_E_OS);
  EXPECT_EQ(os_error, EBADF);
  EXPECT_EQ(out, nullptr);

  ASSERT_EQ(mkfifo(dir.path("fifo").c_str(), 0600), 0);
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  const std::vector<int> not_regular = {
      open(dir.root().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC),
      open(dir.path("fifo").c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC),
      open("/dev/null", O_RDWR | O_CLOEXEC), pipe_fds[0]};
  for (const int fd : not_regular) {
    ASSERT_GE(fd, 0);
    os_error = -1;
    EXPECT_EQ(ipl_open_fd(fd, 0, &out, &os_error), IPL_E_NOT_REGULAR_FILE) << fd;
    EXPECT_EQ(os_error, 0) << fd;
    EXPECT_EQ(out, nullptr) << fd;
    close(fd);
  }
  close(pipe_fds[1]);
}

// Catches: the lock taken on anything but fd's description (a process-owned
// classic lock would not exclude another handle of this process), one that
// excludes nobody, or shared taken as exclusive.
TEST(ApiOpenFd, LockExcludesOtherProcessesAndOtherHandles) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fd = open_file(path, O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *handle = nullptr;
  ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
  ipl_lock *other = nullptr;
  ASSERT_EQ(ipl_open(path.c_str(), 0, &other), IPL_OK);

  ASSERT_EQ(ipl_acquire(handle, 0), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_acquire_read(other, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_acquire(handle, 0), IPL_E_WOULD_DEADLOCK);
  ASSERT_EQ(ipl_release(handle), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);

  ASSERT_EQ(ipl_acquire_read(handle, 0), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_acquire(other, 0), IPL_E_TIMEOUT);
  ASSERT_EQ(ipl_release_read(handle), IPL_OK);
  EXPECT_EQ(ipl_acquire(other, 0), IPL_OK);
  EXPECT_EQ(ipl_acquire_read(handle, 0), IPL_E_TIMEOUT);
  ipl_close(other);
  ipl_close(handle);
  close(fd);
}

// Catches: the access check missing (fcntl's EBADF surfacing as IPL_E_OS)
// or wrong (a read-only descriptor refused a shared lock); an upgrade on a
// read-only descriptor that is not IPL_E_ACCESS; an O_PATH descriptor
// (neither readable nor writable) taken for a readable one.
TEST(ApiOpenFd, AccessModeDecidesTheModes) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  {
    const int fd = open_file(path, O_RDONLY);
    ASSERT_GE(fd, 0);
    ipl_lock *handle = nullptr;
    ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
    EXPECT_EQ(ipl_acquire(handle, 0), IPL_E_ACCESS);
    EXPECT_EQ(ipl_os_error(handle), EBADF);
    ASSERT_EQ(ipl_acquire_read(handle, 0), IPL_OK);
    EXPECT_EQ(ipl_upgrade(handle, 0), IPL_E_ACCESS);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
    ipl_close(handle);
    close(fd);
  }
  {
    const int fd = open_file(path, O_WRONLY);
    ASSERT_GE(fd, 0);
    ipl_lock *handle = nullptr;
    ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(handle, 0), IPL_E_ACCESS);
    EXPECT_EQ(ipl_os_error(handle), EBADF);
    ASSERT_EQ(ipl_acquire(handle, 0), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
    ipl_close(handle);
    close(fd);
  }
  {
    const int fd = open(path.c_str(), O_PATH | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ipl_lock *handle = nullptr;
    ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(handle, 0), IPL_E_ACCESS);
    EXPECT_EQ(ipl_os_error(handle), EBADF);
    EXPECT_EQ(ipl_acquire(handle, 0), IPL_E_ACCESS);
    ipl_close(handle);
    close(fd);
  }
}

// Catches: ipl_close closing the caller's descriptor (or changing its
// flags), and ipl_close leaving the lock on the description, which the
// still open descriptor would keep alive.
TEST(ApiOpenFd, CloseReleasesButNeverClosesTheDescriptor) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (const int fd_flags : {0, FD_CLOEXEC}) {
    const int fd = open_file(path, O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fcntl(fd, F_SETFD, fd_flags), 0);
    const int status_flags = fcntl(fd, F_GETFL);
    for (const bool hold : {false, true}) {
      ipl_lock *handle = nullptr;
      ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
      if (hold) {
        ASSERT_EQ(ipl_acquire(handle, 0), IPL_OK);
      }
      ipl_close(handle);
      EXPECT_EQ(fcntl(fd, F_GETFD), fd_flags) << "the descriptor was closed or changed";
      EXPECT_EQ(fcntl(fd, F_GETFL), status_flags);
      EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK)
          << "ipl_close left the lock on the description";
    }
    close(fd);
  }
}

// Catches: ipl_remove unlinking through a handle that has no path (or
// saying anything but IPL_E_UNSUPPORTED), the refusal dropping the lock;
// ipl_check failing for want of a path to compare.
TEST(ApiOpenFd, NoPathSoNoRemove) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fd = open_file(path, O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *handle = nullptr;
  ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
  EXPECT_EQ(ipl_remove(handle), IPL_E_NOT_HELD);
  ASSERT_EQ(ipl_acquire(handle, 0), IPL_OK);
  EXPECT_EQ(ipl_check(handle), IPL_OK);
  EXPECT_EQ(ipl_remove(handle), IPL_E_UNSUPPORTED);
  EXPECT_TRUE(file_exists(path));
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the refused remove dropped the lock";
  EXPECT_EQ(ipl_release(handle), IPL_OK);
  ipl_close(handle);
  close(fd);
}

// Catches: a forked child's copy of the handle releasing or closing the
// parent's lock (the child shares the description: an unlock there is the
// parent's unlock), or using the handle instead of IPL_E_UNSUPPORTED.
TEST(ApiOpenFd, ForkedChildCannotTouchTheParentsLock) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fd = open_file(path, O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *handle = nullptr;
  ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
  ASSERT_EQ(ipl_acquire(handle, 0), IPL_OK);
  const pid_t child = fork();
  if (child == 0) {
    if (ipl_release(handle) != IPL_E_NOT_HELD) _exit(1);
    if (ipl_acquire(handle, 0) != IPL_E_UNSUPPORTED) _exit(2);
    if (ipl_acquire_read(handle, 0) != IPL_E_UNSUPPORTED) _exit(3);
    int state = IPL_STATE_FREE;
    if (ipl_query(handle, &state, nullptr) != IPL_E_UNSUPPORTED) _exit(4);
    ipl_close(handle);
    _exit(0);
  }
  ASSERT_GT(child, 0);
  EXPECT_EQ(exit_code_of(child), 0);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the child let go of the parent's lock";
  EXPECT_EQ(ipl_release(handle), IPL_OK);
  ipl_close(handle);
  close(fd);
}

// ---- The lock belongs to the description (OFD, real processes) -------------------

// Catches: a lock that ends with the process of the handle that took it (a
// classic lock, or an unlock at exit) although a copy of the description
// stays open here, and one that outlives the last copy.
TEST(ConflictOpenFd, LockLivesWhileACopyOfTheDescriptionIsOpen) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (const lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    const int fd = open_file(path, O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(lock_from_a_process_that_exits(fd, mode));
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "the lock ended with the process that took it";
    EXPECT_EQ(try_from_other_process(path, lock_mode::shared),
              mode == lock_mode::shared ? IPL_OK : IPL_E_TIMEOUT);
    close(fd);
    EXPECT_TRUE(wait_until_free(path)) << "the lock outlived the last copy of the descriptor";
  }
}

// Catches: a handle over a description that holds a lock already starting
// out as holding nothing (release would be IPL_E_NOT_HELD and the lock
// would stay: `iplock -u 9` broken), or holding the wrong mode.
TEST(ConflictOpenFd, NewHandleSeesTheDescriptionsLockAndReleasesIt) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fd = open_file(path, O_RDWR);
  ASSERT_GE(fd, 0);
  for (const lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    ASSERT_TRUE(lock_from_a_process_that_exits(fd, mode));
    ipl_lock *handle = nullptr;
    ASSERT_EQ(ipl_open_fd(fd, 0, &handle, nullptr), IPL_OK);
    EXPECT_EQ(ipl_acquire_read(handle, 0), IPL_E_WOULD_DEADLOCK);
    if (mode == lock_mode::shared) {
      EXPECT_EQ(ipl_release(handle), IPL_E_NOT_HELD);
      EXPECT_EQ(ipl_release_read(handle), IPL_OK);
    } else {
      EXPECT_EQ(ipl_release_read(handle), IPL_E_NOT_HELD);
      EXPECT_EQ(ipl_release(handle), IPL_OK);
    }
    // fd is still open here: only the release can have freed it.
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
    EXPECT_EQ(ipl_release(handle), IPL_E_NOT_HELD);
    ipl_close(handle);
  }
  close(fd);
}

// Catches: a handle over a descriptor that is unusable for good after
// IPL_E_LOST (it has no path to reopen: it must lock the same descriptor
// again), or one that still "holds" after another handle over the same
// description released the lock.
TEST(ConflictOpenFd, AfterALossTheHandleLocksTheDescriptorAgain) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fd = open_file(path, O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *first = nullptr;
  ipl_lock *second = nullptr;
  ASSERT_EQ(ipl_open_fd(fd, 0, &first, nullptr), IPL_OK);
  ASSERT_EQ(ipl_acquire(first, 0), IPL_OK);
  ASSERT_EQ(ipl_open_fd(fd, 0, &second, nullptr), IPL_OK);  // sees the lock: holds it
  ASSERT_EQ(ipl_release(second), IPL_OK);                   // ends it for both
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(ipl_check(first), IPL_E_LOST);
  EXPECT_EQ(ipl_release(first), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_acquire(first, 0), IPL_OK) << "the handle must lock its descriptor again";
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_check(first), IPL_OK);
  ASSERT_EQ(ipl_release(first), IPL_OK);
  ipl_close(second);
  // The caller closed the descriptor: a clear EBADF, never a crash.
  ASSERT_EQ(ipl_acquire(first, 0), IPL_OK);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ipl_check(first), IPL_E_LOST);
  EXPECT_EQ(ipl_acquire(first, 0), IPL_E_OS);
  EXPECT_EQ(ipl_os_error(first), EBADF);
  ipl_close(first);
}

// ---- IPL_OPEN_INHERITABLE (OFD) ---------------------------------------------------

// Catches: the flag not reaching open() (descriptor close-on-exec), the
// descriptor landing on 0-2, or close-on-exec lost without the flag.
TEST(ApiInheritable, DescriptorIsInheritableOnlyWithTheFlag) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (const uint32_t flags : {0u, IPL_OPEN_INHERITABLE}) {
    const int fds_before = open_fd_count();
    ipl_lock *handle = nullptr;
    ASSERT_EQ(ipl_open(path.c_str(), flags, &handle), IPL_OK);
    struct stat wanted {};
    ASSERT_EQ(stat(path.c_str(), &wanted), 0);
    int found = -1;
    for (int fd = 0; fd < 1024 && found < 0; ++fd) {
      struct stat st {};
      if (fstat(fd, &st) == 0 && st.st_dev == wanted.st_dev && st.st_ino == wanted.st_ino) {
        found = fd;
      }
    }
    ASSERT_GT(found, 2);
    EXPECT_EQ(fcntl(found, F_GETFD) & FD_CLOEXEC, flags ? 0 : FD_CLOEXEC) << flags;
    ipl_close(handle);
    EXPECT_EQ(open_fd_count(), fds_before) << "ipl_close left the descriptor open";
  }
}

struct inheritance_case {
  bool inheritable;
  const char *how;  // "exec" or "fork"
};

void PrintTo(const inheritance_case &c, std::ostream *out) {
  *out << (c.inheritable ? "IPL_OPEN_INHERITABLE, " : "no flag, ") << c.how;
}

class ConflictInheritable : public ::testing::TestWithParam<inheritance_case> {};

// Catches, with the flag: the lock dying with a SIGKILLed holder although
// its child still has the descriptor (exec: close-on-exec; fork: the
// descriptor closed in children as libipl's own are), or outliving the
// child. Without it: the descriptor leaking into the child, which would
// keep the lock alive after the holder's death.
TEST_P(ConflictInheritable, ChildKeepsTheLockAfterTheHolderIsKilled) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  const inheritance_case c = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  for (const lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    // The child ends once this file exists (or after kBound, orphaned).
    const std::string go = dir.path(std::string("go-") + mode_name(mode));
    child_process holder = child_process::helper(
        "inheritable_holder",
        {path, std::to_string(c.inheritable ? IPL_OPEN_INHERITABLE : 0u), mode_name(mode), c.how,
         go});
    std::string line;
    ASSERT_TRUE(holder.read_line(&line));
    ASSERT_EQ(line.rfind("child ", 0), 0u) << line;
    const pid_t child = pid_t(std::atol(line.c_str() + 6));
    ASSERT_GT(child, 0);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
    holder.send_signal(SIGKILL);
    EXPECT_EQ(describe_status(holder.wait()), -1000 - SIGKILL);
    if (c.inheritable) {
      EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
          << "the lock died with its holder while the child has the descriptor";
      EXPECT_EQ(kill(child, 0), 0) << "the child ended early";
      std::ofstream(go).close();
      EXPECT_TRUE(wait_until_free(path)) << "the lock outlived the child";
    } else {
      EXPECT_TRUE(wait_until_free(path)) << "the child kept the lock without the flag";
      EXPECT_EQ(kill(child, 0), 0) << "the child ended early: nothing was tested";
      std::ofstream(go).close();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictInheritable,
                         ::testing::Values(inheritance_case{true, "exec"},
                                           inheritance_case{true, "fork"},
                                           inheritance_case{false, "exec"},
                                           inheritance_case{false, "fork"}),
                         [](const ::testing::TestParamInfo<inheritance_case> &info) {
                           return std::string(info.param.inheritable ? "Inheritable" : "Plain") +
                                  (std::string(info.param.how) == "exec" ? "Exec" : "Fork");
                         });

// Catches: a release (or ipl_close) that relies on closing the descriptor,
// which an inheriting child keeps open: the documented "explicit release or
// ipl_close still ends it at once" would not hold.
TEST(ConflictInheritableRelease, ReleaseAndCloseEndTheLockThoughAChildHasIt) {
  if (!kOfdBuild) GTEST_SKIP() << kNeedsOfd;
  temp_dir dir;
  const std::string path = dir.path("lock");
  const std::string go = dir.path("go");
  child_process holder = child_process::helper(
      "inheritable_holder",
      {path, std::to_string(IPL_OPEN_INHERITABLE), "exclusive", "exec", go});
  std::string line;
  ASSERT_TRUE(holder.read_line(&line));
  ASSERT_EQ(line.rfind("child ", 0), 0u) << line;
  holder.write_line("release");
  EXPECT_TRUE(holder.expect_line("rc 0"));
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK)
      << "the release did not end the lock the child inherited";
  holder.write_line("acquire");
  EXPECT_TRUE(holder.expect_line("rc 0"));
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  holder.write_line("close");
  EXPECT_TRUE(holder.expect_line("closed"));
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK)
      << "ipl_close did not end the lock the child inherited";
  std::ofstream(go).close();
}

// ---- The classic backend --------------------------------------------------------

// Catches: a classic build that hands out a handle whose lock would belong
// to the process (and so die with it, or be dropped by any close), instead
// of refusing; a missing os_error reset or a stale *out.
TEST(ApiOpenFdClassic, RefusedWithUnsupported) {
  if (kOfdBuild) GTEST_SKIP() << "OFD build: ipl_open_fd is supported (ApiOpenFd)";
  temp_dir dir;
  const int fd = open_file(dir.path("lock"), O_RDWR);
  ASSERT_GE(fd, 0);
  ipl_lock *out = reinterpret_cast<ipl_lock *>(&dir);
  int os_error = 12345;
  EXPECT_EQ(ipl_open_fd(fd, 0, &out, &os_error), IPL_E_UNSUPPORTED);
  EXPECT_EQ(out, nullptr);
  EXPECT_EQ(os_error, 0);
  EXPECT_NE(fcntl(fd, F_GETFD), -1) << "the descriptor was closed";
  close(fd);
}

// Catches: a classic build that accepts IPL_OPEN_INHERITABLE (the child
// would get a descriptor but never the lock), or that creates the lock file
// or its folders before refusing.
TEST(ApiInheritableClassic, RefusedWithUnsupportedAndCreatesNothing) {
  if (kOfdBuild) GTEST_SKIP() << "OFD build: IPL_OPEN_INHERITABLE is supported (ApiInheritable)";
  temp_dir dir;
  const std::string path = dir.path("sub/lock");
  ipl_lock *out = reinterpret_cast<ipl_lock *>(&dir);
  int os_error = 12345;
  EXPECT_EQ(ipl_open_ex(path.c_str(), IPL_OPEN_INHERITABLE, &out, &os_error), IPL_E_UNSUPPORTED);
  EXPECT_EQ(out, nullptr);
  EXPECT_EQ(os_error, 0);
  EXPECT_EQ(ipl_open_mode(path.c_str(), IPL_OPEN_INHERITABLE, 0600, &out, nullptr),
            IPL_E_UNSUPPORTED);
  EXPECT_FALSE(file_exists(dir.path("sub")));
}

}  // namespace

// SPDX-License-Identifier: MIT
// fork() without exec, and descriptor hygiene (POSIX only).
//
// A lock belongs to the process that took it: a forked child inherits
// handles that hold nothing (release is IPL_E_NOT_HELD, close never touches
// the parent's lock, acquire works as on a fresh handle), and the parent's
// release, close or death frees the lock whatever its children do, also
// after glibc's _Fork(), which runs no atfork handlers. The lock descriptor
// never lands on 0, 1 or 2, and failed attempts while another handle of the
// process holds the lock open no descriptors for good (the classic backend
// parks descriptors; it must reuse them).
//
// "Held elsewhere" is always asked of a third process (lock_agent), so
// neither the parent's nor the child's in-process state can answer for the
// kernel. A child forked straight from a test runs only async-signal-safe
// calls and libipl until _exit(), reports binary records over a pipe, and
// never returns into GoogleTest; anything fancier (threads at the fork,
// closed standard streams, a small RLIMIT_NOFILE) runs in a helper process.
#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

// glibc >= 2.34 declares _Fork() in <unistd.h> (g++ defines _GNU_SOURCE).
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define IPL_TEST_HAVE_UNDERSCORE_FORK 1
#else
#define IPL_TEST_HAVE_UNDERSCORE_FORK 0
#endif

namespace {

using namespace ipltest;
using steady = std::chrono::steady_clock;

// A child that should be blocked is given this long to prove it is not.
constexpr auto kStaysBlocked = 300ms;

// ---- Async-signal-safe tools for forked children ---------------------------------

int64_t monotonic_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// A line built without allocating, for forked children of helpers.
class flat_line {
 public:
  flat_line &text(const char *s) {
    while (*s && used_ < sizeof buf_ - 1) buf_[used_++] = *s++;
    return *this;
  }
  flat_line &number(int64_t value) {
    char digits[24];
    int n = 0;
    const bool negative = value < 0;
    uint64_t magnitude = negative ? uint64_t(0) - uint64_t(value) : uint64_t(value);
    do {
      digits[n++] = char('0' + magnitude % 10);
      magnitude /= 10;
    } while (magnitude != 0);
    if (negative) text("-");
    while (n > 0 && used_ < sizeof buf_ - 1) buf_[used_++] = digits[--n];
    return *this;
  }
  // Writes the line and a newline to fd.
  void send(int fd) {
    buf_[used_++] = '\n';
    size_t done = 0;
    while (done < used_) {
      const ssize_t n = write(fd, buf_ + done, used_ - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += size_t(n);
    }
    used_ = 0;
  }

 private:
  char buf_[512];
  size_t used_ = 0;
};

// The child's end of a forked_child: records of (step, value) to the parent,
// plain numbers from it. Only write(), read(), poll().
class child_end {
 public:
  child_end(int to_parent, int from_parent) : to_parent_(to_parent), from_parent_(from_parent) {}

  void say(int32_t step, int64_t value) {
    char record[12];
    memcpy(record, &step, 4);
    memcpy(record + 4, &value, 8);
    size_t done = 0;
    while (done < sizeof record) {
      const ssize_t n = write(to_parent_, record + done, sizeof record - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += size_t(n);
    }
  }

  // Waits (bounded) for the parent's next number; false on EOF or timeout.
  bool hear(int32_t *value, int64_t bound_ms = kBound.count()) {
    const int64_t deadline = monotonic_ms() + bound_ms;
    char buf[4];
    size_t got = 0;
    while (got < sizeof buf) {
      const int64_t left = deadline - monotonic_ms();
      if (left <= 0) return false;
      pollfd pfd{from_parent_, POLLIN, 0};
      const int ready = poll(&pfd, 1, int(left));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      const ssize_t n = read(from_parent_, buf + got, sizeof buf - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      got += size_t(n);
    }
    memcpy(value, buf, 4);
    return true;
  }

  // Waits for the parent to say `expected`; false otherwise.
  bool hear_go(int32_t expected) {
    int32_t value = 0;
    return hear(&value) && value == expected;
  }

 private:
  int to_parent_;
  int from_parent_;
};

// Exit codes of forked children.
constexpr int kChildDone = 0;
constexpr int kChildLostParent = 40;  // the parent's "go" never came
// A record for a step the child skipped (not an ipl status).
constexpr int kNotTried = 2000;
// The longest a forked child (or grandchild) may live, even if the test
// process was killed before it could kill the child.
constexpr unsigned kChildLifetimeSeconds = 3 * kBound.count() / 1000;

enum class fork_call { fork, underscore_fork };

// The test's side of a child made by fork() (or _Fork()) from the test
// process. The child runs body(child_end&) and _exits with its result; it
// never returns into GoogleTest. The destructor kills and reaps it.
class forked_child {
 public:
  template <class Body>
  explicit forked_child(Body body, fork_call how = fork_call::fork) {
    int to_child[2];
    int from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) return;
    if (pipe2(from_child, O_CLOEXEC) != 0) {
      close(to_child[0]);
      close(to_child[1]);
      return;
    }
    fflush(nullptr);  // nothing buffered twice (the child never flushes: _exit)
    pid_t pid = -1;
    if (how == fork_call::fork) {
      pid = fork();
    } else {
#if IPL_TEST_HAVE_UNDERSCORE_FORK
      pid = _Fork();
#endif
    }
    if (pid == 0) {
      // A child that hangs outlives no test run: SIGALRM ends it.
      alarm(kChildLifetimeSeconds);
      close(to_child[1]);
      close(from_child[0]);
      child_end end(from_child[1], to_child[0]);
      _exit(body(end));
    }
    close(to_child[0]);
    close(from_child[1]);
    if (pid < 0) {
      close(to_child[1]);
      close(from_child[0]);
      return;
    }
    pid_ = pid;
    to_child_ = to_child[1];
    from_child_ = from_child[0];
  }
  forked_child(const forked_child &) = delete;
  forked_child &operator=(const forked_child &) = delete;
  ~forked_child() {
    if (to_child_ >= 0) close(to_child_);
    if (from_child_ >= 0) close(from_child_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  // The value of the child's next record, which must be `step`; a failure
  // (and kNoReply) on another step, EOF or timeout.
  int64_t value_of(int32_t step, std::chrono::milliseconds bound = kBound) {
    int32_t got_step = 0;
    int64_t value = 0;
    if (lost_) return kNoReply;  // already reported; do not wait again
    if (!next(&got_step, &value, bound)) {
      lost_ = true;
      ADD_FAILURE() << "the forked child sent nothing for step " << step << " (it hung, or died: "
                    << describe_status(peek_status()) << ")";
      return kNoReply;
    }
    if (got_step != step) {
      ADD_FAILURE() << "the forked child reported step " << got_step << " = " << value
                    << ", expected step " << step;
      return kNoReply;
    }
    return value;
  }

  // True when the child reports nothing within `window` (it is blocked).
  bool silent_for(std::chrono::milliseconds window) {
    if (!buffered_.empty()) return false;
    pollfd pfd{from_child_, POLLIN, 0};
    const auto deadline = steady::now() + window;
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
      if (left.count() <= 0) return true;
      const int ready = poll(&pfd, 1, int(left.count()) + 1);
      if (ready < 0 && errno == EINTR) continue;
      return ready == 0;
    }
  }

  void tell(int32_t value) {
    size_t done = 0;
    const char *bytes = reinterpret_cast<const char *>(&value);
    while (done < sizeof value) {
      const ssize_t n = write(to_child_, bytes + done, sizeof value - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the child is gone; its next record will be missing
      done += size_t(n);
    }
  }

  // True while the child has not exited (it may be a zombie-to-be: we reap).
  bool alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      pid_ = -1;
      exit_status_ = status;
      return false;
    }
    return true;
  }

  // Waits (bounded) for the child to exit: describe_status() of it, or -1
  // after `bound` (the child is then killed).
  int finish(std::chrono::milliseconds bound = kBound) {
    if (pid_ <= 0) return describe_status(exit_status_);
    if (lost_) bound = 0ms;  // it hung once already: kill it now
    const auto deadline = steady::now() + bound;
    do {
      if (!alive()) return describe_status(exit_status_);
      std::this_thread::sleep_for(2ms);
    } while (steady::now() < deadline);
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return -1;
  }

 private:
  bool next(int32_t *step, int64_t *value, std::chrono::milliseconds bound) {
    const auto deadline = steady::now() + bound;
    while (buffered_.size() < 12) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
      if (left.count() <= 0) return false;
      pollfd pfd{from_child_, POLLIN, 0};
      const int ready = poll(&pfd, 1, int(left.count()) + 1);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      char chunk[256];
      const ssize_t n = read(from_child_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      buffered_.append(chunk, size_t(n));
    }
    memcpy(step, buffered_.data(), 4);
    memcpy(value, buffered_.data() + 4, 8);
    buffered_.erase(0, 12);
    return true;
  }

  // The exit status if the child has already ended, else -1 (for messages).
  int peek_status() {
    alive();
    return pid_ > 0 ? -1 : exit_status_;
  }

  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  int exit_status_ = -1;
  bool lost_ = false;  // a record did not come: the child hung or died
  std::string buffered_;
};

// ---- What a third process sees -------------------------------------------------

testing::AssertionResult held_elsewhere(const std::string &path, const char *when) {
  const int status = try_from_other_process(path, lock_mode::exclusive);
  if (status == IPL_E_TIMEOUT) return testing::AssertionSuccess();
  return testing::AssertionFailure() << when << ": a third process's exclusive try gave "
                                     << status_text(status) << ", expected the lock to be held";
}

testing::AssertionResult free_elsewhere(const std::string &path, const char *when) {
  const int status = try_from_other_process(path, lock_mode::exclusive);
  if (status == IPL_OK) return testing::AssertionSuccess();
  return testing::AssertionFailure() << when << ": a third process's exclusive try gave "
                                     << status_text(status) << ", expected the lock to be free";
}

struct handle_closer {
  ipl_lock *lock = nullptr;
  explicit handle_closer(ipl_lock *l) : lock(l) {}
  ~handle_closer() { ipl_close(lock); }
  handle_closer(const handle_closer &) = delete;
  handle_closer &operator=(const handle_closer &) = delete;
};

ipl_lock *open_or_fail(const std::string &path) {
  ipl_lock *lock = nullptr;
  const int status = ipl_open(path.c_str(), 0, &lock);
  EXPECT_EQ(status, IPL_OK) << path << ": " << status_text(status);
  return status == IPL_OK ? lock : nullptr;
}

std::string mode_param_name(const testing::TestParamInfo<lock_mode> &info) {
  return mode_name(info.param);
}

// The lock file's size (-1 when it cannot be read).
long long file_size(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? (long long)st.st_size : -1;
}

// ---- 1. Inherited handles in a forked child ---------------------------------------

// The parent holds the lock in the parameter's mode on handle h and forks.
class ConflictForkInherited : public testing::TestWithParam<lock_mode> {};

// Catches: an inherited handle that still believes it holds the lock, whose
// release unlocks the parent's lock (OFD: the open file description is
// shared, so F_UNLCK from the child drops the parent's lock), or that says
// IPL_OK for a lock the child never took (classic: a stale table copy).
TEST_P(ConflictForkInherited, ChildReleaseIsNotHeldAndTheParentKeepsTheLock) {
  const lock_mode held = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(acquire_in_mode(h.lock, held, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    end.say(1, release_in_mode(h.lock, held));
    end.say(2, release_in_mode(h.lock, held));  // a second try: still nothing held
    return end.hear_go(1) ? kChildDone : kChildLostParent;
  });
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.value_of(1), IPL_E_NOT_HELD) << "release of an inherited handle in the child";
  EXPECT_EQ(child.value_of(2), IPL_E_NOT_HELD);
  EXPECT_TRUE(held_elsewhere(path, "after the child's release, child alive"));
  child.tell(1);
  EXPECT_EQ(child.finish(), kChildDone);
  EXPECT_TRUE(held_elsewhere(path, "after the child exited"));
  // The parent's own handle is untouched.
  EXPECT_EQ(release_in_mode(h.lock, held), IPL_OK);
  EXPECT_TRUE(free_elsewhere(path, "after the parent's release"));
}

// Catches: ipl_close of an inherited handle in the child releasing the
// parent's lock (OFD: F_UNLCK on the shared description before close).
TEST_P(ConflictForkInherited, ChildCloseLeavesTheParentsLockHeld) {
  const lock_mode held = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(acquire_in_mode(h.lock, held, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    ipl_close(h.lock);
    end.say(1, 0);
    return end.hear_go(1) ? kChildDone : kChildLostParent;
  });
  ASSERT_TRUE(child.started());
  ASSERT_EQ(child.value_of(1), 0);
  EXPECT_TRUE(held_elsewhere(path, "after the child's ipl_close, child alive"));
  child.tell(1);
  EXPECT_EQ(child.finish(), kChildDone);
  EXPECT_TRUE(held_elsewhere(path, "after the child exited"));
  EXPECT_EQ(release_in_mode(h.lock, held), IPL_OK);
  EXPECT_TRUE(free_elsewhere(path, "after the parent's release"));
}

// Catches: an inherited handle that refuses to acquire (IPL_E_WOULD_DEADLOCK
// from a copied "held" state), that "acquires" without a kernel lock of its
// own (a copied table entry, or the parent's shared description), or that
// ignores the parent's lock.
TEST_P(ConflictForkInherited, ChildAcquireOnTheInheritedHandleWorksLikeAFreshHandle) {
  const lock_mode held = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(acquire_in_mode(h.lock, held, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    // While the parent holds it: exclusive conflicts with every mode.
    end.say(1, ipl_acquire(h.lock, 0));
    // Shared coexists with a shared parent, conflicts with an exclusive one.
    const int shared = ipl_acquire_read(h.lock, 0);
    end.say(2, shared);
    end.say(3, shared == IPL_OK ? ipl_release_read(h.lock) : kNotTried);
    if (!end.hear_go(1)) return kChildLostParent;  // the parent has released
    end.say(4, ipl_acquire(h.lock, 0));
    if (!end.hear_go(2)) return kChildLostParent;
    end.say(5, ipl_release(h.lock));
    return end.hear_go(3) ? kChildDone : kChildLostParent;
  });
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.value_of(1), IPL_E_TIMEOUT) << "child's exclusive try while the parent holds";
  const int64_t shared = child.value_of(2);
  if (held == lock_mode::shared) {
    EXPECT_EQ(shared, IPL_OK) << "a shared try beside the parent's shared lock";
    EXPECT_EQ(child.value_of(3), IPL_OK);
  } else {
    EXPECT_EQ(shared, IPL_E_TIMEOUT) << "a shared try beside the parent's exclusive lock";
    EXPECT_EQ(child.value_of(3), kNotTried);
  }
  ASSERT_EQ(release_in_mode(h.lock, held), IPL_OK);
  child.tell(1);
  EXPECT_EQ(child.value_of(4), IPL_OK) << "child's acquire once the parent released";
  EXPECT_TRUE(held_elsewhere(path, "while the child holds it on the inherited handle"));
  EXPECT_EQ(ipl_acquire_read(h.lock, 0), IPL_E_TIMEOUT) << "the parent must see the child's lock";
  child.tell(2);
  EXPECT_EQ(child.value_of(5), IPL_OK) << "child's release of its own lock";
  EXPECT_TRUE(free_elsewhere(path, "after the child's release"));
  child.tell(3);
  EXPECT_EQ(child.finish(), kChildDone);
}

// Catches: a handle opened in the child joining stale in-process state
// copied from the parent (classic: the parent's table entry, so the child
// "shares" or waits on a lock its process does not hold).
TEST_P(ConflictForkInherited, NewHandleInTheChildWorksNormally) {
  const lock_mode held = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(acquire_in_mode(h.lock, held, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    ipl_lock *mine = nullptr;
    end.say(1, ipl_open(path.c_str(), 0, &mine));
    if (!mine) return kChildDone;
    end.say(2, ipl_acquire(mine, 0));
    if (!end.hear_go(1)) return kChildLostParent;  // the parent has released
    end.say(3, ipl_acquire(mine, 0));
    if (!end.hear_go(2)) return kChildLostParent;
    end.say(4, ipl_release(mine));
    ipl_close(mine);
    return end.hear_go(3) ? kChildDone : kChildLostParent;
  });
  ASSERT_TRUE(child.started());
  ASSERT_EQ(child.value_of(1), IPL_OK) << "ipl_open in the child";
  EXPECT_EQ(child.value_of(2), IPL_E_TIMEOUT) << "child's try while the parent holds";
  ASSERT_EQ(release_in_mode(h.lock, held), IPL_OK);
  child.tell(1);
  EXPECT_EQ(child.value_of(3), IPL_OK) << "child's try once the parent released";
  EXPECT_TRUE(held_elsewhere(path, "while the child holds it"));
  child.tell(2);
  EXPECT_EQ(child.value_of(4), IPL_OK);
  EXPECT_TRUE(free_elsewhere(path, "after the child's release"));
  child.tell(3);
  EXPECT_EQ(child.finish(), kChildDone);
}

// Catches: a child's copy of the lock descriptor keeping the lock alive
// after the parent let go (OFD: the description, and its lock, live until
// the last copy is closed), i.e. a lock that outlives its holder's close.
TEST_P(ConflictForkInherited, ParentReleaseOrCloseFreesTheLockWhileTheChildSleeps) {
  const lock_mode held = GetParam();
  for (const bool close_it : {false, true}) {
    SCOPED_TRACE(close_it ? "parent closes" : "parent releases");
    temp_dir dir;
    const std::string path = dir.path("lock");
    ipl_lock *h = open_or_fail(path);
    ASSERT_NE(h, nullptr);
    ASSERT_EQ(acquire_in_mode(h, held, 0), IPL_OK);

    // The child never touches libipl: it waits for the word, then exits.
    forked_child child(
        [&](child_end &end) { return end.hear_go(1) ? kChildDone : kChildLostParent; });
    if (!child.started()) ipl_close(h);
    ASSERT_TRUE(child.started());
    if (close_it) {
      ipl_close(h);
    } else {
      EXPECT_EQ(release_in_mode(h, held), IPL_OK);
    }
    EXPECT_TRUE(free_elsewhere(path, "right after the parent let go"));
    EXPECT_TRUE(child.alive()) << "the check above means nothing once the child is gone";
    if (!close_it) ipl_close(h);
    child.tell(1);
    EXPECT_EQ(child.finish(), kChildDone);
  }
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictForkInherited, testing::ValuesIn(kAllModes),
                         mode_param_name);

// ---- 2. The holder dies; its forked child lives on -------------------------------

// args: PATH MODE. Takes the lock, forks a grandchild that only sleeps
// (until killed, or kBound), says "held GRANDCHILD_PID", then waits.
IPL_TEST_HELPER(fork_hold_and_fork_sleeper) {
  if (args.size() != 2) return 2;
  lock_mode mode = lock_mode::exclusive;
  if (!mode_from_name(args[1], &mode)) return 2;
  ipl_lock *lock = nullptr;
  int status = ipl_open(args[0].c_str(), 0, &lock);
  if (status == IPL_OK) status = acquire_in_mode(lock, mode, 0);
  if (status != IPL_OK) {
    helper_say("failed " + std::to_string(status));
    return 3;
  }
  const pid_t sleeper = fork();
  if (sleeper == 0) {
    // Async-signal-safe only; never touches libipl. Orphaned when the test
    // kills the holder; the test kills it too, but it ends by itself anyway.
    poll(nullptr, 0, int(kBound.count()));
    _exit(0);
  }
  if (sleeper < 0) {
    helper_say("fork-failed");
    return 4;
  }
  helper_say("held " + std::to_string(sleeper));
  std::string line;
  helper_hear(&line);  // the test kills us before it says anything
  return 0;
}

// 'Z' for a zombie, 'S' sleeping, ...; '?' when the process is gone.
char process_state(pid_t pid) {
  std::ifstream stat_file("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 >= text.size()) return '?';
  return text[paren + 2];
}

class ConflictForkHolderKilled : public testing::TestWithParam<lock_mode> {};

// Catches: a lock kept alive by a forked child of its holder after the
// holder was killed (OFD: the child's copy of the description).
TEST_P(ConflictForkHolderKilled, LockIsFreeAtOnceWhileTheGrandchildLives) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  child_process holder =
      child_process::helper("fork_hold_and_fork_sleeper", {path, mode_name(GetParam())});
  std::string line;
  ASSERT_TRUE(holder.read_line(&line)) << "no answer from the holder";
  ASSERT_EQ(line.compare(0, 5, "held "), 0) << line;
  const pid_t grandchild = pid_t(std::stol(line.substr(5)));
  ASSERT_GT(grandchild, 0);
  struct grandchild_killer {
    pid_t pid;
    ~grandchild_killer() {
      if (pid > 0) kill(pid, SIGKILL);  // reparented: init reaps it
    }
  } killer{grandchild};

  ASSERT_TRUE(held_elsewhere(path, "while the holder lives"));
  holder.send_signal(SIGKILL);
  ASSERT_EQ(describe_status(holder.wait()), -1000 - SIGKILL);
  EXPECT_TRUE(free_elsewhere(path, "right after the holder was killed"));
  const char state = process_state(grandchild);
  EXPECT_TRUE(state != '?' && state != 'Z' && state != 'X')
      << "the grandchild must outlive the holder for this check to mean anything (state "
      << state << ")";
}

INSTANTIATE_TEST_SUITE_P(Conflict, ConflictForkHolderKilled, testing::ValuesIn(kAllModes),
                         mode_param_name);

// ---- 3. A child waits for its parent's lock -----------------------------------------

// Catches (classic backend): a child whose copy of the in-process table says
// "another handle of this process holds it", so it waits on a condition
// variable nobody in the child will ever signal and never sees the
// parent's release.
TEST(ConflictForkWaiter, ChildWaitingForeverGetsTheLockWhenTheParentReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(ipl_acquire(h.lock, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    ipl_lock *mine = nullptr;
    const int opened = ipl_open(path.c_str(), 0, &mine);
    end.say(1, opened);
    if (opened != IPL_OK) return kChildDone;
    const int64_t start = monotonic_ms();
    const int status = ipl_acquire(mine, IPL_WAIT_FOREVER);
    end.say(2, status);
    end.say(3, monotonic_ms() - start);
    if (!end.hear_go(1)) return kChildLostParent;
    end.say(4, ipl_release(mine));
    ipl_close(mine);
    return kChildDone;
  });
  ASSERT_TRUE(child.started());
  ASSERT_EQ(child.value_of(1), IPL_OK) << "ipl_open in the child";
  // The parent releases at about 1 s; until then the child must wait.
  EXPECT_TRUE(child.silent_for(1000ms)) << "the child got the lock its parent holds";
  const auto released = steady::now();
  ASSERT_EQ(ipl_release(h.lock), IPL_OK);
  EXPECT_EQ(child.value_of(2, 10s), IPL_OK) << "the child's forever wait after the release";
  EXPECT_LT(steady::now() - released, 5s) << "the child woke long after the release";
  EXPECT_GE(child.value_of(3), 900) << "the child's wait ended before the parent released";
  EXPECT_TRUE(held_elsewhere(path, "while the child holds it"));
  child.tell(1);
  EXPECT_EQ(child.value_of(4), IPL_OK);
  EXPECT_EQ(child.finish(), kChildDone);
  EXPECT_TRUE(free_elsewhere(path, "after the child released"));
}

// Catches (classic backend): a child's shared lock granted from a copied
// table entry ("the process already holds the read lock") with no kernel
// lock behind it, so a writer gets in once the parent lets go.
TEST(ConflictForkWaiter, ChildsSharedLockIsARealLockAfterTheParentReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer h(open_or_fail(path));
  ASSERT_NE(h.lock, nullptr);
  ASSERT_EQ(ipl_acquire_read(h.lock, 0), IPL_OK);

  forked_child child([&](child_end &end) {
    ipl_lock *mine = nullptr;
    const int opened = ipl_open(path.c_str(), 0, &mine);
    end.say(1, opened);
    if (opened != IPL_OK) return kChildDone;
    end.say(2, ipl_acquire_read(mine, 0));
    if (!end.hear_go(1)) return kChildLostParent;
    end.say(3, ipl_release_read(mine));
    ipl_close(mine);
    return kChildDone;
  });
  ASSERT_TRUE(child.started());
  ASSERT_EQ(child.value_of(1), IPL_OK) << "ipl_open in the child";
  ASSERT_EQ(child.value_of(2), IPL_OK) << "a shared lock beside the parent's shared lock";
  ASSERT_EQ(ipl_release_read(h.lock), IPL_OK);
  EXPECT_TRUE(held_elsewhere(path, "the child holds a shared lock, the parent released"));
  const int shared_probe = try_from_other_process(path, lock_mode::shared);
  EXPECT_EQ(shared_probe, IPL_OK) << "readers coexist: " << status_text(shared_probe);
  child.tell(1);
  EXPECT_EQ(child.value_of(3), IPL_OK);
  EXPECT_EQ(child.finish(), kChildDone);
  EXPECT_TRUE(free_elsewhere(path, "after the child released"));
}

// ---- 4. Threads blocked in libipl at the fork -------------------------------------

// The syscall a thread of this process is in, or -1 when it is running (or
// the file cannot be read).
long current_syscall(pid_t tid) {
  std::ifstream file("/proc/self/task/" + std::to_string(tid) + "/syscall");
  std::string first;
  if (!(file >> first)) return -1;
  if (first == "running") return -1;
  char *end = nullptr;
  const long number = strtol(first.c_str(), &end, 10);
  return end && *end == '\0' ? number : -1;
}

// True once thread `tid` sleeps in a lock wait (the kernel's fcntl, the
// classic backend's condition variable, or the polling fallback's sleep).
bool wait_until_blocked(pid_t tid) {
  const auto deadline = steady::now() + kBound;
  while (steady::now() < deadline) {
    const long call = current_syscall(tid);
    if (call == SYS_fcntl || call == SYS_futex || call == SYS_clock_nanosleep) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

// args: PATH_A PATH_B. Holds A on h1 and makes one timed wait of its own;
// thread T1 waits forever on h2 (A), thread T2 waits (20 s) on h3 (A); once
// both are blocked in their calls the main thread forks. The child
// (async-signal-safe calls and libipl only) uses every inherited handle,
// then opens new ones, and prints one line of statuses:
//   "child RELEASE_H1 TRY_H2 READ_TRY_H3 TIMED_H3_ON_TIME CLOSED
//    READ_TRY_NEW_A OPEN_B TRY_B RELEASE_B"
// (TIMED_H3_ON_TIME and CLOSED are 1 or 0). The helper then prints
// "child-exit N", releases h1 and prints "threads S1 S2" (the threads'
// acquire statuses).
IPL_TEST_HELPER(fork_with_blocked_threads) {
  if (args.size() != 2) return 2;
  const char *path_a = args[0].c_str();
  const char *path_b = args[1].c_str();
  ipl_lock *h1 = nullptr, *h2 = nullptr, *h3 = nullptr;
  if (ipl_open(path_a, 0, &h1) != IPL_OK || ipl_open(path_a, 0, &h2) != IPL_OK ||
      ipl_open(path_a, 0, &h3) != IPL_OK || ipl_acquire(h1, 0) != IPL_OK ||
      ipl_acquire(h2, 20) != IPL_E_TIMEOUT) {  // the forking thread's own timed wait
    helper_say("setup failed");
    return 3;
  }
  std::atomic<pid_t> tid1{0}, tid2{0};
  std::atomic<int> status1{kNoReply}, status2{kNoReply};
  std::thread t1([&] {
    tid1 = pid_t(syscall(SYS_gettid));
    const int s = ipl_acquire(h2, IPL_WAIT_FOREVER);
    if (s == IPL_OK) ipl_release(h2);
    status1 = s;
  });
  std::thread t2([&] {
    tid2 = pid_t(syscall(SYS_gettid));
    const int s = ipl_acquire(h3, 20000);
    if (s == IPL_OK) ipl_release(h3);
    status2 = s;
  });
  const auto deadline = steady::now() + kBound;
  while ((tid1 == 0 || tid2 == 0) && steady::now() < deadline) std::this_thread::sleep_for(1ms);
  if (!wait_until_blocked(tid1) || !wait_until_blocked(tid2)) {
    helper_say("threads not blocked");
    _exit(4);  // the threads cannot be joined
  }

  const pid_t child = fork();
  if (child == 0) {
    // Ends before the helper's bound below, so a hang here is reported.
    alarm(kBound.count() / 2000);
    flat_line line;
    line.text("child");
    line.text(" ").number(ipl_release(h1));
    line.text(" ").number(ipl_acquire(h2, 0));
    line.text(" ").number(ipl_acquire_read(h3, 0));
    const int64_t start = monotonic_ms();
    const int timed = ipl_acquire(h3, 100);
    const int64_t waited = monotonic_ms() - start;
    // The timed wait must end on time without the parent's timer or thread.
    line.text(" ").number(timed == IPL_E_TIMEOUT && waited >= 100 && waited < 5000 ? 1 : 0);
    ipl_close(h1);
    ipl_close(h2);
    ipl_close(h3);
    line.text(" 1");
    ipl_lock *a = nullptr;
    ipl_lock *b = nullptr;
    const int open_a = ipl_open(path_a, 0, &a);
    line.text(" ").number(open_a == IPL_OK ? ipl_acquire_read(a, 0) : open_a);
    line.text(" ").number(ipl_open(path_b, 0, &b));
    line.text(" ").number(b ? ipl_acquire(b, 0) : kNoReply);
    line.text(" ").number(b ? ipl_release(b) : kNoReply);
    ipl_close(a);
    ipl_close(b);
    line.send(STDOUT_FILENO);
    _exit(0);
  }
  if (child < 0) {
    helper_say("fork failed");
    _exit(5);
  }
  int status = -1;
  const auto child_deadline = steady::now() + kBound;
  for (;;) {
    const pid_t done = waitpid(child, &status, WNOHANG);
    if (done == child) break;
    if (steady::now() >= child_deadline) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      break;
    }
    std::this_thread::sleep_for(2ms);
  }
  helper_say("child-exit " + std::to_string(describe_status(status)));

  if (ipl_release(h1) != IPL_OK) {
    helper_say("release failed");
    _exit(6);
  }
  const auto threads_deadline = steady::now() + kBound;
  while ((status1 == kNoReply || status2 == kNoReply) && steady::now() < threads_deadline)
    std::this_thread::sleep_for(1ms);
  helper_say("threads " + std::to_string(status1) + " " + std::to_string(status2));
  if (status1 == kNoReply || status2 == kNoReply) _exit(7);  // a thread hangs
  t1.join();
  t2.join();
  ipl_close(h1);
  ipl_close(h2);
  ipl_close(h3);
  return 0;
}

// Catches: a fork while threads wait in libipl that deadlocks in the child
// (a mutex, or a handle's "acquire in progress" state, copied locked), a
// child whose inherited handles refuse to work (IPL_E_WOULD_DEADLOCK from
// the copied in-progress state), a timed wait in the child that never ends
// (the parent's timer or watchdog thread does not exist there), or the
// threads' waits broken by the fork.
TEST(ConflictForkThreads, ChildUsesEveryHandleWhileParentThreadsWait) {
  temp_dir dir;
  const std::string path_a = dir.path("a.lock");
  const std::string path_b = dir.path("b.lock");
  child_process helper = child_process::helper("fork_with_blocked_threads", {path_a, path_b});
  std::string line;
  ASSERT_TRUE(helper.read_line(&line)) << "the helper (or its fork) hung";
  // release(h1) NOT_HELD; try h2 TIMEOUT; read try h3 TIMEOUT; timed h3 on
  // time; closes returned; read try on a new handle TIMEOUT (the parent
  // holds A exclusively); B: open, acquire, release OK.
  const std::string expected = "child -3 -1 -1 1 1 -1 0 0 0";
  EXPECT_EQ(line, expected);
  EXPECT_TRUE(helper.expect_line("child-exit 0", kBound, &line)) << line;
  EXPECT_TRUE(helper.expect_line("threads 0 0", kBound, &line)) << line;
  EXPECT_EQ(describe_status(helper.wait()), 0);
}

// ---- 5. _Fork(): no atfork handlers ---------------------------------------------------

// Catches: a child made by _Fork() (no atfork handler ran) whose inherited
// handle still acts on the parent's lock (release, or an unlock before
// close, drops the shared OFD lock), and a fork that the first libipl call
// in the child does not notice, so the child's copy keeps the lock alive
// after the parent closed it.
TEST(ConflictForkNoAtforkHandlers, UnderscoreForkChildIsNoticedAtItsFirstCall) {
#if !IPL_TEST_HAVE_UNDERSCORE_FORK
  GTEST_SKIP() << "no _Fork() in this C library";
#else
  const std::pair<bool, lock_mode> cases[] = {{false, lock_mode::exclusive},
                                               {false, lock_mode::shared},
                                               {true, lock_mode::exclusive},
                                               {true, lock_mode::shared}};
  for (const auto &c : cases) {
    const bool first_call_closes = c.first;
    const lock_mode held = c.second;
    SCOPED_TRACE(std::string("held ") + mode_name(held) +
                 (first_call_closes ? ", child closes" : ", child releases"));
    temp_dir dir;
    const std::string path = dir.path("lock");
    ipl_lock *h = open_or_fail(path);
    ASSERT_NE(h, nullptr);
    ASSERT_EQ(acquire_in_mode(h, held, 0), IPL_OK);

    forked_child child(
        [&](child_end &end) {
          // The child's first libipl call.
          if (first_call_closes) {
            ipl_close(h);
            end.say(1, IPL_E_NOT_HELD);
          } else {
            end.say(1, release_in_mode(h, held));
          }
          return end.hear_go(1) ? kChildDone : kChildLostParent;
        },
        fork_call::underscore_fork);
    if (!child.started()) ipl_close(h);
    ASSERT_TRUE(child.started());
    EXPECT_EQ(child.value_of(1), IPL_E_NOT_HELD) << "release in a _Fork() child";
    EXPECT_TRUE(held_elsewhere(path, "after the _Fork() child's first call"));
    ipl_close(h);
    EXPECT_TRUE(free_elsewhere(path, "after the parent's close, the _Fork() child alive"));
    EXPECT_TRUE(child.alive()) << "the check above means nothing once the child is gone";
    child.tell(1);
    EXPECT_EQ(child.finish(), kChildDone);
  }
#endif
}

// Catches: a _Fork() child that believes the parent's timed-wait machinery
// (a watchdog thread, or the forking thread's timer: neither is inherited)
// still exists, so a timed wait there is never ended at its deadline (it
// hangs until the holder lets go).
TEST(ConflictForkNoAtforkHandlers, TimedWaitInAnUnderscoreForkChildEndsOnTime) {
#if !IPL_TEST_HAVE_UNDERSCORE_FORK
  GTEST_SKIP() << "no _Fork() in this C library";
#else
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle_closer holder(open_or_fail(path));
  handle_closer waiter(open_or_fail(path));
  ASSERT_NE(holder.lock, nullptr);
  ASSERT_NE(waiter.lock, nullptr);
  ASSERT_EQ(ipl_acquire(holder.lock, 0), IPL_OK);
  // A timed wait that has to sleep: this thread's timer (or the watchdog)
  // exists now.
  ASSERT_EQ(ipl_acquire(waiter.lock, 20), IPL_E_TIMEOUT);

  forked_child child(
      [&](child_end &end) {
        ipl_lock *mine = nullptr;
        const int opened = ipl_open(path.c_str(), 0, &mine);
        end.say(1, opened);
        if (opened != IPL_OK) return kChildDone;
        const int64_t start = monotonic_ms();
        end.say(2, ipl_acquire(mine, 100));
        end.say(3, monotonic_ms() - start);
        ipl_close(mine);
        return kChildDone;
      },
      fork_call::underscore_fork);
  ASSERT_TRUE(child.started());
  ASSERT_EQ(child.value_of(1), IPL_OK);
  EXPECT_EQ(child.value_of(2, 10s), IPL_E_TIMEOUT) << "a 100 ms wait in the _Fork() child";
  const int64_t waited = child.value_of(3);
  EXPECT_GE(waited, 100);
  EXPECT_LT(waited, 5000);
  EXPECT_EQ(child.finish(), kChildDone);
#endif
}

// ---- 6. The lock descriptor is never 0, 1 or 2 -----------------------------------------

// Descriptors of this process open on the file at `path` (by device and
// inode), in increasing order.
std::vector<int> lock_file_descriptors(const std::string &path) {
  std::vector<int> found;
  struct stat target;
  if (stat(path.c_str(), &target) != 0) return found;
  DIR *dir = opendir("/proc/self/fd");
  if (!dir) return found;
  const int own = dirfd(dir);
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const int fd = atoi(entry->d_name);
    struct stat st;
    if (fd == own || fstat(fd, &st) != 0) continue;
    if (st.st_dev == target.st_dev && st.st_ino == target.st_ino) found.push_back(fd);
  }
  closedir(dir);
  std::sort(found.begin(), found.end());
  return found;
}

// args: PATH MODE. MODE "readwrite", or "readonly": the lock file is
// read-only to us (as root, the helper first becomes nobody), so every
// handle takes libipl's read-only fallback. Closes its standard streams
// first thing (keeping a copy of stdout, at 10 or above, to report on),
// then opens handles and locks, and after each step reports the
// descriptors on the lock file: "STEP fds N,M,...". Then writes to
// descriptors 0, 1 and 2 and through stdio, and says "done".
IPL_TEST_HELPER(descriptors_closed_stdio) {
  if (args.size() != 2) return 2;
  const bool readonly = args[1] == "readonly";
  if (readonly && geteuid() == 0) {
    const gid_t nobody = 65534;
    if (setgroups(0, nullptr) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0) {
      helper_say("cannot become nobody");
      return 6;
    }
    prctl(PR_SET_DUMPABLE, 1);  // else /proc/self/fd stays root's
  }
  const int report = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 10);
  if (report < 0) return 3;
  close(STDIN_FILENO);
  close(STDOUT_FILENO);
  close(STDERR_FILENO);
  const char *path = args[0].c_str();
  auto say = [&](const std::string &step) {
    std::string line = step + " fds";
    const std::vector<int> fds = lock_file_descriptors(args[0]);
    for (size_t i = 0; i < fds.size(); ++i) line += (i ? "," : " ") + std::to_string(fds[i]);
    line += "\n";
    if (write(report, line.data(), line.size()) < 0) _exit(4);
  };
  // Exclusive where the handle can take it, shared on a read-only one.
  auto take = [&](ipl_lock *lock, int64_t timeout_ms) {
    return readonly ? ipl_acquire_read(lock, timeout_ms) : ipl_acquire(lock, timeout_ms);
  };
  ipl_lock *first = nullptr, *second = nullptr, *third = nullptr;
  int err = 0;
  const int s1 = ipl_open(path, 0, &first);  // read-write: creates the file
  const int s2 = ipl_open(path, 0, &second);
  const int s3 = ipl_open_ex(path, 0, &third, &err);
  if (s1 != IPL_OK || s2 != IPL_OK || s3 != IPL_OK) {
    const std::string line = "open failed " + std::to_string(s1) + " " + std::to_string(s2) +
                             " " + std::to_string(s3) + "\n";
    if (write(report, line.data(), line.size()) < 0) _exit(4);
    return 5;
  }
  // "writable 0": the read-only fallback was taken (IPL_E_ACCESS).
  say(std::string("opened writable ") + (ipl_acquire(third, 0) == IPL_E_ACCESS ? "0" : "1"));
  ipl_release(third);
  const int held = take(first, 0);
  const int timed = take(second, 20);  // contended when exclusive: may open more (classic)
  say("held " + std::to_string(held) + " " + std::to_string(timed));
  ipl_release(first);
  ipl_release_read(first);
  ipl_release_read(second);
  const int r1 = ipl_acquire_read(second, 0);
  const int r2 = ipl_acquire_read(third, 0);
  say("shared " + std::to_string(r1) + " " + std::to_string(r2));
  ipl_close(first);
  ipl_lock *reopened = nullptr;
  ipl_open(path, 0, &reopened);  // the lowest free descriptor may be 0 again
  say("reopened");
  // What a program that lost its standard streams writes: into nothing.
  for (int fd = 0; fd <= 2; ++fd) {
    if (write(fd, "stray\n", 6) < 0) {
    }
  }
  fprintf(stderr, "stray stderr\n");
  fflush(stderr);
  printf("stray stdout\n");
  fflush(stdout);
  ipl_close(second);
  ipl_close(third);
  ipl_close(reopened);
  const std::string done = "done\n";
  if (write(report, done.data(), done.size()) < 0) _exit(4);
  return 0;
}

// Runs descriptors_closed_stdio in `mode` on `path` and checks every
// descriptor it reports; the "opened" line goes to *opened_line.
void check_descriptors_with_closed_stdio(const std::string &path, const char *mode,
                                         std::string *opened_line) {
  child_process helper = child_process::helper("descriptors_closed_stdio", {path, mode});
  std::string line;
  int steps = 0;
  while (helper.read_line(&line) && line != "done") {
    if (steps++ == 0) *opened_line = line;
    const size_t at = line.find(" fds");
    ASSERT_NE(at, std::string::npos) << line;
    std::istringstream fds(line.substr(at + 4));
    std::string fd;
    int count = 0;
    while (std::getline(fds, fd, ',')) {
      ++count;
      EXPECT_GE(std::atoi(fd.c_str()), 3) << "a lock descriptor is a standard stream: " << line;
    }
    EXPECT_GE(count, 1) << "no descriptor on the lock file? " << line;
  }
  EXPECT_EQ(line, "done");
  EXPECT_EQ(steps, 4);
  EXPECT_EQ(describe_status(helper.wait()), 0);
}

// Catches: a lock descriptor that lands on 0, 1 or 2 in a program started
// with closed standard streams, so its next error message (or printf) is
// written into the lock file.
TEST(ApiDescriptors, LockDescriptorIsNeverAStandardStream) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  std::string opened;
  check_descriptors_with_closed_stdio(path, "readwrite", &opened);
  EXPECT_EQ(opened.compare(0, 16, "opened writable "), 0) << opened;
  EXPECT_EQ(file_size(path), 0) << "something was written into the lock file";
}

// Catches: the read-only fallback (a lock file we may only read) opening
// its descriptor without moving it above 2.
TEST(ApiDescriptors, ReadOnlyLockDescriptorIsNeverAStandardStream) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ASSERT_EQ(chmod(dir.root().c_str(), 0755), 0);  // nobody may look inside
  const int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0444);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_EQ(chmod(path.c_str(), 0444), 0);
  std::string opened;
  check_descriptors_with_closed_stdio(path, "readonly", &opened);
  if (opened.compare(0, 17, "opened writable 1") == 0)
    GTEST_SKIP() << "the lock file stayed writable (permissions not enforced for this user)";
  EXPECT_EQ(opened.compare(0, 17, "opened writable 0"), 0) << opened;
  EXPECT_EQ(file_size(path), 0);
}

// ---- 7. Failed attempts while another handle holds: no descriptor growth ------------

struct attempt_case {
  lock_mode held;
  lock_mode attempted;
};

std::string attempt_name(const testing::TestParamInfo<attempt_case> &info) {
  return std::string(mode_name(info.param.held)) + "_held_" + mode_name(info.param.attempted) +
         "_attempts";
}

class ApiDescriptorsFailedAttempts : public testing::TestWithParam<attempt_case> {};

constexpr int kFailedAttempts = 1220;

// Catches (classic backend): every closed handle's descriptor parked until
// the inode's locks are gone (closing it would drop the process's lock),
// with no reuse by the next handle on the same inode: one more descriptor
// per attempt, EMFILE in the end.
TEST_P(ApiDescriptorsFailedAttempts, OpenTryCloseKeepsTheDescriptorCountConstant) {
  const attempt_case c = GetParam();
  temp_dir dir;
  const std::string path = dir.path("lock");
  const int fds_at_start = open_fd_count();
  ipl_lock *holder = open_or_fail(path);
  ASSERT_NE(holder, nullptr);
  ASSERT_EQ(acquire_in_mode(holder, c.held, 0), IPL_OK);
  const int fds_while_held = open_fd_count();
  int unexpected = 0;
  int first_status = IPL_E_TIMEOUT;
  int most_fds = fds_while_held;
  for (int i = 0; i < kFailedAttempts; ++i) {
    ipl_lock *attempt = nullptr;
    int status = ipl_open(path.c_str(), 0, &attempt);
    if (status == IPL_OK) status = acquire_in_mode(attempt, c.attempted, 1);
    if (status != IPL_E_TIMEOUT && unexpected++ == 0) first_status = status;
    ipl_close(attempt);
    if (i % 61 == 0) most_fds = std::max(most_fds, open_fd_count());
  }
  most_fds = std::max(most_fds, open_fd_count());
  EXPECT_EQ(unexpected, 0) << "first unexpected status: " << status_text(first_status);
  EXPECT_LE(most_fds, fds_while_held + 2)
      << "descriptors grew from " << fds_while_held << " to " << most_fds << " over "
      << kFailedAttempts << " failed attempts";
  // The holder still holds, and its close leaves nothing behind.
  EXPECT_TRUE(held_elsewhere(path, "after the attempts"));
  ipl_close(holder);
  EXPECT_EQ(open_fd_count(), fds_at_start) << "descriptors left after the holder closed";
  EXPECT_TRUE(free_elsewhere(path, "after the holder closed"));
}

INSTANTIATE_TEST_SUITE_P(Api, ApiDescriptorsFailedAttempts,
                         testing::Values(attempt_case{lock_mode::exclusive, lock_mode::exclusive},
                                         attempt_case{lock_mode::exclusive, lock_mode::shared},
                                         attempt_case{lock_mode::shared, lock_mode::exclusive}),
                         attempt_name);

// args: PATH NOFILE. Lowers its own RLIMIT_NOFILE (soft) to NOFILE, holds
// the lock on one handle, and makes kFailedAttempts open / timed try /
// close rounds on others. Says "ok N" (N: most descriptors seen open) or
// "failed I STATUS ERRNO" at the first round that did not time out.
IPL_TEST_HELPER(descriptors_attempts_under_rlimit) {
  if (args.size() != 2) return 2;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 3;
  limit.rlim_cur = rlim_t(std::atol(args[1].c_str()));
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    helper_say("setrlimit failed");
    return 3;
  }
  ipl_lock *holder = nullptr;
  if (ipl_open(args[0].c_str(), 0, &holder) != IPL_OK || ipl_acquire(holder, 0) != IPL_OK) {
    helper_say("hold failed");
    return 4;
  }
  int most_fds = open_fd_count();
  for (int i = 0; i < kFailedAttempts; ++i) {
    ipl_lock *attempt = nullptr;
    int status = ipl_open(args[0].c_str(), 0, &attempt);
    if (status == IPL_OK) status = ipl_acquire(attempt, 1);
    const int err = attempt ? ipl_os_error(attempt) : errno;
    ipl_close(attempt);
    if (status != IPL_E_TIMEOUT) {
      helper_say("failed " + std::to_string(i) + " " + std::to_string(status) + " " +
                 std::to_string(err));
      ipl_close(holder);
      return 0;
    }
    if (i % 61 == 0) most_fds = std::max(most_fds, open_fd_count());
  }
  helper_say("ok " + std::to_string(most_fds));
  ipl_close(holder);
  return 0;
}

// Catches: descriptor growth that ends in EMFILE (IPL_E_OS from ipl_open or
// a lock call) under a small descriptor limit, as `ulimit -n 200` gives.
TEST(ApiDescriptorsLimit, FailedAttemptsNeverExhaustASmallDescriptorLimit) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  child_process helper = child_process::helper("descriptors_attempts_under_rlimit", {path, "200"});
  std::string line;
  ASSERT_TRUE(helper.read_line(&line, 60s)) << "no answer from the helper";
  EXPECT_EQ(line.compare(0, 3, "ok "), 0) << line << " (EMFILE is " << EMFILE << ")";
  EXPECT_EQ(describe_status(helper.wait()), 0);
}

}  // namespace

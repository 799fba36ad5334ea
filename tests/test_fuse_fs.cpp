// SPDX-License-Identifier: MIT
// The lockfs test filesystem itself (tests/fuse/lockfs.c) and its mount
// harness, with raw fcntl only (no libipl): what later FUSE tests rely on.
//
// (a) OFD and classic fcntl locks on lockfs reach the daemon, which tells
//     open file descriptions apart; (b) two processes exclude each other
//     through it; (c) a thread blocked in F_OFD_SETLKW / F_SETLKW there is
//     not ended by a signal handled without SA_RESTART: it returns only
//     when the holder lets go (the same scenario on a local file, on lockfs
//     --locks=interruptible and on --locks=none ends with EINTR at once,
//     so the check can tell the difference); (d) a holder killed with
//     SIGKILL releases its locks, and a killed waiter does not wedge.
// Also: --locks=none leaves locks to the kernel, --locks=refuse answers
// ENOLCK, and a killed daemon ends blocked calls (ECONNABORTED).
// Every wait is bounded (kBound); hand-off and release times are printed.
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "test_support_fuse.hpp"

namespace ipltest {
namespace {

// CLOCK_MONOTONIC in ns: one clock for the test and its helper processes.
int64_t mono_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
double ms_between(int64_t from_ns, int64_t to_ns) { return double(to_ns - from_ns) / 1e6; }

// How libipl opens a lock file.
int open_lock_file(const std::string &path) {
  return open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
}

int lock_cmd(bool ofd, bool wait) {
  if (ofd) return wait ? F_OFD_SETLKW : F_OFD_SETLK;
  return wait ? F_SETLKW : F_SETLK;
}

// Whole-file lock, as libipl and fasteners take it.
int whole_file(int fd, bool ofd, short type, bool wait) {
  struct flock fl = {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  return fcntl(fd, lock_cmd(ofd, wait), &fl);
}

// ---- helper process: one lock request, then commands ---------------------
//
// args: PATH ofd|classic write|read try|wait
// Says "tid T" (the thread that makes the request, which is not the main
// thread), then "done RC ERRNO START_NS END_NS HANDLER_NS" when the fcntl
// returns (HANDLER_NS: when the SIGUSR1 handler ran, 0 if it did not).
// Commands: "signal" (SIGUSR1 to the requesting thread; handler installed
// without SA_RESTART) -> "signalled"; "unlock" -> "unlocked RC START_NS";
// "exit" (or EOF) ends the process without waiting for the request.

std::atomic<int64_t> g_handler_ns{0};
void on_sigusr1(int) { g_handler_ns.store(mono_ns()); }

IPL_TEST_HELPER(fuse_locker) {
  if (args.size() != 4) return 2;
  const bool ofd = args[1] == "ofd";
  const short type = args[2] == "read" ? F_RDLCK : F_WRLCK;
  const bool wait = args[3] == "wait";
  struct sigaction sa = {};
  sa.sa_handler = on_sigusr1;  // no SA_RESTART
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
  const int fd = open_lock_file(args[0]);
  if (fd < 0) {
    helper_say("open-failed " + std::to_string(errno));
    return 3;
  }
  std::atomic<bool> done{false};
  std::atomic<pid_t> tid{0};
  std::thread worker([&] {
    tid = pid_t(syscall(SYS_gettid));
    helper_say("tid " + std::to_string(tid.load()));
    const int64_t start = mono_ns();
    const int rc = whole_file(fd, ofd, type, wait);
    const int err = rc == 0 ? 0 : errno;
    const int64_t end = mono_ns();
    helper_say("done " + std::to_string(rc) + " " + std::to_string(err) + " " +
               std::to_string(start) + " " + std::to_string(end) + " " +
               std::to_string(g_handler_ns.load()));
    done = true;
  });
  const pthread_t worker_handle = worker.native_handle();
  std::string line;
  while (helper_hear(&line)) {
    if (line == "signal") {
      pthread_kill(worker_handle, SIGUSR1);
      helper_say("signalled");
    } else if (line == "unlock") {
      const int64_t start = mono_ns();
      const int rc = whole_file(fd, ofd, F_UNLCK, false);
      helper_say("unlocked " + std::to_string(rc) + " " + std::to_string(start));
    } else if (line == "exit") {
      break;
    }
  }
  if (!done) _exit(0);  // the request may still be blocked: do not join it
  worker.join();
  return 0;
}

struct locker_result {
  bool arrived = false;
  int rc = -2;
  int err = 0;
  int64_t start_ns = 0, end_ns = 0, handler_ns = 0;
};

// Drives one fuse_locker helper; lines that arrive out of turn are kept.
class locker {
 public:
  locker(const std::string &path, bool ofd, const char *type, const char *how)
      : child_(child_process::helper("fuse_locker",
                                     {path, ofd ? "ofd" : "classic", type, how})) {
    std::string line;
    if (next_line("tid ", &line)) tid_ = std::atoi(line.c_str() + 4);
  }
  // A helper blocked on lockfs may not die from SIGKILL alone: bounded.
  ~locker() { kill_and_reap(child_); }
  locker(const locker &) = delete;
  locker &operator=(const locker &) = delete;
  pid_t tid() const { return tid_; }
  child_process &process() { return child_; }

  // The "done" line, or arrived == false after `bound`.
  locker_result result(std::chrono::milliseconds bound = kBound) {
    locker_result r;
    std::string line;
    if (!next_line("done ", &line, bound)) return r;
    std::istringstream in(line.substr(5));
    in >> r.rc >> r.err >> r.start_ns >> r.end_ns >> r.handler_ns;
    r.arrived = true;
    return r;
  }
  // True when no "done" line comes within `window`.
  bool still_blocked(std::chrono::milliseconds window) {
    for (const auto &l : pending_)
      if (l.rfind("done ", 0) == 0) return false;
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + window;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return true;
      if (!child_.read_line(&line, left)) return true;  // timeout (or EOF)
      pending_.push_back(line);
      if (line.rfind("done ", 0) == 0) return false;
    }
  }
  // Sends SIGUSR1 to the requesting thread; its send time, or 0.
  int64_t signal() {
    const int64_t t = mono_ns();
    child_.write_line("signal");
    std::string line;
    return next_line("signalled", &line) ? t : 0;
  }
  // Unlocks; the time just before the unlock call, or 0.
  int64_t unlock() {
    child_.write_line("unlock");
    std::string line;
    if (!next_line("unlocked ", &line)) return 0;
    int rc = -1;
    long long start = 0;
    std::istringstream(line.substr(9)) >> rc >> start;
    return rc == 0 ? start : 0;
  }

 private:
  bool next_line(const std::string &prefix, std::string *out,
                 std::chrono::milliseconds bound = kBound) {
    for (auto it = pending_.begin(); it != pending_.end(); ++it)
      if (it->rfind(prefix, 0) == 0) {
        *out = *it;
        pending_.erase(it);
        return true;
      }
    const auto deadline = std::chrono::steady_clock::now() + bound;
    std::string line;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !child_.read_line(&line, left)) return false;
      if (line.rfind(prefix, 0) == 0) {
        *out = line;
        return true;
      }
      pending_.push_back(line);
    }
  }

  child_process child_;
  pid_t tid_ = 0;
  std::deque<std::string> pending_;
};

// One try from a fresh process: 0 (granted, then the helper exits), or the
// errno (EAGAIN when held elsewhere); -1 when it did not answer.
int try_elsewhere(const std::string &path, bool ofd, const char *type) {
  locker l(path, ofd, type, "try");
  const locker_result r = l.result();
  if (!r.arrived) return -1;
  return r.rc == 0 ? 0 : r.err;
}

// The "owner=" of every "lock" line of the status.
std::vector<std::string> lock_owners(const std::string &status) {
  std::vector<std::string> owners;
  std::istringstream in(status);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("lock ", 0) != 0) continue;
    const size_t at = line.find("owner=");
    if (at != std::string::npos) owners.push_back(line.substr(at + 6, 16));
  }
  return owners;
}

// The scheduling state letter of thread `tid` of process `pid` ('D' while it
// sleeps uninterruptibly), or '?'.
char thread_state(pid_t pid, pid_t tid) {
  const std::string path =
      "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat";
  FILE *f = fopen(path.c_str(), "re");
  if (!f) return '?';
  char buf[512] = {};
  const size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  const std::string stat(buf, n);
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
}

// Waits (bounded) until thread `tid` of `pid` is inside the fcntl system
// call (/proc/PID/task/TID/syscall starts with its number).
bool wait_in_fcntl(pid_t pid, pid_t tid, std::chrono::milliseconds bound = kBound) {
  const std::string path =
      "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/syscall";
  const std::string prefix = std::to_string(SYS_fcntl) + " ";
  const auto deadline = std::chrono::steady_clock::now() + bound;
  for (;;) {
    if (FILE *f = fopen(path.c_str(), "re")) {
      char buf[64] = {};
      const size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      if (std::string(buf, n).rfind(prefix, 0) == 0) return true;
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// ---- the filesystem -------------------------------------------------------

TEST(FuseFs, ServesLockFiles) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string a = fs.path("a.lock");
  const int fd = open_lock_file(a);
  ASSERT_GE(fd, 0) << strerror(errno);
  struct stat by_fd, by_path;
  ASSERT_EQ(fstat(fd, &by_fd), 0);
  ASSERT_EQ(stat(a.c_str(), &by_path), 0);
  EXPECT_TRUE(S_ISREG(by_fd.st_mode));
  EXPECT_EQ(by_fd.st_ino, by_path.st_ino);
  EXPECT_EQ(by_fd.st_dev, by_path.st_dev);
  EXPECT_EQ(by_fd.st_nlink, 1u);
  EXPECT_EQ(by_fd.st_size, 0);
  EXPECT_EQ(by_fd.st_mode & 0777, 0666u & ~[] { mode_t m = umask(0); umask(m); return m; }());
  struct statfs sfs;
  ASSERT_EQ(fstatfs(fd, &sfs), 0);
  EXPECT_EQ(long(sfs.f_type), kFuseSuperMagic);

  ASSERT_EQ(pwrite(fd, "xyz", 3, 0), 3);
  char buf[8] = {};
  ASSERT_EQ(pread(fd, buf, sizeof buf, 0), 3);
  EXPECT_EQ(std::string(buf, 3), "xyz");
  ASSERT_EQ(ftruncate(fd, 0), 0);
  ASSERT_EQ(fstat(fd, &by_fd), 0);
  EXPECT_EQ(by_fd.st_size, 0);

  // A second open finds the same inode; rename keeps it; readdir lists it
  // (and not the status file).
  const int fd2 = open_lock_file(a);
  ASSERT_GE(fd2, 0);
  struct stat st2;
  ASSERT_EQ(fstat(fd2, &st2), 0);
  EXPECT_EQ(st2.st_ino, by_path.st_ino);
  close(fd2);
  const std::string b = fs.path("b.lock");
  ASSERT_EQ(rename(a.c_str(), b.c_str()), 0) << strerror(errno);
  EXPECT_EQ(stat(a.c_str(), &st2), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(stat(b.c_str(), &st2), 0);
  EXPECT_EQ(st2.st_ino, by_path.st_ino);
  std::set<std::string> names;
  if (DIR *d = opendir(fs.root().c_str())) {
    while (const dirent *e = readdir(d)) names.insert(e->d_name);
    closedir(d);
  }
  EXPECT_EQ(names, (std::set<std::string>{".", "..", "b.lock"}));

  // Unlinked while open: the descriptor sees nlink 0; a new file at the
  // same path is a new inode (numbers are never reused).
  ASSERT_EQ(unlink(b.c_str()), 0);
  ASSERT_EQ(fstat(fd, &by_fd), 0);
  EXPECT_EQ(by_fd.st_nlink, 0u);
  const int fd3 = open_lock_file(b);
  ASSERT_GE(fd3, 0);
  ASSERT_EQ(fstat(fd3, &st2), 0);
  EXPECT_NE(st2.st_ino, by_path.st_ino);
  close(fd3);
  close(fd);
  EXPECT_NE(fs.status().find("mode uninterruptible\n"), std::string::npos);
}

TEST(FuseMount, FailsClearlyWhenTheDaemonCannotStart) {
  IPL_REQUIRE_FUSE();
  const std::string saved = lockfs_program();
  setenv("IPL_LOCKFS", "/nonexistent/lockfs", 1);
  const auto start = std::chrono::steady_clock::now();
  {
    fuse_mount fs;
    EXPECT_FALSE(fs.ok());
    EXPECT_NE(fs.error().find("exited before the mount came up (exit code 127)"),
              std::string::npos)
        << fs.error();
  }
  setenv("IPL_LOCKFS", saved.c_str(), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// ---- (a) locks reach the daemon -------------------------------------------

TEST(FuseLocks, OfdLocksReachTheDaemonPerOpenFileDescription) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("ofd.lock");
  const int fd1 = open_lock_file(path);
  const int fd2 = open_lock_file(path);
  ASSERT_GE(fd1, 0);
  ASSERT_GE(fd2, 0);

  ASSERT_EQ(whole_file(fd1, true, F_WRLCK, false), 0) << strerror(errno);
  EXPECT_EQ(fs.status_value("setlk"), 1);
  EXPECT_EQ(fs.status_value("locks"), 1);
  // The same process, another open file description: refused by the daemon.
  EXPECT_EQ(whole_file(fd2, true, F_WRLCK, false), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(fs.status_value("busy"), 1);
  struct flock probe = {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  ASSERT_EQ(fcntl(fd2, F_OFD_GETLK, &probe), 0);
  EXPECT_EQ(probe.l_type, F_WRLCK);
  EXPECT_EQ(fs.status_value("getlk"), 1);

  // Shared on both descriptions: two owners in the daemon's table.
  ASSERT_EQ(whole_file(fd1, true, F_RDLCK, false), 0);  // downgrade
  ASSERT_EQ(whole_file(fd2, true, F_RDLCK, false), 0);
  const auto owners = lock_owners(fs.status());
  ASSERT_EQ(owners.size(), 2u) << fs.status();
  EXPECT_NE(owners[0], owners[1]);
  EXPECT_EQ(try_elsewhere(path, true, "write"), EAGAIN);
  EXPECT_EQ(try_elsewhere(path, true, "read"), 0);

  // Closing a duplicate drops nothing; the last close of a description
  // drops its locks (RELEASE).
  close(dup(fd2));
  EXPECT_EQ(fs.status_value("locks"), 2);
  close(fd1);
  EXPECT_TRUE(fs.wait_status("release_dropped", 1)) << fs.status();
  EXPECT_EQ(fs.status_value("locks"), 1);
  EXPECT_EQ(try_elsewhere(path, true, "write"), EAGAIN);
  close(fd2);
  EXPECT_TRUE(fs.wait_status("release_dropped", 2)) << fs.status();
  EXPECT_EQ(try_elsewhere(path, true, "write"), 0);
}

TEST(FuseLocks, ClassicLocksReachTheDaemonPerProcess) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("classic.lock");
  const int fd1 = open_lock_file(path);
  ASSERT_GE(fd1, 0);
  ASSERT_EQ(whole_file(fd1, false, F_WRLCK, false), 0) << strerror(errno);
  const std::string st = fs.status();
  EXPECT_NE(st.find("setlk 1\n"), std::string::npos) << st;
  EXPECT_NE(st.find(" pid=" + std::to_string(getpid()) + "\n"), std::string::npos) << st;
  EXPECT_EQ(try_elsewhere(path, false, "write"), EAGAIN);
  EXPECT_EQ(try_elsewhere(path, false, "read"), EAGAIN);
  EXPECT_EQ(try_elsewhere(path, true, "read"), EAGAIN);  // OFD vs classic

  // One owner per process: another descriptor of this process gets it too,
  // and closing any descriptor of the file drops the process's locks (FLUSH).
  const int fd2 = open_lock_file(path);
  ASSERT_GE(fd2, 0);
  ASSERT_EQ(whole_file(fd2, false, F_WRLCK, false), 0);
  EXPECT_EQ(lock_owners(fs.status()).size(), 1u);
  close(fd2);
  EXPECT_TRUE(fs.wait_status("flush_dropped", 1)) << fs.status();
  EXPECT_EQ(fs.status_value("locks"), 0);
  EXPECT_EQ(try_elsewhere(path, false, "write"), 0);
  close(fd1);
}

// ---- (b) two processes ------------------------------------------------------

TEST(FuseLocks, TwoProcessesExcludeEachOther) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  for (const bool ofd : {true, false}) {
    SCOPED_TRACE(ofd ? "OFD locks" : "classic locks");
    const std::string path = fs.path(ofd ? "two-ofd.lock" : "two-classic.lock");
    locker holder(path, ofd, "write", "try");
    const locker_result held = holder.result();
    ASSERT_TRUE(held.arrived);
    ASSERT_EQ(held.rc, 0) << strerror(held.err);
    EXPECT_EQ(try_elsewhere(path, ofd, "write"), EAGAIN);
    EXPECT_EQ(try_elsewhere(path, ofd, "read"), EAGAIN);

    const long waited = fs.status_value("waited");
    locker waiter(path, ofd, "write", "wait");
    ASSERT_TRUE(fs.wait_status("waited", waited + 1)) << fs.status();
    EXPECT_TRUE(waiter.still_blocked(std::chrono::milliseconds(200)));
    const int64_t released = holder.unlock();
    ASSERT_NE(released, 0);
    const locker_result got = waiter.result();
    ASSERT_TRUE(got.arrived);
    EXPECT_EQ(got.rc, 0) << strerror(got.err);
    std::printf("[ lockfs  ] %s hand-off between processes: %.3f ms\n",
                ofd ? "F_OFD_SETLKW" : "F_SETLKW", ms_between(released, got.end_ns));
    EXPECT_LT(ms_between(released, got.end_ns), 1000.0);
    EXPECT_EQ(try_elsewhere(path, ofd, "read"), EAGAIN);
    ASSERT_NE(waiter.unlock(), 0);

    // Shared coexists, exclusive waits for both.
    locker reader1(path, ofd, "read", "try");
    locker reader2(path, ofd, "read", "try");
    EXPECT_EQ(reader1.result().rc, 0);
    EXPECT_EQ(reader2.result().rc, 0);
    EXPECT_EQ(try_elsewhere(path, ofd, "write"), EAGAIN);
  }
}

// ---- (c) a signal does not end the blocked call ----------------------------

struct signal_outcome {
  locker_result r;
  int64_t signalled_ns = 0;
  int64_t released_ns = 0;
  char state_after_signal = '?';
};

// The test holds an OFD write lock on `path`; a helper thread blocks in
// F_(OFD_)SETLKW; SIGUSR1 (handler, no SA_RESTART) reaches that thread
// 100 ms later; the test releases 1 s after the signal, or at once once the
// call has returned.
signal_outcome signal_a_blocked_waiter(const std::string &path, bool ofd, const fuse_mount *fs) {
  signal_outcome out;
  const int fd = open_lock_file(path);
  if (fd < 0 || whole_file(fd, true, F_WRLCK, false) != 0) {
    ADD_FAILURE() << "holder: " << strerror(errno);
    if (fd >= 0) close(fd);
    return out;
  }
  locker waiter(path, ofd, "write", "wait");
  EXPECT_TRUE(wait_in_fcntl(waiter.process().pid(), waiter.tid()));
  if (fs) {
    EXPECT_TRUE(fs->wait_status("waiters", 1)) << fs->status();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  out.signalled_ns = waiter.signal();
  EXPECT_NE(out.signalled_ns, 0);
  if (fs) {
    // The kernel told the daemon (FUSE_INTERRUPT) ...
    EXPECT_TRUE(fs->wait_status("interrupts", 1, std::chrono::milliseconds(2000))) << fs->status();
  }
  // ... and the call did not end, or did: either way wait at most 1 s.
  const bool blocked = waiter.still_blocked(std::chrono::milliseconds(1000));
  out.state_after_signal = thread_state(waiter.process().pid(), waiter.tid());
  out.released_ns = mono_ns();
  whole_file(fd, true, F_UNLCK, false);
  out.r = waiter.result();
  if (!blocked && out.r.arrived && out.r.end_ns > out.released_ns)
    ADD_FAILURE() << "inconsistent: returned after the release but not seen blocked";
  close(fd);
  return out;
}

TEST(FuseLocks, SignalDoesNotEndABlockedLockCall) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::uninterruptible);
  ASSERT_TRUE(fs.ok()) << fs.error();
  for (const bool ofd : {true, false}) {
    SCOPED_TRACE(ofd ? "F_OFD_SETLKW" : "F_SETLKW");
    const long interrupts_before = fs.status_value("interrupts");
    const signal_outcome o =
        signal_a_blocked_waiter(fs.path(ofd ? "sig-ofd.lock" : "sig-classic.lock"), ofd, &fs);
    ASSERT_TRUE(o.r.arrived) << "the blocked call never returned; lockfs log:\n" << fs.log();
    // Granted, and only after the holder let go, about 1 s after the signal.
    EXPECT_EQ(o.r.rc, 0) << strerror(o.r.err);
    EXPECT_GE(o.r.end_ns, o.released_ns);
    EXPECT_GE(ms_between(o.signalled_ns, o.r.end_ns), 900.0);
    // The handler ran on the way out of the call, after the release.
    EXPECT_NE(o.r.handler_ns, 0);
    EXPECT_GE(o.r.handler_ns, o.released_ns);
    EXPECT_EQ(o.state_after_signal, 'D');
    EXPECT_GT(fs.status_value("interrupts"), interrupts_before);
    std::printf("[ lockfs  ] %s: signalled, still blocked (state %c), returned %d %.1f ms after "
                "the signal and %.3f ms after the release\n",
                ofd ? "F_OFD_SETLKW" : "F_SETLKW", o.state_after_signal, o.r.rc,
                ms_between(o.signalled_ns, o.r.end_ns), ms_between(o.released_ns, o.r.end_ns));
  }
}

// The control: the same scenario where a signal does end the call.
TEST(FuseLocks, SignalEndsTheCallOnOtherFilesystems) {
  IPL_REQUIRE_FUSE();
  struct where {
    const char *name;
    bool fuse;
    lockfs_locks locks;
  };
  for (const where w : {where{"local file", false, lockfs_locks::none},
                        where{"lockfs --locks=interruptible", true, lockfs_locks::interruptible},
                        where{"lockfs --locks=none", true, lockfs_locks::none}}) {
    SCOPED_TRACE(w.name);
    temp_dir local;
    std::unique_ptr<fuse_mount> fs;
    if (w.fuse) {
      fs = std::make_unique<fuse_mount>(w.locks);
      ASSERT_TRUE(fs->ok()) << fs->error();
    }
    const std::string path = w.fuse ? fs->path("ctl.lock") : local.path("ctl.lock");
    const signal_outcome o = signal_a_blocked_waiter(
        path, true, w.fuse && w.locks == lockfs_locks::interruptible ? fs.get() : nullptr);
    ASSERT_TRUE(o.r.arrived);
    EXPECT_EQ(o.r.rc, -1);
    EXPECT_EQ(o.r.err, EINTR);
    EXPECT_LT(ms_between(o.signalled_ns, o.r.end_ns), 500.0);
    std::printf("[ lockfs  ] %s: F_OFD_SETLKW ended %d/%s %.3f ms after the signal\n", w.name,
                o.r.rc, o.r.rc ? strerror(o.r.err) : "ok", ms_between(o.signalled_ns, o.r.end_ns));
    if (w.fuse && w.locks == lockfs_locks::none) {
      EXPECT_EQ(fs->status_value("setlk") + fs->status_value("setlkw"), 0)
          << "--locks=none must leave locks to the kernel: " << fs->status();
    }
  }
}

// ---- (d) killed processes ---------------------------------------------------

TEST(FuseLocks, KilledHolderReleasesItsLocks) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  for (const bool ofd : {true, false}) {
    SCOPED_TRACE(ofd ? "OFD locks" : "classic locks");
    const std::string path = fs.path(ofd ? "kill-ofd.lock" : "kill-classic.lock");
    locker holder(path, ofd, "write", "try");
    ASSERT_EQ(holder.result().rc, 0);
    const long waited = fs.status_value("waited");
    locker waiter(path, ofd, "write", "wait");
    ASSERT_TRUE(fs.wait_status("waited", waited + 1)) << fs.status();
    const int64_t killed = mono_ns();
    holder.process().send_signal(SIGKILL);
    const locker_result got = waiter.result();
    ASSERT_TRUE(got.arrived) << "a SIGKILLed holder kept its lock; status:\n" << fs.status();
    EXPECT_EQ(got.rc, 0) << strerror(got.err);
    EXPECT_LT(ms_between(killed, got.end_ns), 1000.0);
    std::printf("[ lockfs  ] %s: waiter got the lock %.3f ms after SIGKILL of the holder\n",
                ofd ? "F_OFD_SETLKW" : "F_SETLKW", ms_between(killed, got.end_ns));
    EXPECT_EQ(describe_status(kill_and_reap(holder.process())), -1000 - SIGKILL);
    EXPECT_EQ(lock_owners(fs.status()).size(), 1u) << fs.status();
  }
}

TEST(FuseLocks, KilledWaiterDoesNotWedge) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("killed-waiter.lock");
  const int fd = open_lock_file(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(whole_file(fd, true, F_WRLCK, false), 0);
  // SIGKILL as the first signal (the kernel sends FUSE_INTERRUPT), and
  // SIGKILL after a handled signal (no second FUSE_INTERRUPT: lockfs finds
  // the dying thread by polling).
  for (const bool signal_first : {false, true}) {
    SCOPED_TRACE(signal_first ? "SIGUSR1, then SIGKILL" : "SIGKILL");
    const long killed_before = fs.status_value("killed_waiters");
    const long waited = fs.status_value("waited");
    locker waiter(path, true, "write", "wait");
    ASSERT_TRUE(fs.wait_status("waited", waited + 1)) << fs.status();
    if (signal_first) {
      ASSERT_NE(waiter.signal(), 0);
      // Not 100 or 200 ms: the daemon looks for dying waiters every 100 ms
      // after an interrupt, and this path should be measured, not hit.
      EXPECT_TRUE(waiter.still_blocked(std::chrono::milliseconds(150)));
    }
    const auto start = std::chrono::steady_clock::now();
    waiter.process().send_signal(SIGKILL);
    const bool exited = exits_within(waiter.process().pid(), std::chrono::milliseconds(2000));
    const double ms = std::chrono::duration<double, std::milli>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    EXPECT_TRUE(exited) << "a SIGKILLed waiter stays blocked on lockfs: the daemon must end "
                           "the waits of dying threads";
    if (!exited) {
      whole_file(fd, true, F_UNLCK, false);  // lets it go, so the test can go on
      EXPECT_TRUE(exits_within(waiter.process().pid(), kBound));
      ASSERT_TRUE(whole_file(fd, true, F_WRLCK, false) == 0);
    }
    EXPECT_EQ(describe_status(kill_and_reap(waiter.process())), -1000 - SIGKILL);
    std::printf("[ lockfs  ] killed waiter (%s) gone after %.1f ms\n",
                signal_first ? "SIGUSR1 first" : "SIGKILL only", ms);
    EXPECT_EQ(fs.status_value("killed_waiters"), killed_before + 1);
    EXPECT_EQ(fs.status_value("waiters"), 0);
  }
  EXPECT_EQ(fs.status_value("locks"), 1);  // the holder still holds
  close(fd);
}

// ---- without lock support, and a lost server ------------------------------

TEST(FuseNoLocks, KernelKeepsTheLocks) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::none);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("local.lock");
  const int fd = open_lock_file(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(whole_file(fd, true, F_WRLCK, false), 0);
  EXPECT_EQ(try_elsewhere(path, true, "write"), EAGAIN);   // one kernel: still exclusive
  EXPECT_EQ(try_elsewhere(path, false, "read"), EAGAIN);
  EXPECT_EQ(fs.status_value("setlk"), 0) << fs.status();    // never asked
  close(fd);
  EXPECT_EQ(try_elsewhere(path, true, "write"), 0);
}

TEST(FuseNoLocks, RefusingDaemonGivesEnolck) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs(lockfs_locks::refuse);
  ASSERT_TRUE(fs.ok()) << fs.error();
  const int fd = open_lock_file(fs.path("refused.lock"));
  ASSERT_GE(fd, 0);
  for (const int cmd : {F_OFD_SETLK, F_OFD_SETLKW, F_SETLK, F_SETLKW, F_OFD_GETLK, F_GETLK}) {
    struct flock fl = {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    EXPECT_EQ(fcntl(fd, cmd, &fl), -1) << "fcntl command " << cmd;
    EXPECT_EQ(errno, ENOLCK) << "fcntl command " << cmd;
  }
  EXPECT_EQ(fs.status_value("setlk"), 2) << fs.status();
  EXPECT_EQ(fs.status_value("setlkw"), 2) << fs.status();
  close(fd);
}

TEST(FuseMount, KilledDaemonEndsBlockedCalls) {
  IPL_REQUIRE_FUSE();
  fuse_mount fs;
  ASSERT_TRUE(fs.ok()) << fs.error();
  const std::string path = fs.path("lost.lock");
  const int fd = open_lock_file(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(whole_file(fd, true, F_WRLCK, false), 0);
  locker waiter(path, true, "write", "wait");
  ASSERT_TRUE(fs.wait_status("waiters", 1)) << fs.status();
  const int64_t killed = mono_ns();
  fs.kill_daemon();
  const locker_result r = waiter.result();
  ASSERT_TRUE(r.arrived);
  EXPECT_EQ(r.rc, -1);
  const int unlock_rc = whole_file(fd, true, F_UNLCK, false);
  const int unlock_err = unlock_rc == 0 ? 0 : errno;
  EXPECT_EQ(unlock_rc, -1);
  std::printf("[ lockfs  ] daemon killed: the blocked F_OFD_SETLKW returned %d (%s) after %.3f ms; "
              "the holder's unlock: %d (%s)\n",
              r.rc, strerror(r.err), ms_between(killed, r.end_ns), unlock_rc,
              strerror(unlock_err));
  close(fd);
}

}  // namespace
}  // namespace ipltest

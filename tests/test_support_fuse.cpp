// SPDX-License-Identifier: MIT
// The lockfs mount harness: see test_support_fuse.hpp.
#include "test_support_fuse.hpp"

#include <gtest/gtest.h>

#ifdef __linux__
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

extern char **environ;
#endif

#ifndef IPL_LOCKFS_PATH
#define IPL_LOCKFS_PATH ""
#endif

namespace ipltest {

const char *lockfs_locks_name(lockfs_locks locks) {
  switch (locks) {
    case lockfs_locks::uninterruptible: return "uninterruptible";
    case lockfs_locks::interruptible: return "interruptible";
    case lockfs_locks::none: return "none";
    case lockfs_locks::refuse: return "refuse";
  }
  return "?";
}

std::string lockfs_program() {
#ifdef __linux__
  if (const char *env = std::getenv("IPL_LOCKFS"); env && *env) return env;
  return IPL_LOCKFS_PATH;
#else
  return "";
#endif
}

#ifndef __linux__

fuse_mount::fuse_mount(lockfs_locks locks) : fuse_mount(options{locks}) {}
fuse_mount::fuse_mount(const options &opts) : opts_(opts) {
  error_ = "FUSE tests run on Linux only";
}
fuse_mount::~fuse_mount() = default;
std::string fuse_mount::status() const { return ""; }
long fuse_mount::status_value(const std::string &) const { return -1; }
bool fuse_mount::wait_status(const std::string &, long, std::chrono::milliseconds) const {
  return false;
}
std::string fuse_mount::log() const { return ""; }
bool fuse_mount::unmount() { return true; }
void fuse_mount::kill_daemon() {}
int fuse_mount::kill_all_daemons() { return 0; }
int kill_and_reap(child_process &child, std::chrono::milliseconds bound) {
  (void)bound;
  child.send_signal(SIGKILL);
  return child.wait();
}
bool exits_within(pid_t, std::chrono::milliseconds) { return true; }

#else

namespace {

using clock = std::chrono::steady_clock;

// The daemons this process started and has not reaped.
std::mutex g_daemons_mu;
std::set<pid_t> g_daemons;
void track_daemon(pid_t pid) {
  std::lock_guard<std::mutex> g(g_daemons_mu);
  g_daemons.insert(pid);
}

// Runs f() on its own thread and waits at most `bound` for it. A call that
// blocks on a hung FUSE daemon then cannot hang the test: the thread is left
// behind (detached; it owns everything it touches) and ends when the daemon
// is killed. False on timeout.
bool run_bounded(std::function<void()> f, std::chrono::milliseconds bound) {
  struct state {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto st = std::make_shared<state>();
  std::thread([st, f = std::move(f)] {
    f();
    std::lock_guard<std::mutex> g(st->mu);
    st->done = true;
    st->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lk(st->mu);
  return st->cv.wait_for(lk, bound, [&] { return st->done; });
}

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string tail(const std::string &text, size_t max = 4000) {
  return text.size() <= max ? text : "..." + text.substr(text.size() - max);
}

std::string describe(int raw_status) {
  if (WIFEXITED(raw_status)) return "exit code " + std::to_string(WEXITSTATUS(raw_status));
  if (WIFSIGNALED(raw_status)) return "signal " + std::to_string(WTERMSIG(raw_status));
  return "status " + std::to_string(raw_status);
}

// /proc/self/mountinfo escapes ' ', '\t', '\n' and '\\' as octal.
std::string unescape_mountinfo(const std::string &s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out += char(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The filesystem type mounted exactly at `dir` ("" when nothing is). Reading
// mountinfo never waits for a FUSE daemon, unlike stat or statfs.
std::string mounted_fstype(const std::string &dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, found;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string id, parent, devno, root, mount_point;
    words >> id >> parent >> devno >> root >> mount_point;
    if (unescape_mountinfo(mount_point) != dir) continue;
    const size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream rest(line.substr(dash + 3));
    rest >> found;  // the last mount on top wins
  }
  return found;
}

// posix_spawnp + bounded wait; the exit status, or -1 on failure/timeout.
int run_program(const std::vector<std::string> &argv, std::chrono::milliseconds bound) {
  std::vector<char *> args;
  for (const auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return -1;
  const auto deadline = clock::now() + bound;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0 && errno != EINTR) return -1;
    if (clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace

fuse_mount::fuse_mount(lockfs_locks locks) : fuse_mount(options{locks}) {}

fuse_mount::fuse_mount(const options &opts) : opts_(opts) { start(); }

void fuse_mount::start() {
  const std::string program = lockfs_program();
  if (program.empty()) {
    error_ =
        "FUSE tests are not built: no lockfs (meson -Dfuse_tests=disabled, or auto without "
        "libfuse3-dev); IPL_REQUIRE_FUSE() skips in that case";
    return;
  }
  if (access("/dev/fuse", F_OK) != 0) {
    error_ =
        "/dev/fuse is missing, so no FUSE filesystem can be mounted, yet this build has FUSE "
        "tests (meson -Dfuse_tests). Load the module (modprobe fuse), or run the container with "
        "--device /dev/fuse --cap-add SYS_ADMIN, or configure with -Dfuse_tests=disabled to "
        "skip them";
    return;
  }
  char resolved[PATH_MAX];
  if (!realpath(dir_.root().c_str(), resolved)) {
    error_ = "realpath of the temporary folder failed: " + std::string(strerror(errno));
    return;
  }
  mount_point_ = std::string(resolved) + "/mnt";
  log_path_ = std::string(resolved) + "/lockfs.log";
  if (mkdir(mount_point_.c_str(), 0755) != 0) {
    error_ = "mkdir " + mount_point_ + ": " + strerror(errno);
    return;
  }

  // Everything the child needs is ready before fork(): between fork and
  // exec it makes only async-signal-safe calls.
  std::vector<std::string> argv_s = {program,
                                     std::string("--locks=") + lockfs_locks_name(opts_.locks)};
  if (opts_.log) argv_s.push_back("--log");
  argv_s.push_back(mount_point_);
  std::vector<char *> argv;
  for (auto &a : argv_s) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    error_ = "cannot open the lockfs log or /dev/null: " + std::string(strerror(errno));
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return;
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    syscall(SYS_close_range, 3u, ~0u, 0u);  // no test descriptor leaks into the daemon
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &dfl, nullptr);
    sigaction(SIGINT, &dfl, nullptr);
    sigaction(SIGHUP, &dfl, nullptr);
    // The daemon goes when the thread that started it goes (e.g. the test
    // binary crashed): SIGTERM makes lockfs unmount and exit.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    error_ = "fork failed: " + std::string(strerror(errno));
    return;
  }
  pid_ = pid;
  track_daemon(pid_);

  // Up when the kernel lists the mount and statfs answers FUSE_SUPER_MAGIC.
  const auto deadline = clock::now() + opts_.mount_bound;
  while (!attached_) {
    if (reap(std::chrono::milliseconds(0))) {
      error_ = "lockfs exited before the mount came up (" + describe(exit_status_) +
               "); its output:\n" + tail(log());
      if (mounted_fstype(mount_point_).rfind("fuse", 0) == 0) attached_ = true;
      return;
    }
    if (mounted_fstype(mount_point_) == "fuse.lockfs") {
      attached_ = true;
      break;
    }
    if (clock::now() > deadline) {
      error_ = "lockfs did not mount within " + std::to_string(opts_.mount_bound.count()) +
               " ms; its output:\n" + tail(log());
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto fs_type = std::make_shared<long>(0);
  const std::string mp = mount_point_;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  const bool answered = run_bounded(
      [fs_type, mp] {
        struct statfs st;
        if (statfs(mp.c_str(), &st) == 0) *fs_type = long(st.f_type);
      },
      std::max(left, std::chrono::milliseconds(1000)));
  if (!answered || *fs_type != kFuseSuperMagic) {
    error_ = answered ? "statfs on the mount did not give FUSE_SUPER_MAGIC"
                      : "statfs on the mount did not answer within the bound";
    error_ += "; lockfs output:\n" + tail(log());
    return;
  }
  const std::string mode_line = std::string("mode ") + lockfs_locks_name(opts_.locks) + "\n";
  const std::string st = status();
  if (st.rfind(mode_line, 0) != 0) {
    error_ = "lockfs status does not start with \"" + mode_line + "\": \"" + st +
             "\"; lockfs output:\n" + tail(log());
    return;
  }
  mounted_ = true;
}

fuse_mount::~fuse_mount() {
  const bool was_mounted = mounted_;
  unmount();
  if (was_mounted && !unclean_.empty() && !killed_on_purpose_)
    ADD_FAILURE() << "lockfs at " << mount_point_ << " did not stop cleanly: " << unclean_
                  << "\nlockfs output:\n"
                  << tail(log());
}

std::string fuse_mount::status() const {
  if (mount_point_.empty()) return "";
  auto text = std::make_shared<std::string>();
  const std::string file = path(".lockfs");
  if (!run_bounded([text, file] { *text = read_file(file); }, std::chrono::milliseconds(10000)))
    return "";
  return *text;
}

long fuse_mount::status_value(const std::string &key) const {
  std::istringstream in(status());
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > key.size() && line.compare(0, key.size(), key) == 0 &&
        line[key.size()] == ' ')
      return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return -1;
}

bool fuse_mount::wait_status(const std::string &key, long at_least,
                             std::chrono::milliseconds bound) const {
  const auto deadline = clock::now() + bound;
  for (;;) {
    if (status_value(key) >= at_least) return true;
    if (clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::string fuse_mount::log() const { return log_path_.empty() ? "" : read_file(log_path_); }

bool fuse_mount::reap(std::chrono::milliseconds bound) {
  if (pid_ <= 0) return true;
  const auto deadline = clock::now() + bound;
  for (;;) {
    int status = 0;
    {
      // Reap and forget under the lock: kill_all_daemons never signals a
      // PID that was reaped (and may have been reused).
      std::lock_guard<std::mutex> g(g_daemons_mu);
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) {
        exit_status_ = r == pid_ ? status : -1;
        g_daemons.erase(pid_);
        pid_ = -1;
        return true;
      }
    }
    if (clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void fuse_mount::detach_mount() {
  if (!attached_) return;
  attached_ = false;
  // A mount still in use (a descriptor left open, a process still blocked
  // on it) refuses a plain unmount; give a process being killed a moment to
  // let go, then detach it lazily and say so.
  const auto deadline = clock::now() + std::chrono::milliseconds(2000);
  for (;;) {
    if (umount2(mount_point_.c_str(), 0) == 0) return;
    const int err = errno;
    if (err == EINVAL || err == ENOENT) return;  // not mounted any more
    if (err == EPERM) {                           // not root: fusermount3 can
      if (run_program({"fusermount3", "-u", "-q", mount_point_}, std::chrono::milliseconds(5000)) ==
          0)
        return;
      if (clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;
      }
      unclean_ += "the mount was busy at unmount (a descriptor or process still used it); ";
      if (run_program({"fusermount3", "-u", "-z", "-q", mount_point_},
                      std::chrono::milliseconds(5000)) != 0)
        unclean_ += "fusermount3 -u -z failed; ";
      return;
    }
    if (err == EBUSY && clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    unclean_ += std::string("umount2: ") + strerror(err) + ", detaching lazily; ";
    if (umount2(mount_point_.c_str(), MNT_DETACH) != 0)
      unclean_ += std::string("umount2(MNT_DETACH): ") + strerror(errno) + "; ";
    return;
  }
}

bool fuse_mount::unmount() {
  if (!attached_ && pid_ <= 0) return unclean_.empty();
  detach_mount();
  if (pid_ > 0 && !reap(opts_.unmount_bound)) {
    unclean_ += "lockfs did not exit within " + std::to_string(opts_.unmount_bound.count()) +
                " ms of the unmount, sent SIGTERM; ";
    kill(pid_, SIGTERM);
    if (!reap(std::chrono::milliseconds(2000))) {
      unclean_ += "then SIGKILL; ";
      kill(pid_, SIGKILL);
      if (!reap(std::chrono::milliseconds(5000))) unclean_ += "and it still did not exit; ";
    }
  }
  if (pid_ <= 0 && exit_status_ != -1 && !killed_on_purpose_ &&
      !(WIFEXITED(exit_status_) && WEXITSTATUS(exit_status_) == 0))
    unclean_ += "lockfs ended with " + describe(exit_status_) + "; ";
  mounted_ = false;
  return unclean_.empty();
}

void fuse_mount::kill_daemon() {
  if (pid_ <= 0) return;
  killed_on_purpose_ = true;
  kill(pid_, SIGKILL);
  if (!reap(std::chrono::milliseconds(5000))) unclean_ += "lockfs survived SIGKILL for 5 s; ";
}

int fuse_mount::kill_all_daemons() {
  std::lock_guard<std::mutex> g(g_daemons_mu);
  for (const pid_t pid : g_daemons) kill(pid, SIGKILL);  // reaped by their fuse_mount
  return int(g_daemons.size());
}

// True when no thread of `pid` is alive: a process whose main thread has
// exited shows 'Z' while another thread still sleeps on a FUSE request, and
// waitpid cannot reap it until that thread is gone too.
bool all_threads_dead(pid_t pid) {
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  DIR *dir = opendir(task_dir.c_str());
  if (!dir) return true;  // reaped already
  bool dead = true;
  while (const dirent *e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string stat = read_file(task_dir + "/" + e->d_name + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' &&
        stat[paren + 2] != 'X')
      dead = false;
  }
  closedir(dir);
  return dead;
}

bool exits_within(pid_t pid, std::chrono::milliseconds bound) {
  const auto deadline = clock::now() + bound;
  for (;;) {
    if (all_threads_dead(pid)) return true;
    if (clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

int kill_and_reap(child_process &child, std::chrono::milliseconds bound) {
  if (child.pid() <= 0) return -1;
  child.send_signal(SIGKILL);
  if (!exits_within(child.pid(), bound)) {
    ADD_FAILURE() << "process " << child.pid() << " did not exit within " << bound.count()
                  << " ms of SIGKILL (stuck on a FUSE mount?); killing the lockfs daemons";
    fuse_mount::kill_all_daemons();
    if (!exits_within(child.pid(), bound)) {
      ADD_FAILURE() << "process " << child.pid() << " still did not exit; not reaping it";
      return -1;
    }
  }
  return child.wait();
}

#endif  // __linux__

}  // namespace ipltest

#include "test_support.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <thread>

extern char **environ;

namespace ipltest {

namespace {

std::map<std::string, helper_fn> &helper_table() {
  static std::map<std::string, helper_fn> table;
  return table;
}

std::string helper_stdin_buffer;

int64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Reads one '\n'-terminated line from fd into *line, keeping any extra bytes
// in *buffer. False on EOF or when `bound` passes first.
bool read_line_bounded(int fd, std::string *buffer, std::string *line,
                       std::chrono::milliseconds bound) {
  const int64_t deadline = now_ms() + bound.count();
  for (;;) {
    const size_t newline = buffer->find('\n');
    if (newline != std::string::npos) {
      *line = buffer->substr(0, newline);
      buffer->erase(0, newline + 1);
      return true;
    }
    const int64_t left = deadline - now_ms();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, int(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    char chunk[512];
    const ssize_t got = read(fd, chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buffer->append(chunk, size_t(got));
  }
}

void write_all(int fd, const std::string &data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the other side is gone; the reader will notice
    done += size_t(n);
  }
}

}  // namespace

// ---- temp_dir ------------------------------------------------------------

temp_dir::temp_dir() {
  const char *base = getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/ipl-test-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  root_ = buf.data();
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(root_, ignored);
}

// ---- helpers, child side ---------------------------------------------------

helper_registrar::helper_registrar(const char *name, helper_fn fn) {
  helper_table()[name] = fn;
}

bool run_helper_if_requested(int argc, char **argv, int *exit_code) {
  if (argc < 3 || strcmp(argv[1], "--ipl-helper") != 0) return false;
  const auto found = helper_table().find(argv[2]);
  if (found == helper_table().end()) {
    fprintf(stderr, "unknown helper %s\n", argv[2]);
    *exit_code = 99;
    return true;
  }
  std::vector<std::string> args(argv + 3, argv + argc);
  *exit_code = found->second(args);
  return true;
}

void helper_say(const std::string &line) { write_all(STDOUT_FILENO, line + "\n"); }

bool helper_hear(std::string *line, std::chrono::milliseconds bound) {
  return read_line_bounded(STDIN_FILENO, &helper_stdin_buffer, line, bound);
}

// ---- child_process ---------------------------------------------------------

std::string self_exe() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw std::runtime_error("readlink /proc/self/exe failed");
  return std::string(buf.data(), size_t(n));
}

child_process child_process::helper(const std::string &name,
                                    const std::vector<std::string> &args) {
  std::vector<std::string> argv{self_exe(), "--ipl-helper", name};
  argv.insert(argv.end(), args.begin(), args.end());
  return program(argv);
}

child_process child_process::program(const std::vector<std::string> &argv) {
  int in_pipe[2];
  int out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe2 failed");

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);

  std::vector<char *> cargv;
  for (const auto &a : argv) cargv.push_back(const_cast<char *>(a.c_str()));
  cargv.push_back(nullptr);

  // The test binary ignores SIGPIPE; other programs get the default back.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t default_signals;
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);

  child_process child;
  const int rc = posix_spawnp(&child.pid_, cargv[0], &actions, &attr,
                              cargv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  close(in_pipe[0]);
  close(out_pipe[1]);
  if (rc != 0) {
    close(in_pipe[1]);
    close(out_pipe[0]);
    throw std::runtime_error("posix_spawnp " + argv[0] + ": " + strerror(rc));
  }
  child.to_child_ = in_pipe[1];
  child.from_child_ = out_pipe[0];
  return child;
}

child_process::child_process(child_process &&other) noexcept { *this = std::move(other); }

child_process &child_process::operator=(child_process &&other) noexcept {
  if (this != &other) {
    reap_if_running();
    pid_ = other.pid_;
    to_child_ = other.to_child_;
    from_child_ = other.from_child_;
    buffered_ = std::move(other.buffered_);
    other.pid_ = -1;
    other.to_child_ = -1;
    other.from_child_ = -1;
  }
  return *this;
}

child_process::~child_process() { reap_if_running(); }

void child_process::reap_if_running() {
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
  to_child_ = from_child_ = -1;
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }
}

bool child_process::read_line(std::string *line, std::chrono::milliseconds bound) {
  return read_line_bounded(from_child_, &buffered_, line, bound);
}

bool child_process::expect_line(const std::string &expected,
                                std::chrono::milliseconds bound, std::string *got) {
  std::string line;
  if (!read_line(&line, bound)) {
    if (got) *got = "<eof or timeout>";
    return false;
  }
  if (got) *got = line;
  return line == expected;
}

bool child_process::silent_for(std::chrono::milliseconds window) {
  if (!buffered_.empty()) return false;
  pollfd pfd{from_child_, POLLIN, 0};
  const int64_t deadline = now_ms() + window.count();
  for (;;) {
    const int64_t left = deadline - now_ms();
    if (left <= 0) return true;
    const int ready = poll(&pfd, 1, int(left));
    if (ready < 0 && errno == EINTR) continue;
    return ready == 0;
  }
}

void child_process::write_line(const std::string &line) { write_all(to_child_, line + "\n"); }

void child_process::close_stdin() {
  if (to_child_ >= 0) close(to_child_);
  to_child_ = -1;
}

void child_process::send_signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int child_process::wait(std::chrono::milliseconds bound) {
  if (pid_ <= 0) return -1;
  const int64_t deadline = now_ms() + bound.count();
  for (;;) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      pid_ = -1;
      return status;
    }
    if (now_ms() >= deadline) {
      reap_if_running();
      return -1;
    }
    std::this_thread::sleep_for(2ms);
  }
}

int describe_status(int raw_status) {
  if (raw_status == -1) return -1;
  if (WIFEXITED(raw_status)) return WEXITSTATUS(raw_status);
  if (WIFSIGNALED(raw_status)) return -1000 - WTERMSIG(raw_status);
  return -2;
}

int open_fd_count() {
  int count = 0;
  DIR *dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the DIR's own descriptor
}

}  // namespace ipltest

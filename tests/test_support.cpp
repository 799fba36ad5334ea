// SPDX-License-Identifier: MIT
#include "test_support.hpp"

#include <gtest/gtest.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
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

extern char **environ;
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace ipltest {

// ---- Common to both systems ----------------------------------------------------

namespace {

std::map<std::string, helper_fn> &helper_table() {
  static std::map<std::string, helper_fn> table;
  return table;
}

std::string helper_stdin_buffer;

}  // namespace

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

child_process child_process::helper(const std::string &name,
                                    const std::vector<std::string> &args) {
  std::vector<std::string> argv{self_exe(), "--ipl-helper", name};
  argv.insert(argv.end(), args.begin(), args.end());
  return program(argv);
}

child_process::child_process(child_process &&other) noexcept { *this = std::move(other); }

child_process::~child_process() { reap_if_running(); }

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

#ifndef _WIN32
// ---- POSIX ---------------------------------------------------------------------

namespace {

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

void child_process::reap_if_running() {
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
  to_child_ = from_child_ = -1;
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    // Bounded: a child stuck in an uninterruptible call (a lock on a FUSE
    // mount whose daemon never answers) dies only when that call ends. It
    // is then left unreaped rather than hanging the test binary.
    const int64_t deadline = now_ms() + kBound.count();
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0 && now_ms() < deadline)
      std::this_thread::sleep_for(2ms);
    pid_ = -1;
  }
}

bool child_process::read_line(std::string *line, std::chrono::milliseconds bound) {
  return read_line_bounded(from_child_, &buffered_, line, bound);
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

#else
// ---- Windows -------------------------------------------------------------------
// Anonymous pipes cannot be waited on, so bounded reads poll PeekNamedPipe
// (1 ms apart: test plumbing, not the library under test).

namespace {

// A killed child's exit code: kKilledExitBase + the signal number.
constexpr DWORD kKilledExitBase = 0x4B1D00;

int64_t now_ms() { return int64_t(GetTickCount64()); }

std::wstring to_wide(const std::string &utf8) {
  if (utf8.empty()) return std::wstring();
  const int n = MultiByteToWideChar(CP_UTF8, 0, utf8.data(), int(utf8.size()), nullptr, 0);
  std::wstring wide(size_t(n), L'\0');
  MultiByteToWideChar(CP_UTF8, 0, utf8.data(), int(utf8.size()), &wide[0], n);
  return wide;
}

std::string to_utf8(const std::wstring &wide) {
  if (wide.empty()) return std::string();
  const int n = WideCharToMultiByte(CP_UTF8, 0, wide.data(), int(wide.size()), nullptr, 0,
                                    nullptr, nullptr);
  std::string utf8(size_t(n), '\0');
  WideCharToMultiByte(CP_UTF8, 0, wide.data(), int(wide.size()), &utf8[0], n, nullptr,
                      nullptr);
  return utf8;
}

// Reads one '\n'-terminated line from a pipe into *line, keeping any extra
// bytes in *buffer. False on EOF (or any error) or when `bound` passes first.
bool read_line_bounded(HANDLE pipe, std::string *buffer, std::string *line,
                       std::chrono::milliseconds bound) {
  const int64_t deadline = now_ms() + bound.count();
  for (;;) {
    const size_t newline = buffer->find('\n');
    if (newline != std::string::npos) {
      *line = buffer->substr(0, newline);
      if (!line->empty() && line->back() == '\r') line->pop_back();
      buffer->erase(0, newline + 1);
      return true;
    }
    DWORD available = 0;
    if (!PeekNamedPipe(pipe, nullptr, 0, nullptr, &available, nullptr)) return false;
    if (available == 0) {
      if (now_ms() >= deadline) return false;
      Sleep(1);
      continue;
    }
    char chunk[512];
    DWORD got = 0;
    const DWORD want = available < sizeof chunk ? available : DWORD(sizeof chunk);
    if (!ReadFile(pipe, chunk, want, &got, nullptr) || got == 0) return false;
    buffer->append(chunk, got);
  }
}

void write_all(HANDLE pipe, const std::string &data) {
  size_t done = 0;
  while (done < data.size()) {
    DWORD wrote = 0;
    if (!WriteFile(pipe, data.data() + done, DWORD(data.size() - done), &wrote, nullptr) ||
        wrote == 0)
      return;  // the other side is gone; the reader will notice
    done += wrote;
  }
}

// Quotes one argument so that the C runtime's command-line parser (which
// MinGW's main() uses) gives it back unchanged.
std::wstring quote_argument(const std::wstring &arg) {
  if (!arg.empty() && arg.find_first_of(L" \t\n\v\"") == std::wstring::npos) return arg;
  std::wstring quoted = L"\"";
  size_t backslashes = 0;
  for (const wchar_t c : arg) {
    if (c == L'\\') {
      ++backslashes;
      continue;
    }
    // Backslashes are literal unless they precede a quote.
    quoted.append(c == L'"' ? backslashes * 2 + 1 : backslashes, L'\\');
    backslashes = 0;
    quoted.push_back(c);
  }
  quoted.append(backslashes * 2, L'\\');
  quoted.push_back(L'"');
  return quoted;
}

// CreateProcessW hands every inheritable handle to the child; spawning one
// child at a time keeps another thread's pipe ends out of it (a pipe end
// held by the wrong child would hide EOF).
std::mutex &spawn_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace

// ---- temp_dir ------------------------------------------------------------

temp_dir::temp_dir() {
  wchar_t base[MAX_PATH + 1];
  const DWORD n = GetTempPathW(MAX_PATH + 1, base);
  if (n == 0 || n > MAX_PATH) throw std::runtime_error("GetTempPathW failed");
  std::wstring folder = base;
  if (!folder.empty() && (folder.back() == L'\\' || folder.back() == L'/')) folder.pop_back();
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::wstring candidate =
        folder + L"\\ipl-test-" + std::to_wstring(GetCurrentProcessId()) + L"-" +
        std::to_wstring(counter.fetch_add(1)) + L"-" + std::to_wstring(GetTickCount64() % 100000);
    if (CreateDirectoryW(candidate.c_str(), nullptr)) {
      root_ = to_utf8(candidate);
      std::replace(root_.begin(), root_.end(), '\\', '/');
      return;
    }
    if (GetLastError() != ERROR_ALREADY_EXISTS) break;
  }
  throw std::runtime_error("cannot create a temporary folder");
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(std::filesystem::u8path(root_), ignored);
}

// ---- helpers, child side ---------------------------------------------------

void helper_say(const std::string &line) {
  write_all(GetStdHandle(STD_OUTPUT_HANDLE), line + "\n");
}

bool helper_hear(std::string *line, std::chrono::milliseconds bound) {
  return read_line_bounded(GetStdHandle(STD_INPUT_HANDLE), &helper_stdin_buffer, line, bound);
}

// ---- child_process ---------------------------------------------------------

std::string self_exe() {
  std::vector<wchar_t> buf(32768);
  const DWORD n = GetModuleFileNameW(nullptr, buf.data(), DWORD(buf.size()));
  if (n == 0 || n >= buf.size()) throw std::runtime_error("GetModuleFileNameW failed");
  return to_utf8(std::wstring(buf.data(), n));
}

child_process child_process::program(const std::vector<std::string> &argv) {
  std::wstring command_line;
  for (const auto &arg : argv) {
    if (!command_line.empty()) command_line += L' ';
    command_line += quote_argument(to_wide(arg));
  }

  std::lock_guard<std::mutex> one_at_a_time(spawn_mutex());
  SECURITY_ATTRIBUTES inheritable{};
  inheritable.nLength = sizeof inheritable;
  inheritable.bInheritHandle = TRUE;
  HANDLE child_stdin = nullptr, to_child = nullptr;
  HANDLE from_child = nullptr, child_stdout = nullptr;
  if (!CreatePipe(&child_stdin, &to_child, &inheritable, 0)) throw std::runtime_error("CreatePipe failed");
  if (!CreatePipe(&from_child, &child_stdout, &inheritable, 0)) {
    CloseHandle(child_stdin);
    CloseHandle(to_child);
    throw std::runtime_error("CreatePipe failed");
  }
  // Our ends stay here.
  SetHandleInformation(to_child, HANDLE_FLAG_INHERIT, 0);
  SetHandleInformation(from_child, HANDLE_FLAG_INHERIT, 0);
  // stderr is shared with the child (a copy, so it is surely inheritable).
  HANDLE child_stderr = nullptr;
  DuplicateHandle(GetCurrentProcess(), GetStdHandle(STD_ERROR_HANDLE), GetCurrentProcess(),
                  &child_stderr, 0, TRUE, DUPLICATE_SAME_ACCESS);

  STARTUPINFOW startup{};
  startup.cb = sizeof startup;
  startup.dwFlags = STARTF_USESTDHANDLES;
  startup.hStdInput = child_stdin;
  startup.hStdOutput = child_stdout;
  startup.hStdError = child_stderr;
  PROCESS_INFORMATION info{};
  std::vector<wchar_t> mutable_line(command_line.begin(), command_line.end());
  mutable_line.push_back(L'\0');
  const std::wstring program_path = to_wide(argv[0]);
  // An absolute program path is used as it is; a bare name is searched in
  // PATH (lpApplicationName NULL).
  const bool is_path = argv[0].find_first_of("/\\") != std::string::npos;
  const BOOL created =
      CreateProcessW(is_path ? program_path.c_str() : nullptr, mutable_line.data(), nullptr,
                     nullptr, TRUE, 0, nullptr, nullptr, &startup, &info);
  const DWORD create_error = GetLastError();
  CloseHandle(child_stdin);
  CloseHandle(child_stdout);
  if (child_stderr) CloseHandle(child_stderr);
  if (!created) {
    CloseHandle(to_child);
    CloseHandle(from_child);
    throw std::runtime_error("CreateProcessW " + argv[0] + ": error " +
                             std::to_string(create_error));
  }
  CloseHandle(info.hThread);
  child_process child;
  child.process_ = info.hProcess;
  child.pid_ = pid_t(info.dwProcessId);
  child.to_child_ = to_child;
  child.from_child_ = from_child;
  return child;
}

child_process &child_process::operator=(child_process &&other) noexcept {
  if (this != &other) {
    reap_if_running();
    pid_ = other.pid_;
    process_ = other.process_;
    to_child_ = other.to_child_;
    from_child_ = other.from_child_;
    buffered_ = std::move(other.buffered_);
    other.pid_ = -1;
    other.process_ = nullptr;
    other.to_child_ = nullptr;
    other.from_child_ = nullptr;
  }
  return *this;
}

void child_process::reap_if_running() {
  if (to_child_) CloseHandle(to_child_);
  if (from_child_) CloseHandle(from_child_);
  to_child_ = from_child_ = nullptr;
  if (process_) {
    TerminateProcess(process_, kKilledExitBase + SIGKILL);
    WaitForSingleObject(process_, INFINITE);
    CloseHandle(process_);
    process_ = nullptr;
    pid_ = -1;
  }
}

bool child_process::read_line(std::string *line, std::chrono::milliseconds bound) {
  return read_line_bounded(from_child_, &buffered_, line, bound);
}

bool child_process::silent_for(std::chrono::milliseconds window) {
  if (!buffered_.empty()) return false;
  const int64_t deadline = now_ms() + window.count();
  for (;;) {
    DWORD available = 0;
    if (!PeekNamedPipe(from_child_, nullptr, 0, nullptr, &available, nullptr)) return false;
    if (available > 0) return false;
    if (now_ms() >= deadline) return true;
    Sleep(1);
  }
}

void child_process::write_line(const std::string &line) { write_all(to_child_, line + "\n"); }

void child_process::close_stdin() {
  if (to_child_) CloseHandle(to_child_);
  to_child_ = nullptr;
}

void child_process::send_signal(int sig) {
  if (process_) TerminateProcess(process_, kKilledExitBase + DWORD(sig));
}

int child_process::wait(std::chrono::milliseconds bound) {
  if (!process_) return -1;
  if (WaitForSingleObject(process_, DWORD(bound.count())) != WAIT_OBJECT_0) {
    reap_if_running();
    return -1;
  }
  DWORD code = 0;
  GetExitCodeProcess(process_, &code);
  CloseHandle(process_);
  process_ = nullptr;
  pid_ = -1;
  return int(code);
}

int describe_status(int raw_status) {
  if (raw_status == -1) return -1;
  const DWORD code = DWORD(raw_status);
  if (code > kKilledExitBase && code < kKilledExitBase + 64) return -1000 - int(code - kKilledExitBase);
  return raw_status;
}

int count_handles_on_file(const std::string &path) {
  const HANDLE probe = CreateFileW(to_wide(path).c_str(), 0,
                                   FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                                   nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (probe == INVALID_HANDLE_VALUE) return -1;
  BY_HANDLE_FILE_INFORMATION target{};
  const BOOL have_target = GetFileInformationByHandle(probe, &target);
  CloseHandle(probe);
  if (!have_target) return -1;
  int count = 0;
  // Handle values are multiples of 4; a test process has far fewer than
  // 16384 handles open.
  for (uintptr_t value = 4; value < 4 * 16384; value += 4) {
    const HANDLE handle = reinterpret_cast<HANDLE>(value);
    if (handle == probe) continue;  // closed above; its value may be reused
    if (GetFileType(handle) != FILE_TYPE_DISK) continue;
    BY_HANDLE_FILE_INFORMATION seen{};
    if (GetFileInformationByHandle(handle, &seen) &&
        seen.dwVolumeSerialNumber == target.dwVolumeSerialNumber &&
        seen.nFileIndexHigh == target.nFileIndexHigh &&
        seen.nFileIndexLow == target.nFileIndexLow)
      ++count;
  }
  return count;
}

int open_fd_count() {
  DWORD count = 0;
  if (!GetProcessHandleCount(GetCurrentProcess(), &count)) return -1;
  return int(count);
}
#endif  // _WIN32

// ---- Lock modes and the lock agent ------------------------------------------

const lock_mode kAllModes[3] = {lock_mode::exclusive, lock_mode::write, lock_mode::shared};

const char *mode_name(lock_mode mode) {
  switch (mode) {
    case lock_mode::exclusive: return "exclusive";
    case lock_mode::write: return "write";
    case lock_mode::shared: return "shared";
  }
  return "?";
}

bool mode_from_name(const std::string &name, lock_mode *mode) {
  for (lock_mode candidate : kAllModes) {
    if (name == mode_name(candidate)) {
      *mode = candidate;
      return true;
    }
  }
  return false;
}

bool modes_conflict(lock_mode held, lock_mode wanted) {
  return !(held == lock_mode::shared && wanted == lock_mode::shared);
}

int acquire_in_mode(ipl_lock *lock, lock_mode mode, int64_t timeout_ms) {
  switch (mode) {
    case lock_mode::exclusive: return ipl_acquire(lock, timeout_ms);
    case lock_mode::write: return ipl_acquire_write(lock, timeout_ms);
    case lock_mode::shared: return ipl_acquire_read(lock, timeout_ms);
  }
  return IPL_E_INTERNAL;
}

int release_in_mode(ipl_lock *lock, lock_mode mode) {
  switch (mode) {
    case lock_mode::exclusive: return ipl_release(lock);
    case lock_mode::write: return ipl_release_write(lock);
    case lock_mode::shared: return ipl_release_read(lock);
  }
  return IPL_E_INTERNAL;
}

owned_lock open_owned_lock(const std::string &path) {
  ipl_lock *raw = nullptr;
  const int status = ipl_open(path.c_str(), 0, &raw);
  EXPECT_EQ(status, IPL_OK) << "ipl_open " << path << ": " << status_text(status);
  return owned_lock(raw);
}

std::string status_text(int status) {
  return std::to_string(status) + " (" + ipl_strerror(status) + ")";
}

int64_t lock_agent::clock_ns() {
#ifdef _WIN32
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
#else
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
#endif
}

namespace {

void say_status(int status, int64_t at_ns) {
  helper_say("rc " + std::to_string(status) + " " + std::to_string(at_ns));
}

// args: PATH FLAGS CREATE_MODE. The agent's side of the protocol
// (test_support.hpp, above class lock_agent).
IPL_TEST_HELPER(lock_agent) {
  if (args.size() != 3) return 2;
  const uint32_t flags = uint32_t(std::stoul(args[1]));
  const int create_mode = std::stoi(args[2]);
  ipl_lock *lock = nullptr;
  const int opened =
      create_mode < 0
          ? ipl_open_ex(args[0].c_str(), flags, &lock, nullptr)
          : ipl_open_mode(args[0].c_str(), flags, uint32_t(create_mode), &lock, nullptr);
  if (opened != IPL_OK) {
    helper_say("open-failed " + std::to_string(opened));
    return 3;
  }
  helper_say("ready");
  std::string line;
  while (helper_hear(&line)) {
    std::istringstream words(line);
    std::string verb;
    std::string mode_word;
    int64_t number = 0;
    words >> verb;
    if (verb == "exit") break;
    if (verb == "close") {
      ipl_close(lock);
      lock = nullptr;
      helper_say("closed");
      continue;
    }
    words >> mode_word;
    lock_mode mode = lock_mode::exclusive;
    if (!mode_from_name(mode_word, &mode)) {
      helper_say("bad command: " + line);
      continue;
    }
    const bool has_number = bool(words >> number);
    if (verb == "acquire" && has_number) {
      const int status = acquire_in_mode(lock, mode, number);
      say_status(status, lock_agent::clock_ns());
    } else if (verb == "wait" && has_number) {
      int status = acquire_in_mode(lock, mode, 0);
      if (status == IPL_E_TIMEOUT && number != 0) {
        helper_say("waiting " + std::to_string(lock_agent::clock_ns()));
        status = acquire_in_mode(lock, mode, number);
      }
      say_status(status, lock_agent::clock_ns());
    } else if (verb == "release") {
      // The delay is the scenario (a holder that works a while), not a handshake.
      if (has_number) std::this_thread::sleep_for(std::chrono::milliseconds(number));
      const int64_t released_at = lock_agent::clock_ns();
      say_status(release_in_mode(lock, mode), released_at);
    } else {
      helper_say("bad command: " + line);
    }
  }
  ipl_close(lock);
  return 0;
}

}  // namespace

lock_agent::lock_agent(const std::string &path, uint32_t open_flags, int create_mode)
    : child_(child_process::helper(
          "lock_agent", {path, std::to_string(open_flags), std::to_string(create_mode)})) {}

lock_agent::lock_agent(child_process child, std::string name)
    : child_(std::move(child)), name_(std::move(name)) {}

lock_agent lock_agent::program(const std::vector<std::string> &argv, const std::string &name) {
  return lock_agent(child_process::program(argv), name);
}

bool lock_agent::started() {
  if (start_answered_) return open_status_ == IPL_OK;
  start_answered_ = true;
  std::string line;
  if (!child_.read_line(&line)) {
    ADD_FAILURE() << name_ << " did not start";
    return false;
  }
  if (line == "ready") {
    open_status_ = IPL_OK;
    return true;
  }
  std::istringstream words(line);
  std::string word;
  int status = 0;
  if (words >> word && word == "open-failed" && words >> status) open_status_ = status;
  ADD_FAILURE() << name_ << ": " << line;
  return false;
}

bool lock_agent::hold(lock_mode mode) {
  if (!started()) return false;
  const int status = acquire(mode, 0);
  if (status == IPL_OK) return true;
  ADD_FAILURE() << name_ << " could not take the lock " << mode_name(mode) << ": "
                << status_text(status);
  return false;
}

void lock_agent::start_acquire(lock_mode mode, int64_t timeout_ms) {
  child_.write_line(std::string("acquire ") + mode_name(mode) + " " + std::to_string(timeout_ms));
}

int lock_agent::acquire(lock_mode mode, int64_t timeout_ms, std::chrono::milliseconds bound) {
  start_acquire(mode, timeout_ms);
  return reply(bound);
}

int lock_agent::wait(lock_mode mode, int64_t timeout_ms) {
  child_.write_line(std::string("wait ") + mode_name(mode) + " " + std::to_string(timeout_ms));
  return reply();
}

int lock_agent::release(lock_mode mode) {
  child_.write_line(std::string("release ") + mode_name(mode));
  return reply();
}

void lock_agent::start_release(lock_mode mode, std::chrono::milliseconds delay) {
  child_.write_line(std::string("release ") + mode_name(mode) + " " +
                    std::to_string(delay.count()));
}

bool lock_agent::close_handle() {
  child_.write_line("close");
  return child_.expect_line("closed");
}

int lock_agent::reply(std::chrono::milliseconds bound) {
  stamp_ns_ = -1;
  std::string line;
  if (!child_.read_line(&line, bound)) return kNoReply;
  std::istringstream words(line);
  std::string word;
  int status = kNoReply;
  int64_t at_ns = -1;
  words >> word;
  if (word == "waiting" && words >> at_ns) {
    stamp_ns_ = at_ns;
    return kWaiting;
  }
  if (word == "rc" && words >> status) {
    if (words >> at_ns) stamp_ns_ = at_ns;
    return status;
  }
  ADD_FAILURE() << name_ << " said: " << line;
  return kNoReply;
}

int lock_agent::kill_and_reap() {
  child_.send_signal(SIGKILL);
  return describe_status(child_.wait(kBound));
}

int try_from_other_process(const std::string &path, lock_mode mode) {
  lock_agent prober(path);
  if (!prober.started()) return kNoReply;
  const int status = prober.acquire(mode, 0);
  if (status == IPL_OK) prober.release(mode);
  return status;
}

}  // namespace ipltest

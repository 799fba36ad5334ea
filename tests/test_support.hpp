// SPDX-License-Identifier: MIT
// Shared test support: per-test temporary folders, helper processes (the
// test binary re-executed with a helper argument), bounded waits.
#ifndef IPL_TESTS_TEST_SUPPORT_HPP
#define IPL_TESTS_TEST_SUPPORT_HPP

#include <sys/types.h>

#ifdef _WIN32
#include <signal.h>
#endif

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ipl/ipl.h"

#ifdef _WIN32
// Windows has no SIGKILL; child_process::send_signal(SIGKILL) ends the child
// with TerminateProcess, which is what "killed" means there, and
// describe_status() gives -1000 - SIGKILL for it, so crash tests read the
// same on both systems.
#ifndef SIGKILL
#define SIGKILL 9
#endif
#endif

namespace ipltest {

using namespace std::chrono_literals;

// The bound on every wait in a test that "should" finish quickly: a bug
// fails the test after this long instead of hanging CI.
constexpr std::chrono::milliseconds kBound = 20s;

// A fresh folder under $TMPDIR (or /tmp; on Windows GetTempPathW), removed
// with everything in it. Paths use '/' everywhere (Windows accepts it).
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir &) = delete;
  temp_dir &operator=(const temp_dir &) = delete;

  const std::string &root() const { return root_; }
  std::string path(const std::string &name) const { return root_ + "/" + name; }

 private:
  std::string root_;
};

// ---- Helper processes ----------------------------------------------------
// A helper is a function of the test binary, run in a child process that
// re-executes the binary as `<binary> --ipl-helper NAME ARGS...`. It talks to
// the test over its stdin/stdout, one line at a time.
using helper_fn = int (*)(const std::vector<std::string> &args);

struct helper_registrar {
  helper_registrar(const char *name, helper_fn fn);
};

#define IPL_TEST_HELPER(name)                                          \
  static int ipl_helper_##name(const std::vector<std::string> &args);  \
  static ::ipltest::helper_registrar ipl_helper_registrar_##name(      \
      #name, ipl_helper_##name);                                       \
  static int ipl_helper_##name(const std::vector<std::string> &args)

// Called first thing in main(): when argv asks for a helper, runs it and
// returns true with its exit code in *exit_code.
bool run_helper_if_requested(int argc, char **argv, int *exit_code);

// In a helper: write one line to the test (flushed at once).
void helper_say(const std::string &line);
// In a helper: read one line from the test. Returns false on EOF (the test
// went away) or after `bound`; the helper should then exit.
bool helper_hear(std::string *line, std::chrono::milliseconds bound = kBound);

// A child process with piped stdin/stdout (stderr is inherited).
class child_process {
 public:
  // Re-executes this test binary running helper `name`.
  static child_process helper(const std::string &name,
                              const std::vector<std::string> &args = {});
  // Runs any program (argv[0] is looked up in PATH).
  static child_process program(const std::vector<std::string> &argv);

  child_process(child_process &&other) noexcept;
  child_process &operator=(child_process &&other) noexcept;
  child_process(const child_process &) = delete;
  child_process &operator=(const child_process &) = delete;
  // Kills (SIGKILL) and reaps the child if it is still running.
  ~child_process();

  pid_t pid() const { return pid_; }

  // Reads one line (without the newline). False on EOF or after `bound`.
  bool read_line(std::string *line, std::chrono::milliseconds bound = kBound);
  // Reads lines until one equals `expected`; false on EOF, timeout, or when
  // another line arrives first (it is stored in *got when got is not NULL).
  bool expect_line(const std::string &expected,
                   std::chrono::milliseconds bound = kBound,
                   std::string *got = nullptr);
  // True when nothing (not even EOF) arrives within `window`.
  bool silent_for(std::chrono::milliseconds window);
  void write_line(const std::string &line);
  void close_stdin();

  // On Windows every signal is a TerminateProcess (see SIGKILL above).
  void send_signal(int sig);
  // Waits for exit; returns the raw waitpid() status (on Windows the exit
  // code), or -1 after `bound` (the child is then killed).
  int wait(std::chrono::milliseconds bound = kBound);

 private:
  child_process() = default;
  void reap_if_running();

  pid_t pid_ = -1;
#ifdef _WIN32
  void *process_ = nullptr;  // HANDLEs; <windows.h> stays out of the tests
  void *to_child_ = nullptr;
  void *from_child_ = nullptr;
#else
  int to_child_ = -1;
  int from_child_ = -1;
#endif
  std::string buffered_;
};

// Exit code of a normally exited child, or -1000 - signal, for messages.
int describe_status(int raw_status);

// Number of open file descriptors of this process (from /proc/self/fd; on
// Windows the process's handle count).
int open_fd_count();

#ifdef _WIN32
// The number of handles of this process that refer to the file at `path`
// (same volume and file id), found by trying every handle value; -1 when
// the file cannot be examined. Windows' answer to scanning /proc/self/fd.
int count_handles_on_file(const std::string &path);
#endif

// The path of the running test binary.
std::string self_exe();

// Built with -fsanitize=thread: ThreadSanitizer runs an asynchronous
// signal's handler only when the thread next enters a function it
// intercepts, so a handler never runs while a thread is blocked in fcntl().
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

// ---- Lock modes and the lock agent ----------------------------------------

// ipl_acquire and ipl_acquire_write are distinct entry points of one mode, so
// tests that list every entry point keep them apart.
enum class lock_mode { exclusive, write, shared };
extern const lock_mode kAllModes[3];

const char *mode_name(lock_mode mode);
// False for a name that is not one of mode_name()'s.
bool mode_from_name(const std::string &name, lock_mode *mode);
// The documented rule: only shared vs shared coexists.
bool modes_conflict(lock_mode held, lock_mode wanted);
// The ipl_* entry point that takes / releases `mode`.
int acquire_in_mode(ipl_lock *lock, lock_mode mode, int64_t timeout_ms);
int release_in_mode(ipl_lock *lock, lock_mode mode);
// "12 (text of ipl_strerror)"
std::string status_text(int status);

// A handle that is closed when it goes out of scope.
struct lock_closer {
  void operator()(ipl_lock *lock) const { ipl_close(lock); }
};
using owned_lock = std::unique_ptr<ipl_lock, lock_closer>;

// ipl_open(path, 0); on failure records a test failure and returns an
// empty handle.
owned_lock open_owned_lock(const std::string &path);

// Not ipl statuses: the agent did not answer in time, or answered nonsense;
// the agent says it is waiting (lock_agent::wait).
constexpr int kNoReply = 1000;
constexpr int kWaiting = 1001;

// The one helper process for "a lock held somewhere else": a child process
// (the test binary re-executed) with its own handle on `path`, driven one
// command at a time. Each call waits for the agent's answer (bounded).
//
// The protocol, one line each way; tests/fasteners_peer.py speaks it too,
// with Python fasteners' locks in place of libipl's:
//   (start)                  -> "ready", or one line saying why not
//                               ("open-failed STATUS": ipl_open failed)
//   acquire MODE TIMEOUT_MS  -> "rc STATUS T": one acquire call
//   wait MODE TIMEOUT_MS     -> one try; if it finds the lock held elsewhere
//                               (and TIMEOUT_MS != 0), "waiting T" and then
//                               the call with TIMEOUT_MS; then "rc STATUS T"
//   release MODE [DELAY_MS]  -> "rc STATUS T"; with DELAY_MS, the agent first
//                               sleeps that long (reading no command)
//   close                    -> "closed": ipl_close; the process lives on
//   exit, or EOF             -> the agent closes its handle and exits
// MODE is a mode_name(), TIMEOUT_MS as ipl_acquire's (IPL_WAIT_FOREVER is
// -1), STATUS an ipl status. T is lock_agent::clock_ns() in the agent: just
// after an acquire call returned, just before a release or a wait started —
// so a waiter's T above a holder's release T proves the waiter got the lock
// only after the holder let go. Anything else: "bad command: LINE".
class lock_agent {
 public:
  // open_flags / create_mode: as ipl_open_mode (create_mode < 0: ipl_open_ex).
  explicit lock_agent(const std::string &path, uint32_t open_flags = 0, int create_mode = -1);
  // Another program that speaks the protocol (tests/fasteners_peer.py);
  // `name` labels its failures.
  static lock_agent program(const std::vector<std::string> &argv, const std::string &name);

  // True once the agent has opened its handle (else records a failure; the
  // open status is then in open_status()). Asks once; later calls repeat
  // the first answer.
  bool started();
  int open_status() const { return open_status_; }
  // started(), and a try in `mode` that gets the lock; else records a
  // failure and returns false.
  bool hold(lock_mode mode);

  // ipl_acquire* in the agent; the status, or kNoReply after `bound`.
  int acquire(lock_mode mode, int64_t timeout_ms, std::chrono::milliseconds bound = kBound);
  // Sends the acquire without waiting for its answer (read it with reply()).
  void start_acquire(lock_mode mode, int64_t timeout_ms);
  // "wait": kWaiting once the agent has found the lock held and is waiting
  // (the outcome is the next reply()); else the status its try answered.
  int wait(lock_mode mode, int64_t timeout_ms);
  int release(lock_mode mode);
  // Sends a release the agent makes after `delay` (read its answer with
  // reply()): the holder lets go while the test is blocked in a call.
  void start_release(lock_mode mode, std::chrono::milliseconds delay);
  // ipl_close in the agent (the process lives on); true when it answered.
  bool close_handle();
  // The status the agent answers with (kWaiting for "waiting"), or kNoReply
  // after `bound`.
  int reply(std::chrono::milliseconds bound = kBound);
  // T of the last answer reply() read; -1 when it had none.
  int64_t stamp_ns() const { return stamp_ns_; }
  // True when the agent says nothing for `window` (e.g. it is still blocked).
  bool silent_for(std::chrono::milliseconds window) { return child_.silent_for(window); }
  // SIGKILLs the agent and reaps it: describe_status() of its end (-1 when
  // it did not end within kBound).
  int kill_and_reap();

  child_process &process() { return child_; }

  // The clock of T, the same in every process: CLOCK_MONOTONIC in
  // nanoseconds (Python's time.monotonic_ns()); steady_clock on Windows.
  static int64_t clock_ns();

 private:
  lock_agent(child_process child, std::string name);

  child_process child_;
  std::string name_ = "lock agent";
  bool start_answered_ = false;
  int open_status_ = kNoReply;
  int64_t stamp_ns_ = -1;
};

// One try (timeout 0) from a fresh process: IPL_OK (it was free; the prober
// released it again), IPL_E_TIMEOUT (held elsewhere), another status, or
// kNoReply.
int try_from_other_process(const std::string &path, lock_mode mode);

}  // namespace ipltest

#endif  // IPL_TESTS_TEST_SUPPORT_HPP

// SPDX-License-Identifier: MIT
// Iplock: the iplock command-line tool (tools/iplock.c), run as a real
// process ($IPL_IPLOCK) against other iplocks and against Python's fasteners.
//
// Every iplock is started through the helper iplock_exec_clean, which gives
// it a known signal state (every disposition default, nothing blocked, or
// one signal ignored on purpose) and then execs it: the pid the test holds is
// iplock's own, and the test's run environment (a shell that ignores SIGINT
// in background jobs, say) cannot change what a test sees.
//
// Lock holders run a helper of this binary as iplock's COMMAND: it says
// "ready" once it runs (so the lock is held) and waits for a line from the
// test, which reaches it through iplock's inherited stdin.
//
// Descriptor mode (`iplock 9`), -F and a lock that outlives a killed iplock
// need open-file-description locks: the classic build (kOfdBuild false)
// refuses the first two with exit 71, and there the lock dies with iplock,
// as iplock(1) documents; those tests check that instead.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include "test_support.hpp"

namespace {

using namespace ipltest;
using clock_type = std::chrono::steady_clock;

// The signals that end iplock's wait for the lock (and that it forwards to
// nobody while the command runs).
const int kWaitSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

const bool kOfdBuild = std::string(IPL_POSIX_LOCK_KIND) == "ofd";

// ---- Helpers (child side) ---------------------------------------------------

// args: STDERR_FILE ("-": inherit) IGNORED_SIGNAL (0: none) PROGRAM ARG...
// Resets the signal state, then execs PROGRAM (keeping this pid).
IPL_TEST_HELPER(iplock_exec_clean) {
  if (args.size() < 3) return 90;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    signal(sig, SIG_DFL);  // fails harmlessly for numbers that are no signal
  }
  const int ignored_signal = std::atoi(args[1].c_str());
  if (ignored_signal > 0) signal(ignored_signal, SIG_IGN);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (args[0] != "-" && !std::freopen(args[0].c_str(), "w", stderr)) return 91;
  std::vector<char *> argv;
  for (size_t i = 2; i < args.size(); ++i) argv.push_back(const_cast<char *>(args[i].c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  std::perror("iplock_exec_clean: execv");
  return 92;
}

// Says "ready", then exits 0 when the test writes a line (3 on EOF/timeout).
IPL_TEST_HELPER(iplock_wait_for_line) {
  (void)args;
  helper_say("ready");
  std::string line;
  return helper_hear(&line) ? 0 : 3;
}

volatile sig_atomic_t signals_received = 0;
void count_signal(int) { signals_received = signals_received + 1; }

// args: SIGNAL. Counts deliveries of SIGNAL, says "ready", then answers
// "report" with "count N" and ends (exit 0) at "exit" (3 on EOF/timeout).
IPL_TEST_HELPER(iplock_count_signals) {
  if (args.size() != 1) return 90;
  const int sig = std::atoi(args[0].c_str());
  struct sigaction action {};
  action.sa_handler = count_signal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  if (sigaction(sig, &action, nullptr) != 0) return 91;
  helper_say("ready");
  std::string line;
  while (helper_hear(&line)) {
    if (line == "report") helper_say("count " + std::to_string(signals_received));
    if (line == "exit") return 0;
  }
  return 3;
}

// args: PATH. Says "pid P fds N" (N: its open descriptors on the file at
// PATH), then exits 0 when the test writes a line (3 on EOF/timeout).
IPL_TEST_HELPER(iplock_probe_command) {
  if (args.size() != 1) return 90;
  struct stat file {};
  if (stat(args[0].c_str(), &file) != 0) return 91;
  int on_file = 0;
  for (int fd = 0; fd < 1024; ++fd) {
    struct stat st {};
    if (fstat(fd, &st) == 0 && st.st_dev == file.st_dev && st.st_ino == file.st_ino) ++on_file;
  }
  helper_say("pid " + std::to_string(getpid()) + " fds " + std::to_string(on_file));
  std::string line;
  return helper_hear(&line) ? 0 : 3;
}

// As iplock_exec_clean, in a new process group of its own (led by iplock),
// so that the test can signal iplock's group without signaling itself.
IPL_TEST_HELPER(iplock_exec_in_new_group) {
  if (setpgid(0, 0) != 0) return 94;
  return ipl_helper_iplock_exec_clean(args);
}

// Prints the state of the wait signals as this process found it:
// "blocked:<nums> ignored:<nums> caught:<nums>" (each list comma-separated).
IPL_TEST_HELPER(iplock_signal_state) {
  (void)args;
  sigset_t mask;
  sigprocmask(SIG_SETMASK, nullptr, &mask);
  std::string blocked, ignored, caught;
  for (const int sig : kWaitSignals) {
    struct sigaction action {};
    sigaction(sig, nullptr, &action);
    const std::string number = std::to_string(sig) + ",";
    if (sigismember(&mask, sig)) blocked += number;
    if (action.sa_handler == SIG_IGN) ignored += number;
    else if (action.sa_handler != SIG_DFL) caught += number;
  }
  helper_say("blocked:" + blocked + " ignored:" + ignored + " caught:" + caught);
  return 0;
}

// ---- Test side --------------------------------------------------------------

std::string iplock_path() {
  const char *configured = getenv("IPL_IPLOCK");
  if (configured && *configured) return configured;
  // Run by hand from the build folder: tests/ipl_tests next to tools/iplock.
  const std::string self = self_exe();
  return self.substr(0, self.rfind('/')) + "/../tools/iplock";
}

std::string fasteners_python() {
  const char *python = getenv("IPL_FASTENERS_PYTHON");
  return python && *python ? python : "/usr/bin/python3";
}

// The argv that runs helper `name` of this binary as iplock's COMMAND.
std::vector<std::string> helper_command(const std::string &name,
                                        const std::vector<std::string> &args = {}) {
  std::vector<std::string> argv{self_exe(), "--ipl-helper", name};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string> &b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Starts `iplock ARGS...` with a clean signal state (see the top).
child_process start_iplock(const std::vector<std::string> &args,
                           const std::string &stderr_file = "-", int ignored_signal = 0) {
  return child_process::helper(
      "iplock_exec_clean",
      concat({stderr_file, std::to_string(ignored_signal), iplock_path()}, args));
}

struct finished_run {
  int exit_code = -1;  // describe_status(): -1 timeout, -1000-N killed by N
  std::vector<std::string> out;
  std::string err;
  std::chrono::milliseconds elapsed{0};
};

std::string read_file(const std::string &path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs `iplock ARGS...` to its end (bounded) and collects what it printed.
finished_run run_iplock(const temp_dir &dir, const std::vector<std::string> &args,
                        int ignored_signal = 0) {
  const std::string err_file = dir.path("iplock.stderr");
  const auto start = clock_type::now();
  child_process iplock = start_iplock(args, err_file, ignored_signal);
  finished_run run;
  std::string line;
  // Lines until EOF: every process holding the pipe (iplock, COMMAND) ended.
  while (iplock.read_line(&line)) run.out.push_back(line);
  run.exit_code = describe_status(iplock.wait());
  run.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
  run.err = read_file(err_file);
  return run;
}

// Writes a line to a child that may already have ended (after a failure):
// with SIGPIPE ignored meanwhile, that fails the test instead of killing
// the whole test binary.
void tell(child_process &child, const std::string &line) {
  struct sigaction ignore {}, previous {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGPIPE, &ignore, &previous);
  child.write_line(line);
  sigaction(SIGPIPE, &previous, nullptr);
}

// An iplock holding LOCK (with OPTIONS) until release() is called.
class lock_holder {
 public:
  lock_holder(const std::string &lock, const std::vector<std::string> &options = {})
      : iplock_(start_iplock(concat(concat(options, {lock}),
                                    helper_command("iplock_wait_for_line")))) {}

  // True once the command runs, i.e. iplock holds the lock.
  bool wait_until_held() { return iplock_.expect_line("ready"); }
  // Lets the command end; iplock's exit code (describe_status()).
  int release() {
    tell(iplock_, "release");
    return describe_status(iplock_.wait());
  }

 private:
  child_process iplock_;
};

bool file_exists(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// True once process `pid` catches `sig` (per /proc/PID/status), within kBound.
// iplock installs its handlers before it opens or waits for the lock, so
// from then on the signal is sure to reach iplock's handler, not kill it.
bool wait_until_catches(pid_t pid, int sig) {
  const auto deadline = clock_type::now() + kBound;
  const std::string status_path = "/proc/" + std::to_string(pid) + "/status";
  while (clock_type::now() < deadline) {
    std::ifstream status(status_path);
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("SigCgt:", 0) != 0) continue;
      const unsigned long long caught = std::stoull(line.substr(7), nullptr, 16);
      if (caught & (1ull << (sig - 1))) return true;
    }
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

// Starts `iplock ARGS...` as the leader of a new process group (its pgid is
// its pid), with a clean signal state.
child_process start_iplock_in_new_group(const std::vector<std::string> &args) {
  return child_process::helper("iplock_exec_in_new_group",
                               concat({"-", "0", iplock_path()}, args));
}

// Runs /bin/sh -c SCRIPT with $1 = iplock and $2, $3, ... = ARGS: the
// descriptor-mode idioms are shell idioms.
child_process start_shell(const std::string &script, const std::vector<std::string> &args) {
  return child_process::program(concat({"/bin/sh", "-c", script, "sh", iplock_path()}, args));
}

// True once the file at `path` contains `text`, within kBound.
bool wait_for_text(const std::string &path, const std::string &text) {
  const auto deadline = clock_type::now() + kBound;
  while (clock_type::now() < deadline) {
    if (read_file(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// True once another process can take `lock` exclusive, within kBound (a
// process that ends releases its locks a moment after its pipes close).
bool wait_until_free(const std::string &lock) {
  const auto deadline = clock_type::now() + kBound;
  while (clock_type::now() < deadline) {
    if (try_from_other_process(lock, lock_mode::exclusive) == IPL_OK) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// /proc/PID/comm without its newline ("" when unreadable).
std::string process_name(pid_t pid) {
  std::string name = read_file("/proc/" + std::to_string(pid) + "/comm");
  if (!name.empty() && name.back() == '\n') name.pop_back();
  return name;
}

// The X of --verbose's "getting lock took X seconds", or -1.
double reported_lock_seconds(const std::string &err) {
  const std::string prefix = "getting lock took ";
  const size_t at = err.find(prefix);
  if (at == std::string::npos) return -1;
  return std::atof(err.c_str() + at + prefix.size());
}

// Runs a Python snippet with fasteners; its argv[1] is `lock`.
child_process start_fasteners(const std::string &script, const std::string &lock) {
  return child_process::program({fasteners_python(), "-c", script, lock});
}

const char kFastenersHolder[] =
    "import sys, fasteners\n"
    "lock = fasteners.InterProcessLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
    "lock.release()\n";

const char kFastenersTry[] =
    "import sys, fasteners\n"
    "lock = fasteners.InterProcessLock(sys.argv[1])\n"
    "got = lock.acquire(blocking=False)\n"
    "print('acquired' if got else 'busy', flush=True)\n"
    "if got: lock.release()\n";

// ---- Options -------------------------------------------------------------------

// Catches: no lock taken at all, or -n waiting instead of failing at once.
TEST(IplockOptions, ExclusiveByDefaultAndNonblockConflictExitsOne) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  const finished_run run = run_iplock(dir, {"-n", lock, "echo", "ran"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(run.out.empty()) << "the command ran although the lock was held";
  EXPECT_LT(run.elapsed, 10s) << "-n must not wait";
  EXPECT_EQ(holder.release(), 0);
}

// Catches: -x (or --exclusive) ignored or taken for -s, and -s then -x
// keeping the shared mode (the last of -s/-x must win).
TEST(IplockOptions, ExplicitExclusiveConflictsWithSharedHolder) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-s"});
  ASSERT_TRUE(holder.wait_until_held());

  EXPECT_EQ(run_iplock(dir, {"-x", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"--exclusive", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"-s", "-x", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: -s ignored (an exclusive lock would make the second -s conflict),
// or a shared lock that also lets an exclusive one in.
TEST(IplockOptions, SharedLocksCoexistAndExcludeExclusive) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-s"});
  ASSERT_TRUE(holder.wait_until_held());

  const finished_run shared = run_iplock(dir, {"-s", "-n", lock, "echo", "ran"});
  EXPECT_EQ(shared.exit_code, 0) << shared.err;
  EXPECT_EQ(shared.out, std::vector<std::string>{"ran"});
  EXPECT_EQ(run_iplock(dir, {"--shared", "-n", lock, "true"}).exit_code, 0);
  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: an exclusive holder that lets a shared locker in.
TEST(IplockOptions, ExclusiveHolderExcludesShared) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-x"});
  ASSERT_TRUE(holder.wait_until_held());
  EXPECT_EQ(run_iplock(dir, {"-s", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: -E / --conflict-exit-code ignored (exit 1) or parsed wrongly.
TEST(IplockOptions, ConflictExitCodeOption) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());
  EXPECT_EQ(run_iplock(dir, {"-E", "42", "-n", lock, "true"}).exit_code, 42);
  EXPECT_EQ(run_iplock(dir, {"--conflict-exit-code=0", "-n", lock, "true"}).exit_code, 0);
  EXPECT_EQ(run_iplock(dir, {"-E", "255", "-w", "0.05", lock, "true"}).exit_code, 255);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: -w giving up early (e.g. "0.3" read as 0, or whole seconds
// rounded down), treated as "wait forever" (the bounded run then fails), or
// running the command after the timeout.
TEST(IplockOptions, TimeoutGivesUpAfterTheTimeout) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  const finished_run run = run_iplock(dir, {"-w", "0.3", lock, "echo", "ran"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(run.out.empty());
  EXPECT_GE(run.elapsed, 300ms);
  EXPECT_LT(run.elapsed, 10s);

  const finished_run long_option = run_iplock(dir, {"--timeout", "0.25", "-E", "9", lock, "true"});
  EXPECT_EQ(long_option.exit_code, 9);
  EXPECT_GE(long_option.elapsed, 250ms);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: -w not waiting at all (it would fail while the holder still
// runs), or not noticing the release within the timeout.
TEST(IplockOptions, TimeoutSucceedsWhenReleasedInTime) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  child_process waiter = start_iplock({"-w", "20", lock, "echo", "got it"});
  EXPECT_TRUE(waiter.silent_for(300ms)) << "ran (or gave up) while the lock was held";
  EXPECT_EQ(holder.release(), 0);
  EXPECT_TRUE(waiter.expect_line("got it"));
  EXPECT_EQ(describe_status(waiter.wait()), 0);
}

// Catches: -o / --close rejected as an unknown option, or swallowing the
// command's status.
TEST(IplockOptions, CloseOptionIsAccepted) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  EXPECT_EQ(run_iplock(dir, {"-o", lock, "sh", "-c", "exit 5"}).exit_code, 5);
  EXPECT_EQ(run_iplock(dir, {"--close", lock, "sh", "-c", "exit 6"}).exit_code, 6);
}

// Catches: -c run without a shell (exec of "-c": 127), or its shell syntax
// (a pipe, an exit status) not interpreted.
TEST(IplockOptions, ShellCommandOption) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const finished_run run = run_iplock(dir, {lock, "-c", "echo hello world | tr a-z A-Z; exit 3"});
  EXPECT_EQ(run.exit_code, 3) << run.err;
  EXPECT_EQ(run.out, std::vector<std::string>{"HELLO WORLD"});
  EXPECT_EQ(run_iplock(dir, {lock, "--command", "exit 4"}).exit_code, 4);
}

// Catches: option parsing that does not stop at LOCKFILE (GNU getopt would
// permute and eat the command's -x and -n).
TEST(IplockOptions, CommandOptionsPassThrough) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const finished_run run = run_iplock(dir, {lock, "printf", "%s\\n", "-x", "-n", "--help"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, (std::vector<std::string>{"-x", "-n", "--help"}));
}

// Catches: help/version exiting non-zero, printing nothing, or a version
// that is not the loaded library's.
TEST(IplockOptions, HelpAndVersion) {
  temp_dir dir;
  for (const char *help : {"-h", "--help"}) {
    const finished_run run = run_iplock(dir, {help});
    EXPECT_EQ(run.exit_code, 0) << help;
    ASSERT_FALSE(run.out.empty()) << help;
    EXPECT_NE(run.out[0].find("Usage"), std::string::npos) << run.out[0];
  }
  for (const char *version : {"-V", "--version"}) {
    const finished_run run = run_iplock(dir, {version});
    EXPECT_EQ(run.exit_code, 0) << version;
    ASSERT_EQ(run.out.size(), 1u) << version;
    EXPECT_NE(run.out[0].find("iplock"), std::string::npos) << run.out[0];
    EXPECT_NE(run.out[0].find(ipl_version_string()), std::string::npos) << run.out[0];
  }
}

// ---- Exit status ------------------------------------------------------------------

// Catches: iplock exiting 0 (or 1) whatever the command did.
TEST(IplockExitStatus, CommandStatusPassesThrough) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  EXPECT_EQ(run_iplock(dir, {lock, "sh", "-c", "exit 7"}).exit_code, 7);
  EXPECT_EQ(run_iplock(dir, {lock, "true"}).exit_code, 0);
}

// Catches: a signal death reported as the raw wait status, as 0/1, or by
// iplock killing itself with the signal (a shell would see 128+9 either
// way, but iplock's own caller must get an exit code).
TEST(IplockExitStatus, CommandKilledBySignalGives128PlusSignal) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  EXPECT_EQ(run_iplock(dir, {lock, "sh", "-c", "kill -KILL $$"}).exit_code, 128 + SIGKILL);
}

// Catches: a missing or non-executable command reported as an iplock
// failure (71) or as 1, instead of 127 / 126 as shells do; and a lock
// left behind by the failed start.
TEST(IplockExitStatus, CommandNotFoundOrNotExecutable) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const finished_run missing = run_iplock(dir, {lock, "ipl-no-such-command-here"});
  EXPECT_EQ(missing.exit_code, 127);
  EXPECT_NE(missing.err.find("ipl-no-such-command-here"), std::string::npos) << missing.err;
  EXPECT_EQ(run_iplock(dir, {lock, dir.path("missing-program")}).exit_code, 127);

  const std::string not_executable = dir.path("script");
  std::ofstream(not_executable) << "#!/bin/sh\nexit 0\n";
  ASSERT_EQ(chmod(not_executable.c_str(), 0644), 0);
  const finished_run denied = run_iplock(dir, {lock, not_executable});
  EXPECT_EQ(denied.exit_code, 126);
  EXPECT_FALSE(denied.err.empty());

  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 0);
}

// Catches: accepting garbage (strtod("abc") is 0, atoi("x") is 0), negative,
// nan or inf timeouts, out-of-range exit codes, or a missing command, and
// then running something; or a wrong exit code / no message.
TEST(IplockExitStatus, UsageErrorsExit64WithAMessage) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const std::string marker = dir.path("marker");
  const std::vector<std::vector<std::string>> bad_command_lines = {
      {},
      {lock},
      {"-n"},
      {"-w"},
      {"-w", "abc", lock, "touch", marker},
      {"-w", "", lock, "touch", marker},
      {"-w", "-1", lock, "touch", marker},
      {"-w", "nan", lock, "touch", marker},
      {"-w", "inf", lock, "touch", marker},
      {"-w", "1x", lock, "touch", marker},
      {"-w", "1.2.3", lock, "touch", marker},
      {"-E", "256", lock, "touch", marker},
      {"-E", "-1", lock, "touch", marker},
      {"-E", "x", lock, "touch", marker},
      {"-E", "", lock, "touch", marker},
      {"--bogus", lock, "touch", marker},
      {"-q", lock, "touch", marker},
      {lock, "-c"},
      {lock, "-c", "touch " + marker, "extra"},
      {"9x"},                                   // neither a descriptor nor a command
      {"99999999999"},                          // no such descriptor number
      {"-u", lock},                             // -u takes a descriptor
      {"-u", lock, "touch", marker},            // -u has no command form
      {"-F", "-o", lock, "touch", marker},      // nothing would hold the lock
      {"--no-fork", "--close", lock, "touch", marker},
      {"-v", lock, "touch", marker},            // flock(1) has only --verbose
  };
  for (const auto &args : bad_command_lines) {
    std::string shown;
    for (const auto &arg : args) shown += "'" + arg + "' ";
    const finished_run run = run_iplock(dir, args);
    EXPECT_EQ(run.exit_code, 64) << shown;
    EXPECT_FALSE(run.err.empty()) << shown;
    EXPECT_FALSE(file_exists(marker)) << shown << "ran the command";
  }
}

// Catches: a lock file that cannot be opened reported as a conflict (1), a
// command run without the lock, or missing folders created silently.
TEST(IplockExitStatus, LockFileThatCannotBeOpenedExits66) {
  temp_dir dir;
  const std::string marker = dir.path("marker");
  const finished_run in_missing_folder =
      run_iplock(dir, {dir.path("no-such-folder/lock"), "touch", marker});
  EXPECT_EQ(in_missing_folder.exit_code, 66);
  EXPECT_FALSE(in_missing_folder.err.empty());
  EXPECT_FALSE(file_exists(dir.path("no-such-folder")));

  const finished_run folder = run_iplock(dir, {dir.root(), "touch", marker});
  EXPECT_EQ(folder.exit_code, 66);
  EXPECT_FALSE(folder.err.empty());
  EXPECT_FALSE(file_exists(marker));
}

// ---- Exclusion -----------------------------------------------------------------

// Catches: a lock not taken, or not released when iplock's command ends.
TEST(IplockExclusion, AgainstAnotherIplock) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());
  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(holder.release(), 0);

  const finished_run after = run_iplock(dir, {"-n", lock, "echo", "B ran"});
  EXPECT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(after.out, std::vector<std::string>{"B ran"});
}

// Catches: a blocking waiter that runs its command while the lock is held,
// or never wakes up after the holder ends.
TEST(IplockExclusion, BlockingWaiterRunsOnlyAfterHolderEnds) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  child_process waiter = start_iplock({lock, "echo", "B got it"});
  EXPECT_TRUE(waiter.silent_for(300ms)) << "B ran while A held the lock";
  EXPECT_EQ(holder.release(), 0);
  EXPECT_TRUE(waiter.expect_line("B got it"));
  EXPECT_EQ(describe_status(waiter.wait()), 0);
}

// Catches: iplock leaving the lock to the command's background children
// when it ends normally. The command inherits the lock's descriptor (so a
// killed iplock does not free the lock, see IplockLifetime), and so does a
// grandchild; iplock releases the lock itself once the command has ended.
TEST(IplockExclusion, LockEndsWithIplockThoughABackgroundChildHasTheDescriptor) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  // The grandchild waits for a line on a copy of stdin (an asynchronous
  // list's own stdin is /dev/null) and so outlives iplock.
  child_process iplock = start_iplock(
      {lock, "sh", "-c", "exec 5<&0; (read line <&5; echo gone) & echo started"});
  ASSERT_TRUE(iplock.expect_line("started"));
  ASSERT_EQ(describe_status(iplock.wait()), 0);

  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 0)
      << "the lock outlived iplock in the command's background child";
  tell(iplock, "done");
}

// ---- Interoperability with fasteners ---------------------------------------------

void expect_fasteners_available() {
  child_process probe = child_process::program({fasteners_python(), "-c", "import fasteners"});
  ASSERT_EQ(describe_status(probe.wait()), 0)
      << fasteners_python() << " cannot import fasteners (set IPL_FASTENERS_PYTHON)";
}

// Catches: iplock taking a lock fasteners does not see (flock(2), another
// byte range), in the fasteners-holds direction.
TEST(IplockInterop, FastenersHolderMakesIplockConflict) {
  ASSERT_NO_FATAL_FAILURE(expect_fasteners_available());
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process fasteners = start_fasteners(kFastenersHolder, lock);
  ASSERT_TRUE(fasteners.expect_line("locked"));

  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"-s", "-n", lock, "true"}).exit_code, 1);
  tell(fasteners, "release");
  EXPECT_EQ(describe_status(fasteners.wait()), 0);
  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 0);
}

// Catches: the same, in the iplock-holds direction.
TEST(IplockInterop, IplockHolderMakesFastenersTryFail) {
  ASSERT_NO_FATAL_FAILURE(expect_fasteners_available());
  temp_dir dir;
  const std::string lock = dir.path("lock");
  {
    lock_holder holder(lock);
    ASSERT_TRUE(holder.wait_until_held());
    child_process fasteners = start_fasteners(kFastenersTry, lock);
    EXPECT_TRUE(fasteners.expect_line("busy"));
    EXPECT_EQ(describe_status(fasteners.wait()), 0);
    EXPECT_EQ(holder.release(), 0);
  }
  child_process fasteners = start_fasteners(kFastenersTry, lock);
  EXPECT_TRUE(fasteners.expect_line("acquired"));
  EXPECT_EQ(describe_status(fasteners.wait()), 0);
}

// Catches: -s taking something other than a whole-file F_RDLCK (fasteners'
// reader would then conflict, or its writer get in).
TEST(IplockInterop, SharedIplockAgainstFastenersReaderWriterLock) {
  ASSERT_NO_FATAL_FAILURE(expect_fasteners_available());
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-s"});
  ASSERT_TRUE(holder.wait_until_held());
  child_process fasteners = start_fasteners(
      "import sys, fasteners\n"
      "rw = fasteners.InterProcessReaderWriterLock(sys.argv[1])\n"
      "print('write', rw.acquire_write_lock(blocking=False), flush=True)\n"
      "got = rw.acquire_read_lock(blocking=False)\n"
      "print('read', got, flush=True)\n"
      "if got: rw.release_read_lock()\n",
      lock);
  EXPECT_TRUE(fasteners.expect_line("write False"));
  EXPECT_TRUE(fasteners.expect_line("read True"));
  EXPECT_EQ(describe_status(fasteners.wait()), 0);
  EXPECT_EQ(holder.release(), 0);
}

// ---- Signals ------------------------------------------------------------------------

class IplockSignalDuringWait : public ::testing::TestWithParam<std::tuple<int, const char *>> {};

// Catches: a wait that signals cannot end (the library's waits retry on
// EINTR by design: the bounded wait below then fails), iplock dying by the
// signal instead of exiting 128+N, or the command running anyway.
TEST_P(IplockSignalDuringWait, EndsTheWaitWith128PlusSignal) {
  const int sig = std::get<0>(GetParam());
  const std::string timeout = std::get<1>(GetParam());
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  std::vector<std::string> args{lock, "echo", "ran"};
  if (!timeout.empty()) args.insert(args.begin(), {"-w", timeout});
  child_process waiter = start_iplock(args);
  ASSERT_TRUE(wait_until_catches(waiter.pid(), sig));
  EXPECT_TRUE(waiter.silent_for(200ms)) << "ran while the lock was held";

  const auto start = clock_type::now();
  waiter.send_signal(sig);
  EXPECT_EQ(describe_status(waiter.wait(5s)), 128 + sig);
  EXPECT_LT(clock_type::now() - start, 5s);
  std::string line;
  EXPECT_FALSE(waiter.read_line(&line, 1s)) << "printed: " << line;
  EXPECT_EQ(holder.release(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Iplock, IplockSignalDuringWait,
    ::testing::Values(std::make_tuple(SIGTERM, ""), std::make_tuple(SIGINT, ""),
                      std::make_tuple(SIGTERM, "60"), std::make_tuple(SIGHUP, "60")));

// While the command runs, iplock forwards nothing (iplock(1), "Signals"):
// a signal sent to the process group reaches the command once, from the
// sender; a signal sent to iplock alone does not reach the command. iplock
// ignores SIGINT and SIGQUIT then and waits for the command; the other four
// end iplock, and the command keeps the lock. (These replace the old
// "every signal sent to iplock is forwarded" tests: iplock cannot tell a
// group signal from one sent to it alone, so forwarding is what delivered
// group signals twice.)

class IplockGroupSignal : public ::testing::TestWithParam<int> {};

// Catches: a signal to the process group that iplock and its command share
// (Ctrl-C, systemd stopping a unit) reaching the command twice (the old
// code forwarded kill()-sent signals: count 2), iplock dying by SIGINT
// instead of reporting the command's status, or the lock ending with iplock
// after a group SIGTERM while the command still runs.
TEST_P(IplockGroupSignal, ReachesTheCommandOnce) {
  const int sig = GetParam();
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process iplock = start_iplock_in_new_group(
      concat({lock}, helper_command("iplock_count_signals", {std::to_string(sig)})));
  ASSERT_TRUE(iplock.expect_line("ready"));
  ASSERT_GT(iplock.pid(), 0);
  ASSERT_EQ(kill(-iplock.pid(), sig), 0);
  std::this_thread::sleep_for(300ms);  // room for a second delivery
  tell(iplock, "report");
  {
    std::string got;
    EXPECT_TRUE(iplock.expect_line("count 1", kBound, &got)) << "got: " << got;
  }
  if (sig == SIGINT) {
    tell(iplock, "exit");
    EXPECT_EQ(describe_status(iplock.wait()), 0) << "iplock did not wait for the command";
  } else {
    EXPECT_EQ(describe_status(iplock.wait()), -1000 - sig);
    if (kOfdBuild) {
      EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
          << "the lock ended with iplock while the command runs";
    }
    tell(iplock, "exit");
  }
  EXPECT_TRUE(wait_until_free(lock));
}

INSTANTIATE_TEST_SUITE_P(Iplock, IplockGroupSignal, ::testing::Values(SIGINT, SIGTERM));

class IplockSignalToIplockAlone : public ::testing::TestWithParam<int> {};

// Catches: a signal sent to iplock alone being forwarded (count 1; the old
// code), SIGINT/SIGQUIT ending iplock before its command, the other four
// not ending it, or the lock ending with iplock while the command runs.
TEST_P(IplockSignalToIplockAlone, IsNotForwarded) {
  const int sig = GetParam();
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process iplock = start_iplock(
      concat({lock}, helper_command("iplock_count_signals", {std::to_string(sig)})));
  ASSERT_TRUE(iplock.expect_line("ready"));
  iplock.send_signal(sig);
  const bool iplock_waits = sig == SIGINT || sig == SIGQUIT;
  if (!iplock_waits) {
    EXPECT_EQ(describe_status(iplock.wait()), -1000 - sig);
  } else {
    std::this_thread::sleep_for(300ms);  // room for a forwarded signal
  }
  tell(iplock, "report");
  {
    std::string got;
    EXPECT_TRUE(iplock.expect_line("count 0", kBound, &got)) << "got: " << got;
  }
  if (kOfdBuild || iplock_waits) {
    EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "the lock ended while the command runs";
  }
  tell(iplock, "exit");
  if (iplock_waits) {
    EXPECT_EQ(describe_status(iplock.wait()), 0);
  }
  EXPECT_TRUE(wait_until_free(lock));
}

INSTANTIATE_TEST_SUITE_P(Iplock, IplockSignalToIplockAlone, ::testing::ValuesIn(kWaitSignals));

// Catches: iplock's own signal blocking or handlers leaking into the
// command (a blocked SIGTERM would make forwarding useless).
TEST(IplockSignals, CommandStartsWithDefaultSignalState) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const finished_run run = run_iplock(dir, concat({lock}, helper_command("iplock_signal_state")));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, std::vector<std::string>{"blocked: ignored: caught:"});
}

// Catches: iplock resetting a signal ignored on entry (`nohup iplock ...`)
// to its default for the command, so a hang-up would kill it.
TEST(IplockSignals, SignalIgnoredOnEntryStaysIgnoredForTheCommand) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const std::string err_file = dir.path("stderr");
  child_process iplock = start_iplock(concat({lock}, helper_command("iplock_signal_state")),
                                      err_file, SIGHUP);
  EXPECT_TRUE(iplock.expect_line("blocked: ignored:" + std::to_string(SIGHUP) + ", caught:"));
  EXPECT_EQ(describe_status(iplock.wait()), 0) << read_file(err_file);

  const finished_run survives =
      run_iplock(dir, {lock, "sh", "-c", "kill -HUP $$; echo alive"}, SIGHUP);
  EXPECT_EQ(survives.exit_code, 0) << survives.err;
  EXPECT_EQ(survives.out, std::vector<std::string>{"alive"});
}

// ---- Options new in flock(1) parity ---------------------------------------------

// Catches: -e unknown (64) or taken for something else than exclusive, and
// "-s -e" not ending exclusive (the last of -s/-x/-e must win).
TEST(IplockOptions, EIsExclusive) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-s"});
  ASSERT_TRUE(holder.wait_until_held());
  EXPECT_EQ(run_iplock(dir, {"-e", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"-s", "-e", "-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"-e", "-s", "-n", lock, "true"}).exit_code, 0);
  EXPECT_EQ(holder.release(), 0);
}

// Catches: any of flock(1)'s long options unknown to iplock (exit 64) or
// mapped to the wrong short option. Each run shows the option's effect
// against a shared holder.
TEST(IplockOptions, EveryLongOptionOfFlock) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_holder holder(lock, {"-s"});
  ASSERT_TRUE(holder.wait_until_held());
  struct expectation {
    std::vector<std::string> args;
    int exit_code;
  };
  const std::vector<expectation> runs = {
      {{"--shared", "--nonblock", lock, "true"}, 0},
      {{"--exclusive", "--nonblock", lock, "true"}, 1},
      {{"--nb", lock, "true"}, 1},
      {{"--timeout", "0.05", lock, "true"}, 1},
      {{"--wait", "0.05", lock, "true"}, 1},
      {{"--conflict-exit-code", "3", "--nb", lock, "true"}, 3},
      {{"--close", "--shared", lock, "sh", "-c", "exit 5"}, 5},
      {{"--shared", lock, "--command", "exit 4"}, 4},
      {{"--no-fork", "--shared", lock, "sh", "-c", "exit 6"}, kOfdBuild ? 6 : 71},
      {{"--verbose", "--shared", lock, "true"}, 0},
      {{"--help"}, 0},
      {{"--version"}, 0},
  };
  for (const auto &run : runs) {
    std::string shown;
    for (const auto &arg : run.args) shown += "'" + arg + "' ";
    const finished_run done = run_iplock(dir, run.args);
    EXPECT_EQ(done.exit_code, run.exit_code) << shown << done.err;
  }
  const finished_run help = run_iplock(dir, {"--help"});
  std::string text;
  for (const auto &line : help.out) text += line + "\n";
  for (const char *option : {"--shared", "--exclusive", "--unlock", "--nonblock", "--nb",
                             "--timeout", "--wait", "--conflict-exit-code", "--close",
                             "--command", "--no-fork", "--verbose", "--help", "--version",
                             "-e", "-F", "-u"})
    EXPECT_NE(text.find(option), std::string::npos) << option << " missing from --help";
  EXPECT_EQ(holder.release(), 0);
}

// ---- Descriptor mode --------------------------------------------------------------
// `( iplock -n 9 || exit 1; critical work ) 9>LOCK`: the lock is taken on
// the shell's descriptor 9 and outlives iplock, until `iplock -u 9` or
// until the shell closes the descriptor.

// The script of a subshell that locks descriptor 9 (opened by REDIRECTION
// on $2), says "locked", waits for a line, then says "done".
std::string hold_descriptor_script(const std::string &options, const std::string &redirection) {
  return "( \"$1\" " + options + " 9 || { echo \"exit $?\"; exit 1; }; echo locked; read line; "
         "echo done ) " + redirection + "\"$2\"";
}

// The line a subshell prints after `iplock OPTIONS 9` with descriptor 9
// opened by REDIRECTION on LOCK: "exit N".
std::string descriptor_mode_exit(const std::string &options, const std::string &redirection,
                                 const std::string &lock) {
  child_process shell =
      start_shell("( \"$1\" " + options + " 9; echo \"exit $?\" ) " + redirection + "\"$2\"",
                  {lock});
  std::string line;
  if (!shell.read_line(&line)) line = "<no answer from the shell>";
  shell.wait();
  return line;
}

// Catches: a descriptor-mode lock that dies with iplock (taken on a
// descriptor of iplock's own, or a classic lock), one not taken at all, or
// one that survives the shell closing the descriptor; in a classic build,
// anything but the documented refusal (exit 71, with a reason).
TEST(IplockDescriptor, LockOnTheShellsDescriptorOutlivesIplock) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  if (!kOfdBuild) {
    const std::string err = dir.path("err");
    child_process shell = start_shell("( \"$1\" -n 9; echo \"exit $?\" ) 9>\"$2\" 2>\"$3\"",
                                      {lock, err});
    EXPECT_TRUE(shell.expect_line("exit 71"));
    EXPECT_NE(read_file(err).find("classic"), std::string::npos) << read_file(err);
    return;
  }
  for (const char *redirection : {"9>", "9<>"}) {
    child_process shell = start_shell(hold_descriptor_script("-n", redirection), {lock});
    ASSERT_TRUE(shell.expect_line("locked")) << redirection;
    EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT) << redirection;
    EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_E_TIMEOUT) << redirection;
    tell(shell, "go");
    EXPECT_TRUE(shell.expect_line("done"));
    EXPECT_EQ(describe_status(shell.wait()), 0);
    EXPECT_TRUE(wait_until_free(lock)) << redirection << ": the lock outlived the descriptor";
  }
}

// Catches: -s ignored in descriptor mode (exclusive: the shared prober
// would fail) or a shared lock that lets a writer in.
TEST(IplockDescriptor, SharedLockOnTheDescriptor) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process shell = start_shell(hold_descriptor_script("-s -n", "9<>"), {lock});
  ASSERT_TRUE(shell.expect_line("locked"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
  tell(shell, "go");
  EXPECT_TRUE(shell.expect_line("done"));
}

// Catches: -u / --unlock doing nothing (the lock would stay until the
// shell closes descriptor 9), or unlocking something else.
TEST(IplockDescriptor, UnlockEndsTheLockEarly) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  for (const char *unlock : {"-u", "--unlock"}) {
    child_process shell = start_shell(
        std::string("( \"$1\" -n 9 || exit 1; echo locked; read line; \"$1\" ") + unlock +
            " 9; echo \"unlocked $?\"; read line ) 9>\"$2\"",
        {lock});
    ASSERT_TRUE(shell.expect_line("locked")) << unlock;
    EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
    tell(shell, "unlock");
    EXPECT_TRUE(shell.expect_line("unlocked 0")) << unlock;
    // Descriptor 9 is still open in the shell: only -u can have freed it.
    EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_OK) << unlock;
    tell(shell, "end");
    EXPECT_EQ(describe_status(shell.wait()), 0);
  }
}

// Catches: a second iplock on a descriptor that holds the lock failing
// (libipl's IPL_E_WOULD_DEADLOCK taken for an error: exit 71) instead of
// converting it as flock(2) does; -x leaving it shared or -s leaving it
// exclusive; a conversion that gives up the shared lock when another
// reader blocks it; -u releasing only an exclusive lock.
TEST(IplockDescriptor, RelockingTheDescriptorConvertsTheLock) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process shell = start_shell(
      "( \"$1\" -s -n 9; echo \"shared $?\"; read line; "
      "\"$1\" -n 9; echo \"exclusive $?\"; read line; "
      "\"$1\" -n 9; echo \"again $?\"; read line; "
      "\"$1\" -s -n 9; echo \"shared $?\"; read line; "
      "\"$1\" -n 9; echo \"blocked $?\"; read line; "
      "\"$1\" -u 9; echo \"unlocked $?\"; read line; "
      "\"$1\" -u 9; echo \"unlocked $?\"; read line ) 9<>\"$2\"",
      {lock});
  ASSERT_TRUE(shell.expect_line("shared 0"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
  tell(shell, "next");
  ASSERT_TRUE(shell.expect_line("exclusive 0"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_E_TIMEOUT);
  tell(shell, "next");
  ASSERT_TRUE(shell.expect_line("again 0"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_E_TIMEOUT);
  tell(shell, "next");
  ASSERT_TRUE(shell.expect_line("shared 0"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
  lock_agent reader(lock);
  ASSERT_TRUE(reader.hold(lock_mode::shared));
  tell(shell, "next");
  ASSERT_TRUE(shell.expect_line("blocked 1"));
  EXPECT_EQ(reader.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the failed conversion gave up the shared lock";
  EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_OK);
  tell(shell, "next");
  ASSERT_TRUE(shell.expect_line("unlocked 0"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_OK)
      << "-u left the shared lock";
  tell(shell, "next");
  EXPECT_TRUE(shell.expect_line("unlocked 0")) << "-u with nothing to unlock";
  tell(shell, "end");
  EXPECT_EQ(describe_status(shell.wait()), 0);
}

// Catches: -n, -E and -w ignored in descriptor mode (waiting, the wrong
// code, or giving up early).
TEST(IplockDescriptor, NonblockAndTimeoutAgainstAHolder) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_agent holder(lock);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  EXPECT_EQ(descriptor_mode_exit("-n", "9>", lock), "exit 1");
  EXPECT_EQ(descriptor_mode_exit("-n -E 7", "9>", lock), "exit 7");
  EXPECT_EQ(descriptor_mode_exit("-s -n", "9<", lock), "exit 1");
  const auto start = clock_type::now();
  EXPECT_EQ(descriptor_mode_exit("-w 0.3", "9>", lock), "exit 1");
  EXPECT_GE(clock_type::now() - start, 300ms);
  EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(descriptor_mode_exit("-w 0.3", "9>", lock), "exit 0");
}

// Catches: a blocking descriptor-mode wait that returns while the lock is
// held, or never wakes up after the holder releases.
TEST(IplockDescriptor, WaitsForTheHolder) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_agent holder(lock);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  child_process shell = start_shell(hold_descriptor_script("", "9>"), {lock});
  EXPECT_TRUE(shell.silent_for(300ms)) << "locked while the agent held the lock";
  EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
  ASSERT_TRUE(shell.expect_line("locked"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
  tell(shell, "go");
  EXPECT_TRUE(shell.expect_line("done"));
}

// Catches: a descriptor-mode wait that SIGTERM cannot end, or that leaves
// the lock on the shell's descriptor when ended (the description outlives
// iplock: a pending or just-granted lock must be let go).
TEST(IplockDescriptor, SignalEndsTheWaitAndLeavesNothingLocked) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_agent holder(lock);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
  child_process shell = start_shell(
      "( \"$1\" 9 & echo \"pid $!\"; wait $!; echo \"exit $?\"; read line ) 9>\"$2\"", {lock});
  std::string line;
  ASSERT_TRUE(shell.read_line(&line));
  ASSERT_EQ(line.rfind("pid ", 0), 0u) << line;
  const pid_t iplock = pid_t(std::atol(line.c_str() + 4));
  ASSERT_GT(iplock, 0);
  ASSERT_TRUE(wait_until_catches(iplock, SIGTERM));
  EXPECT_TRUE(shell.silent_for(200ms));
  kill(iplock, SIGTERM);
  EXPECT_TRUE(shell.expect_line("exit " + std::to_string(128 + SIGTERM)));
  EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
  // The shell still has descriptor 9 open.
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_OK);
  tell(shell, "end");
  EXPECT_EQ(describe_status(shell.wait()), 0);
}

// Catches: an fcntl failure on a descriptor of the wrong access mode
// reported as a conflict (1) or a generic failure (71), without saying
// why; or a shared lock refused on a read-only descriptor.
TEST(IplockDescriptor, DescriptorOfTheWrongAccessModeFailsWith66) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  std::ofstream(lock).close();
  const std::string err = dir.path("err");
  child_process shell = start_shell(
      "( \"$1\" -n 9; echo \"exit $?\" ) 9<\"$2\" 2>\"$3\"; "
      "( \"$1\" -s -n 9; echo \"exit $?\" ) 9>\"$2\" 2>>\"$3\"; "
      "( \"$1\" -s -n 9; echo \"exit $?\" ) 9<\"$2\"",
      {lock, err});
  EXPECT_TRUE(shell.expect_line("exit 66"));
  EXPECT_TRUE(shell.expect_line("exit 66"));
  EXPECT_TRUE(shell.expect_line("exit 0"));
  EXPECT_NE(read_file(err).find("read-only"), std::string::npos) << read_file(err);
  EXPECT_NE(read_file(err).find("write-only"), std::string::npos) << read_file(err);
}

// Catches: a closed descriptor or one on a non-regular file taken for a
// conflict (1) or locked anyway.
TEST(IplockDescriptor, UnusableDescriptorFailsWith66) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  EXPECT_EQ(descriptor_mode_exit("-n", "9>&- #", lock), "exit 66");
  EXPECT_EQ(descriptor_mode_exit("-n", "9</dev/null #", lock), "exit 66");
}

// Catches: a descriptor-mode lock that fasteners does not see (wrong
// range or lock kind), in both directions and both modes.
TEST(IplockDescriptor, InteropWithFasteners) {
  if (!kOfdBuild) GTEST_SKIP() << "descriptor mode needs OFD locks";
  ASSERT_NO_FATAL_FAILURE(expect_fasteners_available());
  temp_dir dir;
  const std::string lock = dir.path("lock");
  const char rw_probe[] =
      "import sys, fasteners\n"
      "rw = fasteners.InterProcessReaderWriterLock(sys.argv[1])\n"
      "got = rw.acquire_write_lock(blocking=False)\n"
      "print('write', got, flush=True)\n"
      "if got: rw.release_write_lock()\n"
      "got = rw.acquire_read_lock(blocking=False)\n"
      "print('read', got, flush=True)\n"
      "if got: rw.release_read_lock()\n";
  {
    child_process shell = start_shell(hold_descriptor_script("-n", "9>"), {lock});
    ASSERT_TRUE(shell.expect_line("locked"));
    child_process fasteners = start_fasteners(kFastenersTry, lock);
    EXPECT_TRUE(fasteners.expect_line("busy"));
    child_process rw = start_fasteners(rw_probe, lock);
    EXPECT_TRUE(rw.expect_line("write False"));
    EXPECT_TRUE(rw.expect_line("read False"));
    tell(shell, "go");
    EXPECT_TRUE(shell.expect_line("done"));
  }
  {
    child_process shell = start_shell(hold_descriptor_script("-s -n", "9<"), {lock});
    ASSERT_TRUE(shell.expect_line("locked"));
    child_process rw = start_fasteners(rw_probe, lock);
    EXPECT_TRUE(rw.expect_line("write False"));
    EXPECT_TRUE(rw.expect_line("read True"));
    tell(shell, "go");
    EXPECT_TRUE(shell.expect_line("done"));
  }
  child_process fasteners = start_fasteners(kFastenersHolder, lock);
  ASSERT_TRUE(fasteners.expect_line("locked"));
  EXPECT_EQ(descriptor_mode_exit("-n", "9>", lock), "exit 1");
  EXPECT_EQ(descriptor_mode_exit("-s -n", "9<", lock), "exit 1");
  tell(fasteners, "release");
  EXPECT_EQ(describe_status(fasteners.wait()), 0);
  EXPECT_EQ(descriptor_mode_exit("-n", "9>", lock), "exit 0");
}

// ---- How long the lock lives ----------------------------------------------------------
// The command inherits the lock's descriptor, so the lock lives as long as
// the command does, whatever happens to iplock; -o keeps the descriptor
// from the command; -F execs the command in iplock's place.

// Catches: the lock ending when iplock is killed while its command still
// runs (a close-on-exec descriptor: iplock opened the lock file without
// IPL_OPEN_INHERITABLE), for both modes.
TEST(IplockLifetime, SigkillOfIplockKeepsTheLockUntilTheCommandEnds) {
  if (!kOfdBuild)
    GTEST_SKIP() << "classic fcntl locks belong to the iplock process, so no command can "
                    "inherit them: the lock ends with iplock, as iplock(1) documents";
  temp_dir dir;
  const std::string lock = dir.path("lock");
  for (const char *mode : {"-x", "-s"}) {
    SCOPED_TRACE(mode);
    child_process iplock =
        start_iplock(concat({mode, lock}, helper_command("iplock_wait_for_line")));
    ASSERT_TRUE(iplock.expect_line("ready"));
    iplock.send_signal(SIGKILL);
    EXPECT_EQ(describe_status(iplock.wait()), -1000 - SIGKILL);
    EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
        << "the lock died with iplock while its command runs";
    if (std::string(mode) == "-x") {
      EXPECT_EQ(try_from_other_process(lock, lock_mode::shared), IPL_E_TIMEOUT);
    }
    tell(iplock, "release");  // the orphaned command still reads our pipe
    std::string line;
    EXPECT_FALSE(iplock.read_line(&line)) << line;  // EOF: the command ended
    EXPECT_TRUE(wait_until_free(lock)) << "the lock outlived the command";
  }
}

// Catches: the descriptor not reaching the command (OFD: the SIGKILL test
// above would fail too), leaking more than one copy, or -o / --close not
// keeping it from the command.
TEST(IplockLifetime, CommandInheritsTheDescriptorUnlessClose) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  std::ofstream(lock).close();
  const std::string inherited = kOfdBuild ? " fds 1" : " fds 0";
  for (const std::vector<std::string> &options :
       {std::vector<std::string>{}, {"-o"}, {"--close"}, {"-s"}, {"-s", "-o"}}) {
    const bool closed = options.size() > 0 && options.back() != "-s";
    child_process iplock = start_iplock(
        concat(concat(options, {lock}), helper_command("iplock_probe_command", {lock})));
    std::string line;
    ASSERT_TRUE(iplock.read_line(&line));
    const std::string expected = closed ? " fds 0" : inherited;
    EXPECT_NE(line.find(expected), std::string::npos)
        << (options.empty() ? "" : options[0]) << ": " << line;
    tell(iplock, "done");
    EXPECT_EQ(describe_status(iplock.wait()), 0);
  }
}

// Catches: -o keeping the lock alive in the command after iplock dies (the
// descriptor leaked into the command despite -o).
TEST(IplockLifetime, WithCloseTheLockEndsWithIplock) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  child_process iplock =
      start_iplock(concat({"-o", lock}, helper_command("iplock_wait_for_line")));
  ASSERT_TRUE(iplock.expect_line("ready"));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT);
  iplock.send_signal(SIGKILL);
  EXPECT_EQ(describe_status(iplock.wait()), -1000 - SIGKILL);
  EXPECT_TRUE(wait_until_free(lock)) << "-o: the command kept the lock";
  tell(iplock, "release");
}

// Catches: -F forking anyway (another pid), the lock lost at exec (a
// close-on-exec descriptor), or kept after the command ends; in a classic
// build, anything but the documented refusal (exit 71).
TEST(IplockLifetime, NoForkExecsInPlaceAndKeepsTheLock) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  std::ofstream(lock).close();
  if (!kOfdBuild) {
    const finished_run run = run_iplock(dir, {"-F", lock, "echo", "ran"});
    EXPECT_EQ(run.exit_code, 71);
    EXPECT_TRUE(run.out.empty());
    EXPECT_NE(run.err.find("classic"), std::string::npos) << run.err;
    return;
  }
  child_process iplock =
      start_iplock(concat({"-F", lock}, helper_command("iplock_probe_command", {lock})));
  std::string line;
  ASSERT_TRUE(iplock.read_line(&line));
  EXPECT_EQ(line, "pid " + std::to_string(iplock.pid()) + " fds 1");
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the lock did not survive the exec";
  tell(iplock, "end");
  EXPECT_EQ(describe_status(iplock.wait()), 0);
  EXPECT_TRUE(wait_until_free(lock));
  EXPECT_EQ(run_iplock(dir, {"--no-fork", lock, "sh", "-c", "exit 9"}).exit_code, 9);
  EXPECT_EQ(run_iplock(dir, {"-F", lock, dir.path("no-such-program")}).exit_code, 127);
  EXPECT_TRUE(wait_until_free(lock)) << "a failed exec kept the lock";
}

// Catches: a lock taken on a lock file that was removed while iplock
// waited (ipl_remove by the holder): iplock must lock the file the path
// names afterwards, or it excludes nobody who opens the path.
TEST(IplockLifetime, LockFileRemovedWhileWaitingIsLockedAgain) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  ipl_lock *holder = nullptr;
  ASSERT_EQ(ipl_open(lock.c_str(), 0, &holder), IPL_OK);
  ASSERT_EQ(ipl_acquire(holder, 0), IPL_OK);
  child_process waiter = start_iplock({lock, self_exe(), "--ipl-helper", "iplock_wait_for_line"});
  EXPECT_TRUE(waiter.silent_for(300ms));
  EXPECT_EQ(ipl_remove(holder), IPL_OK);
  ASSERT_TRUE(waiter.expect_line("ready"));
  EXPECT_TRUE(file_exists(lock));
  EXPECT_EQ(try_from_other_process(lock, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "iplock holds a lock on the removed file only";
  tell(waiter, "done");
  EXPECT_EQ(describe_status(waiter.wait()), 0);
  ipl_close(holder);
}

// ---- --verbose ------------------------------------------------------------------------

// Catches: --verbose unknown (the old code: 64), silent while waiting, not
// naming the holder's pid and name (an OFD holder needs the /proc fdinfo
// search: the kernel reports pid -1), or reporting a wait time that is not
// the time waited.
TEST(IplockVerbose, SaysWhoHoldsTheLockAndHowLongGettingItTook) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  std::ofstream(lock).close();
  for (const bool descriptor_mode : {false, true}) {
    if (descriptor_mode && !kOfdBuild) continue;
    SCOPED_TRACE(descriptor_mode ? "descriptor mode" : "command mode");
    lock_agent holder(lock);
    ASSERT_TRUE(holder.started());
    ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0), IPL_OK);
    const pid_t holder_pid = holder.process().pid();
    const std::string err = dir.path(descriptor_mode ? "fd.err" : "cmd.err");
    child_process waiter =
        descriptor_mode
            ? start_shell("( \"$1\" --verbose 9 2>\"$3\" && echo ran ) 9>\"$2\"", {lock, err})
            : start_iplock({"--verbose", lock, "echo", "ran"}, err);
    ASSERT_TRUE(wait_for_text(err, "pid " + std::to_string(holder_pid))) << read_file(err);
    EXPECT_NE(read_file(err).find("held exclusive"), std::string::npos) << read_file(err);
    const std::string name = process_name(holder_pid);
    EXPECT_FALSE(name.empty());
    EXPECT_NE(read_file(err).find("(" + name + ")"), std::string::npos) << read_file(err);
    EXPECT_TRUE(waiter.silent_for(300ms));
    EXPECT_EQ(holder.release(lock_mode::exclusive), IPL_OK);
    EXPECT_TRUE(waiter.expect_line("ran"));
    EXPECT_EQ(describe_status(waiter.wait()), 0);
    const double seconds = reported_lock_seconds(read_file(err));
    EXPECT_GE(seconds, 0.3) << read_file(err);
    EXPECT_LT(seconds, 20.0) << read_file(err);
  }
}

// Catches: --verbose with -n or -w not saying who holds the lock, or not
// saying that it gave up; a shared holder reported as exclusive.
TEST(IplockVerbose, SaysWhyItGaveUp) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  lock_agent holder(lock);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::shared, 0), IPL_OK);
  const std::string pid = "pid " + std::to_string(holder.process().pid());
  const finished_run nonblock = run_iplock(dir, {"--verbose", "-n", lock, "true"});
  EXPECT_EQ(nonblock.exit_code, 1);
  EXPECT_NE(nonblock.err.find(pid), std::string::npos) << nonblock.err;
  EXPECT_NE(nonblock.err.find("held shared"), std::string::npos) << nonblock.err;
  EXPECT_NE(nonblock.err.find("failed to get lock"), std::string::npos) << nonblock.err;
  const finished_run timeout = run_iplock(dir, {"--verbose", "-w", "0.1", lock, "true"});
  EXPECT_EQ(timeout.exit_code, 1);
  EXPECT_NE(timeout.err.find(pid), std::string::npos) << timeout.err;
  EXPECT_NE(timeout.err.find("timeout"), std::string::npos) << timeout.err;
  EXPECT_EQ(holder.release(lock_mode::shared), IPL_OK);
}

}  // namespace

// ---- Closed standard streams ----------------------------------------------------
// A program started with closed standard streams gets the lowest free
// descriptors for whatever it opens next: the lock descriptor must not be
// one of them, or "stderr" is the lock file. iplock is started through
// /bin/sh here (not iplock_exec_clean), since the shell's `<&- >&- 2>&-`
// is the case to reproduce.

namespace {

// Runs `iplock ARGS... REDIRECTIONS` under /bin/sh and returns the line the
// shell prints after it: "exit N".
std::string run_iplock_in_shell(const std::vector<std::string> &args,
                                const std::string &redirections) {
  std::string script = "\"$0\"";
  for (size_t i = 1; i <= args.size(); ++i) script += " \"$" + std::to_string(i) + "\"";
  script += " " + redirections + "; echo \"exit $?\"";
  std::vector<std::string> argv{"/bin/sh", "-c", script, iplock_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  child_process shell = child_process::program(argv);
  std::string line;
  if (!shell.read_line(&line)) line = "<no answer from the shell>";
  const int status = describe_status(shell.wait());
  if (status != 0) line += " (shell ended with " + std::to_string(status) + ")";
  return line;
}

// Catches: the lock descriptor on 0, 1 or 2 when iplock starts with closed
// standard streams, so the "command not found" message (written to
// "stderr" by iplock's child after the fork) lands in the lock file.
TEST(IplockClosedStdio, CommandNotFoundLeavesTheLockFileEmpty) {
  temp_dir dir;
  const std::string lock = dir.path("lock");
  EXPECT_EQ(run_iplock_in_shell({lock, "ipl-test-no-such-command"}, "<&- >&- 2>&-"), "exit 127");
  EXPECT_EQ(read_file(lock), "") << "something was written into the lock file";
  // The lock was released: another iplock takes it at once.
  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 0);
}

}  // namespace

// ---- Read-only lock files ---------------------------------------------------------
// A lock file another user created with mode 0644 (as under umask 022):
// iplock -s runs the command, since a read lock needs only read access;
// iplock -x fails at once and says why. CI runs as root, so iplock runs as
// uid/gid 65534 through the helper iplock_exec_as; these tests skip when
// not run as root.

#include <grp.h>  // setgroups(), for iplock_exec_as

namespace {

// args: UID GID STDERR_FILE PROGRAM ARG... Sends stderr to STDERR_FILE
// (opened before the switch, in the test's folder), becomes UID/GID with no
// supplementary groups, then goes on as iplock_exec_clean.
IPL_TEST_HELPER(iplock_exec_as) {
  if (args.size() < 4) return 90;
  if (!std::freopen(args[2].c_str(), "w", stderr)) return 91;
  if (setgroups(0, nullptr) != 0 || setgid(gid_t(std::atoi(args[1].c_str()))) != 0 ||
      setuid(uid_t(std::atoi(args[0].c_str()))) != 0) {
    std::perror("iplock_exec_as");
    return 93;
  }
  std::vector<std::string> rest{"-", "0"};
  rest.insert(rest.end(), args.begin() + 3, args.end());
  return ipl_helper_iplock_exec_clean(rest);
}

// Starts `iplock ARGS...` as uid/gid 65534, its stderr going to ERR_FILE.
child_process start_iplock_as_nobody(const std::vector<std::string> &args,
                                     const std::string &err_file) {
  return child_process::helper("iplock_exec_as",
                               concat({"65534", "65534", err_file, iplock_path()}, args));
}

// run_iplock, as uid/gid 65534.
finished_run run_iplock_as_nobody(const temp_dir &dir, const std::vector<std::string> &args) {
  const std::string err_file = dir.path("iplock-nobody.stderr");
  const auto start = clock_type::now();
  child_process iplock = start_iplock_as_nobody(args, err_file);
  finished_run run;
  std::string line;
  while (iplock.read_line(&line)) run.out.push_back(line);
  run.exit_code = describe_status(iplock.wait());
  run.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
  run.err = read_file(err_file);
  return run;
}

// A root-owned 0644 lock file in a folder everyone may enter.
std::string make_root_owned_lock_file(const temp_dir &dir) {
  const std::string lock = dir.path("lock");
  EXPECT_EQ(chmod(dir.root().c_str(), 0755), 0);
  std::ofstream(lock).close();
  EXPECT_EQ(chmod(lock.c_str(), 0644), 0);
  return lock;
}

// Catches: iplock -s refusing a lock file it may read (the old code:
// ipl_open fails, exit 66), a shared lock that is no lock (root's -n gets
// in while it runs), or one that is not a real try (no conflict with root's
// exclusive holder).
TEST(IplockReadOnly, SharedLockOnAnotherUsersFileRunsTheCommand) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run iplock as another user";
  temp_dir dir;
  const std::string lock = make_root_owned_lock_file(dir);

  const finished_run run = run_iplock_as_nobody(dir, {"-s", lock, "echo", "ran"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, std::vector<std::string>{"ran"});

  child_process shared_holder = start_iplock_as_nobody(
      concat({"-s", lock}, helper_command("iplock_wait_for_line")),
      dir.path("holder.stderr"));
  ASSERT_TRUE(shared_holder.expect_line("ready")) << read_file(dir.path("holder.stderr"));
  EXPECT_EQ(run_iplock(dir, {"-n", lock, "true"}).exit_code, 1);
  EXPECT_EQ(run_iplock(dir, {"-s", "-n", lock, "true"}).exit_code, 0);
  tell(shared_holder, "release");
  EXPECT_EQ(describe_status(shared_holder.wait()), 0);

  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());
  const finished_run conflict = run_iplock_as_nobody(dir, {"-s", "-n", lock, "echo", "ran"});
  EXPECT_EQ(conflict.exit_code, 1) << conflict.err;
  EXPECT_TRUE(conflict.out.empty());
  EXPECT_EQ(holder.release(), 0);
}

// Catches: iplock -x on a file it may only read waiting (here for ever:
// the lock is held elsewhere), running the command anyway, reporting a
// conflict (1) or a locking failure (71) instead of 66 (iplock(1): "an
// exclusive lock was asked on a file that could be opened read-only
// only"), or a message that does not say that write access is missing.
// (The old code also exits 66, but at ipl_open, and -s fails the same way:
// the test above.)
TEST(IplockReadOnly, ExclusiveLockOnAnotherUsersFileFailsAtOnceWithAMessage) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run iplock as another user";
  temp_dir dir;
  const std::string lock = make_root_owned_lock_file(dir);
  lock_holder holder(lock);
  ASSERT_TRUE(holder.wait_until_held());

  const std::vector<std::vector<std::string>> exclusive_runs = {
      {"-x", lock, "echo", "ran"},
      {lock, "echo", "ran"},
      {"-w", "30", lock, "echo", "ran"},
      {"-n", lock, "echo", "ran"},
  };
  for (const auto &args : exclusive_runs) {
    std::string shown;
    for (const auto &arg : args) shown += "'" + arg + "' ";
    const finished_run run = run_iplock_as_nobody(dir, args);
    EXPECT_EQ(run.exit_code, 66) << shown << run.err;
    EXPECT_TRUE(run.out.empty()) << shown << "ran the command";
    EXPECT_LT(run.elapsed, 10s) << shown << "waited";
    EXPECT_NE(run.err.find(lock), std::string::npos) << shown << run.err;
    EXPECT_NE(run.err.find("write access"), std::string::npos) << shown << run.err;
  }
  EXPECT_EQ(holder.release(), 0);
}

}  // namespace

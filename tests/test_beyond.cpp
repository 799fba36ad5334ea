// SPDX-License-Identifier: MIT
// Beyond acquire and release (ipl.h, 0.2.0): ipl_query, ipl_cancel,
// ipl_downgrade, ipl_upgrade and ipl_remove, with real processes as the
// other parties (lock_agent, the beyond_agent helper below, and fasteners
// in a Python process).
//
// ApiQuery*, InteropQuery*: who holds the lock, and how, never counting the
//   asking handle's own lock; the holder's pid (OFD holders found through
//   /proc/PID/fdinfo, classic and fasteners holders through F_GETLK, other
//   handles of this process as getpid()); the file the path names now; a
//   caller that may not read the holder's /proc entries gets state but -1.
// WaitCancel*, ApiCancel*: ipl_cancel ends a forever, timed, polling or
//   in-process wait (and an upgrade's wait) promptly with IPL_E_CANCELED and
//   the handle holds nothing new; with no wait in progress it changes
//   nothing; racing a grant it never loses a granted lock.
// ConflictDowngrade*, ApiDowngrade*: exclusive to shared with no moment a
//   writer could get in.
// ConflictUpgrade*, InteropUpgrade*, ApiUpgrade*: shared to exclusive,
//   waiting for other readers (fasteners' too) with the shared lock kept;
//   two upgraders never wait for each other forever (one gets
//   IPL_E_WOULD_DEADLOCK and keeps its shared lock).
// ApiRemove*, ConflictRemove*, InteropRemove*: removing the lock file while
//   holding it exclusive; libipl waiters end up on a new file at the path,
//   a fasteners waiter on the removed one (documented).
//
// Each test says which broken implementation it catches. Every wait is
// bounded; "stays blocked" is checked over a window of ~300 ms. A libipl
// call on a test thread that never returns ends the binary after kBound
// (background_call) instead of hanging CI.
// Windows: query (not while holding shared: IPL_E_UNSUPPORTED), downgrade,
// remove, cancel of timed waits (which poll there), upgrade unsupported.
#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef _WIN32
#include <process.h>
#else
#include <fcntl.h>
#include <grp.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using namespace ipltest;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using clock_type = std::chrono::steady_clock;

// "Stays blocked" windows and "at once" bounds (see the file comment).
constexpr milliseconds kStillWaiting{300};
constexpr milliseconds kAtOnce{1000};
// A cancel must end a wait within this (generous: a noisy machine).
constexpr milliseconds kCancelBound{500};

#ifndef IPL_POSIX_LOCK_KIND
#define IPL_POSIX_LOCK_KIND "unknown"
#endif
#ifndef _WIN32
const bool kOfdBuild = std::string(IPL_POSIX_LOCK_KIND) == "ofd";
#endif

int64_t this_pid() {
#ifdef _WIN32
  return int64_t(_getpid());
#else
  return int64_t(getpid());
#endif
}

// The holder pid ipl_query reports for a holder whose pid the OS can tell.
int64_t visible_pid(int64_t pid) {
#ifdef _WIN32
  (void)pid;
  return -1;  // Windows: state only (ipl.h)
#else
  return pid;
#endif
}

long long us_between(clock_type::time_point from, clock_type::time_point to) {
  return std::chrono::duration_cast<microseconds>(to - from).count();
}

bool exists(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

#ifndef _WIN32
// (device, inode) of what `path` names, for "is it the same file".
std::pair<uint64_t, uint64_t> file_id(const std::string &path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {0, 0};
  return {uint64_t(st.st_dev), uint64_t(st.st_ino)};
}
#endif

std::string read_all(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const std::string &path, const std::string &text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Renames over an existing file on every system (std::rename does not on
// Windows); the error text, empty on success.
std::string rename_over(const std::string &from, const std::string &to) {
  std::error_code error;
  std::filesystem::rename(from, to, error);
  return error ? error.message() : std::string();
}

const char *state_name(int state) {
  switch (state) {
    case IPL_STATE_FREE: return "FREE";
    case IPL_STATE_SHARED: return "SHARED";
    case IPL_STATE_EXCLUSIVE: return "EXCLUSIVE";
  }
  return "?";
}

struct query_result {
  int status = kNoReply;
  int state = -7;     // -7: left unchanged
  int64_t pid = -7;
};

std::ostream &operator<<(std::ostream &out, const query_result &q) {
  return out << "status " << status_text(q.status) << ", state " << q.state << " ("
             << state_name(q.state) << "), holder_pid " << q.pid;
}

query_result query(ipl_lock *lock) {
  query_result q;
  q.status = ipl_query(lock, &q.state, &q.pid);
  return q;
}

// ---- Handles and calls in this process -----------------------------------------

using handle = owned_lock;

#ifdef __linux__
// The scheduler state of one of this process's threads ('S': asleep).
char thread_state(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() ? text[paren + 2] : '?';
}
#endif

// One libipl call (a wait) on a thread of this process, so that the test can
// watch it and cancel it. The destructor waits for the call (bounded); a
// call that never returns ends the binary rather than hanging it.
class background_call {
 public:
  background_call(ipl_lock *lock, std::function<int(ipl_lock *)> call) : lock_(lock) {
    state_ = std::make_shared<shared>();
    std::shared_ptr<shared> state = state_;
    std::thread([state, lock, call] {
#ifdef __linux__
      state->tid.store(gettid());
#endif
      state->started.store(true);
      const int status = call(lock);
      std::lock_guard<std::mutex> guard(state->mutex);
      state->status = status;
      state->finished_at = clock_type::now();
      state->done = true;
      state->changed.notify_all();
    }).detach();
  }

  ~background_call() {
    if (result(kBound) == kNoReply) {
      std::fprintf(stderr, "test_beyond: a libipl call never returned; ending the test binary\n");
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
  background_call(const background_call &) = delete;
  background_call &operator=(const background_call &) = delete;

  // True once the call is in progress on the handle (ipl_query says another
  // thread is acquiring) and, on Linux, its thread is asleep; false when it
  // returned first (or after kBound).
  bool wait_until_waiting() {
    const auto deadline = clock_type::now() + kBound;
    while (clock_type::now() < deadline) {
      if (done()) return false;
      int state = 0;
      if (state_->started.load() && ipl_query(lock_, &state, nullptr) == IPL_E_WOULD_DEADLOCK) {
#ifdef __linux__
        if (thread_state(pid_t(state_->tid.load())) == 'S') {
          // Asleep twice in a row, a moment apart: in the wait, not passing.
          std::this_thread::sleep_for(milliseconds(5));
          if (thread_state(pid_t(state_->tid.load())) == 'S' && !done()) return true;
        }
#else
        std::this_thread::sleep_for(milliseconds(50));
        if (!done()) return true;
#endif
      }
      std::this_thread::sleep_for(microseconds(200));
    }
    return false;
  }

  bool done() {
    std::lock_guard<std::mutex> guard(state_->mutex);
    return state_->done;
  }

  // The call's status, or kNoReply if it has not returned within `bound`.
  int result(milliseconds bound = kBound) {
    std::unique_lock<std::mutex> guard(state_->mutex);
    state_->changed.wait_for(guard, bound, [&] { return state_->done; });
    return state_->done ? state_->status : kNoReply;
  }

  clock_type::time_point finished_at() {
    std::lock_guard<std::mutex> guard(state_->mutex);
    return state_->finished_at;
  }

 private:
  struct shared {
    std::mutex mutex;
    std::condition_variable changed;
    bool done = false;
    int status = kNoReply;
    clock_type::time_point finished_at;
    std::atomic<long> tid{0};
    std::atomic<bool> started{false};
  };
  ipl_lock *lock_;
  std::shared_ptr<shared> state_;
};

std::unique_ptr<background_call> start_acquire(ipl_lock *lock, lock_mode mode, int64_t timeout_ms) {
  return std::make_unique<background_call>(
      lock, [mode, timeout_ms](ipl_lock *l) { return acquire_in_mode(l, mode, timeout_ms); });
}

std::unique_ptr<background_call> start_upgrade(ipl_lock *lock, int64_t timeout_ms) {
  return std::make_unique<background_call>(
      lock, [timeout_ms](ipl_lock *l) { return ipl_upgrade(l, timeout_ms); });
}

// Cancels a call that is waiting; returns the cancel-to-return latency in us
// (or -1 when the call did not return within kBound) and its status.
long long cancel_and_time(ipl_lock *lock, background_call &call, int *status) {
  const auto canceled_at = clock_type::now();
  EXPECT_EQ(ipl_cancel(lock), IPL_OK);
  *status = call.result(kBound);
  if (*status == kNoReply) return -1;
  return us_between(canceled_at, call.finished_at());
}

// ---- The beyond_agent helper -----------------------------------------------------

// args: UID WAIT_SIGNAL PATH. UID "-" keeps the user, else switches to that
// uid (gid the same number, no supplementary groups) before touching
// libipl; WAIT_SIGNAL "-" keeps libipl's choice, "0" makes it poll
// (ipl_set_wait_signal(0)). Opens PATH and says "ready PID" (or "error
// WHAT"), then answers one command per line with "rc STATUS [A [B]]":
//   acquire MODE TIMEOUT | release MODE | upgrade TIMEOUT | downgrade |
//   remove | query (-> rc STATUS STATE PID) | signal (-> rc WAIT_SIGNAL) |
//   cancel_wait acquire MODE TIMEOUT | cancel_wait upgrade TIMEOUT
// cancel_wait runs the call on a second thread, waits until it is waiting,
// cancels it and answers "rc STATUS LATENCY_US" (LATENCY_US -1: the call
// ended before it could be canceled). "exit" or EOF ends the helper.
IPL_TEST_HELPER(beyond_agent) {
  if (args.size() != 3) return 2;
#ifndef _WIN32
  if (args[0] != "-") {
    const uid_t uid = uid_t(std::stoul(args[0]));
    if (setgroups(0, nullptr) != 0 || setgid(gid_t(uid)) != 0 || setuid(uid) != 0) {
      helper_say(std::string("error cannot switch user: ") + strerror(errno));
      return 3;
    }
  }
#endif
  if (args[1] == "0" && ipl_set_wait_signal(0) != IPL_OK) {
    helper_say("error ipl_set_wait_signal(0)");
    return 3;
  }
  ipl_lock *lock = nullptr;
  const int opened = ipl_open(args[2].c_str(), 0, &lock);
  if (opened != IPL_OK) {
    helper_say("error ipl_open " + status_text(opened));
    return 3;
  }
  helper_say("ready " + std::to_string(this_pid()));
  const auto reply = [](const std::vector<long long> &numbers) {
    std::string line = "rc";
    for (long long n : numbers) line += " " + std::to_string(n);
    helper_say(line);
  };
  std::string line;
  while (helper_hear(&line)) {
    std::istringstream words(line);
    std::string verb;
    words >> verb;
    lock_mode mode = lock_mode::exclusive;
    std::string mode_word;
    int64_t timeout_ms = 0;
    if (verb == "exit") break;
    if (verb == "acquire" && (words >> mode_word >> timeout_ms) && mode_from_name(mode_word, &mode)) {
      reply({acquire_in_mode(lock, mode, timeout_ms)});
    } else if (verb == "release" && (words >> mode_word) && mode_from_name(mode_word, &mode)) {
      reply({release_in_mode(lock, mode)});
    } else if (verb == "upgrade" && (words >> timeout_ms)) {
      reply({ipl_upgrade(lock, timeout_ms)});
    } else if (verb == "downgrade") {
      reply({ipl_downgrade(lock)});
    } else if (verb == "remove") {
      reply({ipl_remove(lock)});
    } else if (verb == "query") {
      const query_result q = query(lock);
      reply({q.status, q.state, q.pid});
    } else if (verb == "signal") {
      reply({ipl_wait_signal()});
    } else if (verb == "cancel_wait") {
      std::string what;
      words >> what;
      std::unique_ptr<background_call> call;
      if (what == "acquire" && (words >> mode_word >> timeout_ms) && mode_from_name(mode_word, &mode)) {
        call = start_acquire(lock, mode, timeout_ms);
      } else if (what == "upgrade" && (words >> timeout_ms)) {
        call = start_upgrade(lock, timeout_ms);
      } else {
        helper_say("bad command: " + line);
        continue;
      }
      if (!call->wait_until_waiting()) {
        reply({call->result(), -1});
        continue;
      }
      int status = kNoReply;
      const long long latency = cancel_and_time(lock, *call, &status);
      reply({status, latency});
    } else {
      helper_say("bad command: " + line);
    }
  }
  ipl_close(lock);
  return 0;
}

// The test side of beyond_agent.
class agent {
 public:
  explicit agent(const std::string &path, const std::string &uid = "-",
                 const std::string &wait_signal = "-")
      : child_(child_process::helper("beyond_agent", {uid, wait_signal, path})) {
    std::string line;
    if (!child_.read_line(&line)) {
      ADD_FAILURE() << "beyond_agent did not start";
    } else if (line.compare(0, 6, "ready ") != 0) {
      ADD_FAILURE() << "beyond_agent: " << line;
    } else {
      pid_ = std::atoll(line.c_str() + 6);
    }
  }

  bool ready() const { return pid_ > 0; }
  int64_t pid() const { return pid_; }

  void send(const std::string &command) { child_.write_line(command); }
  // The numbers of the next "rc" answer; empty after `bound` or on nonsense.
  std::vector<long long> answer(milliseconds bound = kBound) {
    std::string line;
    if (!child_.read_line(&line, bound)) return {};
    std::istringstream words(line);
    std::string rc;
    words >> rc;
    if (rc != "rc") {
      ADD_FAILURE() << "beyond_agent said: " << line;
      return {};
    }
    std::vector<long long> numbers;
    long long n = 0;
    while (words >> n) numbers.push_back(n);
    return numbers;
  }
  // A command's status (the first number), or kNoReply.
  int call(const std::string &command, milliseconds bound = kBound) {
    send(command);
    return status_of(answer(bound));
  }
  // The status of an answer sent earlier (see send()).
  int status(milliseconds bound = kBound) { return status_of(answer(bound)); }
  bool silent_for(milliseconds window) { return child_.silent_for(window); }

  int acquire(lock_mode mode, int64_t timeout_ms) {
    return call(std::string("acquire ") + mode_name(mode) + " " + std::to_string(timeout_ms));
  }
  int release(lock_mode mode) { return call(std::string("release ") + mode_name(mode)); }
  int upgrade(int64_t timeout_ms, milliseconds bound = kBound) {
    return call("upgrade " + std::to_string(timeout_ms), bound);
  }
  query_result query() {
    send("query");
    const std::vector<long long> n = answer();
    query_result q;
    if (n.size() == 3) {
      q.status = int(n[0]);
      q.state = int(n[1]);
      q.pid = n[2];
    }
    return q;
  }

 private:
  static int status_of(const std::vector<long long> &numbers) {
    return numbers.empty() ? kNoReply : int(numbers[0]);
  }
  child_process child_;
  int64_t pid_ = -1;
};

// A lock_agent that has started and holds the lock in `mode` (records a
// failure otherwise).
std::unique_ptr<lock_agent> holder(const std::string &path, lock_mode mode) {
  auto held = std::make_unique<lock_agent>(path);
  if (held->started()) {
    EXPECT_EQ(held->acquire(mode, 0), IPL_OK) << "holder " << mode_name(mode);
  }
  return held;
}

int64_t pid_of(lock_agent &a) { return int64_t(a.process().pid()); }

// ---- fasteners ------------------------------------------------------------------------

#ifndef _WIN32
std::string fasteners_python() {
  const char *python = getenv("IPL_FASTENERS_PYTHON");
  return python && *python ? python : "/usr/bin/python3";
}

// A Python process holding fasteners locks (tests/fasteners_peer.py), driven
// as a lock agent.
lock_agent fasteners_peer(const std::string &path) {
  return lock_agent::program(
      {fasteners_python(), std::string(IPL_TESTS_SOURCE_DIR) + "/fasteners_peer.py", path},
      "fasteners peer (" + fasteners_python() + ")");
}
#endif

// =====================================================================================
// ipl_query
// =====================================================================================

// Catches: a free lock reported held (e.g. the query counting its own probe
// lock), or a pid invented for nobody.
TEST(ApiQuery, FreeLockIsFreeWithNoHolder) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  const query_result q = query(h.get());
  EXPECT_EQ(q.status, IPL_OK);
  EXPECT_EQ(q.state, IPL_STATE_FREE) << q;
  EXPECT_EQ(q.pid, -1) << q;
  // A holder came and went: free again (no stale answer).
  {
    auto held = holder(path, lock_mode::exclusive);
    EXPECT_EQ(query(h.get()).state, IPL_STATE_EXCLUSIVE);
    EXPECT_EQ(held->release(lock_mode::exclusive), IPL_OK);
  }
  const query_result after = query(h.get());
  EXPECT_EQ(after.state, IPL_STATE_FREE) << after;
  EXPECT_EQ(after.pid, -1) << after;
}

// Catches: the state taken from the wrong lock type, or the OFD holder's pid
// left at the kernel's -1 (no /proc/PID/fdinfo lookup), or another
// process's pid reported.
TEST(ApiQuery, HolderInAnotherProcessWithItsPid) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  for (lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    lock_agent bystander(path);  // has the file open, holds nothing
    ASSERT_TRUE(bystander.started());
    auto held = holder(path, mode);
    const query_result q = query(h.get());
    EXPECT_EQ(q.status, IPL_OK);
    EXPECT_EQ(q.state, mode == lock_mode::shared ? IPL_STATE_SHARED : IPL_STATE_EXCLUSIVE) << q;
    EXPECT_EQ(q.pid, visible_pid(pid_of(*held))) << q;
    // Asking for no pid still answers the state.
    int state = -7;
    EXPECT_EQ(ipl_query(h.get(), &state, nullptr), IPL_OK);
    EXPECT_EQ(state, q.state);
  }
}

// Catches: other handles of this process invisible to the query (OFD
// F_OFD_GETLK sees them, but the classic backend's kernel call does not:
// its inode table must), or their holder reported as someone else.
TEST(ApiQuery, HolderIsAnotherHandleOfThisProcess) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  handle other = open_owned_lock(path);
  for (lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    ASSERT_EQ(acquire_in_mode(other.get(), mode, 0), IPL_OK);
    const query_result q = query(h.get());
    EXPECT_EQ(q.status, IPL_OK);
    EXPECT_EQ(q.state, mode == lock_mode::shared ? IPL_STATE_SHARED : IPL_STATE_EXCLUSIVE) << q;
    EXPECT_EQ(q.pid, visible_pid(this_pid())) << q;
    ASSERT_EQ(release_in_mode(other.get(), mode), IPL_OK);
    EXPECT_EQ(query(h.get()).state, IPL_STATE_FREE);
  }
}

// Catches: the asking handle's own lock counted as someone else's (a
// holder of the exclusive lock told EXCLUSIVE, a lone reader told SHARED),
// or, the other way round, other sharers hidden behind one's own shared lock.
TEST(ApiQuery, OwnLockIsNotCounted) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);

  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  query_result q = query(h.get());
  EXPECT_EQ(q.status, IPL_OK);
  EXPECT_EQ(q.state, IPL_STATE_FREE) << "holding it exclusive: " << q;
  EXPECT_EQ(q.pid, -1) << q;
  ASSERT_EQ(ipl_release(h.get()), IPL_OK);

  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  q = query(h.get());
#ifdef _WIN32
  // Windows cannot tell this handle's shared lock from another's (ipl.h).
  EXPECT_EQ(q.status, IPL_E_UNSUPPORTED) << q;
  EXPECT_EQ(q.state, -7) << "state changed on failure";
#else
  EXPECT_EQ(q.status, IPL_OK);
  EXPECT_EQ(q.state, IPL_STATE_FREE) << "holding it shared alone: " << q;
  EXPECT_EQ(q.pid, -1) << q;
  {
    auto sharer = holder(path, lock_mode::shared);
    q = query(h.get());
    EXPECT_EQ(q.status, IPL_OK);
    EXPECT_EQ(q.state, IPL_STATE_SHARED) << "another process shares it: " << q;
    EXPECT_EQ(q.pid, pid_of(*sharer)) << q;
  }
  // Another handle of this process sharing it counts as well.
  handle other = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire_read(other.get(), 0), IPL_OK);
  q = query(h.get());
  EXPECT_EQ(q.state, IPL_STATE_SHARED) << "another handle of this process shares it: " << q;
  EXPECT_EQ(q.pid, this_pid()) << q;
  ASSERT_EQ(ipl_release_read(other.get()), IPL_OK);
#endif
  ASSERT_EQ(ipl_release_read(h.get()), IPL_OK);
}

// Catches: a NULL state written through (crash) or accepted; a NULL
// holder_pid dereferenced; outputs changed on failure.
TEST(ApiQuery, NullArguments) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  int64_t pid = -7;
  int state = -7;
  EXPECT_EQ(ipl_query(h.get(), nullptr, &pid), IPL_E_INVALID);
  EXPECT_EQ(pid, -7);
  EXPECT_EQ(ipl_query(nullptr, &state, &pid), IPL_E_INVALID);
  EXPECT_EQ(state, -7);
  EXPECT_EQ(pid, -7);
  auto held = holder(path, lock_mode::exclusive);
  EXPECT_EQ(ipl_query(h.get(), &state, nullptr), IPL_OK);
  EXPECT_EQ(state, IPL_STATE_EXCLUSIVE);
}

#ifndef _WIN32
// Catches: a query answered from the handle's old descriptor after the
// lock file was replaced (it would report the old file's holder), where an
// acquire would lock the file the path names now. POSIX: Windows refuses to
// rename over a file another process has open.
TEST(ApiQuery, ReplacedFileIsTheOneThePathNamesNow) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  auto old_holder = holder(path, lock_mode::exclusive);
  EXPECT_EQ(query(h.get()).state, IPL_STATE_EXCLUSIVE);

  const std::string fresh = dir.path("fresh");
  write_file(fresh, "");
  ASSERT_EQ(rename_over(fresh, path), "");
  query_result q = query(h.get());
  EXPECT_EQ(q.status, IPL_OK);
  EXPECT_EQ(q.state, IPL_STATE_FREE) << "the new file is free: " << q;

  auto new_holder = holder(path, lock_mode::shared);
  q = query(h.get());
  EXPECT_EQ(q.state, IPL_STATE_SHARED) << q;
  EXPECT_EQ(q.pid, visible_pid(pid_of(*new_holder))) << q;
  // And the handle, which now names the new file, locks it as the query said.
  EXPECT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(old_holder->release(lock_mode::exclusive), IPL_OK);
}
#endif

// Catches: a query that touches the handle's file while another thread is
// acquiring on it (and may be reopening it), instead of refusing at once.
TEST(ApiQuery, WhileAnotherThreadAcquiresIsWouldDeadlock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> waiter;
  auto held = holder(path, lock_mode::exclusive);
  waiter = start_acquire(h.get(), lock_mode::shared, 10000);
  ASSERT_TRUE(waiter->wait_until_waiting()) << "status " << status_text(waiter->result(milliseconds(0)));
  int state = -7;
  int64_t pid = -7;
  const auto start = clock_type::now();
  EXPECT_EQ(ipl_query(h.get(), &state, &pid), IPL_E_WOULD_DEADLOCK);
  EXPECT_LT(clock_type::now() - start, kAtOnce);
  EXPECT_EQ(state, -7);
  EXPECT_EQ(pid, -7);
  // Another handle may ask.
  handle other = open_owned_lock(path);
  EXPECT_EQ(query(other.get()).state, IPL_STATE_EXCLUSIVE);
  EXPECT_EQ(held->release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(waiter->result(), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}

#ifndef _WIN32
// Catches: a query that fails (IPL_E_OS/IPL_E_ACCESS) or reports FREE when
// the caller may not read the holder's /proc entries, or one that reports
// some other pid. For an OFD holder the pid is then unknowable: -1; a
// classic holder's pid comes from F_GETLK and is always visible.
TEST(ApiQuery, UnprivilegedCallerOfRootsLock) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a helper as another user";
  temp_dir dir;
  ASSERT_EQ(chmod(dir.root().c_str(), 0755), 0);
  const std::string path = dir.path("lock");
  write_file(path, "");
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  agent nobody(path, "65534");
  ASSERT_TRUE(nobody.ready());
  for (lock_mode mode : {lock_mode::exclusive, lock_mode::shared}) {
    SCOPED_TRACE(mode_name(mode));
    auto held = holder(path, mode);  // root's lock
    const query_result q = nobody.query();
    EXPECT_EQ(q.status, IPL_OK) << q;
    EXPECT_EQ(q.state, mode == lock_mode::shared ? IPL_STATE_SHARED : IPL_STATE_EXCLUSIVE) << q;
    EXPECT_EQ(q.pid, kOfdBuild ? -1 : pid_of(*held)) << q << " (" IPL_POSIX_LOCK_KIND " build)";
  }
}

// Catches: fasteners' classic locks invisible to the query, or their pid
// (which F_GETLK / F_OFD_GETLK report) replaced by a /proc search result.
TEST(InteropQuery, FastenersHolderBothModes) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started()) << "set IPL_FASTENERS_PYTHON to a Python 3 with fasteners";
  for (lock_mode mode : kAllModes) {
    SCOPED_TRACE(mode_name(mode));
    ASSERT_EQ(py.acquire(mode, 0), IPL_OK);
    const query_result q = query(h.get());
    EXPECT_EQ(q.status, IPL_OK);
    EXPECT_EQ(q.state, mode == lock_mode::shared ? IPL_STATE_SHARED : IPL_STATE_EXCLUSIVE) << q;
    EXPECT_EQ(q.pid, int64_t(py.process().pid())) << q;
    ASSERT_EQ(py.release(mode), IPL_OK);
    EXPECT_EQ(query(h.get()).state, IPL_STATE_FREE);
  }
}
#endif

// =====================================================================================
// ipl_cancel
// =====================================================================================

// Catches: ipl_cancel(NULL) crashing or claiming success.
TEST(ApiCancel, NullIsInvalid) { EXPECT_EQ(ipl_cancel(nullptr), IPL_E_INVALID); }

struct cancel_case {
  lock_mode held;
  lock_mode wanted;
  int64_t timeout_ms;
};

std::string describe(const cancel_case &c) {
  return std::string(mode_name(c.wanted)) + " wait (" +
         (c.timeout_ms < 0 ? std::string("forever") : std::to_string(c.timeout_ms) + " ms") +
         ") for a " + mode_name(c.held) + " holder";
}

// One cancel in this process: another process holds, this handle waits on
// a thread, the test thread cancels. Then the handle holds nothing and
// works as before.
void cancel_one_wait(const cancel_case &c, const char *holder_kind) {
  SCOPED_TRACE(describe(c));
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  // Destroyed in reverse: a holder goes first, so a stuck wait can end.
  std::unique_ptr<background_call> waiter;
  handle in_process;  // the holder when holder_kind is "handle"
  std::unique_ptr<lock_agent> held;
  if (std::string(holder_kind) == "handle") {
    in_process = open_owned_lock(path);
    ASSERT_EQ(acquire_in_mode(in_process.get(), c.held, 0), IPL_OK);
  } else {
    held = holder(path, c.held);
  }
  waiter = start_acquire(h.get(), c.wanted, c.timeout_ms);
  ASSERT_TRUE(waiter->wait_until_waiting()) << "ended early: " << status_text(waiter->result(milliseconds(0)));
  int status = kNoReply;
  const long long latency = cancel_and_time(h.get(), *waiter, &status);
  ASSERT_NE(status, kNoReply) << "ipl_cancel did not end the wait";
  EXPECT_EQ(status, IPL_E_CANCELED) << status_text(status);
  EXPECT_LT(latency, 1000LL * kCancelBound.count());
  std::printf("[ cancel   ] %s (%s holder): returned %lld us after ipl_cancel\n",
              describe(c).c_str(), holder_kind, latency);
  // Nothing held, and nothing left in the way of the next acquire.
  EXPECT_EQ(release_in_mode(h.get(), c.wanted), IPL_E_NOT_HELD);
  if (held) {
    EXPECT_EQ(held->release(c.held), IPL_OK);
  } else {
    EXPECT_EQ(release_in_mode(in_process.get(), c.held), IPL_OK);
  }
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK)
      << "the canceled handle holds something";
  EXPECT_EQ(acquire_in_mode(h.get(), c.wanted, 1000), IPL_OK);
  EXPECT_EQ(release_in_mode(h.get(), c.wanted), IPL_OK);
}

#ifndef _WIN32
// Catches: a forever wait that ipl_cancel cannot end (no waker for the
// kernel's blocking call, e.g. cancel as a no-op or a flag nobody looks at
// while blocked), or one that ends with another status, or leaves the
// handle holding something.
TEST(WaitCancel, ForeverWaitEnds) {
  cancel_one_wait({lock_mode::exclusive, lock_mode::exclusive, IPL_WAIT_FOREVER}, "process");
  cancel_one_wait({lock_mode::exclusive, lock_mode::shared, IPL_WAIT_FOREVER}, "process");
  cancel_one_wait({lock_mode::shared, lock_mode::write, IPL_WAIT_FOREVER}, "process");
}
#endif

// Catches: a timed wait that ipl_cancel does not end before its deadline
// (it would return IPL_E_TIMEOUT ~10 s later, or IPL_OK never).
TEST(WaitCancel, TimedWaitEnds) {
  cancel_one_wait({lock_mode::exclusive, lock_mode::exclusive, 10000}, "process");
  cancel_one_wait({lock_mode::shared, lock_mode::exclusive, 10000}, "process");
  cancel_one_wait({lock_mode::exclusive, lock_mode::shared, 10000}, "process");
}

// Catches: a wait for another handle of this process (the classic
// backend's in-process wait on its inode table; OFD: a kernel wait) that
// ipl_cancel does not wake.
TEST(WaitCancel, InProcessWaitEnds) {
#ifndef _WIN32
  cancel_one_wait({lock_mode::exclusive, lock_mode::exclusive, IPL_WAIT_FOREVER}, "handle");
  cancel_one_wait({lock_mode::exclusive, lock_mode::shared, IPL_WAIT_FOREVER}, "handle");
#endif
  cancel_one_wait({lock_mode::shared, lock_mode::exclusive, 10000}, "handle");
}

// Catches: a polling wait (the wait signal off) whose sleep ipl_cancel does
// not cut short or whose loop never looks at the cancel, in a helper process
// that turned the signal off with ipl_set_wait_signal(0).
TEST(WaitCancel, PollingWaitEndsInHelper) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  agent poller(path, "-", "0");
  ASSERT_TRUE(poller.ready());
  EXPECT_EQ(poller.call("signal"), 0) << "the helper's waits do not poll";
  auto held = holder(path, lock_mode::exclusive);
  const std::vector<std::string> waits = {
#ifndef _WIN32
      "acquire exclusive -1", "acquire shared -1",
#endif
      "acquire exclusive 10000", "acquire shared 10000"};
  for (const std::string &wait : waits) {
    SCOPED_TRACE(wait);
    poller.send("cancel_wait " + wait);
    const std::vector<long long> got = poller.answer();
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0], IPL_E_CANCELED) << status_text(int(got[0]));
    EXPECT_GE(got[1], 0);
    EXPECT_LT(got[1], 1000LL * kCancelBound.count());
    std::printf("[ cancel   ] polling %s: returned %lld us after ipl_cancel\n", wait.c_str(), got[1]);
    EXPECT_EQ(poller.release(lock_mode::exclusive), IPL_E_NOT_HELD);
    EXPECT_EQ(poller.release(lock_mode::shared), IPL_E_NOT_HELD);
  }
  EXPECT_EQ(held->release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(poller.acquire(lock_mode::exclusive, 1000), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(poller.release(lock_mode::exclusive), IPL_OK);
}

// Catches: a cancel with no wait in progress that poisons the next wait
// (a sticky "canceled" flag: the next wait would return IPL_E_CANCELED at
// once), or that fails.
TEST(WaitCancel, WithNoWaitDoesNotAffectNextWait) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> waiter;
  EXPECT_EQ(ipl_cancel(h.get()), IPL_OK);  // idle

  auto held = holder(path, lock_mode::exclusive);
  const auto start = clock_type::now();
  EXPECT_EQ(ipl_acquire(h.get(), 200), IPL_E_TIMEOUT);
  const auto took = clock_type::now() - start;
  EXPECT_GE(took, milliseconds(200));
  EXPECT_LT(took, milliseconds(1000));

  EXPECT_EQ(ipl_cancel(h.get()), IPL_OK);
  EXPECT_EQ(ipl_cancel(h.get()), IPL_OK);
  waiter = start_acquire(h.get(), lock_mode::shared, 10000);
  ASSERT_TRUE(waiter->wait_until_waiting());
  std::this_thread::sleep_for(kStillWaiting);
  EXPECT_FALSE(waiter->done()) << "ended by an earlier cancel: " << status_text(waiter->result(milliseconds(0)));
  EXPECT_EQ(held->release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(waiter->result(), IPL_OK);

  EXPECT_EQ(ipl_cancel(h.get()), IPL_OK);  // while holding: nothing changes
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
}

// Catches: a cancel that loses a lock the kernel granted at the same moment
// (IPL_E_CANCELED while the lock is held: nobody could release it), or
// reports IPL_OK without holding it. Each round the holder releases while
// a thread cancels over and over, starting at a different moment around
// the time the grant takes (measured first, in rounds nobody cancels).
TEST(WaitCancel, RacingAGrantNeverLosesTheLock) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  lock_agent other(path);
  ASSERT_TRUE(other.started());
  constexpr int kCalibration = 5;
  constexpr int kRounds = 60;
  std::vector<long long> grant_us;
  long long typical_grant_us = 0;
  int granted = 0;
  int canceled = 0;
  for (int round = 0; round < kCalibration + kRounds; ++round) {
    const bool calibrating = round < kCalibration;
    if (round == kCalibration) {
      std::sort(grant_us.begin(), grant_us.end());
      typical_grant_us = grant_us[grant_us.size() / 2];
    }
    const lock_mode wanted = round % 2 ? lock_mode::shared : lock_mode::exclusive;
#ifdef _WIN32
    const int64_t timeout_ms = 10000;  // forever waits cannot be canceled there
#else
    const int64_t timeout_ms = round % 4 < 2 ? IPL_WAIT_FOREVER : 10000;
#endif
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_EQ(other.acquire(lock_mode::exclusive, 0), IPL_OK);
    std::unique_ptr<background_call> waiter = start_acquire(h.get(), wanted, timeout_ms);
    ASSERT_TRUE(waiter->wait_until_waiting());
    // The canceler spins (a sleep this short oversleeps by more than it
    // lasts) until its moment, then cancels until the wait has returned.
    std::atomic<bool> stop{false};
    std::atomic<bool> go{false};
    std::atomic<clock_type::rep> cancel_from{0};
    std::thread canceler([&] {
      while (!go.load()) {
      }
      const clock_type::time_point from{clock_type::duration(cancel_from.load())};
      while (!stop.load() && clock_type::now() < from) {
      }
      while (!stop.load()) ipl_cancel(h.get());
    });
    const auto released_at = clock_type::now();
    const long long offset_us =
        calibrating ? 1000LL * kBound.count() : typical_grant_us * (round % 12) / 12;
    cancel_from.store((released_at + microseconds(offset_us)).time_since_epoch().count());
    go.store(true);
    other.process().write_line("release exclusive");
    const int status = waiter->result();
    stop.store(true);
    canceler.join();
    ASSERT_EQ(other.reply(), IPL_OK);
    if (calibrating) {
      ASSERT_EQ(status, IPL_OK);
      grant_us.push_back(us_between(released_at, waiter->finished_at()));
    }
    if (status == IPL_OK) {
      if (!calibrating) ++granted;
      EXPECT_EQ(other.acquire(lock_mode::exclusive, 0), IPL_E_TIMEOUT) << "IPL_OK without the lock";
      EXPECT_EQ(release_in_mode(h.get(), wanted), IPL_OK);
    } else {
      ++canceled;
      EXPECT_EQ(status, IPL_E_CANCELED) << status_text(status);
      EXPECT_EQ(release_in_mode(h.get(), wanted), IPL_E_NOT_HELD);
      EXPECT_EQ(other.acquire(lock_mode::exclusive, 0), IPL_OK) << "canceled, yet the lock is held";
      EXPECT_EQ(other.release(lock_mode::exclusive), IPL_OK);
    }
  }
  std::printf("[ cancel   ] racing a grant (~%lld us after the release): %d granted, %d canceled\n",
              typical_grant_us, granted, canceled);
}

#ifndef _WIN32
// Catches: a canceled upgrade that drops the shared lock, leaves the lock
// exclusive, or keeps the upgrade byte (the next upgrader would then be
// told IPL_E_WOULD_DEADLOCK forever).
void cancel_upgrade(int64_t timeout_ms, bool reader_here) {
  SCOPED_TRACE(std::string("timeout ") + std::to_string(timeout_ms) + ", the other reader " +
               (reader_here ? "a handle of this process" : "another process"));
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> upgrader;
  handle here;  // the other reader when reader_here
  std::optional<agent> there;
  if (reader_here) {
    here = open_owned_lock(path);
    ASSERT_EQ(ipl_acquire_read(here.get(), 0), IPL_OK);
  } else {
    there.emplace(path);
    ASSERT_TRUE(there->ready());
    ASSERT_EQ(there->acquire(lock_mode::shared, 0), IPL_OK);
  }
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  upgrader = start_upgrade(h.get(), timeout_ms);
  ASSERT_TRUE(upgrader->wait_until_waiting()) << status_text(upgrader->result(milliseconds(0)));
  int status = kNoReply;
  const long long latency = cancel_and_time(h.get(), *upgrader, &status);
  ASSERT_NE(status, kNoReply) << "ipl_cancel did not end the upgrade";
  EXPECT_EQ(status, IPL_E_CANCELED) << status_text(status);
  EXPECT_LT(latency, 1000LL * kCancelBound.count());
  std::printf("[ cancel   ] upgrade (timeout %lld, reader %s): returned %lld us after ipl_cancel\n",
              static_cast<long long>(timeout_ms), reader_here ? "here" : "there", latency);
  // Nothing of the upgrade is left: the reader's own upgrade is not told
  // "another upgrade is waiting", it just cannot finish while we share.
  if (reader_here) {
    EXPECT_EQ(ipl_upgrade(here.get(), 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_release_read(here.get()), IPL_OK);
  } else {
    EXPECT_EQ(there->upgrade(0), IPL_E_TIMEOUT);
    EXPECT_EQ(there->release(lock_mode::shared), IPL_OK);
  }
  // Still shared: writers kept out, readers let in.
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

// Catches: an upgrade wait that ipl_cancel cannot end (kernel wait for
// another process's reader; classic: the in-process wait for another handle
// of this process), a canceled upgrade that drops the shared lock or leaves
// the lock exclusive, or one that keeps the upgrade byte (the next upgrader
// would then be told IPL_E_WOULD_DEADLOCK forever).
TEST(WaitCancel, UpgradeWaitKeepsShared) {
  for (const bool reader_here : {false, true}) {
    cancel_upgrade(IPL_WAIT_FOREVER, reader_here);
    cancel_upgrade(10000, reader_here);
  }
}
#endif

// =====================================================================================
// ipl_downgrade
// =====================================================================================

// Catches: a downgrade that lets a waiting writer in (unlock, then lock
// shared), or one that keeps readers out (no downgrade at all).
TEST(ConflictDowngrade, LetsWaitingReaderInNotWaitingWriter) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  lock_agent writer(path);
  lock_agent reader(path);
  ASSERT_TRUE(writer.started());
  ASSERT_TRUE(reader.started());
#ifdef _WIN32
  writer.start_acquire(lock_mode::exclusive, 60000);
  reader.start_acquire(lock_mode::shared, 60000);
#else
  writer.start_acquire(lock_mode::exclusive, IPL_WAIT_FOREVER);
  reader.start_acquire(lock_mode::shared, IPL_WAIT_FOREVER);
#endif
  ASSERT_TRUE(writer.silent_for(kStillWaiting));
  ASSERT_TRUE(reader.silent_for(milliseconds(0)));
  ASSERT_EQ(ipl_downgrade(h.get()), IPL_OK);
  EXPECT_EQ(reader.reply(), IPL_OK) << "the waiting reader was not let in";
  EXPECT_TRUE(writer.silent_for(kStillWaiting)) << "a writer got in: " << status_text(writer.reply(milliseconds(0)));
  EXPECT_EQ(reader.release(lock_mode::shared), IPL_OK);
  EXPECT_TRUE(writer.silent_for(kStillWaiting)) << "the writer got in past our shared lock";
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(writer.reply(), IPL_OK);
  EXPECT_EQ(writer.release(lock_mode::exclusive), IPL_OK);
}

// The same with the waiting writer and reader as handles of this process
// (classic: the inode table's in-process waits). Catches: a downgrade that
// does not wake this process's waiting readers, or lets its writer in.
TEST(ConflictDowngrade, LetsWaitingReaderInNotWaitingWriterInThisProcess) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  handle writer = open_owned_lock(path);
  handle reader = open_owned_lock(path);
  std::unique_ptr<background_call> writing;
  std::unique_ptr<background_call> reading;
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  writing = start_acquire(writer.get(), lock_mode::exclusive, 30000);
  ASSERT_TRUE(writing->wait_until_waiting());
  reading = start_acquire(reader.get(), lock_mode::shared, 30000);
  ASSERT_TRUE(reading->wait_until_waiting());
  ASSERT_EQ(ipl_downgrade(h.get()), IPL_OK);
  EXPECT_EQ(reading->result(), IPL_OK) << "the waiting reader was not let in";
  std::this_thread::sleep_for(kStillWaiting);
  EXPECT_FALSE(writing->done()) << "a writer got in: " << status_text(writing->result(milliseconds(0)));
  EXPECT_EQ(ipl_release_read(reader.get()), IPL_OK);
  std::this_thread::sleep_for(kStillWaiting);
  EXPECT_FALSE(writing->done()) << "the writer got in past our shared lock";
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(writing->result(), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(writer.get()), IPL_OK);
}

// args: PATH OUT. Tries the exclusive lock as fast as it can until its stdin
// says "stop"; writes every hold it got as "GOT_NS RELEASED_NS" lines
// (steady clock, taken inside the hold) to OUT, then says "done COUNT".
IPL_TEST_HELPER(beyond_spinner) {
  if (args.size() != 2) return 2;
  ipl_lock *lock = nullptr;
  if (ipl_open(args[0].c_str(), 0, &lock) != IPL_OK) return 3;
  std::vector<std::pair<int64_t, int64_t>> holds;
  std::atomic<bool> stop{false};
  std::thread listener([&] {
    std::string line;
    helper_hear(&line);  // "stop", EOF or the bound
    stop.store(true);
  });
  helper_say("ready");
  while (!stop.load()) {
    if (ipl_acquire(lock, 0) != IPL_OK) continue;
    const int64_t got = clock_type::now().time_since_epoch().count();
    const int64_t released = clock_type::now().time_since_epoch().count();
    ipl_release(lock);
    holds.emplace_back(got, released);
  }
  listener.join();
  std::ofstream out(args[1]);
  for (const auto &hold : holds) out << hold.first << " " << hold.second << "\n";
  out.close();
  helper_say("done " + std::to_string(holds.size()));
  ipl_close(lock);
  return 0;
}

// Catches: a downgrade with a moment in which the lock is free (unlock, then
// lock shared): another process trying the exclusive lock as fast as it can
// gets it while this handle is between acquire and release. A hold of the
// spinner that overlaps one of ours is two holders at once.
TEST(ConflictDowngrade, NoMomentFreeForAWriter) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  const std::string holds_file = dir.path("holds");
  handle h = open_owned_lock(path);
  child_process spinner = child_process::helper("beyond_spinner", {path, holds_file});
  ASSERT_TRUE(spinner.expect_line("ready"));
  std::vector<std::pair<int64_t, int64_t>> ours;
  const auto end = clock_type::now() + milliseconds(1500);
  int failures = 0;
  while (clock_type::now() < end && failures == 0) {
    if (ipl_acquire(h.get(), 1000) != IPL_OK) {
      ++failures;
      break;
    }
    const int64_t from = clock_type::now().time_since_epoch().count();
    if (ipl_downgrade(h.get()) != IPL_OK) ++failures;
    const int64_t to = clock_type::now().time_since_epoch().count();
    if (ipl_release_read(h.get()) != IPL_OK) ++failures;
    ours.emplace_back(from, to);
  }
  spinner.write_line("stop");
  std::string done;
  ASSERT_TRUE(spinner.read_line(&done)) << "the spinner did not finish";
  EXPECT_EQ(failures, 0);
  std::vector<std::pair<int64_t, int64_t>> theirs;
  {
    std::ifstream in(holds_file);
    int64_t got = 0, released = 0;
    while (in >> got >> released) theirs.emplace_back(got, released);
  }
  // Both lists are in time order: one merge pass finds any overlap.
  int overlaps = 0;
  size_t j = 0;
  for (const auto &mine : ours) {
    while (j < theirs.size() && theirs[j].second < mine.first) ++j;
    if (j < theirs.size() && theirs[j].first <= mine.second) ++overlaps;
  }
  std::printf("[ downgrade] %zu downgrades, the spinner held it %zu times between them\n",
              ours.size(), theirs.size());
  EXPECT_GE(ours.size(), 20u);  // (Wine: ~50, polling against the spinner; Linux: thousands)
  EXPECT_GT(theirs.size(), 0u) << "the spinner never ran: the test proves nothing";
  EXPECT_EQ(overlaps, 0) << "a writer held the lock during a downgrade";
}

// Catches: a downgrade accepted from a handle that does not hold the lock
// exclusive (turning nothing, or a shared lock, into something else).
TEST(ApiDowngrade, NotHeldUnlessExclusive) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  EXPECT_EQ(ipl_downgrade(nullptr), IPL_E_INVALID);
  EXPECT_EQ(ipl_downgrade(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK) << "idle handle holds";
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_downgrade(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT) << "shared lost";
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}

// Catches: a downgrade that changes the lock but not the handle's record of
// it (ipl_release still accepted, ipl_release_read refused), or the other
// way round.
TEST(ApiDowngrade, ThenTheHandleHoldsShared) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire_write(h.get(), 0), IPL_OK);
  ASSERT_EQ(ipl_downgrade(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_write(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_downgrade(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_acquire_read(h.get(), 0), IPL_E_WOULD_DEADLOCK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  // And the same handle takes the exclusive lock again as if never downgraded.
  EXPECT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
}

// =====================================================================================
// ipl_upgrade
// =====================================================================================

#ifdef _WIN32
// Catches: an upgrade attempted on Windows, where a handle asking for an
// exclusive lock over its own shared one would wait for itself.
TEST(ApiUpgrade, UnsupportedOnWindowsKeepsShared) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_E_UNSUPPORTED);
  EXPECT_EQ(ipl_upgrade(h.get(), IPL_WAIT_FOREVER), IPL_E_UNSUPPORTED);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}
#else

// Catches: an upgrade that waits (or fails) with no other reader, or that
// does not really make the lock exclusive.
TEST(ConflictUpgrade, AloneIsImmediate) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  const auto start = clock_type::now();
  EXPECT_EQ(ipl_upgrade(h.get(), IPL_WAIT_FOREVER), IPL_OK);
  EXPECT_LT(clock_type::now() - start, kAtOnce);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
}

// Catches: an upgrade that drops the shared lock while it waits or when it
// times out (a writer could get in), that does not wait for another
// reader, that times out early, or that keeps the upgrade byte after a
// timeout.
TEST(ConflictUpgrade, WaitsForAnotherReaderAndTimesOutKeepingShared) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  agent reader(path);
  ASSERT_TRUE(reader.ready());
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  ASSERT_EQ(reader.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_E_TIMEOUT);
  const auto start = clock_type::now();
  EXPECT_EQ(ipl_upgrade(h.get(), 300), IPL_E_TIMEOUT);
  const auto took = clock_type::now() - start;
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(1300));
  // Still shared: another reader joins, no writer does, and the reader's own
  // upgrade is not told that ours is still waiting.
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(reader.upgrade(0), IPL_E_TIMEOUT);
  EXPECT_EQ(reader.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}

// Catches: an upgrade that never notices the other reader leaving, or
// completes while it is still there.
TEST(ConflictUpgrade, CompletesWhenTheReaderLeaves) {
  for (const int64_t timeout_ms : {int64_t(IPL_WAIT_FOREVER), int64_t(10000)}) {
    SCOPED_TRACE("timeout " + std::to_string(timeout_ms));
    temp_dir dir;
    const std::string path = dir.path("lock");
    handle h = open_owned_lock(path);
    std::unique_ptr<background_call> upgrader;
    auto reader = holder(path, lock_mode::shared);
    ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
    upgrader = start_upgrade(h.get(), timeout_ms);
    ASSERT_TRUE(upgrader->wait_until_waiting()) << status_text(upgrader->result(milliseconds(0)));
    std::this_thread::sleep_for(kStillWaiting);
    EXPECT_FALSE(upgrader->done()) << status_text(upgrader->result(milliseconds(0)));
    EXPECT_EQ(reader->release(lock_mode::shared), IPL_OK);
    EXPECT_EQ(upgrader->result(), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_release_read(h.get()), IPL_E_NOT_HELD);
    EXPECT_EQ(ipl_release(h.get()), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  }
}

// Both hold the lock shared and call ipl_upgrade(IPL_WAIT_FOREVER): the
// first waits, the second is told IPL_E_WOULD_DEADLOCK at once and keeps
// its shared lock; once it releases, the first completes. `first_here`:
// the first upgrader is this process (else a helper; the second is the other).
void two_upgraders(bool first_here) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> here;
  agent there(path);
  ASSERT_TRUE(there.ready());
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  ASSERT_EQ(there.acquire(lock_mode::shared, 0), IPL_OK);
  if (first_here) {
    here = start_upgrade(h.get(), IPL_WAIT_FOREVER);
    ASSERT_TRUE(here->wait_until_waiting()) << status_text(here->result(milliseconds(0)));
    const auto start = clock_type::now();
    // (On failure the helper is still waiting: end the test, which kills it.)
    ASSERT_EQ(there.upgrade(IPL_WAIT_FOREVER, milliseconds(5000)), IPL_E_WOULD_DEADLOCK);
    EXPECT_LT(clock_type::now() - start, kAtOnce);
    EXPECT_FALSE(here->done());
    // The second keeps its shared lock: releasing it works, and lets the
    // first finish.
    EXPECT_EQ(there.release(lock_mode::exclusive), IPL_E_NOT_HELD);
    EXPECT_EQ(there.release(lock_mode::shared), IPL_OK);
    EXPECT_EQ(here->result(), IPL_OK);
    EXPECT_EQ(there.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_release(h.get()), IPL_OK);
  } else {
    there.send("upgrade -1");
    ASSERT_TRUE(there.silent_for(kStillWaiting)) << "the first upgrade did not wait";
    const auto start = clock_type::now();
    // A deadlocked upgrade here would hang the test: wait on a thread.
    here = start_upgrade(h.get(), IPL_WAIT_FOREVER);
    const int status = here->result(milliseconds(5000));
    ASSERT_EQ(status, IPL_E_WOULD_DEADLOCK) << status_text(status);
    EXPECT_LT(here->finished_at() - start, kAtOnce);
    EXPECT_TRUE(there.silent_for(milliseconds(0)));
    EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
    EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
    EXPECT_EQ(there.status(), IPL_OK);
    EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
    EXPECT_EQ(there.release(lock_mode::exclusive), IPL_OK);
  }
}

// Catches: two upgraders that wait for each other forever (an upgrade that
// just converts its range with F_OFD_SETLKW: the kernel does not detect
// that deadlock for OFD locks), or a second upgrader that gives up its
// shared lock (or is told something else).
TEST(ConflictUpgrade, SecondUpgraderGetsWouldDeadlockHereFirst) { two_upgraders(true); }
TEST(ConflictUpgrade, SecondUpgraderGetsWouldDeadlockThereFirst) { two_upgraders(false); }

// Catches: a race in which two simultaneous upgrades both back off (both
// told IPL_E_WOULD_DEADLOCK) or both wait. Two helper processes upgrade at
// the same moment, ten times.
TEST(ConflictUpgrade, SimultaneousUpgradersExactlyOneBacksOff) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  agent a(path);
  agent b(path);
  ASSERT_TRUE(a.ready());
  ASSERT_TRUE(b.ready());
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_EQ(a.acquire(lock_mode::shared, 0), IPL_OK);
    ASSERT_EQ(b.acquire(lock_mode::shared, 0), IPL_OK);
    agent &first_sent = round % 2 ? b : a;
    agent &second_sent = round % 2 ? a : b;
    first_sent.send("upgrade -1");
    second_sent.send("upgrade -1");
    // One of them answers IPL_E_WOULD_DEADLOCK at once; find out which.
    agent *backed_off = nullptr;
    agent *waiting = nullptr;
    const auto deadline = clock_type::now() + milliseconds(5000);
    while (!backed_off && clock_type::now() < deadline) {
      if (!a.silent_for(milliseconds(20))) {
        backed_off = &a;
        waiting = &b;
      } else if (!b.silent_for(milliseconds(20))) {
        backed_off = &b;
        waiting = &a;
      }
    }
    ASSERT_TRUE(backed_off) << "both upgrades wait: a deadlock";
    EXPECT_EQ(backed_off->status(), IPL_E_WOULD_DEADLOCK);
    EXPECT_TRUE(waiting->silent_for(kStillWaiting)) << "both answered: " << status_text(waiting->status(milliseconds(0)));
    EXPECT_EQ(backed_off->release(lock_mode::shared), IPL_OK);
    EXPECT_EQ(waiting->status(), IPL_OK);
    EXPECT_EQ(waiting->release(lock_mode::exclusive), IPL_OK);
  }
}

// Catches: two handles of one process that both wait to upgrade (classic:
// the process's one kernel lock would wait for itself; OFD: the same
// deadlock as between processes).
TEST(ConflictUpgrade, TwoHandlesOfThisProcess) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle first = open_owned_lock(path);
  handle second = open_owned_lock(path);
  std::unique_ptr<background_call> upgrading;
  std::unique_ptr<background_call> second_upgrade;
  ASSERT_EQ(ipl_acquire_read(first.get(), 0), IPL_OK);
  ASSERT_EQ(ipl_acquire_read(second.get(), 0), IPL_OK);
  upgrading = start_upgrade(first.get(), IPL_WAIT_FOREVER);
  ASSERT_TRUE(upgrading->wait_until_waiting()) << status_text(upgrading->result(milliseconds(0)));
  second_upgrade = start_upgrade(second.get(), IPL_WAIT_FOREVER);
  const int status = second_upgrade->result(milliseconds(5000));
  if (status == kNoReply) {
    // Both wait: end it (the destructors would otherwise wait forever).
    ipl_cancel(first.get());
    ipl_cancel(second.get());
    FAIL() << "both upgrades wait for each other";
  }
  EXPECT_EQ(status, IPL_E_WOULD_DEADLOCK) << status_text(status);
  EXPECT_FALSE(upgrading->done());
  EXPECT_EQ(ipl_release_read(second.get()), IPL_OK);
  EXPECT_EQ(upgrading->result(), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_acquire_read(second.get(), 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(first.get()), IPL_OK);
}

// Catches: an upgrade that does not wait for a fasteners reader (fasteners'
// read lock covers the upgrade byte, libipl's shared range stops short of
// it), or that treats it as another upgrade (IPL_E_WOULD_DEADLOCK).
TEST(InteropUpgrade, WaitsForFastenersReader) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> upgrader;
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started()) << "set IPL_FASTENERS_PYTHON to a Python 3 with fasteners";
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  ASSERT_EQ(py.acquire(lock_mode::shared, 0), IPL_OK);
  const auto start = clock_type::now();
  EXPECT_EQ(ipl_upgrade(h.get(), 200), IPL_E_TIMEOUT);
  EXPECT_GE(clock_type::now() - start, milliseconds(200));
  upgrader = start_upgrade(h.get(), IPL_WAIT_FOREVER);
  std::this_thread::sleep_for(kStillWaiting);
  EXPECT_FALSE(upgrader->done()) << status_text(upgrader->result(milliseconds(0)));
  ASSERT_EQ(py.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(upgrader->result(), IPL_OK);
  ASSERT_EQ(py.acquire(lock_mode::shared, 0), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
  ASSERT_EQ(py.acquire(lock_mode::write, 0), IPL_OK);
  ASSERT_EQ(py.release(lock_mode::write), IPL_OK);
}

// Catches: an upgrade's wait for a fasteners reader (libipl polls for it:
// fasteners' lock covers the upgrade byte) that ipl_cancel cannot end, or
// that drops the shared lock when canceled.
TEST(InteropUpgrade, CancelWhileWaitingForFastenersReader) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  std::unique_ptr<background_call> upgrader;
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started()) << "set IPL_FASTENERS_PYTHON to a Python 3 with fasteners";
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  ASSERT_EQ(py.acquire(lock_mode::shared, 0), IPL_OK);
  upgrader = start_upgrade(h.get(), IPL_WAIT_FOREVER);
  ASSERT_TRUE(upgrader->wait_until_waiting()) << status_text(upgrader->result(milliseconds(0)));
  int status = kNoReply;
  const long long latency = cancel_and_time(h.get(), *upgrader, &status);
  ASSERT_NE(status, kNoReply) << "ipl_cancel did not end the upgrade";
  EXPECT_EQ(status, IPL_E_CANCELED) << status_text(status);
  EXPECT_LT(latency, 1000LL * kCancelBound.count());
  std::printf("[ cancel   ] upgrade waiting for a fasteners reader: returned %lld us after ipl_cancel\n",
              latency);
  ASSERT_EQ(py.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT) << "shared lost";
  ASSERT_EQ(py.acquire(lock_mode::shared, 0), IPL_OK);
  ASSERT_EQ(py.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}

// Catches: an upgrade accepted from a handle that holds nothing or already
// holds it exclusive (and what it holds changed).
TEST(ApiUpgrade, NotHeldUnlessShared) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  EXPECT_EQ(ipl_upgrade(nullptr, 0), IPL_E_INVALID);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_upgrade(h.get(), IPL_WAIT_FOREVER), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_upgrade(h.get(), -2), IPL_E_INVALID);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
}

// Catches: an upgrade that leaves the handle recorded as shared (ipl_release
// refused), or a lock that is not whole after an upgrade (a later downgrade
// or release leaves a piece behind).
TEST(ApiUpgrade, ThenTheHandleHoldsExclusive) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  ASSERT_EQ(ipl_upgrade(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_downgrade(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  EXPECT_EQ(ipl_upgrade(h.get(), 0), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
  // Nothing left of the upgrade: another process upgrades at once.
  agent other(path);
  ASSERT_TRUE(other.ready());
  EXPECT_EQ(other.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(other.upgrade(0), IPL_OK);
  EXPECT_EQ(other.release(lock_mode::exclusive), IPL_OK);
}

// Catches: an upgrade attempted on a read-only descriptor (EBADF from the
// kernel, reported as IPL_E_OS) or one that drops the shared lock on
// refusal.
TEST(ApiUpgrade, ReadOnlyHandleIsAccessKeepingShared) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a helper as another user";
  temp_dir dir;
  ASSERT_EQ(chmod(dir.root().c_str(), 0755), 0);
  const std::string path = dir.path("lock");
  write_file(path, "");
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  agent nobody(path, "65534");
  ASSERT_TRUE(nobody.ready());
  ASSERT_EQ(nobody.acquire(lock_mode::shared, 0), IPL_OK);
  EXPECT_EQ(nobody.upgrade(0), IPL_E_ACCESS);
  const auto start = clock_type::now();
  EXPECT_EQ(nobody.upgrade(IPL_WAIT_FOREVER), IPL_E_ACCESS);
  EXPECT_LT(clock_type::now() - start, kAtOnce);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(nobody.release(lock_mode::shared), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}
#endif  // !_WIN32

// =====================================================================================
// ipl_remove
// =====================================================================================

// Catches: a remove that leaves the file, keeps the lock (or the handle's
// record of it), or a handle that cannot lock the path again afterwards.
TEST(ApiRemove, WhileExclusiveRemovesAndReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_remove(h.get()), IPL_OK);
  EXPECT_FALSE(exists(path)) << "the lock file is still there";
  EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(ipl_remove(h.get()), IPL_E_NOT_HELD);
  EXPECT_FALSE(exists(path)) << "an idle handle's query or remove recreated it";
  EXPECT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_TRUE(exists(path)) << "the next acquire did not create it again";
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT)
      << "the new lock is not on the file the path names";
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
}

// Catches: a query that creates the lock file again after ipl_remove (its
// reopen of a path that names nothing creates the file, as an acquire
// would): a monitor polling ipl_query would undo every removal.
TEST(ApiRemove, QueryAfterRemoveDoesNotRecreateTheFile) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
#ifdef _WIN32
  // Wine keeps a deleted file at its path while any handle is open (see
  // win32_lockfileex.cpp): there only the remover's handle asks.
  handle idle;
#else
  handle idle = open_owned_lock(path);
#endif
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  ASSERT_EQ(ipl_remove(h.get()), IPL_OK);
  ASSERT_FALSE(exists(path));
  for (ipl_lock *asking : {h.get(), idle.get()}) {
    if (!asking) continue;
    const query_result q = query(asking);
    EXPECT_EQ(q.status, IPL_OK);
    EXPECT_EQ(q.state, IPL_STATE_FREE) << q;
    EXPECT_EQ(q.pid, -1) << q;
    EXPECT_FALSE(exists(path)) << "ipl_query created the removed lock file again ("
                               << (asking == h.get() ? "the remover's handle" : "another handle")
                               << ")";
  }
}

// Catches: a remove accepted without the exclusive lock (someone else's
// lock file removed under them), or one that drops the shared lock.
TEST(ApiRemove, NotHeldUnlessExclusive) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  EXPECT_EQ(ipl_remove(nullptr), IPL_E_INVALID);
  EXPECT_EQ(ipl_remove(h.get()), IPL_E_NOT_HELD);
  EXPECT_TRUE(exists(path));
  ASSERT_EQ(ipl_acquire_read(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_remove(h.get()), IPL_E_NOT_HELD);
  EXPECT_TRUE(exists(path));
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT);
  EXPECT_EQ(ipl_release_read(h.get()), IPL_OK);
  // Held exclusive by another handle: still not this handle's to remove.
  auto other = holder(path, lock_mode::exclusive);
  EXPECT_EQ(ipl_remove(h.get()), IPL_E_NOT_HELD);
  EXPECT_TRUE(exists(path));
}

// Catches: a remove that unlinks whatever the path names (a file someone
// put there after replacing ours), and one that then keeps the old lock.
TEST(ApiRemove, ReplacedPathIsLeftAlone) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  const std::string alias = dir.path("old-lock");  // our file, under another name
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
#ifdef _WIN32
  ASSERT_EQ(rename_over(path, alias), "");
#else
  ASSERT_EQ(link(path.c_str(), alias.c_str()), 0) << strerror(errno);
#endif
  const std::string theirs = dir.path("theirs");
  write_file(theirs, "theirs");
  ASSERT_EQ(rename_over(theirs, path), "");
#ifndef _WIN32
  const auto their_id = file_id(path);
#endif
  EXPECT_EQ(ipl_remove(h.get()), IPL_OK);
  ASSERT_TRUE(exists(path)) << "someone else's file was removed";
  EXPECT_EQ(read_all(path), "theirs");
#ifndef _WIN32
  EXPECT_EQ(file_id(path), their_id);
#endif
  EXPECT_EQ(ipl_release(h.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(alias, lock_mode::exclusive), IPL_OK)
      << "the old file's lock was kept";
}

// A libipl waiter in another process, while the holder removes the file:
// it must end up holding a new file at the path (created by it), never the
// removed one.
void waiter_follows_removal(int64_t timeout_ms) {
  SCOPED_TRACE("waiter timeout " + std::to_string(timeout_ms));
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
#ifndef _WIN32
  const auto removed_id = file_id(path);
#endif
  lock_agent waiter(path);
  ASSERT_TRUE(waiter.started());
  waiter.start_acquire(lock_mode::exclusive, timeout_ms);
  ASSERT_TRUE(waiter.silent_for(kStillWaiting));
  ASSERT_EQ(ipl_remove(h.get()), IPL_OK);
  EXPECT_EQ(waiter.reply(), IPL_OK);
  ASSERT_TRUE(exists(path)) << "the waiter holds a lock on no file at the path";
#ifndef _WIN32
  // The kernel may give a new file the removed file's inode number; the
  // proof that counts is the fourth process below.
  if (file_id(path) == removed_id) std::printf("[ remove   ] (the new file reuses the inode number)\n");
#endif
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT)
      << "a newcomer at the path is not excluded: the waiter holds the removed file";
  const query_result q = query(h.get());
  EXPECT_EQ(q.status, IPL_OK);
  EXPECT_EQ(q.state, IPL_STATE_EXCLUSIVE) << q;
  EXPECT_EQ(q.pid, visible_pid(pid_of(waiter))) << q;
  EXPECT_EQ(waiter.release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

// Catches: a waiter granted the removed (nameless) file and reporting
// IPL_OK: a newcomer would lock the new file at the path at the same time.
TEST(ConflictRemove, WaiterInAnotherProcessGetsANewFile) {
#ifndef _WIN32
  waiter_follows_removal(IPL_WAIT_FOREVER);
#endif
  waiter_follows_removal(10000);
}

// Catches: a waiting handle of this process granted the removed file
// (classic: the inode table hands the lock over inside the process, without
// the kernel; the identity check must still run).
TEST(ConflictRemove, WaiterInThisProcessGetsANewFile) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  handle other = open_owned_lock(path);
  std::unique_ptr<background_call> waiting;
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  waiting = start_acquire(other.get(), lock_mode::exclusive, 10000);
  ASSERT_TRUE(waiting->wait_until_waiting());
  ASSERT_EQ(ipl_remove(h.get()), IPL_OK);
  EXPECT_EQ(waiting->result(), IPL_OK);
  ASSERT_TRUE(exists(path)) << "the waiter holds a lock on no file at the path";
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT)
      << "a newcomer at the path is not excluded: the waiter holds the removed file";
  EXPECT_EQ(ipl_acquire(h.get(), 0), IPL_E_TIMEOUT) << "the remover's next acquire is not excluded";
  EXPECT_EQ(ipl_release(other.get()), IPL_OK);
  EXPECT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  EXPECT_EQ(ipl_release(h.get()), IPL_OK);
}

#ifndef _WIN32
// Catches: a failed unlink reported as success (or IPL_E_OS), or a lock
// released although the file stays.
TEST(ApiRemove, DeniedByTheFolderIsAccessKeepingTheLock) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a helper as another user";
  temp_dir dir;
  ASSERT_EQ(chmod(dir.root().c_str(), 0755), 0);
  const std::string folder = dir.path("locked-down");
  ASSERT_EQ(mkdir(folder.c_str(), 0755), 0);
  const std::string path = folder + "/lock";
  write_file(path, "");
  ASSERT_EQ(chmod(path.c_str(), 0666), 0);
  ASSERT_EQ(chmod(folder.c_str(), 0555), 0);
  agent nobody(path, "65534");
  ASSERT_TRUE(nobody.ready());
  ASSERT_EQ(nobody.acquire(lock_mode::exclusive, 0), IPL_OK);
  EXPECT_EQ(nobody.call("remove"), IPL_E_ACCESS);
  EXPECT_TRUE(exists(path));
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT) << "the lock was dropped";
  EXPECT_EQ(nobody.release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

// Pins the documented limit (ipl.h, ipl_remove): a fasteners process that
// had opened the file before the removal is granted the removed file, and a
// newcomer at the path is not excluded by it. Catches: the documentation
// going stale (e.g. a remove that waits for such waiters, or that recreates
// the file), and a remove that never releases (fasteners would never get it).
TEST(InteropRemove, FastenersWaiterGetsTheRemovedFile) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  handle h = open_owned_lock(path);
  lock_agent py = fasteners_peer(path);
  ASSERT_TRUE(py.started()) << "set IPL_FASTENERS_PYTHON to a Python 3 with fasteners";
  ASSERT_EQ(ipl_acquire(h.get(), 0), IPL_OK);
  ASSERT_EQ(py.wait(lock_mode::exclusive, IPL_WAIT_FOREVER), kWaiting);
  ASSERT_TRUE(py.silent_for(kStillWaiting));
  ASSERT_EQ(ipl_remove(h.get()), IPL_OK);
  EXPECT_EQ(py.reply(), IPL_OK);
  EXPECT_FALSE(exists(path)) << "fasteners does not recreate it, and nobody else should";
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK)
      << "the documented limit no longer holds: update ipl.h";
  ASSERT_EQ(py.release(lock_mode::exclusive), IPL_OK);
}
#endif

}  // namespace

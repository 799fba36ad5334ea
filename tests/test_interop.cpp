// Interop: libipl and Python's fasteners on the same lock file.
//
// fasteners runs for real, in a Python process (tests/fasteners_peer.py, run
// with $IPL_FASTENERS_PYTHON). libipl runs either in this process or, when a
// test needs a libipl call that waits, in a helper process
// (interop_libipl_peer below) that speaks the same line protocol, so that a
// wait that never ends fails the test after kBound instead of hanging it.
//
// The protocol (see fasteners_peer.py): the peer prints "ready", then answers
// "acquire KIND MODE" with "locked T" / "busy T" / "waiting T" (then "locked T"
// or "timeout T"), and "release" with "released T". T is CLOCK_MONOTONIC in
// nanoseconds, the same clock in every process, which lets a test check that
// a waiter got the lock only after the holder let go — exactly, without
// sleeping.
//
// If the interpreter cannot import fasteners these tests FAIL on purpose: a
// skipped interop test would hide a broken CI setup.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include "test_support.hpp"

namespace {

using namespace ipltest;

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::vector<std::string> split_words(const std::string &line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

std::string fasteners_python() {
  const char *python = getenv("IPL_FASTENERS_PYTHON");
  return python && *python ? python : "/usr/bin/python3";
}

// Empty when the build did not say where the test sources are.
std::string fasteners_peer_script() {
#ifdef IPL_TESTS_SOURCE_DIR
  return std::string(IPL_TESTS_SOURCE_DIR) + "/fasteners_peer.py";
#else
  return "";
#endif
}

// One answer of a peer: "WORD T" (T = monotonic ns), or anything else as is.
struct reply {
  std::string line;
  std::string word;
  int64_t at_ns = -1;
};

// A fasteners or libipl process holding (or waiting for) locks on one file.
class peer {
 public:
  static peer fasteners(const std::string &lock_path) {
    const std::string script = fasteners_peer_script();
    if (script.empty()) {
      return peer("fasteners peer",
                  "IPL_TESTS_SOURCE_DIR is not defined for the test binary; "
                  "tests/meson.build must pass it (the absolute path of tests/)");
    }
    return peer("fasteners peer (" + fasteners_python() + ")",
                {fasteners_python(), script, lock_path}, false);
  }

  static peer libipl(const std::string &lock_path) {
    return peer("libipl peer", {lock_path}, true);
  }

  // The peer's first line: "ready" once it has imported fasteners / opened
  // the lock file. Anything else (an "error ..." line, EOF) fails here with
  // the peer's own words.
  testing::AssertionResult ready() { return expect("ready"); }

  // Sends `command` and checks the first word of the answer.
  testing::AssertionResult ask(const std::string &command,
                               const std::string &expected_word,
                               reply *got = nullptr) {
    send(command);
    return expect(expected_word, got);
  }

  // Checks the first word of the next answer.
  testing::AssertionResult expect(const std::string &expected_word,
                                  reply *got = nullptr) {
    if (!process_) return testing::AssertionFailure() << name_ << ": " << start_error_;
    reply answer;
    if (!process_->read_line(&answer.line, kBound)) {
      return testing::AssertionFailure()
             << name_ << ": expected \"" << expected_word
             << "\", got EOF or nothing within " << kBound.count() << " ms";
    }
    const std::vector<std::string> words = split_words(answer.line);
    if (!words.empty()) answer.word = words[0];
    if (words.size() == 2 && answer.word != "error") answer.at_ns = std::stoll(words[1]);
    if (got) *got = answer;
    if (answer.word != expected_word) {
      return testing::AssertionFailure() << name_ << ": expected \"" << expected_word
                                         << "\", got \"" << answer.line << "\"";
    }
    return testing::AssertionSuccess();
  }

  // True when the peer says nothing (not even EOF) for `window`.
  bool quiet_for(std::chrono::milliseconds window) {
    return process_ && process_->silent_for(window);
  }

  void send(const std::string &command) {
    if (process_) process_->write_line(command);
  }

  // SIGKILLs the peer and reaps it; returns describe_status() of its end.
  int kill_and_reap() {
    if (!process_) return -1;
    process_->send_signal(SIGKILL);
    return describe_status(process_->wait(kBound));
  }

 private:
  peer(std::string name, std::string start_error)
      : name_(std::move(name)), start_error_(std::move(start_error)) {}

  peer(std::string name, const std::vector<std::string> &args, bool is_helper)
      : name_(std::move(name)) {
    try {
      process_.emplace(is_helper ? child_process::helper("interop_libipl_peer", args)
                                 : child_process::program(args));
    } catch (const std::exception &failure) {
      start_error_ = std::string("could not start: ") + failure.what();
    }
  }

  std::string name_;
  std::optional<child_process> process_;
  std::string start_error_;
};

// ---- The libipl side of the protocol, in a helper process ----------------

int acquire_kind(ipl_lock *lock, const std::string &kind, int64_t timeout_ms) {
  if (kind == "read") return ipl_acquire_read(lock, timeout_ms);
  if (kind == "write") return ipl_acquire_write(lock, timeout_ms);
  return ipl_acquire(lock, timeout_ms);
}

int release_kind(ipl_lock *lock, const std::string &kind) {
  if (kind == "read") return ipl_release_read(lock);
  if (kind == "write") return ipl_release_write(lock);
  return ipl_release(lock);
}

void say_at(const std::string &word) {
  helper_say(word + " " + std::to_string(monotonic_ns()));
}

// args: LOCK_PATH. KIND exclusive / read / write maps to ipl_acquire /
// ipl_acquire_read / ipl_acquire_write; MODE try / block / timeout=MS to a
// timeout of 0 / IPL_WAIT_FOREVER / MS.
IPL_TEST_HELPER(interop_libipl_peer) {
  if (args.size() != 1) return 2;
  ipl_lock *lock = nullptr;
  const int opened = ipl_open(args[0].c_str(), 0, &lock);
  if (opened != IPL_OK) {
    helper_say(std::string("error ipl_open: ") + ipl_strerror(opened));
    return 1;
  }
  helper_say("ready");
  std::string held_kind;  // empty: holds nothing
  std::string command;
  while (helper_hear(&command)) {
    const std::vector<std::string> words = split_words(command);
    if (words.size() == 3 && words[0] == "acquire") {
      const std::string &kind = words[1];
      const std::string &mode = words[2];
      int64_t timeout_ms = 0;
      if (mode == "block") {
        timeout_ms = IPL_WAIT_FOREVER;
      } else if (mode.rfind("timeout=", 0) == 0) {
        timeout_ms = std::stoll(mode.substr(8));
      } else if (mode != "try") {
        helper_say("error unknown mode: " + mode);
        continue;
      }
      int status = acquire_kind(lock, kind, 0);
      if (status == IPL_E_TIMEOUT && timeout_ms != 0) {
        say_at("waiting");
        status = acquire_kind(lock, kind, timeout_ms);
      }
      if (status == IPL_OK) {
        held_kind = kind;
        say_at("locked");
      } else if (status == IPL_E_TIMEOUT) {
        say_at(timeout_ms == 0 ? "busy" : "timeout");
      } else {
        helper_say(std::string("error acquire: ") + ipl_strerror(status));
      }
    } else if (command == "release") {
      const int64_t released_at = monotonic_ns();
      const int status = release_kind(lock, held_kind);
      if (status == IPL_OK) {
        held_kind.clear();
        helper_say("released " + std::to_string(released_at));
      } else {
        helper_say(std::string("error release: ") + ipl_strerror(status));
      }
    } else if (command == "exit") {
      break;
    } else {
      helper_say("error unknown command: " + command);
    }
  }
  ipl_close(lock);
  return 0;
}

// Prints the first fcntl record lock that blocks a whole-file write lock on
// args[0], as a process other than its owner sees it:
// "unlocked" or "<read|write> <l_start> <l_len>".
IPL_TEST_HELPER(interop_probe_lock_record) {
  if (args.size() != 1) return 2;
  const int fd = open(args[0].c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    helper_say("error open");
    return 1;
  }
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = 0;
  probe.l_len = 0;
  const int status = fcntl(fd, F_GETLK, &probe);
  close(fd);
  if (status != 0) {
    helper_say("error F_GETLK");
    return 1;
  }
  if (probe.l_type == F_UNLCK) {
    helper_say("unlocked");
  } else {
    helper_say(std::string(probe.l_type == F_RDLCK ? "read" : "write") + " " +
               std::to_string(probe.l_start) + " " + std::to_string(probe.l_len));
  }
  return 0;
}

// The lock record another process sees on `path` right now.
std::string probe_lock_record(const std::string &path) {
  child_process probe = child_process::helper("interop_probe_lock_record", {path});
  std::string record;
  if (!probe.read_line(&record)) record = "<no answer from the probe>";
  probe.wait();
  return record;
}

// A libipl handle owned by the test body.
struct open_lock {
  explicit open_lock(const std::string &path) { status = ipl_open(path.c_str(), 0, &lock); }
  ~open_lock() { ipl_close(lock); }
  open_lock(const open_lock &) = delete;
  open_lock &operator=(const open_lock &) = delete;
  ipl_lock *lock = nullptr;
  int status = IPL_E_INTERNAL;
};

// ---- Setup ------------------------------------------------------------

// Catches a CI setup whose interpreter lacks fasteners (or a missing
// IPL_TESTS_SOURCE_DIR): every other Interop test would fail too, this one
// says why in one line.
TEST(InteropSetup, FastenersPeerStartsAndImportsFasteners) {
  temp_dir dir;
  peer py = peer::fasteners(dir.path("lock"));
  ASSERT_TRUE(py.ready()) << "set IPL_FASTENERS_PYTHON (meson option fasteners_python) "
                             "to a Python 3 with fasteners; CI installs python3-fasteners";
}

// ---- The record on the file is the one fasteners takes ----------------

// Catches a different byte range (e.g. byte 0 length 1, or from EOF), a
// shared lock in place of a write lock, and flock(2) (invisible to F_GETLK).
TEST(InteropLockRecord, ExclusiveIsTheRecordFastenersTakes) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  std::string fasteners_record;
  for (const char *kind : {"exclusive", "write"}) {
    SCOPED_TRACE(kind);
    ASSERT_TRUE(py.ask(std::string("acquire ") + kind + " try", "locked"));
    const std::string record = probe_lock_record(path);
    if (fasteners_record.empty()) fasteners_record = record;
    EXPECT_EQ(record, fasteners_record) << "fasteners' two exclusive kinds differ";
    ASSERT_TRUE(py.ask("release", "released"));
  }
  ASSERT_EQ(fasteners_record, "write 0 0");  // whole file, as documented

  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), fasteners_record) << "ipl_acquire";
  ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "unlocked") << "ipl_release left a record";
  ASSERT_EQ(ipl_acquire_write(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), fasteners_record) << "ipl_acquire_write";
  ASSERT_EQ(ipl_release_write(mine.lock), IPL_OK);
}

// Catches a shared lock taken as a write lock, or on a range that does not
// start at byte 0 (where every fasteners lock starts). libipl's shared lock
// stops one byte short of the whole file: the last byte (offset 2^63-1) is
// the upgrade byte (ipl.h, ipl_upgrade), so the record is "0, length
// 2^63-1" where fasteners' is "0, to the end" — the same conflicts, which
// the InteropFasteners*/InteropLibipl* tests check both ways.
TEST(InteropLockRecord, SharedIsTheRecordFastenersTakesButTheUpgradeByte) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire read try", "locked"));
  const std::string fasteners_record = probe_lock_record(path);
  ASSERT_TRUE(py.ask("release", "released"));
  ASSERT_EQ(fasteners_record, "read 0 0");  // whole file, as documented

  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "read 0 9223372036854775807");
  ASSERT_EQ(ipl_release_read(mine.lock), IPL_OK);
  EXPECT_EQ(probe_lock_record(path), "unlocked") << "ipl_release_read left a record";
}

// ---- libipl holds, fasteners tries --------------------------------------

// Catches flock(2) or any lock fasteners' lockf() does not see (fasteners
// would get the lock), and a release that does not unlock (it never would).
TEST(InteropLibiplHolds, FastenersCannotTakeAnyKindUntilRelease) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());

  struct exclusive_api {
    const char *name;
    int (*acquire)(ipl_lock *, int64_t);
    int (*release)(ipl_lock *);
  };
  for (const exclusive_api &api : {exclusive_api{"ipl_acquire", ipl_acquire, ipl_release},
                                   exclusive_api{"ipl_acquire_write", ipl_acquire_write,
                                                 ipl_release_write}}) {
    SCOPED_TRACE(api.name);
    ASSERT_EQ(api.acquire(mine.lock, 0), IPL_OK);
    EXPECT_TRUE(py.ask("acquire exclusive try", "busy"));
    EXPECT_TRUE(py.ask("acquire write try", "busy"));
    EXPECT_TRUE(py.ask("acquire read try", "busy"));
    // fasteners' own timed wait gives up too.
    EXPECT_TRUE(py.ask("acquire exclusive timeout=200", "waiting"));
    EXPECT_TRUE(py.expect("timeout"));
    ASSERT_EQ(api.release(mine.lock), IPL_OK);

    for (const char *kind : {"exclusive", "write", "read"}) {
      SCOPED_TRACE(kind);
      EXPECT_TRUE(py.ask(std::string("acquire ") + kind + " try", "locked"));
      ASSERT_TRUE(py.ask("release", "released"));
    }
  }
}

// ---- fasteners holds, libipl tries and waits -----------------------------

// Catches flock(2), or OFD locks that do not conflict with fasteners'
// classic locks: libipl would get a lock fasteners holds.
TEST(InteropFastenersHolds, LibiplCannotTakeAnyModeUntilRelease) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  for (const char *kind : {"exclusive", "write"}) {
    SCOPED_TRACE(kind);
    ASSERT_TRUE(py.ask(std::string("acquire ") + kind + " try", "locked"));
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire_write(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_E_TIMEOUT);
    ASSERT_TRUE(py.ask("release", "released"));
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  }
}

// Catches a timed wait that takes the lock although fasteners holds it (e.g.
// a blocking call that ignores classic locks), or gives up early.
TEST(InteropFastenersHolds, LibiplTimedWaitTimesOutWhileHeld) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire exclusive try", "locked"));
  peer waiter = peer::libipl(path);
  ASSERT_TRUE(waiter.ready());
  reply started;
  reply gave_up;
  ASSERT_TRUE(waiter.ask("acquire exclusive timeout=300", "waiting", &started));
  ASSERT_TRUE(waiter.expect("timeout", &gave_up));
  EXPECT_GE(gave_up.at_ns - started.at_ns, int64_t(300) * 1000000);
  ASSERT_TRUE(waiter.ask("acquire read timeout=100", "waiting"));
  ASSERT_TRUE(waiter.expect("timeout"));
}

// How long a waiter must stay quiet while the lock is still held elsewhere: a
// wait that wrongly returns at once answers well within this.
constexpr std::chrono::milliseconds kQuietWindow = 150ms;

// `waiter` (libipl) has answered "waiting" for a lock that `holder`
// (fasteners) holds. Checks that the waiter stays quiet while the lock is
// held, then gets it after the holder releases — stamped after the release.
void release_and_expect_handoff(peer &holder, peer &waiter) {
  EXPECT_TRUE(waiter.quiet_for(kQuietWindow))
      << "the libipl waiter answered while fasteners still held the lock";
  reply released;
  reply locked;
  ASSERT_TRUE(holder.ask("release", "released", &released));
  ASSERT_TRUE(waiter.expect("locked", &locked));
  EXPECT_GT(locked.at_ns, released.at_ns) << "libipl got the lock before fasteners let go";
}

// libipl waits (timed or forever) while fasteners holds: it must get the
// lock, and only after fasteners let go.
void libipl_wait_gets_lock_after_fasteners_release(const std::string &fasteners_kind,
                                                   const std::string &libipl_command) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire " + fasteners_kind + " try", "locked"));
  peer waiter = peer::libipl(path);
  ASSERT_TRUE(waiter.ready());
  ASSERT_TRUE(waiter.ask(libipl_command, "waiting"));
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, waiter));
  // The waiter really holds it now: fasteners cannot take it.
  EXPECT_TRUE(py.ask("acquire exclusive try", "busy"));
  EXPECT_TRUE(py.ask("acquire read try", "busy"));
}

// Catches a timed wait that misses the release (returns IPL_E_TIMEOUT) or
// returns IPL_OK without the lock.
TEST(InteropFastenersHolds, LibiplTimedWaitGetsLockAfterRelease) {
  libipl_wait_gets_lock_after_fasteners_release("exclusive", "acquire exclusive timeout=5000");
}

// Catches a forever wait that never wakes for a fasteners release (fails at
// kBound), or returns IPL_OK without the lock.
TEST(InteropFastenersHolds, LibiplForeverWaitGetsLockAfterRelease) {
  libipl_wait_gets_lock_after_fasteners_release("exclusive", "acquire exclusive block");
}

// ---- Reader-writer -------------------------------------------------------

// Catches a libipl read lock taken as a write lock (it would be refused).
TEST(InteropSharedLocks, FastenersReadThenLibiplReadCoexist) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire read try", "locked"));
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  EXPECT_EQ(ipl_release_read(mine.lock), IPL_OK);
}

// Catches a libipl read lock taken as a write lock (fasteners would be refused).
TEST(InteropSharedLocks, LibiplReadThenFastenersReadCoexist) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  EXPECT_TRUE(py.ask("acquire read try", "locked"));
  EXPECT_TRUE(py.ask("release", "released"));
}

// Catches a libipl write lock that is really shared, or that does not see
// fasteners' read lock; and a write wait that never wakes.
TEST(InteropSharedLocks, FastenersReadBlocksLibiplWrite) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire read try", "locked"));
  {
    open_lock mine(path);
    ASSERT_EQ(mine.status, IPL_OK);
    EXPECT_EQ(ipl_acquire_write(mine.lock, 0), IPL_E_TIMEOUT);
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
  }
  peer waiter = peer::libipl(path);
  ASSERT_TRUE(waiter.ready());
  ASSERT_TRUE(waiter.ask("acquire write block", "waiting"));
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, waiter));
  // The waiter really holds a write lock now: fasteners cannot even read.
  EXPECT_TRUE(py.ask("acquire read try", "busy"));
}

// Catches a libipl read lock that is no lock at all (or flock(2)), and a
// release_read that does not unlock.
TEST(InteropSharedLocks, LibiplReadBlocksFastenersWrite) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  ASSERT_EQ(ipl_acquire_read(mine.lock, 0), IPL_OK);
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  EXPECT_TRUE(py.ask("acquire write try", "busy"));
  EXPECT_TRUE(py.ask("acquire exclusive try", "busy"));
  ASSERT_TRUE(py.ask("acquire write block", "waiting"));
  const int64_t released_at = monotonic_ns();
  ASSERT_EQ(ipl_release_read(mine.lock), IPL_OK);
  reply locked;
  ASSERT_TRUE(py.expect("locked", &locked));
  EXPECT_GT(locked.at_ns, released_at);
}

// Catches a libipl read that does not see fasteners' write lock, and a read
// wait that never wakes.
TEST(InteropSharedLocks, FastenersWriteBlocksLibiplRead) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire write try", "locked"));
  {
    open_lock mine(path);
    ASSERT_EQ(mine.status, IPL_OK);
    EXPECT_EQ(ipl_acquire_read(mine.lock, 0), IPL_E_TIMEOUT);
  }
  peer waiter = peer::libipl(path);
  ASSERT_TRUE(waiter.ready());
  ASSERT_TRUE(waiter.ask("acquire read block", "waiting"));
  ASSERT_NO_FATAL_FAILURE(release_and_expect_handoff(py, waiter));
  // A shared holder still lets fasteners read, and still keeps its writer out.
  EXPECT_TRUE(py.ask("acquire read try", "locked"));
  EXPECT_TRUE(py.ask("release", "released"));
  EXPECT_TRUE(py.ask("acquire write try", "busy"));
}

// ---- fasteners waits for libipl --------------------------------------------

// Catches a libipl lock fasteners does not see (its first try would succeed,
// no "waiting"), and a release that does not unlock (no "locked" in kBound).
TEST(InteropFastenersWaits, BlockingAcquireGetsLockOnlyAfterLibiplReleases) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  for (const char *command : {"acquire exclusive block", "acquire write block",
                              "acquire read block", "acquire exclusive timeout=10000"}) {
    SCOPED_TRACE(command);
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_TRUE(py.ask(command, "waiting"));
    const int64_t released_at = monotonic_ns();
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
    reply locked;
    ASSERT_TRUE(py.expect("locked", &locked));
    EXPECT_GT(locked.at_ns, released_at);
    ASSERT_TRUE(py.ask("release", "released"));
  }
}

// ---- Crashes ------------------------------------------------------------

// Catches a lock that outlives its holder (e.g. state cached in libipl, or a
// lock-file scheme): the kernel drops a SIGKILLed fasteners process's lock.
TEST(InteropCrash, KilledFastenersHolderFreesLockForLibipl) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  open_lock mine(path);
  ASSERT_EQ(mine.status, IPL_OK);
  for (const char *kind : {"exclusive", "read"}) {
    SCOPED_TRACE(kind);
    peer py = peer::fasteners(path);
    ASSERT_TRUE(py.ready());
    ASSERT_TRUE(py.ask(std::string("acquire ") + kind + " try", "locked"));
    ASSERT_EQ(ipl_acquire(mine.lock, 0), IPL_E_TIMEOUT);
    ASSERT_EQ(py.kill_and_reap(), -1000 - SIGKILL);
    // The kernel closes a process's files before its parent can reap it.
    EXPECT_EQ(ipl_acquire(mine.lock, 0), IPL_OK);
    ASSERT_EQ(ipl_release(mine.lock), IPL_OK);
  }
}

// Catches a forever wait that is not woken when the holder dies.
TEST(InteropCrash, KilledFastenersHolderWakesLibiplWaiter) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire write try", "locked"));
  peer waiter = peer::libipl(path);
  ASSERT_TRUE(waiter.ready());
  ASSERT_TRUE(waiter.ask("acquire exclusive block", "waiting"));
  EXPECT_TRUE(waiter.quiet_for(kQuietWindow))
      << "the libipl waiter answered while fasteners still held the lock";
  ASSERT_EQ(py.kill_and_reap(), -1000 - SIGKILL);
  ASSERT_TRUE(waiter.expect("locked"));
  // The waiter really holds it: a new fasteners process cannot take it.
  peer another_py = peer::fasteners(path);
  ASSERT_TRUE(another_py.ready());
  EXPECT_TRUE(another_py.ask("acquire read try", "busy"));
}

// Catches a libipl lock that outlives its SIGKILLed holder process.
TEST(InteropCrash, KilledLibiplHolderFreesLockForFasteners) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  peer holder = peer::libipl(path);
  ASSERT_TRUE(holder.ready());
  ASSERT_TRUE(holder.ask("acquire exclusive try", "locked"));
  peer py = peer::fasteners(path);
  ASSERT_TRUE(py.ready());
  ASSERT_TRUE(py.ask("acquire exclusive try", "busy"));
  ASSERT_EQ(holder.kill_and_reap(), -1000 - SIGKILL);
  EXPECT_TRUE(py.ask("acquire exclusive try", "locked"));
}

}  // namespace

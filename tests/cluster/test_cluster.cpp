// SPDX-License-Identifier: MIT
// Cluster* tests: libipl across hosts. scripts/test-cluster serves one
// GlusterFS volume and mounts it twice, with two independent FUSE clients:
// mount A ($IPL_CLUSTER_A) in a network namespace of its own, behind a veth
// link the script can cut, and mount B ($IPL_CLUSTER_B) beside the server.
// For locking, the two mounts are two hosts: a lock taken through A is
// known to B only through the server. Each test works on one lock file seen
// through both mounts (a.path / b.path).
//
// The processes on either side are helpers of this binary (cluster_peer:
// one libipl handle; cluster_raw: one raw OFD descriptor), iplock
// ($IPL_IPLOCK) and Python's fasteners (tests/fasteners_peer.py). Helpers
// stamp their answers with CLOCK_MONOTONIC, which all processes share, so
// hand-off and crash-release times are measured between the two events
// themselves, not through pipes. Measured figures are printed as lines
// starting with "[ measure ]" (scripts/test-cluster repeats them at the end).
//
// The ClusterLost tests change the cluster through `$IPL_CLUSTER_CTL ctl
// $IPL_CLUSTER_STATE ACTION`: kill and restart the brick, cut and restore
// A's link, turn client.strict-locks on or off. A guard undoes an outage
// when a test fails halfway.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <ipl/ipl.h>

#include "test_support.hpp"

namespace {

using namespace ipltest;
using namespace std::chrono_literals;

// ---- Time -------------------------------------------------------------------

int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t(now.tv_sec) * 1000000000 + now.tv_nsec;
}

double ms_between(int64_t from_ns, int64_t to_ns) { return double(to_ns - from_ns) / 1e6; }

// Prints "[ measure ] WHAT: median X ms (min .. max, N rounds)" (or "WHAT:
// X ms" for one sample) and returns the median.
double report(const std::string &what, std::vector<double> samples_ms) {
  if (samples_ms.empty()) return -1;
  std::sort(samples_ms.begin(), samples_ms.end());
  const double median = samples_ms[samples_ms.size() / 2];
  if (samples_ms.size() == 1) {
    std::printf("[ measure ] %s: %.1f ms\n", what.c_str(), median);
    std::fflush(stdout);
    return median;
  }
  std::printf("[ measure ] %s: median %.2f ms (min %.2f, max %.2f; %zu rounds)\n", what.c_str(),
              median, samples_ms.front(), samples_ms.back(), samples_ms.size());
  std::fflush(stdout);
  return median;
}

// ---- The cluster ------------------------------------------------------------

struct cluster_env {
  std::string a, b, ctl, state, iplock, python;
};

std::string env_or_empty(const char *name) {
  const char *value = getenv(name);
  return value ? value : "";
}

const cluster_env &cluster() {
  static const cluster_env env{env_or_empty("IPL_CLUSTER_A"), env_or_empty("IPL_CLUSTER_B"),
                               env_or_empty("IPL_CLUSTER_CTL"), env_or_empty("IPL_CLUSTER_STATE"),
                               env_or_empty("IPL_IPLOCK"), env_or_empty("IPL_FASTENERS_PYTHON")};
  return env;
}

// These tests only make sense on the two mounts; without them they fail
// (scripts/test-cluster is the way to run them).
#define IPL_REQUIRE_CLUSTER()                                                            \
  do {                                                                                   \
    if (cluster().a.empty() || cluster().b.empty() || cluster().ctl.empty())             \
      FAIL() << "run through scripts/test-cluster (IPL_CLUSTER_A/B/CTL/STATE not set)"; \
  } while (0)

// One lock file, created through A, named through both mounts.
struct shared_file {
  std::string a;  // the path through mount A
  std::string b;  // the same file through mount B
};

shared_file make_shared_file(const std::string &name = "lock") {
  static std::atomic<int> counter{0};
  const testing::TestInfo *info = testing::UnitTest::GetInstance()->current_test_info();
  std::string folder = std::string(info->test_suite_name()) + "." + info->name() + "-" +
                       std::to_string(getpid()) + "-" + std::to_string(counter++);
  std::replace(folder.begin(), folder.end(), '/', '_');
  shared_file file{cluster().a + "/" + folder + "/" + name, cluster().b + "/" + folder + "/" + name};
  EXPECT_EQ(mkdir((cluster().a + "/" + folder).c_str(), 0755), 0) << strerror(errno);
  // Created once, through A, before any peer opens it: two clients creating
  // one new file at once is what ClusterOpen tests, not every test.
  const int fd = open(file.a.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  EXPECT_GE(fd, 0) << file.a << ": " << strerror(errno);
  if (fd >= 0) close(fd);
  return file;
}

// Runs `scripts/test-cluster ctl STATE ACTION...`. True when it exited 0.
bool cluster_ctl(const std::vector<std::string> &action, std::chrono::milliseconds bound = 60s) {
  std::vector<std::string> argv{"bash", cluster().ctl, "ctl", cluster().state};
  argv.insert(argv.end(), action.begin(), action.end());
  child_process ctl = child_process::program(argv);
  std::string line;
  while (ctl.read_line(&line, bound)) {
  }
  const int status = describe_status(ctl.wait(bound));
  EXPECT_EQ(status, 0) << "ctl " << action[0] << " exited " << status;
  return status == 0;
}

// Waits until `path`'s folder can be used through its mount again (after a
// brick restart or a cut link, an open fails with ENOTCONN until the client
// has reconnected). Returns the time that took, or -1 after `bound`.
double wait_until_usable(const std::string &probe_path, std::chrono::milliseconds bound = 30s) {
  const int64_t start = monotonic_ns();
  const int64_t deadline = start + int64_t(bound.count()) * 1000000;
  while (monotonic_ns() < deadline) {
    const int fd = open(probe_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
      struct stat st {};
      const int stat_rc = fstat(fd, &st);
      close(fd);
      if (stat_rc == 0) return ms_between(start, monotonic_ns());
    }
    std::this_thread::sleep_for(50ms);
  }
  return -1;
}

// Undoes an outage when the test ends, however it ends.
class outage_guard {
 public:
  ~outage_guard() {
    if (link_cut_) cluster_ctl({"link-up"});
    if (brick_killed_) cluster_ctl({"brick-start"});
  }
  bool kill_brick() {
    brick_killed_ = true;
    return cluster_ctl({"brick-kill"});
  }
  bool start_brick() {
    const bool ok = cluster_ctl({"brick-start"});
    if (ok) brick_killed_ = false;
    return ok;
  }
  bool cut_link() {
    link_cut_ = true;
    return cluster_ctl({"link-down"});
  }
  bool restore_link() {
    const bool ok = cluster_ctl({"link-up"});
    if (ok) link_cut_ = false;
    return ok;
  }

 private:
  bool brick_killed_ = false;
  bool link_cut_ = false;
};

// ---- cluster_peer: one libipl handle in a process of its own ----------------

int64_t elapsed_us_since(int64_t start_ns) { return (monotonic_ns() - start_ns) / 1000; }

void peer_say(int status, int64_t at_ns, int64_t elapsed_us, int os_error) {
  helper_say("rc " + std::to_string(status) + " " + std::to_string(at_ns) + " " +
             std::to_string(elapsed_us) + " " + std::to_string(os_error));
}

// args: PATH. Opens a handle on PATH and says "opened" (or "open-failed
// STATUS ERRNO"), then obeys one command per line, each answered with
// "rc STATUS T_NS ELAPSED_US OS_ERROR":
//   acquire MODE TIMEOUT_MS   T: just after the call returned
//   release MODE              T: just before the call
//   check                     ipl_check (IPL_E_UNSUPPORTED when the library lacks it)
//   close                     ipl_close (the process lives on; T: before)
//   exit, or EOF              ends the helper
IPL_TEST_HELPER(cluster_peer) {
  if (args.size() != 1) return 2;
  ipl_lock *lock = nullptr;
  int os_error = 0;
  const int opened = ipl_open_ex(args[0].c_str(), 0, &lock, &os_error);
  if (opened != IPL_OK) {
    helper_say("open-failed " + std::to_string(opened) + " " + std::to_string(os_error));
    return 3;
  }
  helper_say("opened");
  std::string line;
  // A peer may sit holding a lock through a long outage: a bound well
  // above any test's, so a test that went away still ends it.
  while (helper_hear(&line, 120s)) {
    std::istringstream words(line);
    std::string verb;
    std::string mode_word;
    int64_t timeout_ms = 0;
    lock_mode mode = lock_mode::exclusive;
    words >> verb;
    if (verb == "exit") break;
    const int64_t start = monotonic_ns();
    if (verb == "close") {
      ipl_close(lock);
      lock = nullptr;
      peer_say(IPL_OK, start, 0, 0);
    } else if (verb == "check") {
#ifdef IPL_E_LOST
      const int status = ipl_check(lock);
#else
      const int status = IPL_E_UNSUPPORTED;
#endif
      peer_say(status, monotonic_ns(), elapsed_us_since(start), ipl_os_error(lock));
    } else if (verb == "acquire" && (words >> mode_word >> timeout_ms) &&
               mode_from_name(mode_word, &mode)) {
      const int status = acquire_in_mode(lock, mode, timeout_ms);
      peer_say(status, monotonic_ns(), elapsed_us_since(start), ipl_os_error(lock));
    } else if (verb == "release" && (words >> mode_word) && mode_from_name(mode_word, &mode)) {
      const int status = release_in_mode(lock, mode);
      peer_say(status, start, elapsed_us_since(start), ipl_os_error(lock));
    } else {
      helper_say("bad command: " + line);
    }
  }
  ipl_close(lock);
  return 0;
}

struct peer_reply {
  int status = kNoReply;
  int64_t at_ns = 0;       // see the helper's commands
  int64_t elapsed_us = 0;  // how long the call took, measured in the peer
  int os_error = 0;
};

class peer {
 public:
  explicit peer(const std::string &path, const std::string &helper = "cluster_peer")
      : child_(child_process::helper(helper, {path})) {}

  // The open's answer ("opened"); false (and a test failure) otherwise.
  bool started() {
    std::string line;
    if (child_.read_line(&line) && line == "opened") return true;
    ADD_FAILURE() << "peer did not open its lock file: " << line;
    return false;
  }
  peer_reply acquire(lock_mode mode, int64_t timeout_ms, std::chrono::milliseconds bound = kBound) {
    start_acquire(mode, timeout_ms);
    return reply(bound);
  }
  void start_acquire(lock_mode mode, int64_t timeout_ms) {
    child_.write_line(std::string("acquire ") + mode_name(mode) + " " + std::to_string(timeout_ms));
  }
  peer_reply release(lock_mode mode) {
    child_.write_line(std::string("release ") + mode_name(mode));
    return reply();
  }
  peer_reply check(std::chrono::milliseconds bound = kBound) {
    child_.write_line("check");
    return reply(bound);
  }
  peer_reply close_handle() {
    child_.write_line("close");
    return reply();
  }
  peer_reply reply(std::chrono::milliseconds bound = kBound) {
    peer_reply got;
    std::string line;
    if (!child_.read_line(&line, bound)) return got;
    std::istringstream words(line);
    std::string rc;
    if (!(words >> rc >> got.status >> got.at_ns >> got.elapsed_us >> got.os_error) || rc != "rc") {
      ADD_FAILURE() << "peer said: " << line;
      got.status = kNoReply;
    }
    return got;
  }
  void send(const std::string &line) { child_.write_line(line); }
  bool silent_for(std::chrono::milliseconds window) { return child_.silent_for(window); }
  void kill_now() { child_.send_signal(SIGKILL); }
  int wait(std::chrono::milliseconds bound = kBound) { return child_.wait(bound); }

 private:
  child_process child_;
};

std::string describe(const peer_reply &reply) {
  if (reply.status == kNoReply) return "no reply";
  std::string text = status_text(reply.status);
  if (reply.os_error != 0) text += std::string(", errno ") + strerrorname_np(reply.os_error);
  return text;
}

// ---- cluster_raw: the kernel floor, one OFD lock on a raw descriptor ---------

// args: PATH. Says "opened", then: "lock" (F_OFD_SETLKW, exclusive) and
// "unlock", each answered "rc ERRNO T_NS 0 0" (T: after a lock, before an
// unlock).
IPL_TEST_HELPER(cluster_raw) {
  if (args.size() != 1) return 2;
  const int fd = open(args[0].c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    helper_say("open-failed " + std::to_string(errno));
    return 3;
  }
  helper_say("opened");
  std::string line;
  while (helper_hear(&line, 120s)) {
    struct flock region {};
    region.l_whence = SEEK_SET;
    if (line == "lock") {
      region.l_type = F_WRLCK;
      int rc;
      do rc = fcntl(fd, F_OFD_SETLKW, &region);
      while (rc != 0 && errno == EINTR);
      const int err = rc == 0 ? 0 : errno;
      peer_say(err, monotonic_ns(), 0, 0);
    } else if (line == "unlock") {
      region.l_type = F_UNLCK;
      const int64_t at = monotonic_ns();
      const int err = fcntl(fd, F_OFD_SETLK, &region) == 0 ? 0 : errno;
      peer_say(err, at, 0, 0);
    } else {
      break;
    }
  }
  close(fd);
  return 0;
}

// Says "held" and waits for one line (or EOF): the command iplock runs.
IPL_TEST_HELPER(cluster_hold) {
  (void)args;
  helper_say("held");
  std::string line;
  helper_hear(&line, 60s);
  return 0;
}

// args: FOLDER COUNT. Says "ready", waits for "go", then opens (creating)
// FOLDER/f0 .. f<COUNT-1> with ipl_open, closing each, and says
// "done FAILURES" plus one line per failure.
IPL_TEST_HELPER(cluster_opener) {
  if (args.size() != 2) return 2;
  const int count = std::atoi(args[1].c_str());
  helper_say("ready");
  std::string line;
  if (!helper_hear(&line) || line != "go") return 3;
  std::vector<std::string> failures;
  for (int i = 0; i < count; ++i) {
    const std::string path = args[0] + "/f" + std::to_string(i);
    ipl_lock *lock = nullptr;
    int os_error = 0;
    const int status = ipl_open_ex(path.c_str(), 0, &lock, &os_error);
    if (status != IPL_OK) {
      failures.push_back(path + ": " + status_text(status) + " errno " + std::to_string(os_error));
    }
    ipl_close(lock);
  }
  helper_say("done " + std::to_string(failures.size()));
  for (const std::string &failure : failures) helper_say(failure);
  return 0;
}

// args: PATH THREADS ROUNDS TIMEOUT_MS. Says "ready", waits for "go", then
// runs THREADS threads at once, each with its own handle on PATH making
// ROUNDS exclusive timed waits of TIMEOUT_MS (the lock is held elsewhere).
// Says "done BAD WORST_MS": the waits that did not time out on time, and
// the longest wait; then one line per bad wait.
IPL_TEST_HELPER(cluster_timed_waiters) {
  if (args.size() != 4) return 2;
  const int threads = std::atoi(args[1].c_str());
  const int rounds = std::atoi(args[2].c_str());
  const int64_t timeout_ms = std::atoll(args[3].c_str());
  helper_say("ready");
  std::string line;
  if (!helper_hear(&line) || line != "go") return 3;
  std::mutex mutex;
  std::vector<std::string> bad;
  double worst_ms = 0;
  std::atomic<int> waiting{threads};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      ipl_lock *lock = nullptr;
      const int opened = ipl_open(args[0].c_str(), 0, &lock);
      // All threads start their waits together, so their deadlines coincide.
      waiting.fetch_sub(1);
      while (waiting.load() > 0) std::this_thread::yield();
      for (int round = 0; round < rounds && opened == IPL_OK; ++round) {
        const int64_t start = monotonic_ns();
        const int status = ipl_acquire(lock, timeout_ms);
        const double took_ms = ms_between(start, monotonic_ns());
        std::lock_guard<std::mutex> guard(mutex);
        worst_ms = std::max(worst_ms, took_ms);
        if (status != IPL_E_TIMEOUT || took_ms < double(timeout_ms) ||
            took_ms > double(timeout_ms) + 500) {
          bad.push_back("thread " + std::to_string(t) + " round " + std::to_string(round) + ": " +
                        status_text(status) + " after " + std::to_string(took_ms) + " ms");
        }
      }
      if (opened != IPL_OK) {
        std::lock_guard<std::mutex> guard(mutex);
        bad.push_back("thread " + std::to_string(t) + ": ipl_open " + status_text(opened));
      }
      ipl_close(lock);
    });
  }
  for (std::thread &worker : workers) worker.join();
  helper_say("done " + std::to_string(bad.size()) + " " + std::to_string(int64_t(worst_ms)));
  for (const std::string &text : bad) helper_say(text);
  return 0;
}

// ---- Conflicts across the two mounts -----------------------------------------

// Catches locks that stay on one client (a file system or FUSE setup that
// grants fcntl locks locally, as sshfs does), a shared lock taken as
// exclusive (shared+shared would conflict) or an exclusive one as shared,
// and a release that does not reach the server. Both directions.
TEST(ClusterConflict, EveryModePairAcrossMounts) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  for (const bool holder_on_a : {true, false}) {
    peer holder(holder_on_a ? file.a : file.b);
    peer other(holder_on_a ? file.b : file.a);
    ASSERT_TRUE(holder.started());
    ASSERT_TRUE(other.started());
    for (const lock_mode held : kAllModes) {
      for (const lock_mode wanted : kAllModes) {
        SCOPED_TRACE(std::string(holder_on_a ? "A holds " : "B holds ") + mode_name(held) +
                     ", the other mount wants " + mode_name(wanted));
        ASSERT_EQ(holder.acquire(held, 0).status, IPL_OK);
        const peer_reply got = other.acquire(wanted, 0);
        if (modes_conflict(held, wanted)) {
          EXPECT_EQ(got.status, IPL_E_TIMEOUT) << describe(got);
        } else {
          EXPECT_EQ(got.status, IPL_OK) << describe(got);
          if (got.status == IPL_OK) {
            EXPECT_EQ(other.release(wanted).status, IPL_OK);
          }
        }
        ASSERT_EQ(holder.release(held).status, IPL_OK);
        // Released: the other mount gets it now, in either mode.
        const peer_reply after = other.acquire(wanted, 0);
        EXPECT_EQ(after.status, IPL_OK) << "after the release: " << describe(after);
        if (after.status == IPL_OK) {
          EXPECT_EQ(other.release(wanted).status, IPL_OK);
        }
      }
    }
  }
}

// Catches a close that leaves the lock on the server (the descriptor of a
// closed handle kept, or a release that was never sent).
TEST(ClusterConflict, CloseOnOneMountFreesTheLockForTheOther) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer holder(file.a);
  peer other(file.b);
  ASSERT_TRUE(holder.started());
  ASSERT_TRUE(other.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0).status, IPL_OK);
  EXPECT_EQ(other.acquire(lock_mode::shared, 0).status, IPL_E_TIMEOUT);
  ASSERT_EQ(holder.close_handle().status, IPL_OK);
  EXPECT_EQ(other.acquire(lock_mode::shared, 0).status, IPL_OK);
}

// Catches a library that admits several readers on one mount only because
// they share a client, and a reader that blocks writers on its own mount but
// not on the other one.
TEST(ClusterConflict, ReadersOnBothMountsShareAndBlockWritersOnBoth) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer reader_a(file.a);
  peer reader_b(file.b);
  peer writer_a(file.a);
  peer writer_b(file.b);
  for (peer *p : {&reader_a, &reader_b, &writer_a, &writer_b}) ASSERT_TRUE(p->started());
  ASSERT_EQ(reader_a.acquire(lock_mode::shared, 0).status, IPL_OK);
  ASSERT_EQ(reader_b.acquire(lock_mode::shared, 0).status, IPL_OK);
  EXPECT_EQ(writer_a.acquire(lock_mode::exclusive, 0).status, IPL_E_TIMEOUT);
  EXPECT_EQ(writer_b.acquire(lock_mode::exclusive, 0).status, IPL_E_TIMEOUT);
  ASSERT_EQ(reader_a.release(lock_mode::shared).status, IPL_OK);
  // B's reader still holds it: writers on both mounts still wait.
  EXPECT_EQ(writer_a.acquire(lock_mode::exclusive, 0).status, IPL_E_TIMEOUT);
  EXPECT_EQ(writer_b.acquire(lock_mode::exclusive, 0).status, IPL_E_TIMEOUT);
  ASSERT_EQ(reader_b.release(lock_mode::shared).status, IPL_OK);
  EXPECT_EQ(writer_a.acquire(lock_mode::exclusive, 0).status, IPL_OK);
}

// ---- Try, timed and forever waits across the mounts ---------------------------

// Catches a timed wait across hosts that overruns its deadline (a back-off
// that sleeps past it, a lock call that nothing ends), one that ends early,
// and a try that sleeps. ±100 ms, measured inside the waiting process. (A
// single signal-interrupted wait does end on time on GlusterFS; concurrent
// ones are ManyTimedWaitsThroughOneClientEndOnTime's.)
TEST(ClusterWait, TryAndTimedWaitsEndOnTime) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer holder(file.a);
  peer waiter(file.b);
  ASSERT_TRUE(holder.started());
  ASSERT_TRUE(waiter.started());
  for (const lock_mode held : {lock_mode::exclusive, lock_mode::shared}) {
    ASSERT_EQ(holder.acquire(held, 0).status, IPL_OK);
    const lock_mode wanted = held == lock_mode::shared ? lock_mode::exclusive : lock_mode::shared;
    for (const int64_t timeout_ms : {0, 100, 300, 1000}) {
      SCOPED_TRACE(std::string(mode_name(wanted)) + " wait for " + std::to_string(timeout_ms) +
                   " ms while the other mount holds it " + mode_name(held));
      const peer_reply got = waiter.acquire(wanted, timeout_ms);
      EXPECT_EQ(got.status, IPL_E_TIMEOUT) << describe(got);
      const double waited_ms = double(got.elapsed_us) / 1000;
      EXPECT_GE(waited_ms, double(timeout_ms)) << "ended early";
      EXPECT_LT(waited_ms, double(timeout_ms) + 100) << "overran its deadline";
      if (timeout_ms == 300) {
        report(std::string("timed wait of 300 ms across mounts (") + mode_name(wanted) + "), took",
               {waited_ms});
      }
    }
    ASSERT_EQ(holder.release(held).status, IPL_OK);
  }
}

// Catches a waiter that misses the release on the other mount (polling that
// stops, a wait that only a local unlock wakes) and a wait that gives up or
// returns while the lock is still held.
TEST(ClusterWait, TimedAndForeverWaitersGetTheLockWhenTheOtherMountReleases) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer holder(file.a);
  peer waiter(file.b);
  ASSERT_TRUE(holder.started());
  ASSERT_TRUE(waiter.started());
  for (const int64_t timeout_ms : {int64_t(15000), int64_t(IPL_WAIT_FOREVER)}) {
    SCOPED_TRACE(timeout_ms == IPL_WAIT_FOREVER ? "forever" : "timed");
    ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0).status, IPL_OK);
    waiter.start_acquire(lock_mode::exclusive, timeout_ms);
    EXPECT_TRUE(waiter.silent_for(300ms)) << "the waiter returned while the lock was held";
    const peer_reply released = holder.release(lock_mode::exclusive);
    ASSERT_EQ(released.status, IPL_OK);
    const peer_reply got = waiter.reply();
    ASSERT_EQ(got.status, IPL_OK) << describe(got);
    EXPECT_LT(ms_between(released.at_ns, got.at_ns), 1000) << "slow hand-off";
    // B holds it now: A cannot get it.
    EXPECT_EQ(holder.acquire(lock_mode::shared, 0).status, IPL_E_TIMEOUT);
    ASSERT_EQ(waiter.release(lock_mode::exclusive).status, IPL_OK);
  }
}

// Catches a release that wakes only one of several readers waiting on the
// other mount (each must get its shared lock).
TEST(ClusterWait, EveryReaderWaitingOnTheOtherMountGetsIn) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer writer(file.a);
  ASSERT_TRUE(writer.started());
  ASSERT_EQ(writer.acquire(lock_mode::exclusive, 0).status, IPL_OK);
  std::vector<std::unique_ptr<peer>> readers;
  for (int i = 0; i < 3; ++i) {
    readers.push_back(std::make_unique<peer>(file.b));
    ASSERT_TRUE(readers.back()->started());
    readers.back()->start_acquire(lock_mode::shared, i == 0 ? IPL_WAIT_FOREVER : 15000);
  }
  EXPECT_TRUE(readers.back()->silent_for(300ms));
  ASSERT_EQ(writer.release(lock_mode::exclusive).status, IPL_OK);
  for (auto &reader : readers) {
    const peer_reply got = reader->reply();
    EXPECT_EQ(got.status, IPL_OK) << describe(got);
  }
  EXPECT_EQ(writer.acquire(lock_mode::exclusive, 0).status, IPL_E_TIMEOUT);
}

// Catches timed waits that block in the kernel's lock call and rely on a
// signal to end it on a FUSE file system: several such waits interrupted at
// once through one GlusterFS client can hang that whole mount (upstream
// gluster/glusterfs#4371); libipl must poll there. Runs on a third mount,
// C ($IPL_CLUSTER_C), that nothing else uses, so a hang cannot spread to
// other tests (scripts/test-cluster kills its client on the way out).
TEST(ClusterWait, ManyTimedWaitsThroughOneClientEndOnTime) {
  IPL_REQUIRE_CLUSTER();
  const std::string mount_c = env_or_empty("IPL_CLUSTER_C");
  ASSERT_FALSE(mount_c.empty()) << "IPL_CLUSTER_C is not set";
  const shared_file file = make_shared_file();
  const std::string on_c = mount_c + file.b.substr(cluster().b.size());
  peer holder(file.a);
  ASSERT_TRUE(holder.started());
  ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0).status, IPL_OK);
  child_process waiters = child_process::helper("cluster_timed_waiters", {on_c, "8", "4", "250"});
  ASSERT_TRUE(waiters.expect_line("ready"));
  waiters.write_line("go");
  std::string line;
  ASSERT_TRUE(waiters.read_line(&line, kBound))
      << "8 timed waits through one client did not end within " << kBound.count()
      << " ms: the mount hangs (blocking waits interrupted by signals on FUSE?)";
  EXPECT_EQ(line.compare(0, 7, "done 0 "), 0) << line;
  while (line.compare(0, 7, "done 0 ") != 0 && waiters.read_line(&line, 1s)) ADD_FAILURE() << line;
  EXPECT_EQ(holder.release(lock_mode::exclusive).status, IPL_OK);
}

// ---- Crash release and hand-off, measured --------------------------------------

// Catches a lock that outlives its holder's death on the other mount (a
// descriptor kept open elsewhere, a server that keeps the lock of a client
// process that died). Reports the time from SIGKILL to the waiter's grant.
TEST(ClusterCrash, KilledHolderOnAFreesTheLockForAWaiterOnB) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  peer waiter(file.b);
  ASSERT_TRUE(waiter.started());
  std::vector<double> release_ms;
  for (int round = 0; round < 7; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const lock_mode held = round % 2 == 0 ? lock_mode::exclusive : lock_mode::shared;
    peer holder(file.a);
    ASSERT_TRUE(holder.started());
    ASSERT_EQ(holder.acquire(held, 0).status, IPL_OK);
    waiter.start_acquire(lock_mode::exclusive, IPL_WAIT_FOREVER);
    ASSERT_TRUE(waiter.silent_for(round == 0 ? 300ms : 50ms)) << "the waiter got a held lock";
    const int64_t killed_at = monotonic_ns();
    holder.kill_now();
    const peer_reply got = waiter.reply();
    ASSERT_EQ(got.status, IPL_OK) << describe(got);
    release_ms.push_back(ms_between(killed_at, got.at_ns));
    EXPECT_LT(release_ms.back(), 5000) << "the dead holder's lock lingered";
    holder.wait();
    ASSERT_EQ(waiter.release(lock_mode::exclusive).status, IPL_OK);
  }
  report("SIGKILL of the holder on A -> waiter on B (libipl forever wait) gets the lock",
         release_ms);
}

// Catches a slow or missed wake-up across mounts; reports the hand-off of a
// forever wait and of a timed wait through libipl (they poll on FUSE), and
// of the kernel's blocking F_OFD_SETLKW on raw descriptors (the floor).
TEST(ClusterHandoff, BlockedWaiterOnBWakesWhenAReleases) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  constexpr int kRounds = 11;
  for (const int64_t timeout_ms : {int64_t(IPL_WAIT_FOREVER), int64_t(15000)}) {
    peer holder(file.a);
    peer waiter(file.b);
    ASSERT_TRUE(holder.started());
    ASSERT_TRUE(waiter.started());
    std::vector<double> handoff_ms;
    for (int round = 0; round < kRounds; ++round) {
      ASSERT_EQ(holder.acquire(lock_mode::exclusive, 0).status, IPL_OK);
      waiter.start_acquire(lock_mode::exclusive, timeout_ms);
      // Let the waiter settle into its wait (its back-off grows meanwhile,
      // as it would in real use).
      ASSERT_TRUE(waiter.silent_for(round == 0 ? 300ms : 100ms));
      const peer_reply released = holder.release(lock_mode::exclusive);
      ASSERT_EQ(released.status, IPL_OK);
      const peer_reply got = waiter.reply();
      ASSERT_EQ(got.status, IPL_OK) << describe(got);
      handoff_ms.push_back(ms_between(released.at_ns, got.at_ns));
      EXPECT_LT(handoff_ms.back(), 1000);
      ASSERT_EQ(waiter.release(lock_mode::exclusive).status, IPL_OK);
    }
    report(timeout_ms == IPL_WAIT_FOREVER
               ? "hand-off A -> B, libipl forever wait"
               : "hand-off A -> B, libipl timed wait",
           handoff_ms);
  }
  // The floor: raw OFD descriptors, blocking F_OFD_SETLKW on B.
  peer holder(file.a, "cluster_raw");
  peer waiter(file.b, "cluster_raw");
  ASSERT_TRUE(holder.started());
  ASSERT_TRUE(waiter.started());
  std::vector<double> raw_ms;
  for (int round = 0; round < kRounds; ++round) {
    holder.send("lock");
    ASSERT_EQ(holder.reply().status, 0);
    waiter.send("lock");
    ASSERT_TRUE(waiter.silent_for(100ms));
    holder.send("unlock");
    const peer_reply released = holder.reply();
    const peer_reply got = waiter.reply();
    ASSERT_EQ(got.status, 0) << strerror(got.status);
    raw_ms.push_back(ms_between(released.at_ns, got.at_ns));
    waiter.send("unlock");
    ASSERT_EQ(waiter.reply().status, 0);
  }
  report("hand-off A -> B, raw F_OFD_SETLKW (the floor)", raw_ms);
}

// ---- iplock on both mounts ----------------------------------------------------

// iplock LOCKFILE <this binary> --ipl-helper cluster_hold: holds the lock
// until the test writes a line.
child_process iplock_holding(const std::vector<std::string> &options, const std::string &path) {
  std::vector<std::string> argv{cluster().iplock};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.insert(argv.end(), {path, self_exe(), "--ipl-helper", "cluster_hold"});
  return child_process::program(argv);
}

// iplock OPTIONS LOCKFILE true: its exit code, and how long it ran.
int iplock_true(const std::vector<std::string> &options, const std::string &path,
                double *took_ms = nullptr) {
  std::vector<std::string> argv{cluster().iplock};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.insert(argv.end(), {path, "true"});
  const int64_t start = monotonic_ns();
  child_process run = child_process::program(argv);
  const int status = describe_status(run.wait());
  if (took_ms) *took_ms = ms_between(start, monotonic_ns());
  return status;
}

// Catches an iplock whose lock the other host does not see (e.g. flock(2),
// which FUSE and network file systems keep per client), a -w that does not
// give up on time there, and a lock that outlives iplock's command.
TEST(ClusterIplock, IplockOnAExcludesIplockOnB) {
  IPL_REQUIRE_CLUSTER();
  ASSERT_FALSE(cluster().iplock.empty()) << "IPL_IPLOCK is not set";
  const shared_file file = make_shared_file();
  {
    child_process holder = iplock_holding({}, file.a);
    std::string line;
    ASSERT_TRUE(holder.read_line(&line)) << "iplock on A did not run its command";
    ASSERT_EQ(line, "held");
    EXPECT_EQ(iplock_true({"-n"}, file.b), 1) << "iplock -n on B got a lock A holds";
    EXPECT_EQ(iplock_true({"-s", "-n"}, file.b), 1) << "iplock -s -n on B got a lock A holds";
    double took_ms = 0;
    EXPECT_EQ(iplock_true({"-w", "0.3"}, file.b, &took_ms), 1);
    EXPECT_GE(took_ms, 300);
    EXPECT_LT(took_ms, 2000);
    holder.write_line("done");
    EXPECT_EQ(describe_status(holder.wait()), 0);
  }
  EXPECT_EQ(iplock_true({"-n"}, file.b), 0) << "the lock outlived iplock on A";
  // Shared on A: shared on B gets in, exclusive on B does not.
  child_process reader = iplock_holding({"-s"}, file.a);
  std::string line;
  ASSERT_TRUE(reader.read_line(&line));
  EXPECT_EQ(iplock_true({"-s", "-n"}, file.b), 0);
  EXPECT_EQ(iplock_true({"-n"}, file.b), 1);
  reader.write_line("done");
  EXPECT_EQ(describe_status(reader.wait()), 0);
}

// ---- fasteners on one mount, libipl on the other --------------------------------

// Python's fasteners (tests/fasteners_peer.py), driven as a lock agent.
lock_agent fasteners_peer(const std::string &path) {
  return lock_agent::program({cluster().python, IPL_TESTS_SOURCE_DIR "/fasteners_peer.py", path},
                             "fasteners peer (" + cluster().python + ")");
}

// Catches a libipl lock that fasteners on another host does not see, or the
// other way round: a different lock kind (flock), a different byte range, or
// OFD locks that the server does not match against classic ones.
TEST(ClusterFasteners, FastenersOnAExcludesLibiplOnB) {
  IPL_REQUIRE_CLUSTER();
  ASSERT_FALSE(cluster().python.empty()) << "IPL_FASTENERS_PYTHON is not set";
  const shared_file file = make_shared_file();
  lock_agent python = fasteners_peer(file.a);
  ASSERT_TRUE(python.started());
  peer libipl(file.b);
  ASSERT_TRUE(libipl.started());
  for (const lock_mode held : kAllModes) {
    for (const lock_mode wanted : kAllModes) {
      SCOPED_TRACE(std::string("fasteners on A holds ") + mode_name(held) + ", libipl on B wants " +
                   mode_name(wanted));
      ASSERT_EQ(python.acquire(held, 0), IPL_OK);
      const bool conflict = held != lock_mode::shared || wanted != lock_mode::shared;
      const peer_reply got = libipl.acquire(wanted, 0);
      EXPECT_EQ(got.status, conflict ? IPL_E_TIMEOUT : IPL_OK) << describe(got);
      if (got.status == IPL_OK) {
        EXPECT_EQ(libipl.release(wanted).status, IPL_OK);
      }
      if (conflict) {
        // A libipl wait on B ends when fasteners on A lets go.
        libipl.start_acquire(wanted, 10000);
        EXPECT_TRUE(libipl.silent_for(100ms));
        ASSERT_EQ(python.release(held), IPL_OK);
        const peer_reply waited = libipl.reply();
        EXPECT_EQ(waited.status, IPL_OK) << describe(waited);
        if (waited.status == IPL_OK) {
          EXPECT_EQ(libipl.release(wanted).status, IPL_OK);
        }
      } else {
        ASSERT_EQ(python.release(held), IPL_OK);
      }
    }
  }
}

TEST(ClusterFasteners, LibiplOnAExcludesFastenersOnB) {
  IPL_REQUIRE_CLUSTER();
  ASSERT_FALSE(cluster().python.empty()) << "IPL_FASTENERS_PYTHON is not set";
  const shared_file file = make_shared_file();
  peer libipl(file.a);
  ASSERT_TRUE(libipl.started());
  lock_agent python = fasteners_peer(file.b);
  ASSERT_TRUE(python.started());
  for (const lock_mode held : kAllModes) {
    for (const lock_mode wanted : kAllModes) {
      SCOPED_TRACE(std::string("libipl on A holds ") + mode_name(held) + ", fasteners on B wants " +
                   mode_name(wanted));
      ASSERT_EQ(libipl.acquire(held, 0).status, IPL_OK);
      const bool conflict = wanted != lock_mode::shared || held != lock_mode::shared;
      const int got = python.acquire(wanted, 0);
      EXPECT_EQ(got, conflict ? IPL_E_TIMEOUT : IPL_OK) << status_text(got);
      if (got == IPL_OK) {
        ASSERT_EQ(python.release(wanted), IPL_OK);
      }
      ASSERT_EQ(libipl.release(held).status, IPL_OK);
      if (conflict) {
        EXPECT_EQ(python.acquire(wanted, 0), IPL_OK) << "after libipl on A released";
        ASSERT_EQ(python.release(wanted), IPL_OK);
      }
    }
  }
}

// ---- Opening one new lock file from both mounts at once --------------------------

// Catches an ipl_open that fails when two clients create the same new lock
// file at the same moment: GlusterFS then answers open(O_CREAT) with EEXIST
// now and then (the create raced with the other client's), which must be
// retried, not reported.
TEST(ClusterOpen, BothMountsCreatingTheSameNewLockFilesAtOnce) {
  IPL_REQUIRE_CLUSTER();
  const shared_file file = make_shared_file();
  const std::string folder_a = file.a.substr(0, file.a.rfind('/'));
  const std::string folder_b = file.b.substr(0, file.b.rfind('/'));
  constexpr int kFiles = 150;
  child_process opener_a = child_process::helper("cluster_opener", {folder_a, std::to_string(kFiles)});
  child_process opener_b = child_process::helper("cluster_opener", {folder_b, std::to_string(kFiles)});
  ASSERT_TRUE(opener_a.expect_line("ready"));
  ASSERT_TRUE(opener_b.expect_line("ready"));
  opener_a.write_line("go");
  opener_b.write_line("go");
  for (child_process *opener : {&opener_a, &opener_b}) {
    std::string line;
    ASSERT_TRUE(opener->read_line(&line, 60s)) << "an opener did not finish";
    EXPECT_EQ(line, "done 0");
    if (line != "done 0") {
      while (opener->read_line(&line, 1s)) ADD_FAILURE() << line;
    }
  }
}

// ---- Lost locks: the brick restarts, the link is cut ------------------------------

#ifdef IPL_E_LOST
constexpr bool kHaveCheck = true;
#else
constexpr bool kHaveCheck = false;
#define IPL_E_LOST (-15)  // the value issue 14 pins, for the tests below
#endif

#define IPL_REQUIRE_CHECK()                                                          \
  do {                                                                               \
    IPL_REQUIRE_CLUSTER();                                                           \
    if (!kHaveCheck) GTEST_SKIP() << "this libipl has no ipl_check() / IPL_E_LOST"; \
  } while (0)

// After the loss the handle holds nothing, and it works again: its next
// acquire reopens the path and is a real lock, seen through the other mount
// (other_path: the same file through it).
void expect_handle_usable_again(peer &lost, const std::string &other_path, lock_mode mode) {
  const peer_reply check = lost.check();
  EXPECT_EQ(check.status, IPL_E_NOT_HELD) << "a lost handle still claims a lock: " << describe(check);
  const peer_reply again = lost.acquire(mode, 20000, 30s);
  ASSERT_EQ(again.status, IPL_OK) << "acquire after the loss: " << describe(again);
  peer other(other_path);
  ASSERT_TRUE(other.started());
  const peer_reply blocked = other.acquire(lock_mode::exclusive, 0);
  EXPECT_EQ(blocked.status, IPL_E_TIMEOUT) << "the re-acquired lock is not seen by the other mount";
  EXPECT_EQ(lost.check().status, IPL_OK);
  EXPECT_EQ(lost.release(mode).status, IPL_OK);
}

// The brick is killed and restarted, with client.strict-locks on: the
// server forgets every lock, and the holders' descriptors fail with EBADFD
// from then on. Catches an ipl_check() that answers from the handle's own
// state (OK), a release that reports success for a lock the server dropped,
// a check during the outage that says OK, and a handle left unusable.
TEST(ClusterLost, BrickRestartWithStrictLocksIsReportedAsLost) {
  IPL_REQUIRE_CHECK();
  ASSERT_TRUE(cluster_ctl({"strict-locks", "on"}));
  const shared_file file = make_shared_file();
  const shared_file during = make_shared_file("during");
  peer checker(file.a);   // ipl_check after the restart
  peer releaser(file.a);  // ipl_release_read after the restart
  peer early(during.a);   // ipl_check while the brick is down
  for (peer *p : {&checker, &releaser, &early}) ASSERT_TRUE(p->started());
  ASSERT_EQ(checker.acquire(lock_mode::shared, 0).status, IPL_OK);
  ASSERT_EQ(releaser.acquire(lock_mode::shared, 0).status, IPL_OK);
  ASSERT_EQ(early.acquire(lock_mode::exclusive, 0).status, IPL_OK);
  ASSERT_EQ(checker.check().status, IPL_OK) << "ipl_check before any outage";

  outage_guard outage;
  ASSERT_TRUE(outage.kill_brick());
  const peer_reply down = early.check();
  EXPECT_EQ(down.status, IPL_E_LOST) << "ipl_check while the brick is down: " << describe(down);
  const int64_t restarted_at = monotonic_ns();
  ASSERT_TRUE(outage.start_brick());
  ASSERT_GE(wait_until_usable(file.b + ".probe"), 0) << "mount B did not come back";

  // The lock is free on the server: B gets it.
  peer other(file.b);
  ASSERT_TRUE(other.started());
  const peer_reply taken = other.acquire(lock_mode::exclusive, 20000, 30s);
  ASSERT_EQ(taken.status, IPL_OK) << "B never got the lost lock: " << describe(taken);
  report("brick restart -> the lost lock granted through B", {ms_between(restarted_at, taken.at_ns)});

  const peer_reply checked = checker.check();
  EXPECT_EQ(checked.status, IPL_E_LOST) << "ipl_check after the restart: " << describe(checked);
  const peer_reply released = releaser.release(lock_mode::shared);
  EXPECT_EQ(released.status, IPL_E_LOST) << "ipl_release_read after the restart: " << describe(released);
  EXPECT_EQ(releaser.check().status, IPL_E_NOT_HELD);
  ASSERT_EQ(other.release(lock_mode::exclusive).status, IPL_OK);
  expect_handle_usable_again(checker, file.b, lock_mode::shared);
  expect_handle_usable_again(early, during.b, lock_mode::exclusive);
}

// The same without client.strict-locks: the client reopens the holders'
// descriptors after the restart and nothing is reported by the OS. What a
// check can still promise: IPL_OK means the lock is held now (the other
// mount cannot get it); IPL_E_LOST means the handle holds nothing. Catches
// an ipl_check() that says OK while another host holds the lock, and one
// that says OK for a lock nobody holds.
TEST(ClusterLost, BrickRestartWithoutStrictLocksCheckTellsTheTruth) {
  IPL_REQUIRE_CHECK();
  ASSERT_TRUE(cluster_ctl({"strict-locks", "off"}));
  const shared_file taken_file = make_shared_file();
  const shared_file free_file = make_shared_file();
  peer loser(taken_file.a);  // its lock is taken by B after the restart
  peer keeper(free_file.a);  // nobody touches its file
  for (peer *p : {&loser, &keeper}) ASSERT_TRUE(p->started());
  ASSERT_EQ(loser.acquire(lock_mode::exclusive, 0).status, IPL_OK);
  ASSERT_EQ(keeper.acquire(lock_mode::exclusive, 0).status, IPL_OK);

  outage_guard outage;
  ASSERT_TRUE(outage.kill_brick());
  ASSERT_TRUE(outage.start_brick());
  ASSERT_GE(wait_until_usable(taken_file.b + ".probe"), 0) << "mount B did not come back";
  ASSERT_GE(wait_until_usable(taken_file.a + ".probe"), 0) << "mount A did not come back";

  peer other(taken_file.b);
  ASSERT_TRUE(other.started());
  const peer_reply taken = other.acquire(lock_mode::exclusive, 20000, 30s);
  ASSERT_EQ(taken.status, IPL_OK) << "B never got the lost lock: " << describe(taken);
  const peer_reply checked = loser.check();
  EXPECT_EQ(checked.status, IPL_E_LOST) << "ipl_check while B holds the lock: " << describe(checked);
  ASSERT_EQ(other.release(lock_mode::exclusive).status, IPL_OK);

  // Nobody took the other lock: whatever ipl_check answers must be true.
  const peer_reply kept = keeper.check();
  peer prober(free_file.b);
  ASSERT_TRUE(prober.started());
  const peer_reply probe = prober.acquire(lock_mode::exclusive, 0);
  if (kept.status == IPL_OK) {
    EXPECT_EQ(probe.status, IPL_E_TIMEOUT) << "ipl_check said OK, yet B got the lock";
    std::printf("[ measure ] strict-locks off, lost lock nobody took: ipl_check says OK and holds it again\n");
  } else {
    EXPECT_EQ(kept.status, IPL_E_LOST) << describe(kept);
    EXPECT_EQ(probe.status, IPL_OK) << "ipl_check said LOST, yet the lock is held: " << describe(probe);
    std::printf("[ measure ] strict-locks off, lost lock nobody took: ipl_check says LOST\n");
  }
  if (probe.status == IPL_OK) prober.release(lock_mode::exclusive);
  ASSERT_TRUE(cluster_ctl({"strict-locks", "on"}));
}

// A's link to the server is cut (client.strict-locks on): the server gives
// A's lock away once it has given up on A's connection; A's client notices
// when its ping times out, and the descriptors fail from then on, also after
// the link is back. Catches an ipl_check() or release that answers OK for a
// lock the server gave to another host, and reports how long each side
// takes (the window in which both believe they hold it).
TEST(ClusterLost, CutLinkIsReportedAsLost) {
  IPL_REQUIRE_CHECK();
  ASSERT_TRUE(cluster_ctl({"strict-locks", "on"}));
  const shared_file file = make_shared_file();
  peer checker(file.a);
  peer releaser(file.a);
  peer other(file.b);
  for (peer *p : {&checker, &releaser, &other}) ASSERT_TRUE(p->started());
  ASSERT_EQ(checker.acquire(lock_mode::shared, 0).status, IPL_OK);
  ASSERT_EQ(releaser.acquire(lock_mode::shared, 0).status, IPL_OK);
  other.start_acquire(lock_mode::exclusive, IPL_WAIT_FOREVER);
  ASSERT_TRUE(other.silent_for(200ms));

  outage_guard outage;
  const int64_t cut_at = monotonic_ns();
  ASSERT_TRUE(outage.cut_link());
  // A's check goes to the server and hangs until A's client gives up on it
  // (network.ping-timeout, 5 s here, 42 s by default).
  const peer_reply checked = checker.check(90s);
  EXPECT_EQ(checked.status, IPL_E_LOST) << "ipl_check with the link cut: " << describe(checked);
  const peer_reply granted = other.reply(90s);
  ASSERT_EQ(granted.status, IPL_OK) << "B never got the partitioned lock: " << describe(granted);
  const peer_reply released = releaser.release(lock_mode::shared);
  EXPECT_EQ(released.status, IPL_E_LOST) << "ipl_release_read with the link cut: " << describe(released);
  report("link cut -> B gets A's lock", {ms_between(cut_at, granted.at_ns)});
  report("link cut -> ipl_check on A reports the loss", {ms_between(cut_at, checked.at_ns)});

  ASSERT_TRUE(outage.restore_link());
  ASSERT_GE(wait_until_usable(file.a + ".probe", 60s), 0) << "mount A did not come back";
  EXPECT_EQ(checker.check().status, IPL_E_NOT_HELD);
  ASSERT_EQ(other.release(lock_mode::exclusive).status, IPL_OK);
  expect_handle_usable_again(checker, file.b, lock_mode::shared);
}

}  // namespace

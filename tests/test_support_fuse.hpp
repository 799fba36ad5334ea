// SPDX-License-Identifier: MIT
// Test support: a lockfs FUSE filesystem (tests/fuse/lockfs.c) mounted in a
// temporary folder for one test, to reproduce filesystems whose blocking
// lock call a signal cannot end (FUSE, NFS, CIFS), or a FUSE filesystem
// that leaves locks to the kernel.
//
//   TEST(FuseExample, TimedWaitEndsOnTime) {
//     IPL_REQUIRE_FUSE();                       // skip only when not built
//     ipltest::fuse_mount fs;                   // default: uninterruptible
//     ASSERT_TRUE(fs.ok()) << fs.error();       // a broken FUSE setup fails
//     const std::string path = fs.path("a.lock");
//     ...                                       // lock files under fs.root()
//   }                                           // unmounted, daemon reaped
//
// Linux only. Where lockfs comes from: $IPL_LOCKFS (meson test sets it),
// else the path meson compiled in (IPL_LOCKFS_PATH). When neither is set the
// build has no FUSE tests (-Dfuse_tests=disabled, or auto without libfuse3):
// IPL_REQUIRE_FUSE() then skips with that reason. In every other case a
// FUSE problem is a test failure, never a skip: no /dev/fuse (fs.error()
// says so, with what to do: load the fuse module, or give a container
// --device /dev/fuse --cap-add SYS_ADMIN), no right to mount, a daemon that
// does not start, exits early or does not come up within the bound.
//
// Every wait is bounded: the mount comes up within 10 s, a blocking call on
// the mount made by the harness (statfs, reading the status file) is given
// 10 s, and at the end the daemon must exit within 10 s of the unmount or is
// killed by its PID (SIGTERM, then SIGKILL), which ends every request still
// pending on the mount. The harness never signals any other process.
//
// Keep the fuse_mount on the test's own (main) thread: the daemon gets
// SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG), so a test
// binary that crashes leaves no daemon behind.
#ifndef IPL_TESTS_TEST_SUPPORT_FUSE_HPP
#define IPL_TESTS_TEST_SUPPORT_FUSE_HPP

#include <sys/types.h>

#include <chrono>
#include <string>

#include "test_support.hpp"

namespace ipltest {

// How lockfs treats locks (its --locks option).
enum class lockfs_locks {
  // The daemon grants locks and ignores FUSE_INTERRUPT: a signal does not
  // end a blocked F_SETLKW / F_OFD_SETLKW (SIGKILL does, within ~100 ms).
  uninterruptible,
  // The daemon grants locks and answers FUSE_INTERRUPT with EINTR.
  interruptible,
  // No lock operations: the kernel keeps the locks locally, as on a FUSE
  // filesystem without lock support (they still exclude on this host).
  none,
  // Lock operations that fail: every lock call and F_GETLK gets ENOLCK.
  refuse,
};
const char *lockfs_locks_name(lockfs_locks locks);

// The lockfs program, or "" when this build has no FUSE tests.
std::string lockfs_program();

#define IPL_REQUIRE_FUSE()                                                               \
  do {                                                                                   \
    if (::ipltest::lockfs_program().empty())                                             \
      GTEST_SKIP() << "FUSE tests are not built (meson -Dfuse_tests=disabled, or auto "  \
                      "without libfuse3-dev); CI configures -Dfuse_tests=enabled";        \
  } while (0)

// FUSE_SUPER_MAGIC: statfs().f_type of every FUSE mount.
constexpr long kFuseSuperMagic = 0x65735546;

class fuse_mount {
 public:
  struct options {
    lockfs_locks locks = lockfs_locks::uninterruptible;
    bool log = true;  // lockfs --log: one line per lock decision, in log()
    std::chrono::milliseconds mount_bound{10000};
    std::chrono::milliseconds unmount_bound{10000};
  };

  explicit fuse_mount(lockfs_locks locks = lockfs_locks::uninterruptible);
  explicit fuse_mount(const options &opts);
  // Unmounts (see unmount()); a daemon that had to be killed, or that exited
  // with an error, is a test failure (ADD_FAILURE with its log), unless the
  // test killed it on purpose with kill_daemon().
  ~fuse_mount();
  fuse_mount(const fuse_mount &) = delete;
  fuse_mount &operator=(const fuse_mount &) = delete;

  // True once the mount is live (statfs gives FUSE_SUPER_MAGIC and the
  // status file shows the asked-for mode); else error() says why.
  bool ok() const { return mounted_; }
  const std::string &error() const { return error_; }

  const std::string &root() const { return mount_point_; }
  std::string path(const std::string &name) const { return mount_point_ + "/" + name; }
  pid_t daemon_pid() const { return pid_; }
  lockfs_locks locks() const { return opts_.locks; }

  // The daemon's state: the text of <root>/.lockfs ("mode ...", counters,
  // one "lock ..." line per held lock, one "waiter ..." line per blocked
  // request), or "" when it cannot be read within the bound.
  std::string status() const;
  // One "key value" counter of status() (e.g. "setlkw", "waiters",
  // "interrupts", "locks"); -1 when missing.
  long status_value(const std::string &key) const;
  // Waits (bounded) until status_value(key) >= at_least.
  bool wait_status(const std::string &key, long at_least,
                   std::chrono::milliseconds bound = std::chrono::milliseconds(5000)) const;
  // What the daemon wrote to stderr so far (its --log lines).
  std::string log() const;

  // Unmounts and reaps the daemon within the bound (umount2, or fusermount3
  // -u when not root; lazily when the mount is busy, which also counts as
  // unclean: something still had a file open). True when the daemon exited
  // by itself with status 0. Idempotent; the destructor calls it.
  bool unmount();
  // SIGKILLs the daemon now and reaps it: the mount stays but every call on
  // it fails (ENOTCONN), and requests pending in the daemon end (a blocked
  // lock call gets an error). For lost-server tests; not a failure.
  void kill_daemon();

  // Last resort: SIGKILLs (by PID) every lockfs daemon this process started
  // that still runs, so that any process stuck in uninterruptible sleep on
  // one of their mounts wakes up. Returns how many it killed. Those mounts
  // then fail their tests when torn down.
  static int kill_all_daemons();

 private:
  void start();
  bool reap(std::chrono::milliseconds bound);
  void detach_mount();

  options opts_;
  temp_dir dir_;
  std::string mount_point_;
  std::string log_path_;
  pid_t pid_ = -1;
  int exit_status_ = -1;  // raw waitpid status once reaped
  bool mounted_ = false;
  bool attached_ = false;  // the kernel mount exists (until unmounted)
  bool killed_on_purpose_ = false;
  std::string error_;
  std::string unclean_;  // why the teardown was not clean
};

// SIGKILLs a child and reaps it, bounded: a process blocked in a lock call
// on lockfs may sit in uninterruptible sleep, where SIGKILL alone does not
// end it (child_process::wait and its destructor then wait forever). After
// `bound` without an exit, kill_all_daemons() frees it. The raw wait status,
// or -1.
int kill_and_reap(child_process &child,
                  std::chrono::milliseconds bound = std::chrono::milliseconds(5000));
// True when process `pid` has exited (a zombie not reaped yet, or gone)
// within `bound`; never reaps it.
bool exits_within(pid_t pid, std::chrono::milliseconds bound);

}  // namespace ipltest

#endif  // IPL_TESTS_TEST_SUPPORT_FUSE_HPP

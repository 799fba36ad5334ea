// SPDX-License-Identifier: MIT
// bench_support: what every figure of ipl_bench shares — clocks, statistics,
// helper processes, shared memory, and the locks under test (libipl beside
// the raw OFD lock that is the kernel floor).
#ifndef IPL_BENCH_SUPPORT_HPP
#define IPL_BENCH_SUPPORT_HPP

#include <ipl/ipl.h>
#include <sys/mman.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace bench {

constexpr int64_t kUs = 1000;
constexpr int64_t kMs = 1000 * kUs;
constexpr int64_t kSec = 1000 * kMs;

// ---- Clocks ------------------------------------------------------------------
// CLOCK_MONOTONIC: the clock libipl measures timeouts on, and the one Python's
// time.monotonic_ns() reads, so stamps from different processes compare.
int64_t monotonic_ns();
int64_t thread_cpu_ns();
int64_t process_cpu_ns();
// Sleeps at least ns on CLOCK_MONOTONIC, resuming after signals.
void sleep_for_ns(int64_t ns);

// ---- Failure -------------------------------------------------------------------
// Something is broken (not merely slow): says what on stderr and exits 2. In a
// forked helper it uses _exit, leaving the parent's stdio buffers alone.
[[noreturn]] void fail(const char *format, ...) __attribute__((format(printf, 1, 2)));

// ---- Statistics ------------------------------------------------------------------
// The p-th percentile (0..100) by nearest rank; NaN for an empty sample.
double percentile(std::vector<double> values, double p);
inline double median(std::vector<double> values) { return percentile(std::move(values), 50); }

// ---- Processes ---------------------------------------------------------------------
// Runs `body` in a forked child that is killed if this process dies; the
// child exits with body's result.
pid_t fork_child(const std::function<int()> &body);
// Waits at most bound_ns for the child to exit (then kills it and fails);
// fails unless it exited with status 0.
void wait_child(pid_t pid, int64_t bound_ns, const char *what);
// Polls `ready` every ~20 us (sleeping in between, so the other process gets
// the CPU) and fails after bound_ns.
void wait_until(const std::function<bool()> &ready, int64_t bound_ns, const char *what);
// The scheduler state letter of a single-threaded process ('S': asleep,
// 'R': running), '?' when /proc cannot tell.
char process_state(pid_t pid);
// Waits (at most bound_ns) until `pid` is asleep; false if it never was seen
// asleep. Used so that a handoff measures wake-up, not a late arrival.
bool wait_until_asleep(pid_t pid, int64_t bound_ns);

// ---- Shared memory -----------------------------------------------------------------
// A T in anonymous MAP_SHARED memory: created before fork(), the parent and
// its children see the same object. T's atomics must be lock-free.
template <class T>
class shared_object {
 public:
  shared_object() {
    void *memory =
        mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) fail("mmap of %zu shared bytes failed", sizeof(T));
    object_ = new (memory) T();
  }
  ~shared_object() {
    object_->~T();
    munmap(object_, sizeof(T));
  }
  shared_object(const shared_object &) = delete;
  shared_object &operator=(const shared_object &) = delete;

  T *operator->() { return object_; }
  T &operator*() { return *object_; }

 private:
  T *object_;
};

// ---- Locks under test ------------------------------------------------------------
enum class lock_kind {
  raw_ofd,      // fcntl(F_OFD_SETLK / F_OFD_SETLKW): the kernel floor
  ipl_try,      // ipl_acquire(lock, 0)
  ipl_timed,    // ipl_acquire(lock, timed_ms) with a timeout that never expires
  ipl_forever,  // ipl_acquire(lock, IPL_WAIT_FOREVER)
  // ipl_timed with libipl's wait signal turned off in this process
  // (ipl_set_wait_signal(0)): the polling fallback that libipl uses when the
  // application owns every signal.
  ipl_timed_polling,
};
const char *lock_kind_name(lock_kind kind);

// Turns libipl's wait signal off in the calling process (see
// lock_kind::ipl_timed_polling); fails if the library cannot.
void use_polling_timed_waits();
// What libipl's timed waits use in this process: "signal N" or "polling".
std::string timed_wait_mechanism();

// Raw whole-file OFD lock calls, as fasteners' range and types: 0 or errno.
int raw_ofd_lock(int fd, bool wait);
int raw_ofd_unlock(int fd);
// Opens (creating) a file O_RDWR | O_CLOEXEC; fails the benchmark otherwise.
int open_file(const std::string &path);

// One lock owner on the lock file: its own open file description (raw) or its
// own libipl handle. Create it in the process that uses it (after fork), so
// that two contenders never share a description.
class contender {
 public:
  contender(lock_kind kind, const std::string &path, int64_t timed_ms);
  ~contender();
  contender(const contender &) = delete;
  contender &operator=(const contender &) = delete;

  // The kind's exclusive acquire; fails the benchmark unless granted
  // (raw_ofd blocks in F_OFD_SETLKW; ipl_try fails when the lock is busy).
  void lock();
  void unlock();

 private:
  lock_kind kind_;
  int64_t timed_ms_;
  int fd_ = -1;
  ipl_lock *handle_ = nullptr;
};

// Another process holding the exclusive lock (raw OFD) from construction
// until destruction.
class lock_holder {
 public:
  explicit lock_holder(const std::string &path);
  ~lock_holder();
  lock_holder(const lock_holder &) = delete;
  lock_holder &operator=(const lock_holder &) = delete;

 private:
  pid_t pid_ = -1;
  int release_fd_ = -1;  // closing it tells the holder to exit
};

}  // namespace bench

#endif  // IPL_BENCH_SUPPORT_HPP

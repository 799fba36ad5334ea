// posix_fcntl.cpp — the POSIX backend: whole-file fcntl record locks.
//
// What the OS gives
//   fcntl() record locks: F_WRLCK (exclusive) and F_RDLCK (shared) over a
//   byte range; the whole file is l_start = 0, l_len = 0. They are what
//   Python's fasteners takes (fcntl.lockf), so using the same range and types
//   makes libipl and fasteners exclude each other. The kernel drops them when
//   the holder dies.
//
// What it gets wrong
//   Classic ("process-associated") fcntl locks belong to the process, not to
//   a descriptor: two handles in one process never conflict, a second lock
//   request from the same process silently converts the first, and closing
//   ANY descriptor of the file drops ALL the process's locks on it — even a
//   descriptor some unrelated library opened. POSIX advisory locks are broken
//   by design for any program with threads or libraries.
//
// What we do about it
//   Linux (>= 3.15) has open-file-description locks (F_OFD_SETLK/SETLKW):
//   the same lock records, conflicting with classic locks (so fasteners
//   still sees them), but owned by the open file description. Each handle
//   opens its own description, so handles exclude each other like processes,
//   and an unrelated close() drops nothing. That is `ofd_lock_file`.
//
//   Elsewhere (macOS, BSD), and on Linux with -Dposix_locks=classic, we use
//   classic locks and arbitrate inside the process, as SQLite's unix VFS does:
//   an `inode_table` keyed by (st_dev, st_ino) records which handles of this
//   process hold the file shared or exclusive; only the first sharer and the
//   exclusive holder talk to the kernel, and a handle closed while another
//   handle of the process holds a lock on the same inode has its descriptor
//   parked (closing it would drop that lock) until the inode is unlocked.
//   A close() behind the library's back still drops the lock there: no
//   classic-lock design can prevent that.
//
// Common to both
//   - The file is opened O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK and never
//     written or truncated. O_NONBLOCK keeps open() of a FIFO from blocking;
//     a stat() before open() keeps us from opening devices at all (opening
//     some devices has side effects), and an fstat() after open() closes the
//     race with a rename.
//   - Forever waits sleep in the kernel (F_*SETLKW), retried on EINTR so
//     signals never break them. Timed waits sleep there too, ended at the
//     deadline by a per-thread timer signal (linux_wait_signal.cpp); where
//     that signal is not available they poll with capped, jittered
//     back-off. Deadlines are on CLOCK_MONOTONIC.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "platform.hpp"
#include "wait_signal.hpp"

#ifndef IPL_POSIX_USE_OFD
#error "the build defines IPL_POSIX_USE_OFD to 1 (OFD locks) or 0 (classic locks)"
#endif

namespace ipl::detail {
namespace {

// ---- Errors ------------------------------------------------------------------

os_result os_failure(int status, int err) { return os_result{status, err}; }

// Maps an errno from open()/mkdir()/stat() to a named status.
os_result open_failure(int err) {
  switch (err) {
    case EACCES:
    case EPERM:
    case EROFS:
      return os_failure(IPL_E_ACCESS, err);
    case ENAMETOOLONG:
      return os_failure(IPL_E_NAME_TOO_LONG, err);
    case ENOTDIR:
      return os_failure(IPL_E_BAD_PARENT, err);
    case EISDIR:
    case ENXIO:
    case ENODEV:
    case ETXTBSY:
      return os_failure(IPL_E_NOT_REGULAR_FILE, err);
    case ENOMEM:
      return os_failure(IPL_E_NO_MEMORY, err);
    default:
      return os_failure(IPL_E_OS, err);
  }
}

// Maps an errno from a lock operation.
os_result lock_failure(int err) {
  switch (err) {
    case EDEADLK:  // classic locks only: the kernel saw a cycle of waiters
      return os_failure(IPL_E_WOULD_DEADLOCK, err);
    case ENOMEM:
      return os_failure(IPL_E_NO_MEMORY, err);
    default:
      return os_failure(IPL_E_OS, err);
  }
}

// ---- Opening -----------------------------------------------------------------

// Creates the missing parent folders of `path` (mode 0777 minus umask, as
// fasteners' os.makedirs does).
os_result create_parent_dirs(const std::string &path) {
  // Walk each prefix that ends just before a '/', skipping the root.
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    if (path[slash - 1] == '/') continue;  // "a//b"
    const std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0777) == 0) continue;
    const int err = errno;
    if (err != EEXIST) return open_failure(err);
    struct stat st;
    if (stat(prefix.c_str(), &st) != 0) return open_failure(errno);
    if (!S_ISDIR(st.st_mode)) return os_failure(IPL_E_BAD_PARENT, ENOTDIR);
  }
  return {};
}

// Opens `path` as a lock file; on success *fd_out is a regular file.
os_result open_regular_file(const char *path, uint32_t flags, int *fd_out) {
  struct stat st;
  if (stat(path, &st) == 0) {
    if (!S_ISREG(st.st_mode)) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
  } else if (errno != ENOENT) {
    return open_failure(errno);
  }

  const int open_flags = O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
                         ((flags & IPL_OPEN_NO_CREATE) ? 0 : O_CREAT);
  int fd = open(path, open_flags, 0666);
  if (fd < 0 && errno == ENOENT && !(flags & IPL_OPEN_NO_CREATE)) {
    // A parent folder is missing.
    if (flags & IPL_OPEN_NO_CREATE_DIRS) return os_failure(IPL_E_BAD_PARENT, ENOENT);
    const os_result made = create_parent_dirs(path);
    if (made.status != IPL_OK) return made;
    fd = open(path, open_flags, 0666);
  }
  if (fd < 0) return open_failure(errno);

  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return open_failure(err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
  }
  *fd_out = fd;
  return {};
}

// ---- Taking the kernel lock ----------------------------------------------------

struct flock whole_file(short type) {
  struct flock region;
  std::memset(&region, 0, sizeof region);  // l_pid must be 0 for OFD locks
  region.l_type = type;
  region.l_whence = SEEK_SET;
  region.l_start = 0;
  region.l_len = 0;  // to the end of the file, however it grows
  return region;
}

short lock_type(lock_mode mode) { return mode == lock_mode::exclusive ? F_WRLCK : F_RDLCK; }

// The fcntl commands of one lock kind.
struct lock_commands {
  int try_cmd;
  int wait_cmd;
};

bool is_busy(int err) { return err == EAGAIN || err == EACCES; }

// Sleeps until `until` on CLOCK_MONOTONIC; a signal just ends the sleep early
// (the caller re-checks the lock and the deadline).
void sleep_until(wait_deadline::clock::time_point until) {
  const auto since_epoch = until.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  timespec ts;
  ts.tv_sec = time_t(secs.count());
  ts.tv_nsec = long(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
  // steady_clock is CLOCK_MONOTONIC in libstdc++ and libc++.
  clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
}

// Jittered back-off so that many pollers do not wake in lock-step.
class backoff {
 public:
  std::chrono::microseconds next() {
    const auto now = current_;
    current_ = std::min(current_ * 2, kCap);
    std::uniform_int_distribution<long> jitter(now.count() * 3 / 4, now.count() * 5 / 4);
    return std::chrono::microseconds(jitter(random_));
  }

 private:
  static constexpr std::chrono::microseconds kFirst{50};
  static constexpr std::chrono::microseconds kCap{10000};
  std::chrono::microseconds current_ = kFirst;
  std::minstd_rand random_{std::random_device{}()};
};

// Blocks in the kernel until the lock is granted, or until `deadline` when
// one is given (the caller has armed a deadline_interrupt). EINTR from any
// other signal just re-enters the wait.
os_result wait_in_kernel(int fd, int wait_cmd, lock_mode mode, const wait_deadline *deadline) {
  for (;;) {
    struct flock region = whole_file(lock_type(mode));
    if (fcntl(fd, wait_cmd, &region) == 0) return {};
    if (errno != EINTR) return lock_failure(errno);
    if (deadline && deadline->expired()) return os_failure(IPL_E_TIMEOUT, 0);
  }
}

// Tries until `deadline`, sleeping between tries.
os_result poll_until(int fd, int try_cmd, lock_mode mode, const wait_deadline &deadline) {
  backoff delay;
  for (;;) {
    sleep_until(std::min(wait_deadline::clock::now() + delay.next(), deadline.when()));
    struct flock region = whole_file(lock_type(mode));
    if (fcntl(fd, try_cmd, &region) == 0) return {};
    const int err = errno;
    if (err != EINTR && !is_busy(err)) return lock_failure(err);
    if (deadline.expired()) return os_failure(IPL_E_TIMEOUT, 0);
  }
}

os_result set_lock(int fd, lock_commands cmds, lock_mode mode, const wait_deadline &deadline) {
  if (deadline.is_forever()) return wait_in_kernel(fd, cmds.wait_cmd, mode, nullptr);

  // One try first: an uncontended lock needs no timer, and a try never sleeps.
  for (;;) {
    struct flock region = whole_file(lock_type(mode));
    if (fcntl(fd, cmds.try_cmd, &region) == 0) return {};
    const int err = errno;
    if (err == EINTR) continue;
    if (!is_busy(err)) return lock_failure(err);
    break;
  }
  if (deadline.expired()) return os_failure(IPL_E_TIMEOUT, 0);

  const deadline_interrupt interrupt(deadline.when());
  if (interrupt.armed()) return wait_in_kernel(fd, cmds.wait_cmd, mode, &deadline);
  return poll_until(fd, cmds.try_cmd, mode, deadline);
}

os_result clear_lock(int fd, int try_cmd) {
  struct flock region = whole_file(F_UNLCK);
  while (fcntl(fd, try_cmd, &region) != 0) {
    if (errno != EINTR) return lock_failure(errno);
  }
  return {};
}

// ---- Open-file-description locks (Linux) ---------------------------------------
#if IPL_POSIX_USE_OFD

class ofd_lock_file final : public lock_file {
 public:
  explicit ofd_lock_file(int fd) : fd_(fd) {}
  ~ofd_lock_file() override { close(fd_); }  // closing releases an OFD lock

  os_result lock(lock_mode mode, const wait_deadline &deadline) override {
    return set_lock(fd_, lock_commands{F_OFD_SETLK, F_OFD_SETLKW}, mode, deadline);
  }
  os_result unlock() override { return clear_lock(fd_, F_OFD_SETLK); }

 private:
  int fd_;
};

#else
// ---- Classic locks plus the per-process inode table ----------------------------

// What this process holds on one inode, across all its handles.
struct inode_state {
  int handles = 0;            // open handles on this inode
  int shared_holders = 0;     // handles holding it shared
  bool exclusive_held = false;
  bool kernel_busy = false;   // a thread is taking the kernel lock right now
  std::vector<int> parked_fds;  // descriptors of closed handles, see below
  std::condition_variable changed;

  bool unlocked() const { return shared_holders == 0 && !exclusive_held && !kernel_busy; }
};

class inode_table {
 public:
  using key = std::pair<dev_t, ino_t>;

  std::mutex mutex;
  inode_state &join(key k) {
    auto &slot = entries_[k];
    if (!slot) slot = std::make_unique<inode_state>();
    ++slot->handles;
    return *slot;
  }
  void leave(key k) {
    auto found = entries_.find(k);
    if (--found->second->handles == 0) entries_.erase(found);
  }

 private:
  std::map<key, std::unique_ptr<inode_state>> entries_;
};

// Never destroyed: handles may be closed from static destructors.
inode_table &the_inode_table() {
  static inode_table *table = new inode_table;
  return *table;
}

// Closing any descriptor of the inode drops the process's classic locks, so
// parked descriptors are closed only once nothing is locked.
void close_parked_if_unlocked(inode_state &inode) {
  if (!inode.unlocked()) return;
  for (int fd : inode.parked_fds) close(fd);
  inode.parked_fds.clear();
}

class classic_lock_file final : public lock_file {
 public:
  classic_lock_file(int fd, inode_table::key key) : fd_(fd), key_(key) {
    std::lock_guard<std::mutex> guard(table().mutex);
    inode_ = &table().join(key_);
  }

  ~classic_lock_file() override {
    std::lock_guard<std::mutex> guard(table().mutex);
    if (holding_) release_locked();
    if (inode_->unlocked()) {
      close(fd_);
    } else {
      inode_->parked_fds.push_back(fd_);
    }
    if (inode_->handles == 1) close_parked_if_unlocked(*inode_);
    table().leave(key_);
  }

  os_result lock(lock_mode mode, const wait_deadline &deadline) override {
    std::unique_lock<std::mutex> guard(table().mutex);
    for (;;) {
      const bool compatible = mode == lock_mode::shared
                                  ? !inode_->exclusive_held
                                  : !inode_->exclusive_held && inode_->shared_holders == 0;
      if (compatible && !inode_->kernel_busy) {
        if (mode == lock_mode::shared && inode_->shared_holders > 0) {
          // The process already holds the kernel's read lock.
          ++inode_->shared_holders;
          holding_ = true;
          mode_ = mode;
          return {};
        }
        return take_kernel_lock(guard, mode, deadline);
      }
      // Another handle of this process holds a conflicting lock, or is
      // talking to the kernel: wait for it to change its state.
      if (deadline.is_try_once()) return os_failure(IPL_E_TIMEOUT, 0);
      if (deadline.is_forever()) {
        inode_->changed.wait(guard);
      } else if (inode_->changed.wait_until(guard, deadline.when()) == std::cv_status::timeout &&
                 deadline.expired()) {
        return os_failure(IPL_E_TIMEOUT, 0);
      }
    }
  }

  os_result unlock() override {
    std::lock_guard<std::mutex> guard(table().mutex);
    return release_locked();
  }

 private:
  static inode_table &table() { return the_inode_table(); }

  os_result take_kernel_lock(std::unique_lock<std::mutex> &guard, lock_mode mode,
                             const wait_deadline &deadline) {
    inode_->kernel_busy = true;
    guard.unlock();
    const os_result result = set_lock(fd_, lock_commands{F_SETLK, F_SETLKW}, mode, deadline);
    guard.lock();
    inode_->kernel_busy = false;
    if (result.status == IPL_OK) {
      if (mode == lock_mode::shared) {
        inode_->shared_holders = 1;
      } else {
        inode_->exclusive_held = true;
      }
      holding_ = true;
      mode_ = mode;
    } else {
      close_parked_if_unlocked(*inode_);
    }
    inode_->changed.notify_all();
    return result;
  }

  // Called with the table mutex held.
  os_result release_locked() {
    bool last_holder = true;
    if (mode_ == lock_mode::shared) {
      last_holder = --inode_->shared_holders == 0;
    } else {
      inode_->exclusive_held = false;
    }
    holding_ = false;
    os_result result;
    if (last_holder) result = clear_lock(fd_, F_SETLK);
    close_parked_if_unlocked(*inode_);
    inode_->changed.notify_all();
    return result;
  }

  int fd_;
  inode_table::key key_;
  inode_state *inode_ = nullptr;
  bool holding_ = false;
  lock_mode mode_ = lock_mode::shared;
};

#endif  // IPL_POSIX_USE_OFD

}  // namespace

os_result open_lock_file(const char *path, uint32_t flags, std::unique_ptr<lock_file> *out) {
  int fd = -1;
  const os_result opened = open_regular_file(path, flags, &fd);
  if (opened.status != IPL_OK) return opened;
  try {
#if IPL_POSIX_USE_OFD
    *out = std::make_unique<ofd_lock_file>(fd);
#else
    struct stat st;
    if (fstat(fd, &st) != 0) {
      const int err = errno;
      close(fd);
      return open_failure(err);
    }
    *out = std::make_unique<classic_lock_file>(fd, inode_table::key{st.st_dev, st.st_ino});
#endif
  } catch (...) {
    close(fd);  // the lock_file never took ownership
    throw;
  }
  return {};
}

const char *backend_name() { return IPL_POSIX_USE_OFD ? "posix-ofd" : "posix-classic"; }

}  // namespace ipl::detail

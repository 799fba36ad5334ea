// SPDX-License-Identifier: MIT
// posix_fcntl.cpp — what both POSIX backends share: opening the lock file,
// the descriptors libipl owns across fork(), the path identity check, and
// waiting for a whole-file fcntl record lock.
//
// What the OS gives
//   fcntl() record locks: F_WRLCK (exclusive) and F_RDLCK (shared) over a
//   byte range; the whole file is l_start = 0, l_len = 0. They are what
//   Python's fasteners takes (fcntl.lockf), so using the same range and types
//   makes libipl and fasteners exclude each other. The kernel drops them when
//   the holder dies. Two kinds exist, each with its own file:
//   posix_ofd.cpp (Linux open-file-description locks) and posix_classic.cpp
//   (classic process-owned locks plus a per-process inode table).
//
// What it gets wrong, and what we do about it
//   - fork() copies descriptors. An OFD lock belongs to the open file
//     description, which a forked child then shares: the child's unlock
//     would drop the parent's lock, and the child's copy would keep the lock
//     alive after the parent closed it or died. Every descriptor libipl
//     opens is therefore registered, and a pthread_atfork child handler
//     closes the child's copies at once; a process token (kept in a page the
//     kernel zeroes in every child, MADV_WIPEONFORK) lets each handle know
//     it came from the parent, and also catches a fork that ran no atfork
//     handlers (glibc's _Fork) at the child's next libipl call. Opens hold a
//     "fork barrier" (shared) from open() to registration, so no descriptor
//     can slip into a child unregistered.
//   - A lock is taken on a file, but users mean the path. If the file is
//     unlinked or replaced while someone waits, the kernel grants that
//     waiter a lock on a nameless inode while a newcomer locks the new file
//     at the path: two holders. After each grant the core asks
//     still_names(): one stat() of the path against the descriptor's
//     (st_dev, st_ino), which were read once at open.
//   - O_RDWR needs write permission, but a read lock needs only read
//     access: when O_RDWR is denied (EACCES, EPERM, EROFS) the file is
//     opened O_RDONLY and the handle takes shared locks only.
//   - open() returns the lowest free descriptor. In a program started with
//     closed standard streams that is 0, 1 or 2, and the next error message
//     written to "stderr" would land in the lock file. Descriptors below 3
//     are moved up with F_DUPFD_CLOEXEC.
//   - A blocking lock call on FUSE, NFS, CIFS and other network file
//     systems may not be ended by a signal (FUSE waits uninterruptibly once
//     the daemon ignores its interrupt request), so a timed wait there
//     polls instead (linux_wait_signal.cpp decides per file system).
//
// Common to both kinds
//   - The file is opened O_CLOEXEC | O_NOCTTY | O_NONBLOCK and never written
//     or truncated. O_NONBLOCK keeps open() of a FIFO from blocking; a
//     stat() before open() keeps us from opening devices at all (opening
//     some devices has side effects), and an fstat() after open() closes the
//     race with a rename.
//   - A new file is created with O_EXCL and, when the caller chose a mode,
//     given it with fchmod() (the umask stays untouched); losing a creation
//     race to another process (EEXIST) just opens its file.
//   - Forever waits sleep in the kernel (F_*SETLKW), retried on EINTR so
//     signals never break them. Timed waits sleep there too, ended at the
//     deadline by the wait signal (linux_wait_signal.cpp); where that signal
//     cannot be used, or cannot interrupt a lock call on this file system,
//     they poll with capped, jittered back-off. Deadlines are on
//     CLOCK_MONOTONIC.
#include "posix_fcntl.hpp"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "posix_syscalls.hpp"
#include "wait_policy.hpp"
#include "wait_signal.hpp"

namespace ipl::detail {
namespace posix {

// ---- Errors ------------------------------------------------------------------

os_result failure(int status, int err) { return os_result{status, err}; }

os_result open_failure(int err) {
  switch (err) {
    case EACCES:
    case EPERM:
    case EROFS:
      return failure(IPL_E_ACCESS, err);
    case ENAMETOOLONG:
      return failure(IPL_E_NAME_TOO_LONG, err);
    case ENOTDIR:
      return failure(IPL_E_BAD_PARENT, err);
    case EISDIR:
    case ENXIO:
    case ENODEV:
    case ETXTBSY:
      return failure(IPL_E_NOT_REGULAR_FILE, err);
    case ENOMEM:
      return failure(IPL_E_NO_MEMORY, err);
    default:
      return failure(IPL_E_OS, err);
  }
}

bool says_unsupported(int err) {
  return err == ENOLCK || err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS;
}

os_result lock_failure(int err) {
  if (says_unsupported(err)) return failure(IPL_E_UNSUPPORTED, err);
  switch (err) {
    case EDEADLK:  // classic locks only: the kernel saw a cycle of waiters
      return failure(IPL_E_WOULD_DEADLOCK, err);
    case ENOMEM:
      return failure(IPL_E_NO_MEMORY, err);
    default:
      return failure(IPL_E_OS, err);
  }
}

namespace {

// ---- The descriptors libipl owns, and fork() -------------------------------------

// Zeroed by the kernel in every forked child when MADV_WIPEONFORK works
// (Linux >= 4.14); a plain static otherwise. A token of 0 therefore means
// "forked, and no atfork handler has run".
struct wiped_on_fork {
  std::atomic<uint64_t> token;
  std::atomic<int> resetting;  // a thread is resetting the child's state
};

struct fork_state {
  wiped_on_fork *page = nullptr;
  wiped_on_fork fallback{};              // when no wipe-on-fork page exists
  std::atomic<uint64_t> last_token{1};   // copied into children, never wiped

  // The fork barrier: fork() waits for opens between open() and
  // registration, and opens wait while a fork is in progress, so no
  // descriptor reaches a child unregistered. Two atomics (each side raises
  // its own, then reads the other's) rather than a lock held across
  // fork(): an rwlock write-locked by the parent cannot be unlocked in the
  // child (glibc records the writer's thread id, which the child's thread
  // does not have).
  std::atomic<int> opens_in_flight{0};
  std::atomic<bool> forking{false};

  std::mutex registry_mutex;
  std::vector<int> registered;  // every descriptor libipl has open

  fork_state() {
    void *mem = mmap(nullptr, size_t(sysconf(_SC_PAGESIZE)), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
#ifdef MADV_WIPEONFORK
    if (mem != MAP_FAILED && madvise(mem, size_t(sysconf(_SC_PAGESIZE)), MADV_WIPEONFORK) == 0) {
      page = new (mem) wiped_on_fork{};
    } else if (mem != MAP_FAILED) {
      munmap(mem, size_t(sysconf(_SC_PAGESIZE)));
    }
#else
    if (mem != MAP_FAILED) munmap(mem, size_t(sysconf(_SC_PAGESIZE)));
#endif
    if (!page) page = &fallback;
    page->token.store(1, std::memory_order_relaxed);
    pthread_atfork(&prepare_fork, &after_fork_parent, &after_fork_child);
  }

  static void prepare_fork();
  static void after_fork_parent();
  static void after_fork_child();
};

// Never destroyed: handles may be closed from static destructors, and the
// atfork handlers stay registered for the life of the process.
fork_state &the_fork_state() {
  static fork_state *state = new fork_state;
  return *state;
}

// Waiting on the other side of the fork barrier: a fork, or an open in
// flight, ends within a system call's time. Yields first, then naps.
void wait_a_moment(int round) {
  if (round < 100) {
    sched_yield();
  } else {
    const timespec nap{0, 100 * 1000};
    nanosleep(&nap, nullptr);
  }
}

// Held from open() to registration (see fork_state::opens_in_flight).
class open_in_flight {
 public:
  explicit open_in_flight(fork_state &state) : state_(state) {
    for (int round = 0;; ++round) {
      state_.opens_in_flight.fetch_add(1);
      if (!state_.forking.load()) return;
      state_.opens_in_flight.fetch_sub(1);
      wait_a_moment(round);
    }
  }
  ~open_in_flight() { state_.opens_in_flight.fetch_sub(1); }
  open_in_flight(const open_in_flight &) = delete;
  open_in_flight &operator=(const open_in_flight &) = delete;

 private:
  fork_state &state_;
};

// In the child, with only the current thread left: closes the child's
// copies of libipl's descriptors, resets the lock kind's and the core's
// state, and gives the child a token of its own. After the atfork prepare
// handler, every libipl mutex is held by this thread and is unlocked here;
// after a fork that ran no handlers, a thread of the parent may have held
// one, and it is made anew.
void reset_in_child(fork_state &state, fork_kind kind) {
  if (kind == fork_kind::unnoticed) new (&state.registry_mutex) std::mutex;
  for (int fd : state.registered) sys::calls.close(fd);
  state.registered.clear();  // keeps its storage: no free() in the child
  if (kind == fork_kind::after_prepare) state.registry_mutex.unlock();
  kind_after_fork_child(kind);
  state.opens_in_flight.store(0);  // the parent's threads are not here
  state.forking.store(false);
  core_after_fork_child(kind);
  state.page->token.store(state.last_token.fetch_add(1, std::memory_order_relaxed) + 1,
                          std::memory_order_release);
}

void fork_state::prepare_fork() {
  fork_state &state = the_fork_state();
  core_prepare_fork();
  state.forking.store(true);
  for (int round = 0; state.opens_in_flight.load() != 0; ++round) wait_a_moment(round);
  kind_prepare_fork();
  state.registry_mutex.lock();
}

void fork_state::after_fork_parent() {
  fork_state &state = the_fork_state();
  state.registry_mutex.unlock();
  kind_after_fork_parent();
  state.forking.store(false);
  core_after_fork_parent();
}

void fork_state::after_fork_child() { reset_in_child(the_fork_state(), fork_kind::after_prepare); }

// The first libipl call in a child whose fork ran no atfork handlers: one
// thread resets, any other waits (a reset is a few close() calls).
uint64_t reset_after_unnoticed_fork(fork_state &state) {
  int expected = 0;
  if (state.page->resetting.compare_exchange_strong(expected, 1)) {
    reset_in_child(state, fork_kind::unnoticed);
    return state.page->token.load(std::memory_order_acquire);
  }
  for (int round = 0;; ++round) {
    const uint64_t token = state.page->token.load(std::memory_order_acquire);
    if (token != 0) return token;
    wait_a_moment(round);
  }
}

// ---- Opening -----------------------------------------------------------------

constexpr mode_t kDefaultFileMode = 0666;  // minus the umask, as fasteners

// Folders made for a lock file with mode `file_mode` get search permission
// wherever the file gives read: 0664 -> 0775, 0600 -> 0700.
mode_t folder_mode_for(mode_t file_mode) { return file_mode | ((file_mode & 0444) >> 2); }

// Creates the missing parent folders of `path`: 0777 minus the umask by
// default (as fasteners' os.makedirs), or exactly folder_mode_for(create_mode).
os_result create_parent_dirs(const std::string &path, int create_mode) {
  const bool exact = create_mode != kDefaultCreateMode;
  const mode_t dir_mode = exact ? folder_mode_for(mode_t(create_mode)) : 0777;
  // Walk each prefix that ends just before a '/', skipping the root.
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    if (path[slash - 1] == '/') continue;  // "a//b"
    const std::string prefix = path.substr(0, slash);
    if (sys::calls.mkdir(prefix.c_str(), dir_mode) == 0) {
      // Ours: give it the exact mode the umask took bits from, keeping the
      // set-group-ID bit it inherited from a group-shared parent (so that
      // files made below it keep the group).
      if (exact) {
        struct stat made;
        if (sys::calls.stat(prefix.c_str(), &made) != 0) return open_failure(errno);
        if (sys::calls.chmod(prefix.c_str(), dir_mode | (made.st_mode & S_ISGID)) != 0)
          return open_failure(errno);
      }
      continue;
    }
    const int err = errno;
    if (err != EEXIST) return open_failure(err);
    struct stat st;
    if (sys::calls.stat(prefix.c_str(), &st) != 0) return open_failure(errno);
    if (!S_ISDIR(st.st_mode)) return failure(IPL_E_BAD_PARENT, ENOTDIR);
  }
  return {};
}

constexpr int kBaseOpenFlags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK;

// IPL_OPEN_INHERITABLE: children and exec'd programs get the descriptor.
int base_open_flags(uint32_t flags) {
  return (flags & IPL_OPEN_INHERITABLE) ? kBaseOpenFlags & ~O_CLOEXEC : kBaseOpenFlags;
}

bool is_denied(int err) { return err == EACCES || err == EPERM || err == EROFS; }

// Moves a descriptor that landed on 0, 1 or 2 to 3 or above (see the top).
int above_stdio(int fd, bool inheritable) {
  if (fd > 2) return fd;
  const int moved =
      inheritable ? ::fcntl(fd, F_DUPFD, 3) : sys::calls.dup_cloexec(fd, 3);
  // F_DUPFD says EINVAL when RLIMIT_NOFILE is 3 or less: no descriptor is
  // free above the standard streams, which is EMFILE to the caller.
  const int err = moved < 0 && errno == EINVAL ? EMFILE : errno;
  sys::calls.close(fd);
  errno = err;
  return moved;
}

// open() with the flags the caller chose; EINTR (a FUSE or NFS open may
// be interrupted) is retried.
int open_retrying(const char *path, int flags, mode_t mode) {
  for (;;) {
    const int fd = sys::calls.open(path, flags, mode);
    if (fd >= 0 || errno != EINTR) return fd;
  }
}

// A file system such as GlusterFS can report EEXIST for an O_EXCL create
// that raced with a remove; a few rounds settle it.
constexpr int kCreateRounds = 8;

// Opens (or creates) the lock file. On success *writable says whether it is
// open for writing; a refused O_RDWR leaves its errno in *write_denied.
// The file a symbolic link at `link` points to, when `link` is one (the
// target made absolute against the link's folder); false otherwise.
bool symlink_target(const std::string &link, std::string *target) {
  std::string text(PATH_MAX, '\0');
  const ssize_t got = ::readlink(link.c_str(), &text[0], text.size());
  if (got <= 0 || size_t(got) >= text.size()) return false;
  text.resize(size_t(got));
  if (text[0] != '/') text = link.substr(0, link.rfind('/') + 1) + text;
  *target = text;
  return true;
}

int open_descriptor(const std::string &path, uint32_t flags, int create_mode, bool *writable,
                    int *write_denied, os_result *failed) {
  // Where the file is created: the path, or where a dangling symbolic link
  // at the path points (O_EXCL never follows a link, so it says EEXIST
  // while a plain open says ENOENT; fasteners and flock(1) create the
  // target, and so does libipl, but it never creates folders for it).
  std::string create_at = path;
  const char *p = path.c_str();
  const int base = base_open_flags(flags);
  int fd = open_retrying(p, O_RDWR | base, 0);
  for (int round = 0; fd < 0 && errno == ENOENT && !(flags & IPL_OPEN_NO_CREATE) &&
                      round < kCreateRounds;
       ++round) {
    const bool exact = create_mode != kDefaultCreateMode;
    const mode_t mode = exact ? mode_t(create_mode) : kDefaultFileMode;
    fd = open_retrying(create_at.c_str(), O_RDWR | O_CREAT | O_EXCL | base, mode);
    if (fd >= 0) {
      if (exact && sys::calls.fchmod(fd, mode) != 0) {
        *failed = open_failure(errno);
        sys::calls.close(fd);
        return -1;
      }
      break;
    }
    const int err = errno;
    if (err == EEXIST) {
      fd = open_retrying(p, O_RDWR | base, 0);  // another creator won
      std::string target;
      if (fd < 0 && errno == ENOENT) {
        // A dangling link: create what it points to. Otherwise the file
        // was removed meanwhile (or a network client's cache lags): go
        // round again. readlink's own errno (EINVAL) is not the answer.
        if (symlink_target(create_at, &target)) create_at = target;
        errno = ENOENT;
      }
    } else if (err == ENOENT) {
      // A parent folder is missing (of the link's target: not ours to make).
      if (create_at != path) {
        *failed = open_failure(ENOENT);
        return -1;
      }
      if (flags & IPL_OPEN_NO_CREATE_DIRS) {
        *failed = failure(IPL_E_BAD_PARENT, ENOENT);
        return -1;
      }
      const os_result made = create_parent_dirs(path, create_mode);
      if (made.status != IPL_OK) {
        *failed = made;
        return -1;
      }
      errno = ENOENT;  // go round again: create the file
    } else {
      *failed = open_failure(err);  // e.g. EACCES: cannot create it
      return -1;
    }
  }
  if (fd < 0 && is_denied(errno)) {
    // Read access may be enough: shared locks only.
    *write_denied = errno;
    fd = open_retrying(p, O_RDONLY | base, 0);
    if (fd >= 0) *writable = false;
  }
  if (fd < 0) {
    *failed = open_failure(errno);
    return -1;
  }
  fd = above_stdio(fd, (flags & IPL_OPEN_INHERITABLE) != 0);
  if (fd < 0) *failed = open_failure(errno);
  return fd;
}

}  // namespace

uint64_t process_token() {
  fork_state &state = the_fork_state();
  const uint64_t token = state.page->token.load(std::memory_order_acquire);
  if (token != 0) return token;
  return reset_after_unnoticed_fork(state);
}

void register_descriptor(int fd) {
  fork_state &state = the_fork_state();
  std::lock_guard<std::mutex> guard(state.registry_mutex);
  state.registered.push_back(fd);
}

void close_registered(int fd) {
  fork_state &state = the_fork_state();
  {
    std::lock_guard<std::mutex> guard(state.registry_mutex);
    auto &fds = state.registered;
    const auto found = std::find(fds.begin(), fds.end(), fd);
    if (found != fds.end()) {
      *found = fds.back();
      fds.pop_back();
    }
  }
  sys::calls.close(fd);
}

os_result describe_descriptor(int fd, opened_file *out) {
  struct stat st;
  if (sys::calls.fstat(fd, &st) != 0) return open_failure(errno);
  if (!S_ISREG(st.st_mode)) return failure(IPL_E_NOT_REGULAR_FILE, 0);
  const int access = ::fcntl(fd, F_GETFL);
  if (access < 0) return open_failure(errno);
  opened_file file;
  file.fd = fd;
  file.dev = st.st_dev;
  file.ino = st.st_ino;
  file.writable = (access & O_ACCMODE) != O_RDONLY;
  file.readable = (access & O_ACCMODE) != O_WRONLY;
#ifdef O_PATH
  // Linux's O_PATH descriptors say O_RDONLY but allow no lock at all.
  if (access & O_PATH) file.writable = file.readable = false;
#endif
  file.write_denied_error = file.writable ? 0 : EBADF;  // what fcntl would say
  file.interruptible = signal_can_interrupt_lock_wait(fd);
  file.token = process_token();
  file.registered = false;
  *out = file;
  return {};
}

std::string absolute_path(const char *path) {
  if (path[0] == '/') return path;
  std::string cwd(256, '\0');
  for (;;) {
    if (sys::calls.getcwd(&cwd[0], cwd.size())) break;
    if (errno != ERANGE || cwd.size() > (size_t(1) << 20)) return path;
    cwd.resize(cwd.size() * 2);
  }
  cwd.resize(std::strlen(cwd.c_str()));
  if (cwd.empty() || cwd.back() != '/') cwd += '/';
  return cwd + path;
}

os_result open_file(const std::string &path, uint32_t flags, int create_mode, reuse_hook reuse,
                    opened_file *out) {
  fork_state &state = the_fork_state();
  struct stat st;
  if (sys::calls.stat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) return failure(IPL_E_NOT_REGULAR_FILE, 0);
    bool writable = true;
    const int reused = reuse ? reuse(st.st_dev, st.st_ino, &writable) : -1;
    if (reused >= 0) {
      // A descriptor of this process on the very file the path names now.
      opened_file file;
      file.fd = reused;
      file.dev = st.st_dev;
      file.ino = st.st_ino;
      file.writable = writable;
      file.write_denied_error = writable ? 0 : EACCES;
      file.interruptible = signal_can_interrupt_lock_wait(reused);
      file.token = process_token();
      *out = file;
      return {};
    }
  } else if (errno != ENOENT) {
    return open_failure(errno);
  }

  opened_file file;
  {
    const open_in_flight no_fork_now(state);
    os_result failed;
    file.fd = open_descriptor(path, flags, create_mode, &file.writable, &file.write_denied_error,
                              &failed);
    if (file.fd < 0) return failed;
    // An inheritable descriptor is meant to reach children: the fork
    // clean-up leaves it alone.
    file.registered = !(flags & IPL_OPEN_INHERITABLE);
    if (file.registered) register_descriptor(file.fd);
  }
  if (sys::calls.fstat(file.fd, &st) != 0) {
    const int err = errno;
    close_registered(file.fd);
    return open_failure(err);
  }
  if (!S_ISREG(st.st_mode)) {
    close_registered(file.fd);
    return failure(IPL_E_NOT_REGULAR_FILE, 0);
  }
  file.dev = st.st_dev;
  file.ino = st.st_ino;
  file.interruptible = signal_can_interrupt_lock_wait(file.fd);
  if (!file.interruptible) {
    // Not a known local file system: ask it whether it does locks at all
    // (NFS without lockd, a FUSE daemon refusing them say ENOLCK), so that
    // ipl_open fails now rather than every acquire later.
    struct flock probe;
    std::memset(&probe, 0, sizeof probe);
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    int rc;
    while ((rc = sys::calls.fcntl_lock(file.fd, F_GETLK, &probe)) != 0 && errno == EINTR) {
    }
    if (rc != 0 && says_unsupported(errno)) {
      const int err = errno;
      close_registered(file.fd);
      return failure(IPL_E_UNSUPPORTED, err);
    }
  }
  file.token = process_token();
  *out = file;
  return {};
}

os_result missing_as_not_found(const os_result &opened, bool *found) {
  *found = opened.status == IPL_OK;
  if (opened.status == IPL_E_OS && opened.os_error == ENOENT) return {};
  return opened;
}

os_result still_names(const std::string &path, dev_t dev, ino_t ino, bool *same) {
  struct stat st;
  if (sys::calls.stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      *same = false;
      return {};
    }
    return open_failure(err);
  }
  *same = st.st_dev == dev && st.st_ino == ino;
  return {};
}

// ---- Taking the kernel lock ----------------------------------------------------

namespace {

struct flock make_region(short type, byte_range range) {
  struct flock region;
  std::memset(&region, 0, sizeof region);  // l_pid must be 0 for OFD locks
  region.l_type = type;
  region.l_whence = SEEK_SET;
  region.l_start = range.start;
  region.l_len = range.length;
  return region;
}

bool is_busy(int err) { return err == EAGAIN || err == EACCES; }

// One fcntl lock request on a descriptor, for the core's wait policy.
class fcntl_attempts final : public lock_attempts {
 public:
  fcntl_attempts(const opened_file &file, lock_commands cmds, short type, byte_range range)
      : file_(file), cmds_(cmds), type_(type), range_(range) {}

  os_result try_lock() override {
    for (;;) {
      struct flock region = make_region(type_, range_);
      if (sys::calls.fcntl_lock(file_.fd, cmds_.try_cmd, &region) == 0) return {};
      const int err = errno;
      if (err == EINTR) continue;
      return is_busy(err) ? failure(IPL_E_TIMEOUT, 0) : lock_failure(err);
    }
  }

  os_result wait_lock() override {
    struct flock region = make_region(type_, range_);
    if (sys::calls.fcntl_lock(file_.fd, cmds_.wait_cmd, &region) == 0) return {};
    const int err = errno;
    return err == EINTR ? failure(kInterrupted, 0) : lock_failure(err);
  }

  bool wait_is_interruptible() const override { return file_.interruptible; }
  // A forever wait that no signal can end polls, so ipl_cancel() can end it.
  bool forever_blocks_uninterruptibly() const override { return false; }

 private:
  const opened_file &file_;
  lock_commands cmds_;
  short type_;
  byte_range range_;
};

// The polling sleep: a condition variable on the monotonic clock, so that
// ipl_cancel() (wake) ends it at once.
class condition_sleep final : public poll_sleep {
 public:
  void sleep_until(wait_deadline::clock::time_point until) override {
    std::unique_lock<std::mutex> guard(mutex_);
    woken_.wait_until(guard, until, [this] { return wake_requested_; });
  }
  void wake() override {
    std::lock_guard<std::mutex> guard(mutex_);
    wake_requested_ = true;
    woken_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable woken_;
  bool wake_requested_ = false;
};

}  // namespace

os_result set_lock(const opened_file &file, lock_commands cmds, lock_mode mode,
                   const wait_context &wait) {
  fcntl_attempts attempts(file, cmds, mode == lock_mode::exclusive ? F_WRLCK : F_RDLCK,
                          range_of(mode));
  return wait_for_lock(attempts, wait);
}

os_result set_range(const opened_file &file, lock_commands cmds, short type, byte_range range,
                    const wait_context &wait) {
  fcntl_attempts attempts(file, cmds, type, range);
  return wait_for_lock(attempts, wait);
}

bool is_lost_error(int err) {
  // EBADFD: GlusterFS with client.strict-locks after the lock was lost;
  // ENOTCONN: the server is unreachable; ESTALE: the server forgot the
  // file; EBADF: the descriptor was closed behind libipl's back.
  return err == EBADFD || err == ENOTCONN || err == ESTALE || err == EBADF;
}

os_result clear_range(int fd, int try_cmd, byte_range range) {
  struct flock region = make_region(F_UNLCK, range);
  while (sys::calls.fcntl_lock(fd, try_cmd, &region) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    return is_lost_error(err) ? failure(IPL_E_LOST, err) : lock_failure(err);
  }
  return {};
}

os_result check_exclusive_ofd(const opened_file &file, const std::string &path) {
  // Others' locks, through our own description (which the kernel leaves
  // out): any is a loss, and a server that lost ours says so here too.
  short type = F_UNLCK;
  pid_t pid = 0;
  const os_result others = conflicting_lock(file.fd, F_OFD_GETLK, kWholeFile, &type, &pid);
  if (others.status != IPL_OK) {
    const int err = others.os_error;
    if (is_lost_error(err) || err == EIO || err == ENOLCK) return failure(IPL_E_LOST, err);
    return others;
  }
  if (type != F_UNLCK) return failure(IPL_E_LOST, 0);
  // Ours, through a second description of the same file: it must see our
  // exclusive lock. Unlike re-asserting it, this never takes a lost lock
  // back (which would hide that someone may have held it meanwhile).
  const std::string self = "/proc/self/fd/" + std::to_string(file.fd);
  const int second = sys::calls.open(self.c_str(), O_RDONLY | kBaseOpenFlags, 0);
  if (second < 0) return check_held(file, path, F_OFD_SETLK, lock_mode::exclusive);
  const os_result seen = conflicting_lock(second, F_OFD_GETLK, kWholeFile, &type, &pid);
  sys::calls.close(second);
  if (seen.status != IPL_OK) {
    const int err = seen.os_error;
    if (is_lost_error(err) || err == EIO || err == ENOLCK) return failure(IPL_E_LOST, err);
    return seen;
  }
  if (type != F_WRLCK) return failure(IPL_E_LOST, 0);
  if (path.empty()) return {};  // a caller's descriptor: no path to check
  bool same = false;
  const os_result named = still_names(path, file.dev, file.ino, &same);
  if (named.status != IPL_OK) return named;
  return same ? os_result{} : failure(IPL_E_LOST, 0);
}

os_result check_held(const opened_file &file, const std::string &path, int try_cmd,
                     lock_mode mode) {
  // Re-asserting the lock held is a no-op for the kernel, and on a network
  // file system a question to the server.
  struct flock region =
      make_region(mode == lock_mode::exclusive ? F_WRLCK : F_RDLCK, range_of(mode));
  while (sys::calls.fcntl_lock(file.fd, try_cmd, &region) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    // Busy: someone else holds it now. EIO, ENOLCK: NFS after a lost lock.
    if (is_busy(err) || is_lost_error(err) || err == EIO || err == ENOLCK)
      return failure(IPL_E_LOST, err);
    return lock_failure(err);
  }
  if (path.empty()) return {};  // a caller's descriptor: no path to check
  bool same = false;
  const os_result named = still_names(path, file.dev, file.ino, &same);
  if (named.status != IPL_OK) return named;
  return same ? os_result{} : failure(IPL_E_LOST, 0);
}

os_result clear_lock(int fd, int try_cmd) { return clear_range(fd, try_cmd, kWholeFile); }

os_result convert_to_shared(int fd, int try_cmd) {
  // The last byte first: bytes 0 .. 2^63-2 stay exclusive, and every lock
  // anyone takes covers byte 0, so nobody can get in between. Then shared
  // on that range. Both calls only release: they never wait. Should either
  // fail, the lock is still exclusive in effect (ipl.h promises that): done
  // the other way round, a failed second call would leave it shared to
  // libipl readers while the handle holds it "exclusive".
  const os_result cleared = clear_range(fd, try_cmd, kUpgradeByte);
  if (cleared.status != IPL_OK) return cleared;
  struct flock region = make_region(F_RDLCK, kSharedRange);
  while (sys::calls.fcntl_lock(fd, try_cmd, &region) != 0) {
    if (errno != EINTR) return lock_failure(errno);
  }
  return {};
}

os_result conflicting_lock(int fd, int get_cmd, byte_range range, short *type, pid_t *pid) {
  struct flock region = make_region(F_WRLCK, range);
  while (sys::calls.fcntl_lock(fd, get_cmd, &region) != 0) {
    if (errno != EINTR) return lock_failure(errno);
  }
  *type = region.l_type;
  *pid = region.l_pid;
  return {};
}

os_result take_upgrade_byte(const opened_file &file, lock_commands cmds, int get_cmd,
                            const wait_context &wait) {
  // A try, and while a foreign reader (a fasteners shared lock, which
  // covers the whole file) holds the byte, tries with back-off: two
  // upgraders must never both wait for the byte, or the one that gets it
  // would wait for the other's shared lock forever.
  fcntl_attempts attempts(file, cmds, F_WRLCK, kUpgradeByte);
  const std::unique_ptr<poll_sleep> sleep = make_poll_sleep();
  auto pause = std::chrono::microseconds(50);
  for (;;) {
    const os_result tried = attempts.try_lock();
    if (tried.status != IPL_E_TIMEOUT) return tried;
    short type = F_UNLCK;
    pid_t pid = 0;
    const os_result seen = conflicting_lock(file.fd, get_cmd, kUpgradeByte, &type, &pid);
    if (seen.status != IPL_OK) return seen;
    if (type == F_WRLCK) return failure(IPL_E_WOULD_DEADLOCK, 0);  // another upgrade
    if (type != F_UNLCK) {
      // A foreign reader: wait for it (bounded by the deadline).
      if (wait.deadline.expired()) return kTimedOut;
      if (wait.cancel && wait.cancel->canceled()) return kCanceled;
      auto until = wait_deadline::clock::now() + pause;
      if (wait.deadline.is_timed()) until = std::min(until, wait.deadline.when());
      sleep->sleep_until(until);
      pause = std::min(pause * 2, std::chrono::microseconds(10000));
    }
  }
}

// ---- Who holds it ------------------------------------------------------------------

namespace {

// How many /proc/PID/fdinfo files one holder search may read.
constexpr int kMaxFdinfoReads = 65536;

bool is_number(const char *name) {
  if (!*name) return false;
  for (; *name; ++name)
    if (*name < '0' || *name > '9') return false;
  return true;
}

// Does this fdinfo text have a "lock:" line on the inode `needle`
// ("MAJ:MIN:INO" as the kernel prints it)?
bool has_lock_on(const char *text, const std::string &needle) {
  for (const char *line = text; line && *line;) {
    const char *end = std::strchr(line, '\n');
    if (std::strncmp(line, "lock:", 5) == 0) {
      const std::string one(line, end ? size_t(end - line) : std::strlen(line));
      const size_t at = one.find(needle);
      // The inode ends the field: "fe:00:123" must not match "fe:00:1234".
      if (at != std::string::npos &&
          (at + needle.size() == one.size() || one[at + needle.size()] == ' '))
        return true;
    }
    line = end ? end + 1 : nullptr;
  }
  return false;
}

}  // namespace

int64_t find_holder_pid(dev_t dev, ino_t ino, int own_fd) {
  char needle_text[64];
  std::snprintf(needle_text, sizeof needle_text, "%02x:%02x:%lu", unsigned(major(dev)),
                unsigned(minor(dev)), static_cast<unsigned long>(ino));
  const std::string needle = std::string(" ") + needle_text;
  const pid_t self = getpid();
  DIR *proc = opendir("/proc");
  if (!proc) return -1;
  int reads = 0;
  int64_t found = -1;
  while (found < 0 && reads < kMaxFdinfoReads) {
    const dirent *process = readdir(proc);
    if (!process) break;
    if (!is_number(process->d_name)) continue;
    const std::string fdinfo_dir = std::string("/proc/") + process->d_name + "/fdinfo";
    DIR *fds = opendir(fdinfo_dir.c_str());
    if (!fds) continue;  // gone, or not ours to read
    const pid_t pid = pid_t(std::atol(process->d_name));
    while (found < 0 && reads < kMaxFdinfoReads) {
      const dirent *fd = readdir(fds);
      if (!fd) break;
      if (!is_number(fd->d_name)) continue;
      if (pid == self && std::atoi(fd->d_name) == own_fd) continue;
      ++reads;
      const std::string path = fdinfo_dir + "/" + fd->d_name;
      const int info = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (info < 0) continue;
      char text[4096];
      const ssize_t got = ::read(info, text, sizeof text - 1);
      ::close(info);
      if (got <= 0) continue;
      text[got] = '\0';
      if (has_lock_on(text, needle)) found = pid;
    }
    closedir(fds);
  }
  closedir(proc);
  return found;
}

// ---- Removing it -------------------------------------------------------------------

os_result unlink_if_still_named(const std::string &path, dev_t dev, ino_t ino) {
  bool same = false;
  const os_result checked = still_names(path, dev, ino, &same);
  if (checked.status != IPL_OK) return checked;
  if (!same) return {};  // replaced by someone else: theirs to keep
  if (sys::calls.unlink(path.c_str()) != 0) {
    const int err = errno;
    if (err == ENOENT) return {};
    return open_failure(err);
  }
  return {};
}

std::unique_ptr<poll_sleep> make_sleep() { return std::make_unique<condition_sleep>(); }

}  // namespace posix

void notice_fork() { posix::process_token(); }

std::unique_ptr<poll_sleep> make_poll_sleep() { return posix::make_sleep(); }

const int kReplacedTooOftenError = ESTALE;

}  // namespace ipl::detail

// SPDX-License-Identifier: MIT
// posix_classic.cpp — the portable POSIX backend: classic fcntl locks plus a
// per-process inode table (macOS, the BSDs; on Linux with
// -Dposix_locks=classic).
//
// What the OS gives
//   Classic ("process-associated") fcntl record locks, the ones fasteners
//   takes: whole-file F_WRLCK / F_RDLCK, dropped when the process dies.
//
// What it gets wrong
//   The lock belongs to the process, not to a descriptor: two handles in one
//   process never conflict, a second lock request from the same process
//   silently converts the first, and closing ANY descriptor of the file drops
//   ALL the process's locks on it — even a descriptor some unrelated library
//   opened. POSIX advisory locks are broken by design for any program with
//   threads or libraries. A forked child holds none of its parent's locks.
//
// What we do about it
//   We arbitrate inside the process, as SQLite's unix VFS does: an
//   `inode_table` keyed by (st_dev, st_ino) records which handles of this
//   process hold the file shared or exclusive; only the first sharer and the
//   exclusive holder talk to the kernel. A handle closed while another
//   handle of the process holds a lock on the same inode has its descriptor
//   parked (closing it would drop that lock) until the inode is unlocked,
//   and a handle opened meanwhile on the same inode takes a parked
//   descriptor instead of opening a new one, so opening and closing handles
//   never grows the descriptor count. A close() behind the library's back
//   still drops the lock: no classic-lock design can prevent that.
//
//   After fork() the child starts with an empty table (its own, new one):
//   it holds nothing, and the parent's entries, counts and waiters mean
//   nothing there. The parent's table is left untouched in the child's
//   memory rather than destroyed, because its condition variables may have
//   had waiters (threads of the parent) that do not exist in the child.
#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "posix_fcntl.hpp"

namespace ipl::detail {
namespace {

using posix::opened_file;

constexpr posix::lock_commands kClassicCommands{F_SETLK, F_SETLKW};

// A descriptor of a closed handle, kept open while the process holds a lock
// on its inode.
struct parked_descriptor {
  int fd;
  bool writable;
};

// What this process holds on one inode, across all its handles.
struct inode_state {
  int handles = 0;            // open handles on this inode
  int shared_holders = 0;     // handles holding it shared
  bool exclusive_held = false;
  bool kernel_busy = false;   // a thread is taking the kernel lock right now
  bool upgrading = false;     // a handle is upgrading: new sharers wait
  std::vector<parked_descriptor> parked;
  std::condition_variable changed;

  bool unlocked() const { return shared_holders == 0 && !exclusive_held && !kernel_busy; }
};

class inode_table {
 public:
  using key = std::pair<dev_t, ino_t>;

  // `before_fork`: the parent's table, kept reachable (see the top).
  explicit inode_table(inode_table *before_fork = nullptr) : before_fork_(before_fork) {}

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
  inode_state *find(key k) {
    const auto found = entries_.find(k);
    return found == entries_.end() ? nullptr : found->second.get();
  }

 private:
  std::map<key, std::unique_ptr<inode_state>> entries_;
  inode_table *before_fork_;
};

// Never destroyed: handles may be closed from static destructors. Replaced
// (not destroyed) in a forked child.
inode_table *current_table = new inode_table;

// Closing any descriptor of the inode drops the process's classic locks, so
// parked descriptors are closed only once nothing is locked.
void close_parked_if_unlocked(inode_state &inode) {
  if (!inode.unlocked()) return;
  for (const parked_descriptor &parked : inode.parked) posix::close_registered(parked.fd);
  inode.parked.clear();
}

// posix::reuse_hook: a parked descriptor on (dev, ino), preferring one
// opened for writing.
int take_parked(dev_t dev, ino_t ino, bool *writable) {
  inode_table &table = *current_table;
  std::lock_guard<std::mutex> guard(table.mutex);
  inode_state *inode = table.find({dev, ino});
  if (!inode || inode->parked.empty()) return -1;
  auto chosen = inode->parked.end() - 1;
  for (auto it = inode->parked.begin(); it != inode->parked.end(); ++it) {
    if (it->writable) chosen = it;
  }
  const parked_descriptor taken = *chosen;
  inode->parked.erase(chosen);
  *writable = taken.writable;
  return taken.fd;
}

class classic_lock_file final : public lock_file {
 public:
  classic_lock_file(std::string path, uint32_t flags, int create_mode)
      : path_(std::move(path)), flags_(flags), create_mode_(create_mode) {}

  ~classic_lock_file() override { leave_inode(); }

  os_result open(uint32_t extra_flags = 0) {
    const os_result opened =
        posix::open_file(path_, flags_ | extra_flags, create_mode_, &take_parked, &file_);
    if (opened.status != IPL_OK) return opened;
    table_ = current_table;
    std::lock_guard<std::mutex> guard(table_->mutex);
    inode_ = &table_->join(key());
    return {};
  }

  os_result lock(lock_mode mode, const wait_context &wait) override {
    std::unique_lock<std::mutex> guard(table_->mutex);
    for (;;) {
      const bool compatible =
          mode == lock_mode::shared
              ? !inode_->exclusive_held && !inode_->upgrading
              : !inode_->exclusive_held && inode_->shared_holders == 0;
      if (compatible && !inode_->kernel_busy) {
        if (mode == lock_mode::shared && inode_->shared_holders > 0) {
          // The process already holds the kernel's read lock.
          ++inode_->shared_holders;
          holding_ = true;
          mode_ = mode;
          return {};
        }
        return take_kernel_lock(guard, mode, wait);
      }
      // Another handle of this process holds a conflicting lock, or is
      // talking to the kernel: wait for it to change its state.
      const os_result waited = wait_for_change(guard, wait);
      if (waited.status != IPL_OK) return waited;
    }
  }

  os_result unlock() override {
    std::lock_guard<std::mutex> guard(table_->mutex);
    return release_locked(false);
  }

  os_result downgrade() override {
    std::lock_guard<std::mutex> guard(table_->mutex);
    const os_result converted = posix::convert_to_shared(file_.fd, kClassicCommands.try_cmd);
    if (converted.status != IPL_OK) return converted;
    inode_->exclusive_held = false;
    inode_->shared_holders = 1;
    mode_ = lock_mode::shared;
    inode_->changed.notify_all();
    return {};
  }

  os_result upgrade(const wait_context &wait) override {
    std::unique_lock<std::mutex> guard(table_->mutex);
    if (inode_->upgrading) return posix::failure(IPL_E_WOULD_DEADLOCK, 0);
    inode_->upgrading = true;
    // The process's kernel lock is shared by all its sharing handles: wait
    // until this handle is the last (new sharers wait while we upgrade).
    while (inode_->shared_holders > 1) {
      const os_result waited = wait_for_change(guard, wait);
      if (waited.status != IPL_OK) {
        inode_->upgrading = false;
        inode_->changed.notify_all();
        return waited;
      }
    }
    guard.unlock();
    os_result result = posix::take_upgrade_byte(file_, kClassicCommands, F_GETLK, wait);
    if (result.status == IPL_OK) {
      result = posix::set_range(file_, kClassicCommands, F_WRLCK, posix::kSharedRange, wait);
      if (result.status != IPL_OK)
        posix::clear_range(file_.fd, kClassicCommands.try_cmd, posix::kUpgradeByte);
    }
    guard.lock();
    inode_->upgrading = false;
    if (result.status == IPL_OK) {
      inode_->shared_holders = 0;
      inode_->exclusive_held = true;
      mode_ = lock_mode::exclusive;
    }
    inode_->changed.notify_all();
    return result;
  }

  // Other processes from F_GETLK (which leaves this process's own locks
  // out), other handles of this process from the inode table.
  os_result query(bool holding, lock_mode held_mode, int *state, int64_t *holder_pid) override {
    short type = F_UNLCK;
    pid_t pid = -1;
    const os_result seen = posix::conflicting_lock(file_.fd, F_GETLK, posix::kSharedRange, &type, &pid);
    if (seen.status != IPL_OK) return seen;
    bool others_exclusive = false;
    bool others_shared = false;
    {
      std::lock_guard<std::mutex> guard(table_->mutex);
      const bool mine_exclusive = holding && held_mode == lock_mode::exclusive;
      const bool mine_shared = holding && held_mode == lock_mode::shared;
      others_exclusive = inode_->exclusive_held && !mine_exclusive;
      others_shared = inode_->shared_holders - (mine_shared ? 1 : 0) > 0;
    }
    int64_t who = -1;
    if (type == F_WRLCK || (type != F_RDLCK && others_exclusive)) {
      *state = IPL_STATE_EXCLUSIVE;
      who = type == F_WRLCK ? pid : getpid();
    } else if (type == F_RDLCK || others_shared) {
      *state = IPL_STATE_SHARED;
      who = type == F_RDLCK ? pid : getpid();
    } else {
      *state = IPL_STATE_FREE;
    }
    if (holder_pid) {
      // An OFD holder (another libipl on Linux) shows as pid -1.
      *holder_pid = *state == IPL_STATE_FREE ? -1
                    : who > 0                ? who
                                             : posix::find_holder_pid(file_.dev, file_.ino, file_.fd);
    }
    return {};
  }

  os_result check(lock_mode held_mode) override {
    return posix::check_held(file_, path_, kClassicCommands.try_cmd, held_mode);
  }

  os_result remove() override {
    const os_result removed = posix::unlink_if_still_named(path_, file_.dev, file_.ino);
    if (removed.status != IPL_OK) return removed;
    return unlock();
  }

  bool writable() const override { return file_.writable; }
  int write_denied_error() const override { return file_.write_denied_error; }

  os_result still_at_path(bool *same) override {
    return posix::still_names(path_, file_.dev, file_.ino, same);
  }

  os_result reopen() override {
    leave_inode();
    return open();
  }

  os_result reopen_existing(bool *found) override {
    leave_inode();
    return posix::missing_as_not_found(open(IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS), found);
  }

  bool inherited() const override {
    return file_.fd >= 0 && file_.token != posix::process_token();
  }

 private:
  inode_table::key key() const { return {file_.dev, file_.ino}; }

  // Wakes a wait for another handle of this process (wait_for_change).
  class in_process_waker final : public waker {
   public:
    in_process_waker(inode_table &table, inode_state &inode) : table_(table), inode_(inode) {}
    void wake() override {
      std::lock_guard<std::mutex> guard(table_.mutex);
      inode_.changed.notify_all();
    }

   private:
    inode_table &table_;
    inode_state &inode_;
  };

  // With the table mutex held in `guard`: waits until another handle of
  // this process changes the inode's state (IPL_OK: look again), the
  // deadline passes or the wait is canceled. The cancel step is entered
  // without the table mutex: cancel() takes its own mutex, then ours.
  os_result wait_for_change(std::unique_lock<std::mutex> &guard, const wait_context &wait) {
    if (wait.deadline.is_try_once()) return kTimedOut;
    in_process_waker wake_me(*table_, *inode_);
    os_result result;
    guard.unlock();
    {
      const cancel_step step(wait.cancel, &wake_me);
      guard.lock();
      if (!step.entered() || (wait.cancel && wait.cancel->canceled())) {
        result = kCanceled;
      } else if (wait.deadline.is_forever()) {
        inode_->changed.wait(guard);
      } else if (inode_->changed.wait_until(guard, wait.deadline.when()) ==
                     std::cv_status::timeout &&
                 wait.deadline.expired()) {
        result = kTimedOut;
      }
      guard.unlock();
    }
    guard.lock();
    return result;
  }

  os_result take_kernel_lock(std::unique_lock<std::mutex> &guard, lock_mode mode,
                             const wait_context &wait) {
    inode_->kernel_busy = true;
    guard.unlock();
    const os_result result = posix::set_lock(file_, kClassicCommands, mode, wait);
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

  // Called with the table mutex held. When the kernel unlock fails (not
  // for a lost lock) the process may still hold the lock: unless `closing`
  // (the descriptor is closed next, which drops it), the table keeps it
  // held, so that the release can be retried and no other handle of this
  // process takes it meanwhile (its fcntl would just convert ours).
  os_result release_locked(bool closing) {
    const bool last_holder = mode_ == lock_mode::exclusive || inode_->shared_holders == 1;
    os_result result;
    if (last_holder) result = posix::clear_lock(file_.fd, kClassicCommands.try_cmd);
    if (result.status != IPL_OK && result.status != IPL_E_LOST && !closing) return result;
    if (mode_ == lock_mode::shared) {
      --inode_->shared_holders;
    } else {
      inode_->exclusive_held = false;
    }
    holding_ = false;
    close_parked_if_unlocked(*inode_);
    inode_->changed.notify_all();
    return result;
  }

  // Releases what the handle holds and gives up its descriptor: closed, or
  // parked while the process holds a lock on the inode. In a forked child
  // the descriptor and the table entry were the parent's: nothing to do.
  void leave_inode() {
    if (file_.fd < 0) return;
    if (!inherited()) {
      std::lock_guard<std::mutex> guard(table_->mutex);
      if (holding_) release_locked(true);
      if (inode_->unlocked()) {
        posix::close_registered(file_.fd);
      } else {
        inode_->parked.push_back(parked_descriptor{file_.fd, file_.writable});
      }
      if (inode_->handles == 1) close_parked_if_unlocked(*inode_);
      table_->leave(key());
    }
    file_ = opened_file{};
    inode_ = nullptr;
    holding_ = false;
  }

  std::string path_;
  uint32_t flags_;
  int create_mode_;
  opened_file file_;
  inode_table *table_ = nullptr;  // the table this handle joined
  inode_state *inode_ = nullptr;
  bool holding_ = false;
  lock_mode mode_ = lock_mode::shared;
};

}  // namespace

namespace posix {
void kind_prepare_fork() { current_table->mutex.lock(); }
void kind_after_fork_parent() { current_table->mutex.unlock(); }
// Parked descriptors were registered: posix_fcntl.cpp has closed them.
void kind_after_fork_child(fork_kind kind) {
  if (kind == fork_kind::after_prepare) current_table->mutex.unlock();
  current_table = new inode_table(current_table);
}
}  // namespace posix

// Classic locks belong to the process, not to a description: a lock a
// child would inherit, or one left on a caller's descriptor, is not theirs.
os_result open_descriptor_lock(int, std::unique_ptr<lock_file> *, bool *, lock_mode *) {
  return posix::failure(IPL_E_UNSUPPORTED, 0);
}

os_result open_lock_file(const open_request &request, std::unique_ptr<lock_file> *out) {
  if (request.flags & IPL_OPEN_INHERITABLE) return posix::failure(IPL_E_UNSUPPORTED, 0);
  auto file = std::make_unique<classic_lock_file>(posix::absolute_path(request.path),
                                                  request.flags, request.create_mode);
  const os_result opened = file->open();
  if (opened.status != IPL_OK) return opened;
  *out = std::move(file);
  return {};
}

const char *backend_name() { return "posix-classic"; }

}  // namespace ipl::detail

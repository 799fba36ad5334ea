// SPDX-License-Identifier: MIT
// posix_ofd.cpp — the Linux backend: open-file-description (OFD) locks.
//
// What the OS gives
//   Linux >= 3.15 has F_OFD_SETLK / F_OFD_SETLKW: the same whole-file record
//   locks as classic fcntl locks, conflicting with them (so fasteners still
//   sees ours), but owned by the open file description instead of the
//   process.
//
// What classic locks get wrong, and why OFD locks fix it
//   Classic locks belong to the process: two handles in one process never
//   conflict, a second request silently converts the first, and closing ANY
//   descriptor of the file drops ALL the process's locks on it. Each libipl
//   handle opens its own description, so handles exclude each other like
//   processes, and an unrelated close() drops nothing.
//
// What OFD locks get wrong, and what we do about it
//   A description outlives the descriptor that made it as long as any copy
//   exists: a forked child's copy keeps the lock alive after the parent
//   closes it or dies, and the child's unlock drops the parent's lock.
//   posix_fcntl.cpp closes the child's copies at fork time; here a handle
//   also unlocks explicitly before closing, so a release by close never
//   depends on other copies being gone.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <memory>
#include <string>

#include "posix_fcntl.hpp"

namespace ipl::detail {
namespace {

using posix::opened_file;

constexpr posix::lock_commands kOfdCommands{F_OFD_SETLK, F_OFD_SETLKW};

class ofd_lock_file final : public lock_file {
 public:
  ofd_lock_file(std::string path, uint32_t flags, int create_mode)
      : path_(std::move(path)), flags_(flags), create_mode_(create_mode) {}

  // ipl_open_fd: the caller's descriptor, never closed, with no path
  // (no identity check, no reopen, no remove); `held` what its open file
  // description holds already.
  ofd_lock_file(const opened_file &borrowed, bool held)
      : flags_(0), create_mode_(kDefaultCreateMode), file_(borrowed), held_(held), borrowed_(true) {}

  ~ofd_lock_file() override { drop_descriptor(); }

  os_result open(uint32_t extra_flags = 0) {
    return posix::open_file(path_, flags_ | extra_flags, create_mode_, nullptr, &file_);
  }

  os_result lock(lock_mode mode, const wait_context &wait) override {
    // A read lock needs a descriptor open for reading (fcntl says EBADF).
    if (mode == lock_mode::shared && !file_.readable) return posix::failure(IPL_E_ACCESS, EBADF);
    const os_result result = posix::set_lock(file_, kOfdCommands, mode, wait);
    held_ = result.status == IPL_OK;
    return result;
  }

  os_result unlock() override {
    const os_result result = posix::clear_lock(file_.fd, kOfdCommands.try_cmd);
    if (result.status == IPL_OK) held_ = false;
    return result;
  }

  os_result downgrade() override { return posix::convert_to_shared(file_.fd, kOfdCommands.try_cmd); }

  os_result upgrade(const wait_context &wait) override {
    const os_result announced = posix::take_upgrade_byte(file_, kOfdCommands, F_OFD_GETLK, wait);
    if (announced.status != IPL_OK) return announced;
    // Our shared range turns exclusive once the other readers have left;
    // with the upgrade byte, the whole file is then held exclusive.
    const os_result result =
        posix::set_range(file_, kOfdCommands, F_WRLCK, posix::kSharedRange, wait);
    if (result.status != IPL_OK) posix::clear_range(file_.fd, kOfdCommands.try_cmd, posix::kUpgradeByte);
    return result;
  }

  // The kernel leaves this description's own lock out of F_OFD_GETLK.
  os_result query(bool, lock_mode, int *state, int64_t *holder_pid) override {
    short type = F_UNLCK;
    pid_t pid = -1;
    const os_result seen = posix::conflicting_lock(file_.fd, F_OFD_GETLK, posix::kSharedRange, &type, &pid);
    if (seen.status != IPL_OK) return seen;
    *state = type == F_WRLCK ? IPL_STATE_EXCLUSIVE : type == F_RDLCK ? IPL_STATE_SHARED : IPL_STATE_FREE;
    if (holder_pid) {
      *holder_pid = *state == IPL_STATE_FREE ? -1
                    : pid > 0                ? int64_t(pid)
                                             : posix::find_holder_pid(file_.dev, file_.ino, file_.fd);
    }
    return {};
  }

  os_result check(lock_mode held_mode) override {
    if (held_mode == lock_mode::exclusive) return posix::check_exclusive_ofd(file_, path_);
    return posix::check_held(file_, path_, kOfdCommands.try_cmd, held_mode);
  }

  os_result remove() override {
    if (borrowed_) return posix::failure(IPL_E_UNSUPPORTED, 0);
    const os_result removed = posix::unlink_if_still_named(path_, file_.dev, file_.ino);
    if (removed.status != IPL_OK) return removed;
    return unlock();
  }

  bool writable() const override { return file_.writable; }
  int write_denied_error() const override { return file_.write_denied_error; }

  os_result still_at_path(bool *same) override {
    if (borrowed_) {
      *same = true;  // no path: the descriptor is the lock
      return {};
    }
    return posix::still_names(path_, file_.dev, file_.ino, same);
  }

  os_result reopen() override {
    if (borrowed_) return describe_again();
    drop_descriptor();
    return open();
  }

  os_result reopen_existing(bool *found) override {
    if (borrowed_) {
      *found = true;
      return describe_again();
    }
    drop_descriptor();
    return posix::missing_as_not_found(open(IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS), found);
  }

  bool inherited() const override {
    return file_.fd >= 0 && file_.token != posix::process_token();
  }

 private:
  // A caller's descriptor has no path to open again. In this process the
  // descriptor itself is what the handle locks, also after IPL_E_LOST
  // (EBADF if the caller has closed it meanwhile). In a forked child it is
  // the parent's open file description, whose lock is the parent's: a lock
  // taken through it would be shared with the parent, so never.
  os_result describe_again() {
    if (inherited()) return posix::failure(IPL_E_UNSUPPORTED, 0);
    opened_file again;
    const os_result described = posix::describe_descriptor(file_.fd, &again);
    if (described.status != IPL_OK) return described;
    file_ = again;
    held_ = false;
    return {};
  }

  // Unlocks (see the top of the file) and closes — unless the descriptor
  // is the parent's copy, already closed at the fork: its number may
  // belong to something else by now.
  void drop_descriptor() {
    if (file_.fd < 0) return;
    if (!inherited()) {
      if (held_) posix::clear_lock(file_.fd, kOfdCommands.try_cmd);
      if (!borrowed_) posix::close_registered(file_.fd);
    }
    file_ = opened_file{};
    held_ = false;
  }

  std::string path_;
  uint32_t flags_;
  int create_mode_;
  opened_file file_;
  bool held_ = false;
  bool borrowed_ = false;
};

// What the open file description behind `fd` holds already, from the
// OFDLCK lines of /proc/self/fdinfo/FD (the locks it owns): false when
// nothing, else *mode.
bool description_holds_lock(int fd, lock_mode *mode) {
  const std::string path = "/proc/self/fdinfo/" + std::to_string(fd);
  const int info = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (info < 0) return false;
  char text[4096];
  const ssize_t got = ::read(info, text, sizeof text - 1);
  ::close(info);
  if (got <= 0) return false;
  text[got] = '\0';
  bool holds = false;
  for (const char *line = std::strstr(text, "lock:"); line; line = std::strstr(line + 1, "lock:")) {
    const char *end = std::strchr(line, '\n');
    const std::string one(line, end ? size_t(end - line) : std::strlen(line));
    if (one.find("OFDLCK") == std::string::npos) continue;
    if (one.find("WRITE") != std::string::npos) {
      *mode = lock_mode::exclusive;
      return true;
    }
    if (one.find("READ") != std::string::npos) {
      *mode = lock_mode::shared;
      holds = true;
    }
  }
  return holds;
}

}  // namespace

os_result open_descriptor_lock(int fd, std::unique_ptr<lock_file> *out, bool *held,
                               lock_mode *held_mode) {
  opened_file file;
  const os_result described = posix::describe_descriptor(fd, &file);
  if (described.status != IPL_OK) return described;
  *held = description_holds_lock(fd, held_mode);
  *out = std::make_unique<ofd_lock_file>(file, *held);
  return {};
}

namespace posix {
// OFD locks keep no per-process state to protect across fork().
void kind_prepare_fork() {}
void kind_after_fork_parent() {}
void kind_after_fork_child(fork_kind) {}
}  // namespace posix

os_result open_lock_file(const open_request &request, std::unique_ptr<lock_file> *out) {
  auto file = std::make_unique<ofd_lock_file>(posix::absolute_path(request.path), request.flags,
                                              request.create_mode);
  const os_result opened = file->open();
  if (opened.status != IPL_OK) return opened;
  *out = std::move(file);
  return {};
}

const char *backend_name() { return "posix-ofd"; }

}  // namespace ipl::detail

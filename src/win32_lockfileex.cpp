// SPDX-License-Identifier: MIT
// win32_lockfileex.cpp — the Windows backend: LockFileEx on byte 0.
//
// What the OS gives
//   LockFileEx / UnlockFileEx lock a byte range of a file, exclusive or
//   shared, waiting or failing at once (LOCKFILE_FAIL_IMMEDIATELY). A lock
//   belongs to the open file object (one CreateFileW call) and the process,
//   so two handles opened separately exclude each other even inside one
//   thread, and the kernel drops the locks when the handle is closed or its
//   process dies (TerminateProcess included).
//
// Interoperability with fasteners
//   fasteners' reader-writer lock calls LockFileEx on offset 0, length 1; its
//   exclusive lock calls msvcrt.locking on the byte at the file position,
//   which is the end of the file — byte 0 of a lock file nobody writes to.
//   So we lock offset 0, length 1, and never write to the file.
//
// What it gets wrong
//   - Windows byte-range locks are mandatory: while byte 0 is locked, other
//     handles cannot read or write that byte. A lock file that is never
//     written (ours) does not care; a file that also holds data would.
//   - Microsoft documents that the release on close or process exit happens
//     "when the system gets to it". We unlock explicitly before closing, so a
//     handle closed by ipl_close() frees the lock at once; a killed holder is
//     released by the kernel.
//   - A blocking LockFileEx cannot be given a timeout. The documented way
//     out — an overlapped handle, an event, WaitForSingleObject(timeout) and
//     CancelIoEx — does not work under Wine 8 (the event of a waiting
//     overlapped LockFileEx never fires, CancelIoEx then fails, and
//     GetOverlappedResult reports success for a lock never granted), and CI
//     can only run Windows code under Wine.
//
// What we do about it
//   - Forever waits: a blocking LockFileEx (no LOCKFILE_FAIL_IMMEDIATELY) on
//     a synchronous handle; the thread sleeps in the kernel until the lock is
//     granted.
//   - Timed waits: LOCKFILE_FAIL_IMMEDIATELY tries with wait_policy's
//     capped, jittered back-off (50 us doubling to 10 ms), slept on a
//     high-resolution waitable timer where the system has one. IPL_E_TIMEOUT
//     only once the deadline has passed on the monotonic clock
//     (steady_clock, i.e. QueryPerformanceCounter).
//   - Opening: the UTF-8 path becomes UTF-16, made absolute with
//     GetFullPathNameW ('/' and '\' both separate), and long paths get the
//     \\?\ prefix. Device names (NUL, CON, COM1, \\.\...) are rejected
//     before anything opens them, folders too; the handle is not inheritable
//     and shares read, write and delete with everyone. The absolute path is
//     kept: reopening and the identity check below never depend on the
//     current directory at the time.
//   - Read-only lock files: when read-write access is denied (the read-only
//     attribute, an ACL, write-protected media), the file is opened for
//     reading only. LockFileEx takes shared locks on such a handle; the core
//     refuses exclusive ones with IPL_E_ACCESS and the refused open's error.
//   - Replaced lock files: after every grant the core asks whether the path
//     still names the locked file. We open the path with no data access
//     (so no share mode can refuse it, and it locks nothing) and compare the volume serial number
//     and file id with the locked handle's; a locked file that is delete-
//     pending (DeleteFileW while handles are open, without POSIX semantics)
//     does not count as named by the path either. The core then unlocks,
//     reopens the path and waits again.
//
// What Wine 8 (the CI) does differently
//   It never reports DeletePending, and a file deleted while open stays at
//   its path (openable, the same file) until the last handle closes, so a
//   deleted lock file is never replaced there. MoveFileExW cannot replace a
//   file that is open (ERROR_ACCESS_DENIED, as on Windows without POSIX
//   semantics), but renaming the folder above an open file works; the tests
//   replace the lock file that way.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <winternl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cwctype>
#include <memory>
#include <string>
#include <vector>

#include "platform.hpp"
#include "wait_policy.hpp"

#ifndef CREATE_WAITABLE_TIMER_HIGH_RESOLUTION
#define CREATE_WAITABLE_TIMER_HIGH_RESOLUTION 0x00000002
#endif

namespace ipl::detail {
namespace {

// ---- Errors ------------------------------------------------------------------

os_result os_failure(int status, DWORD err) { return os_result{status, int(err)}; }

// Maps a GetLastError() value from CreateFileW / CreateDirectoryW /
// GetFileAttributesW to a named status.
os_result open_failure(DWORD err) {
  switch (err) {
    case ERROR_ACCESS_DENIED:
    case ERROR_WRITE_PROTECT:
    case ERROR_PRIVILEGE_NOT_HELD:
      return os_failure(IPL_E_ACCESS, err);
    case ERROR_FILENAME_EXCED_RANGE:
    case ERROR_BUFFER_OVERFLOW:
      return os_failure(IPL_E_NAME_TOO_LONG, err);
    case ERROR_DIRECTORY:
      return os_failure(IPL_E_BAD_PARENT, err);
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
      return os_failure(IPL_E_NO_MEMORY, err);
    default:
      return os_failure(IPL_E_OS, err);
  }
}

os_result lock_failure(DWORD err) {
  switch (err) {
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
      return os_failure(IPL_E_NO_MEMORY, err);
    default:
      return os_failure(IPL_E_OS, err);
  }
}

bool is_busy(DWORD err) { return err == ERROR_LOCK_VIOLATION; }

// ---- Paths -------------------------------------------------------------------

// NTFS and the other Windows file systems allow 255 UTF-16 units per name,
// and the \\?\ form allows about 32767 in all.
constexpr size_t kMaxComponent = 255;
constexpr size_t kMaxPath = 32767;
// CreateDirectoryW wants room for an 8.3 name below a folder without \\?\.
constexpr size_t kLongPathFrom = MAX_PATH - 12;

bool starts_with(const std::wstring &s, const wchar_t *prefix) {
  return s.compare(0, std::wcslen(prefix), prefix) == 0;
}

os_result utf8_to_utf16(const char *utf8, std::wstring *out) {
  const int length = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, nullptr, 0);
  if (length <= 0) return open_failure(GetLastError());
  std::wstring wide(size_t(length), L'\0');
  if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, &wide[0], length) != length)
    return open_failure(GetLastError());
  wide.resize(size_t(length) - 1);  // drop the terminating NUL
  *out = std::move(wide);
  return {};
}

// True when `name` (one path component) is a DOS device name: CON, PRN, AUX,
// NUL, COM0-9, LPT0-9, CONIN$, CONOUT$ — in any case, with or without an
// extension or trailing spaces. Without \\?\, Windows opens the device for
// such a name in any folder.
bool is_device_name(std::wstring name) {
  name = name.substr(0, name.find_first_of(L".:"));
  while (!name.empty() && name.back() == L' ') name.pop_back();
  for (wchar_t &c : name) c = wchar_t(std::towupper(c));
  if (name == L"CON" || name == L"PRN" || name == L"AUX" || name == L"NUL" ||
      name == L"CONIN$" || name == L"CONOUT$")
    return true;
  return name.size() == 4 && (starts_with(name, L"COM") || starts_with(name, L"LPT")) &&
         name[3] >= L'0' && name[3] <= L'9';
}

std::wstring last_component(const std::wstring &path) {
  const size_t sep = path.find_last_of(L"\\/");
  return sep == std::wstring::npos ? path : path.substr(sep + 1);
}

// Turns the user's path into the one CreateFileW gets: absolute, with '\'
// separators, \\?\-prefixed when long. Devices are IPL_E_NOT_REGULAR_FILE
// here, before anything opens them.
os_result win32_path(const char *utf8_path, std::wstring *out) {
  std::wstring path;
  const os_result converted = utf8_to_utf16(utf8_path, &path);
  if (converted.status != IPL_OK) return converted;
  std::replace(path.begin(), path.end(), L'/', L'\\');

  // \\.\ is the device namespace (pipes, volumes, COM ports).
  if (starts_with(path, L"\\\\.\\")) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
  std::wstring full;
  if (starts_with(path, L"\\\\?\\")) {
    // Already a verbatim path: Windows takes it as it is, device names
    // included, except the root of the object namespace.
    if (starts_with(path, L"\\\\?\\GLOBALROOT")) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
    full = path;
  } else {
    if (is_device_name(last_component(path))) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
    const DWORD needed = GetFullPathNameW(path.c_str(), 0, nullptr, nullptr);
    if (needed == 0) return open_failure(GetLastError());
    full.assign(needed, L'\0');
    const DWORD written = GetFullPathNameW(path.c_str(), needed, &full[0], nullptr);
    if (written == 0 || written >= needed) return open_failure(GetLastError());
    full.resize(written);
    if (starts_with(full, L"\\\\.\\")) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
    if (full.size() >= kLongPathFrom) {
      if (starts_with(full, L"\\\\")) {
        full = L"\\\\?\\UNC\\" + full.substr(2);  // \\server\share\...
      } else {
        full = L"\\\\?\\" + full;
      }
    }
  }

  if (full.size() > kMaxPath) return os_failure(IPL_E_NAME_TOO_LONG, ERROR_FILENAME_EXCED_RANGE);
  size_t start = 0;
  for (;;) {
    const size_t sep = full.find(L'\\', start);
    const size_t end = sep == std::wstring::npos ? full.size() : sep;
    if (end - start > kMaxComponent)
      return os_failure(IPL_E_NAME_TOO_LONG, ERROR_FILENAME_EXCED_RANGE);
    if (sep == std::wstring::npos) break;
    start = sep + 1;
  }
  *out = std::move(full);
  return {};
}

// ---- Opening -----------------------------------------------------------------

enum class path_kind { missing, folder, other, unknown };

path_kind kind_of(const std::wstring &path, DWORD *err) {
  const DWORD attributes = GetFileAttributesW(path.c_str());
  if (attributes == INVALID_FILE_ATTRIBUTES) {
    *err = GetLastError();
    // ERROR_DIRECTORY: a name below a file (file\x), which does not exist
    // either; the walk up in make_parents then finds the file.
    return *err == ERROR_FILE_NOT_FOUND || *err == ERROR_PATH_NOT_FOUND ||
                   *err == ERROR_DIRECTORY
               ? path_kind::missing
               : path_kind::unknown;
  }
  *err = 0;
  return (attributes & FILE_ATTRIBUTE_DIRECTORY) ? path_kind::folder : path_kind::other;
}

// The lock file's path could not be opened because a folder on the way is
// missing (ERROR_PATH_NOT_FOUND). Finds out why, and creates the missing
// folders when `create` is set. Returns IPL_OK when all parents now exist
// (perhaps made by another thread or process meanwhile), IPL_E_BAD_PARENT
// when one is a file, `missing` when one is missing and `create` is off, or
// the failure of CreateDirectoryW.
os_result make_parents(const std::wstring &path, bool create, os_result missing) {
  // Walk up until a prefix exists (or cannot be examined: the root, or a
  // share; creating below it will report the real problem).
  std::vector<std::wstring> to_create;
  std::wstring prefix = path;
  for (;;) {
    const size_t sep = prefix.find_last_of(L'\\');
    if (sep == std::wstring::npos || sep == 0) break;
    prefix.resize(sep);
    if (!prefix.empty() && prefix.back() == L'\\') continue;  // "a\\b"
    DWORD err = 0;
    const path_kind kind = kind_of(prefix, &err);
    if (kind == path_kind::other) return os_failure(IPL_E_BAD_PARENT, ERROR_DIRECTORY);
    if (kind != path_kind::missing) break;
    to_create.push_back(prefix);
  }
  if (to_create.empty()) return {};
  if (!create) return missing;
  for (auto it = to_create.rbegin(); it != to_create.rend(); ++it) {
    if (CreateDirectoryW(it->c_str(), nullptr)) continue;
    const DWORD err = GetLastError();
    if (err != ERROR_ALREADY_EXISTS) return open_failure(err);
    DWORD ignored = 0;
    if (kind_of(*it, &ignored) != path_kind::folder)
      return os_failure(IPL_E_BAD_PARENT, ERROR_DIRECTORY);
  }
  return {};
}

// Read and write access, as POSIX opens O_RDWR (read-only below, when
// that is refused). NULL security attributes: not inheritable.
HANDLE open_handle(const std::wstring &path, DWORD access, DWORD disposition) {
  return CreateFileW(path.c_str(), access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                     nullptr, disposition, FILE_ATTRIBUTE_NORMAL, nullptr);
}

// Errors of a read-write open after which a read-only open may work.
bool is_write_denied(DWORD err) { return err == ERROR_ACCESS_DENIED || err == ERROR_WRITE_PROTECT; }

struct opened_handle {
  HANDLE handle = INVALID_HANDLE_VALUE;
  bool writable = true;
  DWORD write_denied_error = 0;  // GetLastError of the refused read-write open
};

// Opens (by default creating, with parent folders) the file at `path`, an
// absolute path from win32_path().
os_result open_regular_file(const std::wstring &path, uint32_t flags, opened_handle *out) {
  // CreateFileW fails on a folder with a bare ERROR_ACCESS_DENIED.
  DWORD err = 0;
  if (kind_of(path, &err) == path_kind::folder) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);

  // As on POSIX: a missing folder is an OS error (ENOENT) with
  // IPL_OPEN_NO_CREATE, IPL_E_BAD_PARENT with IPL_OPEN_NO_CREATE_DIRS.
  const os_result missing = (flags & IPL_OPEN_NO_CREATE)
                                ? os_failure(IPL_E_OS, ERROR_PATH_NOT_FOUND)
                                : os_failure(IPL_E_BAD_PARENT, ERROR_PATH_NOT_FOUND);
  const bool create = !(flags & (IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS));
  const DWORD disposition = (flags & IPL_OPEN_NO_CREATE) ? OPEN_EXISTING : OPEN_ALWAYS;
  const DWORD read_write = GENERIC_READ | GENERIC_WRITE;
  HANDLE handle = open_handle(path, read_write, disposition);
  // A few rounds: another thread or process may be creating (or removing)
  // the same folders at the same time.
  for (int round = 0; round < 3 && handle == INVALID_HANDLE_VALUE &&
                      GetLastError() == ERROR_PATH_NOT_FOUND;
       ++round) {
    const os_result parents = make_parents(path, create, missing);
    if (parents.status != IPL_OK) return parents;
    handle = open_handle(path, read_write, disposition);
  }
  opened_handle opened;
  if (handle == INVALID_HANDLE_VALUE) {
    const DWORD open_error = GetLastError();
    // The folder may have appeared after the check above.
    if (open_error == ERROR_ACCESS_DENIED && kind_of(path, &err) == path_kind::folder)
      return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
    if (!is_write_denied(open_error)) return open_failure(open_error);
    // Read access is enough for shared locks. Never created here: a file
    // we could not create read-write is the refused open's failure.
    handle = open_handle(path, GENERIC_READ, OPEN_EXISTING);
    if (handle == INVALID_HANDLE_VALUE) return open_failure(open_error);
    opened.writable = false;
    opened.write_denied_error = open_error;
  }

  // Anything but a file on disk (a console, a pipe, a character device)
  // reached through a name we did not recognise.
  if (GetFileType(handle) != FILE_TYPE_DISK) {
    CloseHandle(handle);
    return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
  }
  opened.handle = handle;
  *out = opened;
  return {};
}

// ---- File identity -------------------------------------------------------------

// What tells two files apart: the file system's 64-bit file reference
// (FileInternalInformation, the index GetFileInformationByHandle gives) and
// the creation time. The reference alone may be reused: FAT derives it from
// the directory entry's offset, so a file deleted and made again in one
// folder can get the old one back; ReFS ids are 128 bits wide. A new file
// never has the old one's creation time as well. (Under Wine the creation
// time moves when the file is written: a written lock file is reopened
// once more than needed, which is harmless.)
//
// The volume serial number is not compared. Windows answers it cheaply, but
// Wine asks its mount manager, another process (0.3 to 2 ms a call; a lock
// and unlock is about 55 us; the CI stress test took 48 s instead of 20).
// A different volume under the same absolute path needs a mount point or
// junction put in place of a folder on the way, and then a file with our
// reference and our creation time to the 100 ns.
struct file_identity {
  int64_t reference = 0;
  int64_t created = 0;

  bool operator==(const file_identity &other) const {
    return reference == other.reference && created == other.created;
  }
};

// ntdll's NtQueryInformationFile, which every Windows process has loaded:
// kernel32 has no call that gives the file reference without the volume's.
using query_information_file_fn = decltype(&NtQueryInformationFile);

query_information_file_fn query_information_file() {
  static const query_information_file_fn fn = [] {
    const HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    const FARPROC proc = ntdll ? GetProcAddress(ntdll, "NtQueryInformationFile") : nullptr;
    // Through void(*)(), the one cast -Wcast-function-type allows.
    return reinterpret_cast<query_information_file_fn>(reinterpret_cast<void (*)()>(proc));
  }();
  return fn;
}

// On failure GetLastError() says why.
bool identify(HANDLE handle, file_identity *out) {
  FILE_BASIC_INFO basic;
  if (!GetFileInformationByHandleEx(handle, FileBasicInfo, &basic, sizeof basic)) return false;
  out->created = basic.CreationTime.QuadPart;
  IO_STATUS_BLOCK status_block;
  LARGE_INTEGER reference;  // FILE_INTERNAL_INFORMATION
  const query_information_file_fn query = query_information_file();
  if (query && query(handle, &status_block, &reference, sizeof reference,
                     FILE_INFORMATION_CLASS(FileInternalInformation)) >= 0) {
    out->reference = reference.QuadPart;
    return true;
  }
  // The same number, the slow way (and with a GetLastError() on failure).
  BY_HANDLE_FILE_INFORMATION info;
  if (!GetFileInformationByHandle(handle, &info)) return false;
  out->reference = int64_t((uint64_t(info.nFileIndexHigh) << 32) | info.nFileIndexLow);
  return true;
}

// Whether the file has been deleted while open (without POSIX semantics its
// name stays taken until the last handle closes). False where the system
// cannot say.
bool is_delete_pending(HANDLE handle) {
  FILE_STANDARD_INFO info;
  return GetFileInformationByHandleEx(handle, FileStandardInfo, &info, sizeof info) &&
         info.DeletePending;
}

// ---- Waiting -------------------------------------------------------------------

// The polling sleep. Sleep() counts whole milliseconds on a 15.6 ms tick
// unless someone raised the timer resolution; a high-resolution waitable
// timer (Windows 10 1803+, Wine) sleeps for the microseconds asked. An event
// beside it lets ipl_cancel() end the sleep at once.
class timer_sleep final : public poll_sleep {
 public:
  timer_sleep() {
    timer_ = CreateWaitableTimerExW(nullptr, nullptr, CREATE_WAITABLE_TIMER_HIGH_RESOLUTION,
                                    TIMER_ALL_ACCESS);
    if (!timer_) timer_ = CreateWaitableTimerExW(nullptr, nullptr, 0, TIMER_ALL_ACCESS);
    woken_ = CreateEventW(nullptr, TRUE, FALSE, nullptr);  // manual reset: a wake sticks
  }
  ~timer_sleep() override {
    if (timer_) CloseHandle(timer_);
    if (woken_) CloseHandle(woken_);
  }
  timer_sleep(const timer_sleep &) = delete;
  timer_sleep &operator=(const timer_sleep &) = delete;

  void sleep_until(wait_deadline::clock::time_point until) override {
    const auto left = until - wait_deadline::clock::now();
    if (left <= wait_deadline::clock::duration::zero()) return;
    // Rounded up, so a sleep to the deadline ends at or after it.
    const int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(left).count() + 1;
    if (timer_ && woken_) {
      LARGE_INTEGER due;
      due.QuadPart = -us * 10;  // relative, 100 ns units
      if (SetWaitableTimer(timer_, &due, 0, nullptr, nullptr, FALSE)) {
        const HANDLE either[2] = {timer_, woken_};
        const DWORD woke = WaitForMultipleObjects(2, either, FALSE, INFINITE);
        if (woke == WAIT_OBJECT_0 || woke == WAIT_OBJECT_0 + 1) return;
      }
    }
    const DWORD ms = DWORD((us + 999) / 1000);
    if (woken_) {
      WaitForSingleObject(woken_, ms);
    } else {
      Sleep(ms);
    }
  }

  void wake() override {
    if (woken_) SetEvent(woken_);
  }

 private:
  HANDLE timer_ = nullptr;
  HANDLE woken_ = nullptr;
};

DWORD lock_flags(lock_mode mode) {
  return mode == lock_mode::exclusive ? LOCKFILE_EXCLUSIVE_LOCK : 0;
}

// Byte 0, length 1: fasteners' byte (see the top of this file).
BOOL lock_byte_zero(HANDLE handle, DWORD flags) {
  OVERLAPPED at_zero;
  std::memset(&at_zero, 0, sizeof at_zero);
  return LockFileEx(handle, flags, 0, 1, 0, &at_zero);
}

// One lock request for wait_policy: tries with LOCKFILE_FAIL_IMMEDIATELY, and
// a blocking LockFileEx for forever waits (nothing can interrupt it, so timed
// waits poll, and ipl_cancel() cannot end a forever wait).
class lockfileex_attempts final : public lock_attempts {
 public:
  lockfileex_attempts(HANDLE handle, lock_mode mode) : handle_(handle), flags_(lock_flags(mode)) {}

  os_result try_lock() override {
    if (lock_byte_zero(handle_, flags_ | LOCKFILE_FAIL_IMMEDIATELY)) return {};
    const DWORD err = GetLastError();
    return is_busy(err) ? os_failure(IPL_E_TIMEOUT, 0) : lock_failure(err);
  }

  os_result wait_lock() override {
    // A synchronous handle: LockFileEx returns once the lock is granted.
    if (lock_byte_zero(handle_, flags_)) return {};
    return lock_failure(GetLastError());
  }

  bool wait_is_interruptible() const override { return false; }
  bool forever_blocks_uninterruptibly() const override { return true; }

 private:
  HANDLE handle_;
  DWORD flags_;
};

class win32_lock_file final : public lock_file {
 public:
  win32_lock_file(std::wstring path, uint32_t flags) : path_(std::move(path)), flags_(flags) {}
  ~win32_lock_file() override { drop_handle(); }

  os_result open(uint32_t extra_flags = 0) {
    opened_handle opened;
    const os_result result = open_regular_file(path_, flags_ | extra_flags, &opened);
    if (result.status != IPL_OK) return result;
    if (!identify(opened.handle, &identity_)) {
      const DWORD err = GetLastError();
      CloseHandle(opened.handle);
      return lock_failure(err);
    }
    file_ = opened;
    return {};
  }

  os_result lock(lock_mode mode, const wait_context &wait) override {
    lockfileex_attempts attempts(file_.handle, mode);
    const os_result result = wait_for_lock(attempts, wait);
    held_ = result.status == IPL_OK;
    return result;
  }

  os_result unlock() override {
    OVERLAPPED at_zero;
    std::memset(&at_zero, 0, sizeof at_zero);
    if (!UnlockFileEx(file_.handle, 0, 1, 0, &at_zero)) return lock_failure(GetLastError());
    held_ = false;
    return {};
  }

  // A shared lock on the byte beside our exclusive one, then one unlock:
  // Windows removes the exclusive lock first when a range holds both.
  os_result downgrade() override {
    if (!lock_byte_zero(file_.handle, LOCKFILE_FAIL_IMMEDIATELY)) return lock_failure(GetLastError());
    OVERLAPPED at_zero;
    std::memset(&at_zero, 0, sizeof at_zero);
    if (!UnlockFileEx(file_.handle, 0, 1, 0, &at_zero)) return lock_failure(GetLastError());
    return {};
  }

  // A handle asking for an exclusive lock over its own shared one would
  // wait for itself: Windows has no atomic upgrade.
  os_result upgrade(const wait_context &) override { return os_failure(IPL_E_UNSUPPORTED, 0); }

  // A probe through a second handle: the lock's state without this
  // handle's. While this handle holds it shared, the probe cannot tell this
  // handle's shared lock from another's: IPL_E_UNSUPPORTED.
  os_result query(bool holding, lock_mode held_mode, int *state, int64_t *holder_pid) override {
    if (holder_pid) *holder_pid = -1;
    if (holding && held_mode == lock_mode::exclusive) {
      *state = IPL_STATE_FREE;
      return {};
    }
    if (holding) return os_failure(IPL_E_UNSUPPORTED, 0);
    HANDLE probe = CreateFileW(path_.c_str(), GENERIC_READ,
                               FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                               OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
    if (probe == INVALID_HANDLE_VALUE) return open_failure(GetLastError());
    OVERLAPPED at_zero;
    std::memset(&at_zero, 0, sizeof at_zero);
    if (lock_byte_zero(probe, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY)) {
      UnlockFileEx(probe, 0, 1, 0, &at_zero);
      *state = IPL_STATE_FREE;
    } else if (lock_byte_zero(probe, LOCKFILE_FAIL_IMMEDIATELY)) {
      UnlockFileEx(probe, 0, 1, 0, &at_zero);
      *state = IPL_STATE_SHARED;
    } else {
      *state = IPL_STATE_EXCLUSIVE;
    }
    CloseHandle(probe);
    return {};
  }

  // Windows says nothing of a lock lost on a server: only the path is
  // checked.
  os_result check(lock_mode) override {
    bool same = false;
    const os_result checked = still_at_path(&same);
    if (checked.status != IPL_OK) return checked;
    return same ? os_result{} : os_failure(IPL_E_LOST, 0);
  }

  os_result remove() override {
    bool same = false;
    const os_result checked = still_at_path(&same);
    if (checked.status != IPL_OK) return checked;
    if (same && !DeleteFileW(path_.c_str())) {
      const DWORD err = GetLastError();
      if (err != ERROR_FILE_NOT_FOUND) return open_failure(err);
    }
    const os_result unlocked = unlock();
    // Closed at once: a deleted file stays at its path while a handle is
    // open (Windows without POSIX semantics, Wine). The core reopens the
    // path before this handle's next acquire or query.
    if (unlocked.status == IPL_OK) drop_handle();
    return unlocked;
  }

  bool writable() const override { return file_.writable; }
  int write_denied_error() const override { return int(file_.write_denied_error); }

  os_result still_at_path(bool *same) override {
    *same = false;
    if (is_delete_pending(file_.handle)) return {};
    // No data access: no share mode can refuse it, and it locks nothing.
    HANDLE probe = CreateFileW(path_.c_str(), FILE_READ_ATTRIBUTES,
                               FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                               OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
    if (probe == INVALID_HANDLE_VALUE) {
      const DWORD err = GetLastError();
      DWORD ignored = 0;
      // Gone, or a folder now (which CreateFileW refuses as access denied):
      // not our file; the reopen reports what the path names.
      if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND || err == ERROR_DIRECTORY ||
          (err == ERROR_ACCESS_DENIED && kind_of(path_, &ignored) == path_kind::folder))
        return {};
      return open_failure(err);
    }
    file_identity named;
    const bool known = identify(probe, &named);
    const DWORD err = GetLastError();
    CloseHandle(probe);
    if (!known) return lock_failure(err);
    *same = named == identity_;
    return {};
  }

  os_result reopen() override {
    drop_handle();
    return open();
  }

  os_result reopen_existing(bool *found) override {
    drop_handle();
    const os_result opened = open(IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS);
    *found = opened.status == IPL_OK;
    const bool missing = opened.status == IPL_E_OS && (opened.os_error == ERROR_FILE_NOT_FOUND ||
                                                       opened.os_error == ERROR_PATH_NOT_FOUND);
    return missing ? os_result{} : opened;
  }

  // Windows has no fork(): a handle never reaches another process.
  bool inherited() const override { return false; }

 private:
  // Closing would release too, but Windows may do that late.
  void drop_handle() {
    if (file_.handle == INVALID_HANDLE_VALUE) return;
    if (held_) unlock();
    CloseHandle(file_.handle);
    file_ = opened_handle{};
    held_ = false;
  }

  const std::wstring path_;  // absolute, from win32_path()
  const uint32_t flags_;
  opened_handle file_;
  file_identity identity_;
  bool held_ = false;
};

}  // namespace

// Not on Windows: see ipl.h.
os_result open_descriptor_lock(int, std::unique_ptr<lock_file> *, bool *, lock_mode *) {
  return os_failure(IPL_E_UNSUPPORTED, 0);
}

os_result open_lock_file(const open_request &request, std::unique_ptr<lock_file> *out) {
  if (request.flags & IPL_OPEN_INHERITABLE) return os_failure(IPL_E_UNSUPPORTED, 0);
  // request.create_mode is ignored: new files inherit their folder's ACL.
  std::wstring path;
  const os_result made_path = win32_path(request.path, &path);
  if (made_path.status != IPL_OK) return made_path;
  auto file = std::make_unique<win32_lock_file>(std::move(path), request.flags);
  const os_result opened = file->open();
  if (opened.status != IPL_OK) return opened;
  *out = std::move(file);
  return {};
}

const char *backend_name() { return "win32-lockfileex"; }

// ERROR_FILE_INVALID: "the volume for a file has been externally altered so
// that the opened file is no longer valid".
const int kReplacedTooOftenError = ERROR_FILE_INVALID;

std::unique_ptr<poll_sleep> make_poll_sleep() { return std::make_unique<timer_sleep>(); }

// No fork() on Windows.
void notice_fork() {}

}  // namespace ipl::detail

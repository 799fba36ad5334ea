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
//   - Timed waits: LOCKFILE_FAIL_IMMEDIATELY tries with capped, jittered
//     back-off (50 us doubling to 10 ms), slept on a high-resolution waitable
//     timer where the system has one. We only return IPL_E_TIMEOUT once the
//     deadline has passed on the monotonic clock (steady_clock, i.e.
//     QueryPerformanceCounter).
//   - Opening: the UTF-8 path becomes UTF-16, made absolute with
//     GetFullPathNameW ('/' and '\' both separate), and long paths get the
//     \\?\ prefix. Device names (NUL, CON, COM1, \\.\...) are rejected
//     before anything opens them, folders too; the handle is not inheritable
//     and shares read, write and delete with everyone.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include <algorithm>
#include <cstring>
#include <cwctype>
#include <random>
#include <string>
#include <vector>

#include "platform.hpp"

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

HANDLE open_handle(const std::wstring &path, uint32_t flags) {
  // Read and write access, as POSIX opens O_RDWR: a read-only lock file is
  // IPL_E_ACCESS on both. NULL security attributes: not inheritable.
  return CreateFileW(path.c_str(), GENERIC_READ | GENERIC_WRITE,
                     FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                     (flags & IPL_OPEN_NO_CREATE) ? OPEN_EXISTING : OPEN_ALWAYS,
                     FILE_ATTRIBUTE_NORMAL, nullptr);
}

os_result open_regular_file(const char *utf8_path, uint32_t flags, HANDLE *out) {
  std::wstring path;
  const os_result made_path = win32_path(utf8_path, &path);
  if (made_path.status != IPL_OK) return made_path;

  // CreateFileW fails on a folder with a bare ERROR_ACCESS_DENIED.
  DWORD err = 0;
  if (kind_of(path, &err) == path_kind::folder) return os_failure(IPL_E_NOT_REGULAR_FILE, 0);

  // As on POSIX: a missing folder is an OS error (ENOENT) with
  // IPL_OPEN_NO_CREATE, IPL_E_BAD_PARENT with IPL_OPEN_NO_CREATE_DIRS.
  const os_result missing = (flags & IPL_OPEN_NO_CREATE)
                                ? os_failure(IPL_E_OS, ERROR_PATH_NOT_FOUND)
                                : os_failure(IPL_E_BAD_PARENT, ERROR_PATH_NOT_FOUND);
  const bool create = !(flags & (IPL_OPEN_NO_CREATE | IPL_OPEN_NO_CREATE_DIRS));
  HANDLE handle = open_handle(path, flags);
  // A few rounds: another thread or process may be creating (or removing)
  // the same folders at the same time.
  for (int round = 0; round < 3 && handle == INVALID_HANDLE_VALUE &&
                      GetLastError() == ERROR_PATH_NOT_FOUND;
       ++round) {
    const os_result parents = make_parents(path, create, missing);
    if (parents.status != IPL_OK) return parents;
    handle = open_handle(path, flags);
  }
  if (handle == INVALID_HANDLE_VALUE) {
    const DWORD open_error = GetLastError();
    // The folder may have appeared after the check above.
    if (open_error == ERROR_ACCESS_DENIED && kind_of(path, &err) == path_kind::folder)
      return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
    return open_failure(open_error);
  }

  // Anything but a file on disk (a console, a pipe, a character device)
  // reached through a name we did not recognise.
  if (GetFileType(handle) != FILE_TYPE_DISK) {
    CloseHandle(handle);
    return os_failure(IPL_E_NOT_REGULAR_FILE, 0);
  }
  *out = handle;
  return {};
}

// ---- Waiting -------------------------------------------------------------------

// Jittered back-off so that many pollers do not wake in lock-step.
class backoff {
 public:
  std::chrono::microseconds next() {
    const auto now = current_;
    current_ = std::min(current_ * 2, kCap);
    std::uniform_int_distribution<long> jitter(long(now.count()) * 3 / 4,
                                               long(now.count()) * 5 / 4);
    return std::chrono::microseconds(jitter(random_));
  }

 private:
  static constexpr std::chrono::microseconds kFirst{50};
  static constexpr std::chrono::microseconds kCap{10000};
  std::chrono::microseconds current_ = kFirst;
  std::minstd_rand random_{std::random_device{}()};
};

// Sleeps for short intervals. Sleep() counts whole milliseconds on a
// 15.6 ms tick unless someone raised the timer resolution; a
// high-resolution waitable timer (Windows 10 1803+, Wine) sleeps for the
// microseconds asked. Without one, Sleep() it is.
class short_sleeper {
 public:
  short_sleeper() {
    timer_ = CreateWaitableTimerExW(nullptr, nullptr, CREATE_WAITABLE_TIMER_HIGH_RESOLUTION,
                                    TIMER_ALL_ACCESS);
    if (!timer_) timer_ = CreateWaitableTimerExW(nullptr, nullptr, 0, TIMER_ALL_ACCESS);
  }
  ~short_sleeper() {
    if (timer_) CloseHandle(timer_);
  }
  short_sleeper(const short_sleeper &) = delete;
  short_sleeper &operator=(const short_sleeper &) = delete;

  void sleep_for(std::chrono::microseconds duration) {
    if (duration.count() <= 0) return;
    if (timer_) {
      LARGE_INTEGER due;
      due.QuadPart = -int64_t(duration.count()) * 10;  // relative, 100 ns units
      if (SetWaitableTimer(timer_, &due, 0, nullptr, nullptr, FALSE) &&
          WaitForSingleObject(timer_, INFINITE) == WAIT_OBJECT_0)
        return;
    }
    Sleep(DWORD((duration.count() + 999) / 1000));
  }

 private:
  HANDLE timer_ = nullptr;
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

class win32_lock_file final : public lock_file {
 public:
  explicit win32_lock_file(HANDLE handle) : handle_(handle) {}
  ~win32_lock_file() override {
    // Closing would release too, but Windows may do that late.
    if (held_) unlock();
    CloseHandle(handle_);
  }

  os_result lock(lock_mode mode, const wait_deadline &deadline) override {
    os_result result;
    if (deadline.is_forever()) {
      // A synchronous handle: LockFileEx returns once the lock is granted.
      if (!lock_byte_zero(handle_, lock_flags(mode))) result = lock_failure(GetLastError());
    } else {
      result = poll_until(mode, deadline);
    }
    held_ = result.status == IPL_OK;
    return result;
  }

  os_result unlock() override {
    OVERLAPPED at_zero;
    std::memset(&at_zero, 0, sizeof at_zero);
    if (!UnlockFileEx(handle_, 0, 1, 0, &at_zero)) return lock_failure(GetLastError());
    held_ = false;
    return {};
  }

 private:
  // One try, then (for a timed wait) tries with back-off until the deadline.
  os_result poll_until(lock_mode mode, const wait_deadline &deadline) {
    const DWORD flags = lock_flags(mode) | LOCKFILE_FAIL_IMMEDIATELY;
    if (lock_byte_zero(handle_, flags)) return {};
    DWORD err = GetLastError();
    if (!is_busy(err)) return lock_failure(err);
    if (deadline.expired()) return os_failure(IPL_E_TIMEOUT, 0);

    backoff delay;
    short_sleeper sleeper;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          deadline.when() - wait_deadline::clock::now());
      // Round up, so the last sleep ends at or after the deadline.
      sleeper.sleep_for(std::min(delay.next(), left + std::chrono::microseconds(1)));
      if (lock_byte_zero(handle_, flags)) return {};
      err = GetLastError();
      if (!is_busy(err)) return lock_failure(err);
      if (deadline.expired()) return os_failure(IPL_E_TIMEOUT, 0);
    }
  }

  HANDLE handle_;
  bool held_ = false;
};

}  // namespace

os_result open_lock_file(const char *path, uint32_t flags, std::unique_ptr<lock_file> *out) {
  HANDLE handle = INVALID_HANDLE_VALUE;
  const os_result opened = open_regular_file(path, flags, &handle);
  if (opened.status != IPL_OK) return opened;
  try {
    *out = std::make_unique<win32_lock_file>(handle);
  } catch (...) {
    CloseHandle(handle);  // the lock_file never took ownership
    throw;
  }
  return {};
}

const char *backend_name() { return "win32-lockfileex"; }

}  // namespace ipl::detail

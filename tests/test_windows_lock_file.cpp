// SPDX-License-Identifier: MIT
// Windows-only tests of the lock file itself (built only for Windows; see
// tests/meson.build): a lock file replaced while someone waits for it, and a
// read-only lock file. They talk to Windows directly (<windows.h>) to
// replace files and set attributes, the way another program would.
//
// Replacing a lock file that others have open depends on the system:
// MoveFileExW(REPLACE_EXISTING) refuses an open target (ERROR_ACCESS_DENIED)
// unless the system renames with POSIX semantics; Windows 10 1809+ on NTFS
// has FileRenameInfoEx for that; Wine 8 has neither, but lets the folder
// above an open file be renamed. replace_at_path() tries the three in turn
// and a test skips, saying so, when none works.
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "ipl/ipl.h"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using ipltest::kBound;
using ipltest::lock_agent;
using ipltest::lock_mode;
using ipltest::status_text;
using ipltest::temp_dir;
using ipltest::try_from_other_process;
using steady = std::chrono::steady_clock;

// How long a waiter must stay blocked while the lock it needs is held
// elsewhere: a negative check, so a window (Wine is slow: generous).
constexpr auto kStaysBlocked = 500ms;

// Not in MinGW's headers for every _WIN32_WINNT (Windows 10 1709+).
constexpr FILE_INFO_BY_HANDLE_CLASS kFileRenameInfoEx = FILE_INFO_BY_HANDLE_CLASS(22);
constexpr DWORD kRenameReplaceIfExists = 0x1;  // FILE_RENAME_FLAG_REPLACE_IF_EXISTS
constexpr DWORD kRenamePosixSemantics = 0x2;   // FILE_RENAME_FLAG_POSIX_SEMANTICS

std::wstring wide(const std::string &utf8) {
  const int length = MultiByteToWideChar(CP_UTF8, 0, utf8.c_str(), -1, nullptr, 0);
  std::wstring out(size_t(length > 0 ? length : 1), L'\0');
  MultiByteToWideChar(CP_UTF8, 0, utf8.c_str(), -1, &out[0], length);
  out.resize(out.size() - 1);
  for (wchar_t &c : out)
    if (c == L'/') c = L'\\';
  return out;
}

std::string parent_of(const std::string &path) { return path.substr(0, path.find_last_of('/')); }

bool create_empty_file(const std::wstring &path) {
  HANDLE file = CreateFileW(path.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, CREATE_NEW,
                            FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) return false;
  CloseHandle(file);
  return true;
}

// The volume and file index of what `path` names; false when it names
// nothing that can be opened.
bool file_index(const std::string &path, uint64_t *volume, uint64_t *index) {
  HANDLE file = CreateFileW(wide(path).c_str(), FILE_READ_ATTRIBUTES,
                            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                            OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) return false;
  BY_HANDLE_FILE_INFORMATION info;
  const bool ok = GetFileInformationByHandle(file, &info) != 0;
  CloseHandle(file);
  *volume = info.dwVolumeSerialNumber;
  *index = (uint64_t(info.nFileIndexHigh) << 32) | info.nFileIndexLow;
  return ok;
}

// FileRenameInfoEx with POSIX semantics: replaces `target` even while it is
// open (Windows 10 1809+ on NTFS). Wine 8: ERROR_INVALID_PARAMETER.
bool posix_rename(const std::wstring &source, const std::wstring &target) {
  HANDLE file = CreateFileW(source.c_str(), DELETE,
                            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                            OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) return false;
  const size_t name_bytes = target.size() * sizeof(wchar_t);
  std::vector<unsigned char> buffer(sizeof(FILE_RENAME_INFO) + name_bytes);
  auto *info = reinterpret_cast<FILE_RENAME_INFO *>(buffer.data());
  // The first member is a union of BOOLEAN ReplaceIfExists and DWORD Flags.
  const DWORD flags = kRenameReplaceIfExists | kRenamePosixSemantics;
  std::memcpy(info, &flags, sizeof flags);
  info->RootDirectory = nullptr;
  info->FileNameLength = DWORD(name_bytes);
  std::memcpy(info->FileName, target.c_str(), name_bytes + sizeof(wchar_t));
  const bool renamed =
      SetFileInformationByHandle(file, kFileRenameInfoEx, info, DWORD(buffer.size())) != 0;
  CloseHandle(file);
  return renamed;
}

// Puts a new, empty file at `path` while other processes have the old one
// open (and locked). *how says which way worked; false (with the errors in
// *how) when this system offers none.
bool replace_at_path(const std::string &path, std::string *how) {
  const std::wstring target = wide(path);
  const std::wstring fresh = wide(path + ".new");
  if (!create_empty_file(fresh)) {
    *how = "cannot create " + path + ".new";
    return false;
  }
  if (MoveFileExW(fresh.c_str(), target.c_str(), MOVEFILE_REPLACE_EXISTING)) {
    *how = "MoveFileExW(MOVEFILE_REPLACE_EXISTING)";
    return true;
  }
  const DWORD move_error = GetLastError();
  if (posix_rename(fresh, target)) {
    *how = "FileRenameInfoEx with POSIX semantics";
    return true;
  }
  const DWORD rename_error = GetLastError();
  DeleteFileW(fresh.c_str());
  // The folder above: renamed away (the open file goes with it), then made
  // again with a new file in it.
  const std::string folder = parent_of(path);
  if (MoveFileExW(wide(folder).c_str(), wide(folder + ".old").c_str(), 0) &&
      CreateDirectoryW(wide(folder).c_str(), nullptr) && create_empty_file(target)) {
    *how = "the folder renamed away and made again";
    return true;
  }
  *how = "MoveFileExW: error " + std::to_string(move_error) + ", FileRenameInfoEx: error " +
         std::to_string(rename_error) + ", folder rename: error " +
         std::to_string(GetLastError());
  return false;
}

// Checks that what `path` names changed.
testing::AssertionResult names_another_file(const std::string &path, uint64_t volume,
                                            uint64_t index) {
  uint64_t now_volume = 0;
  uint64_t now_index = 0;
  if (!file_index(path, &now_volume, &now_index))
    return testing::AssertionFailure() << path << " names nothing after the replacement";
  if (now_volume == volume && now_index == index)
    return testing::AssertionFailure() << path << " still names the old file";
  return testing::AssertionSuccess();
}

// ---- The lock file replaced while a waiter waits -------------------------------

// A holds the lock file, B waits for it (`waiter_mode`, `waiter_timeout_ms`),
// the file is replaced by a new one, which C locks exclusively; A releases.
// B must not be granted while C holds the file the path names, and gets it
// once C releases.
void replaced_while_waiting(lock_mode waiter_mode, int64_t waiter_timeout_ms) {
  temp_dir dir;
  const std::string path = dir.path("locks/replaced.lock");
  lock_agent a(path);
  ASSERT_TRUE(a.started());
  ASSERT_EQ(a.acquire(lock_mode::exclusive, 0), IPL_OK);
  uint64_t old_volume = 0;
  uint64_t old_index = 0;
  ASSERT_TRUE(file_index(path, &old_volume, &old_index));

  lock_agent b(path);
  ASSERT_TRUE(b.started());
  b.start_acquire(waiter_mode, waiter_timeout_ms);
  ASSERT_TRUE(b.silent_for(kStaysBlocked)) << "B was not blocked by A";

  std::string how;
  if (!replace_at_path(path, &how)) GTEST_SKIP() << "cannot replace an open file here: " << how;
  SCOPED_TRACE("replaced by " + how);
  ASSERT_TRUE(names_another_file(path, old_volume, old_index));

  lock_agent c(path);
  ASSERT_TRUE(c.started());
  ASSERT_EQ(c.acquire(lock_mode::exclusive, 0), IPL_OK) << "the new file is not free";

  ASSERT_EQ(a.release(lock_mode::exclusive), IPL_OK);
  // Catches: no identity check after the grant (B holds the old file while C
  // holds the one the path names: two holders).
  EXPECT_TRUE(b.silent_for(kStaysBlocked)) << "B was granted the old file while C holds the new";

  ASSERT_EQ(c.release(lock_mode::exclusive), IPL_OK);
  EXPECT_EQ(b.reply(), IPL_OK);
  // Catches: B's second lock taken on something other than the file at the
  // path (a stale handle, or a path resolved anew against another folder).
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "B does not hold the file the path names";
  EXPECT_EQ(b.release(waiter_mode), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

// Catches: a blocking (IPL_WAIT_FOREVER) LockFileEx granted on the replaced
// file and kept.
TEST(WaitReplacedWin32, ForeverWaiterWaitsForTheNewFile) {
  replaced_while_waiting(lock_mode::exclusive, IPL_WAIT_FOREVER);
}

// Catches: the same through the polling (timed) path, for a shared waiter.
TEST(WaitReplacedWin32, TimedSharedWaiterWaitsForTheNewFile) {
  replaced_while_waiting(lock_mode::shared, int64_t(kBound.count()));
}

// Runs ipl_acquire(lock, timeout_ms) on another thread of this process, so
// the test can go on while it waits (bounded by the timeout).
std::future<int> acquire_async(ipl_lock *lock, int64_t timeout_ms) {
  return std::async(std::launch::async,
                    [lock, timeout_ms] { return ipl_acquire(lock, timeout_ms); });
}

struct handle_closer {
  void operator()(ipl_lock *lock) const { ipl_close(lock); }
};
using handle_ptr = std::unique_ptr<ipl_lock, handle_closer>;

handle_ptr open_handle(const std::string &path, uint32_t flags) {
  ipl_lock *lock = nullptr;
  const int status = ipl_open(path.c_str(), flags, &lock);
  EXPECT_EQ(status, IPL_OK) << path << ": " << status_text(status);
  return handle_ptr(lock);
}

// The folder is moved away while B (IPL_OPEN_NO_CREATE) waits, and nothing
// takes its place: B's acquire fails as its open would, B holds nothing,
// and once the file is back B's next acquire works on it.
// Catches: B granted the moved-away file (old behaviour), a reopen that
// ignores IPL_OPEN_NO_CREATE, and a handle left unusable (or crashing at
// close) after a failed reopen.
TEST(WaitReplacedWin32, FolderGoneWithNoCreateIsTheOpenError) {
  temp_dir dir;
  const std::string folder = dir.path("locks");
  const std::string path = folder + "/gone.lock";
  lock_agent a(path);
  ASSERT_TRUE(a.started());
  ASSERT_EQ(a.acquire(lock_mode::exclusive, 0), IPL_OK);
  handle_ptr b = open_handle(path, IPL_OPEN_NO_CREATE);
  ASSERT_TRUE(b);
  std::future<int> waiting = acquire_async(b.get(), int64_t(kBound.count()));
  ASSERT_EQ(waiting.wait_for(kStaysBlocked), std::future_status::timeout);

  if (!MoveFileExW(wide(folder).c_str(), wide(folder + ".old").c_str(), 0))
    GTEST_SKIP() << "cannot rename a folder with open files in it here: error " << GetLastError();
  ASSERT_EQ(a.release(lock_mode::exclusive), IPL_OK);
  ASSERT_EQ(waiting.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(waiting.get(), IPL_E_OS);
  EXPECT_EQ(ipl_os_error(b.get()), int(ERROR_PATH_NOT_FOUND));
  EXPECT_EQ(GetFileAttributesW(wide(folder).c_str()), INVALID_FILE_ATTRIBUTES)
      << "the reopen created the folder despite IPL_OPEN_NO_CREATE";
  EXPECT_EQ(ipl_release(b.get()), IPL_E_NOT_HELD);

  ASSERT_TRUE(CreateDirectoryW(wide(folder).c_str(), nullptr));
  ASSERT_TRUE(create_empty_file(wide(path)));
  EXPECT_EQ(ipl_acquire(b.get(), 0), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT)
      << "B does not hold the file the path names";
  b.reset();  // ipl_close after a failed reopen and a good one
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

// Sets the current folder for the life of the object.
class current_folder {
 public:
  explicit current_folder(const std::string &folder) {
    wchar_t buffer[MAX_PATH + 1];
    const DWORD n = GetCurrentDirectoryW(MAX_PATH + 1, buffer);
    if (n > 0 && n <= MAX_PATH) saved_.assign(buffer, n);
    ok_ = !saved_.empty() && SetCurrentDirectoryW(wide(folder).c_str());
  }
  ~current_folder() {
    if (!saved_.empty()) SetCurrentDirectoryW(saved_.c_str());
  }
  current_folder(const current_folder &) = delete;
  current_folder &operator=(const current_folder &) = delete;
  bool ok() const { return ok_; }

 private:
  std::wstring saved_;
  bool ok_ = false;
};

// A handle opened with a relative path; the current folder changes; the
// file is replaced while the handle waits. The reopen and the identity check
// must use the folder of the open, not the current one.
// Catches: the relative path kept and resolved again after the change (B
// would create and lock other/relative.lock, and the path stay free).
TEST(WaitReplacedWin32, ReopenUsesTheFolderOfTheOpen) {
  temp_dir dir;
  const std::string folder = dir.path("locks");
  const std::string path = folder + "/relative.lock";
  ASSERT_TRUE(CreateDirectoryW(wide(folder).c_str(), nullptr));
  ASSERT_TRUE(CreateDirectoryW(wide(dir.path("other")).c_str(), nullptr));
  lock_agent a(path);
  ASSERT_TRUE(a.started());
  ASSERT_EQ(a.acquire(lock_mode::exclusive, 0), IPL_OK);

  handle_ptr b;
  {
    current_folder in_locks(folder);
    ASSERT_TRUE(in_locks.ok());
    b = open_handle("relative.lock", 0);
  }
  ASSERT_TRUE(b);
  // The rest runs in "other": a process cannot rename a folder above its
  // own current folder on Windows.
  current_folder in_other(dir.path("other"));
  ASSERT_TRUE(in_other.ok());
  std::future<int> waiting = acquire_async(b.get(), int64_t(kBound.count()));
  ASSERT_EQ(waiting.wait_for(kStaysBlocked), std::future_status::timeout);

  std::string how;
  if (!replace_at_path(path, &how)) GTEST_SKIP() << "cannot replace an open file here: " << how;
  SCOPED_TRACE("replaced by " + how);
  ASSERT_EQ(a.release(lock_mode::exclusive), IPL_OK);
  ASSERT_EQ(waiting.wait_for(kBound), std::future_status::ready);
  ASSERT_EQ(waiting.get(), IPL_OK);
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_E_TIMEOUT)
      << "B does not hold the file the path names";
  EXPECT_EQ(GetFileAttributesW(wide(dir.path("other/relative.lock")).c_str()),
            INVALID_FILE_ATTRIBUTES)
      << "the reopen resolved the relative path against the new current folder";
}

// ---- Read-only lock files --------------------------------------------------------

// Marks a file read-only for the life of the object (and clears the mark at
// the end, so the temporary folder can be removed).
class read_only_mark {
 public:
  explicit read_only_mark(const std::string &path) : path_(wide(path)) {
    ok_ = SetFileAttributesW(path_.c_str(), FILE_ATTRIBUTE_READONLY) != 0;
  }
  ~read_only_mark() { clear(); }
  read_only_mark(const read_only_mark &) = delete;
  read_only_mark &operator=(const read_only_mark &) = delete;
  bool ok() const { return ok_; }
  void clear() { SetFileAttributesW(path_.c_str(), FILE_ATTRIBUTE_NORMAL); }

 private:
  std::wstring path_;
  bool ok_ = false;
};

// True when this system lets a read-write open through the read-only
// attribute (Wine run by root: the attribute is the Unix mode without write
// bits, which CAP_DAC_OVERRIDE passes).
bool read_only_attribute_ignored(const std::string &path) {
  HANDLE file = CreateFileW(wide(path).c_str(), GENERIC_READ | GENERIC_WRITE,
                            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                            OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) return false;
  CloseHandle(file);
  return true;
}

// Catches: a read-only lock file refused at ipl_open (IPL_E_ACCESS: the old
// behaviour), a shared lock that is not really taken on the read-only
// handle, and an exclusive acquire that waits, succeeds, or fails without
// saying why.
TEST(ApiReadOnlyWin32, ReadOnlyAttributeGivesSharedLocksOnly) {
  temp_dir dir;
  const std::string path = dir.path("read-only.lock");
  ASSERT_TRUE(create_empty_file(wide(path)));
  read_only_mark mark(path);
  ASSERT_TRUE(mark.ok());
  if (read_only_attribute_ignored(path))
    GTEST_SKIP() << "this system opens read-only files for writing (Wine run by root)";

  ipl_lock *raw = nullptr;
  int os_error = 0;
  ASSERT_EQ(ipl_open_ex(path.c_str(), IPL_OPEN_NO_CREATE, &raw, &os_error), IPL_OK)
      << "os error " << os_error;
  handle_ptr reader(raw);
  ASSERT_EQ(ipl_acquire_read(reader.get(), 0), IPL_OK);
  // Another read-only handle shares it.
  EXPECT_EQ(try_from_other_process(path, lock_mode::shared), IPL_OK);
  // A writer (once the mark is gone, so it can open read-write) is kept out.
  mark.clear();
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_E_TIMEOUT)
      << "the shared lock on the read-only handle excludes nobody";
  ASSERT_EQ(ipl_release_read(reader.get()), IPL_OK);

  // The handle stays read-only: exclusive is refused at once, with the
  // refused open's error, even with a long timeout.
  const auto start = steady::now();
  EXPECT_EQ(ipl_acquire(reader.get(), int64_t(kBound.count())), IPL_E_ACCESS);
  EXPECT_EQ(ipl_os_error(reader.get()), int(ERROR_ACCESS_DENIED));
  EXPECT_EQ(ipl_acquire_write(reader.get(), IPL_WAIT_FOREVER), IPL_E_ACCESS);
  EXPECT_LT(steady::now() - start, std::chrono::milliseconds(2000));
  EXPECT_EQ(ipl_release(reader.get()), IPL_E_NOT_HELD);
  EXPECT_EQ(try_from_other_process(path, lock_mode::exclusive), IPL_OK);
}

}  // namespace

// SPDX-License-Identifier: MIT
// Tests of ipl::error as a std::system_error (include/ipl/ipl.hpp): its
// error_code and category, the portable conditions it compares equal to,
// the OS error as a std::error_code, and the lock file's path it carries.
// Suite names start with "Wrapper", so they run in the wrapper area.
#include <ipl/ipl.hpp>

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <type_traits>

#include "test_support.hpp"

namespace {

using ipltest::temp_dir;

static_assert(std::is_base_of_v<std::system_error, ipl::error>);
static_assert(std::is_nothrow_copy_constructible_v<ipl::error>,
              "an exception whose copy can throw cannot be thrown safely");

// Runs `action`, which must throw ipl::error; returns it.
template <class Action>
ipl::error caught(Action action) {
  try {
    action();
  } catch (const ipl::error &e) {
    return e;
  }
  ADD_FAILURE() << "no ipl::error thrown";
  return ipl::error(IPL_E_INTERNAL);
}

// Catches: an error_code in the wrong category or with the wrong value, a
// category whose message is not ipl_strerror, conditions that do not map
// onto std::errc (so `e.code() == std::errc::timed_out` would be false).
TEST(WrapperSystemError, CodeIsTheStatusInTheIplCategory) {
  const ipl::error e(IPL_E_WOULD_DEADLOCK);
  EXPECT_EQ(IPL_E_WOULD_DEADLOCK, e.code().value());
  EXPECT_EQ(&ipl::category(), &e.code().category());
  EXPECT_STREQ("ipl", e.code().category().name());
  EXPECT_EQ(ipl_strerror(IPL_E_WOULD_DEADLOCK), e.code().message());
  EXPECT_EQ(e.code(), std::errc::resource_deadlock_would_occur);

  EXPECT_EQ(ipl::error(IPL_E_TIMEOUT).code(), std::errc::timed_out);
  EXPECT_EQ(ipl::error(IPL_E_INVALID).code(), std::errc::invalid_argument);
  EXPECT_EQ(ipl::error(IPL_E_ACCESS).code(), std::errc::permission_denied);
  EXPECT_EQ(ipl::error(IPL_E_NAME_TOO_LONG).code(), std::errc::filename_too_long);
  EXPECT_EQ(ipl::error(IPL_E_BAD_PARENT).code(), std::errc::not_a_directory);
  EXPECT_NE(ipl::error(IPL_E_NOT_REGULAR_FILE).code(), std::errc::timed_out);
  // An ipl status is not an errno: -5 must not compare equal to errno 5.
  EXPECT_NE(ipl::error(IPL_E_ACCESS).code(), std::error_code(EIO, std::generic_category()));
}

// Catches: the path dropped on the way from open to the exception, the OS
// error not offered as an error_code, catching as std::system_error not
// working.
TEST(WrapperSystemError, OpenErrorsCarryThePathAndTheOsError) {
  temp_dir dir;
  const std::string missing = dir.path("missing");
  const ipl::error e = caught([&] { ipl::process_lock lock(missing, IPL_OPEN_NO_CREATE); });
  EXPECT_EQ(IPL_E_OS, e.status());
  EXPECT_EQ(missing, e.path());
  EXPECT_EQ(ENOENT, e.os_error());
  EXPECT_EQ(e.os_error_code(), std::errc::no_such_file_or_directory);
  EXPECT_EQ(&std::system_category(), &e.os_error_code().category());
  const std::string text = e.what();
  EXPECT_EQ(0u, text.find(ipl_strerror(IPL_E_OS))) << text;
  EXPECT_NE(std::string::npos, text.find(missing)) << text;

  try {
    ipl::shared_process_lock folder(dir.root().c_str());
    ADD_FAILURE() << "a folder opened as a lock file";
  } catch (const std::system_error &as_system_error) {
    EXPECT_EQ(IPL_E_NOT_REGULAR_FILE, as_system_error.code().value());
    EXPECT_EQ(dir.root(), dynamic_cast<const ipl::error &>(as_system_error).path());
  }

  const ipl::error plain(IPL_E_NOT_HELD);
  EXPECT_TRUE(plain.path().empty());
  EXPECT_FALSE(plain.os_error_code());
}

// Catches: lock and unlock errors thrown without the path the object was
// opened with, a moved-to object that loses it, an empty object that
// reports a stale one.
TEST(WrapperSystemError, LockErrorsCarryTheObjectsPath) {
  temp_dir dir;
  const std::string path = dir.path("lock");
  ipl::process_lock first(path);
  EXPECT_EQ(path, first.path());
  ASSERT_TRUE(first.try_lock());
  const ipl::error again = caught([&] { first.try_lock(); });
  EXPECT_EQ(IPL_E_WOULD_DEADLOCK, again.status());
  EXPECT_EQ(path, again.path());
  first.unlock();

  ipl::process_lock moved(std::move(first));
  EXPECT_EQ(path, moved.path());
  EXPECT_TRUE(first.path().empty());
  const ipl::error not_held = caught([&] { moved.unlock(); });
  EXPECT_EQ(IPL_E_NOT_HELD, not_held.status());
  EXPECT_EQ(path, not_held.path());

  ipl::shared_process_lock rw(path);
  ASSERT_TRUE(rw.try_lock_shared());
  const ipl::error wrong_mode = caught([&] { rw.unlock(); });
  EXPECT_EQ(path, wrong_mode.path());
  rw.unlock_shared();

  const ipl::error with_nul = caught([&] { ipl::process_lock lock(path + std::string(1, '\0')); });
  EXPECT_EQ(IPL_E_INVALID, with_nul.status());
  EXPECT_EQ(path.size() + 1, with_nul.path().size());
}

}  // namespace

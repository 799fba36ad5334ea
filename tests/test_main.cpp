// SPDX-License-Identifier: MIT
// The test binary's entry point. When re-executed as a helper process
// (`--ipl-helper NAME ...`), it runs that helper instead of the tests.
#include <gtest/gtest.h>
#include <signal.h>

#include "test_support.hpp"

int main(int argc, char **argv) {
#ifndef _WIN32
  // A peer process that dies mid-test must fail the test through a failed
  // write or a closed pipe, not kill the whole binary with SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
#endif
  int helper_exit_code = 0;
  if (ipltest::run_helper_if_requested(argc, argv, &helper_exit_code))
    return helper_exit_code;
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

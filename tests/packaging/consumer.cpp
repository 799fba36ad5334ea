// SPDX-License-Identifier: MIT
// A C++17 consumer of the installed libipl through ipl.hpp, built by
// scripts/test-packaging from `pkg-config ipl` alone (shared) and
// `pkg-config --static ipl` (static). It locks for real: a second object on
// the same file must be refused while the first holds the lock (exclusive
// and shared), and succeed once the first lets go.
// Usage: consumer_cpp LOCK_FILE
#include <ipl/ipl.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <shared_mutex>

namespace {

int failures = 0;

void expect(const char *what, bool got, bool wanted) {
  if (got != wanted) {
    std::fprintf(stderr, "consumer_cpp: %s: got %d, wanted %d\n", what, got, wanted);
    ++failures;
  }
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer_cpp LOCK_FILE\n");
    return 2;
  }
  try {
    ipl::shared_process_lock holder(argv[1]);
    ipl::shared_process_lock other(argv[1]);
    {
      std::unique_lock<ipl::shared_process_lock> held(holder);
      expect("other try_lock while held", other.try_lock(), false);
      expect("other try_lock_for 50 ms while held",
             other.try_lock_for(std::chrono::milliseconds(50)), false);
      expect("other try_lock_shared while held", other.try_lock_shared(), false);
    }
    {
      std::shared_lock<ipl::shared_process_lock> reading(holder);
      expect("other shares the read lock", other.try_lock_shared(), true);
      other.unlock_shared();
      expect("other try_lock while read-held", other.try_lock(), false);
    }
    ipl::process_lock exclusive(argv[1]);
    expect("exclusive after release", exclusive.try_lock_for(std::chrono::seconds(1)), true);
    exclusive.unlock();
  } catch (const ipl::error &error) {
    std::fprintf(stderr, "consumer_cpp: unexpected ipl::error: %s\n", error.what());
    return 1;
  }
  if (failures != 0) return 1;
  std::printf("consumer_cpp: ok (libipl %s)\n", ipl_version_string());
  return 0;
}

// SPDX-License-Identifier: MIT
// A tiny C++ program over ipl.hpp: exclusive, shared and timed locking, and
// a decorated function.
#include <ipl/ipl.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <string>

int main(int argc, char **argv) {
  const std::string path = argc > 1 ? argv[1] : "/tmp/ipl-example-cpp.lock";
  try {
    ipl::shared_process_lock lock(path);
    {
      std::unique_lock<ipl::shared_process_lock> writer(lock, std::chrono::seconds(5));
      if (!writer.owns_lock()) {
        std::fprintf(stderr, "%s is held elsewhere\n", path.c_str());
        return 1;
      }
      std::printf("exclusive on %s\n", path.c_str());
    }
    {
      std::shared_lock<ipl::shared_process_lock> reader(lock);
      std::printf("shared on %s\n", path.c_str());
    }
    auto add_one = ipl::interprocess_locked(path, [](int x) { return x + 1; });
    std::printf("decorated call returned %d\n", add_one(41));
  } catch (const ipl::error &e) {
    std::fprintf(stderr, "libipl: %s\n", e.what());
    return 1;
  }
  return 0;
}

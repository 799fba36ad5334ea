// SPDX-License-Identifier: MIT
// The peer: the same figures for Python's fasteners (InterProcessLock),
// measured by bench/fasteners_peer_bench.py and driven from here.
#ifndef IPL_BENCH_FASTENERS_HPP
#define IPL_BENCH_FASTENERS_HPP

#include <map>
#include <string>
#include <vector>

#include "bench_figures.hpp"

namespace bench {

struct fasteners_setup {
  std::string python;       // interpreter with the fasteners module
  std::string peer_script;  // bench/fasteners_peer_bench.py
  std::string lock_path;
  std::string data_path;
  bool quick = false;
};

struct fasteners_figures {
  bool available = false;
  std::string unavailable_reason;
  std::string python_version;
  std::string fasteners_version;

  // 1. acquire + release (fasteners opens and closes the file each time).
  pair_cost pair_try;
  pair_cost pair_timed;
  pair_cost pair_forever;
  pair_cost python_raw_pair;  // fcntl.lockf lock + unlock: Python's own floor
  // 2. a C holder (raw OFD) releases, a fasteners waiter wakes: us.
  handoff_sample handoff_forever;  // acquire(blocking=True)
  handoff_sample handoff_timed;    // acquire(blocking=True, timeout=10)
  // 3. acquire(timeout) on a lock a C process holds.
  cpu_while_waiting cpu;
  // 4. acquire(timeout=50 ms) on a held lock: elapsed - 50 ms, us.
  std::vector<double> overshoot_us;
  // 5. by process count.
  std::map<int, throughput_sample> throughput_forever;
  std::map<int, throughput_sample> throughput_timed;
};

// Probes the interpreter first; when fasteners cannot be imported, returns
// available = false with the reason instead of failing. Once it is known to
// work, a peer that misbehaves fails the benchmark.
fasteners_figures measure_fasteners(const fasteners_setup &setup, int handoff_rounds,
                                    int64_t cpu_wait_ms, int64_t overshoot_timeout_ms,
                                    int overshoot_count, const std::vector<int> &process_counts,
                                    double throughput_seconds);

}  // namespace bench

#endif  // IPL_BENCH_FASTENERS_HPP

// SPDX-License-Identifier: MIT
// The figures ipl_bench measures for libipl and for the kernel floor. Each
// function measures one kind of lock; the caller puts a libipl kind beside
// raw_ofd (the floor) in the same run.
#ifndef IPL_BENCH_FIGURES_HPP
#define IPL_BENCH_FIGURES_HPP

#include <cstdint>
#include <string>
#include <vector>

#include "bench_support.hpp"

namespace bench {

// The timeout of "timed" acquires that must never expire: long enough that a
// noisy machine never hits it, finite so that libipl takes its timed path.
constexpr int64_t kPairTimedMs = 1000;
constexpr int64_t kContendedTimedMs = 10000;

// ---- 1. Uncontended acquire + release pair ----------------------------------------
// Per pair, the median of the repetitions. CPU time is the figure: the pair
// never blocks, so on a loaded machine wall time mostly measures how long
// others held the CPU. Wall time is kept alongside.
struct pair_cost {
  double cpu_ns = 0;
  double real_ns = 0;
};
struct pair_costs {
  pair_cost raw_ofd;       // F_OFD_SETLK lock + unlock on an open descriptor
  pair_cost raw_ofd_stat;  // the same with a stat() of the path in between
  pair_cost ipl_try;
  pair_cost ipl_timed;
  pair_cost ipl_forever;
  int repetitions = 0;
  std::string method;  // how the repetitions were timed
};
pair_costs measure_uncontended_pairs(const std::string &lock_path, bool quick);

// ---- 2. Handoff latency between two processes ---------------------------------------
// How long the holder sleeps, after the waiter has announced its wait,
// before it stamps and releases: 200 us (so the waiter is asleep in its
// acquire) plus a spread that samples every phase of a polling waiter's
// schedule. The same sequence for every kind of lock.
int64_t handoff_hold_ns(int round);

struct handoff_sample {
  std::vector<double> latency_us;  // release stamp -> acquire returned, per round
  int rounds_not_seen_asleep = 0;  // the waiter was not seen asleep before release
};
// Two processes take turns holding and waiting for `rounds` rounds, numbered
// from first_round (which picks the hold times); adds them to *sample. The
// first process opens lock_path, the second peer_lock_path: the same path,
// or the same file seen through another mount (another host, for locks).
void measure_handoff(lock_kind kind, const std::string &lock_path,
                     const std::string &peer_lock_path, int first_round, int rounds,
                     handoff_sample *sample);

// ---- 3. CPU used while waiting -----------------------------------------------------
struct cpu_while_waiting {
  double waited_s = 0;
  double process_cpu_ms = 0;  // the waiting process, all its threads
  double thread_cpu_ms = 0;   // the waiting thread alone
  double ms_per_s() const { return waited_s > 0 ? process_cpu_ms / waited_s : 0; }
};
// Another process holds the lock throughout. raw_ofd: F_OFD_SETLKW
// interrupted by SIGALRM after wait_ms (the floor); ipl_timed and
// ipl_timed_polling: ipl_acquire(lock, wait_ms), which must time out.
cpu_while_waiting measure_cpu_while_waiting(lock_kind kind, const std::string &lock_path,
                                            int64_t wait_ms);

// ---- 4. Overshoot of a timeout -----------------------------------------------------
// `count` waits of timeout_ms each; returns elapsed - timeout in us.
// The floor is clock_nanosleep; libipl waits on a lock another process holds.
// A libipl wait that returns before its timeout is a bug and fails the run.
std::vector<double> measure_sleep_overshoot_us(int64_t timeout_ms, int count);
// kind: ipl_timed or ipl_timed_polling.
std::vector<double> measure_ipl_timeout_overshoot_us(lock_kind kind, const std::string &lock_path,
                                                     int64_t timeout_ms, int count);

// ---- 5. Throughput and fairness --------------------------------------------------
struct throughput_sample {
  double seconds = 0;
  std::vector<int64_t> ops_per_process;  // summed over the slices
  std::vector<double> slice_fairness;    // one per slice added
  double ops_per_s() const;
  // min / max of the per-process op counts: the median over the slices when
  // slices were added, else of ops_per_process.
  double fairness() const;
  // Adds one run of the same kind and N as a slice of this one.
  void add_slice(const throughput_sample &slice);
};
// `processes` processes each loop lock / read-increment-write a counter in
// data_path / unlock for `seconds`. Fails if the counter disagrees with the
// ops counted (mutual exclusion broken).
throughput_sample measure_throughput(lock_kind kind, const std::string &lock_path,
                                     const std::string &data_path, int processes, double seconds);

// Shared by the C and the Python contenders: the counter is an int64 at
// offset 0 of the data file (little-endian on every machine we run on).
int64_t read_counter(const std::string &data_path);
void reset_counter(const std::string &data_path);
double fairness_of(const std::vector<int64_t> &ops_per_process);

// ---- 7. Cancel latency -------------------------------------------------------
// Shown beside figure 4: ipl.h promises that a cancel ends a wait within the
// latency of a deadline (bench_cancel.cpp).
// `count` waits (timed 10 s, or forever) on a lock another process holds,
// each ended by ipl_cancel() from another thread once the waiting thread is
// asleep; returns cancel -> the wait's return in us.
// polling: with the wait signal off (ipl_set_wait_signal(0)).
constexpr int kMaxCancelWaits = 1000;
std::vector<double> measure_cancel_latency_us(const std::string &lock_path, bool forever,
                                              bool polling, int count);
// The floor: F_OFD_SETLKW on a lock another process holds, ended by
// pthread_kill() from another thread (a handler without SA_RESTART);
// returns the signal -> EINTR returned in us.
std::vector<double> measure_cancel_floor_us(const std::string &lock_path, int count);

}  // namespace bench

#endif  // IPL_BENCH_FIGURES_HPP

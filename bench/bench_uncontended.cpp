// SPDX-License-Identifier: MIT
// Figure 1: the cost of an uncontended acquire + release pair, libipl's try,
// timed and forever acquires beside a raw F_OFD_SETLK lock + unlock pair on
// an already-open descriptor (the kernel floor), and beside that pair plus
// the one stat() of the path that libipl's identity check makes after every
// grant (the floor of a lock that verifies its path).
//
// With Google Benchmark (the default) each kind is one registered benchmark
// with repetitions interleaved at random, so that a noisy neighbour slows all
// kinds alike; the figure is the median of the repetitions, in CPU time (see
// pair_costs). Without it, a plain loop does the same in round-robin order.
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_figures.hpp"

#if IPL_BENCH_HAVE_GOOGLE_BENCHMARK
#include <benchmark/benchmark.h>
#endif

namespace bench {
namespace {

// What figure 1 times: the two floors and libipl's three acquire kinds.
enum class pair_kind { raw_ofd, raw_ofd_stat, ipl_try, ipl_timed, ipl_forever };
const pair_kind kPairKinds[] = {pair_kind::raw_ofd, pair_kind::raw_ofd_stat, pair_kind::ipl_try,
                                pair_kind::ipl_timed, pair_kind::ipl_forever};

const char *pair_kind_name(pair_kind kind) {
  switch (kind) {
    case pair_kind::raw_ofd: return lock_kind_name(lock_kind::raw_ofd);
    case pair_kind::raw_ofd_stat: return "raw OFD + stat";
    case pair_kind::ipl_try: return lock_kind_name(lock_kind::ipl_try);
    case pair_kind::ipl_timed: return lock_kind_name(lock_kind::ipl_timed);
    case pair_kind::ipl_forever: return lock_kind_name(lock_kind::ipl_forever);
  }
  return "?";
}

// What one kind needs open to run pairs: a descriptor or a libipl handle.
class pair_runner {
 public:
  pair_runner(pair_kind kind, const std::string &lock_path) : kind_(kind), path_(lock_path) {
    if (kind_ == pair_kind::raw_ofd || kind_ == pair_kind::raw_ofd_stat) {
      fd_ = open_file(lock_path);
    } else {
      const int status = ipl_open(lock_path.c_str(), 0, &handle_);
      if (status != IPL_OK) fail("ipl_open %s: %s", lock_path.c_str(), ipl_strerror(status));
    }
  }
  ~pair_runner() {
    if (fd_ >= 0) close(fd_);
    ipl_close(handle_);
  }
  pair_runner(const pair_runner &) = delete;
  pair_runner &operator=(const pair_runner &) = delete;

  pair_kind kind() const { return kind_; }

  // One acquire + release; nullptr on success, else what went wrong.
  const char *run_pair() {
    switch (kind_) {
      case pair_kind::raw_ofd:
      case pair_kind::raw_ofd_stat:
        if (raw_ofd_lock(fd_, false) != 0) return "F_OFD_SETLK lock failed";
        if (kind_ == pair_kind::raw_ofd_stat) {
          struct stat st;
          if (stat(path_.c_str(), &st) != 0) return "stat failed";
        }
        if (raw_ofd_unlock(fd_) != 0) return "F_OFD_SETLK unlock failed";
        return nullptr;
      case pair_kind::ipl_try:
        return ipl_pair(0);
      case pair_kind::ipl_timed:
        return ipl_pair(kPairTimedMs);
      case pair_kind::ipl_forever:
        return ipl_pair(IPL_WAIT_FOREVER);
    }
    return "unknown lock kind";
  }

 private:
  const char *ipl_pair(int64_t timeout_ms) {
    if (ipl_acquire(handle_, timeout_ms) != IPL_OK) return "ipl_acquire failed";
    if (ipl_release(handle_) != IPL_OK) return "ipl_release failed";
    return nullptr;
  }

  pair_kind kind_;
  std::string path_;
  int fd_ = -1;
  ipl_lock *handle_ = nullptr;
};

// Per-repetition times of one kind, ns per pair.
struct pair_samples {
  std::vector<double> cpu_ns;
  std::vector<double> real_ns;
};

void store(pair_costs *costs, pair_kind kind, const pair_samples &samples) {
  const pair_cost cost{median(samples.cpu_ns), median(samples.real_ns)};
  switch (kind) {
    case pair_kind::raw_ofd:
      costs->raw_ofd = cost;
      break;
    case pair_kind::raw_ofd_stat:
      costs->raw_ofd_stat = cost;
      break;
    case pair_kind::ipl_try:
      costs->ipl_try = cost;
      break;
    case pair_kind::ipl_timed:
      costs->ipl_timed = cost;
      break;
    case pair_kind::ipl_forever:
      costs->ipl_forever = cost;
      break;
  }
}

#if IPL_BENCH_HAVE_GOOGLE_BENCHMARK

// Keeps the time per pair of every repetition; prints nothing (the summary
// table is ours).
class collecting_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context &) override { return true; }
  void ReportRuns(const std::vector<Run> &runs) override {
    for (const Run &run : runs) {
      if (run.error_occurred) {
        errors.push_back(run.benchmark_name() + ": " + run.error_message);
        continue;
      }
      if (run.run_type != Run::RT_Iteration || run.iterations <= 0) continue;
      pair_samples &samples = per_kind[run.run_name.function_name];
      samples.cpu_ns.push_back(run.cpu_accumulated_time / double(run.iterations) * 1e9);
      samples.real_ns.push_back(run.real_accumulated_time / double(run.iterations) * 1e9);
    }
  }

  std::map<std::string, pair_samples> per_kind;
  std::vector<std::string> errors;
};

void initialise_google_benchmark() {
  static bool initialised = false;
  if (initialised) return;
  initialised = true;
  // Our own argv never reaches Google Benchmark: it gets only the one flag we
  // want, which has no per-benchmark setter.
  static char program[] = "ipl_bench";
  static char interleave[] = "--benchmark_enable_random_interleaving=true";
  char *args[] = {program, interleave, nullptr};
  int count = 2;
  benchmark::Initialize(&count, args);
}

#endif  // IPL_BENCH_HAVE_GOOGLE_BENCHMARK

}  // namespace

pair_costs measure_uncontended_pairs(const std::string &lock_path, bool quick) {
  const int repetitions = quick ? 3 : 10;
  const double min_seconds = quick ? 0.005 : 0.05;

  std::vector<std::unique_ptr<pair_runner>> runners;
  for (pair_kind kind : kPairKinds)
    runners.push_back(std::make_unique<pair_runner>(kind, lock_path));

  pair_costs costs;
  costs.repetitions = repetitions;

#if IPL_BENCH_HAVE_GOOGLE_BENCHMARK
  initialise_google_benchmark();
  costs.method = "Google Benchmark, random interleaving, median of repetitions";
  benchmark::ClearRegisteredBenchmarks();
  for (auto &runner : runners) {
    pair_runner *one = runner.get();
    benchmark::RegisterBenchmark(pair_kind_name(one->kind()),
                                 [one](benchmark::State &state) {
                                   for (auto _ : state) {
                                     if (const char *error = one->run_pair()) {
                                       state.SkipWithError(error);
                                       break;
                                     }
                                   }
                                 })
        ->Repetitions(repetitions)
        ->MinTime(min_seconds);
  }
  collecting_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::ClearRegisteredBenchmarks();
  if (!reporter.errors.empty()) fail("uncontended pair: %s", reporter.errors.front().c_str());
  for (auto &runner : runners) {
    const pair_samples &samples = reporter.per_kind[pair_kind_name(runner->kind())];
    if (samples.cpu_ns.empty())
      fail("uncontended pair: no result for %s", pair_kind_name(runner->kind()));
    store(&costs, runner->kind(), samples);
  }
#else
  costs.method = "timing loop, round-robin, median of repetitions";
  std::map<pair_kind, pair_samples> per_kind;
  for (int repetition = 0; repetition < repetitions; ++repetition) {
    for (size_t i = 0; i < runners.size(); ++i) {
      // Rotate the order so that no kind always runs first.
      pair_runner &runner = *runners[(i + size_t(repetition)) % runners.size()];
      const int64_t cpu_start = thread_cpu_ns();
      const int64_t start = monotonic_ns();
      const int64_t until = start + int64_t(min_seconds * kSec);
      int64_t pairs = 0;
      int64_t now = start;
      while (now < until) {
        for (int in_batch = 0; in_batch < 64; ++in_batch) {
          if (const char *error = runner.run_pair()) fail("uncontended pair: %s", error);
        }
        pairs += 64;
        now = monotonic_ns();
      }
      pair_samples &samples = per_kind[runner.kind()];
      samples.cpu_ns.push_back(double(thread_cpu_ns() - cpu_start) / double(pairs));
      samples.real_ns.push_back(double(now - start) / double(pairs));
    }
  }
  for (auto &entry : per_kind) store(&costs, entry.first, entry.second);
#endif
  return costs;
}

}  // namespace bench

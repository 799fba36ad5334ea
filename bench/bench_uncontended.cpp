// Figure 1: the cost of an uncontended acquire + release pair, libipl's try,
// timed and forever acquires beside a raw F_OFD_SETLK lock + unlock pair on
// an already-open descriptor (the kernel floor).
//
// With Google Benchmark (the default) each kind is one registered benchmark
// with repetitions interleaved at random, so that a noisy neighbour slows all
// kinds alike; the figure is the median of the repetitions, in CPU time (see
// pair_costs). Without it, a plain loop does the same in round-robin order.
#include <errno.h>
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

const lock_kind kPairKinds[] = {lock_kind::raw_ofd, lock_kind::ipl_try, lock_kind::ipl_timed,
                                lock_kind::ipl_forever};

// What one kind needs open to run pairs: a descriptor or a libipl handle.
class pair_runner {
 public:
  pair_runner(lock_kind kind, const std::string &lock_path) : kind_(kind) {
    if (kind_ == lock_kind::raw_ofd) {
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

  lock_kind kind() const { return kind_; }

  // One acquire + release; nullptr on success, else what went wrong.
  const char *run_pair() {
    switch (kind_) {
      case lock_kind::raw_ofd:
        if (raw_ofd_lock(fd_, false) != 0) return "F_OFD_SETLK lock failed";
        if (raw_ofd_unlock(fd_) != 0) return "F_OFD_SETLK unlock failed";
        return nullptr;
      case lock_kind::ipl_try:
        return ipl_pair(0);
      case lock_kind::ipl_timed:
        return ipl_pair(kPairTimedMs);
      case lock_kind::ipl_forever:
        return ipl_pair(IPL_WAIT_FOREVER);
      case lock_kind::ipl_timed_polling:
        break;  // uncontended, it is ipl_timed: not measured twice
    }
    return "unknown lock kind";
  }

 private:
  const char *ipl_pair(int64_t timeout_ms) {
    if (ipl_acquire(handle_, timeout_ms) != IPL_OK) return "ipl_acquire failed";
    if (ipl_release(handle_) != IPL_OK) return "ipl_release failed";
    return nullptr;
  }

  lock_kind kind_;
  int fd_ = -1;
  ipl_lock *handle_ = nullptr;
};

// Per-repetition times of one kind, ns per pair.
struct pair_samples {
  std::vector<double> cpu_ns;
  std::vector<double> real_ns;
};

void store(pair_costs *costs, lock_kind kind, const pair_samples &samples) {
  const pair_cost cost{median(samples.cpu_ns), median(samples.real_ns)};
  switch (kind) {
    case lock_kind::raw_ofd:
      costs->raw_ofd = cost;
      break;
    case lock_kind::ipl_try:
      costs->ipl_try = cost;
      break;
    case lock_kind::ipl_timed:
      costs->ipl_timed = cost;
      break;
    case lock_kind::ipl_forever:
      costs->ipl_forever = cost;
      break;
    case lock_kind::ipl_timed_polling:
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
  for (lock_kind kind : kPairKinds)
    runners.push_back(std::make_unique<pair_runner>(kind, lock_path));

  pair_costs costs;
  costs.repetitions = repetitions;

#if IPL_BENCH_HAVE_GOOGLE_BENCHMARK
  initialise_google_benchmark();
  costs.method = "Google Benchmark, random interleaving, median of repetitions";
  benchmark::ClearRegisteredBenchmarks();
  for (auto &runner : runners) {
    pair_runner *one = runner.get();
    benchmark::RegisterBenchmark(lock_kind_name(one->kind()),
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
    const pair_samples &samples = reporter.per_kind[lock_kind_name(runner->kind())];
    if (samples.cpu_ns.empty())
      fail("uncontended pair: no result for %s", lock_kind_name(runner->kind()));
    store(&costs, runner->kind(), samples);
  }
#else
  costs.method = "timing loop, round-robin, median of repetitions";
  std::map<lock_kind, pair_samples> per_kind;
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

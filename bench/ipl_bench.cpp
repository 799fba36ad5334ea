// SPDX-License-Identifier: MIT
// ipl_bench: libipl's figures beside the kernel floor, measured in the same
// run, with Python's fasteners alongside.
//
//   ipl_bench [--quick] [--only N,...] [--json FILE] [--python PATH]
//             [--peer-script PATH] [--no-fasteners] [--dir DIR]
//             [--across DIR PEER_DIR]
//
// Figures (see bench_figures.hpp for how each is taken):
//   1. uncontended acquire + release pair      floor: F_OFD_SETLK pair
//   2. handoff latency between two processes   floor: F_OFD_SETLKW waiter
//   3. CPU used while waiting in a timed acquire floor: F_OFD_SETLKW + alarm
//   4. overshoot of a 50 ms timeout            floor: clock_nanosleep
//   5. throughput and fairness, N = 2, 4, 8    floor: F_OFD_SETLKW contenders
//   6. the same for fasteners (Python), where they make sense
//   7. cancel latency, timed and forever   floor: F_OFD_SETLKW ended by
//      waits; shown beside 4, the deadline     pthread_kill
//      latency, its target
// With --across, figure 2 is measured a second time, beside the local one,
// with the second process opening the lock file through another path: the
// same folder seen through a second mount of a network file system, which
// is another host as far as locks go (the floor likewise: raw OFD across).
// Figures 2-5 and 7 also show libipl's timed waits with its wait signal turned
// off ("timed-polling", the fallback for applications that own every
// signal), for information: no target.
// The table at the end marks each target met or not met. A missed target is
// a result, not an error: the exit status is 0 unless something is broken
// (a lock failed, mutual exclusion broke, a timeout came early, a helper
// hung), which exits 2.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "bench_fasteners.hpp"
#include "bench_figures.hpp"

#ifndef IPL_BENCH_DEFAULT_PYTHON
#define IPL_BENCH_DEFAULT_PYTHON "/usr/bin/python3"
#endif
#ifndef IPL_BENCH_PEER_SCRIPT
#define IPL_BENCH_PEER_SCRIPT "fasteners_peer_bench.py"
#endif
#ifndef IPL_BENCH_POSIX_LOCK_KIND
#define IPL_BENCH_POSIX_LOCK_KIND "unknown"
#endif

namespace bench {
namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
const int kProcessCounts[] = {2, 4, 8};
constexpr int64_t kOvershootTimeoutMs = 50;

struct options {
  bool quick = false;
  bool figures[8] = {false, true, true, true, true, true, true, true};  // [1..7]: measure it
  bool fasteners = true;
  std::string json_path;
  std::string python = IPL_BENCH_DEFAULT_PYTHON;
  std::string peer_script = IPL_BENCH_PEER_SCRIPT;
  std::string dir;
  // --across: the handoff with the lock file in across_dir for one process,
  // and the same file through across_peer_dir for the other.
  std::string across_dir;
  std::string across_peer_dir;
};

// How much of each figure to measure.
struct plan {
  int handoff_rounds;
  int fasteners_handoff_rounds;  // fasteners polls (~10 ms a round): fewer
  int64_t cpu_wait_ms;
  int overshoot_count;
  int cancel_count;           // per kind of wait
  double throughput_seconds;  // per kind and N, cut into slices
  int throughput_slices;
};

plan plan_for(bool quick) {
  if (quick) return plan{100, 20, 250, 10, 20, 0.3, 1};
  return plan{1000, 300, 2000, 50, 200, 2.0, 4};
}

void print_usage(FILE *out) {
  std::fprintf(out,
               "usage: ipl_bench [--quick] [--only N,...] [--json FILE] [--python PATH]\n"
               "                 [--peer-script PATH] [--no-fasteners] [--dir DIR]\n"
               "                 [--across DIR PEER_DIR]\n"
               "  --quick            a smoke run of every figure in a few seconds\n"
               "  --only N,...       measure only these figures: 1 pair, 2 handoff, 3 CPU,\n"
               "                     4 overshoot, 5 throughput, 6 fasteners (its 1-5),\n"
               "                     7 cancel latency (measures 4 too: it is shown beside it)\n"
               "  --json FILE        also write every raw number to FILE\n"
               "  --python PATH      interpreter with fasteners (default %s)\n"
               "  --peer-script PATH the fasteners peer (default %s)\n"
               "  --no-fasteners     skip the fasteners figures\n"
               "  --dir DIR          where the lock and data files go (default: a new\n"
               "                     temporary folder, removed at the end)\n"
               "  --across DIR PEER_DIR\n"
               "                     also measure the handoff (2) across two paths of one\n"
               "                     folder, e.g. two mounts of a network file system: one\n"
               "                     process opens DIR/bench.lock (DIR is created), the other\n"
               "                     the same file through PEER_DIR; fails unless the two\n"
               "                     paths exclude each other\n",
               IPL_BENCH_DEFAULT_PYTHON, IPL_BENCH_PEER_SCRIPT);
}

options parse_options(int argc, char **argv) {
  options parsed;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "ipl_bench: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--quick") {
      parsed.quick = true;
    } else if (arg == "--no-fasteners") {
      parsed.fasteners = false;
    } else if (arg == "--only") {
      for (int n = 1; n <= 7; ++n) parsed.figures[n] = false;
      for (const char c : value()) {
        if (c >= '1' && c <= '7') {
          parsed.figures[c - '0'] = true;
        } else if (c != ',') {
          std::fprintf(stderr, "ipl_bench: --only takes figure numbers 1-7, like 2,5\n");
          std::exit(2);
        }
      }
    } else if (arg == "--json") {
      parsed.json_path = value();
    } else if (arg == "--python") {
      parsed.python = value();
    } else if (arg == "--peer-script") {
      parsed.peer_script = value();
    } else if (arg == "--dir") {
      parsed.dir = value();
    } else if (arg == "--across") {
      parsed.across_dir = value();
      parsed.across_peer_dir = value();
    } else if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "ipl_bench: unknown argument '%s'\n", arg.c_str());
      print_usage(stderr);
      std::exit(2);
    }
  }
  // The cancel latency's target is the deadline latency, measured with it.
  if (parsed.figures[7]) parsed.figures[4] = true;
  if (!parsed.across_dir.empty() && !parsed.figures[2]) {
    std::fprintf(stderr, "ipl_bench: --across measures figure 2: add 2 to --only\n");
    std::exit(2);
  }
  return parsed;
}

std::string load_average() {
  double loads[3];
  if (getloadavg(loads, 3) != 3) return "?";
  char text[64];
  std::snprintf(text, sizeof text, "%.2f %.2f %.2f", loads[0], loads[1], loads[2]);
  return text;
}

// ---- What the C side measured ----------------------------------------------------

struct latency_summary {
  double median = kNan;
  double p90 = kNan;
  double p99 = kNan;
};

latency_summary summarise(const std::vector<double> &samples) {
  return latency_summary{percentile(samples, 50), percentile(samples, 90), percentile(samples, 99)};
}

// Figure 2 for each kind of lock (raw: the floor).
struct handoff_set {
  handoff_sample raw;
  handoff_sample forever;
  handoff_sample timed;
  handoff_sample polling;
};

struct throughput_set {
  throughput_sample raw_ofd;
  throughput_sample ipl_forever;
  throughput_sample ipl_timed;
  throughput_sample ipl_timed_polling;
};

struct c_figures {
  bool measured[8] = {};  // [1..7]: which figures were measured
  pair_costs pairs;
  handoff_set handoff;         // both processes open the same path
  handoff_set handoff_across;  // --across: two paths of one file
  bool across = false;
  cpu_while_waiting cpu_floor;
  cpu_while_waiting cpu_timed;
  cpu_while_waiting cpu_polling;
  std::vector<double> overshoot_floor_us;
  std::vector<double> overshoot_timed_us;
  std::vector<double> overshoot_polling_us;
  std::map<int, throughput_set> throughput;
  // 7. Cancel latency; its target is the deadline latency, figure 4's
  // overshoot (always measured with it).
  std::vector<double> cancel_floor_us;
  std::vector<double> cancel_timed_us;
  std::vector<double> cancel_forever_us;
  std::vector<double> cancel_timed_polling_us;
  std::vector<double> cancel_forever_polling_us;
};

// ---- The table ----------------------------------------------------------------------

enum class goal { info, ratio_at_most, ratio_at_least, value_at_most };

struct row {
  std::string figure;
  double libipl;
  double floor;
  double fasteners;
  goal kind;
  double goal_value;
  std::string goal_text;

  double ratio() const { return floor > 0 ? libipl / floor : kNan; }
  double fasteners_ratio() const { return floor > 0 ? fasteners / floor : kNan; }
  // "met", "NOT MET", "-" (no target) or "n/a" (not measured).
  const char *status() const {
    if (kind == goal::info) return "-";
    const double measured = kind == goal::value_at_most ? libipl : ratio();
    if (std::isnan(measured)) return "n/a";
    const bool met = kind == goal::ratio_at_least ? measured >= goal_value : measured <= goal_value;
    return met ? "met" : "NOT MET";
  }
};

void add_pair_rows(std::vector<row> *rows, const c_figures &c, double f_try, double f_timed,
                   double f_forever) {
  const goal at_most = goal::ratio_at_most;
  // The floor of a lock that checks its path after the grant (see
  // bench_uncontended.cpp); the bare fcntl pair is shown too.
  const double floor = c.pairs.raw_ofd_stat.cpu_ns;
  rows->push_back(
      {"pair raw OFD + stat (ns CPU)", floor, c.pairs.raw_ofd.cpu_ns, kNan, goal::info, 0, ""});
  rows->push_back({"pair try (ns CPU)", c.pairs.ipl_try.cpu_ns, floor, f_try, at_most, 1.10,
                   "<= 1.10x floor+stat"});
  rows->push_back({"pair timed 1 s (ns CPU)", c.pairs.ipl_timed.cpu_ns, floor, f_timed, at_most,
                   1.10, "<= 1.10x floor+stat"});
  rows->push_back({"pair forever (ns CPU)", c.pairs.ipl_forever.cpu_ns, floor, f_forever, at_most,
                   1.10, "<= 1.10x floor+stat"});
}

void add_handoff_rows(std::vector<row> *out, const c_figures &c, const fasteners_figures &f) {
  std::vector<row> &rows = *out;
  auto fv = [&](double value) { return f.available ? value : kNan; };
  const goal at_most = goal::ratio_at_most;
  const latency_summary raw = summarise(c.handoff.raw.latency_us);
  struct handoff_variant {
    const char *name;
    const handoff_sample *libipl;
    const handoff_sample *fasteners;
  };
  const handoff_variant variants[] = {{"forever", &c.handoff.forever, &f.handoff_forever},
                                      {"timed", &c.handoff.timed, &f.handoff_timed}};
  for (const handoff_variant &variant : variants) {
    const latency_summary mine = summarise(variant.libipl->latency_us);
    const latency_summary theirs = summarise(variant.fasteners->latency_us);
    const std::string prefix = std::string("handoff ") + variant.name;
    rows.push_back({prefix + " median (us)", mine.median, raw.median, fv(theirs.median), at_most,
                    1.3, "<= 1.30x floor"});
    rows.push_back({prefix + " p90 (us)", mine.p90, raw.p90, fv(theirs.p90), goal::info, 0, ""});
    rows.push_back({prefix + " p99 (us)", mine.p99, raw.p99, fv(theirs.p99), goal::info, 0, ""});
  }
  // libipl's fallback when it has no wait signal: shown, not targeted.
  const latency_summary polling = summarise(c.handoff.polling.latency_us);
  rows.push_back(
      {"handoff timed-polling median (us)", polling.median, raw.median, kNan, goal::info, 0, ""});
  rows.push_back({"handoff timed-polling p99 (us)", polling.p99, raw.p99, kNan, goal::info, 0, ""});
}

// The handoff across two paths (--across), under the local one: first its
// floor against the local floor, then libipl against the floor across. No
// targets: libipl polls there (a signal cannot end a lock call on a network
// file system), and the figures are the file system's as much as ours.
void add_across_rows(std::vector<row> *out, const c_figures &c) {
  std::vector<row> &rows = *out;
  const latency_summary local = summarise(c.handoff.raw.latency_us);
  const latency_summary raw = summarise(c.handoff_across.raw.latency_us);
  rows.push_back(
      {"handoff across raw OFD median (us)", raw.median, local.median, kNan, goal::info, 0, ""});
  rows.push_back({"handoff across raw OFD p99 (us)", raw.p99, local.p99, kNan, goal::info, 0, ""});
  const struct {
    const char *name;
    const handoff_sample *sample;
  } variants[] = {{"forever", &c.handoff_across.forever},
                  {"timed", &c.handoff_across.timed},
                  {"polling", &c.handoff_across.polling}};
  for (const auto &variant : variants) {
    const latency_summary mine = summarise(variant.sample->latency_us);
    const std::string prefix = std::string("handoff across ") + variant.name;
    rows.push_back({prefix + " median (us)", mine.median, raw.median, kNan, goal::info, 0, ""});
    rows.push_back({prefix + " p99 (us)", mine.p99, raw.p99, kNan, goal::info, 0, ""});
  }
}

void add_throughput_rows(std::vector<row> *out, const c_figures &c, const fasteners_figures &f) {
  std::vector<row> &rows = *out;
  const bool have_f = f.available;
  for (const auto &entry : c.throughput) {
    const int n = entry.first;
    const throughput_set &set = entry.second;
    auto fasteners_sample = [&](const std::map<int, throughput_sample> &samples,
                                bool fairness) -> double {
      const auto found = samples.find(n);
      if (!have_f || found == samples.end()) return kNan;
      return fairness ? found->second.fairness() : found->second.ops_per_s();
    };
    const std::string suffix = " N=" + std::to_string(n);
    rows.push_back({"throughput forever" + suffix + " (op/s)", set.ipl_forever.ops_per_s(),
                    set.raw_ofd.ops_per_s(), fasteners_sample(f.throughput_forever, false),
                    goal::ratio_at_least, 0.9, ">= 0.90x floor"});
    rows.push_back({"throughput timed" + suffix + " (op/s)", set.ipl_timed.ops_per_s(),
                    set.raw_ofd.ops_per_s(), fasteners_sample(f.throughput_timed, false),
                    goal::ratio_at_least, 0.9, ">= 0.90x floor"});
    rows.push_back({"throughput timed-polling" + suffix + " (op/s)",
                    set.ipl_timed_polling.ops_per_s(), set.raw_ofd.ops_per_s(), kNan, goal::info, 0,
                    ""});
    rows.push_back({"fairness forever" + suffix + " (min/max)", set.ipl_forever.fairness(),
                    set.raw_ofd.fairness(), fasteners_sample(f.throughput_forever, true),
                    goal::info, 0, ""});
    rows.push_back({"fairness timed" + suffix + " (min/max)", set.ipl_timed.fairness(),
                    set.raw_ofd.fairness(), fasteners_sample(f.throughput_timed, true), goal::info,
                    0, ""});
  }
}

// Cancel latency, under the overshoot rows: the floor is F_OFD_SETLKW ended
// by pthread_kill(); the target is the deadline latency of the same kind of
// wait (the overshoot median above), as ipl.h promises that a cancel ends a
// wait "within the latency of a deadline".
void add_cancel_rows(std::vector<row> *out, const c_figures &c) {
  std::vector<row> &rows = *out;
  const double floor = median(c.cancel_floor_us);
  const double floor_p99 = percentile(c.cancel_floor_us, 99);
  const double deadline = median(c.overshoot_timed_us);
  const struct {
    const char *name;
    const std::vector<double> *sample;
    bool targeted;
  } variants[] = {{"timed", &c.cancel_timed_us, true},
                  {"forever", &c.cancel_forever_us, true},
                  {"timed-polling", &c.cancel_timed_polling_us, false},
                  {"forever-polling", &c.cancel_forever_polling_us, false}};
  for (const auto &variant : variants) {
    const std::string prefix = std::string("cancel ") + variant.name;
    if (variant.targeted) {
      rows.push_back({prefix + " median (us)", median(*variant.sample), floor, kNan,
                      goal::value_at_most, deadline, "<= overshoot"});
    } else {
      rows.push_back(
          {prefix + " median (us)", median(*variant.sample), floor, kNan, goal::info, 0, ""});
    }
    rows.push_back({prefix + " p99 (us)", percentile(*variant.sample, 99), floor_p99, kNan,
                    goal::info, 0, ""});
  }
}

std::vector<row> build_rows(const c_figures &c, const fasteners_figures &f) {
  const bool have_f = f.available;
  auto fv = [&](double value) { return have_f ? value : kNan; };
  std::vector<row> rows;

  if (c.measured[1]) {
    add_pair_rows(&rows, c, fv(f.pair_try.cpu_ns), fv(f.pair_timed.cpu_ns),
                  fv(f.pair_forever.cpu_ns));
  }
  if (c.measured[2]) add_handoff_rows(&rows, c, f);
  if (c.measured[2] && c.across) add_across_rows(&rows, c);
  if (c.measured[3]) {
    rows.push_back({"CPU waiting timed (ms/s)", c.cpu_timed.ms_per_s(), c.cpu_floor.ms_per_s(),
                    fv(f.cpu.ms_per_s()), goal::value_at_most, 0.5, "<= 0.5 ms/s"});
    rows.push_back({"CPU waiting timed-polling (ms/s)", c.cpu_polling.ms_per_s(),
                    c.cpu_floor.ms_per_s(), kNan, goal::info, 0, ""});
  }
  if (c.measured[4]) {
    rows.push_back({"overshoot 50 ms median (us)", median(c.overshoot_timed_us),
                    median(c.overshoot_floor_us), fv(median(f.overshoot_us)), goal::value_at_most,
                    1000, "<= 1000 us"});
    rows.push_back({"overshoot 50 ms p99 (us)", percentile(c.overshoot_timed_us, 99),
                    percentile(c.overshoot_floor_us, 99), fv(percentile(f.overshoot_us, 99)),
                    goal::info, 0, ""});
    rows.push_back({"overshoot timed-polling median (us)", median(c.overshoot_polling_us),
                    median(c.overshoot_floor_us), kNan, goal::info, 0, ""});
  }
  if (c.measured[7]) add_cancel_rows(&rows, c);
  if (c.measured[5]) add_throughput_rows(&rows, c, f);
  return rows;
}

std::string format_value(double value) {
  if (std::isnan(value)) return "-";
  char text[32];
  const double magnitude = std::fabs(value);
  if (magnitude >= 100) {
    std::snprintf(text, sizeof text, "%.0f", value);
  } else if (magnitude >= 10) {
    std::snprintf(text, sizeof text, "%.1f", value);
  } else if (magnitude >= 0.01 || value == 0) {
    std::snprintf(text, sizeof text, "%.2f", value);
  } else {
    std::snprintf(text, sizeof text, "%.4f", value);
  }
  return text;
}

std::string format_ratio(double ratio) {
  if (std::isnan(ratio) || std::isinf(ratio)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, ratio >= 100 ? "%.0fx" : "%.2fx", ratio);
  return text;
}

void print_table(const std::vector<row> &rows, const c_figures &c, const fasteners_figures &f,
                 const options &opts) {
  std::printf("\n%-36s %10s %10s %8s %10s %8s  %-15s %s\n", "figure", "libipl", "floor", "ratio",
              "fasteners", "ratio", "target", "status");
  std::printf("%s\n", std::string(112, '-').c_str());
  int met = 0;
  int missed = 0;
  for (const row &r : rows) {
    const std::string status = r.status();
    if (status == "met") ++met;
    if (status == "NOT MET") ++missed;
    std::printf("%-36s %10s %10s %8s %10s %8s  %-15s %s\n", r.figure.c_str(),
                format_value(r.libipl).c_str(), format_value(r.floor).c_str(),
                format_ratio(r.ratio()).c_str(), format_value(r.fasteners).c_str(),
                format_ratio(r.fasteners_ratio()).c_str(), r.goal_text.c_str(), status.c_str());
  }
  std::printf("%s\n", std::string(112, '-').c_str());
  std::printf("targets: %d met, %d not met (a missed target is reported, not an error)\n", met,
              missed);
  std::printf(
      "floors: pair = F_OFD_SETLK lock + stat(path) + unlock on an open fd (libipl checks\n"
      "  after each grant that the path still names the locked file; the bare lock+unlock\n"
      "  pair is the floor column of the \"raw OFD + stat\" row); handoff = F_OFD_SETLKW waiter;\n"
      "  CPU = F_OFD_SETLKW interrupted by SIGALRM; overshoot = clock_nanosleep(50 ms);\n"
      "  throughput = F_OFD_SETLKW contenders; cancel = F_OFD_SETLKW ended by pthread_kill\n"
      "  (its target: the overshoot median above, the deadline latency). Ratios are to the\n"
      "  floor, fasteners' too.\n"
      "timed-polling: libipl timed waits with the wait signal off (ipl_set_wait_signal(0)),\n"
      "  the fallback used when the application owns every signal; no target.\n"
      "handoff: the holder releases 0.2-1.0 ms after the waiter announced its wait and was\n"
      "  seen asleep; latency = holder's stamp just before release -> waiter's stamp\n"
      "  just after its acquire returned (CLOCK_MONOTONIC, two processes).\n"
      "cancel: ipl_cancel() in one thread -> the canceled ipl_acquire (timed 10 s or\n"
      "  forever) returning IPL_E_CANCELED in another, the waiter seen asleep first;\n"
      "  -polling: with the wait signal off.\n");
  if (c.measured[2] && c.across) {
    std::printf(
        "handoff across: the same handoff, one process opening DIR/bench.lock, the other\n"
        "  the same file through PEER_DIR (%zu rounds each). The floor of its raw OFD rows\n"
        "  is the local raw OFD; of its libipl rows, the raw OFD across.\n"
        "  DIR      %s\n"
        "  PEER_DIR %s\n",
        c.handoff_across.raw.latency_us.size(), opts.across_dir.c_str(),
        opts.across_peer_dir.c_str());
  }
  if (f.available) {
    std::printf(
        "fasteners %s (Python %s): InterProcessLock. pair: acquire+release in Python,\n"
        "  CPU time (fasteners opens and closes the file each time); handoff: a C raw-OFD\n"
        "  holder releases, a fasteners waiter wakes (forever: acquire(), timed:\n"
        "  acquire(timeout=10)), %zu rounds each; CPU, overshoot: acquire(timeout) on a\n"
        "  lock a C process holds; throughput: N Python processes.\n",
        f.fasteners_version.c_str(), f.python_version.c_str(), f.handoff_forever.latency_us.size());
  } else {
    std::printf("fasteners: unavailable (%s)\n", f.unavailable_reason.c_str());
  }
}

// ---- JSON ----------------------------------------------------------------------------

class json_writer {
 public:
  explicit json_writer(FILE *out) : out_(out) {}

  void begin_object(const char *key = nullptr) { open(key, '{'); }
  void end_object() { close('}'); }
  void begin_array(const char *key = nullptr) { open(key, '['); }
  void end_array() { close(']'); }

  void number(const char *key, double value) {
    separate(key);
    if (std::isnan(value) || std::isinf(value)) {
      std::fputs("null", out_);
    } else {
      std::fprintf(out_, "%.9g", value);
    }
  }
  void text(const char *key, const std::string &value) {
    separate(key);
    quoted(value);
  }
  void boolean(const char *key, bool value) {
    separate(key);
    std::fputs(value ? "true" : "false", out_);
  }
  void numbers(const char *key, const std::vector<double> &values) {
    begin_array(key);
    for (double value : values) number(nullptr, value);
    end_array();
  }
  void counts(const char *key, const std::vector<int64_t> &values) {
    begin_array(key);
    for (int64_t value : values) number(nullptr, double(value));
    end_array();
  }

 private:
  void quoted(const std::string &value) {
    std::fputc('"', out_);
    for (char c : value) {
      if (c == '"' || c == '\\') {
        std::fprintf(out_, "\\%c", c);
      } else if (static_cast<unsigned char>(c) < 0x20) {
        std::fprintf(out_, "\\u%04x", c);
      } else {
        std::fputc(c, out_);
      }
    }
    std::fputc('"', out_);
  }
  void separate(const char *key) {
    if (!first_.empty()) {
      if (!first_.back()) std::fputc(',', out_);
      first_.back() = false;
    }
    if (key != nullptr) {
      quoted(key);
      std::fputc(':', out_);
    }
  }
  void open(const char *key, char bracket) {
    separate(key);
    std::fputc(bracket, out_);
    first_.push_back(true);
  }
  void close(char bracket) {
    first_.pop_back();
    std::fputc(bracket, out_);
  }

  FILE *out_;
  std::vector<bool> first_;
};

void write_pair(json_writer &json, const char *key, const pair_cost &cost) {
  json.begin_object(key);
  json.number("cpu_ns", cost.cpu_ns);
  json.number("real_ns", cost.real_ns);
  json.end_object();
}

void write_handoff(json_writer &json, const char *key, const handoff_sample &sample) {
  const latency_summary summary = summarise(sample.latency_us);
  json.begin_object(key);
  json.number("median_us", summary.median);
  json.number("p90_us", summary.p90);
  json.number("p99_us", summary.p99);
  json.number("rounds", double(sample.latency_us.size()));
  json.number("rounds_waiter_not_seen_asleep", sample.rounds_not_seen_asleep);
  json.numbers("latency_us", sample.latency_us);
  json.end_object();
}

void write_cpu(json_writer &json, const char *key, const cpu_while_waiting &cpu) {
  json.begin_object(key);
  json.number("waited_s", cpu.waited_s);
  json.number("process_cpu_ms", cpu.process_cpu_ms);
  json.number("thread_cpu_ms", cpu.thread_cpu_ms);
  json.number("cpu_ms_per_s_waited", cpu.ms_per_s());
  json.end_object();
}

void write_overshoot(json_writer &json, const char *key, const std::vector<double> &samples) {
  json.begin_object(key);
  json.number("median_us", median(samples));
  json.number("p99_us", percentile(samples, 99));
  json.numbers("overshoot_us", samples);
  json.end_object();
}

void write_handoff_set(json_writer &json, const char *key, const handoff_set &set) {
  json.begin_object(key);
  write_handoff(json, "raw_ofd", set.raw);
  write_handoff(json, "ipl_forever", set.forever);
  write_handoff(json, "ipl_timed_10s", set.timed);
  write_handoff(json, "ipl_timed_10s_polling", set.polling);
  json.end_object();
}

void write_latencies(json_writer &json, const char *key, const std::vector<double> &samples) {
  json.begin_object(key);
  json.number("median_us", median(samples));
  json.number("p99_us", percentile(samples, 99));
  json.numbers("latency_us", samples);
  json.end_object();
}

void write_throughput(json_writer &json, const char *key, const throughput_sample &sample) {
  json.begin_object(key);
  json.number("seconds", sample.seconds);
  json.number("ops_per_s", sample.ops_per_s());
  json.number("fairness_min_over_max", sample.fairness());
  json.counts("ops_per_process", sample.ops_per_process);
  if (!sample.slice_fairness.empty()) json.numbers("slice_fairness", sample.slice_fairness);
  json.end_object();
}

void write_json(const std::string &path, const options &opts, const c_figures &c,
                const fasteners_figures &f, const std::vector<row> &rows,
                const std::string &load_before, const std::string &load_after) {
  FILE *out = std::fopen(path.c_str(), "w");
  if (out == nullptr) fail("cannot write %s: %s", path.c_str(), std::strerror(errno));
  json_writer json(out);
  json.begin_object();
  json.text("libipl_version", ipl_version_string());
  json.text("posix_lock_kind", IPL_BENCH_POSIX_LOCK_KIND);
  json.text("timed_wait_mechanism", timed_wait_mechanism());
  json.boolean("quick", opts.quick);
  json.number("cpus_online", double(sysconf(_SC_NPROCESSORS_ONLN)));
  json.text("load_average_before", load_before);
  json.text("load_average_after", load_after);

  if (c.measured[1]) {
    json.begin_object("uncontended_pair_ns");
    write_pair(json, "raw_ofd", c.pairs.raw_ofd);
    write_pair(json, "raw_ofd_stat", c.pairs.raw_ofd_stat);
    write_pair(json, "ipl_try", c.pairs.ipl_try);
    write_pair(json, "ipl_timed_1000ms", c.pairs.ipl_timed);
    write_pair(json, "ipl_forever", c.pairs.ipl_forever);
    json.number("repetitions", c.pairs.repetitions);
    json.text("method", c.pairs.method);
    json.end_object();
  }
  if (c.measured[2]) write_handoff_set(json, "handoff", c.handoff);
  if (c.measured[2] && c.across) {
    json.text("handoff_across_dir", opts.across_dir);
    json.text("handoff_across_peer_dir", opts.across_peer_dir);
    write_handoff_set(json, "handoff_across", c.handoff_across);
  }
  if (c.measured[3]) {
    json.begin_object("cpu_while_waiting");
    write_cpu(json, "raw_ofd_alarm", c.cpu_floor);
    write_cpu(json, "ipl_timed", c.cpu_timed);
    write_cpu(json, "ipl_timed_polling", c.cpu_polling);
    json.end_object();
  }
  if (c.measured[4]) {
    json.begin_object("overshoot_50ms");
    write_overshoot(json, "clock_nanosleep", c.overshoot_floor_us);
    write_overshoot(json, "ipl_timed", c.overshoot_timed_us);
    write_overshoot(json, "ipl_timed_polling", c.overshoot_polling_us);
    json.end_object();
  }
  if (c.measured[7]) {
    json.begin_object("cancel_latency");
    write_latencies(json, "raw_ofd_pthread_kill", c.cancel_floor_us);
    write_latencies(json, "ipl_timed_10s", c.cancel_timed_us);
    write_latencies(json, "ipl_forever", c.cancel_forever_us);
    write_latencies(json, "ipl_timed_10s_polling", c.cancel_timed_polling_us);
    write_latencies(json, "ipl_forever_polling", c.cancel_forever_polling_us);
    json.end_object();
  }
  if (c.measured[5]) {
    json.begin_object("throughput");
    for (const auto &entry : c.throughput) {
      json.begin_object(std::to_string(entry.first).c_str());
      write_throughput(json, "raw_ofd", entry.second.raw_ofd);
      write_throughput(json, "ipl_forever", entry.second.ipl_forever);
      write_throughput(json, "ipl_timed_10s", entry.second.ipl_timed);
      write_throughput(json, "ipl_timed_10s_polling", entry.second.ipl_timed_polling);
      json.end_object();
    }
    json.end_object();
  }

  json.begin_object("fasteners");
  json.boolean("available", f.available);
  if (!f.available) {
    json.text("unavailable_reason", f.unavailable_reason);
  } else {
    json.text("python", opts.python);
    json.text("python_version", f.python_version);
    json.text("fasteners_version", f.fasteners_version);
    json.begin_object("uncontended_pair_ns");
    write_pair(json, "try", f.pair_try);
    write_pair(json, "timed_1s", f.pair_timed);
    write_pair(json, "forever", f.pair_forever);
    write_pair(json, "python_lockf_pair", f.python_raw_pair);
    json.end_object();
    json.begin_object("handoff_c_holder_fasteners_waiter");
    write_handoff(json, "blocking", f.handoff_forever);
    write_handoff(json, "timeout_10s", f.handoff_timed);
    json.end_object();
    write_cpu(json, "cpu_while_waiting", f.cpu);
    write_overshoot(json, "overshoot_50ms", f.overshoot_us);
    json.begin_object("throughput");
    for (const auto &entry : f.throughput_forever) {
      json.begin_object(std::to_string(entry.first).c_str());
      write_throughput(json, "blocking", entry.second);
      const auto timed = f.throughput_timed.find(entry.first);
      if (timed != f.throughput_timed.end()) write_throughput(json, "timeout_10s", timed->second);
      json.end_object();
    }
    json.end_object();
  }
  json.end_object();

  json.begin_array("table");
  for (const row &r : rows) {
    json.begin_object();
    json.text("figure", r.figure);
    json.number("libipl", r.libipl);
    json.number("floor", r.floor);
    json.number("ratio", r.ratio());
    json.number("fasteners", r.fasteners);
    json.number("fasteners_ratio", r.fasteners_ratio());
    json.text("target", r.goal_text);
    json.text("status", r.status());
    json.end_object();
  }
  json.end_array();
  json.end_object();
  std::fputc('\n', out);
  if (std::fclose(out) != 0) fail("writing %s failed", path.c_str());
}

// ---- The run -----------------------------------------------------------------------

// Prints a step's title, and how long the previous step took.
void step(const char *what) {
  static int64_t previous_start = 0;
  const int64_t now = monotonic_ns();
  if (previous_start != 0) std::printf("   (%.1f s)\n", double(now - previous_start) / kSec);
  previous_start = now;
  if (what != nullptr) std::printf("== %s\n", what);
  std::fflush(stdout);
}

void print_latency(const char *name, const handoff_sample &sample) {
  const latency_summary s = summarise(sample.latency_us);
  std::printf("   %-16s median %8.1f us  p90 %8.1f us  p99 %8.1f us  (%zu rounds", name, s.median,
              s.p90, s.p99, sample.latency_us.size());
  if (sample.rounds_not_seen_asleep > 0) {
    std::printf(", waiter not seen asleep in %d", sample.rounds_not_seen_asleep);
  }
  std::printf(")\n");
}

// The kinds of figure 2 measured between lock_path and peer_lock_path.
struct handoff_run {
  handoff_set *set;
  std::string lock_path;
  std::string peer_lock_path;
};

void measure_handoffs(c_figures *figures, const std::vector<handoff_run> &runs, const plan &p) {
  c_figures &c = *figures;
  step(runs.size() > 1 ? "2/7 handoff latency between two processes, local and across"
                       : "2/7 handoff latency between two processes");
  // Blocks of rounds, each kind (and place) in turn, so that a change in
  // the machine's load hits every kind alike.
  const int block = std::min(p.handoff_rounds, 50);
  for (int first = 0; first < p.handoff_rounds; first += block) {
    const int rounds = std::min(block, p.handoff_rounds - first);
    for (const handoff_run &run : runs) {
      const struct {
        lock_kind kind;
        handoff_sample *sample;
      } kinds[] = {{lock_kind::raw_ofd, &run.set->raw},
                   {lock_kind::ipl_forever, &run.set->forever},
                   {lock_kind::ipl_timed, &run.set->timed},
                   {lock_kind::ipl_timed_polling, &run.set->polling}};
      for (const auto &one : kinds) {
        measure_handoff(one.kind, run.lock_path, run.peer_lock_path, first, rounds, one.sample);
      }
    }
  }
  print_latency("raw OFD", c.handoff.raw);
  print_latency("libipl forever", c.handoff.forever);
  print_latency("libipl timed", c.handoff.timed);
  print_latency("timed-polling", c.handoff.polling);
  if (c.across) {
    std::printf("   across:\n");
    print_latency("raw OFD", c.handoff_across.raw);
    print_latency("libipl forever", c.handoff_across.forever);
    print_latency("libipl timed", c.handoff_across.timed);
    print_latency("timed-polling", c.handoff_across.polling);
  }
}

// --across: creates the lock file through `lock_path`, waits (bounded) until
// `peer_lock_path` names it too, and fails unless a lock taken through one
// path excludes a lock through the other, both ways: a benchmark across two
// paths that do not share locks (two unrelated folders, sshfs) would
// measure nothing.
void check_one_lock_through_two_paths(const std::string &lock_path,
                                      const std::string &peer_lock_path) {
  const int fd = open_file(lock_path);
  int peer_fd = -1;
  int err = 0;
  wait_until(
      [&] {
        peer_fd = open(peer_lock_path.c_str(), O_RDWR | O_CLOEXEC);
        err = peer_fd < 0 ? errno : 0;
        if (peer_fd < 0 && err != ENOENT) {
          fail("--across: open %s: %s", peer_lock_path.c_str(), std::strerror(err));
        }
        return peer_fd >= 0;
      },
      20 * kSec, "the lock file to appear through the peer path");
  const struct {
    int holder;
    int other;
    const std::string &holder_path;
  } ways[] = {{fd, peer_fd, lock_path}, {peer_fd, fd, peer_lock_path}};
  for (const auto &way : ways) {
    err = raw_ofd_lock(way.holder, false);
    if (err != 0) fail("--across: F_OFD_SETLK %s: %s", way.holder_path.c_str(), std::strerror(err));
    err = raw_ofd_lock(way.other, false);
    if (err == 0) {
      fail(
          "--across: %s and %s do not share locks (both granted): not one file, or a file "
          "system that keeps locks per mount",
          lock_path.c_str(), peer_lock_path.c_str());
    }
    if (err != EAGAIN && err != EACCES) fail("--across: F_OFD_SETLK: %s", std::strerror(err));
    err = raw_ofd_unlock(way.holder);
    if (err != 0) fail("--across: unlock: %s", std::strerror(err));
  }
  close(peer_fd);
  close(fd);
}

void measure_cpu(c_figures *figures, const std::string &lock_path, const plan &p) {
  c_figures &c = *figures;
  step("3/7 CPU used while waiting in a timed acquire");
  c.cpu_floor = measure_cpu_while_waiting(lock_kind::raw_ofd, lock_path, p.cpu_wait_ms);
  c.cpu_timed = measure_cpu_while_waiting(lock_kind::ipl_timed, lock_path, p.cpu_wait_ms);
  c.cpu_polling = measure_cpu_while_waiting(lock_kind::ipl_timed_polling, lock_path, p.cpu_wait_ms);
  std::printf(
      "   CPU in %.2f s waited: raw OFD + alarm %.3f ms, libipl timed %.3f ms, "
      "timed-polling %.3f ms\n",
      c.cpu_timed.waited_s, c.cpu_floor.process_cpu_ms, c.cpu_timed.process_cpu_ms,
      c.cpu_polling.process_cpu_ms);
}

void measure_overshoots(c_figures *figures, const std::string &lock_path, const plan &p) {
  c_figures &c = *figures;
  step("4/7 overshoot of a 50 ms timeout");
  c.overshoot_floor_us = measure_sleep_overshoot_us(kOvershootTimeoutMs, p.overshoot_count);
  c.overshoot_timed_us = measure_ipl_timeout_overshoot_us(lock_kind::ipl_timed, lock_path,
                                                          kOvershootTimeoutMs, p.overshoot_count);
  c.overshoot_polling_us = measure_ipl_timeout_overshoot_us(lock_kind::ipl_timed_polling, lock_path,
                                                            kOvershootTimeoutMs, p.overshoot_count);
  std::printf(
      "   median: clock_nanosleep %.1f us, libipl timed %.1f us, timed-polling %.1f us "
      "(%d waits each)\n",
      median(c.overshoot_floor_us), median(c.overshoot_timed_us), median(c.overshoot_polling_us),
      p.overshoot_count);
}

// Right after figure 4, whose overshoot is the cancel's target, so that
// both see the same machine.
void measure_cancels(c_figures *figures, const std::string &lock_path, const plan &p) {
  c_figures &c = *figures;
  step("7/7 cancel latency (beside 4)");
  // Blocks of each kind in turn, so that a change in the machine's load
  // hits every kind alike.
  const struct {
    bool floor;
    bool forever;
    bool polling;
    std::vector<double> *sample;
  } kinds[] = {{true, false, false, &c.cancel_floor_us},
               {false, false, false, &c.cancel_timed_us},
               {false, true, false, &c.cancel_forever_us},
               {false, false, true, &c.cancel_timed_polling_us},
               {false, true, true, &c.cancel_forever_polling_us}};
  const int block = std::min(p.cancel_count, 50);
  for (int done = 0; done < p.cancel_count; done += block) {
    const int count = std::min(block, p.cancel_count - done);
    for (const auto &one : kinds) {
      const std::vector<double> more =
          one.floor ? measure_cancel_floor_us(lock_path, count)
                    : measure_cancel_latency_us(lock_path, one.forever, one.polling, count);
      one.sample->insert(one.sample->end(), more.begin(), more.end());
    }
  }
  std::printf(
      "   median (p99) us: pthread_kill floor %.1f (%.1f), timed %.1f (%.1f),\n"
      "   forever %.1f (%.1f), timed-polling %.1f (%.1f), forever-polling %.1f (%.1f);\n"
      "   %d waits each\n",
      median(c.cancel_floor_us), percentile(c.cancel_floor_us, 99), median(c.cancel_timed_us),
      percentile(c.cancel_timed_us, 99), median(c.cancel_forever_us),
      percentile(c.cancel_forever_us, 99), median(c.cancel_timed_polling_us),
      percentile(c.cancel_timed_polling_us, 99), median(c.cancel_forever_polling_us),
      percentile(c.cancel_forever_polling_us, 99), p.cancel_count);
}

void measure_throughputs(c_figures *figures, const std::string &lock_path,
                         const std::string &data_path, const plan &p) {
  c_figures &c = *figures;
  step("5/7 throughput and fairness");
  for (int n : kProcessCounts) {
    throughput_set &set = c.throughput[n];
    const struct {
      lock_kind kind;
      throughput_sample *sample;
    } kinds[] = {{lock_kind::raw_ofd, &set.raw_ofd},
                 {lock_kind::ipl_forever, &set.ipl_forever},
                 {lock_kind::ipl_timed, &set.ipl_timed},
                 {lock_kind::ipl_timed_polling, &set.ipl_timed_polling}};
    // Slices of the run, each kind in turn and a different kind first each
    // time, so that a change in the machine's load hits every kind alike.
    const size_t count = std::size(kinds);
    const double slice_seconds = p.throughput_seconds / p.throughput_slices;
    for (int slice = 0; slice < p.throughput_slices; ++slice) {
      for (size_t i = 0; i < count; ++i) {
        const auto &one = kinds[(i + size_t(slice)) % count];
        one.sample->add_slice(measure_throughput(one.kind, lock_path, data_path, n, slice_seconds));
      }
    }
    std::printf("   N=%d op/s: raw OFD %.0f, libipl forever %.0f, timed %.0f, timed-polling %.0f\n",
                n, set.raw_ofd.ops_per_s(), set.ipl_forever.ops_per_s(), set.ipl_timed.ops_per_s(),
                set.ipl_timed_polling.ops_per_s());
  }
}

int run(const options &opts) {
  const plan p = plan_for(opts.quick);
  std::string dir = opts.dir;
  bool remove_dir = false;
  if (dir.empty()) {
    const char *tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ipl_bench.XXXXXX";
    if (mkdtemp(&pattern[0]) == nullptr)
      fail("mkdtemp %s: %s", pattern.c_str(), std::strerror(errno));
    dir = pattern;
    remove_dir = true;
  } else if (mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) {
    fail("mkdir %s: %s", dir.c_str(), std::strerror(errno));
  }
  const std::string lock_path = dir + "/bench.lock";
  const std::string data_path = dir + "/bench.data";
  std::vector<handoff_run> handoff_runs = {{nullptr, lock_path, lock_path}};
  std::string across_lock_path;
  bool remove_across_dir = false;
  if (!opts.across_dir.empty()) {
    if (mkdir(opts.across_dir.c_str(), 0777) == 0) {
      remove_across_dir = true;
    } else if (errno != EEXIST) {
      fail("mkdir %s: %s", opts.across_dir.c_str(), std::strerror(errno));
    }
    across_lock_path = opts.across_dir + "/bench.lock";
    const std::string peer_lock_path = opts.across_peer_dir + "/bench.lock";
    check_one_lock_through_two_paths(across_lock_path, peer_lock_path);
    handoff_runs.push_back({nullptr, across_lock_path, peer_lock_path});
  }

  const std::string load_before = load_average();
  std::printf("ipl_bench: libipl %s (%s locks, timed waits: %s), %ld CPUs, load average %s%s\n",
              ipl_version_string(), IPL_BENCH_POSIX_LOCK_KIND, timed_wait_mechanism().c_str(),
              sysconf(_SC_NPROCESSORS_ONLN), load_before.c_str(),
              opts.quick ? ", --quick (smoke run: figures are rough)" : "");

  c_figures c;
  std::copy(std::begin(opts.figures), std::end(opts.figures), std::begin(c.measured));
  c.across = handoff_runs.size() > 1;
  handoff_runs[0].set = &c.handoff;
  if (c.across) handoff_runs[1].set = &c.handoff_across;
  if (c.measured[1]) {
    step("1/7 uncontended acquire + release pair");
    c.pairs = measure_uncontended_pairs(lock_path, opts.quick);
    std::printf(
        "   CPU (wall) ns: raw OFD %.0f (%.0f), raw OFD + stat %.0f (%.0f), try %.0f (%.0f), "
        "timed %.0f (%.0f), forever %.0f (%.0f)\n   %s, %d repetitions\n",
        c.pairs.raw_ofd.cpu_ns, c.pairs.raw_ofd.real_ns, c.pairs.raw_ofd_stat.cpu_ns,
        c.pairs.raw_ofd_stat.real_ns, c.pairs.ipl_try.cpu_ns, c.pairs.ipl_try.real_ns,
        c.pairs.ipl_timed.cpu_ns, c.pairs.ipl_timed.real_ns, c.pairs.ipl_forever.cpu_ns,
        c.pairs.ipl_forever.real_ns, c.pairs.method.c_str(), c.pairs.repetitions);
  }
  if (c.measured[2]) measure_handoffs(&c, handoff_runs, p);
  if (c.measured[3]) measure_cpu(&c, lock_path, p);
  if (c.measured[4]) measure_overshoots(&c, lock_path, p);
  if (c.measured[7]) measure_cancels(&c, lock_path, p);
  if (c.measured[5]) measure_throughputs(&c, lock_path, data_path, p);

  fasteners_figures f;
  if (!opts.figures[6]) {
    f.unavailable_reason = "not measured: --only";
  } else if (!opts.fasteners) {
    step("6/7 fasteners");
    f.unavailable_reason = "skipped by --no-fasteners";
  } else {
    step("6/7 fasteners");
    fasteners_setup setup;
    setup.python = opts.python;
    setup.peer_script = opts.peer_script;
    setup.lock_path = lock_path;
    setup.data_path = data_path;
    setup.quick = opts.quick;
    const std::vector<int> counts(std::begin(kProcessCounts), std::end(kProcessCounts));
    f = measure_fasteners(setup, p.fasteners_handoff_rounds, p.cpu_wait_ms, kOvershootTimeoutMs,
                          p.overshoot_count, counts, p.throughput_seconds);
  }
  if (f.available) {
    std::printf("   fasteners %s with %s: measured\n", f.fasteners_version.c_str(),
                opts.python.c_str());
  } else if (opts.figures[6]) {
    std::printf("   fasteners: unavailable (%s)\n", f.unavailable_reason.c_str());
  }
  step(nullptr);

  const std::string load_after = load_average();
  const std::vector<row> rows = build_rows(c, f);
  print_table(rows, c, f, opts);
  std::printf(
      "load average: %s before, %s after (on a shared machine compare ratios, not\n"
      "  absolute figures, and repeat runs)\n",
      load_before.c_str(), load_after.c_str());
  if (!opts.json_path.empty()) {
    write_json(opts.json_path, opts, c, f, rows, load_before, load_after);
    std::printf("raw numbers: %s\n", opts.json_path.c_str());
  }

  if (remove_dir) {
    unlink(lock_path.c_str());
    unlink(data_path.c_str());
    rmdir(dir.c_str());
  }
  if (remove_across_dir) {
    unlink(across_lock_path.c_str());
    rmdir(opts.across_dir.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace bench

int main(int argc, char **argv) {
  const bench::options opts = bench::parse_options(argc, argv);
  // A peer that dies must give us EPIPE, not kill the benchmark.
  signal(SIGPIPE, SIG_IGN);
  return bench::run(opts);
}

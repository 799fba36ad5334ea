// SPDX-License-Identifier: MIT
// Drives bench/fasteners_peer_bench.py (one Python process per role) and
// turns its answers into the same figures as libipl's. What is measured:
//   pair       fasteners acquire + release in Python, uncontended;
//   handoff    a C process holding a raw OFD lock releases it, a fasteners
//              waiter (Python) wakes: the fasteners side is the waiter, which
//              is where its polling shows (the release side is one syscall);
//   cpu        fasteners acquire(timeout) on a lock a C process holds;
//   overshoot  fasteners acquire(timeout=50 ms) on a held lock;
//   throughput N Python processes, each lock / increment / unlock.
#include "bench_fasteners.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <utility>

namespace bench {
namespace {

std::vector<std::string> split_words(const std::string &line) {
  std::istringstream stream(line);
  std::vector<std::string> words;
  std::string word;
  while (stream >> word) words.push_back(word);
  return words;
}

double to_number(const std::string &text, const char *what) {
  char *end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0')
    fail("fasteners peer: %s is not a number: '%s'", what, text.c_str());
  return value;
}

// One Python peer process, talking in lines over its stdin and stdout. Its
// stderr is ours, so that a Python traceback is seen.
class peer_process {
 public:
  peer_process(const fasteners_setup &setup, const std::vector<std::string> &args) {
    int to_peer[2];
    int from_peer[2];
    if (pipe2(to_peer, O_CLOEXEC) != 0 || pipe2(from_peer, O_CLOEXEC) != 0) {
      fail("pipe: %s", std::strerror(errno));
    }
    std::vector<std::string> words = {setup.python, setup.peer_script};
    words.insert(words.end(), args.begin(), args.end());
    pid_ = fork_child([&] {
      // dup2 clears close-on-exec on the copies the peer keeps.
      if (dup2(to_peer[0], STDIN_FILENO) < 0 || dup2(from_peer[1], STDOUT_FILENO) < 0) return 126;
      std::vector<char *> argv;
      for (std::string &word : words) argv.push_back(&word[0]);
      argv.push_back(nullptr);
      execv(setup.python.c_str(), argv.data());
      return 127;
    });
    close(to_peer[0]);
    close(from_peer[1]);
    to_fd_ = to_peer[1];
    from_fd_ = from_peer[0];
  }

  ~peer_process() {
    if (to_fd_ >= 0) close(to_fd_);
    if (from_fd_ >= 0) close(from_fd_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  peer_process(const peer_process &) = delete;
  peer_process &operator=(const peer_process &) = delete;

  pid_t pid() const { return pid_; }

  // One line within bound_ns; false on end of output or timeout.
  bool read_line(std::string *line, int64_t bound_ns) {
    const int64_t deadline = monotonic_ns() + bound_ns;
    for (;;) {
      const size_t newline = buffer_.find('\n');
      if (newline != std::string::npos) {
        *line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return true;
      }
      const int64_t left_ns = deadline - monotonic_ns();
      if (left_ns <= 0) return false;
      pollfd readable = {from_fd_, POLLIN, 0};
      const int ready = poll(&readable, 1, int(left_ns / kMs) + 1);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      char chunk[4096];
      const ssize_t got = read(from_fd_, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      buffer_.append(chunk, size_t(got));
    }
  }

  // The words of the next line; fails on an error line, silence or a line
  // that does not start with `expected` (when given).
  std::vector<std::string> expect(const char *expected, int64_t bound_ns) {
    std::string line;
    if (!read_line(&line, bound_ns)) {
      fail("fasteners peer (pid %d) said nothing within %.0f s (expected '%s')", int(pid_),
           double(bound_ns) / kSec, expected);
    }
    std::vector<std::string> words = split_words(line);
    if (!words.empty() && words[0] == "error") fail("fasteners peer: %s", line.c_str());
    if (words.empty() || words[0] != expected) {
      fail("fasteners peer: expected '%s', got '%s'", expected, line.c_str());
    }
    return words;
  }

  void write_line(const std::string &line) {
    const std::string text = line + "\n";
    if (write(to_fd_, text.data(), text.size()) != ssize_t(text.size())) {
      fail("writing to the fasteners peer: %s", std::strerror(errno));
    }
  }

  // Lines "NAME VALUE..." up to "done".
  std::map<std::string, std::vector<std::string>> read_results(int64_t bound_ns) {
    std::map<std::string, std::vector<std::string>> results;
    const int64_t deadline = monotonic_ns() + bound_ns;
    std::string line;
    for (;;) {
      if (!read_line(&line, deadline - monotonic_ns())) {
        fail("fasteners peer (pid %d) did not finish within %.0f s", int(pid_),
             double(bound_ns) / kSec);
      }
      std::vector<std::string> words = split_words(line);
      if (words.empty()) continue;
      if (words[0] == "error") fail("fasteners peer: %s", line.c_str());
      if (words[0] == "done") return results;
      results[words[0]].assign(words.begin() + 1, words.end());
    }
  }

  // Closes its input and waits for it (at most bound_ns); its exit status.
  int finish(int64_t bound_ns) {
    close(to_fd_);
    to_fd_ = -1;
    const int64_t deadline = monotonic_ns() + bound_ns;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (monotonic_ns() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      sleep_for_ns(1 * kMs);
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int to_fd_ = -1;
  int from_fd_ = -1;
  std::string buffer_;
};

double result_number(const std::map<std::string, std::vector<std::string>> &results,
                     const char *name) {
  const auto found = results.find(name);
  if (found == results.end() || found->second.size() != 1) fail("fasteners peer: no '%s'", name);
  return to_number(found->second[0], name);
}

// Empty when fasteners works; else why not.
std::string probe(const fasteners_setup &setup, fasteners_figures *figures) {
  if (access(setup.peer_script.c_str(), R_OK) != 0)
    return "peer script " + setup.peer_script + " not found";
  if (access(setup.python.c_str(), X_OK) != 0) return setup.python + " is not an executable";
  peer_process peer(setup, {"probe"});
  std::string line;
  std::string reason;
  while (reason.empty() && peer.read_line(&line, 20 * kSec)) {
    const std::vector<std::string> words = split_words(line);
    if (words.empty()) continue;
    if (words[0] == "done") break;
    if (words[0] == "error") reason = line.substr(6);
    if (words[0] == "python" && words.size() == 2) figures->python_version = words[1];
    if (words[0] == "fasteners" && words.size() == 2) figures->fasteners_version = words[1];
  }
  const int status = peer.finish(10 * kSec);
  if (!reason.empty()) return reason;
  if (status != 0 || figures->fasteners_version.empty()) {
    return setup.python + " could not run the peer script (exit status " + std::to_string(status) +
           ")";
  }
  return "";
}

handoff_sample measure_fasteners_handoff(const fasteners_setup &setup, const char *mode,
                                         int rounds) {
  const int64_t bound = 30 * kSec;
  const int fd = open_file(setup.lock_path);
  peer_process peer(setup, {"waiter", setup.lock_path, mode});
  peer.expect("ready", bound);
  handoff_sample sample;
  for (int round = 0; round < rounds; ++round) {
    const int err = raw_ofd_lock(fd, false);
    if (err != 0)
      fail("fasteners handoff: the C holder could not take the lock: %s", std::strerror(err));
    peer.write_line("wait");
    peer.expect("waiting", bound);
    sleep_for_ns(handoff_hold_ns(round));
    if (!wait_until_asleep(peer.pid(), 1 * kSec)) sample.rounds_not_seen_asleep++;
    const int64_t release_ns = monotonic_ns();
    if (raw_ofd_unlock(fd) != 0) fail("fasteners handoff: unlock failed");
    const std::vector<std::string> acquired = peer.expect("acquired", bound);
    if (acquired.size() != 2) fail("fasteners peer: a bad 'acquired' line");
    const double acquired_ns = to_number(acquired[1], "acquired");
    if (acquired_ns < double(release_ns)) {
      fail("fasteners handoff round %d: the peer got the lock while the C process held it", round);
    }
    sample.latency_us.push_back((acquired_ns - double(release_ns)) / kUs);
    peer.write_line("release");
    peer.expect("released", bound);
  }
  peer.write_line("exit");
  if (peer.finish(bound) != 0) fail("fasteners waiter: bad exit status");
  close(fd);
  return sample;
}

// N worker processes, started once, run the blocking and then the timed
// loop (Python's start-up is slow on a loaded machine).
void measure_throughput(const fasteners_setup &setup, int processes, double seconds,
                        throughput_sample *blocking, throughput_sample *timed) {
  const int64_t bound = 60 * kSec;
  std::vector<std::unique_ptr<peer_process>> peers;
  for (int i = 0; i < processes; ++i) {
    peers.push_back(std::make_unique<peer_process>(
        setup, std::vector<std::string>{"worker", setup.lock_path, setup.data_path}));
  }
  for (auto &peer : peers) peer->expect("ready", bound);
  const std::pair<const char *, throughput_sample *> modes[] = {{"block", blocking},
                                                                {"timed", timed}};
  for (const auto &mode : modes) {
    reset_counter(setup.data_path);
    const int64_t end_ns = monotonic_ns() + int64_t(seconds * kSec);
    for (auto &peer : peers) peer->write_line("go " + std::to_string(end_ns) + " " + mode.first);
    throughput_sample &sample = *mode.second;
    sample.seconds = seconds;
    int64_t total = 0;
    for (auto &peer : peers) {
      const std::vector<std::string> words = peer->expect("ops", bound + int64_t(seconds * kSec));
      if (words.size() != 2) fail("fasteners peer: a bad 'ops' line");
      const int64_t ops = int64_t(to_number(words[1], "ops"));
      sample.ops_per_process.push_back(ops);
      total += ops;
    }
    const int64_t counter = read_counter(setup.data_path);
    if (counter != total) {
      fail("fasteners throughput: the counter reads %lld but %lld increments were made",
           static_cast<long long>(counter), static_cast<long long>(total));
    }
  }
  for (auto &peer : peers) {
    if (peer->finish(bound) != 0) fail("fasteners worker: bad exit status");
  }
}

}  // namespace

fasteners_figures measure_fasteners(const fasteners_setup &setup, int handoff_rounds,
                                    int64_t cpu_wait_ms, int64_t overshoot_timeout_ms,
                                    int overshoot_count, const std::vector<int> &process_counts,
                                    double throughput_seconds) {
  fasteners_figures figures;
  figures.unavailable_reason = probe(setup, &figures);
  if (!figures.unavailable_reason.empty()) return figures;
  figures.available = true;

  {
    const int repetitions = setup.quick ? 3 : 9;
    const char *seconds = setup.quick ? "0.02" : "0.1";
    peer_process peer(setup,
                      {"uncontended", setup.lock_path, std::to_string(repetitions), seconds});
    const auto results = peer.read_results(120 * kSec);
    auto cost = [&](const std::string &name) {
      return pair_cost{result_number(results, name.c_str()),
                       result_number(results, (name + "_wall").c_str())};
    };
    figures.pair_try = cost("pair_try_ns");
    figures.pair_timed = cost("pair_timed_ns");
    figures.pair_forever = cost("pair_forever_ns");
    figures.python_raw_pair = cost("python_raw_pair_ns");
    if (peer.finish(10 * kSec) != 0) fail("fasteners peer: bad exit status");
    std::printf("   pair, ns CPU: try %.0f, timed %.0f, forever %.0f (Python's lockf pair %.0f)\n",
                figures.pair_try.cpu_ns, figures.pair_timed.cpu_ns, figures.pair_forever.cpu_ns,
                figures.python_raw_pair.cpu_ns);
  }
  {
    lock_holder holder(setup.lock_path);
    peer_process peer(setup,
                      {"held", setup.lock_path, std::to_string(cpu_wait_ms),
                       std::to_string(overshoot_timeout_ms), std::to_string(overshoot_count)});
    const int64_t bound =
        60 * kSec + (cpu_wait_ms + overshoot_count * (overshoot_timeout_ms + 200)) * kMs;
    const auto results = peer.read_results(bound);
    figures.cpu.waited_s = result_number(results, "cpu_waited_s");
    figures.cpu.process_cpu_ms = result_number(results, "cpu_process_ms");
    figures.cpu.thread_cpu_ms = result_number(results, "cpu_thread_ms");
    const auto overshoot = results.find("overshoot_us");
    if (overshoot == results.end()) fail("fasteners peer: no overshoot_us");
    for (const std::string &value : overshoot->second) {
      figures.overshoot_us.push_back(to_number(value, "overshoot_us"));
    }
    if (peer.finish(10 * kSec) != 0) fail("fasteners peer: bad exit status");
    std::printf("   CPU while waiting %.3f ms in %.2f s; 50 ms overshoot median %.1f us\n",
                figures.cpu.process_cpu_ms, figures.cpu.waited_s, median(figures.overshoot_us));
  }
  figures.handoff_forever = measure_fasteners_handoff(setup, "block", handoff_rounds);
  figures.handoff_timed = measure_fasteners_handoff(setup, "timed", handoff_rounds);
  std::printf("   handoff to a fasteners waiter: median %.1f us (blocking), %.1f us (timeout)\n",
              median(figures.handoff_forever.latency_us), median(figures.handoff_timed.latency_us));
  for (int processes : process_counts) {
    measure_throughput(setup, processes, throughput_seconds, &figures.throughput_forever[processes],
                       &figures.throughput_timed[processes]);
    std::printf("   N=%d: %.0f op/s (blocking), %.0f op/s (timeout)\n", processes,
                figures.throughput_forever[processes].ops_per_s(),
                figures.throughput_timed[processes].ops_per_s());
  }
  return figures;
}

}  // namespace bench

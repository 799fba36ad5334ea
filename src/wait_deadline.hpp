// SPDX-License-Identifier: MIT
// wait_deadline: when a timed wait must give up, on the monotonic clock.
#ifndef IPL_SRC_WAIT_DEADLINE_HPP
#define IPL_SRC_WAIT_DEADLINE_HPP

#include <chrono>
#include <cstdint>

namespace ipl::detail {

class wait_deadline {
 public:
  using clock = std::chrono::steady_clock;

  // timeout_ms: 0 = try once, > 0 = that long from now, < 0 = forever (the
  // C API has already rejected negative values other than IPL_WAIT_FOREVER).
  static wait_deadline from_timeout_ms(int64_t timeout_ms) {
    wait_deadline d;
    if (timeout_ms < 0) {
      d.kind_ = kind::forever;
    } else if (timeout_ms == 0) {
      d.kind_ = kind::try_once;
    } else {
      d.kind_ = kind::until;
      // Saturate instead of overflowing: anything past ~100 years is forever
      // in practice but stays a timed wait, as the caller asked.
      constexpr int64_t max_ms = int64_t(100) * 365 * 24 * 3600 * 1000;
      const int64_t ms = timeout_ms < max_ms ? timeout_ms : max_ms;
      d.when_ = clock::now() + std::chrono::milliseconds(ms);
    }
    return d;
  }

  bool is_forever() const { return kind_ == kind::forever; }
  bool is_try_once() const { return kind_ == kind::try_once; }
  bool is_timed() const { return kind_ == kind::until; }
  // Only meaningful for a timed wait.
  clock::time_point when() const { return when_; }
  bool expired() const {
    return kind_ == kind::try_once || (kind_ == kind::until && clock::now() >= when_);
  }

 private:
  enum class kind { try_once, until, forever };
  kind kind_ = kind::try_once;
  clock::time_point when_{};
};

}  // namespace ipl::detail

#endif  // IPL_SRC_WAIT_DEADLINE_HPP

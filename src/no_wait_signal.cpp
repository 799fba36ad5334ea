// SPDX-License-Identifier: MIT
// Systems without per-thread timer signals: timed waits always poll.
#include "ipl/ipl.h"
#include "wait_signal.hpp"

namespace ipl::detail {

deadline_interrupt::deadline_interrupt(const wait_deadline &) {}
deadline_interrupt::~deadline_interrupt() = default;
void deadline_interrupt::fire_now() {}

bool signal_can_interrupt_lock_wait(int) { return false; }

// 0 and AUTO are valid everywhere (AUTO finds no signal: waits poll); a
// negative number is never a signal; a positive one cannot be used here.
int set_wait_signal(int signo) {
  if (signo == 0 || signo == IPL_WAIT_SIGNAL_AUTO) return IPL_OK;
  if (signo < 0) return IPL_E_INVALID;
  return IPL_E_UNSUPPORTED;
}

int current_wait_signal() { return 0; }

}  // namespace ipl::detail

// SPDX-License-Identifier: MIT
// ipl.hpp alone, as C++17: it must pull in ipl.h and every standard header it
// uses itself. Included twice to prove the include guard.
#include <ipl/ipl.hpp>
#include <ipl/ipl.hpp>

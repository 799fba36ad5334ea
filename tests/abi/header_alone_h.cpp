// SPDX-License-Identifier: MIT
// ipl.h alone, as C++17 (the extern "C" block and the macros under a C++
// compiler). Included twice to prove the include guard.
#include <ipl/ipl.h>
#include <ipl/ipl.h>

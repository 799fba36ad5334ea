/* SPDX-License-Identifier: MIT */
/* ipl.h alone, as C99: nothing before it, nothing it forgets to include.
 * Included twice: C99 rejects a repeated typedef, so this also proves the
 * include guard. Built with -std=c99 -pedantic -Werror (see meson.build). */
#include <ipl/ipl.h>
#include <ipl/ipl.h>

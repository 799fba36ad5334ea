/* SPDX-License-Identifier: MIT */
/* Built against libipl as a subproject: takes a lock, checks that a second
 * handle on the same file is refused, releases.
 * Usage: subproject_consumer LOCK_FILE */
#include <ipl/ipl.h>
#include <stdio.h>

int main(int argc, char **argv) {
  ipl_lock *holder = NULL;
  ipl_lock *other = NULL;
  int ok;
  if (argc != 2) {
    fprintf(stderr, "usage: subproject_consumer LOCK_FILE\n");
    return 2;
  }
  if (ipl_open(argv[1], 0, &holder) != IPL_OK || ipl_open(argv[1], 0, &other) != IPL_OK) {
    fprintf(stderr, "subproject_consumer: ipl_open failed\n");
    ipl_close(holder);
    return 1;
  }
  ok = ipl_acquire(holder, 0) == IPL_OK && ipl_acquire(other, 0) == IPL_E_TIMEOUT &&
       ipl_release(holder) == IPL_OK && ipl_acquire(other, 0) == IPL_OK &&
       ipl_release(other) == IPL_OK;
  ipl_close(other);
  ipl_close(holder);
  if (!ok) {
    fprintf(stderr, "subproject_consumer: the lock did not exclude\n");
    return 1;
  }
  printf("subproject_consumer: ok (libipl %s)\n", ipl_version_string());
  return 0;
}

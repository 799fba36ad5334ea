/* SPDX-License-Identifier: MIT */
/* A C99 consumer of the installed libipl, built by scripts/test-packaging from
 * `pkg-config ipl` alone (shared) and `pkg-config --static ipl` (static).
 * It locks for real: a second handle on the same file must time out while
 * the first holds the lock, and get it once the first lets go.
 * Usage: consumer_c LOCK_FILE */
#include <ipl/ipl.h>
#include <stdio.h>
#include <string.h>

static int expect(const char *what, int got, int wanted) {
  if (got != wanted) {
    fprintf(stderr, "consumer_c: %s: got %d (%s), wanted %d (%s)\n", what, got,
            ipl_strerror(got), wanted, ipl_strerror(wanted));
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  ipl_lock *holder = NULL;
  ipl_lock *other = NULL;
  int failures = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: consumer_c LOCK_FILE\n");
    return 2;
  }
  /* The header and the library linked in must be the same release. */
  if (ipl_version_number() != IPL_VERSION_NUMBER ||
      strcmp(ipl_version_string(), IPL_VERSION_STRING) != 0) {
    fprintf(stderr, "consumer_c: header %s but library %s\n", IPL_VERSION_STRING,
            ipl_version_string());
    return 1;
  }
  if (expect("ipl_open holder", ipl_open(argv[1], 0, &holder), IPL_OK) ||
      expect("ipl_open other", ipl_open(argv[1], 0, &other), IPL_OK)) {
    ipl_close(holder);
    return 1;
  }
  failures += expect("holder takes the lock", ipl_acquire(holder, 0), IPL_OK);
  failures += expect("other tries while held", ipl_acquire(other, 0), IPL_E_TIMEOUT);
  /* A timed wait: exercises the library's watchdog thread and wait signal. */
  failures += expect("other waits 50 ms while held", ipl_acquire(other, 50), IPL_E_TIMEOUT);
  failures += expect("other reads while held", ipl_acquire_read(other, 0), IPL_E_TIMEOUT);
  failures += expect("holder releases", ipl_release(holder), IPL_OK);
  failures += expect("other takes it after release", ipl_acquire(other, 1000), IPL_OK);
  failures += expect("other releases", ipl_release(other), IPL_OK);
  ipl_close(other);
  ipl_close(holder);
  if (failures != 0) return 1;
  printf("consumer_c: ok (libipl %s)\n", ipl_version_string());
  return 0;
}

/* SPDX-License-Identifier: MIT */
/* A tiny C program over the C ABI: takes the lock, reports, releases. */
#include <ipl/ipl.h>
#include <stdio.h>

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "/tmp/ipl-example.lock";
  ipl_lock *lock = NULL;
  int rc = ipl_open(path, 0, &lock);
  if (rc != IPL_OK) {
    fprintf(stderr, "ipl_open %s: %s\n", path, ipl_strerror(rc));
    return 1;
  }
  rc = ipl_acquire(lock, 5000); /* wait at most 5 s */
  if (rc != IPL_OK) {
    fprintf(stderr, "ipl_acquire: %s\n", ipl_strerror(rc));
    ipl_close(lock);
    return 1;
  }
  printf("holding %s (libipl %s)\n", path, ipl_version_string());
  ipl_release(lock);
  ipl_close(lock);
  return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * iplock.c - run a command while holding a libipl lock (a flock(1) look-alike).
 *
 *   iplock [options] LOCKFILE COMMAND [ARG...]
 *   iplock [options] LOCKFILE -c 'shell command'
 *   iplock [options] NUMBER          (lock, or with -u unlock, descriptor NUMBER)
 *
 * Why not flock(1): on Linux, flock(2) locks and fcntl record locks never see
 * each other, so flock(1) cannot coordinate with Python's fasteners or with
 * libipl. iplock takes the very lock libipl and fasteners take (an fcntl
 * record lock from byte 0: whole file for exclusive, bytes 0 to 2^63-2 for
 * shared, as ipl.h describes).
 *
 * Whose lock it is. As with flock(1), the lock belongs to an open file
 * description, not to the iplock process:
 *   - descriptor mode (`( iplock -n 9 || exit 1; ... ) 9>/var/lock/x`): the
 *     shell's descriptor 9 (ipl_open_fd); the lock outlives iplock, until
 *     `iplock -u 9` or until every copy of that descriptor is closed;
 *   - command mode: iplock opens LOCKFILE with IPL_OPEN_INHERITABLE and the
 *     command inherits the descriptor (unless -o), so the lock lives as long
 *     as the command does, even if iplock itself is killed (SIGKILL
 *     included); iplock releases it when the command ends. -F execs the
 *     command in iplock's place.
 * That needs open-file-description (OFD) locks: a classic fcntl lock belongs
 * to a process and dies with it. With a libipl built for classic locks
 * (macOS, the BSDs, -Dposix_locks=classic), descriptor mode and -F are
 * refused, and command mode takes the lock through a libipl handle on the
 * path, which dies with iplock (-o is then what always happens).
 * Everything else (open rules, the check that the path still names the
 * locked file, waits) is libipl's.
 *
 * The life of one run (command mode):
 *   1. parse options (stop at LOCKFILE, so COMMAND's own options pass through);
 *   2. install handlers for the signals that end a wait (SIGINT, SIGTERM,
 *      SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2), except those ignored on entry;
 *   3. open the lock file and take the lock (see "Interruptible waits");
 *   4. fork; the child restores the signal state iplock started with and
 *      execs COMMAND, keeping the lock's descriptor (unless -o); the parent
 *      waits for it under the signal rule below;
 *   5. release the lock, exit with the command's status.
 *
 * Interruptible waits. The library's waits are deliberately deaf to signals
 * ("signals never shorten or break a wait"), yet SIGINT / SIGTERM must end a
 * wait at once. A second thread makes the one blocking acquire call, with
 * the handled signals blocked, while the main thread sleeps in poll() on a
 * self-pipe. Two things write to that pipe: the waiter thread (one byte, 0,
 * when the acquire returns) and the signal handler, which runs only in the
 * main thread (one byte: the signal number). A granted lock reaches the
 * command with no added latency; a signal makes the main thread cancel the
 * wait (ipl_cancel), join the waiter, release a lock granted in that very
 * instant, and end iplock with 128 + the signal number, as a shell reports
 * it. Releasing matters: in descriptor mode the description outlives
 * iplock, and so would a lock left on it.
 *
 * Signals while the command runs: iplock forwards none (neither does
 * flock(1)). A signal sent to the process group (Ctrl-C, Ctrl-\, a hang-up,
 * `kill -- -PGID`, timeout(1), systemd stopping a unit) already reaches the
 * command, and iplock cannot tell such a signal from one sent to it alone:
 * the kernel reports both the same way, so forwarding delivered group
 * signals twice. iplock ignores SIGINT and SIGQUIT (the terminal sends them
 * to the whole job), as system(3) and time(1) do, waits for the command and
 * reports its status; SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 get the
 * disposition iplock started with (by default they end iplock), and the
 * command keeps running and keeps the lock. To stop the command, signal it
 * or its process group.
 */
#define _GNU_SOURCE /* getopt_long; POSIX.1-2008 under -std=c99 */

#include <ipl/ipl.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Exit codes of iplock itself (sysexits.h values, spelled out because that
 * header is not POSIX). The command's own status is passed through. */
enum {
  EXIT_USAGE = 64,        /* EX_USAGE: bad command line */
  EXIT_NO_LOCK_FILE = 66, /* EX_NOINPUT: the lock file cannot be opened */
  EXIT_OS_ERROR = 71,     /* EX_OSERR: locking, fork, pipe or thread failed */
  EXIT_NOT_EXECUTABLE = 126,
  EXIT_NOT_FOUND = 127,
  EXIT_SIGNAL_BASE = 128
};

/* Larger -w values (over 31 years) simply wait forever. */
#define MAX_TIMEOUT_SECONDS 1e9

static const char *program_name = "iplock";

/* ---- Clock ----------------------------------------------------------------- */

static int64_t monotonic_us(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* ---- Signals ------------------------------------------------------------ */

static const int wait_signals[] = {SIGINT,  SIGTERM, SIGHUP,
                                   SIGQUIT, SIGUSR1, SIGUSR2};
#define WAIT_SIGNAL_COUNT (sizeof wait_signals / sizeof wait_signals[0])

/* The signal state iplock started with, given back to the command. */
static sigset_t entry_signal_mask;
static struct sigaction entry_actions[WAIT_SIGNAL_COUNT];
/* The signals that iplock handles while it waits (all but those ignored
 * on entry: `nohup iplock ...` must leave SIGHUP ignored for the command). */
static sigset_t handled_signals;

/* Written by the handler and by the waiter thread; read by main(). */
static int wake_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  const int saved_errno = errno;
  const unsigned char byte = (unsigned char)sig;
  /* Non-blocking: if the pipe is full, main() has a wake-up pending. */
  ssize_t ignored = write(wake_pipe[1], &byte, 1);
  (void)ignored;
  errno = saved_errno;
}

/* Records the entry state and handles every wait signal not ignored on
 * entry. Returns 0, or -1 with errno set. */
static int install_signal_handlers(void) {
  size_t i;
  struct sigaction action;
  if (sigprocmask(SIG_SETMASK, NULL, &entry_signal_mask) != 0) return -1;
  sigemptyset(&handled_signals);
  memset(&action, 0, sizeof action);
  action.sa_handler = on_signal;
  action.sa_flags = 0; /* no SA_RESTART: poll() wakes */
  sigfillset(&action.sa_mask);
  for (i = 0; i < WAIT_SIGNAL_COUNT; ++i) {
    if (sigaction(wait_signals[i], NULL, &entry_actions[i]) != 0) return -1;
    if (entry_actions[i].sa_handler == SIG_IGN) continue;
    if (sigaction(wait_signals[i], &action, NULL) != 0) return -1;
    sigaddset(&handled_signals, wait_signals[i]);
  }
  /* Unblock them in case iplock was started with them blocked: a blocked
   * SIGTERM could otherwise never end a wait. */
  return sigprocmask(SIG_UNBLOCK, &handled_signals, NULL);
}

/* Before exec (the command, or -F): the signal state iplock was given.
 * Handlers are reset to the entry actions (the default, as exec would do)
 * before the mask is restored, so a pending signal never runs iplock's
 * handler there. */
static void restore_entry_signal_state(void) {
  size_t i;
  for (i = 0; i < WAIT_SIGNAL_COUNT; ++i)
    sigaction(wait_signals[i], &entry_actions[i], NULL);
  sigprocmask(SIG_SETMASK, &entry_signal_mask, NULL);
}

/* In iplock while the command runs (see the top of the file): SIGINT and
 * SIGQUIT ignored, the other wait signals as on entry. Called with the
 * handled signals blocked; a pending SIGINT is discarded here, a pending
 * SIGTERM acts once they are unblocked. */
static void enter_command_signal_state(void) {
  size_t i;
  struct sigaction ignore;
  memset(&ignore, 0, sizeof ignore);
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  for (i = 0; i < WAIT_SIGNAL_COUNT; ++i) {
    if (wait_signals[i] == SIGINT || wait_signals[i] == SIGQUIT)
      sigaction(wait_signals[i], &ignore, NULL);
    else
      sigaction(wait_signals[i], &entry_actions[i], NULL);
  }
}

static int set_fd_flag(int fd, int get, int set, int flag) {
  const int flags = fcntl(fd, get);
  return flags < 0 ? -1 : fcntl(fd, set, flags | flag);
}

/* Moves *fd to a number >= 3 (close-on-exec), so that a program started
 * with closed standard streams never prints into it. 0 or -1 (errno). */
static int move_above_stdio(int *fd) {
  int moved;
  if (*fd > 2) return 0;
  moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
  if (moved < 0) return -1;
  close(*fd);
  *fd = moved;
  return 0;
}

/* The self-pipe: close-on-exec both ends, above the standard streams, and a
 * non-blocking write end so a signal storm can never block the handler. */
static int open_wake_pipe(void) {
  if (pipe(wake_pipe) != 0) return -1;
  if (move_above_stdio(&wake_pipe[0]) != 0 || move_above_stdio(&wake_pipe[1]) != 0 ||
      set_fd_flag(wake_pipe[0], F_GETFD, F_SETFD, FD_CLOEXEC) != 0 ||
      set_fd_flag(wake_pipe[1], F_GETFD, F_SETFD, FD_CLOEXEC) != 0 ||
      set_fd_flag(wake_pipe[1], F_GETFL, F_SETFL, O_NONBLOCK) != 0)
    return -1;
  return 0;
}

/* The first signal number waiting in the self-pipe, or 0 when none (bytes
 * 0, the waiter's, are skipped). */
static int take_pending_wake_signal(void) {
  struct pollfd wake;
  unsigned char byte;
  wake.fd = wake_pipe[0];
  wake.events = POLLIN;
  for (;;) {
    wake.revents = 0;
    if (poll(&wake, 1, 0) <= 0) return 0;
    if (read(wake_pipe[0], &byte, 1) != 1) return 0;
    if (byte != 0) return byte;
  }
}

/* ---- Command line --------------------------------------------------------- */

struct options {
  int shared;             /* -s: shared (read) lock instead of exclusive */
  int nonblock;           /* -n: fail at once when the lock is held */
  int unlock;             /* -u: descriptor mode only */
  int no_fork;            /* -F: exec COMMAND in iplock's place */
  int close_descriptor;   /* -o: COMMAND does not inherit the lock */
  int verbose;            /* --verbose */
  int64_t timeout_ms;     /* -w, or IPL_WAIT_FOREVER */
  int conflict_exit_code; /* -E */
  int descriptor;         /* descriptor mode: NUMBER; else -1 */
  const char *lock_path;  /* command mode */
  char **command;         /* NULL-terminated argv for execvp */
  char *shell_argv[4];    /* for -c: /bin/sh -c 'shell command' */
};

static void print_help(void) {
  printf(
      "Usage: %s [options] LOCKFILE COMMAND [ARG...]\n"
      "       %s [options] LOCKFILE -c 'shell command'\n"
      "       %s [options] NUMBER\n"
      "\n"
      "Run COMMAND while holding a lock on LOCKFILE (created if missing; its\n"
      "folder must exist), or lock the open descriptor NUMBER, as in\n"
      "  ( iplock -n 9 || exit 1; critical work ) 9>/var/lock/x\n"
      "The lock is an fcntl record lock, the one libipl and Python's fasteners\n"
      "take, so all three exclude each other. It belongs to the open file:\n"
      "COMMAND inherits it (it outlives a killed iplock) and, with NUMBER,\n"
      "the shell's descriptor keeps it after iplock exits.\n"
      "\n"
      "Options:\n"
      "  -x, -e, --exclusive        take an exclusive lock (the default)\n"
      "  -s, --shared               take a shared lock\n"
      "  -u, --unlock               drop the lock on descriptor NUMBER\n"
      "  -n, --nonblock, --nb       fail at once if the lock is held elsewhere\n"
      "  -w, --timeout, --wait SECONDS\n"
      "                             give up after SECONDS (e.g. 2 or 0.25)\n"
      "  -E, --conflict-exit-code N exit code when -n or -w gives up (0-255,\n"
      "                             default 1)\n"
      "  -o, --close                COMMAND does not get the lock's descriptor:\n"
      "                             the lock ends with iplock\n"
      "  -F, --no-fork              exec COMMAND in iplock's place; it keeps\n"
      "                             the lock (not with -o)\n"
      "  -c, --command STRING       (after LOCKFILE) run STRING with /bin/sh -c\n"
      "      --verbose              say who holds the lock while waiting, and\n"
      "                             how long getting it took\n"
      "  -h, --help                 show this help and exit\n"
      "  -V, --version              show the version and exit\n"
      "\n"
      "Signals: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2 ends a\n"
      "wait (exit 128+N). While COMMAND runs nothing is forwarded to it;\n"
      "iplock ignores SIGINT and SIGQUIT and waits for COMMAND.\n"
      "\n"
      "Exit status: COMMAND's own (128+N if signal N killed it); the conflict\n"
      "code when -n or -w gives up; 128+N when signal N ends the wait;\n"
      "64 usage error; 66 the lock file or descriptor is unusable; 71 locking\n"
      "or starting COMMAND failed, or this build cannot do descriptor locks;\n"
      "126 COMMAND not executable; 127 not found.\n",
      program_name, program_name, program_name);
}

static int usage_error(const char *message, const char *detail) {
  if (message) {
    if (detail)
      fprintf(stderr, "%s: %s: '%s'\n", program_name, message, detail);
    else
      fprintf(stderr, "%s: %s\n", program_name, message);
  }
  fprintf(stderr, "Try '%s --help' for more information.\n", program_name);
  return EXIT_USAGE;
}

/* SECONDS: decimal digits with at most one '.', at least one digit ("2",
 * "0.25", ".5"). Rejects signs, exponents, hex, nan, inf and spaces. Rounds
 * up to whole milliseconds, so iplock never gives up early. */
static int parse_timeout(const char *text, int64_t *timeout_ms) {
  const char *p;
  int digits = 0, dots = 0;
  double seconds;
  for (p = text; *p; ++p) {
    if (*p >= '0' && *p <= '9')
      ++digits;
    else if (*p == '.' && dots == 0)
      ++dots;
    else
      return -1;
  }
  if (digits == 0) return -1;
  seconds = strtod(text, NULL);
  if (!isfinite(seconds) || seconds < 0) return -1;
  if (seconds > MAX_TIMEOUT_SECONDS)
    *timeout_ms = IPL_WAIT_FOREVER;
  else
    *timeout_ms = (int64_t)ceil(seconds * 1000.0);
  return 0;
}

/* Decimal digits only, 0..max. */
static int parse_number(const char *text, long max, long *number) {
  const char *p;
  long value = 0;
  if (*text == '\0') return -1;
  for (p = text; *p; ++p) {
    if (*p < '0' || *p > '9') return -1;
    value = value * 10 + (*p - '0');
    if (value > max) return -1;
  }
  *number = value;
  return 0;
}

/* Returns 0 to go on, or an exit code (done: help, version or usage error). */
static int parse_command_line(int argc, char **argv, struct options *opts) {
  enum { OPT_VERBOSE = 256 };
  static const struct option long_options[] = {
      {"exclusive", no_argument, NULL, 'x'},
      {"shared", no_argument, NULL, 's'},
      {"unlock", no_argument, NULL, 'u'},
      {"nonblock", no_argument, NULL, 'n'},
      {"nb", no_argument, NULL, 'n'},
      {"timeout", required_argument, NULL, 'w'},
      {"wait", required_argument, NULL, 'w'},
      {"conflict-exit-code", required_argument, NULL, 'E'},
      {"close", no_argument, NULL, 'o'},
      {"no-fork", no_argument, NULL, 'F'},
      {"verbose", no_argument, NULL, OPT_VERBOSE},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  int c;
  long number;
  opterr = 0; /* our own messages, in one format */
  /* '+': stop at the first non-option (LOCKFILE), whatever POSIXLY_CORRECT
   * says, so COMMAND's own options reach COMMAND. Leading ':' reports a
   * missing option argument as ':' instead of '?'. */
  while ((c = getopt_long(argc, argv, "+:xesunw:E:oFhV", long_options, NULL)) != -1) {
    switch (c) {
      case 'x':
      case 'e': opts->shared = 0; break;
      case 's': opts->shared = 1; break;
      case 'u': opts->unlock = 1; break;
      case 'n': opts->nonblock = 1; break;
      case 'o': opts->close_descriptor = 1; break;
      case 'F': opts->no_fork = 1; break;
      case OPT_VERBOSE: opts->verbose = 1; break;
      case 'w':
        if (parse_timeout(optarg, &opts->timeout_ms) != 0)
          return usage_error("invalid timeout (want seconds >= 0, e.g. 2 or 0.25)",
                             optarg);
        break;
      case 'E':
        if (parse_number(optarg, 255, &number) != 0)
          return usage_error("invalid conflict exit code (want 0 to 255)", optarg);
        opts->conflict_exit_code = (int)number;
        break;
      case 'h': print_help(); return fflush(stdout) == 0 ? 0 : EXIT_OS_ERROR;
      case 'V':
        printf("iplock (libipl) %s\n", ipl_version_string());
        return fflush(stdout) == 0 ? 0 : EXIT_OS_ERROR;
      case ':': return usage_error("option needs an argument", argv[optind - 1]);
      default:
        if (optopt != 0) {
          const char short_option[3] = {'-', (char)optopt, '\0'};
          return usage_error("unknown option", short_option);
        }
        return usage_error("unknown option", argv[optind - 1]);
    }
  }
  if (opts->no_fork && opts->close_descriptor)
    return usage_error("-F (--no-fork) and -o (--close) exclude each other: nothing "
                       "would be left to hold the lock",
                       NULL);
  if (optind >= argc) return usage_error("missing LOCKFILE", NULL);
  if (argc - optind == 1) {
    /* flock(1)'s third form: a lone NUMBER is a descriptor. */
    if (parse_number(argv[optind], INT_MAX, &number) != 0) {
      if (opts->unlock)
        return usage_error("-u takes a descriptor NUMBER, not a file", argv[optind]);
      return usage_error("missing COMMAND", NULL);
    }
    opts->descriptor = (int)number;
    return 0;
  }
  if (opts->unlock)
    return usage_error("-u applies to a descriptor NUMBER only (no COMMAND)", NULL);
  opts->lock_path = argv[optind++];
  if (strcmp(argv[optind], "-c") == 0 || strcmp(argv[optind], "--command") == 0) {
    if (argc - optind != 2)
      return usage_error("-c takes exactly one argument: the shell command", NULL);
    opts->shell_argv[0] = "/bin/sh";
    opts->shell_argv[1] = "-c";
    opts->shell_argv[2] = argv[optind + 1];
    opts->shell_argv[3] = NULL;
    opts->command = opts->shell_argv;
  } else {
    opts->command = argv + optind;
  }
  return 0;
}

/* ---- The lock iplock takes ---------------------------------------------------
 * One libipl handle, made one of two ways:
 *   - command mode: ipl_open_ex on LOCKFILE with IPL_OPEN_INHERITABLE (not
 *     with -o), so the descriptor behind the handle is not close-on-exec and
 *     the command inherits the open file description, and with it the lock;
 *   - descriptor mode: ipl_open_fd on the shell's descriptor. The handle
 *     starts out holding what the description holds already (an earlier
 *     `iplock 9`), so `iplock -u 9` is a plain release.
 * Both need open-file-description locks: with a libipl built for classic
 * locks both are IPL_E_UNSUPPORTED, descriptor mode and -F are refused, and
 * command mode opens the path without IPL_OPEN_INHERITABLE (the lock then
 * ends with iplock, as with -o). libipl does the rest: the open rules, the
 * check that the path still names the locked file, waits, cancellation. */

struct lock {
  ipl_lock *handle;
  int shared;
  int on_descriptor; /* descriptor mode */
  const char *path;  /* command mode; NULL with a descriptor */
  char name[64];     /* "descriptor 9" */
};

static const char *lock_name(const struct lock *lock) {
  return lock->path ? lock->path : lock->name;
}

/* On a descriptor whose description holds a lock already, taking one
 * converts it (shared to exclusive or back), as flock(2) does: libipl says
 * IPL_E_WOULD_DEADLOCK (the handle holds it), and ipl_upgrade or
 * ipl_downgrade converts; IPL_E_NOT_HELD from them means the lock is held
 * in the wanted mode already. */
static int lock_acquire(struct lock *lock, int64_t timeout_ms) {
  int rc = lock->shared ? ipl_acquire_read(lock->handle, timeout_ms)
                        : ipl_acquire(lock->handle, timeout_ms);
  if (rc != IPL_E_WOULD_DEADLOCK || !lock->on_descriptor) return rc;
  rc = lock->shared ? ipl_downgrade(lock->handle) : ipl_upgrade(lock->handle, timeout_ms);
  return rc == IPL_E_NOT_HELD ? IPL_OK : rc;
}

static int lock_release(struct lock *lock) {
  return lock->shared ? ipl_release_read(lock->handle) : ipl_release(lock->handle);
}

/* ---- --verbose --------------------------------------------------------------- */

/* "pid 1234 (name)", the name from /proc/PID/comm where readable. */
static void describe_process(int64_t pid, char *out, size_t size) {
  char path[64], comm[32];
  FILE *file;
  size_t i;
  snprintf(out, size, "pid %lld", (long long)pid);
  snprintf(path, sizeof path, "/proc/%lld/comm", (long long)pid);
  file = fopen(path, "re");
  if (!file) return;
  if (fgets(comm, sizeof comm, file)) {
    comm[strcspn(comm, "\n")] = '\0';
    for (i = 0; comm[i]; ++i)
      if ((unsigned char)comm[i] < 0x20 || (unsigned char)comm[i] == 0x7f) comm[i] = '?';
    if (comm[0]) snprintf(out, size, "pid %lld (%s)", (long long)pid, comm);
  }
  fclose(file);
}

/* Says who holds the lock, if anyone still does. */
static void report_holder(struct lock *lock) {
  int state = IPL_STATE_FREE;
  int64_t holder = -1;
  char who[96];
  if (ipl_query(lock->handle, &state, &holder) != IPL_OK || state == IPL_STATE_FREE) return;
  if (holder > 0)
    describe_process(holder, who, sizeof who);
  else
    snprintf(who, sizeof who, "another process (pid unknown)");
  fprintf(stderr, "%s: %s is held %s by %s\n", program_name, lock_name(lock),
          state == IPL_STATE_SHARED ? "shared" : "exclusive", who);
}

/* ---- Taking the lock -------------------------------------------------------- */

struct waiter {
  struct lock *lock;
  int64_t timeout_ms;
  int status; /* the acquire's result; read after pthread_join */
};

static void *waiter_thread(void *arg) {
  struct waiter *w = (struct waiter *)arg;
  const unsigned char done = 0;
  ssize_t ignored;
  w->status = lock_acquire(w->lock, w->timeout_ms);
  ignored = write(wake_pipe[1], &done, 1);
  (void)ignored;
  return NULL;
}

/* Not ipl statuses: */
#define WAITER_NOT_STARTED 1 /* errno set */
#define ENDED_BY_SIGNAL 2    /* *signal_out set */

/* Waits in the waiter thread (see the top of the file). A signal cancels
 * the wait; a lock granted in that same instant is released again. */
static int wait_interruptibly(struct lock *lock, int64_t timeout_ms, int *signal_out) {
  struct waiter w;
  pthread_t thread;
  sigset_t main_mask;
  unsigned char byte;
  int rc, sig = 0;
  struct pollfd wake;
  int64_t canceling_since = 0;

  w.lock = lock;
  w.timeout_ms = timeout_ms;
  w.status = IPL_E_INTERNAL;
  /* The waiter thread inherits the mask in force when it is created: block
   * the handled signals for it, so that they are delivered to main() only. */
  pthread_sigmask(SIG_BLOCK, &handled_signals, &main_mask);
  rc = pthread_create(&thread, NULL, waiter_thread, &w);
  pthread_sigmask(SIG_SETMASK, &main_mask, NULL);
  if (rc != 0) {
    errno = rc;
    return WAITER_NOT_STARTED;
  }

  wake.fd = wake_pipe[0];
  wake.events = POLLIN;
  for (;;) {
    /* While canceling, cancel again every 10 ms: a cancel that comes before
     * the waiter has started to wait does nothing (ipl_cancel). */
    if (sig != 0) {
      ipl_cancel(lock->handle);
      if (monotonic_us() - canceling_since > 5 * 1000000) {
        /* Never seen; it would be a library bug. The kernel drops a
         * pending wait with the process. */
        _exit(EXIT_SIGNAL_BASE + sig);
      }
    }
    wake.revents = 0;
    if (poll(&wake, 1, sig != 0 ? 10 : -1) <= 0) continue; /* EINTR: byte in the pipe */
    if (read(wake_pipe[0], &byte, 1) != 1) continue;
    if (byte == 0) break; /* the waiter is done */
    if (sig == 0) {
      sig = byte;
      canceling_since = monotonic_us();
    }
  }
  pthread_join(thread, NULL);
  if (sig == 0) return w.status;
  if (w.status == IPL_OK) lock_release(lock);
  *signal_out = sig;
  return ENDED_BY_SIGNAL;
}

/* Tries once, then (unless that was all it may do) waits in the waiter
 * thread for the rest of timeout_ms. --verbose says who holds the lock. */
static int acquire_interruptibly(struct lock *lock, int64_t timeout_ms, int verbose,
                                 int *reported_holder, int *signal_out) {
  const int64_t start = monotonic_us();
  int rc = lock_acquire(lock, 0);
  if (rc != IPL_E_TIMEOUT) return rc;
  if (verbose && !*reported_holder) {
    report_holder(lock);
    *reported_holder = 1;
  }
  if (timeout_ms == 0) return rc;
  if (timeout_ms > 0) {
    const int64_t left = timeout_ms - (monotonic_us() - start) / 1000;
    timeout_ms = left > 0 ? left : 0;
    if (timeout_ms == 0) return lock_acquire(lock, 0);
  }
  return wait_interruptibly(lock, timeout_ms, signal_out);
}

/* Takes the lock within timeout_ms. libipl checks that the path still
 * names the locked file (ipl_remove, or a replaced lock file) and if not
 * waits again on the file the path names now. Returns an ipl status,
 * WAITER_NOT_STARTED or ENDED_BY_SIGNAL. */
static int take_lock(struct lock *lock, int64_t timeout_ms, int verbose, int *signal_out) {
  int reported_holder = 0;
  return acquire_interruptibly(lock, timeout_ms, verbose, &reported_holder, signal_out);
}

/* The outcome of take_lock as iplock's exit code and message; -1 for OK. */
static int report_lock_failure(struct lock *lock, int rc, int sig, const struct options *opts) {
  if (rc == IPL_OK) return -1;
  if (rc == ENDED_BY_SIGNAL) return EXIT_SIGNAL_BASE + sig;
  if (rc == IPL_E_TIMEOUT) {
    if (opts->verbose)
      fprintf(stderr, "%s: %s\n", program_name,
              opts->nonblock || opts->timeout_ms == 0 ? "failed to get lock"
                                                      : "timeout while waiting to get lock");
    return opts->conflict_exit_code;
  }
  if (rc == WAITER_NOT_STARTED) {
    fprintf(stderr, "%s: cannot start the waiting thread: %s\n", program_name,
            strerror(errno));
    return EXIT_OS_ERROR;
  }
  if (rc == IPL_E_NOT_REGULAR_FILE || rc == IPL_E_BAD_PARENT || rc == IPL_E_NAME_TOO_LONG) {
    /* The lock file was replaced while iplock waited, and libipl could not
     * open what the path names now. */
    fprintf(stderr, "%s: cannot open lock file %s: %s\n", program_name, lock_name(lock),
            ipl_strerror(rc));
    return EXIT_NO_LOCK_FILE;
  }
  if (rc == IPL_E_ACCESS) {
    if (!lock->path) {
      fprintf(stderr,
              "%s: cannot lock %s %s: it is open %s (open it with <> for either lock, "
              "> for -x, < for -s)\n",
              program_name, lock_name(lock), lock->shared ? "shared" : "exclusively",
              lock->shared ? "write-only; a shared lock needs read access"
                           : "read-only; an exclusive lock needs write access");
      return EXIT_NO_LOCK_FILE;
    }
    /* The file could be opened read-only only: as when it cannot be opened.
     * ipl_os_error: the errno of the refused read-write open. */
    {
      const int refused = ipl_os_error(lock->handle);
      fprintf(stderr,
              "%s: cannot lock %s exclusively: no write access to it (%s); a shared "
              "lock (-s) needs only read access\n",
              program_name, lock->path, refused != 0 ? strerror(refused) : "permission denied");
    }
    return EXIT_NO_LOCK_FILE;
  }
  {
    const int os_error = rc == IPL_E_OS ? ipl_os_error(lock->handle) : 0;
    fprintf(stderr, "%s: cannot lock %s: %s", program_name, lock_name(lock), ipl_strerror(rc));
    if (os_error != 0) fprintf(stderr, " (%s)", strerror(os_error));
    fprintf(stderr, "\n");
  }
  return EXIT_OS_ERROR;
}

static void report_lock_time(int64_t start_us) {
  fprintf(stderr, "%s: getting lock took %.6f seconds\n", program_name,
          (double)(monotonic_us() - start_us) / 1e6);
}

static int unsupported(const char *what) {
  fprintf(stderr,
          "%s: %s needs open-file-description locks (Linux), and this libipl uses "
          "classic fcntl locks, which belong to a process and would end with iplock\n",
          program_name, what);
  return EXIT_OS_ERROR;
}

/* ---- Descriptor mode -------------------------------------------------------- */

/* Reports why ipl_open_fd refused the descriptor; the exit code. */
static int report_descriptor_failure(const struct lock *lock, int rc, int os_error,
                                     const struct options *opts) {
  if (rc == IPL_E_UNSUPPORTED)
    return unsupported(opts->unlock ? "unlocking a descriptor (-u)" : "locking a descriptor");
  if (rc == IPL_E_NOT_REGULAR_FILE) {
    fprintf(stderr, "%s: %s is not open on a regular file\n", program_name, lock->name);
    return EXIT_NO_LOCK_FILE;
  }
  if (rc == IPL_E_OS && os_error != 0) {
    fprintf(stderr, "%s: %s: %s\n", program_name, lock->name, strerror(os_error));
    return EXIT_NO_LOCK_FILE;
  }
  fprintf(stderr, "%s: cannot lock %s: %s\n", program_name, lock->name, ipl_strerror(rc));
  return EXIT_OS_ERROR;
}

/* Drops what the description holds, in whichever mode: 0 or an exit code.
 * Nothing held is no error (flock(1) -u says 0 too). */
static int unlock_descriptor(struct lock *lock) {
  int rc = ipl_release(lock->handle);
  if (rc == IPL_E_NOT_HELD) rc = ipl_release_read(lock->handle);
  if (rc == IPL_OK || rc == IPL_E_NOT_HELD) return 0;
  {
    const int os_error = ipl_os_error(lock->handle);
    fprintf(stderr, "%s: cannot unlock %s: %s", program_name, lock->name, ipl_strerror(rc));
    if (os_error != 0) fprintf(stderr, " (%s)", strerror(os_error));
    fprintf(stderr, "\n");
  }
  return EXIT_OS_ERROR;
}

/* The lock lives on the shell's open file description, not in iplock: the
 * handle is never closed (ipl_close would release the lock, which must
 * outlive iplock), and iplock exits holding it. The process's exit frees
 * the handle's memory and leaves the descriptor and its lock to the shell. */
static int run_descriptor_mode(const struct options *opts) {
  struct lock lock;
  const int64_t start = monotonic_us();
  int rc, sig = 0, code, os_error = 0;

  memset(&lock, 0, sizeof lock);
  lock.shared = opts->shared;
  lock.on_descriptor = 1;
  snprintf(lock.name, sizeof lock.name, "descriptor %d", opts->descriptor);
  rc = ipl_open_fd(opts->descriptor, 0, &lock.handle, &os_error);
  if (rc != IPL_OK) return report_descriptor_failure(&lock, rc, os_error, opts);

  if (opts->unlock) return unlock_descriptor(&lock);
  rc = take_lock(&lock, opts->nonblock ? 0 : opts->timeout_ms, opts->verbose, &sig);
  code = report_lock_failure(&lock, rc, sig, opts);
  if (code >= 0) return code;
  sig = take_pending_wake_signal();
  if (sig != 0) {
    /* A signal came while the first try got the lock: it still means stop. */
    lock_release(&lock);
    return EXIT_SIGNAL_BASE + sig;
  }
  if (opts->verbose) report_lock_time(start);
  return 0;
}

/* ---- Running the command ---------------------------------------------------- */

/* Before exec (in the child, or in iplock with -F): restores the entry
 * signal state, then execs COMMAND, or reports as a shell does and _exits. */
static void exec_command(char **command) {
  int saved_errno;
  restore_entry_signal_state();
  if (command[0][0] == '\0') {
    fprintf(stderr, "%s: '': command not found\n", program_name);
    _exit(EXIT_NOT_FOUND);
  }
  execvp(command[0], command);
  saved_errno = errno;
  if (saved_errno == ENOENT && strchr(command[0], '/') == NULL)
    fprintf(stderr, "%s: %s: command not found\n", program_name, command[0]);
  else
    fprintf(stderr, "%s: %s: %s\n", program_name, command[0], strerror(saved_errno));
  _exit(saved_errno == ENOENT || saved_errno == ENOTDIR ? EXIT_NOT_FOUND
                                                         : EXIT_NOT_EXECUTABLE);
}

/* Runs COMMAND (see the top of the file for signals). Returns its exit code
 * as a shell reports it, or -1 (errno set) when it cannot be started. */
static int run_command(const struct options *opts) {
  sigset_t mask_before_fork;
  pid_t pid;
  int status;

  /* Blocked across fork, so the handler never runs in the child. */
  sigprocmask(SIG_BLOCK, &handled_signals, &mask_before_fork);
  /* A signal that came after the lock was granted but before this point
   * went to the pipe: it still means "stop", and the command never ran. */
  {
    const int sig = take_pending_wake_signal();
    if (sig != 0) {
      errno = 0;
      return EXIT_SIGNAL_BASE + sig;
    }
  }
  if (opts->verbose) fprintf(stderr, "%s: executing %s\n", program_name, opts->command[0]);
  fflush(NULL);
  /* The lock's descriptor is inheritable (unless -o): exec keeps it. */
  if (opts->no_fork) exec_command(opts->command); /* never returns */
  pid = fork();
  if (pid == 0) exec_command(opts->command);
  if (pid < 0) {
    const int saved_errno = errno;
    sigprocmask(SIG_SETMASK, &mask_before_fork, NULL);
    errno = saved_errno;
    return -1;
  }
  enter_command_signal_state();
  sigprocmask(SIG_SETMASK, &mask_before_fork, NULL);

  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return EXIT_SIGNAL_BASE + WTERMSIG(status);
  return EXIT_OS_ERROR; /* stopped/continued are not reported without flags */
}

/* Opens LOCKFILE: like flock(1), creating the lock file but not missing
 * folders (a typo in the path should fail, not silently create a tree).
 * IPL_OK, or an exit code after a message. */
static int open_lock_file(struct lock *lock, const struct options *opts) {
  const uint32_t flags =
      IPL_OPEN_NO_CREATE_DIRS | (opts->close_descriptor ? 0u : IPL_OPEN_INHERITABLE);
  int os_error = 0;
  int rc = ipl_open_ex(lock->path, flags, &lock->handle, &os_error);
  if (rc == IPL_E_UNSUPPORTED && (flags & IPL_OPEN_INHERITABLE)) {
    /* Classic locks (or a file system without locks: then this fails too).
     * The command cannot inherit a classic lock; the handle on the path
     * holds it, and it dies with iplock. */
    rc = ipl_open_ex(lock->path, IPL_OPEN_NO_CREATE_DIRS, &lock->handle, &os_error);
    if (rc == IPL_OK && opts->no_fork) {
      ipl_close(lock->handle);
      lock->handle = NULL;
      return unsupported("-F (--no-fork)");
    }
  }
  if (rc == IPL_OK) return IPL_OK;
  if (os_error != 0)
    fprintf(stderr, "%s: cannot open lock file %s: %s (%s)\n", program_name, lock->path,
            ipl_strerror(rc), strerror(os_error));
  else
    fprintf(stderr, "%s: cannot open lock file %s: %s\n", program_name, lock->path,
            ipl_strerror(rc));
  return rc == IPL_E_UNSUPPORTED || rc == IPL_E_NO_MEMORY || rc == IPL_E_INTERNAL
             ? EXIT_OS_ERROR
             : EXIT_NO_LOCK_FILE;
}

static int run_command_mode(const struct options *opts) {
  struct lock lock;
  const int64_t start = monotonic_us();
  int rc, sig = 0, code;

  memset(&lock, 0, sizeof lock);
  lock.shared = opts->shared;
  lock.path = opts->lock_path;
  code = open_lock_file(&lock, opts);
  if (code != IPL_OK) return code;

  rc = take_lock(&lock, opts->nonblock ? 0 : opts->timeout_ms, opts->verbose, &sig);
  code = report_lock_failure(&lock, rc, sig, opts);
  if (code >= 0) {
    ipl_close(lock.handle);
    return code;
  }
  if (opts->verbose) report_lock_time(start);

  code = run_command(opts);
  if (code < 0) {
    fprintf(stderr, "%s: cannot start %s: %s\n", program_name, opts->command[0],
            strerror(errno));
    code = EXIT_OS_ERROR;
  }
  /* Releases the lock (an explicit unlock, then close), though the
   * command's background children may still have the descriptor. */
  ipl_close(lock.handle);
  return code;
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv) {
  struct options opts;
  int rc;

  memset(&opts, 0, sizeof opts);
  opts.timeout_ms = IPL_WAIT_FOREVER;
  opts.conflict_exit_code = 1;
  opts.descriptor = -1;
  rc = parse_command_line(argc, argv, &opts);
  if (rc != 0 || (opts.command == NULL && opts.descriptor < 0)) return rc;

  if (open_wake_pipe() != 0 || install_signal_handlers() != 0) {
    fprintf(stderr, "%s: cannot set up signal handling: %s\n", program_name,
            strerror(errno));
    return EXIT_OS_ERROR;
  }
  return opts.descriptor >= 0 ? run_descriptor_mode(&opts) : run_command_mode(&opts);
}

/*
 * iplock.c - run a command while holding a libipl lock (a flock(1) look-alike).
 *
 *   iplock [options] LOCKFILE COMMAND [ARG...]
 *   iplock [options] LOCKFILE -c 'shell command'
 *
 * Why not flock(1): on Linux, flock(2) locks and fcntl record locks never see
 * each other, so flock(1) cannot coordinate with Python's fasteners or with
 * libipl. iplock takes the very lock libipl and fasteners take (a whole-file
 * fcntl lock), through the public C API in ipl.h and nothing else.
 *
 * The life of one run:
 *   1. parse options (stop at LOCKFILE, so COMMAND's own options pass through);
 *   2. install handlers for the signals iplock forwards (SIGINT, SIGTERM,
 *      SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2), except those ignored on entry;
 *   3. open the lock file and take the lock (see "Interruptible waits");
 *   4. fork; the child restores the signal state iplock started with and
 *      execs COMMAND; the parent forwards signals to it and waits for it;
 *   5. release and close the lock, exit with the command's status.
 *
 * Interruptible waits. The library's waits are deliberately deaf to signals
 * ("signals never shorten or break a wait"), yet SIGINT / SIGTERM must end a
 * wait at once. Waiting in short timed slices would add up to one slice of
 * latency to every hand-off and wake the CPU for nothing. Instead a second
 * thread makes the one blocking ipl_acquire call, with all handled signals
 * blocked, while the main thread sleeps in poll() on a self-pipe. Two things
 * write to that pipe: the waiter thread (one byte, 0, when ipl_acquire
 * returns) and the signal handler, which runs only in the main thread (one
 * byte: the signal number). Whichever comes first decides: the lock is
 * granted and the command runs, with no added latency, or a signal ends
 * iplock with 128 + its number, as a shell reports it. The blocked waiter
 * thread cannot be cancelled safely, so iplock then leaves with _exit(): the
 * kernel drops the pending wait (or a lock granted in that instant) together
 * with the process, and no atexit or static destructor runs under the
 * waiter's feet.
 */
#define _POSIX_C_SOURCE 200809L

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
#include <sys/types.h>
#include <sys/wait.h>
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

/* ---- Signals ------------------------------------------------------------ */

static const int forwarded_signals[] = {SIGINT,  SIGTERM, SIGHUP,
                                        SIGQUIT, SIGUSR1, SIGUSR2};
#define FORWARDED_SIGNAL_COUNT \
  (sizeof forwarded_signals / sizeof forwarded_signals[0])

/* The signal state iplock started with, given back to the command. */
static sigset_t entry_signal_mask;
static struct sigaction entry_actions[FORWARDED_SIGNAL_COUNT];
/* The forwarded signals that iplock handles (all but those ignored on entry:
 * `nohup iplock ...` must leave SIGHUP ignored for the command too). */
static sigset_t handled_signals;

/* Written by the handler while waiting for the lock; read by main(). */
static int wake_pipe[2] = {-1, -1};
/* The running command, once there is one. Written only while the handled
 * signals are blocked in the only thread left, so the handler never sees a
 * half-written value. */
static volatile pid_t command_pid = 0;

static void on_signal(int sig, siginfo_t *info, void *context) {
  const int saved_errno = errno;
  (void)context;
  if (command_pid > 0) {
#ifdef SI_KERNEL
    /* The kernel sends terminal signals (Ctrl-C, Ctrl-\, hang-up) to the
     * whole foreground process group, the command included: forwarding them
     * too would deliver them twice. */
    if (info->si_code != SI_KERNEL) kill(command_pid, sig);
#else
    (void)info;
    kill(command_pid, sig);
#endif
  } else {
    const unsigned char byte = (unsigned char)sig;
    /* Non-blocking: if the pipe is full, main() has a wake-up pending. */
    ssize_t ignored = write(wake_pipe[1], &byte, 1);
    (void)ignored;
  }
  errno = saved_errno;
}

/* Records the entry state and handles every forwarded signal not ignored on
 * entry. Returns 0, or -1 with errno set. */
static int install_signal_handlers(void) {
  size_t i;
  struct sigaction action;
  if (sigprocmask(SIG_SETMASK, NULL, &entry_signal_mask) != 0) return -1;
  sigemptyset(&handled_signals);
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_signal;
  action.sa_flags = SA_SIGINFO; /* no SA_RESTART: poll() and waitpid() wake */
  sigfillset(&action.sa_mask);
  for (i = 0; i < FORWARDED_SIGNAL_COUNT; ++i) {
    if (sigaction(forwarded_signals[i], NULL, &entry_actions[i]) != 0) return -1;
    if (entry_actions[i].sa_handler == SIG_IGN) continue;
    if (sigaction(forwarded_signals[i], &action, NULL) != 0) return -1;
    sigaddset(&handled_signals, forwarded_signals[i]);
  }
  /* Unblock them in case iplock was started with them blocked: a blocked
   * SIGTERM could otherwise never end a wait. */
  return sigprocmask(SIG_UNBLOCK, &handled_signals, NULL);
}

/* In the child, before exec: the signal state iplock itself was given.
 * Handlers are reset to the entry actions (the default, as exec would do)
 * first, so a signal in between cannot run iplock's handler in the child. */
static void restore_entry_signal_state(void) {
  size_t i;
  for (i = 0; i < FORWARDED_SIGNAL_COUNT; ++i)
    sigaction(forwarded_signals[i], &entry_actions[i], NULL);
  sigprocmask(SIG_SETMASK, &entry_signal_mask, NULL);
}

static int set_fd_flag(int fd, int get, int set, int flag) {
  const int flags = fcntl(fd, get);
  return flags < 0 ? -1 : fcntl(fd, set, flags | flag);
}

/* The self-pipe: close-on-exec both ends, and a non-blocking write end so a
 * signal storm can never block the handler. */
static int open_wake_pipe(void) {
  int i;
  if (pipe(wake_pipe) != 0) return -1;
  /* Started with stdin/stdout closed, the pipe would be 0 and 1, and our own
   * error messages or a stray read would use it: keep it at 3 or above. */
  for (i = 0; i < 2; ++i) {
    if (wake_pipe[i] <= 2) {
      const int moved = fcntl(wake_pipe[i], F_DUPFD, 3);
      if (moved < 0) return -1;
      close(wake_pipe[i]);
      wake_pipe[i] = moved;
    }
  }
  if (set_fd_flag(wake_pipe[0], F_GETFD, F_SETFD, FD_CLOEXEC) != 0 ||
      set_fd_flag(wake_pipe[1], F_GETFD, F_SETFD, FD_CLOEXEC) != 0 ||
      set_fd_flag(wake_pipe[1], F_GETFL, F_SETFL, O_NONBLOCK) != 0)
    return -1;
  return 0;
}

/* ---- Command line --------------------------------------------------------- */

struct options {
  int shared;            /* -s: shared (read) lock instead of exclusive */
  int nonblock;          /* -n: fail at once when the lock is held */
  int64_t timeout_ms;    /* -w, or IPL_WAIT_FOREVER */
  int conflict_exit_code; /* -E */
  const char *lock_path;
  char **command;        /* NULL-terminated argv for execvp */
  char *shell_argv[4];   /* for -c: /bin/sh -c 'shell command' */
};

static void print_help(void) {
  printf(
      "Usage: %s [options] LOCKFILE COMMAND [ARG...]\n"
      "       %s [options] LOCKFILE -c 'shell command'\n"
      "\n"
      "Run COMMAND while holding a lock on LOCKFILE (created if missing; its\n"
      "folder must exist). The lock is a whole-file fcntl lock, the one\n"
      "libipl and Python's fasteners take, so all three exclude each other.\n"
      "\n"
      "Options:\n"
      "  -x, --exclusive            take an exclusive lock (the default)\n"
      "  -s, --shared               take a shared lock\n"
      "  -n, --nonblock, --nb       fail at once if the lock is held elsewhere\n"
      "  -w, --timeout, --wait SECONDS\n"
      "                             give up after SECONDS (e.g. 2 or 0.25)\n"
      "  -E, --conflict-exit-code N exit code when -n or -w gives up (0-255,\n"
      "                             default 1)\n"
      "  -o, --close                accepted for flock(1) compatibility; has no\n"
      "                             effect: the lock's descriptor is never\n"
      "                             inherited by COMMAND anyway\n"
      "  -c, --command STRING       (after LOCKFILE) run STRING with /bin/sh -c\n"
      "  -h, --help                 show this help and exit\n"
      "  -V, --version              show the version and exit\n"
      "\n"
      "Exit status: COMMAND's own (128+N if signal N killed it); the conflict\n"
      "code when -n or -w gives up; 128+N when signal N ends the wait;\n"
      "64 usage error; 66 the lock file cannot be opened; 71 locking or\n"
      "starting COMMAND failed; 126 COMMAND not executable; 127 not found.\n",
      program_name, program_name);
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

/* N: 0..255, decimal digits only. */
static int parse_exit_code(const char *text, int *code) {
  const char *p;
  long value = 0;
  if (*text == '\0') return -1;
  for (p = text; *p; ++p) {
    if (*p < '0' || *p > '9') return -1;
    value = value * 10 + (*p - '0');
    if (value > 255) return -1;
  }
  *code = (int)value;
  return 0;
}

/* Returns 0 to go on, or an exit code (done: help, version or usage error). */
static int parse_command_line(int argc, char **argv, struct options *opts) {
  static const struct option long_options[] = {
      {"exclusive", no_argument, NULL, 'x'},
      {"shared", no_argument, NULL, 's'},
      {"nonblock", no_argument, NULL, 'n'},
      {"nb", no_argument, NULL, 'n'},
      {"timeout", required_argument, NULL, 'w'},
      {"wait", required_argument, NULL, 'w'},
      {"conflict-exit-code", required_argument, NULL, 'E'},
      {"close", no_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  int c;
  opterr = 0; /* our own messages, in one format */
  /* '+': stop at the first non-option (LOCKFILE), whatever POSIXLY_CORRECT
   * says, so COMMAND's own options reach COMMAND. Leading ':' reports a
   * missing option argument as ':' instead of '?'. */
  while ((c = getopt_long(argc, argv, "+:xsnw:E:ohV", long_options, NULL)) != -1) {
    switch (c) {
      case 'x': opts->shared = 0; break;
      case 's': opts->shared = 1; break;
      case 'n': opts->nonblock = 1; break;
      case 'w':
        if (parse_timeout(optarg, &opts->timeout_ms) != 0)
          return usage_error("invalid timeout (want seconds >= 0, e.g. 2 or 0.25)",
                             optarg);
        break;
      case 'E':
        if (parse_exit_code(optarg, &opts->conflict_exit_code) != 0)
          return usage_error("invalid conflict exit code (want 0 to 255)", optarg);
        break;
      case 'o': break; /* see --help */
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
  if (optind >= argc) return usage_error("missing LOCKFILE", NULL);
  opts->lock_path = argv[optind++];
  if (optind >= argc) return usage_error("missing COMMAND", NULL);
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

/* ---- Taking the lock -------------------------------------------------------- */

struct waiter {
  ipl_lock *lock;
  int shared;
  int64_t timeout_ms;
  int status; /* ipl_acquire's result; read after pthread_join */
};

static int acquire(ipl_lock *lock, int shared, int64_t timeout_ms) {
  return shared ? ipl_acquire_read(lock, timeout_ms) : ipl_acquire(lock, timeout_ms);
}

static void *waiter_thread(void *arg) {
  struct waiter *w = (struct waiter *)arg;
  const unsigned char done = 0;
  ssize_t ignored;
  w->status = acquire(w->lock, w->shared, w->timeout_ms);
  ignored = write(wake_pipe[1], &done, 1);
  (void)ignored;
  return NULL;
}

/* Waits for the lock as the header describes, except that a handled signal
 * ends iplock (see the top of the file). Returns an ipl status, or
 * WAITER_NOT_STARTED (errno set) when the waiter thread cannot be created. */
#define WAITER_NOT_STARTED 1
static int acquire_interruptibly(ipl_lock *lock, int shared, int64_t timeout_ms) {
  struct waiter w;
  pthread_t thread;
  sigset_t main_mask;
  unsigned char byte;
  int rc;
  struct pollfd wake;

  /* Trying once never sleeps: no thread needed. */
  if (timeout_ms == 0) return acquire(lock, shared, 0);

  w.lock = lock;
  w.shared = shared;
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
    wake.revents = 0;
    if (poll(&wake, 1, -1) < 0) continue; /* EINTR: the byte is in the pipe */
    if (read(wake_pipe[0], &byte, 1) != 1) continue;
    if (byte != 0) _exit(EXIT_SIGNAL_BASE + byte); /* see top of file */
    break;
  }
  pthread_join(thread, NULL);
  return w.status;
}

/* ---- Running the command ---------------------------------------------------- */

/* The first signal number waiting in the self-pipe, or 0 when none. */
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

/* In the child: exec COMMAND, or report as a shell does and _exit. */
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

/* Runs COMMAND, forwarding signals to it. Returns its exit code as a shell
 * reports it, or -1 (errno set) when it cannot be started. */
static int run_command(char **command) {
  sigset_t mask_before_fork;
  pid_t pid;
  int status;

  /* Blocked across fork, so the handler never runs in the child and never
   * sees command_pid half-set; signals that come meanwhile stay pending and
   * are forwarded once unblocked. */
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
  fflush(NULL);
  pid = fork();
  if (pid == 0) exec_command(command);
  if (pid < 0) {
    const int saved_errno = errno;
    sigprocmask(SIG_SETMASK, &mask_before_fork, NULL);
    errno = saved_errno;
    return -1;
  }
  command_pid = pid;
  sigprocmask(SIG_SETMASK, &mask_before_fork, NULL);

  /* Wait for the end without reaping: until it is reaped, the pid cannot
   * be recycled, so a forwarded signal cannot hit an unrelated process. */
  for (;;) {
    siginfo_t ended;
    memset(&ended, 0, sizeof ended);
    if (waitid(P_PID, (id_t)pid, &ended, WEXITED | WNOWAIT) == 0) break;
    if (errno != EINTR) break; /* cannot happen: pid is our child */
  }
  sigprocmask(SIG_BLOCK, &handled_signals, NULL);
  command_pid = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return EXIT_SIGNAL_BASE + WTERMSIG(status);
  return EXIT_OS_ERROR; /* stopped/continued are not reported without flags */
}

/* ---- main ----------------------------------------------------------------- */

int main(int argc, char **argv) {
  struct options opts;
  ipl_lock *lock = NULL;
  int os_error = 0;
  int rc;
  int exit_code;
  int64_t timeout_ms;

  memset(&opts, 0, sizeof opts);
  opts.timeout_ms = IPL_WAIT_FOREVER;
  opts.conflict_exit_code = 1;
  rc = parse_command_line(argc, argv, &opts);
  if (rc != 0 || opts.command == NULL) return rc;

  if (open_wake_pipe() != 0 || install_signal_handlers() != 0) {
    fprintf(stderr, "%s: cannot set up signal handling: %s\n", program_name,
            strerror(errno));
    return EXIT_OS_ERROR;
  }

  /* Like flock(1): create the lock file, but not missing folders (a typo in
   * the path should fail, not silently create a tree). */
  rc = ipl_open_ex(opts.lock_path, IPL_OPEN_NO_CREATE_DIRS, &lock, &os_error);
  if (rc != IPL_OK) {
    if (os_error != 0)
      fprintf(stderr, "%s: cannot open lock file %s: %s (%s)\n", program_name,
              opts.lock_path, ipl_strerror(rc), strerror(os_error));
    else
      fprintf(stderr, "%s: cannot open lock file %s: %s\n", program_name,
              opts.lock_path, ipl_strerror(rc));
    return EXIT_NO_LOCK_FILE;
  }

  timeout_ms = opts.nonblock ? 0 : opts.timeout_ms;
  rc = acquire_interruptibly(lock, opts.shared, timeout_ms);
  if (rc == IPL_E_TIMEOUT) {
    ipl_close(lock);
    return opts.conflict_exit_code;
  }
  if (rc == WAITER_NOT_STARTED) {
    fprintf(stderr, "%s: cannot start the waiting thread: %s\n", program_name,
            strerror(errno));
    ipl_close(lock);
    return EXIT_OS_ERROR;
  }
  if (rc == IPL_E_ACCESS) {
    /* The file could be opened read-only only: as when it cannot be opened. */
    fprintf(stderr,
            "%s: cannot lock %s exclusively: no write access to it (%s); a shared "
            "lock (-s) needs only read access\n",
            program_name, opts.lock_path, strerror(ipl_os_error(lock)));
    ipl_close(lock);
    return EXIT_NO_LOCK_FILE;
  }
  if (rc != IPL_OK) {
    const int lock_os_error = rc == IPL_E_OS ? ipl_os_error(lock) : 0;
    fprintf(stderr, "%s: cannot lock %s: %s", program_name, opts.lock_path,
            ipl_strerror(rc));
    if (lock_os_error != 0) fprintf(stderr, " (%s)", strerror(lock_os_error));
    fprintf(stderr, "\n");
    ipl_close(lock);
    return EXIT_OS_ERROR;
  }

  exit_code = run_command(opts.command);
  if (exit_code < 0) {
    fprintf(stderr, "%s: cannot start %s: %s\n", program_name, opts.command[0],
            strerror(errno));
    exit_code = EXIT_OS_ERROR;
  }
  ipl_close(lock); /* releases the lock */
  return exit_code;
}

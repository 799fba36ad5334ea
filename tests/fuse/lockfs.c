// SPDX-License-Identifier: MIT
/*
 * lockfs: a small FUSE filesystem for libipl's tests.
 *
 * What it is for: network and cluster filesystems (FUSE, NFS, CIFS, ...)
 * where a blocking lock call cannot be ended by a signal. The tests mount
 * lockfs in a temporary folder to get such a filesystem on any Linux machine
 * with /dev/fuse, without a network or a server.
 *
 * How: the daemon keeps its own table of POSIX record locks (per inode and
 * lock owner; shared and exclusive; byte ranges). A try (F_SETLK,
 * F_OFD_SETLK) that conflicts gets EAGAIN at once. A blocking request
 * (F_SETLKW, F_OFD_SETLKW) reaches us as FUSE_SETLKW and is answered only
 * when the lock becomes free. When the caller gets a signal, the kernel sends
 * FUSE_INTERRUPT and then waits without interruption until we reply. By
 * default we ignore that interrupt, so the signal cannot end the lock call,
 * the way it happens on a real network filesystem.
 *
 * One exception keeps tests from wedging: a waiter whose thread is dying
 * (SIGKILL or another fatal signal pending, or gone) gets EINTR within about
 * 100 ms, as with NFS, where lock waits can be killed. Locks are released when
 * their owner lets go of the file: FLUSH (one close(), classic fcntl owner)
 * drops that owner's locks on the inode; RELEASE (the last close of an open
 * file description) drops the locks taken through it, i.e. its OFD locks.
 *
 * Usage: lockfs [--locks=MODE] [--log] [--debug] MOUNTPOINT
 *   --locks=uninterruptible  (default) lock table here; FUSE_INTERRUPT ignored
 *   --locks=interruptible    lock table here; FUSE_INTERRUPT ends the wait
 *                            with EINTR (the call then fails with EINTR, or
 *                            is restarted under SA_RESTART)
 *   --locks=none             no lock operations: the kernel keeps the locks
 *                            locally ("a FUSE filesystem without lock
 *                            support" that still excludes on this host)
 *   --locks=refuse           lock operations that fail: every fcntl lock
 *                            call and F_GETLK gets ENOLCK (a filesystem
 *                            that cannot lock and says so)
 *   --log     one line per lock request and decision on stderr
 *   --debug   libfuse's own request trace on stderr
 * The process stays in the foreground, serves until the filesystem is
 * unmounted (or SIGTERM/SIGINT/SIGHUP), then exits 0.
 *
 * The filesystem: one flat folder of regular files kept in memory (create,
 * open, read, write, truncate, chmod/chown, unlink, rename, stat, statfs,
 * readdir). Attributes and names are not cached by the kernel, so a stat()
 * always sees the current inode. Inode numbers are never reused. The hidden
 * file ".lockfs" (not listed by readdir) reads as the daemon's state: the
 * mode, request counters and the current lock table and waiters, one
 * "key value" line each, for tests to check what reached the daemon.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 32

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

#define STATUS_NAME ".lockfs"
#define STATUS_INO 2
#define FIRST_FILE_INO 3
#define RANGE_END INT64_MAX /* a lock "to end of file" */

enum lock_mode { MODE_UNINTERRUPTIBLE, MODE_INTERRUPTIBLE, MODE_NONE, MODE_REFUSE };
static const char *const mode_names[] = {"uninterruptible", "interruptible", "none", "refuse"};

struct node {
  struct node *next;
  fuse_ino_t ino;
  char *name; /* NULL once unlinked */
  mode_t mode;
  uid_t uid;
  gid_t gid;
  char *data;
  size_t size;
  struct timespec atime, mtime, ctime;
  uint64_t nlookup;
  unsigned opens;
};

struct lock_rec {
  struct lock_rec *next;
  fuse_ino_t ino;
  uint64_t owner;
  uint64_t fh;
  int type; /* F_RDLCK or F_WRLCK */
  int64_t start, end; /* inclusive; end == RANGE_END: to end of file */
  pid_t pid;
};

struct waiter {
  struct waiter *next;
  fuse_req_t req;
  fuse_ino_t ino;
  uint64_t owner;
  uint64_t fh;
  int type;
  int64_t start, end;
  pid_t pid; /* the lock's pid (for F_GETLK) */
  pid_t tid; /* the calling thread, from the request header */
};

static struct {
  enum lock_mode mode;
  bool log;
  pthread_mutex_t mu; /* everything below */
  struct node *nodes;
  fuse_ino_t next_ino;
  uint64_t next_fh;
  struct lock_rec *locks;
  struct waiter *waiters; /* FIFO */
  /* Open .lockfs files: their RELEASE may never come when the filesystem is
   * unmounted, so main() frees what is left. */
  struct status_buf *snapshots;
  struct timespec root_time;
  uid_t root_uid;
  gid_t root_gid;
  /* counters, shown in .lockfs */
  unsigned long n_getlk, n_setlk, n_setlkw, n_unlock, n_granted_at_once,
      n_busy, n_waited, n_granted_after_wait, n_interrupted,
      n_killed_waiters, n_flush, n_flush_dropped, n_release, n_release_dropped;

  /* The waiter sweeper: wakes on FUSE_INTERRUPT and every 100 ms. */
  pthread_mutex_t wake_mu;
  pthread_cond_t wake_cv;
  bool wake_flag;
  bool stop;
  unsigned long n_interrupts; /* FUSE_INTERRUPTs for our waiters */
} g = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .next_ino = FIRST_FILE_INO,
    .next_fh = 1,
    .wake_mu = PTHREAD_MUTEX_INITIALIZER,
};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
  if (!g.log) return;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  char line[512];
  int n = snprintf(line, sizeof line, "lockfs %ld.%06ld ", (long)ts.tv_sec, ts.tv_nsec / 1000);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}

static struct timespec now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

/* ---- nodes ---------------------------------------------------------------- */

static struct node *find_ino(fuse_ino_t ino) {
  for (struct node *n = g.nodes; n; n = n->next)
    if (n->ino == ino) return n;
  return NULL;
}

static struct node *find_name(const char *name) {
  for (struct node *n = g.nodes; n; n = n->next)
    if (n->name && strcmp(n->name, name) == 0) return n;
  return NULL;
}

static void maybe_free(struct node *n) {
  if (n->name || n->nlookup || n->opens) return;
  for (struct node **p = &g.nodes; *p; p = &(*p)->next)
    if (*p == n) {
      *p = n->next;
      free(n->data);
      free(n);
      return;
    }
}

static void fill_stat(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_blksize = 4096;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 01777;
    st->st_nlink = 2;
    st->st_uid = g.root_uid;
    st->st_gid = g.root_gid;
    st->st_atim = st->st_mtim = st->st_ctim = g.root_time;
    return;
  }
  if (ino == STATUS_INO) {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_uid = g.root_uid;
    st->st_gid = g.root_gid;
    st->st_atim = st->st_mtim = st->st_ctim = g.root_time;
    return;
  }
  struct node *n = find_ino(ino);
  if (!n) return;
  st->st_mode = n->mode;
  st->st_nlink = n->name ? 1 : 0;
  st->st_uid = n->uid;
  st->st_gid = n->gid;
  st->st_size = (off_t)n->size;
  st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
  st->st_atim = n->atime;
  st->st_mtim = n->mtime;
  st->st_ctim = n->ctime;
}

/* Entry replies: names and attributes are never cached (timeouts 0). */
static void reply_entry(fuse_req_t req, fuse_ino_t ino) {
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = ino;
  e.generation = 1;
  fill_stat(ino, &e.attr);
  fuse_reply_entry(req, &e);
}

/* ---- the lock table ----------------------------------------------------- */

static void flock_to_range(const struct flock *fl, int64_t *start, int64_t *end) {
  *start = fl->l_start;
  *end = fl->l_len == 0 ? RANGE_END : fl->l_start + fl->l_len - 1;
}

static bool overlaps(int64_t s1, int64_t e1, int64_t s2, int64_t e2) {
  return s1 <= e2 && s2 <= e1;
}

static struct lock_rec *find_conflict(fuse_ino_t ino, uint64_t owner, int type,
                                      int64_t start, int64_t end) {
  for (struct lock_rec *r = g.locks; r; r = r->next)
    if (r->ino == ino && r->owner != owner && overlaps(r->start, r->end, start, end) &&
        (r->type == F_WRLCK || type == F_WRLCK))
      return r;
  return NULL;
}

static void add_rec(fuse_ino_t ino, uint64_t owner, uint64_t fh, int type, int64_t start,
                    int64_t end, pid_t pid) {
  struct lock_rec *r = calloc(1, sizeof *r);
  if (!r) abort();
  *r = (struct lock_rec){NULL, ino, owner, fh, type, start, end, pid};
  /* append: the table lists locks in the order they were taken */
  struct lock_rec **p = &g.locks;
  while (*p) p = &(*p)->next;
  *p = r;
}

/* POSIX semantics for one owner: the new request replaces whatever the owner
 * held in [start, end]; F_UNLCK just removes it. */
static void apply_lock(fuse_ino_t ino, uint64_t owner, uint64_t fh, int type, int64_t start,
                       int64_t end, pid_t pid) {
  struct lock_rec **p = &g.locks;
  while (*p) {
    struct lock_rec *r = *p;
    if (r->ino == ino && r->owner == owner && overlaps(r->start, r->end, start, end)) {
      *p = r->next;
      if (r->start < start) add_rec(ino, owner, r->fh, r->type, r->start, start - 1, r->pid);
      if (r->end > end) add_rec(ino, owner, r->fh, r->type, end + 1, r->end, r->pid);
      free(r);
      continue; /* the pieces were appended; they no longer overlap */
    }
    p = &r->next;
  }
  if (type != F_UNLCK) add_rec(ino, owner, fh, type, start, end, pid);
}

/* Grants every waiter on `ino` that no longer conflicts, in arrival order. */
static void grant_waiters(fuse_ino_t ino) {
  bool progress = true;
  while (progress) {
    progress = false;
    for (struct waiter **p = &g.waiters; *p; p = &(*p)->next) {
      struct waiter *w = *p;
      if (w->ino != ino || find_conflict(ino, w->owner, w->type, w->start, w->end)) continue;
      *p = w->next;
      apply_lock(ino, w->owner, w->fh, w->type, w->start, w->end, w->pid);
      g.n_granted_after_wait++;
      logf_("grant-after-wait ino=%" PRIu64 " owner=%016" PRIx64 " tid=%d", (uint64_t)ino,
            w->owner, (int)w->tid);
      fuse_reply_err(w->req, 0);
      free(w);
      progress = true;
      break;
    }
  }
}

/* Drops locks matching (ino, owner) or (fh); returns how many. */
static unsigned drop_locks(fuse_ino_t ino, bool by_owner, uint64_t owner, uint64_t fh) {
  unsigned dropped = 0;
  for (struct lock_rec **p = &g.locks; *p;) {
    struct lock_rec *r = *p;
    if (r->ino == ino && (by_owner ? r->owner == owner : r->fh == fh)) {
      *p = r->next;
      free(r);
      dropped++;
    } else {
      p = &r->next;
    }
  }
  if (dropped) grant_waiters(ino);
  return dropped;
}

/* True when thread `tid` is gone, a zombie, or has SIGKILL pending (the
 * kernel adds SIGKILL to every thread of a process that is being killed by
 * any fatal signal). */
static bool thread_dying(pid_t tid) {
  if (tid <= 0) return false;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
  FILE *f = fopen(path, "re");
  if (!f) return true;
  char line[256];
  bool dying = false;
  const unsigned long long kill_bit = 1ULL << (SIGKILL - 1);
  while (fgets(line, sizeof line, f)) {
    unsigned long long mask;
    char state;
    if (sscanf(line, "State: %c", &state) == 1 && (state == 'Z' || state == 'X')) dying = true;
    if ((sscanf(line, "SigPnd: %llx", &mask) == 1 || sscanf(line, "ShdPnd: %llx", &mask) == 1) &&
        (mask & kill_bit))
      dying = true;
  }
  fclose(f);
  return dying;
}

static void on_interrupt(fuse_req_t req, void *data) {
  (void)req;
  (void)data;
  /* Called by libfuse with the request's own lock held: take only wake_mu. */
  pthread_mutex_lock(&g.wake_mu);
  g.wake_flag = true;
  g.n_interrupts++;
  pthread_cond_signal(&g.wake_cv);
  pthread_mutex_unlock(&g.wake_mu);
}

/* Ends the waits that must end: waiters whose thread is dying (always), and
 * interrupted waiters in interruptible mode. */
static void sweep_waiters(void) {
  pthread_mutex_lock(&g.mu);
  for (struct waiter **p = &g.waiters; *p;) {
    struct waiter *w = *p;
    bool interrupted = g.mode == MODE_INTERRUPTIBLE && fuse_req_interrupted(w->req);
    bool dying = !interrupted && thread_dying(w->tid);
    if (interrupted || dying) {
      *p = w->next;
      if (interrupted)
        g.n_interrupted++;
      else
        g.n_killed_waiters++;
      logf_("end-wait %s ino=%" PRIu64 " owner=%016" PRIx64 " tid=%d",
            interrupted ? "interrupted" : "dying", (uint64_t)w->ino, w->owner, (int)w->tid);
      fuse_reply_err(w->req, EINTR);
      free(w);
    } else {
      p = &w->next;
    }
  }
  pthread_mutex_unlock(&g.mu);
}

static void *sweeper_main(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  pthread_mutex_lock(&g.wake_mu);
  while (!g.stop) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += 100 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    while (!g.wake_flag && !g.stop)
      if (pthread_cond_timedwait(&g.wake_cv, &g.wake_mu, &until) == ETIMEDOUT) break;
    g.wake_flag = false;
    pthread_mutex_unlock(&g.wake_mu);
    sweep_waiters();
    pthread_mutex_lock(&g.wake_mu);
  }
  pthread_mutex_unlock(&g.wake_mu);
  return NULL;
}

/* ---- the status file ---------------------------------------------------- */

struct status_buf {
  struct status_buf *next, *prev; /* g.snapshots: open status files */
  char *text;
  size_t len;
};

static struct status_buf *status_snapshot(void) {
  struct status_buf *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  FILE *f = open_memstream(&s->text, &s->len);
  if (!f) {
    free(s);
    return NULL;
  }
  pthread_mutex_lock(&g.wake_mu);
  unsigned long interrupts = g.n_interrupts;
  pthread_mutex_unlock(&g.wake_mu);
  pthread_mutex_lock(&g.mu);
  fprintf(f, "mode %s\npid %d\n", mode_names[g.mode], (int)getpid());
  fprintf(f,
          "getlk %lu\nsetlk %lu\nsetlkw %lu\nunlock %lu\ngranted_at_once %lu\nbusy %lu\n"
          "waited %lu\ngranted_after_wait %lu\ninterrupts %lu\ninterrupted %lu\n"
          "killed_waiters %lu\nflush %lu\nflush_dropped %lu\nrelease %lu\nrelease_dropped %lu\n",
          g.n_getlk, g.n_setlk, g.n_setlkw, g.n_unlock, g.n_granted_at_once, g.n_busy, g.n_waited,
          g.n_granted_after_wait, interrupts, g.n_interrupted, g.n_killed_waiters, g.n_flush,
          g.n_flush_dropped, g.n_release, g.n_release_dropped);
  unsigned nlocks = 0, nwaiters = 0;
  for (struct lock_rec *r = g.locks; r; r = r->next) nlocks++;
  for (struct waiter *w = g.waiters; w; w = w->next) nwaiters++;
  fprintf(f, "locks %u\nwaiters %u\n", nlocks, nwaiters);
  for (struct lock_rec *r = g.locks; r; r = r->next)
    fprintf(f, "lock ino=%" PRIu64 " owner=%016" PRIx64 " fh=%" PRIu64 " type=%s start=%" PRId64
               " end=%" PRId64 " pid=%d\n",
            (uint64_t)r->ino, r->owner, r->fh, r->type == F_WRLCK ? "write" : "read", r->start,
            r->end == RANGE_END ? (int64_t)-1 : r->end, (int)r->pid);
  for (struct waiter *w = g.waiters; w; w = w->next)
    fprintf(f, "waiter ino=%" PRIu64 " owner=%016" PRIx64 " fh=%" PRIu64 " type=%s start=%" PRId64
               " end=%" PRId64 " tid=%d\n",
            (uint64_t)w->ino, w->owner, w->fh, w->type == F_WRLCK ? "write" : "read", w->start,
            w->end == RANGE_END ? (int64_t)-1 : w->end, (int)w->tid);
  if (g.snapshots) g.snapshots->prev = s;
  s->next = g.snapshots;
  g.snapshots = s;
  pthread_mutex_unlock(&g.mu);
  fclose(f);
  return s;
}

static void status_free(struct status_buf *s) {
  pthread_mutex_lock(&g.mu);
  if (s->prev)
    s->prev->next = s->next;
  else
    g.snapshots = s->next;
  if (s->next) s->next->prev = s->prev;
  pthread_mutex_unlock(&g.mu);
  free(s->text);
  free(s);
}

/* ---- operations ----------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
  conn->want &= ~(unsigned)FUSE_CAP_FLOCK_LOCKS; /* flock() stays in the kernel */
  if (g.mode == MODE_NONE)
    conn->want &= ~(unsigned)FUSE_CAP_POSIX_LOCKS;
  else if (!(conn->capable & FUSE_CAP_POSIX_LOCKS))
    fprintf(stderr, "lockfs: the kernel does not offer FUSE_POSIX_LOCKS\n");
  logf_("init posix_locks=%d", (conn->want & FUSE_CAP_POSIX_LOCKS) ? 1 : 0);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (strcmp(name, STATUS_NAME) == 0) {
    pthread_mutex_lock(&g.mu);
    reply_entry(req, STATUS_INO);
    pthread_mutex_unlock(&g.mu);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_name(name);
  if (n) {
    n->nlookup++;
    reply_entry(req, n->ino);
  } else {
    fuse_reply_err(req, ENOENT);
  }
  pthread_mutex_unlock(&g.mu);
}

static void forget_one(fuse_ino_t ino, uint64_t nlookup) {
  struct node *n = find_ino(ino);
  if (!n) return;
  n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
  maybe_free(n);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  pthread_mutex_lock(&g.mu);
  forget_one(ino, nlookup);
  pthread_mutex_unlock(&g.mu);
  fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  pthread_mutex_lock(&g.mu);
  for (size_t i = 0; i < count; i++) forget_one(forgets[i].ino, forgets[i].nlookup);
  pthread_mutex_unlock(&g.mu);
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  pthread_mutex_lock(&g.mu);
  if (ino != FUSE_ROOT_ID && ino != STATUS_INO && !find_ino(ino)) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fill_stat(ino, &st);
  pthread_mutex_unlock(&g.mu);
  fuse_reply_attr(req, &st, 0.0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi) {
  (void)fi;
  pthread_mutex_lock(&g.mu);
  struct node *n = find_ino(ino);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ino == FUSE_ROOT_ID || ino == STATUS_INO ? EPERM : ENOENT);
    return;
  }
  struct timespec t = now();
  if (to_set & FUSE_SET_ATTR_SIZE) {
    size_t size = (size_t)attr->st_size;
    if (size > n->size) {
      char *data = realloc(n->data, size);
      if (!data) {
        pthread_mutex_unlock(&g.mu);
        fuse_reply_err(req, ENOSPC);
        return;
      }
      memset(data + n->size, 0, size - n->size);
      n->data = data;
    }
    n->size = size;
    n->mtime = t;
  }
  if (to_set & FUSE_SET_ATTR_MODE) n->mode = S_IFREG | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_UID) n->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) n->gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_ATIME) n->atime = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_MTIME) n->mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) n->atime = t;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) n->mtime = t;
  n->ctime = t;
  struct stat st;
  fill_stat(ino, &st);
  pthread_mutex_unlock(&g.mu);
  fuse_reply_attr(req, &st, 0.0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
  (void)fi;
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char *buf = malloc(size);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  size_t used = 0;
  off_t index = 0;
  pthread_mutex_lock(&g.mu);
  struct stat st;
  memset(&st, 0, sizeof st);
  const char *dots[2] = {".", ".."};
  for (int i = 0; i < 2; i++, index++) {
    if (index < off) continue;
    st.st_ino = FUSE_ROOT_ID;
    st.st_mode = S_IFDIR;
    size_t need = fuse_add_direntry(req, buf + used, size - used, dots[i], &st, index + 1);
    if (need > size - used) goto full;
    used += need;
  }
  for (struct node *n = g.nodes; n; n = n->next) {
    if (!n->name) continue;
    if (index++ < off) continue;
    st.st_ino = n->ino;
    st.st_mode = n->mode;
    size_t need = fuse_add_direntry(req, buf + used, size - used, n->name, &st, index);
    if (need > size - used) break;
    used += need;
  }
full:
  pthread_mutex_unlock(&g.mu);
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void open_common(struct node *n, struct fuse_file_info *fi) {
  n->opens++;
  fi->fh = g.next_fh++;
  fi->direct_io = 1; /* no page cache: every read and write reaches us */
  fi->keep_cache = 0;
  if (fi->flags & O_TRUNC) {
    n->size = 0;
    n->mtime = n->ctime = now();
  }
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino == STATUS_INO) {
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
      fuse_reply_err(req, EACCES);
      return;
    }
    struct status_buf *s = status_snapshot();
    if (!s) {
      fuse_reply_err(req, ENOMEM);
      return;
    }
    fi->fh = (uint64_t)(uintptr_t)s;
    fi->direct_io = 1;
    fuse_reply_open(req, fi);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_ino(ino);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  open_common(n, fi);
  logf_("open ino=%" PRIu64 " fh=%" PRIu64, (uint64_t)ino, fi->fh);
  /* reply while holding the lock: a RELEASE for this fh cannot overtake it */
  fuse_reply_open(req, fi);
  pthread_mutex_unlock(&g.mu);
}

static struct node *new_node(const char *name, mode_t mode, fuse_req_t req) {
  struct node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->name = strdup(name);
  if (!n->name) {
    free(n);
    return NULL;
  }
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  n->ino = g.next_ino++;
  n->mode = S_IFREG | (mode & 07777);
  n->uid = ctx->uid;
  n->gid = ctx->gid;
  n->atime = n->mtime = n->ctime = now();
  n->next = g.nodes;
  g.nodes = n;
  g.root_time = n->ctime;
  return n;
}

static bool bad_name(fuse_ino_t parent, const char *name, fuse_req_t req) {
  if (parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOENT);
    return true;
  }
  if (strcmp(name, STATUS_NAME) == 0) {
    fuse_reply_err(req, EPERM);
    return true;
  }
  if (strlen(name) > 255) {
    fuse_reply_err(req, ENAMETOOLONG);
    return true;
  }
  return false;
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
  if (bad_name(parent, name, req)) return;
  if (!S_ISREG(mode) && (mode & S_IFMT) != 0) {
    fuse_reply_err(req, EPERM);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_name(name);
  if (n && (fi->flags & O_EXCL)) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, EEXIST);
    return;
  }
  if (!n) n = new_node(name, mode, req);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOMEM);
    return;
  }
  n->nlookup++;
  open_common(n, fi);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = n->ino;
  e.generation = 1;
  fill_stat(n->ino, &e.attr);
  logf_("create ino=%" PRIu64 " fh=%" PRIu64 " name=%s", (uint64_t)n->ino, fi->fh, name);
  fuse_reply_create(req, &e, fi);
  pthread_mutex_unlock(&g.mu);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                     dev_t rdev) {
  (void)rdev;
  if (bad_name(parent, name, req)) return;
  if (!S_ISREG(mode)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_name(name);
  if (n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, EEXIST);
    return;
  }
  n = new_node(name, mode, req);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOMEM);
    return;
  }
  n->nlookup++;
  reply_entry(req, n->ino);
  pthread_mutex_unlock(&g.mu);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
  if (ino == STATUS_INO) {
    /* Reply from a copy: once the kernel has the reply, the reader may close
     * the file and its RELEASE (another thread) frees the snapshot while
     * fuse_reply_buf is still returning (ASan flags that). */
    struct status_buf *s = (struct status_buf *)(uintptr_t)fi->fh;
    size_t start = (size_t)off < s->len ? (size_t)off : s->len;
    size_t len = s->len - start < size ? s->len - start : size;
    char *copy = malloc(len ? len : 1);
    if (!copy) {
      fuse_reply_err(req, ENOMEM);
      return;
    }
    memcpy(copy, s->text + start, len);
    fuse_reply_buf(req, copy, len);
    free(copy);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_ino(ino);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOENT);
    return;
  }
  size_t start = (size_t)off < n->size ? (size_t)off : n->size;
  size_t len = n->size - start < size ? n->size - start : size;
  n->atime = now();
  fuse_reply_buf(req, n->data + start, len);
  pthread_mutex_unlock(&g.mu);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  (void)fi;
  pthread_mutex_lock(&g.mu);
  struct node *n = find_ino(ino);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ino == STATUS_INO ? EBADF : ENOENT);
    return;
  }
  size_t end = (size_t)off + size;
  if (end > n->size) {
    char *data = realloc(n->data, end);
    if (!data) {
      pthread_mutex_unlock(&g.mu);
      fuse_reply_err(req, ENOSPC);
      return;
    }
    memset(data + n->size, 0, (size_t)off > n->size ? (size_t)off - n->size : 0);
    n->data = data;
    n->size = end;
  }
  memcpy(n->data + off, buf, size);
  n->mtime = n->ctime = now();
  pthread_mutex_unlock(&g.mu);
  fuse_reply_write(req, size);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino != STATUS_INO && g.mode != MODE_NONE) {
    /* close(): classic fcntl locks of this owner (the closing process) go */
    pthread_mutex_lock(&g.mu);
    g.n_flush++;
    unsigned dropped = drop_locks(ino, true, fi->lock_owner, 0);
    g.n_flush_dropped += dropped;
    if (dropped)
      logf_("flush ino=%" PRIu64 " owner=%016" PRIx64 " dropped=%u", (uint64_t)ino,
            fi->lock_owner, dropped);
    pthread_mutex_unlock(&g.mu);
  }
  fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (ino == STATUS_INO) {
    status_free((struct status_buf *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
    return;
  }
  pthread_mutex_lock(&g.mu);
  if (g.mode != MODE_NONE) {
    /* last close of an open file description: its OFD locks go */
    g.n_release++;
    unsigned dropped = drop_locks(ino, false, 0, fi->fh);
    g.n_release_dropped += dropped;
    if (dropped)
      logf_("release ino=%" PRIu64 " fh=%" PRIu64 " dropped=%u", (uint64_t)ino, fi->fh, dropped);
  }
  struct node *n = find_ino(ino);
  if (n) {
    if (n->opens) n->opens--;
    maybe_free(n);
  }
  pthread_mutex_unlock(&g.mu);
  fuse_reply_err(req, 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (bad_name(parent, name, req)) return;
  pthread_mutex_lock(&g.mu);
  struct node *n = find_name(name);
  if (!n) {
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOENT);
    return;
  }
  free(n->name);
  n->name = NULL;
  n->ctime = g.root_time = now();
  maybe_free(n);
  pthread_mutex_unlock(&g.mu);
  fuse_reply_err(req, 0);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
  if (bad_name(parent, name, req) || bad_name(newparent, newname, req)) return;
  if (flags & ~(unsigned)RENAME_NOREPLACE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  pthread_mutex_lock(&g.mu);
  struct node *n = find_name(name);
  struct node *target = find_name(newname);
  int err = 0;
  if (!n) {
    err = ENOENT;
  } else if (n == target) {
    err = 0;
  } else if (target && (flags & RENAME_NOREPLACE)) {
    err = EEXIST;
  } else {
    char *copy = strdup(newname);
    if (!copy) {
      err = ENOMEM;
    } else {
      if (target) {
        free(target->name);
        target->name = NULL;
        target->ctime = now();
        maybe_free(target);
      }
      free(n->name);
      n->name = copy;
      n->ctime = g.root_time = now();
    }
  }
  pthread_mutex_unlock(&g.mu);
  fuse_reply_err(req, err);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = 4096;
  st.f_frsize = 4096;
  st.f_blocks = 1u << 20;
  st.f_bfree = st.f_bavail = 1u << 19;
  st.f_files = 1u << 20;
  st.f_ffree = st.f_favail = 1u << 19;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

static void op_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                     struct flock *lock) {
  if (g.mode == MODE_REFUSE) {
    pthread_mutex_lock(&g.mu);
    g.n_getlk++;
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOLCK);
    return;
  }
  int64_t start, end;
  flock_to_range(lock, &start, &end);
  pthread_mutex_lock(&g.mu);
  g.n_getlk++;
  struct lock_rec *r = find_conflict(ino, fi->lock_owner, lock->l_type, start, end);
  if (r) {
    lock->l_type = (short)r->type;
    lock->l_whence = SEEK_SET;
    lock->l_start = r->start;
    lock->l_len = r->end == RANGE_END ? 0 : r->end - r->start + 1;
    lock->l_pid = r->pid;
  } else {
    lock->l_type = F_UNLCK;
  }
  pthread_mutex_unlock(&g.mu);
  fuse_reply_lock(req, lock);
}

static void op_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                     struct flock *lock, int sleep) {
  int64_t start, end;
  flock_to_range(lock, &start, &end);
  int type = lock->l_type;
  if (type != F_RDLCK && type != F_WRLCK && type != F_UNLCK) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  pid_t tid = fuse_req_ctx(req)->pid;
  if (g.mode == MODE_REFUSE) {
    pthread_mutex_lock(&g.mu);
    if (type == F_UNLCK)
      g.n_unlock++;
    else if (sleep)
      g.n_setlkw++;
    else
      g.n_setlk++;
    pthread_mutex_unlock(&g.mu);
    fuse_reply_err(req, ENOLCK);
    return;
  }
  /* Before taking g.mu: libfuse may call on_interrupt right here. */
  if (sleep && type != F_UNLCK) fuse_req_interrupt_func(req, on_interrupt, NULL);
  pthread_mutex_lock(&g.mu);
  if (type == F_UNLCK) {
    g.n_unlock++;
    apply_lock(ino, fi->lock_owner, fi->fh, F_UNLCK, start, end, 0);
    logf_("unlock ino=%" PRIu64 " owner=%016" PRIx64 " tid=%d", (uint64_t)ino, fi->lock_owner,
          (int)tid);
    grant_waiters(ino);
    fuse_reply_err(req, 0);
  } else {
    if (sleep)
      g.n_setlkw++;
    else
      g.n_setlk++;
    if (!find_conflict(ino, fi->lock_owner, type, start, end)) {
      g.n_granted_at_once++;
      apply_lock(ino, fi->lock_owner, fi->fh, type, start, end, lock->l_pid);
      logf_("%s %s granted ino=%" PRIu64 " owner=%016" PRIx64 " fh=%" PRIu64 " tid=%d",
            sleep ? "setlkw" : "setlk", type == F_WRLCK ? "write" : "read", (uint64_t)ino,
            fi->lock_owner, fi->fh, (int)tid);
      grant_waiters(ino); /* a downgrade may free others */
      fuse_reply_err(req, 0);
    } else if (!sleep) {
      g.n_busy++;
      logf_("setlk %s busy ino=%" PRIu64 " owner=%016" PRIx64 " tid=%d",
            type == F_WRLCK ? "write" : "read", (uint64_t)ino, fi->lock_owner, (int)tid);
      fuse_reply_err(req, EAGAIN);
    } else {
      struct waiter *w = calloc(1, sizeof *w);
      if (!w) {
        pthread_mutex_unlock(&g.mu);
        fuse_reply_err(req, ENOLCK);
        return;
      }
      *w = (struct waiter){NULL, req, ino, fi->lock_owner, fi->fh, type, start, end,
                           lock->l_pid, tid};
      struct waiter **p = &g.waiters;
      while (*p) p = &(*p)->next;
      *p = w;
      g.n_waited++;
      logf_("setlkw %s waits ino=%" PRIu64 " owner=%016" PRIx64 " tid=%d",
            type == F_WRLCK ? "write" : "read", (uint64_t)ino, fi->lock_owner, (int)tid);
    }
  }
  pthread_mutex_unlock(&g.mu);
}

static const struct fuse_lowlevel_ops lock_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readdir = op_readdir,
    .open = op_open,
    .create = op_create,
    .mknod = op_mknod,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .unlink = op_unlink,
    .rename = op_rename,
    .statfs = op_statfs,
    .getlk = op_getlk,
    .setlk = op_setlk,
};

/* ---- main ------------------------------------------------------------------- */

static void usage(FILE *to) {
  fprintf(to,
          "usage: lockfs [--locks=uninterruptible|interruptible|none|refuse] [--log] [--debug] "
          "MOUNTPOINT\n");
}

int main(int argc, char **argv) {
  const char *mountpoint = NULL;
  bool debug = false;
  g.mode = MODE_UNINTERRUPTIBLE;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--locks=", 8) == 0) {
      const char *m = a + 8;
      if (strcmp(m, "uninterruptible") == 0)
        g.mode = MODE_UNINTERRUPTIBLE;
      else if (strcmp(m, "interruptible") == 0)
        g.mode = MODE_INTERRUPTIBLE;
      else if (strcmp(m, "none") == 0)
        g.mode = MODE_NONE;
      else if (strcmp(m, "refuse") == 0)
        g.mode = MODE_REFUSE;
      else {
        usage(stderr);
        return 2;
      }
    } else if (strcmp(a, "--log") == 0) {
      g.log = true;
    } else if (strcmp(a, "--debug") == 0) {
      debug = true;
    } else if (strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (a[0] != '-' && !mountpoint) {
      mountpoint = a;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (!mountpoint) {
    usage(stderr);
    return 2;
  }
  setvbuf(stderr, NULL, _IOLBF, 0);
  g.root_time = now();
  g.root_uid = getuid();
  g.root_gid = getgid();

  struct fuse_lowlevel_ops ops = lock_ops;
  if (g.mode == MODE_NONE) {
    ops.getlk = NULL;
    ops.setlk = NULL;
  }

  /* default_permissions: the kernel checks mode bits against our attributes;
   * allow_other (root only) lets tests that switch users reach the mount. */
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  if (fuse_opt_add_arg(&args, argv[0]) != 0 || fuse_opt_add_arg(&args, "-o") != 0 ||
      fuse_opt_add_arg(&args, geteuid() == 0
                                  ? "fsname=lockfs,subtype=lockfs,default_permissions,allow_other"
                                  : "fsname=lockfs,subtype=lockfs,default_permissions") != 0 ||
      (debug && fuse_opt_add_arg(&args, "-d") != 0)) {
    fprintf(stderr, "lockfs: out of memory\n");
    return 1;
  }
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  fuse_opt_free_args(&args);
  if (!se) {
    fprintf(stderr, "lockfs: fuse_session_new failed\n");
    return 1;
  }
  int rc = 1;
  if (fuse_set_signal_handlers(se) != 0) {
    fprintf(stderr, "lockfs: cannot install signal handlers\n");
    goto out_destroy;
  }
  if (fuse_session_mount(se, mountpoint) != 0) {
    fprintf(stderr, "lockfs: cannot mount on %s (is /dev/fuse there? are we allowed to mount?)\n",
            mountpoint);
    goto out_signals;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&g.wake_cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_t sweeper;
  if (pthread_create(&sweeper, NULL, sweeper_main, NULL) != 0) {
    fprintf(stderr, "lockfs: cannot start the sweeper thread\n");
    goto out_unmount;
  }
  logf_("mounted %s mode=%s", mountpoint, mode_names[g.mode]);

  struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
  rc = fuse_session_loop_mt(se, &config) == 0 ? 0 : 1;

  pthread_mutex_lock(&g.wake_mu);
  g.stop = true;
  pthread_cond_signal(&g.wake_cv);
  pthread_mutex_unlock(&g.wake_mu);
  pthread_join(sweeper, NULL);
  /* Waiters still queued (the connection is going away): answer them. */
  pthread_mutex_lock(&g.mu);
  while (g.waiters) {
    struct waiter *w = g.waiters;
    g.waiters = w->next;
    fuse_reply_err(w->req, EIO);
    free(w);
  }
  pthread_mutex_unlock(&g.mu);
  while (g.snapshots) status_free(g.snapshots);
  logf_("exiting rc=%d", rc);
out_unmount:
  fuse_session_unmount(se);
out_signals:
  fuse_remove_signal_handlers(se);
out_destroy:
  fuse_session_destroy(se);
  return rc;
}

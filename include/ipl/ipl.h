/* SPDX-License-Identifier: MIT */
/*
 * ipl.h — libipl: inter-process locks on a lock file, with a stable C ABI.
 *
 * One handle (ipl_lock) names one lock file and holds at most one lock on it:
 * exclusive (ipl_acquire / ipl_acquire_write) or shared (ipl_acquire_read).
 * The kernel releases a lock when its holder dies, however it dies.
 *
 * Conflicts
 *   exclusive vs exclusive: conflict      exclusive vs shared: conflict
 *   shared vs shared:       coexist
 * These rules hold between processes, between threads, and between two
 * handles used by one thread: every handle is its own lock owner.
 *
 * Interoperability: on POSIX the lock is an fcntl record lock from byte 0:
 * F_WRLCK on the whole file (l_start = 0, l_len = 0) for exclusive, F_RDLCK
 * on bytes 0 to 2^63-2 for shared (the last byte is ipl_upgrade's). That is
 * the lock Python's fasteners takes (it locks the whole file in both
 * modes), so fasteners processes and libipl processes exclude each other on
 * the same file, in both modes and both directions. On Linux the lock is
 * an open-file-description (OFD) lock, owned by the handle, so closing any
 * other descriptor of the file never drops it. On Windows the lock is
 * LockFileEx on offset 0, length 1 (shared or exclusive), the byte fasteners
 * locks there; Windows locks are mandatory, so keep the lock file empty.
 *
 * Conventions for every function below
 *   - An int result is IPL_OK (0) or one of the negative IPL_E_* statuses.
 *     Status values are pinned: a released value never changes meaning.
 *   - Nothing but status codes crosses this ABI: no exception, no longjmp.
 *   - Paths are NUL-terminated UTF-8.
 *   - timeout_ms: 0 tries once and never sleeps; > 0 waits until the lock
 *     is granted or until that many milliseconds have passed on a monotonic
 *     clock (never less; a little more when the machine is busy);
 *     IPL_WAIT_FOREVER blocks until the lock is granted. Signals never
 *     shorten or break a wait.
 *     Any other negative value is IPL_E_INVALID.
 *   - fork(): a lock belongs to the process that took it and is never
 *     inherited. In a child made by fork() without exec, every handle
 *     inherited from the parent holds nothing: releasing it is
 *     IPL_E_NOT_HELD, closing it never touches the parent's lock, and
 *     acquiring on it reopens the lock file's path and works as on a handle
 *     fresh from ipl_open() (or fails as ipl_open would). At the fork,
 *     libipl's pthread_atfork handler closes the child's copies of every
 *     lock descriptor, so the parent's release, close or death frees the
 *     lock whatever its children do. glibc's _Fork() (and a raw clone()
 *     without CLONE_VM) runs no atfork handlers: libipl still notices the
 *     fork at the child's first libipl call on Linux >= 4.14 (a
 *     MADV_WIPEONFORK page) and then closes those copies; until that call,
 *     or exec, or exit, such a child keeps the parent's OFD locks alive. A
 *     _Fork() made while another thread was inside a libipl call leaves
 *     that call's internal mutex locked in the child, as with any mutex.
 *   - The lock file's path: a lock is a lock on the file the path names.
 *     After the OS grants a lock, libipl checks that the path still names
 *     the locked file (one stat()); if the file was removed or replaced
 *     meanwhile, it lets go, reopens the path (creating the file as the
 *     open flags allow) and waits again, within the same timeout. A
 *     relative path is made absolute when the handle is opened, so a later
 *     chdir() changes nothing.
 *   - Thread safety: every function may be called from any thread. A handle
 *     is not tied to a thread: a lock taken in one thread may be released
 *     from another (Go moves goroutines between threads). Concurrent calls
 *     on one handle are safe and serialised, with one exception:
 *     ipl_close() ends the handle's life and must not race with other calls
 *     on the same handle (as free() must not).
 */
#ifndef IPL_IPL_H
#define IPL_IPL_H

#include <stdint.h>

/* ---- Export macro --------------------------------------------------------
 * IPL_API marks the exported functions. Define IPL_STATIC when linking the
 * static library on Windows; define IPL_API yourself to override all this. */
#ifndef IPL_API
#  if defined(_WIN32) && !defined(IPL_STATIC)
#    if defined(IPL_BUILDING_LIBRARY)
#      define IPL_API __declspec(dllexport)
#    else
#      define IPL_API __declspec(dllimport)
#    endif
#  elif defined(__GNUC__) || defined(__clang__)
#    define IPL_API __attribute__((visibility("default")))
#  else
#    define IPL_API
#  endif
#endif

/* ---- Versions ------------------------------------------------------------
 * IPL_ABI_VERSION is the shared library's soversion (libipl.so.1). It only
 * changes if the ABI is ever broken, which this project promises not to do. */
#define IPL_ABI_VERSION 1
#define IPL_VERSION_MAJOR 0
#define IPL_VERSION_MINOR 2
#define IPL_VERSION_PATCH 0
#define IPL_VERSION_NUMBER \
  (IPL_VERSION_MAJOR * 10000 + IPL_VERSION_MINOR * 100 + IPL_VERSION_PATCH)
#define IPL_VERSION_STRING "0.2.0"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status codes (pinned values) --------------------------------------- */
#define IPL_OK 0
/* Not acquired in time. With timeout 0: the lock is held elsewhere. */
#define IPL_E_TIMEOUT (-1)
/* A NULL handle, path or out-pointer; an empty path; unknown flag bits; a
 * negative timeout other than IPL_WAIT_FOREVER. Arguments are checked before
 * anything else (so a bad timeout on a handle that holds the lock is
 * IPL_E_INVALID, not IPL_E_WOULD_DEADLOCK). Nothing was changed. */
#define IPL_E_INVALID (-2)
/* Release of a lock, or of a mode, that this handle does not hold. Whatever
 * the handle does hold is kept. */
#define IPL_E_NOT_HELD (-3)
/* This handle already holds the lock (in any mode), or another thread is
 * acquiring on it right now. Locks are not reentrant and never silently
 * upgraded. Returned at once, even with IPL_WAIT_FOREVER. */
#define IPL_E_WOULD_DEADLOCK (-4)
/* The OS denied access to the lock file or a parent folder (EACCES, EPERM,
 * EROFS). From an exclusive acquire: the handle could only open the lock
 * file read-only (see ipl_open), and an exclusive lock needs write access;
 * ipl_os_error() then gives the errno of the read-write open. */
#define IPL_E_ACCESS (-5)
/* The path names a directory, FIFO, device or socket, not a regular file. */
#define IPL_E_NOT_REGULAR_FILE (-6)
/* The path, or one of its components, is longer than the OS allows. */
#define IPL_E_NAME_TOO_LONG (-7)
/* Out of memory. */
#define IPL_E_NO_MEMORY (-8)
/* Another OS failure. ipl_os_error() (or ipl_open_ex()'s os_error) gives the
 * errno / GetLastError() value behind it. */
#define IPL_E_OS (-9)
/* A parent of the lock file exists but is not a folder (ENOTDIR), or is
 * missing and could not be created because IPL_OPEN_NO_CREATE_DIRS is set. */
#define IPL_E_BAD_PARENT (-10)
/* A bug in libipl (an unexpected internal exception). Please report it. */
#define IPL_E_INTERNAL (-11)
/* The request cannot be met on this platform or build; or the file system
 * says it does not do locks (ENOLCK: NFS without a lock daemon, a FUSE file
 * system refusing them; EOPNOTSUPP, ENOSYS), from ipl_open (which asks a
 * file system not known to be local) or from an acquire; ipl_os_error()
 * and ipl_open_ex()'s os_error then give the errno. A file system that
 * silently keeps locks on one host (NFS mounted with nolock or
 * local_lock=all, sshfs, FUSE file systems without lock support) cannot be
 * told apart from a real one: see the README, "Across hosts". */
#define IPL_E_UNSUPPORTED (-12)
/* ipl_set_wait_signal(): the application has a handler on that signal. */
#define IPL_E_SIGNAL_IN_USE (-13)
/* The wait was ended by ipl_cancel(). Nothing was acquired; a lock the
 * handle held before the call (ipl_upgrade) is kept. */
#define IPL_E_CANCELED (-14)
/* The lock this handle held is gone without a release: the file server
 * restarted or the connection to it was cut (NFS, GlusterFS with
 * client.strict-locks, SMB...), or the lock file was removed or replaced
 * so that its path now names another file. The handle holds nothing any
 * more; its next acquire opens the path anew. See ipl_check(). */
#define IPL_E_LOST (-15)

/* Wait without a time limit. */
#define IPL_WAIT_FOREVER (-1)

/* ---- Open flags ----------------------------------------------------------
 * 0 gives fasteners' defaults: create the lock file (mode 0666 minus the
 * umask) and any missing parent folders. Unknown bits are IPL_E_INVALID. */
/* Do not create the lock file: it must exist (else IPL_E_OS with ENOENT). */
#define IPL_OPEN_NO_CREATE 0x1u
/* Do not create missing parent folders (else IPL_E_BAD_PARENT). */
#define IPL_OPEN_NO_CREATE_DIRS 0x2u
/* Linux OFD locks only (0.2.0): the lock's descriptor is not close-on-exec
 * and is left open in forked children, so a child or an exec'd program
 * inherits the open file description and with it the lock, as with
 * flock(1): the lock then lasts while any copy of the descriptor is open,
 * e.g. after the holder is killed (the holder's explicit release or
 * ipl_close still ends it at once, for every copy). The handle itself
 * behaves in a forked child as any inherited handle (see "fork()"); an
 * exec'd program can release the lock through ipl_open_fd on the
 * inherited descriptor. The descriptor is still never 0, 1 or 2. The
 * classic backend and Windows: IPL_E_UNSUPPORTED, and nothing is created. */
#define IPL_OPEN_INHERITABLE 0x4u

/* The opaque handle: one open lock file. */
typedef struct ipl_lock ipl_lock;

/* ---- Opening and closing --------------------------------------------------
 * ipl_open opens (by default creating) the lock file at `path` and stores a
 * new handle in *out. The handle holds no lock yet. The file is never written
 * to and never truncated. Its descriptor is close-on-exec (on Windows: not
 * inheritable): it never reaches child processes (unless
 * IPL_OPEN_INHERITABLE); on POSIX it is never 0, 1 or 2, so a program
 * started with closed standard streams never writes into the lock file
 * (with no descriptor free above 2, e.g. RLIMIT_NOFILE at 3, ipl_open is
 * IPL_E_OS with EMFILE).
 *
 * Access: the file is opened for reading and writing. When that is denied
 * (a lock file another user created, a read-only file system), it is
 * opened read-only instead: such a handle takes shared locks, and an
 * exclusive acquire on it is IPL_E_ACCESS. A file that can be opened
 * neither way is IPL_E_ACCESS from ipl_open. Symbolic links are followed;
 * a dangling one at the path gets the file it points to created (as
 * fasteners and flock(1) do), but never folders for it (IPL_E_OS with
 * ENOENT when its folder is missing). Opening a FIFO never
 * blocks: it fails with IPL_E_NOT_REGULAR_FILE, as do DOS device names
 * (NUL, CON, COM1, ...) on Windows, which are never opened. On Windows a
 * path that is not valid UTF-8 is IPL_E_OS (ERROR_NO_UNICODE_TRANSLATION).
 *
 * Returns IPL_OK; IPL_E_INVALID for a NULL path or out, an empty path or
 * unknown flag bits; IPL_E_ACCESS, IPL_E_NOT_REGULAR_FILE,
 * IPL_E_NAME_TOO_LONG, IPL_E_BAD_PARENT, IPL_E_NO_MEMORY,
 * IPL_E_UNSUPPORTED (the file system does not do locks) or IPL_E_OS.
 * On failure *out is set to NULL (when out is not NULL).
 * The caller owns the handle and frees it with ipl_close(). */
IPL_API int ipl_open(const char *path, uint32_t flags, ipl_lock **out);

/* ipl_open, and on failure also the OS error number (errno / GetLastError)
 * behind it in *os_error: 0 when no system call failed (bad arguments, or a
 * file that libipl itself found not to be a regular file), else the errno of
 * the call that failed (e.g. EISDIR, ENOENT, EACCES). os_error may be NULL. */
IPL_API int ipl_open_ex(const char *path, uint32_t flags, ipl_lock **out,
                        int *os_error);

/* ipl_open_ex, choosing the permissions of what it creates. create_mode
 * (0 to 0777, e.g. 0664 for a lock file shared by a group) is given exactly
 * to a lock file this call creates, whatever the process umask (libipl
 * never changes the umask: it sets the mode with fchmod() on the file it
 * has just created). Parent folders it creates get create_mode plus search
 * (x) permission wherever create_mode gives read (0664 -> 0775), and keep
 * the set-group-ID bit a group-shared parent folder passes on to them. An
 * existing file or folder is never changed. On Windows create_mode is
 * checked and otherwise ignored (files inherit their folder's ACL).
 * Returns as ipl_open_ex; IPL_E_INVALID also for create_mode > 0777. */
IPL_API int ipl_open_mode(const char *path, uint32_t flags, uint32_t create_mode,
                          ipl_lock **out, int *os_error);

/* A handle over the caller's descriptor `fd` (a regular file), whose locks
 * are taken on fd's open file description: shared by every copy of it
 * (dup, fork, exec), they outlive the calling process while a copy stays
 * open. Linux OFD locks only. The handle starts out holding what the
 * description holds already (a lock an earlier process left on it, read
 * from /proc/self/fdinfo, nothing without /proc: so ipl_release or
 * ipl_release_read ends it, and an acquire is IPL_E_WOULD_DEADLOCK).
 * Handles over one description (fd twice, or a dup of it) are one lock
 * owner: they never exclude each other, ipl_query through one does not see
 * the description's own lock, and a release through one (or through
 * another process's copy, as `iplock -u`) ends the lock for all of them
 * while the others still count it as held: ipl_check through them then
 * says IPL_E_LOST. After IPL_E_LOST the handle locks the same descriptor
 * again (IPL_E_OS with EBADF if the caller has closed it). libipl never
 * closes fd nor changes its flags; the caller keeps it
 * open while the handle lives; ipl_close releases what the handle holds
 * (for every copy of the description). No path: no identity check,
 * ipl_check looks at the lock only, ipl_remove is IPL_E_UNSUPPORTED. In a
 * forked child the handle holds nothing (release: IPL_E_NOT_HELD; close
 * touches nothing) and acquire and query are IPL_E_UNSUPPORTED. An
 * exclusive lock needs fd open for writing, a shared one fd open for
 * reading (else the acquire is IPL_E_ACCESS with ipl_os_error EBADF; an
 * O_PATH descriptor allows neither). flags must be 0.
 * Returns IPL_OK; IPL_E_INVALID (fd < 0, NULL out, flags != 0);
 * IPL_E_OS (EBADF: fd is not open); IPL_E_NOT_REGULAR_FILE (a folder,
 * FIFO, pipe, socket or device; os_error 0); IPL_E_NO_MEMORY;
 * IPL_E_UNSUPPORTED (the classic backend, Windows, whatever fd is: their
 * locks are not per description). On failure *out is NULL (when out is
 * not NULL). os_error as in ipl_open_ex. */
IPL_API int ipl_open_fd(int fd, uint32_t flags, ipl_lock **out, int *os_error);

/* Releases whatever the handle holds, closes the file and frees the handle.
 * NULL is a harmless no-op. Must not race with other calls on this handle. */
IPL_API void ipl_close(ipl_lock *lock);

/* ---- Exclusive lock ----------------------------------------------------
 * ipl_acquire takes the exclusive lock, waiting as timeout_ms says.
 * Returns IPL_OK; IPL_E_TIMEOUT; IPL_E_INVALID (NULL handle, bad timeout);
 * IPL_E_WOULD_DEADLOCK (this handle holds the lock already, in any mode);
 * IPL_E_ACCESS (the handle is read-only, see ipl_open); IPL_E_CANCELED
 * (ipl_cancel); IPL_E_UNSUPPORTED (the file system does not do locks);
 * IPL_E_OS (e.g. EIO, or ESTALE when the lock file was replaced more than 100 times
 * during one call; see ipl_os_error()). When the lock file had to be
 * reopened (it was removed or replaced, or the handle came from the parent
 * of a forked child), also any status of ipl_open, e.g. IPL_E_OS with
 * ENOENT under IPL_OPEN_NO_CREATE. */
IPL_API int ipl_acquire(ipl_lock *lock, int64_t timeout_ms);

/* Releases the exclusive lock. IPL_E_NOT_HELD when the handle holds no lock
 * or holds a shared one (which it keeps); IPL_E_INVALID for NULL. When the
 * OS fails to unlock: IPL_E_OS (e.g. EIO), IPL_E_UNSUPPORTED (ENOLCK,
 * EOPNOTSUPP: mapped as from an acquire) or IPL_E_NO_MEMORY, with the errno
 * in ipl_os_error(); the handle then still holds the lock (so may the OS),
 * a retry may succeed, and ipl_close() frees it anyway by closing the file.
 * IPL_E_LOST: the lock was gone already (see ipl_check); the handle then
 * holds nothing. */
IPL_API int ipl_release(ipl_lock *lock);

/* ---- Reader-writer lock ------------------------------------------------
 * ipl_acquire_read takes a shared lock; ipl_acquire_write is exactly
 * ipl_acquire. Returns as ipl_acquire. A handle holding the read lock that
 * asks for write gets IPL_E_WOULD_DEADLOCK: there is no silent upgrade. */
IPL_API int ipl_acquire_read(ipl_lock *lock, int64_t timeout_ms);
/* ipl_release_read and ipl_release_write return as ipl_release. */
IPL_API int ipl_release_read(ipl_lock *lock);
IPL_API int ipl_acquire_write(ipl_lock *lock, int64_t timeout_ms);
IPL_API int ipl_release_write(ipl_lock *lock);

/* ---- Beyond acquire and release (0.2.0) ----------------------------------- */

/* Lock states reported by ipl_query(). */
#define IPL_STATE_FREE 0
#define IPL_STATE_SHARED 1
#define IPL_STATE_EXCLUSIVE 2

/* Is the lock held by anyone but this handle right now, and how? *state is
 * IPL_STATE_FREE, IPL_STATE_SHARED or IPL_STATE_EXCLUSIVE, counting every
 * other holder (other processes, fasteners, other handles of this process)
 * and never this handle's own lock: a handle that holds the lock exclusive
 * always sees FREE, one that holds it shared sees SHARED only when someone
 * else shares it too. The answer is a snapshot: it may be stale at once.
 *
 * holder_pid (may be NULL: then no holder is looked up) receives the
 * process id of one holder where the OS can tell, else -1. A classic fcntl
 * holder (fasteners, the classic backend) is reported by F_GETLK. The
 * kernel reports -1 for open-file-description locks, so libipl looks for
 * the holder's "lock:" line in /proc/PID/fdinfo/FD (at most 65,536 files
 * read, first match wins); a caller that may not read another process's
 * /proc entries (another user's process, without CAP_SYS_PTRACE) gets -1.
 * Another handle of this process holding the lock gives getpid(). On
 * Windows and across hosts (NFS, GlusterFS) *holder_pid is -1.
 *
 * The handle may hold a lock or not; it queries the file its path names now
 * (reopening it first if the file was replaced, when it holds nothing). It
 * never creates the lock file or its folders, whatever the open flags: when
 * the path names nothing (e.g. after ipl_remove), *state is IPL_STATE_FREE
 * and *holder_pid -1 (a later acquire creates the file as usual).
 * Returns IPL_OK; IPL_E_INVALID (NULL lock or state);
 * IPL_E_WOULD_DEADLOCK (another thread is acquiring on this handle right
 * now: query through another handle); IPL_E_OS. On failure *state and
 * *holder_pid are left unchanged. */
IPL_API int ipl_query(ipl_lock *lock, int *state, int64_t *holder_pid);

/* Ends a wait in progress on this handle (ipl_acquire*, ipl_upgrade) from
 * any thread, even one in a signal handler's aftermath: the waiting call
 * returns IPL_E_CANCELED within the latency of a deadline (the wait signal
 * or the polling sleep is woken at once). With no wait in progress it does
 * nothing and does not affect later waits: a wait that starts after the
 * call is not canceled (call again once it has started). Windows: a wait
 * with IPL_WAIT_FOREVER blocks in LockFileEx, which nothing can end, so
 * cancel does not reach it (timed waits poll there and are canceled).
 * Returns IPL_OK; IPL_E_INVALID (NULL). */
IPL_API int ipl_cancel(ipl_lock *lock);

/* Turns the exclusive lock this handle holds into a shared one, atomically:
 * at no moment is the lock free for a writer. Other readers may then join.
 * Returns IPL_OK; IPL_E_INVALID (NULL); IPL_E_NOT_HELD (the handle does not
 * hold the lock exclusive; what it holds is kept); IPL_E_OS (the lock is
 * then still held exclusive). */
IPL_API int ipl_downgrade(ipl_lock *lock);

/* Turns the shared lock this handle holds into an exclusive one, waiting as
 * timeout_ms says for the other readers to leave. The shared lock is kept
 * while waiting, and kept on every failure: the handle then still holds it
 * shared. Two handles (in any processes) that upgrade the same lock at once
 * would wait for each other forever, so only one upgrade waits at a time:
 * a second one gets IPL_E_WOULD_DEADLOCK at once and should release its
 * shared lock, so that the first can finish. (On POSIX the upgrade holds
 * the lock's last byte, offset 2^63-1, exclusive while it waits; libipl's
 * own locks cover bytes 0 to 2^63-2, see the interoperability note above.)
 * Returns IPL_OK; IPL_E_TIMEOUT; IPL_E_CANCELED; IPL_E_INVALID (NULL, bad
 * timeout); IPL_E_NOT_HELD (the handle does not hold the lock shared);
 * IPL_E_WOULD_DEADLOCK (another upgrade is waiting); IPL_E_ACCESS (the
 * handle is read-only); IPL_E_UNSUPPORTED (Windows); IPL_E_OS. */
IPL_API int ipl_upgrade(ipl_lock *lock, int64_t timeout_ms);

/* Removes the lock file while holding its exclusive lock, then releases the
 * lock, so that nothing is left behind. A libipl handle waiting for the
 * lock notices (the path identity check, see "The lock file's path") and
 * waits on the file the path names next (creating it, as its open flags
 * allow). A fasteners process that had already opened the file is not
 * protected: it can be granted a lock on the removed file, which excludes
 * nobody who opens the path afterwards; remove only lock files that
 * fasteners processes do not use. If the path no longer names the locked
 * file (someone replaced it), nothing is removed. The handle holds nothing
 * afterwards; a later acquire creates the file again. Windows without
 * POSIX delete semantics (older Windows, Wine): the file stays at its path
 * until every other handle open on it is closed.
 * Returns IPL_OK; IPL_E_INVALID (NULL); IPL_E_NOT_HELD (not held
 * exclusive; what the handle holds is kept); IPL_E_ACCESS (no permission to
 * remove it: the lock is then kept); IPL_E_OS. */
IPL_API int ipl_remove(ipl_lock *lock);

/* Is the lock this handle holds still held? Asks the OS (on a network file
 * system: the server) and checks that the path still names the locked
 * file. It never waits for the lock, but a server that cannot be reached
 * can keep it waiting until the client gives up on the connection (the
 * file system's timeout: ~42 s on GlusterFS by default). Linux, exclusive:
 * F_OFD_GETLK through the handle's own open file description (any other
 * holder means lost) and through a second one (which must see this lock),
 * so a lost lock is never taken back unnoticed. Shared, or the classic
 * backend: the lock held is re-asserted (F_SETLK of the same type and
 * range); on GlusterFS without client.strict-locks, where a brick restart
 * drops locks silently, that takes a lost shared lock back if nobody took
 * it meanwhile.
 * Returns IPL_OK (still held); IPL_E_LOST (see IPL_E_LOST: the handle then
 * holds nothing); IPL_E_NOT_HELD (the handle holds no lock);
 * IPL_E_INVALID (NULL); IPL_E_WOULD_DEADLOCK (another thread is acquiring
 * on this handle); IPL_E_OS. What a file system does not report cannot be
 * seen (README, "Across hosts"). On Windows only the path is checked.
 * ipl_release*() after a loss the OS reports (EBADFD, ENOTCONN, ESTALE)
 * returns IPL_E_LOST too. */
IPL_API int ipl_check(ipl_lock *lock);

/* ---- How timed waits sleep -------------------------------------------------
 * A timed wait (timeout_ms > 0) sleeps in the kernel's blocking lock call and
 * wakes as soon as the lock is released, like IPL_WAIT_FOREVER. To end the
 * wait at its deadline, Linux builds give each thread that makes a contended
 * timed wait one POSIX timer (timer_create, SIGEV_THREAD_ID; kept until the
 * thread exits). The wait arms it to send that thread a signal, handled by an
 * empty handler installed without SA_RESTART, at the deadline and every
 * millisecond after it until the wait returns; the wait then disarms it. A
 * timer never queues more than one signal, however long a wait stays
 * blocked, and its signal cannot fail to be sent once the timer exists.
 *
 * The signal: on first use, libipl takes the highest real-time signal
 * (SIGRTMAX downwards) whose disposition is still the default. It never
 * replaces a handler it did not install, and before every wait it checks
 * that the handler is still its own. Timed waits fall back to polling (capped,
 * jittered back-off of 50 us to 10 ms; same results, slower hand-off, a little
 * CPU) when: no signal is free (the application or a runtime owns them all),
 * the application has since installed its own handler on the signal (libipl
 * then gives it up for good), the signal is blocked in the calling thread,
 * the thread's timer cannot be made (e.g. the user's real-time signal queue,
 * RLIMIT_SIGPENDING, is full), or the lock file is on a file system not
 * known to be local (FUSE, NFS, CIFS, ...: there a signal may not end a
 * lock call, so only polling keeps the deadline). Only the waiting thread is
 * ever signaled, and a signal sent to it is delivered before the call
 * returns: none reaches application code. (If the application replaces the
 * handler while a wait is in progress, that wait may still send it one.)
 *
 * Turning it off or choosing the signal: set IPL_WAIT_SIGNAL=0 in the
 * environment (or =N for signal N) before the first timed wait, or call
 * ipl_set_wait_signal(). Other platforms always return 0 from
 * ipl_wait_signal() and wait as their backend documents. */

/* Chooses the wait signal: IPL_WAIT_SIGNAL_AUTO picks one as above, 0 turns
 * the mechanism off (timed waits poll), N > 0 uses signal N, which the caller
 * reserves for libipl (it must have the default disposition or libipl's
 * handler). A signal given up keeps libipl's empty handler, since a wait in
 * another thread may still be using it.
 * Returns IPL_OK; IPL_E_INVALID (not a usable signal number);
 * IPL_E_SIGNAL_IN_USE (the application has a handler on N);
 * IPL_E_UNSUPPORTED (N > 0 on a platform without the mechanism). */
#define IPL_WAIT_SIGNAL_AUTO (-1)
IPL_API int ipl_set_wait_signal(int signo);

/* The signal timed waits use now, or 0 when they poll. The first call may
 * take a signal, as the first timed wait would. */
IPL_API int ipl_wait_signal(void);

/* ---- Errors and versions ------------------------------------------------ */

/* The OS error number (errno, or GetLastError() on Windows) behind the most
 * recent call on this handle that failed with an OS-derived status; 0 when
 * there was none. Kept on the handle, not in thread-local storage, so it
 * works when the caller moves between threads between calls. 0 for NULL. */
IPL_API int ipl_os_error(const ipl_lock *lock);

/* A short English text for a status: static storage, never NULL, never to be
 * freed. Unknown values give "unknown status". */
IPL_API const char *ipl_strerror(int status);

/* IPL_VERSION_NUMBER and IPL_VERSION_STRING of the library actually loaded,
 * to catch a header/library mismatch. */
IPL_API uint32_t ipl_version_number(void);
IPL_API const char *ipl_version_string(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* IPL_IPL_H */

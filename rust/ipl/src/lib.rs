// SPDX-License-Identifier: MIT
//! Inter-process locks on a lock file, through libipl's C API: an exclusive
//! lock and a reader-writer lock, with try / blocking / timed acquisition,
//! released by the kernel when the holder dies, and the same lock Python's
//! fasteners takes (so mixed fleets coordinate).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let lock = ipl::Lock::open("/var/lock/myapp/db.lock")?;   // creates folders and file
//! {
//!     let _guard = lock.lock()?;                            // exclusive; blocks
//!     // ... critical section; dropping the guard releases ...
//! }
//! match lock.lock_timeout(Duration::from_secs(2))? {
//!     Some(_guard) => { /* got it within 2 s */ }
//!     None => { /* held elsewhere all that time */ }
//! }
//! if let Some(_reader) = lock.try_lock_shared()? {          // shared; never sleeps
//!     // ... readers coexist, writers wait ...
//! }
//! # Ok::<(), ipl::Error>(())
//! ```
//!
//! A [`Lock`] is one libipl handle and holds at most one lock, so two `Lock`s
//! on one file exclude each other exactly as two processes do, also in one
//! thread. Locks are not reentrant: asking a `Lock` that holds the lock for
//! it again is an [`Error`] with status `IPL_E_WOULD_DEADLOCK`. A `Lock` is
//! `Send + Sync`; a guard may be released from another thread.
//!
//! Beyond lock and unlock: [`Lock::query`] (is the lock held elsewhere, how,
//! by which process), [`Guard::downgrade`] and [`SharedGuard::upgrade`]
//! (exclusive to shared atomically, and back without deadlock),
//! [`Guard::remove`] (delete the lock file while holding it),
//! [`Guard::check`] (is the lock still held: `IPL_E_LOST` when a file server
//! or a replaced file took it away), [`OpenOptions::inheritable`] and
//! [`Lock::from_fd`] (locks on an open file description that children
//! inherit, as flock(1)'s; Linux OFD builds only, else `IPL_E_UNSUPPORTED`),
//! and [`Lock::cancel`] or a [`Canceler`] to end a wait from another thread:
//!
//! ```no_run
//! let lock = ipl::Lock::open("/var/lock/myapp/db.lock")?;
//! let canceler = lock.canceler();                // Clone + Send + Sync
//! let waiter = std::thread::spawn(move || lock.lock().map(|_guard| ()));
//! while !waiter.is_finished() {                  // a cancel before the wait begins does nothing
//!     canceler.cancel();
//!     std::thread::sleep(std::time::Duration::from_millis(1));
//! }
//! let ended = waiter.join().unwrap();            // Err: status IPL_E_CANCELED
//! # Ok::<(), ipl::Error>(())
//! ```
//!
//! Linking: the `ipl-sys` crate finds the installed libipl with `pkg-config`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use ipl_sys as sys;

/// The longest wait passed to C: 100 years (as ipl.hpp). A longer duration
/// stays a timed wait instead of overflowing or meaning "forever".
pub const MAX_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

// ---- Errors ----------------------------------------------------------------------

/// A failed libipl call: the status (`IPL_E_*`), the OS error number behind
/// it when there is one, the lock file's path and what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: i32,
    os_error: i32,
    path: Option<PathBuf>,
    operation: &'static str,
}

impl Error {
    fn new(status: i32, os_error: i32, path: Option<&Path>, operation: &'static str) -> Error {
        Error {
            status,
            os_error,
            path: path.map(Path::to_path_buf),
            operation,
        }
    }

    /// The libipl status, one of the negative `ipl::sys::IPL_E_*` values.
    pub fn status(&self) -> i32 {
        self.status
    }

    /// The OS error number (errno; GetLastError on Windows) behind an
    /// OS-derived status, `None` when libipl made no failing system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        if self.os_error != 0 {
            Some(self.os_error)
        } else {
            None
        }
    }

    /// The lock file's path, as given.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// libipl's text for the status (`ipl_strerror`).
    pub fn message(&self) -> &'static str {
        strerror(self.status)
    }

    /// The `std::io::ErrorKind` that fits the status (or the OS error).
    pub fn kind(&self) -> io::ErrorKind {
        use ipl_sys::*;
        if self.os_error != 0 && self.status == IPL_E_OS {
            return io::Error::from_raw_os_error(self.os_error).kind();
        }
        match self.status {
            IPL_E_TIMEOUT => io::ErrorKind::TimedOut,
            IPL_E_INVALID => io::ErrorKind::InvalidInput,
            IPL_E_ACCESS => io::ErrorKind::PermissionDenied,
            IPL_E_NO_MEMORY => io::ErrorKind::OutOfMemory,
            IPL_E_UNSUPPORTED => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {}", self.operation)?;
        if let Some(path) = &self.path {
            write!(f, " {}", path.display())?;
        }
        write!(f, ": {} (ipl status {})", self.message(), self.status)?;
        if self.os_error != 0 {
            write!(
                f,
                ": {}",
                io::Error::from_raw_os_error(self.os_error)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        io::Error::new(error.kind(), error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn strerror(status: i32) -> &'static str {
    // Static storage, never NULL (ipl.h).
    unsafe { CStr::from_ptr(ipl_sys::ipl_strerror(status)) }
        .to_str()
        .unwrap_or("(not UTF-8)")
}

// ---- Opening ---------------------------------------------------------------------

/// How to open a lock file: [`Lock::open`] with everything at its default
/// (create the file and any missing folders; 0666 minus the umask).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    no_create: bool,
    no_create_dirs: bool,
    inheritable: bool,
    mode: Option<u32>,
}

impl OpenOptions {
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Whether a missing lock file is created (default true). Without it, a
    /// missing file is an `IPL_E_OS` error with `ENOENT`.
    pub fn create(&mut self, create: bool) -> &mut OpenOptions {
        self.no_create = !create;
        self
    }

    /// Whether missing parent folders are created (default true). Without
    /// it, a missing folder is `IPL_E_BAD_PARENT`.
    pub fn create_dirs(&mut self, create_dirs: bool) -> &mut OpenOptions {
        self.no_create_dirs = !create_dirs;
        self
    }

    /// The exact permissions (0 to 0o777) of a lock file this open creates,
    /// whatever the umask (`ipl_open_mode`); folders it creates get the
    /// same plus search permission where it gives read.
    pub fn mode(&mut self, mode: u32) -> &mut OpenOptions {
        self.mode = Some(mode);
        self
    }

    /// Whether the lock's descriptor is inherited by child processes
    /// (`IPL_OPEN_INHERITABLE`, default false): left open across fork and
    /// exec (`std::process::Command` keeps it), so a child inherits the
    /// lock, which then lasts while any copy of the descriptor is open (an
    /// unlock or dropping the `Lock` still ends it at once). Linux OFD
    /// builds only: elsewhere open fails with `IPL_E_UNSUPPORTED`.
    pub fn inheritable(&mut self, inheritable: bool) -> &mut OpenOptions {
        self.inheritable = inheritable;
        self
    }

    /// Opens the lock file; the [`Lock`] holds nothing yet.
    pub fn open<P: AsRef<Path>>(&self, path: P) -> Result<Lock> {
        let path = path.as_ref();
        let c_path = c_path(path)?;
        let mut flags = 0;
        if self.no_create {
            flags |= ipl_sys::IPL_OPEN_NO_CREATE;
        }
        if self.no_create_dirs {
            flags |= ipl_sys::IPL_OPEN_NO_CREATE_DIRS;
        }
        if self.inheritable {
            flags |= ipl_sys::IPL_OPEN_INHERITABLE;
        }
        let mut raw = std::ptr::null_mut();
        let mut os_error = 0;
        let status = unsafe {
            match self.mode {
                None => ipl_sys::ipl_open_ex(c_path.as_ptr(), flags, &mut raw, &mut os_error),
                Some(mode) => ipl_sys::ipl_open_mode(
                    c_path.as_ptr(),
                    flags,
                    mode,
                    &mut raw,
                    &mut os_error,
                ),
            }
        };
        match NonNull::new(raw) {
            Some(raw) if status == ipl_sys::IPL_OK => Ok(Lock {
                handle: Arc::new(Handle {
                    raw,
                    #[cfg(unix)]
                    _fd: None,
                }),
                path: path.to_path_buf(),
            }),
            _ => Err(Error::new(status, os_error, Some(path), "open")),
        }
    }
}

/// The path as C wants it: UTF-8 bytes (any bytes on Unix), NUL-terminated.
/// A path with a NUL inside would name a shorter path: `IPL_E_INVALID`.
fn c_path(path: &Path) -> Result<CString> {
    let invalid = || Error::new(ipl_sys::IPL_E_INVALID, 0, Some(path), "open");
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_str().ok_or_else(invalid)?.as_bytes().to_vec();
    CString::new(bytes).map_err(|_| invalid())
}

/// A timeout as the C API wants it: whole milliseconds, rounded up, so a
/// wait never ends before the time asked for; at most [`MAX_WAIT`].
fn timeout_ms(timeout: Duration) -> i64 {
    let timeout = timeout.min(MAX_WAIT);
    ((timeout.as_nanos() + 999_999) / 1_000_000) as i64
}

// ---- The lock --------------------------------------------------------------------

/// One open lock file (one libipl handle), holding at most one lock.
/// Dropping it closes the handle, which releases what it holds.
pub struct Lock {
    handle: Arc<Handle>,
    path: PathBuf,
}

/// The C handle, closed when its last owner lets go: the `Lock`, or a
/// [`Canceler`] in the middle of its `ipl_cancel` call (a `Canceler` holds
/// the handle only for that long), so that ipl_close never races a cancel.
struct Handle {
    raw: NonNull<ipl_sys::ipl_lock>,
    // Lock::from_fd's descriptor: closed after ipl_close (fields are
    // dropped after Drop::drop), as libipl never closes it.
    #[cfg(unix)]
    _fd: Option<std::os::unix::io::OwnedFd>,
}

// libipl: every function may be called from any thread and calls on one
// handle are serialised; only ipl_close must not race, and it runs when the
// last Arc goes (no guard can outlive the borrow of the Lock it holds).
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { ipl_sys::ipl_close(self.raw.as_ptr()) }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Exclusive,
    Shared,
}

impl Lock {
    /// Opens (creating it and any missing parent folders) the lock file at
    /// `path`. See [`OpenOptions`] for the other choices.
    pub fn open<P: AsRef<Path>>(path: P) -> Result<Lock> {
        OpenOptions::new().open(path)
    }

    /// A `Lock` over an open descriptor of a regular file (`ipl_open_fd`),
    /// whose locks are taken on its open file description: shared by every
    /// copy of it (dup, fork, exec: pass a duplicate to a child), they
    /// outlive this process while a copy stays open, as flock(1)'s do. If
    /// the description holds a lock already (one an earlier process left on
    /// it), the `Lock` starts out holding it: dropping the `Lock` (or
    /// `ipl::sys::ipl_release` on [`as_raw`](Lock::as_raw)) ends it. The
    /// `Lock` owns `fd` and closes it after the handle. An exclusive lock
    /// needs `fd` open for writing, a shared one for reading (else
    /// `IPL_E_ACCESS` with EBADF). No path: [`path`](Lock::path) is empty,
    /// [`Guard::remove`] fails with `IPL_E_UNSUPPORTED`, and the `Lock`
    /// cannot be used in a forked child. Errors: `IPL_E_NOT_REGULAR_FILE`;
    /// `IPL_E_UNSUPPORTED` on the classic POSIX backend and Windows (their
    /// locks are not per description).
    #[cfg(unix)]
    pub fn from_fd<F: Into<std::os::unix::io::OwnedFd>>(fd: F) -> Result<Lock> {
        use std::os::unix::io::AsRawFd;
        let fd: std::os::unix::io::OwnedFd = fd.into();
        let mut raw = std::ptr::null_mut();
        let mut os_error = 0;
        let status = unsafe { ipl_sys::ipl_open_fd(fd.as_raw_fd(), 0, &mut raw, &mut os_error) };
        match NonNull::new(raw) {
            Some(raw) if status == ipl_sys::IPL_OK => Ok(Lock {
                handle: Arc::new(Handle { raw, _fd: Some(fd) }),
                path: PathBuf::new(),
            }),
            _ => Err(Error::new(status, os_error, None, "open a descriptor")),
        }
    }

    /// The exclusive lock, waiting as long as it takes (or until
    /// [`cancel`](Lock::cancel): an `IPL_E_CANCELED` error).
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.acquire(Mode::Exclusive, ipl_sys::IPL_WAIT_FOREVER)
            .map(|taken| taken.expect("a wait without a limit ends with the lock"))
    }

    /// The exclusive lock if it is free now (never sleeps); `None` when it
    /// is held elsewhere.
    pub fn try_lock(&self) -> Result<Option<Guard<'_>>> {
        self.acquire(Mode::Exclusive, 0)
    }

    /// The exclusive lock, waiting at most `timeout` (rounded up to whole
    /// milliseconds); `None` when it stayed held elsewhere.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<Guard<'_>>> {
        self.acquire(Mode::Exclusive, timeout_ms(timeout))
    }

    /// A shared lock, waiting as long as it takes.
    pub fn lock_shared(&self) -> Result<SharedGuard<'_>> {
        self.acquire(Mode::Shared, ipl_sys::IPL_WAIT_FOREVER)
            .map(|taken| SharedGuard(taken.expect("a wait without a limit ends with the lock")))
    }

    /// A shared lock if one can be had now; `None` when a writer holds it.
    pub fn try_lock_shared(&self) -> Result<Option<SharedGuard<'_>>> {
        Ok(self.acquire(Mode::Shared, 0)?.map(SharedGuard))
    }

    /// A shared lock, waiting at most `timeout`.
    pub fn lock_shared_timeout(&self, timeout: Duration) -> Result<Option<SharedGuard<'_>>> {
        Ok(self.acquire(Mode::Shared, timeout_ms(timeout))?.map(SharedGuard))
    }

    fn acquire(&self, mode: Mode, timeout_ms: i64) -> Result<Option<Guard<'_>>> {
        let status = unsafe {
            match mode {
                Mode::Exclusive => ipl_sys::ipl_acquire(self.raw(), timeout_ms),
                Mode::Shared => ipl_sys::ipl_acquire_read(self.raw(), timeout_ms),
            }
        };
        match status {
            ipl_sys::IPL_OK => Ok(Some(Guard { lock: self, mode })),
            ipl_sys::IPL_E_TIMEOUT => Ok(None),
            _ => Err(self.error(status, "lock")),
        }
    }

    fn error(&self, status: i32, operation: &'static str) -> Error {
        use ipl_sys::*;
        // libipl's own rules make no system call: ipl_os_error() would give
        // an older call's errno.
        let os_error = match status {
            IPL_E_TIMEOUT | IPL_E_INVALID | IPL_E_NOT_HELD | IPL_E_WOULD_DEADLOCK
            | IPL_E_INTERNAL | IPL_E_CANCELED => 0,
            _ => unsafe { ipl_os_error(self.raw()) },
        };
        let path = Some(self.path.as_path()).filter(|path| !path.as_os_str().is_empty());
        Error::new(status, os_error, path, operation)
    }

    fn raw(&self) -> *mut ipl_sys::ipl_lock {
        self.handle.raw.as_ptr()
    }

    // ---- Beyond lock and unlock (libipl 0.2.0)

    /// Whether the lock is held by anyone but this `Lock` right now, how,
    /// and by which process (`ipl_query`). This `Lock`'s own lock never
    /// counts: holding it exclusive, it sees [`State::Free`]. A snapshot,
    /// possibly stale at once. `IPL_E_WOULD_DEADLOCK` while another thread
    /// is acquiring on this `Lock`.
    pub fn query(&self) -> Result<Query> {
        self.query_with(true)
    }

    /// [`query`](Lock::query) without looking up a holder's process id (on
    /// Linux a scan of /proc for OFD holders).
    pub fn query_state(&self) -> Result<State> {
        self.query_with(false).map(|query| query.state)
    }

    fn query_with(&self, find_holder: bool) -> Result<Query> {
        let mut state = ipl_sys::IPL_STATE_FREE;
        let mut pid: i64 = -1;
        let pid_out: *mut i64 = if find_holder {
            &mut pid
        } else {
            std::ptr::null_mut()
        };
        let status = unsafe { ipl_sys::ipl_query(self.raw(), &mut state, pid_out) };
        if status != ipl_sys::IPL_OK {
            return Err(self.error(status, "query"));
        }
        let state = match state {
            ipl_sys::IPL_STATE_SHARED => State::Shared,
            ipl_sys::IPL_STATE_EXCLUSIVE => State::Exclusive,
            _ => State::Free,
        };
        Ok(Query {
            state,
            holder_pid: u32::try_from(pid).ok(),
        })
    }

    /// Ends a wait in progress on this `Lock` in another thread ([`lock`],
    /// [`lock_timeout`], [`SharedGuard::upgrade`], ...): that call returns
    /// an [`Error`] with status `IPL_E_CANCELED` and holds what it held
    /// before. With no wait in progress it does nothing, also to a wait that
    /// starts afterwards: call it again until the waiting thread has
    /// returned. A `Lock` is `Sync`, so a scoped thread can call this; a
    /// thread that cannot borrow the `Lock` uses a [`Canceler`].
    ///
    /// [`lock`]: Lock::lock
    /// [`lock_timeout`]: Lock::lock_timeout
    pub fn cancel(&self) -> Result<()> {
        match unsafe { ipl_sys::ipl_cancel(self.raw()) } {
            ipl_sys::IPL_OK => Ok(()),
            status => Err(self.error(status, "cancel")),
        }
    }

    /// A [`Canceler`] for waits on this `Lock`, for a thread that does not
    /// borrow it (say the `Lock` moved into the waiting thread).
    pub fn canceler(&self) -> Canceler {
        Canceler {
            handle: Arc::downgrade(&self.handle),
        }
    }

    /// The lock file's path, as given to open (empty for
    /// [`from_fd`](Lock::from_fd)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The C handle, still owned by this `Lock`, for calls into `ipl::sys`.
    pub fn as_raw(&self) -> *mut ipl_sys::ipl_lock {
        self.raw()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").field("path", &self.path).finish()
    }
}

/// How others hold a lock, as [`Lock::query`] reports it (`IPL_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nobody else holds it.
    Free,
    /// Others hold it shared.
    Shared,
    /// Another holds it exclusive.
    Exclusive,
}

/// What [`Lock::query`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// How others hold the lock.
    pub state: State,
    /// One holder's process id where the OS can tell (classic fcntl holders
    /// such as fasteners through F_GETLK, OFD holders through
    /// /proc/PID/fdinfo where this process may read it; see ipl.h,
    /// `ipl_query`), else `None`.
    pub holder_pid: Option<u32>,
}

/// Ends waits on a [`Lock`] from any thread (`ipl_cancel`), without
/// borrowing it: `Clone + Send + Sync`, it may outlive the `Lock`. It keeps
/// no lock and no file open: while the `Lock` lives, each [`cancel`] reaches
/// its handle (kept alive for the length of that call); afterwards
/// [`cancel`] does nothing.
///
/// [`cancel`]: Canceler::cancel
#[derive(Clone)]
pub struct Canceler {
    handle: Weak<Handle>,
}

impl Canceler {
    /// Ends the wait in progress on the `Lock`, as [`Lock::cancel`] does.
    /// Returns whether the `Lock` still exists.
    pub fn cancel(&self) -> bool {
        match self.handle.upgrade() {
            Some(handle) => {
                // ipl_cancel fails only for NULL.
                unsafe { ipl_sys::ipl_cancel(handle.raw.as_ptr()) };
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for Canceler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceler")
            .field("lock_alive", &(self.handle.strong_count() > 0))
            .finish()
    }
}

/// A failed change of a held lock ([`Guard::downgrade`],
/// [`SharedGuard::upgrade`], [`Guard::remove`]): the error, and the guard
/// back, still holding what it held before. Converts into [`Error`] (the
/// guard is then dropped, which releases), so `?` works.
pub struct ChangeError<G> {
    guard: G,
    error: Error,
}

impl<G> ChangeError<G> {
    /// What went wrong.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The libipl status: `IPL_E_TIMEOUT` when an upgrade was not granted in
    /// time, `IPL_E_WOULD_DEADLOCK` when another upgrade is waiting, ...
    pub fn status(&self) -> i32 {
        self.error.status
    }

    /// The guard, holding what it held before the call.
    pub fn into_guard(self) -> G {
        self.guard
    }

    /// The guard and the error.
    pub fn into_parts(self) -> (G, Error) {
        (self.guard, self.error)
    }
}

impl<G> fmt::Debug for ChangeError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeError")
            .field("error", &self.error)
            .finish()
    }
}

impl<G> fmt::Display for ChangeError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<G> std::error::Error for ChangeError<G> {}

impl<G> From<ChangeError<G>> for Error {
    fn from(error: ChangeError<G>) -> Error {
        error.error
    }
}

/// The exclusive lock, held until the guard is dropped or [`unlock`]ed. It
/// is `Send` (a `Lock` is `Sync`): any thread may release it.
///
/// [`unlock`]: Guard::unlock
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Guard<'a> {
    lock: &'a Lock,
    mode: Mode,
}

impl<'a> Guard<'a> {
    /// Releases the lock now, reporting a failure that Drop would swallow.
    pub fn unlock(self) -> Result<()> {
        let result = self.release();
        std::mem::forget(self);
        result
    }

    fn release(&self) -> Result<()> {
        let status = unsafe {
            match self.mode {
                Mode::Exclusive => ipl_sys::ipl_release(self.lock.raw()),
                Mode::Shared => ipl_sys::ipl_release_read(self.lock.raw()),
            }
        };
        if status == ipl_sys::IPL_OK {
            Ok(())
        } else {
            Err(self.lock.error(status, "unlock"))
        }
    }

    /// The `Lock` this guard holds.
    pub fn lock(&self) -> &'a Lock {
        self.lock
    }

    /// Whether the lock is still held (`ipl_check`): asks the OS (on a
    /// network file system, the server) and checks that the path still
    /// names the locked file. Never waits for the lock, but an unreachable
    /// server can keep it waiting until the file system gives up. `Err`
    /// with status `IPL_E_LOST` when the lock is gone (the handle then holds
    /// nothing: drop the guard and lock again), `IPL_E_WOULD_DEADLOCK`
    /// while another thread acquires on this `Lock`.
    pub fn check(&self) -> Result<()> {
        match unsafe { ipl_sys::ipl_check(self.lock.raw()) } {
            ipl_sys::IPL_OK => Ok(()),
            status => Err(self.lock.error(status, "check")),
        }
    }

    /// Turns the exclusive lock into a shared one, atomically
    /// (`ipl_downgrade`): at no moment can a writer get in; other readers
    /// may join at once. On failure the guard comes back, still exclusive.
    pub fn downgrade(self) -> std::result::Result<SharedGuard<'a>, ChangeError<Guard<'a>>> {
        let lock = self.lock;
        match unsafe { ipl_sys::ipl_downgrade(lock.raw()) } {
            ipl_sys::IPL_OK => {
                std::mem::forget(self);
                Ok(SharedGuard(Guard {
                    lock,
                    mode: Mode::Shared,
                }))
            }
            status => Err(ChangeError {
                guard: self,
                error: lock.error(status, "downgrade"),
            }),
        }
    }

    /// Removes the lock file, then releases the lock (`ipl_remove`), so that
    /// nothing is left behind; a later lock creates the file again. A
    /// `Lock` waiting elsewhere ends up locking the file the path names
    /// next. Remove only lock files that fasteners processes do not use
    /// (ipl.h says why). On failure (`IPL_E_ACCESS`: the file may not be
    /// removed) the guard comes back, still holding the lock.
    pub fn remove(self) -> std::result::Result<(), ChangeError<Guard<'a>>> {
        let lock = self.lock;
        match unsafe { ipl_sys::ipl_remove(lock.raw()) } {
            ipl_sys::IPL_OK => {
                std::mem::forget(self);
                Ok(())
            }
            status => Err(ChangeError {
                guard: self,
                error: lock.error(status, "remove"),
            }),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // A release of a lock this handle holds cannot fail (ipl.h); if it
        // ever did, closing the Lock still lets go.
        let _ = self.release();
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("path", &self.lock.path).finish()
    }
}

/// A shared lock, held until the guard is dropped or [`unlock`]ed.
///
/// [`unlock`]: SharedGuard::unlock
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct SharedGuard<'a>(Guard<'a>);

impl<'a> SharedGuard<'a> {
    /// Releases the shared lock now, reporting a failure.
    pub fn unlock(self) -> Result<()> {
        self.0.unlock()
    }

    /// The `Lock` this guard holds.
    pub fn lock(&self) -> &'a Lock {
        self.0.lock
    }

    /// Whether the shared lock is still held, as [`Guard::check`].
    pub fn check(&self) -> Result<()> {
        self.0.check()
    }

    /// Turns the shared lock into the exclusive one (`ipl_upgrade`), waiting
    /// as long as it takes for the other readers to leave. The shared lock
    /// is kept while waiting, and on failure the guard comes back holding
    /// it. Only one upgrade of a lock file waits at a time: when another
    /// (in any process) is waiting already, this fails at once with
    /// `IPL_E_WOULD_DEADLOCK`, and the caller should drop the shared guard
    /// so that the other can finish. `IPL_E_CANCELED` after
    /// [`Lock::cancel`].
    pub fn upgrade(self) -> std::result::Result<Guard<'a>, ChangeError<SharedGuard<'a>>> {
        self.upgrade_within(ipl_sys::IPL_WAIT_FOREVER)
    }

    /// [`upgrade`](SharedGuard::upgrade) if no other reader holds the lock
    /// now; else the guard comes back with status `IPL_E_TIMEOUT`.
    pub fn try_upgrade(self) -> std::result::Result<Guard<'a>, ChangeError<SharedGuard<'a>>> {
        self.upgrade_within(0)
    }

    /// [`upgrade`](SharedGuard::upgrade), waiting at most `timeout`; then
    /// the guard comes back with status `IPL_E_TIMEOUT`.
    pub fn upgrade_timeout(
        self,
        timeout: Duration,
    ) -> std::result::Result<Guard<'a>, ChangeError<SharedGuard<'a>>> {
        self.upgrade_within(timeout_ms(timeout))
    }

    fn upgrade_within(
        self,
        timeout_ms: i64,
    ) -> std::result::Result<Guard<'a>, ChangeError<SharedGuard<'a>>> {
        let lock = self.0.lock;
        match unsafe { ipl_sys::ipl_upgrade(lock.raw(), timeout_ms) } {
            ipl_sys::IPL_OK => {
                std::mem::forget(self);
                Ok(Guard {
                    lock,
                    mode: Mode::Exclusive,
                })
            }
            status => Err(ChangeError {
                guard: self,
                error: lock.error(status, "upgrade"),
            }),
        }
    }
}

// ---- Library-wide ------------------------------------------------------------------

/// The version of the libipl actually loaded (`ipl_version_string`).
pub fn library_version() -> &'static str {
    unsafe { CStr::from_ptr(ipl_sys::ipl_version_string()) }
        .to_str()
        .unwrap_or("?")
}

/// The signal libipl's timed waits use now, 0 when they poll.
pub fn wait_signal() -> i32 {
    unsafe { ipl_sys::ipl_wait_signal() }
}

/// Chooses the wait signal (`ipl_set_wait_signal`): `None` picks one (the
/// default), `Some(0)` makes timed waits poll, `Some(n)` uses signal n.
pub fn set_wait_signal(signal: Option<i32>) -> Result<()> {
    let signo = signal.unwrap_or(ipl_sys::IPL_WAIT_SIGNAL_AUTO);
    match unsafe { ipl_sys::ipl_set_wait_signal(signo) } {
        ipl_sys::IPL_OK => Ok(()),
        status => Err(Error::new(status, 0, None, "set the wait signal")),
    }
}

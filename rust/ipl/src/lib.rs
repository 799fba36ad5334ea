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
//! Linking: the `ipl-sys` crate finds the installed libipl with `pkg-config`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
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
                raw,
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
    raw: NonNull<ipl_sys::ipl_lock>,
    path: PathBuf,
}

// libipl: every function may be called from any thread and calls on one
// handle are serialised; only ipl_close must not race, and Drop has the
// handle to itself (no guard can outlive the borrow it holds).
unsafe impl Send for Lock {}
unsafe impl Sync for Lock {}

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

    /// The exclusive lock, waiting as long as it takes.
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
                Mode::Exclusive => ipl_sys::ipl_acquire(self.raw.as_ptr(), timeout_ms),
                Mode::Shared => ipl_sys::ipl_acquire_read(self.raw.as_ptr(), timeout_ms),
            }
        };
        match status {
            ipl_sys::IPL_OK => Ok(Some(Guard { lock: self, mode })),
            ipl_sys::IPL_E_TIMEOUT => Ok(None),
            _ => Err(self.error(status, "lock")),
        }
    }

    fn error(&self, status: i32, operation: &'static str) -> Error {
        let os_error = unsafe { ipl_sys::ipl_os_error(self.raw.as_ptr()) };
        Error::new(status, os_error, Some(&self.path), operation)
    }

    /// The lock file's path, as given to open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The C handle, still owned by this `Lock`, for calls into `ipl::sys`.
    pub fn as_raw(&self) -> *mut ipl_sys::ipl_lock {
        self.raw.as_ptr()
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        unsafe { ipl_sys::ipl_close(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").field("path", &self.path).finish()
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

impl Guard<'_> {
    /// Releases the lock now, reporting a failure that Drop would swallow.
    pub fn unlock(self) -> Result<()> {
        let result = self.release();
        std::mem::forget(self);
        result
    }

    fn release(&self) -> Result<()> {
        let status = unsafe {
            match self.mode {
                Mode::Exclusive => ipl_sys::ipl_release(self.lock.raw.as_ptr()),
                Mode::Shared => ipl_sys::ipl_release_read(self.lock.raw.as_ptr()),
            }
        };
        if status == ipl_sys::IPL_OK {
            Ok(())
        } else {
            Err(self.lock.error(status, "unlock"))
        }
    }

    /// The `Lock` this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
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

impl SharedGuard<'_> {
    /// Releases the shared lock now, reporting a failure.
    pub fn unlock(self) -> Result<()> {
        self.0.unlock()
    }

    /// The `Lock` this guard holds.
    pub fn lock(&self) -> &Lock {
        self.0.lock
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

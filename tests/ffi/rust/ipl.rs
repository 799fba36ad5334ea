//! libipl from Rust: the C declarations of include/ipl/ipl.h and a small safe
//! wrapper. No crates: link with `-L <dir of libipl.so> -l ipl`.
//!
//! ```ignore
//! let lock = ipl::Lock::open("/tmp/app.lock")?;
//! lock.acquire(Some(Duration::from_secs(2)))?;   // Err(e) with e.status == TIMEOUT
//! ...                                            // when not acquired in time
//! lock.release()?;                               // or drop(lock): closing releases
//! ```
//!
//! Written for Rust 1.63 and later (edition 2021, nothing newer).

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int};
use std::time::Duration;

/// The opaque C handle (`ipl_lock`).
#[repr(C)]
pub struct RawLock {
    _opaque: [u8; 0],
}

extern "C" {
    pub fn ipl_open(path: *const c_char, flags: u32, out: *mut *mut RawLock) -> c_int;
    pub fn ipl_close(lock: *mut RawLock);
    pub fn ipl_acquire(lock: *mut RawLock, timeout_ms: i64) -> c_int;
    pub fn ipl_release(lock: *mut RawLock) -> c_int;
    pub fn ipl_acquire_read(lock: *mut RawLock, timeout_ms: i64) -> c_int;
    pub fn ipl_release_read(lock: *mut RawLock) -> c_int;
    pub fn ipl_acquire_write(lock: *mut RawLock, timeout_ms: i64) -> c_int;
    pub fn ipl_release_write(lock: *mut RawLock) -> c_int;
    pub fn ipl_os_error(lock: *const RawLock) -> c_int;
    pub fn ipl_strerror(status: c_int) -> *const c_char;
    pub fn ipl_version_string() -> *const c_char;
}

// Status values pinned by ipl.h.
pub const OK: i32 = 0;
pub const E_TIMEOUT: i32 = -1;
pub const E_INVALID: i32 = -2;
pub const E_NOT_HELD: i32 = -3;
pub const E_WOULD_DEADLOCK: i32 = -4;
pub const E_NOT_REGULAR_FILE: i32 = -6;
pub const WAIT_FOREVER: i64 = -1;

/// A failed libipl call: the negative IPL_E_* status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub status: i32,
}

impl Error {
    /// libipl's text for the status (ipl_strerror).
    pub fn message(&self) -> &'static str {
        // ipl_strerror returns static storage, never NULL.
        unsafe { CStr::from_ptr(ipl_strerror(self.status)) }
            .to_str()
            .unwrap_or("(not UTF-8)")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipl: {} (status {})", self.message(), self.status)
    }
}

impl std::error::Error for Error {}

fn check(status: c_int) -> Result<(), Error> {
    if status == OK {
        Ok(())
    } else {
        Err(Error { status })
    }
}

/// None waits forever; a duration is rounded up to whole milliseconds, so a
/// wait is never shorter than asked.
fn timeout_ms(timeout: Option<Duration>) -> i64 {
    match timeout {
        None => WAIT_FOREVER,
        Some(d) => {
            let ms = d.as_nanos().saturating_add(999_999) / 1_000_000;
            if ms > i64::MAX as u128 {
                i64::MAX
            } else {
                ms as i64
            }
        }
    }
}

/// One open lock file; holds at most one lock (shared or exclusive).
/// Dropping it closes the handle, which releases whatever it holds.
pub struct Lock {
    raw: *mut RawLock,
}

// libipl: every call may come from any thread and calls on one handle are
// serialised; only ipl_close must not race, and Drop has the handle alone.
unsafe impl Send for Lock {}
unsafe impl Sync for Lock {}

impl Lock {
    /// Opens (creating it and its parent folders) the lock file at `path`.
    pub fn open(path: &str) -> Result<Lock, Error> {
        // A path with an interior NUL cannot reach C intact.
        let c_path = CString::new(path).map_err(|_| Error { status: E_INVALID })?;
        let mut raw: *mut RawLock = std::ptr::null_mut();
        check(unsafe { ipl_open(c_path.as_ptr(), 0, &mut raw) })?;
        Ok(Lock { raw })
    }

    /// The exclusive lock: Some(Duration::ZERO) tries once, None waits forever.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<(), Error> {
        check(unsafe { ipl_acquire(self.raw, timeout_ms(timeout)) })
    }

    pub fn release(&self) -> Result<(), Error> {
        check(unsafe { ipl_release(self.raw) })
    }

    pub fn acquire_read(&self, timeout: Option<Duration>) -> Result<(), Error> {
        check(unsafe { ipl_acquire_read(self.raw, timeout_ms(timeout)) })
    }

    pub fn release_read(&self) -> Result<(), Error> {
        check(unsafe { ipl_release_read(self.raw) })
    }

    pub fn acquire_write(&self, timeout: Option<Duration>) -> Result<(), Error> {
        check(unsafe { ipl_acquire_write(self.raw, timeout_ms(timeout)) })
    }

    pub fn release_write(&self) -> Result<(), Error> {
        check(unsafe { ipl_release_write(self.raw) })
    }

    /// The errno behind the last OS-derived failure on this handle (0: none).
    pub fn os_error(&self) -> i32 {
        unsafe { ipl_os_error(self.raw) }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        unsafe { ipl_close(self.raw) }
    }
}

/// The version of the libipl actually loaded.
pub fn version() -> String {
    unsafe { CStr::from_ptr(ipl_version_string()) }
        .to_string_lossy()
        .into_owned()
}

// SPDX-License-Identifier: MIT
//! Raw declarations of libipl's C API, one for one with `include/ipl/ipl.h`
//! (libipl 0.2.0). The header is the documentation: every function there
//! says what it returns, who owns what and what NULL does. The safe API is
//! the `ipl` crate.
//!
//! Linking: `build.rs` asks the `pkg-config` program for `ipl` (see there
//! for PKG_CONFIG_PATH, IPL_STATIC and IPL_LIB_DIR).

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int};

/// The opaque handle: one open lock file (`ipl_lock`).
#[repr(C)]
pub struct ipl_lock {
    _opaque: [u8; 0],
    // Neither Send nor Sync nor Unpin by itself: the safe crate decides.
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

// ---- Versions -----------------------------------------------------------------
pub const IPL_ABI_VERSION: u32 = 1;
pub const IPL_VERSION_MAJOR: u32 = 0;
pub const IPL_VERSION_MINOR: u32 = 2;
pub const IPL_VERSION_PATCH: u32 = 0;
pub const IPL_VERSION_NUMBER: u32 =
    IPL_VERSION_MAJOR * 10000 + IPL_VERSION_MINOR * 100 + IPL_VERSION_PATCH;
pub const IPL_VERSION_STRING: &str = "0.2.0";

// ---- Status codes (pinned values) -------------------------------------------------
pub const IPL_OK: c_int = 0;
pub const IPL_E_TIMEOUT: c_int = -1;
pub const IPL_E_INVALID: c_int = -2;
pub const IPL_E_NOT_HELD: c_int = -3;
pub const IPL_E_WOULD_DEADLOCK: c_int = -4;
pub const IPL_E_ACCESS: c_int = -5;
pub const IPL_E_NOT_REGULAR_FILE: c_int = -6;
pub const IPL_E_NAME_TOO_LONG: c_int = -7;
pub const IPL_E_NO_MEMORY: c_int = -8;
pub const IPL_E_OS: c_int = -9;
pub const IPL_E_BAD_PARENT: c_int = -10;
pub const IPL_E_INTERNAL: c_int = -11;
pub const IPL_E_UNSUPPORTED: c_int = -12;
pub const IPL_E_SIGNAL_IN_USE: c_int = -13;
pub const IPL_E_CANCELED: c_int = -14;
pub const IPL_E_LOST: c_int = -15;

/// Wait without a time limit.
pub const IPL_WAIT_FOREVER: i64 = -1;

// ---- Open flags -----------------------------------------------------------------
pub const IPL_OPEN_NO_CREATE: u32 = 0x1;
pub const IPL_OPEN_NO_CREATE_DIRS: u32 = 0x2;
pub const IPL_OPEN_INHERITABLE: u32 = 0x4;

/// `ipl_set_wait_signal`: pick a free signal.
pub const IPL_WAIT_SIGNAL_AUTO: c_int = -1;

// ---- Lock states (`ipl_query`) --------------------------------------------------
pub const IPL_STATE_FREE: c_int = 0;
pub const IPL_STATE_SHARED: c_int = 1;
pub const IPL_STATE_EXCLUSIVE: c_int = 2;

extern "C" {
    // ---- Opening and closing
    pub fn ipl_open(path: *const c_char, flags: u32, out: *mut *mut ipl_lock) -> c_int;
    pub fn ipl_open_ex(
        path: *const c_char,
        flags: u32,
        out: *mut *mut ipl_lock,
        os_error: *mut c_int,
    ) -> c_int;
    pub fn ipl_open_mode(
        path: *const c_char,
        flags: u32,
        create_mode: u32,
        out: *mut *mut ipl_lock,
        os_error: *mut c_int,
    ) -> c_int;
    pub fn ipl_open_fd(
        fd: c_int,
        flags: u32,
        out: *mut *mut ipl_lock,
        os_error: *mut c_int,
    ) -> c_int;
    pub fn ipl_close(lock: *mut ipl_lock);

    // ---- Exclusive lock
    pub fn ipl_acquire(lock: *mut ipl_lock, timeout_ms: i64) -> c_int;
    pub fn ipl_release(lock: *mut ipl_lock) -> c_int;

    // ---- Reader-writer lock
    pub fn ipl_acquire_read(lock: *mut ipl_lock, timeout_ms: i64) -> c_int;
    pub fn ipl_release_read(lock: *mut ipl_lock) -> c_int;
    pub fn ipl_acquire_write(lock: *mut ipl_lock, timeout_ms: i64) -> c_int;
    pub fn ipl_release_write(lock: *mut ipl_lock) -> c_int;

    // ---- Beyond acquire and release (0.2.0)
    pub fn ipl_query(lock: *mut ipl_lock, state: *mut c_int, holder_pid: *mut i64) -> c_int;
    pub fn ipl_cancel(lock: *mut ipl_lock) -> c_int;
    pub fn ipl_downgrade(lock: *mut ipl_lock) -> c_int;
    pub fn ipl_upgrade(lock: *mut ipl_lock, timeout_ms: i64) -> c_int;
    pub fn ipl_remove(lock: *mut ipl_lock) -> c_int;
    pub fn ipl_check(lock: *mut ipl_lock) -> c_int;

    // ---- How timed waits sleep
    pub fn ipl_set_wait_signal(signo: c_int) -> c_int;
    pub fn ipl_wait_signal() -> c_int;

    // ---- Errors and versions
    pub fn ipl_os_error(lock: *const ipl_lock) -> c_int;
    pub fn ipl_strerror(status: c_int) -> *const c_char;
    pub fn ipl_version_number() -> u32;
    pub fn ipl_version_string() -> *const c_char;
}

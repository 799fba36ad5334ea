// SPDX-License-Identifier: MIT
//! ipl-sys against the ipl.h it was built for (the one pkg-config points
//! to) and the library it links.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::PathBuf;

const BINDINGS: &str = include_str!("../src/lib.rs");

fn header() -> String {
    let dir = PathBuf::from(env!("IPL_SYS_INCLUDE_DIR"));
    let path = dir.join("ipl").join("ipl.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {}", path.display(), e))
}

/// The name before the "(" of each declaration line `IPL_API <type> name(`:
/// every exported function of the header.
fn header_functions(header: &str) -> Vec<String> {
    let mut names: Vec<String> = header
        .lines()
        .filter_map(|line| line.strip_prefix("IPL_API "))
        .map(|declaration| {
            let before_paren = &declaration[..declaration.find('(').expect("declaration")];
            before_paren
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `#define IPL_NAME (-3)` / `#define IPL_NAME 0x1u` integer macros.
fn header_integer_macros(header: &str) -> BTreeMap<String, i64> {
    let mut macros = BTreeMap::new();
    for line in header.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let (name, value) = match (words.next(), words.next()) {
            (Some(name), Some(value)) => (name, value),
            _ => continue,
        };
        let value = value.trim_start_matches('(').trim_end_matches(')');
        let value = value.trim_end_matches('u');
        let parsed = if let Some(hex) = value.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok()
        } else {
            value.parse::<i64>().ok()
        };
        if let Some(parsed) = parsed {
            macros.insert(name.to_string(), parsed);
        }
    }
    macros
}

// Catches: a function added to ipl.h (or the library) that ipl-sys does not
// declare, a declaration of a function the header does not have.
#[test]
fn declares_every_function_of_the_header() {
    let header = header();
    let wanted = header_functions(&header);
    assert!(wanted.len() >= 21, "parsed too few functions: {:?}", wanted);
    let declared: Vec<String> = {
        let mut names: Vec<String> = BINDINGS
            .match_indices("pub fn ")
            .map(|(i, _)| {
                let rest = &BINDINGS[i + "pub fn ".len()..];
                rest[..rest.find('(').unwrap()].to_string()
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(declared, wanted);
}

// Catches: a status, flag or version constant that differs from (or is
// missing beside) the header's macro of the same name.
#[test]
fn constants_match_the_header() {
    let header = header();
    let macros = header_integer_macros(&header);
    for expected in ["IPL_E_SIGNAL_IN_USE", "IPL_E_CANCELED", "IPL_STATE_EXCLUSIVE"] {
        assert!(macros.contains_key(expected), "{} not parsed: {:?}", expected, macros);
    }
    for (name, value) in &macros {
        if name == "IPL_IPL_H" || name.ends_with("_NUMBER") {
            continue;
        }
        let needle = format!("pub const {}: ", name);
        let at = BINDINGS
            .find(&needle)
            .unwrap_or_else(|| panic!("ipl-sys does not define {}", name));
        let rest = &BINDINGS[at + needle.len()..];
        let declared = rest[rest.find('=').unwrap() + 1..rest.find(';').unwrap()].trim();
        let parsed = match declared.strip_prefix("0x") {
            Some(hex) => i64::from_str_radix(hex, 16).ok(),
            None => declared.parse::<i64>().ok(),
        };
        assert_eq!(parsed, Some(*value), "{} = {}", name, declared);
    }
    let version = format!("#define IPL_VERSION_STRING \"{}\"", ipl_sys::IPL_VERSION_STRING);
    assert!(header.contains(&version), "{}", version);
}

// Catches: a link against a library whose ABI or version is not the one the
// declarations were written for, and a strerror not reached through FFI.
#[test]
fn the_linked_library_answers() {
    unsafe {
        assert!(ipl_sys::ipl_version_number() >= ipl_sys::IPL_VERSION_NUMBER);
        let text = CStr::from_ptr(ipl_sys::ipl_strerror(ipl_sys::IPL_E_NOT_HELD));
        assert!(!text.to_bytes().is_empty());
        let mut raw = std::ptr::null_mut();
        let mut os_error = 0;
        let status = ipl_sys::ipl_open_mode(
            b"\0".as_ptr().cast(),
            0,
            0o644,
            &mut raw,
            &mut os_error,
        );
        assert_eq!(status, ipl_sys::IPL_E_INVALID);
        assert!(raw.is_null());
        ipl_sys::ipl_close(std::ptr::null_mut());
    }
}

// Catches: a 0.2.0 declaration whose parameters do not match the library's
// (a wrong order or width would misbehave here), e.g. ipl_upgrade's timeout
// or ipl_query's out-pointers; and NULL handles not reaching the library's
// checks.
#[test]
fn the_0_2_functions_work_through_these_declarations() {
    use ipl_sys::*;
    let dir = std::env::temp_dir().join(format!("ipl-sys-test-{}", std::process::id()));
    let path = dir.join("lock");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    unsafe {
        let mut state = -7;
        let mut pid: i64 = -7;
        assert_eq!(ipl_query(std::ptr::null_mut(), &mut state, &mut pid), IPL_E_INVALID);
        assert_eq!((state, pid), (-7, -7));
        for status in [
            ipl_cancel(std::ptr::null_mut()),
            ipl_downgrade(std::ptr::null_mut()),
            ipl_upgrade(std::ptr::null_mut(), 0),
            ipl_remove(std::ptr::null_mut()),
            ipl_check(std::ptr::null_mut()),
        ] {
            assert_eq!(status, IPL_E_INVALID);
        }

        let mut out = 1 as *mut ipl_lock;
        let mut os_error = -7;
        assert_eq!(ipl_open_fd(-1, 0, &mut out, &mut os_error), IPL_E_INVALID);
        assert!(out.is_null(), "*out not set to NULL on failure");

        let mut first = std::ptr::null_mut();
        let mut second = std::ptr::null_mut();
        assert_eq!(ipl_open(c_path.as_ptr(), 0, &mut first), IPL_OK);
        assert_eq!(ipl_open(c_path.as_ptr(), 0, &mut second), IPL_OK);
        assert_eq!(ipl_check(first), IPL_E_NOT_HELD);
        assert_eq!(ipl_acquire(first, 0), IPL_OK);
        assert_eq!(ipl_check(first), IPL_OK);
        assert_eq!(ipl_query(second, &mut state, &mut pid), IPL_OK);
        assert_eq!((state, pid), (IPL_STATE_EXCLUSIVE, i64::from(std::process::id())));
        assert_eq!(ipl_downgrade(first), IPL_OK);
        assert_eq!(ipl_acquire_read(second, 0), IPL_OK);
        assert_eq!(ipl_query(first, &mut state, std::ptr::null_mut()), IPL_OK);
        assert_eq!(state, IPL_STATE_SHARED);
        assert_eq!(ipl_upgrade(first, 1), IPL_E_TIMEOUT);
        assert_eq!(ipl_cancel(first), IPL_OK); // no wait in progress: nothing
        assert_eq!(ipl_release_read(second), IPL_OK);
        assert_eq!(ipl_upgrade(first, IPL_WAIT_FOREVER), IPL_OK);
        assert_eq!(ipl_remove(first), IPL_OK);
        assert!(!path.exists());
        assert_eq!(ipl_release(first), IPL_E_NOT_HELD);
        ipl_close(first);
        ipl_close(second);
    }
    std::fs::remove_dir_all(&dir).ok();
}

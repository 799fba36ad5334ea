// SPDX-License-Identifier: MIT
//! Finds the installed libipl with the `pkg-config` program and tells cargo
//! how to link it. No crates: the pkg-config output is parsed here.
//!
//! Environment:
//!   PKG_CONFIG                the program to run (default `pkg-config`)
//!   PKG_CONFIG_PATH, PKG_CONFIG_LIBDIR, PKG_CONFIG_SYSROOT_DIR
//!                             where it looks (a libipl under another prefix:
//!                             PKG_CONFIG_PATH=<prefix>/lib/<multiarch>/pkgconfig)
//!   IPL_STATIC=1              link libipl.a (and the C++ runtime) instead
//!   IPL_LIB_DIR, IPL_INCLUDE_DIR
//!                             skip pkg-config: link -lipl from IPL_LIB_DIR
//!
//! Metadata for crates that depend on this one (`links = "ipl"`):
//! DEP_IPL_INCLUDE (the folder holding ipl/ipl.h) and DEP_IPL_VERSION.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The oldest libipl whose ipl.h this crate declares in full (ipl_open_mode
/// came in 0.2.0).
const MIN_VERSION: &str = "0.2.0";

fn main() {
    for var in [
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR",
        "IPL_STATIC",
        "IPL_LIB_DIR",
        "IPL_INCLUDE_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={}", var);
    }
    println!("cargo:rerun-if-changed=build.rs");
    let link_static = env::var_os("IPL_STATIC").map_or(false, |v| v != "0" && !v.is_empty());

    if let Some(lib_dir) = env::var_os("IPL_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", PathBuf::from(lib_dir).display());
        if link_static {
            println!("cargo:rustc-link-lib=static=ipl");
            println!("cargo:rustc-link-lib=dylib=stdc++");
        } else {
            println!("cargo:rustc-link-lib=dylib=ipl");
        }
        if let Some(include) = env::var_os("IPL_INCLUDE_DIR") {
            announce_include(&PathBuf::from(include));
        }
        return;
    }

    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let version = match run(&pkg_config, &["--modversion", "ipl"]) {
        Ok(version) => version.trim().to_string(),
        Err(why) => fail(&format!("pkg-config cannot find libipl ({})", why)),
    };
    if run(&pkg_config, &["--atleast-version", MIN_VERSION, "ipl"]).is_err() {
        fail(&format!(
            "pkg-config found libipl {}, but ipl-sys {} needs libipl {} or later",
            version,
            env::var("CARGO_PKG_VERSION").unwrap_or_default(),
            MIN_VERSION
        ));
    }
    println!("cargo:version={}", version);

    let mut libs_args = vec!["--libs", "ipl"];
    if link_static {
        libs_args.insert(0, "--static");
    }
    let libs = run(&pkg_config, &libs_args).unwrap_or_else(|why| fail(&why));
    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", dir);
        } else if let Some(name) = flag.strip_prefix("-l") {
            if name == "ipl" {
                let kind = if link_static { "static" } else { "dylib" };
                println!("cargo:rustc-link-lib={}=ipl", kind);
            } else {
                println!("cargo:rustc-link-lib={}", name);
            }
        }
        // -pthread and other linker flags: the Rust standard library
        // already links the threads library.
    }

    let cflags = run(&pkg_config, &["--cflags-only-I", "ipl"]).unwrap_or_default();
    let include = cflags
        .split_whitespace()
        .find_map(|flag| flag.strip_prefix("-I").map(PathBuf::from))
        .or_else(|| {
            // pkg-config leaves out system folders such as /usr/include.
            run(&pkg_config, &["--variable=includedir", "ipl"])
                .ok()
                .map(|dir| PathBuf::from(dir.trim()))
        });
    if let Some(include) = include {
        announce_include(&include);
    }
}

fn announce_include(include: &std::path::Path) {
    println!("cargo:include={}", include.display());
    // For ipl-sys's own test that compares these declarations with ipl.h.
    println!("cargo:rustc-env=IPL_SYS_INCLUDE_DIR={}", include.display());
}

/// Runs the pkg-config program; its stdout, or why it failed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{}`: {}", program, e))?;
    if !output.status.success() {
        return Err(format!(
            "`{} {}` failed: {}",
            program,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("`{}` printed non-UTF-8", program))
}

fn fail(why: &str) -> ! {
    panic!(
        "\n\nipl-sys: {}.\n\
         Install libipl first (from its sources: `meson setup build --prefix=/usr && \
         ninja -C build && meson install -C build`). For a libipl under another prefix, \
         set PKG_CONFIG_PATH=<prefix>/lib/<multiarch>/pkgconfig (and, to run the \
         program, LD_LIBRARY_PATH=<prefix>/lib/<multiarch> or an rpath), or set \
         IPL_LIB_DIR to the folder holding libipl.so.\n\n",
        why
    )
}

// SPDX-License-Identifier: MIT
//! The safe `ipl` crate against the installed libipl: conflicts between
//! handles, threads and processes, timeouts, guards, errors.
//!
//! Helper processes are this test binary re-executed to run one `helper_*`
//! test with IPL_RUST_HELPER set; every wait on them is bounded.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ipl::{sys, Lock, OpenOptions};

const BOUND: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ipl-rust-{}-{}", std::process::id(), name));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn lock_path(&self) -> PathBuf {
        self.0.join("test.lock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether another handle gets the exclusive lock right now.
fn other_can_lock(path: &Path) -> bool {
    Lock::open(path).unwrap().try_lock().unwrap().is_some()
}

fn other_can_read(path: &Path) -> bool {
    Lock::open(path).unwrap().try_lock_shared().unwrap().is_some()
}

// Catches: a lock that takes nothing, a guard that does not release on drop,
// two handles of one process sharing one owner.
#[test]
fn exclusive_lock_excludes_another_handle_until_the_guard_drops() {
    let dir = TempDir::new("exclusive");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    let guard = lock.lock().unwrap();
    assert!(!other_can_lock(&path));
    assert!(!other_can_read(&path));
    drop(guard);
    assert!(other_can_lock(&path));
    let guard = lock.try_lock().unwrap().expect("free");
    assert_eq!(guard.lock().path(), path.as_path());
    guard.unlock().unwrap();
    assert!(other_can_lock(&path));
}

// Catches: the shared lock taken as exclusive, a writer beside readers, a
// reader beside a writer.
#[test]
fn readers_share_and_writers_exclude() {
    let dir = TempDir::new("shared");
    let path = dir.lock_path();
    let (r1, r2, w) = (
        Lock::open(&path).unwrap(),
        Lock::open(&path).unwrap(),
        Lock::open(&path).unwrap(),
    );
    let g1 = r1.lock_shared().unwrap();
    let g2 = r2.try_lock_shared().unwrap().expect("readers coexist");
    assert!(w.try_lock().unwrap().is_none());
    assert!(w.lock_timeout(Duration::from_millis(30)).unwrap().is_none());
    drop(g1);
    g2.unlock().unwrap();
    let writer = w.try_lock().unwrap().expect("free after the readers");
    assert!(r1
        .lock_shared_timeout(Duration::from_millis(30))
        .unwrap()
        .is_none());
    drop(writer);
}

// Catches: a timed wait that returns early (milliseconds rounded down, a
// wait cut short), or never ends.
#[test]
fn a_timeout_is_never_cut_short() {
    let dir = TempDir::new("timeout");
    let path = dir.lock_path();
    let holder = Lock::open(&path).unwrap();
    let _held = holder.lock().unwrap();
    let waiter = Lock::open(&path).unwrap();
    for wait in [
        Duration::from_micros(1500),
        Duration::from_millis(37),
        Duration::from_millis(150),
    ] {
        let start = Instant::now();
        assert!(waiter.lock_timeout(wait).unwrap().is_none());
        let elapsed = start.elapsed();
        assert!(elapsed >= wait && elapsed < wait + BOUND, "{:?} of {:?}", elapsed, wait);
    }
}

// Catches: re-locking on one handle silently "succeeding" (or dropping what
// it holds); errors without status, errno or path; bad input accepted.
#[test]
fn errors_carry_status_errno_and_path() {
    let dir = TempDir::new("errors");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    let held = lock.lock_shared().unwrap();
    let again = lock.try_lock().unwrap_err();
    assert_eq!(again.status(), sys::IPL_E_WOULD_DEADLOCK);
    assert_eq!(again.raw_os_error(), None);
    assert_eq!(again.path(), Some(path.as_path()));
    assert!(!other_can_lock(&path), "a failed re-lock dropped the lock");
    drop(held);

    let folder = Lock::open(&dir.0).unwrap_err();
    assert_eq!(folder.status(), sys::IPL_E_NOT_REGULAR_FILE);
    assert_eq!(folder.path(), Some(dir.0.as_path()));

    let missing = dir.0.join("missing.lock");
    let error = OpenOptions::new().create(false).open(&missing).unwrap_err();
    assert_eq!(error.status(), sys::IPL_E_OS);
    assert_eq!(error.raw_os_error(), Some(2)); // ENOENT
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(!missing.exists());
    let as_io: io::Error = error.clone().into();
    assert_eq!(as_io.kind(), io::ErrorKind::NotFound);
    let text = error.to_string();
    assert!(
        text.contains(error.message()) && text.contains("missing.lock") && text.contains("-9"),
        "{}",
        text
    );

    let no_dirs = OpenOptions::new()
        .create_dirs(false)
        .open(dir.0.join("a/b.lock"))
        .unwrap_err();
    assert_eq!(no_dirs.status(), sys::IPL_E_BAD_PARENT);

    for bad in ["", "a\0b"] {
        let error = Lock::open(bad).unwrap_err();
        assert_eq!(error.status(), sys::IPL_E_INVALID);
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
    assert!(!Path::new("a").exists(), "the path before the NUL was created");
    let boxed: Box<dyn std::error::Error> = Box::new(no_dirs);
    assert!(!boxed.to_string().is_empty());
}

// Catches: a lock tied to the thread that took it (a guard released on
// another thread refused or ignored), and a waiter not woken by that release.
#[test]
fn a_guard_may_be_released_by_another_thread() {
    let dir = TempDir::new("threads");
    let path = dir.lock_path();
    let holder = Lock::open(&path).unwrap();
    let waiter = Lock::open(&path).unwrap();
    thread::scope(|scope| {
        let guard = holder.lock().unwrap();
        let releaser = scope.spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let released_at = Instant::now();
            drop(guard);
            released_at
        });
        let got = waiter.lock_timeout(BOUND).unwrap().expect("released");
        let woke_at = Instant::now();
        let handoff = woke_at.saturating_duration_since(releaser.join().unwrap());
        assert!(handoff < Duration::from_secs(2), "hand-off {:?}", handoff);
        drop(got);
    });
    assert!(other_can_lock(&path));
}

// Catches: handles of one process not excluding each other under real
// thread contention.
#[test]
fn threads_with_their_own_handles_exclude_each_other() {
    let dir = TempDir::new("contention");
    let path = dir.lock_path();
    let inside = AtomicBool::new(false);
    let entries = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let lock = Lock::open(&path).unwrap();
                for _ in 0..50 {
                    let _guard = lock.lock_timeout(BOUND).unwrap().expect("within the bound");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two threads inside");
                    entries.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    inside.store(false, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(entries.load(Ordering::SeqCst), 200);
}

// Catches: the creation mode not reaching ipl_open_mode, or the umask
// still applied to it.
#[cfg(target_os = "linux")]
#[test]
fn the_creation_mode_is_exact_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    extern "C" {
        fn umask(mask: u32) -> u32;
    }
    let dir = TempDir::new("mode");
    let path = dir.0.join("sub/group.lock");
    // The only test that touches the umask; ipl_open_mode never reads it.
    let old = unsafe { umask(0o077) };
    let opened = OpenOptions::new().mode(0o664).open(&path);
    unsafe { umask(old) };
    drop(opened.unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o664);
    let invalid = OpenOptions::new().mode(0o1000).open(&path).unwrap_err();
    assert_eq!(invalid.status(), sys::IPL_E_INVALID);
}

#[test]
fn library_and_wait_signal() {
    // Catches: a link against another libipl than the one declared.
    let version = ipl::library_version();
    assert_eq!(version.split('.').count(), 3, "{}", version);
    assert!(ipl::wait_signal() >= 0);
    let error = ipl::set_wait_signal(Some(-5)).unwrap_err();
    assert_eq!(error.status(), sys::IPL_E_INVALID);
    ipl::set_wait_signal(None).unwrap();
}

// ---- Another process ---------------------------------------------------------------

/// Runs this test binary as a helper: only the named helper test, with
/// IPL_RUST_HELPER naming the lock file.
fn spawn_helper(name: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("IPL_RUST_HELPER", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

/// Waits (at most BOUND) until the child prints `word` on a line of its own.
fn expect_line(child: &mut Child, word: &'static str) {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) if line.trim() == word => {
                    let _ = sender.send(());
                    return;
                }
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    });
    receiver
        .recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("the helper never said {:?}", word));
}

/// The helper: holds the exclusive lock until stdin closes or it is killed
/// (60 s at most, in case neither happens). A no-op in a normal test run.
#[test]
fn helper_hold() {
    let path = match std::env::var_os("IPL_RUST_HELPER") {
        Some(path) => PathBuf::from(path),
        None => return,
    };
    let lock = Lock::open(path).expect("helper open");
    let _guard = lock.lock_timeout(BOUND).unwrap().expect("helper acquire");
    // On a line of its own: the test harness has printed "test helper_hold ... ".
    println!("\nlocked");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let _ = io::stdin().read_to_end(&mut Vec::new());
}

// Catches: a lock another process does not see, and a lock the kernel does
// not free when its holder is killed (e.g. a lock file used as a flag).
#[test]
fn a_killed_holder_process_frees_the_lock() {
    let dir = TempDir::new("killed");
    let path = dir.lock_path();
    let mut child = spawn_helper("helper_hold", &path);
    expect_line(&mut child, "locked");
    let lock = Lock::open(&path).unwrap();
    assert!(lock.try_lock().unwrap().is_none());
    let start = Instant::now();
    assert!(lock.lock_timeout(Duration::from_millis(100)).unwrap().is_none());
    assert!(start.elapsed() >= Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    let guard = lock.lock_timeout(BOUND).unwrap().expect("freed by the holder's death");
    drop(guard);
}

//! The Rust FFI test: libipl through the declarations in ipl.rs.
//!
//!     ffi_test                 runs every test; exits non-zero on the first failure
//!     ffi_test --hold PATH     helper: holds the lock on PATH, says "locked",
//!                              then waits until stdin closes or it is killed
//!
//! A failed assertion panics, and a panic in main exits with status 101.

mod ipl;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ipl::Lock;

const TRY: Option<Duration> = Some(Duration::from_millis(0));
const BOUND: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

fn status_of(result: Result<(), ipl::Error>) -> i32 {
    match result {
        Ok(()) => ipl::OK,
        Err(e) => e.status,
    }
}

fn lock_path(dir: &Path) -> String {
    dir.join("test.lock")
        .to_str()
        .expect("UTF-8 temp path")
        .to_owned()
}

/// Whether another handle gets the exclusive lock right now.
fn other_can_lock(path: &str) -> bool {
    let probe = Lock::open(path).expect("open probe");
    probe.acquire(TRY).is_ok()
}

// Catches: acquire that takes no real lock, or two handles of one process
// sharing one lock owner (classic fcntl without the inode table).
fn exclusive_conflict_between_two_handles(dir: &Path) {
    let path = lock_path(dir);
    let a = Lock::open(&path).unwrap();
    let b = Lock::open(&path).unwrap();
    a.acquire(TRY).unwrap();
    assert_eq!(status_of(b.acquire(TRY)), ipl::E_TIMEOUT);
    a.release().unwrap();
    b.acquire(TRY).unwrap();
    assert_eq!(status_of(a.acquire(TRY)), ipl::E_TIMEOUT);
    b.release().unwrap();
}

// Catches: a timed wait that returns early (milliseconds rounded down in the
// wrapper, a wait cut short by the library), or one that never ends.
fn timeout_lower_bound(dir: &Path) {
    let path = lock_path(dir);
    let holder = Lock::open(&path).unwrap();
    holder.acquire(None).unwrap();
    let waiter = Lock::open(&path).unwrap();
    for wait in [
        Duration::from_micros(1500),
        Duration::from_millis(37),
        Duration::from_millis(150),
    ] {
        let start = Instant::now();
        assert_eq!(status_of(waiter.acquire(Some(wait))), ipl::E_TIMEOUT);
        let elapsed = start.elapsed();
        assert!(elapsed >= wait, "waited {:?} of {:?}", elapsed, wait);
        assert!(elapsed < wait + BOUND, "waited {:?} of {:?}", elapsed, wait);
    }
}

// Catches: the shared lock taken as an exclusive one.
fn read_read_coexist(dir: &Path) {
    let path = lock_path(dir);
    let r1 = Lock::open(&path).unwrap();
    let r2 = Lock::open(&path).unwrap();
    r1.acquire_read(TRY).unwrap();
    r2.acquire_read(TRY).unwrap();
    r1.release_read().unwrap();
    r2.release_read().unwrap();
}

// Catches: a writer admitted beside a reader, or a reader beside a writer.
fn read_write_conflict(dir: &Path) {
    let path = lock_path(dir);
    let reader = Lock::open(&path).unwrap();
    let writer = Lock::open(&path).unwrap();
    reader.acquire_read(TRY).unwrap();
    assert_eq!(status_of(writer.acquire_write(TRY)), ipl::E_TIMEOUT);
    assert_eq!(status_of(writer.acquire_write(ms(30))), ipl::E_TIMEOUT);
    reader.release_read().unwrap();
    writer.acquire_write(TRY).unwrap();
    assert_eq!(status_of(reader.acquire_read(TRY)), ipl::E_TIMEOUT);
    writer.release_write().unwrap();
}

// Catches: bad input accepted (or crashing), wrong status values across the
// FFI, and error texts that do not come from ipl_strerror.
fn error_statuses(dir: &Path) {
    assert_eq!(
        Lock::open("").err(),
        Some(ipl::Error {
            status: ipl::E_INVALID
        })
    );
    assert_eq!(
        Lock::open("a\0b").err(),
        Some(ipl::Error {
            status: ipl::E_INVALID
        })
    );
    let folder = dir.to_str().unwrap();
    assert_eq!(
        Lock::open(folder).err(),
        Some(ipl::Error {
            status: ipl::E_NOT_REGULAR_FILE
        })
    );

    let lock = Lock::open(&lock_path(dir)).unwrap();
    assert_eq!(status_of(lock.release()), ipl::E_NOT_HELD);
    lock.acquire_read(None).unwrap();
    assert_eq!(status_of(lock.release_write()), ipl::E_NOT_HELD);
    assert_eq!(status_of(lock.acquire(None)), ipl::E_WOULD_DEADLOCK);
    lock.release_read().unwrap();
    assert_eq!(lock.os_error(), 0);

    let timeout = ipl::Error {
        status: ipl::E_TIMEOUT,
    };
    let not_held = ipl::Error {
        status: ipl::E_NOT_HELD,
    };
    assert!(!timeout.message().is_empty());
    assert_ne!(timeout.message(), not_held.message());
    assert_eq!(ipl::Error { status: 12345 }.message(), "unknown status");
    let text = not_held.to_string();
    assert!(
        text.contains(not_held.message()) && text.contains("-3"),
        "{}",
        text
    );
}

// Catches: Drop that does not call ipl_close (the lock would stay held).
fn drop_releases(dir: &Path) {
    let path = lock_path(dir);
    let lock = Lock::open(&path).unwrap();
    lock.acquire(None).unwrap();
    assert!(!other_can_lock(&path));
    drop(lock);
    assert!(other_can_lock(&path));
}

// Catches: a lock tied to the thread that took it (release from another
// thread refused or ignored), and a timed wait not woken by that release.
fn release_from_another_thread(dir: &Path) {
    let path = lock_path(dir);
    let holder = Arc::new(Lock::open(&path).unwrap());
    holder.acquire(None).unwrap();
    let releaser = {
        let holder = Arc::clone(&holder);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let released_at = Instant::now();
            holder.release().unwrap();
            released_at
        })
    };
    let waiter = Lock::open(&path).unwrap();
    waiter.acquire(Some(BOUND)).unwrap();
    let woke_at = Instant::now();
    let released_at = releaser.join().unwrap();
    let handoff = woke_at.saturating_duration_since(released_at);
    println!(
        "  hand-off after a release in another thread: {:?}",
        handoff
    );
    assert!(handoff < Duration::from_secs(2));
    waiter.release().unwrap();

    // And the other way round: taken in a thread, released here.
    let taker = {
        let holder = Arc::clone(&holder);
        thread::spawn(move || holder.acquire(None))
    };
    taker.join().unwrap().unwrap();
    assert!(!other_can_lock(&path));
    holder.release().unwrap();
    assert!(other_can_lock(&path));
}

// Catches: handles of one process not excluding each other under real
// thread contention (lost updates of a shared "inside" flag).
fn threads_with_own_handles_exclude_each_other(dir: &Path) {
    let path = Arc::new(lock_path(dir));
    let inside = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (path, inside, entries) = (path.clone(), inside.clone(), entries.clone());
            thread::spawn(move || {
                let lock = Lock::open(&path).unwrap();
                for _ in 0..50 {
                    lock.acquire(Some(BOUND)).unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two threads inside");
                    entries.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    inside.store(false, Ordering::SeqCst);
                    lock.release().unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker failed");
    }
    assert_eq!(entries.load(Ordering::SeqCst), 200);
}

/// Reads one line of the child's stdout, failing after BOUND.
fn read_line_bounded(stdout: std::process::ChildStdout) -> String {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    receiver.recv_timeout(BOUND).expect("child said nothing")
}

// Catches: a lock not seen by another process, and a lock not released by
// the kernel when its holder dies (e.g. a lock file used as a flag).
fn lock_held_by_a_child_process(dir: &Path) {
    let path = lock_path(dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--hold")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let line = read_line_bounded(child.stdout.take().unwrap());
    assert_eq!(line.trim(), "locked");

    let lock = Lock::open(&path).unwrap();
    assert_eq!(status_of(lock.acquire(TRY)), ipl::E_TIMEOUT);
    let start = Instant::now();
    assert_eq!(status_of(lock.acquire(ms(100))), ipl::E_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(100));

    child.kill().unwrap();
    child.wait().unwrap();
    lock.acquire(Some(BOUND)).unwrap();
    lock.release().unwrap();
}

// Catches: a Rust declaration that does not match the library at all.
fn version_is_readable(_dir: &Path) {
    let version = ipl::version();
    assert_eq!(version.split('.').count(), 3, "{}", version);
}

/// The helper process: holds the lock until stdin closes (or it is killed;
/// a 60 s bound in case neither happens).
fn hold(path: &str) {
    let lock = Lock::open(path).expect("helper open");
    lock.acquire(Some(BOUND)).expect("helper acquire");
    println!("locked");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(lock);
}

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("ipl-ffi-rust-{}-{}", std::process::id(), name));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--hold" {
        hold(&args[2]);
        return;
    }
    let tests: [(&str, fn(&Path)); 10] = [
        (
            "exclusive_conflict_between_two_handles",
            exclusive_conflict_between_two_handles,
        ),
        ("timeout_lower_bound", timeout_lower_bound),
        ("read_read_coexist", read_read_coexist),
        ("read_write_conflict", read_write_conflict),
        ("error_statuses", error_statuses),
        ("drop_releases", drop_releases),
        ("release_from_another_thread", release_from_another_thread),
        (
            "threads_with_own_handles_exclude_each_other",
            threads_with_own_handles_exclude_each_other,
        ),
        ("lock_held_by_a_child_process", lock_held_by_a_child_process),
        ("version_is_readable", version_is_readable),
    ];
    println!("libipl {}", ipl::version());
    for (name, test) in tests.iter() {
        println!("test {} ...", name);
        let dir = TempDir::new(name);
        test(&dir.path);
        println!("test {} ok", name);
    }
    println!("all {} tests passed", tests.len());
}

// SPDX-License-Identifier: MIT
//! libipl 0.2.0 through the safe crate: cancel (Lock::cancel and a
//! Canceler), query, downgrade/upgrade, remove, check, from_fd and
//! inheritable locks.
//!
//! Helper processes are this test binary re-executed to run one `helper_*`
//! test with IPL_RUST_HELPER set; every wait is bounded, and a wait that a
//! cancel fails to end is ended by its holder letting go (the rescue).

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ipl::{sys, Lock, Query, State};

const BOUND: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "ipl-rust-beyond-{}-{}",
            std::process::id(),
            name
        ));
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

fn other_can_lock(path: &Path) -> bool {
    Lock::open(path).unwrap().try_lock().unwrap().is_some()
}

fn other_can_read(path: &Path) -> bool {
    Lock::open(path).unwrap().try_lock_shared().unwrap().is_some()
}

/// Calls `cancel` every millisecond until `finished()`; the time from the
/// first call to the end, or None when the wait outlived BOUND (then
/// `rescue` ends it, so the test fails instead of hanging).
fn cancel_until_finished(
    finished: impl Fn() -> bool,
    cancel: impl Fn(),
    rescue: impl FnOnce(),
) -> Option<Duration> {
    let start = Instant::now();
    while !finished() {
        if start.elapsed() > BOUND {
            rescue();
            return None;
        }
        cancel();
        thread::sleep(Duration::from_millis(1));
    }
    Some(start.elapsed())
}

// ---- Another process ---------------------------------------------------------------

fn spawn_helper(name: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("IPL_RUST_HELPER", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

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

fn helper_holding(shared: bool) {
    let path = match std::env::var_os("IPL_RUST_HELPER") {
        Some(path) => PathBuf::from(path),
        None => return, // a normal test run
    };
    let lock = Lock::open(path).expect("helper open");
    let _exclusive;
    let _shared;
    if shared {
        _shared = lock.lock_shared_timeout(BOUND).unwrap().expect("helper acquire");
    } else {
        _exclusive = lock.lock_timeout(BOUND).unwrap().expect("helper acquire");
    }
    println!("\nlocked");
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let _ = io::stdin().read_to_end(&mut Vec::new());
}

/// The helpers: hold the lock (exclusive / shared) until stdin closes or
/// they are killed.
#[test]
fn helper_beyond_hold_exclusive() {
    helper_holding(false);
}

#[test]
fn helper_beyond_hold_shared() {
    helper_holding(true);
}

// ---- cancel ---------------------------------------------------------------------------

// Catches: a Canceler that does not reach ipl_cancel (the wait would end
// only at the rescue), a canceled wait that is not IPL_E_CANCELED or carries
// a stale errno, a canceled lock that is held; the Lock having moved into
// the waiting thread, so only the Canceler (Send + Sync + Clone) can reach
// it, from yet another thread.
#[test]
fn a_canceler_ends_a_wait_in_another_thread() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<ipl::Canceler>();

    let dir = TempDir::new("canceler");
    let path = dir.lock_path();
    let holder = Lock::open(&path).unwrap();
    let held = holder.lock().unwrap();
    for timed in [false, true] {
        let lock = Lock::open(&path).unwrap();
        let canceler = lock.canceler();
        let waiter = thread::spawn(move || {
            let result = if timed {
                lock.lock_timeout(BOUND * 2).map(|guard| guard.is_some())
            } else {
                lock.lock().map(|_guard| true)
            };
            // Dropped here, in the waiting thread: the handle closes.
            (result, lock.path().to_path_buf())
        });
        thread::sleep(Duration::from_millis(100));
        // The canceling thread holds a clone; the waiter is watched here.
        let other_thread = canceler.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_seen = stop.clone();
        let canceling = thread::spawn(move || {
            let start = Instant::now();
            while !stop_seen.load(std::sync::atomic::Ordering::SeqCst) && start.elapsed() < BOUND {
                other_thread.cancel();
                thread::sleep(Duration::from_millis(1));
            }
        });
        let start = Instant::now();
        while !waiter.is_finished() && start.elapsed() < BOUND {
            thread::sleep(Duration::from_micros(100));
        }
        let latency = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        canceling.join().unwrap();
        if !waiter.is_finished() {
            drop(held); // the rescue: the wait ends with the lock
            let _ = waiter.join();
            panic!("the Canceler did not end the wait");
        }
        let (result, _) = waiter.join().unwrap();
        assert!(latency < Duration::from_secs(1), "took {:?}", latency);
        println!("cancel -> lock (timed: {}) returned after {:?}", timed, latency);
        let error = result.expect_err("a canceled wait returned Ok");
        assert_eq!(error.status(), sys::IPL_E_CANCELED, "{}", error);
        assert_eq!(error.raw_os_error(), None);
        // The Lock is gone: the Canceler does nothing, harmlessly.
        assert!(!canceler.cancel());
    }
    drop(held);
    assert!(other_can_lock(&path), "a canceled lock stayed held");
}

// Catches: Lock::cancel (from a scoped thread) not ending a waiting shared
// lock or upgrade, and a canceled upgrade that drops the shared lock it had
// (the guard must come back holding it).
#[test]
fn lock_cancel_ends_a_waiting_lock_shared_and_a_waiting_upgrade() {
    let dir = TempDir::new("cancel");
    let path = dir.lock_path();
    let holder = Lock::open(&path).unwrap();
    let lock = Lock::open(&path).unwrap();
    thread::scope(|scope| {
        let held = holder.lock().unwrap();
        let waiter = scope.spawn(|| lock.lock_shared().map(|_guard| ()));
        thread::sleep(Duration::from_millis(100));
        let took = cancel_until_finished(|| waiter.is_finished(), || lock.cancel().unwrap(), || drop(held));
        let error = waiter.join().unwrap().expect_err("a canceled wait returned Ok");
        assert!(took.is_some(), "cancel() did not end the wait");
        assert_eq!(error.status(), sys::IPL_E_CANCELED);
    });
    assert!(other_can_lock(&path));

    let reader = holder.lock_shared().unwrap();
    thread::scope(|scope| {
        let shared = lock.lock_shared().unwrap();
        let waiter = scope.spawn(move || shared.upgrade());
        thread::sleep(Duration::from_millis(100));
        let took = cancel_until_finished(|| waiter.is_finished(), || lock.cancel().unwrap(), || {});
        assert!(took.is_some(), "cancel() did not end the upgrade");
        let error = waiter.join().unwrap().expect_err("upgraded beside a reader");
        assert_eq!(error.status(), sys::IPL_E_CANCELED);
        let shared = error.into_guard();
        drop(reader);
        assert!(!other_can_lock(&path), "the canceled upgrade dropped the shared lock");
        assert!(other_can_read(&path));
        drop(shared);
    });
    assert!(other_can_lock(&path));
}

// Catches: a cancel with no wait in progress that poisons the next wait.
#[test]
fn a_cancel_without_a_wait_does_nothing() {
    let dir = TempDir::new("cancel-nothing");
    let path = dir.lock_path();
    let holder = Lock::open(&path).unwrap();
    let _held = holder.lock().unwrap();
    let lock = Lock::open(&path).unwrap();
    lock.cancel().unwrap();
    assert!(lock.canceler().cancel());
    let start = Instant::now();
    assert!(lock.lock_timeout(Duration::from_millis(200)).unwrap().is_none());
    assert!(start.elapsed() >= Duration::from_millis(200));
}

// ---- query ----------------------------------------------------------------------------

// Catches: a state mapped wrongly, a holder's pid lost (or made up when
// query_state asks for none), this Lock's own lock counted.
#[test]
fn query_says_who_else_holds_the_lock_and_how() {
    let dir = TempDir::new("query");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    assert_eq!(
        lock.query().unwrap(),
        Query {
            state: State::Free,
            holder_pid: None
        }
    );
    let mut child = spawn_helper("helper_beyond_hold_exclusive", &path);
    expect_line(&mut child, "locked");
    let seen = lock.query().unwrap();
    assert_eq!(seen.state, State::Exclusive);
    assert_eq!(seen.holder_pid, Some(child.id()));
    assert_eq!(lock.query_state().unwrap(), State::Exclusive);
    child.kill().unwrap();
    child.wait().unwrap();

    let mut reader = spawn_helper("helper_beyond_hold_shared", &path);
    expect_line(&mut reader, "locked");
    let shared = lock.try_lock_shared().unwrap().expect("readers share");
    assert_eq!(
        lock.query().unwrap(),
        Query {
            state: State::Shared,
            holder_pid: Some(reader.id())
        }
    );
    reader.kill().unwrap();
    reader.wait().unwrap();
    assert_eq!(lock.query_state().unwrap(), State::Free, "its own shared lock counted");
    drop(shared);
    let _exclusive = lock.lock().unwrap();
    assert_eq!(lock.query_state().unwrap(), State::Free, "its own lock counted");
    assert_eq!(
        Lock::open(&path).unwrap().query().unwrap(),
        Query {
            state: State::Exclusive,
            holder_pid: Some(std::process::id())
        }
    );
}

// ---- downgrade and upgrade ---------------------------------------------------------------

// Catches: a downgrade that lets a writer in or keeps readers out, a guard
// of the wrong mode afterwards (its release would fail and keep the lock),
// an upgrade that does not wait for the other readers or that drops the
// shared lock when it fails.
#[test]
fn downgrade_and_upgrade() {
    let dir = TempDir::new("upgrade");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    let shared = lock.lock().unwrap().downgrade().unwrap();
    assert!(other_can_read(&path));
    assert!(!other_can_lock(&path));

    let other = Lock::open(&path).unwrap();
    let other_shared = other.lock_shared().unwrap();
    let shared = shared.try_upgrade().unwrap_err();
    assert_eq!(shared.status(), sys::IPL_E_TIMEOUT);
    let start = Instant::now();
    let shared = shared
        .into_guard()
        .upgrade_timeout(Duration::from_millis(100))
        .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(shared.status(), sys::IPL_E_TIMEOUT);
    let shared = shared.into_guard();
    assert!(!other_can_lock(&path), "a failed upgrade dropped the lock");

    thread::scope(|scope| {
        scope.spawn(move || {
            thread::sleep(Duration::from_millis(100));
            drop(other_shared);
        });
        let exclusive = shared
            .upgrade_timeout(BOUND)
            .expect("upgrade once the reader left");
        assert!(!other_can_read(&path));
        exclusive.unlock().unwrap(); // the exclusive release: the guard's mode changed
    });
    assert!(other_can_lock(&path));
}

// Catches: two upgraders that wait for each other for ever: the second
// must fail at once with IPL_E_WOULD_DEADLOCK and get its shared guard back,
// so that dropping it lets the first finish.
#[test]
fn a_second_upgrader_fails_at_once_and_keeps_its_shared_lock() {
    let dir = TempDir::new("upgraders");
    let path = dir.lock_path();
    let (first, second) = (Lock::open(&path).unwrap(), Lock::open(&path).unwrap());
    let second_shared = second.lock_shared().unwrap();
    thread::scope(|scope| {
        let first_shared = first.lock_shared().unwrap();
        let upgrader = scope.spawn(move || first_shared.upgrade_timeout(BOUND).map(|_| ()));
        // Ask only once the first upgrade is under way (a query through a
        // Lock that is acquiring says IPL_E_WOULD_DEADLOCK) and holds the
        // arbitration byte: a try before that would hold the byte itself for
        // an instant and could make the first upgrade the one that fails.
        let start = Instant::now();
        loop {
            match first.query() {
                Err(error) if error.status() == sys::IPL_E_WOULD_DEADLOCK => break,
                _ => {
                    assert!(start.elapsed() < BOUND, "the first upgrade never started");
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
        let error = match second_shared.try_upgrade() {
            Ok(_) => panic!("upgraded beside a reader"),
            Err(error) => error,
        };
        assert_eq!(error.status(), sys::IPL_E_WOULD_DEADLOCK);
        let guard = error.into_guard();
        let start = Instant::now();
        let error = guard.upgrade_timeout(BOUND).unwrap_err();
        assert_eq!(error.status(), sys::IPL_E_WOULD_DEADLOCK);
        assert!(start.elapsed() < Duration::from_secs(1), "the second upgrade waited");
        assert!(!upgrader.is_finished());
        drop(error); // its shared guard with it: the first upgrade can finish
        assert!(upgrader.join().unwrap().is_ok());
    });
    assert!(other_can_lock(&path));
}

// ---- remove ---------------------------------------------------------------------------

// Catches: remove that leaves the file or the lock, a remove without the
// exclusive lock, a Lock that cannot lock (and create the file) again
// afterwards, and a waiter left holding a lock on the removed file (which
// excludes nobody who opens the path afterwards).
#[test]
fn remove_deletes_the_file_and_releases() {
    let dir = TempDir::new("remove");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    lock.lock().unwrap().remove().unwrap();
    assert!(!path.exists());
    assert!(other_can_lock(&path));
    let guard = lock.lock_timeout(BOUND).unwrap().expect("free");
    assert!(path.exists(), "not created again");

    let waiter = Lock::open(&path).unwrap();
    thread::scope(|scope| {
        let waiting = scope.spawn(|| waiter.lock_timeout(BOUND).map(|guard| guard.is_some()));
        thread::sleep(Duration::from_millis(100));
        guard.remove().unwrap();
        assert!(waiting.join().unwrap().unwrap(), "the waiter timed out");
    });
    assert!(path.exists(), "the waiter did not create the file again");
    drop(waiter);
    assert!(other_can_lock(&path));
}

// ---- check ----------------------------------------------------------------------------

// Catches: a check that says "held" when the path names another file now
// (the lock file was removed under the guard), a loss reported with another
// status, a guard whose drop after the loss fails or panics, and a Lock
// that cannot lock again afterwards.
#[test]
fn check_sees_a_lock_lost_with_its_file() {
    let dir = TempDir::new("check");
    let path = dir.lock_path();
    let lock = Lock::open(&path).unwrap();
    for shared in [false, true] {
        let error;
        if shared {
            let guard = lock.lock_shared().unwrap();
            guard.check().unwrap();
            std::fs::remove_file(&path).unwrap();
            error = guard.check().unwrap_err();
        } else {
            let guard = lock.lock().unwrap();
            guard.check().unwrap();
            std::fs::remove_file(&path).unwrap();
            error = guard.check().unwrap_err();
        }
        assert_eq!(error.status(), sys::IPL_E_LOST, "{}", error);
        assert_eq!(error.path(), Some(path.as_path()));
        let again = lock.try_lock().unwrap().expect("a lost lock stayed held");
        assert!(path.exists(), "not created again");
        assert!(!other_can_lock(&path));
        drop(again);
    }
}

// ---- from_fd and inheritable locks (Linux OFD builds) ----------------------------------

/// The POSIX lock kind of the libipl under test (IPL_TEST_POSIX_LOCKS, set
/// by scripts/test-bindings; Linux builds default to OFD locks). On the
/// classic backend ipl_open_fd and IPL_OPEN_INHERITABLE are
/// IPL_E_UNSUPPORTED, and the tests expect exactly that there.
fn ofd_locks() -> bool {
    match std::env::var("IPL_TEST_POSIX_LOCKS") {
        Ok(kind) => kind == "ofd",
        Err(_) => cfg!(target_os = "linux"),
    }
}

// Catches: from_fd locking anything but the descriptor's open file
// description (another handle would not see it, or not as this process's),
// a remove that does not refuse a handle without a path, a Lock that does
// not close the descriptor it owns; on the classic backend, anything but
// IPL_E_UNSUPPORTED.
#[test]
fn from_fd_locks_the_open_file_description() {
    use std::os::unix::io::AsRawFd;
    let dir = TempDir::new("from-fd");
    let path = dir.lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .open(&path)
        .unwrap();
    let raw_fd = file.as_raw_fd();
    if !ofd_locks() {
        let error = Lock::from_fd(file).unwrap_err();
        assert_eq!(error.status(), sys::IPL_E_UNSUPPORTED, "{}", error);
        return;
    }
    let lock = Lock::from_fd(file).unwrap();
    assert_eq!(lock.path(), Path::new(""));
    let guard = lock.try_lock().unwrap().expect("free");
    assert!(!other_can_read(&path));
    assert_eq!(
        Lock::open(&path).unwrap().query().unwrap(),
        Query {
            state: State::Exclusive,
            holder_pid: Some(std::process::id())
        }
    );
    guard.check().unwrap();
    let error = guard.remove().unwrap_err();
    assert_eq!(error.status(), sys::IPL_E_UNSUPPORTED);
    assert_eq!(error.error().path(), None);
    drop(error); // the guard with it: released
    assert!(other_can_lock(&path));
    drop(lock);
    // The Lock owned the descriptor: closed now.
    assert_eq!(unsafe { libc_fcntl_getfd(raw_fd) }, -1);
}

extern "C" {
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}

unsafe fn libc_fcntl_getfd(fd: i32) -> i32 {
    const F_GETFD: i32 = 1;
    fcntl(fd, F_GETFD)
}

fn helper_inheritable(inheritable: bool) {
    let path = match std::env::var_os("IPL_RUST_HELPER") {
        Some(path) => PathBuf::from(path),
        None => return, // a normal test run
    };
    let lock = ipl::OpenOptions::new()
        .inheritable(inheritable)
        .open(path)
        .expect("helper open");
    let _guard = lock.lock_timeout(BOUND).unwrap().expect("helper acquire");
    // A grandchild that keeps every inherited descriptor for 20 s.
    let grandchild = Command::new("sleep")
        .arg("20")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    println!("\nlocked {}", grandchild.id());
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    let _ = io::stdin().read_to_end(&mut Vec::new());
}

/// Helpers: hold the lock through an inheritable (or a plain) Lock, with a
/// `sleep 20` grandchild; say "locked <its pid>".
#[test]
fn helper_beyond_inheritable() {
    helper_inheritable(true);
}

#[test]
fn helper_beyond_plain() {
    helper_inheritable(false);
}

fn read_locked_pid(child: &mut Child) -> i32 {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().flatten() {
            if let Some(pid) = line.trim().strip_prefix("locked ") {
                let _ = sender.send(pid.parse::<i32>().unwrap_or(-1));
                return;
            }
        }
    });
    receiver
        .recv_timeout(BOUND)
        .expect("the helper never said \"locked PID\"")
}

fn free_within(path: &Path, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if other_can_lock(path) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

// Catches: an inheritable lock whose descriptor is still close-on-exec (it
// would end with its holder), a plain lock whose descriptor leaks into an
// exec'd child (it would outlive its holder); on the classic backend,
// anything but IPL_E_UNSUPPORTED.
#[test]
fn an_inheritable_lock_lives_on_in_an_execd_child() {
    let dir = TempDir::new("inheritable");
    let path = dir.lock_path();
    if !ofd_locks() {
        let error = ipl::OpenOptions::new()
            .inheritable(true)
            .open(&path)
            .unwrap_err();
        assert_eq!(error.status(), sys::IPL_E_UNSUPPORTED, "{}", error);
        return;
    }
    for inheritable in [true, false] {
        let name = if inheritable {
            "helper_beyond_inheritable"
        } else {
            "helper_beyond_plain"
        };
        let mut holder = spawn_helper(name, &path);
        let grandchild = read_locked_pid(&mut holder);
        assert!(!other_can_lock(&path));
        holder.kill().unwrap();
        holder.wait().unwrap();
        let held_on = if inheritable {
            thread::sleep(Duration::from_millis(100));
            !other_can_lock(&path)
        } else {
            !free_within(&path, BOUND)
        };
        if grandchild > 0 {
            unsafe { kill(grandchild, 9) };
        }
        assert_eq!(held_on, inheritable, "inheritable: {}", inheritable);
        assert!(free_within(&path, BOUND), "the lock outlived every copy of its descriptor");
    }
}

// SPDX-License-Identifier: MIT

package ipl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// bound: how long any "should be quick" step may take before the test
// fails (generous: the machine is shared and noisy).
const bound = 10 * time.Second

// The helper process: this test binary re-executed with IPL_GO_HELPER set.
//
//	hold: takes the lock on IPL_GO_HELPER_PATH, says "locked", waits for stdin
//	      to close (or to be killed), at most 60 s
//	try:  tries the lock once, says "locked" or "busy", exits
func TestMain(m *testing.M) {
	switch os.Getenv("IPL_GO_HELPER") {
	case "":
		goHandledSignals = caughtSignals()
		os.Exit(m.Run())
	case "hold":
		lock, err := Open(os.Getenv("IPL_GO_HELPER_PATH"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		if ok, err := lock.LockTimeout(bound); !ok || err != nil {
			fmt.Println("error", ok, err)
			os.Exit(2)
		}
		fmt.Println("locked")
		time.AfterFunc(60*time.Second, func() { os.Exit(3) })
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	case "try":
		lock, err := Open(os.Getenv("IPL_GO_HELPER_PATH"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		if ok, err := lock.TryLock(); err != nil {
			fmt.Println("error", err)
		} else if ok {
			fmt.Println("locked")
		} else {
			fmt.Println("busy")
		}
		os.Exit(0)
	}
}

// goHandledSignals: the signals with a handler (bit n-1 for signal n) before
// any libipl call, i.e. the Go runtime's.
var goHandledSignals uint64

func caughtSignals() uint64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		panic(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "SigCgt:") {
			mask, err := strconv.ParseUint(strings.TrimSpace(line[len("SigCgt:"):]), 16, 64)
			if err != nil {
				panic(err)
			}
			return mask
		}
	}
	panic("no SigCgt in /proc/self/status")
}

func lockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "test.lock")
}

func mustOpen(t *testing.T, path string) *Lock {
	t.Helper()
	lock, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	return lock
}

// otherCanLock: whether a separate handle gets the exclusive lock now.
func otherCanLock(t *testing.T, path string) bool {
	t.Helper()
	probe, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	ok, err := probe.TryLock()
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func gettid() int { return syscall.Gettid() }

// Catches: handles of one process not excluding each other, and a lock lost
// (or wrongly kept) when goroutines move between OS threads while holding
// it — with blocking waits (kernel) and timed waits (polling under Go).
func TestGoroutinesWithOwnHandlesExclude(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	path := lockPath(t)
	const goroutines, rounds = 8, 40
	var inside, entries int32
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		lock := mustOpen(t, path)
		wg.Add(1)
		go func(g int, lock *Lock) {
			defer wg.Done()
			threads := map[int]bool{}
			for r := 0; r < rounds; r++ {
				if g%2 == 0 {
					if err := lock.Lock(); err != nil {
						t.Error(err)
						return
					}
				} else if ok, err := lock.LockTimeout(bound); !ok || err != nil {
					t.Error("LockTimeout:", ok, err)
					return
				}
				if !atomic.CompareAndSwapInt32(&inside, 0, 1) {
					t.Error("two goroutines inside the lock")
				}
				atomic.AddInt32(&entries, 1)
				threads[gettid()] = true
				runtime.Gosched() // let the runtime move us while we hold it
				threads[gettid()] = true
				atomic.StoreInt32(&inside, 0)
				if err := lock.Unlock(); err != nil {
					t.Error(err)
					return
				}
			}
			t.Logf("goroutine %d ran on %d OS threads", g, len(threads))
		}(g, lock)
	}
	wg.Wait()
	if entries != goroutines*rounds {
		t.Fatalf("%d entries, want %d", entries, goroutines*rounds)
	}
}

// Catches: a lock tied to the OS thread that took it (Unlock refused, or
// ignored, after the goroutine moved).
func TestUnlockAfterTheGoroutineMayHaveMoved(t *testing.T) {
	path := lockPath(t)
	lock := mustOpen(t, path)
	if err := lock.Lock(); err != nil {
		t.Fatal(err)
	}
	threads := map[int]bool{gettid(): true}
	for i := 0; i < 20; i++ {
		runtime.Gosched()
		time.Sleep(time.Millisecond)
		threads[gettid()] = true
	}
	t.Logf("held across %d OS threads", len(threads))
	if otherCanLock(t, path) {
		t.Fatal("lock lost while the goroutine moved")
	}
	if err := lock.Unlock(); err != nil {
		t.Fatal(err)
	}
	if !otherCanLock(t, path) {
		t.Fatal("Unlock did not release")
	}
}

// Catches: the same, made certain: the lock is taken on one OS thread and
// released on another (both goroutines pinned with LockOSThread), for the
// exclusive and the shared lock.
func TestUnlockFromADifferentOSThread(t *testing.T) {
	path := lockPath(t)
	lock := mustOpen(t, path)
	for _, shared := range []bool{false, true} {
		taken := make(chan int)
		releaserDone := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var err error
			if shared {
				err = lock.RLock()
			} else {
				err = lock.Lock()
			}
			if err != nil {
				t.Error(err)
			}
			taken <- gettid()
			<-releaserDone // stay pinned, so the releaser cannot get this thread
		}()
		takerThread := <-taken
		releaserThread := make(chan int)
		var unlockErr error
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if shared {
				unlockErr = lock.RUnlock()
			} else {
				unlockErr = lock.Unlock()
			}
			releaserThread <- gettid()
		}()
		releasedOn := <-releaserThread
		close(releaserDone)
		if releasedOn == takerThread {
			t.Fatalf("both on thread %d", releasedOn)
		}
		if unlockErr != nil {
			t.Fatalf("shared=%v: unlock on another thread: %v", shared, unlockErr)
		}
		if !otherCanLock(t, path) {
			t.Fatalf("shared=%v: still held after unlock on another thread", shared)
		}
	}
}

// Catches: a timed wait that returns early (rounding down, a poll loop that
// checks the clock wrongly), inside a Go process where libipl must poll.
func TestTimedWaitNeverReturnsEarly(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)
	for _, d := range []time.Duration{time.Millisecond, 1500 * time.Microsecond, 37 * time.Millisecond, 150 * time.Millisecond} {
		start := time.Now()
		ok, err := waiter.LockTimeout(d)
		elapsed := time.Since(start)
		if ok || err != nil {
			t.Fatalf("LockTimeout(%v) = %v, %v; want false, nil", d, ok, err)
		}
		if elapsed < d || elapsed > d+bound {
			t.Fatalf("LockTimeout(%v) took %v", d, elapsed)
		}
	}
}

// Catches: a wait that neither hangs nor ends early but only notices a
// release at its deadline (or never, for Lock), and a lost wake-up.
func TestWaitsSucceedSoonAfterTheHolderReleases(t *testing.T) {
	path := lockPath(t)
	for _, name := range []string{"LockTimeout", "Lock"} {
		holder := mustOpen(t, path)
		if err := holder.Lock(); err != nil {
			t.Fatal(err)
		}
		releasedAt := make(chan time.Time, 1)
		releaserDone := make(chan struct{})
		go func() {
			defer close(releaserDone)
			time.Sleep(100 * time.Millisecond)
			releasedAt <- time.Now()
			if err := holder.Unlock(); err != nil {
				t.Error(err)
			}
		}()
		// Close (at cleanup) must not race with the Unlock above.
		defer func() { <-releaserDone }()
		waiter := mustOpen(t, path)
		var err error
		ok := true
		if name == "Lock" {
			err = waiter.Lock()
		} else {
			ok, err = waiter.LockTimeout(bound)
		}
		woke := time.Now()
		if !ok || err != nil {
			t.Fatalf("%s: %v, %v", name, ok, err)
		}
		handoff := woke.Sub(<-releasedAt)
		t.Logf("%s: hand-off %v after the release", name, handoff)
		if handoff > 2*time.Second {
			t.Fatalf("%s: hand-off took %v", name, handoff)
		}
		if err := waiter.Unlock(); err != nil {
			t.Fatal(err)
		}
	}
}

// Catches: libipl taking a signal the Go runtime handles (the Go runtime
// handles nearly all; Go 1.19 leaves 32-34 alone, and libipl may take 34),
// or replacing such a handler (SIGRTMAX: SetWaitSignal must refuse it), a timed wait that a Go-handled signal
// shortens or breaks, and a wait that swallows the signal: Go's own signal
// delivery (os/signal) must still work during and after timed waits.
func TestGoSignalHandlingSurvivesTimedWaits(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)
	if ok, err := waiter.LockTimeout(20 * time.Millisecond); ok || err != nil {
		t.Fatal(ok, err)
	}
	signo := WaitSignal()
	t.Logf("libipl's wait signal in this Go process: %d (0: polling)", signo)
	if signo != 0 && goHandledSignals&(1<<(signo-1)) != 0 {
		t.Fatalf("libipl took signal %d, which the Go runtime handles", signo)
	}
	if os.Getenv("IPL_WAIT_SIGNAL") == "0" && signo != 0 {
		t.Fatalf("IPL_WAIT_SIGNAL=0, yet libipl uses signal %d", signo)
	}
	const sigrtmax = 64 // Linux; the Go runtime handles it
	if err := SetWaitSignal(sigrtmax); !errors.Is(err, StatusSignalInUse) {
		t.Fatalf("SetWaitSignal(%d) = %v, want StatusSignalInUse", sigrtmax, err)
	}

	received := make(chan os.Signal, 4)
	signal.Notify(received, syscall.SIGUSR1)
	defer signal.Stop(received)
	const wait = 400 * time.Millisecond
	go func() {
		time.Sleep(100 * time.Millisecond)
		syscall.Kill(os.Getpid(), syscall.SIGUSR1)
	}()
	start := time.Now()
	ok, err := waiter.LockTimeout(wait)
	if elapsed := time.Since(start); ok || err != nil || elapsed < wait {
		t.Fatalf("LockTimeout(%v) with a signal: %v, %v after %v", wait, ok, err, elapsed)
	}
	for i := 0; i < 2; i++ {
		select {
		case <-received:
		case <-time.After(bound):
			t.Fatal("SIGUSR1 never reached signal.Notify")
		}
		syscall.Kill(os.Getpid(), syscall.SIGUSR1) // once more, after the wait
	}
}

type helper struct {
	cmd   *exec.Cmd
	lines chan string
	stdin interface{ Close() error }
}

func startHelper(t *testing.T, mode, path string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IPL_GO_HELPER="+mode, "IPL_GO_HELPER_PATH="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, lines: make(chan string, 4), stdin: stdin}
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			h.lines <- scanner.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.cmd.Wait()
	})
	return h
}

func (h *helper) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case line := <-h.lines:
		if strings.TrimSpace(line) != want {
			t.Fatalf("helper said %q, want %q", line, want)
		}
	case <-time.After(bound):
		t.Fatalf("helper said nothing for %v (want %q)", bound, want)
	}
}

// Catches: a lock that another process does not see (in either direction),
// and a lock the kernel does not free when its holder dies.
func TestConflictWithAnotherProcess(t *testing.T) {
	path := lockPath(t)
	holder := startHelper(t, "hold", path)
	holder.expect(t, "locked")
	lock := mustOpen(t, path)
	if ok, err := lock.TryLock(); ok || err != nil {
		t.Fatal("TryLock while another process holds it:", ok, err)
	}
	start := time.Now()
	if ok, err := lock.LockTimeout(100 * time.Millisecond); ok || err != nil || time.Since(start) < 100*time.Millisecond {
		t.Fatal("LockTimeout while another process holds it:", ok, err, time.Since(start))
	}
	if err := holder.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if ok, err := lock.LockTimeout(bound); !ok || err != nil {
		t.Fatal("not released when the holder process died:", ok, err)
	}

	startHelper(t, "try", path).expect(t, "busy")
	if err := lock.Unlock(); err != nil {
		t.Fatal(err)
	}
	startHelper(t, "try", path).expect(t, "locked")
}

// Catches: the shared lock taken as exclusive, or a writer let in beside a
// reader.
func TestReadersCoexistWriterExcluded(t *testing.T) {
	path := lockPath(t)
	r1, r2, w := mustOpen(t, path), mustOpen(t, path), mustOpen(t, path)
	for _, r := range []*Lock{r1, r2} {
		if ok, err := r.TryRLock(); !ok || err != nil {
			t.Fatal("TryRLock beside a reader:", ok, err)
		}
	}
	if ok, err := w.LockTimeout(30 * time.Millisecond); ok || err != nil {
		t.Fatal("writer beside readers:", ok, err)
	}
	r1.RUnlock()
	r2.RUnlock()
	if ok, err := w.TryLock(); !ok || err != nil {
		t.Fatal("writer after readers left:", ok, err)
	}
	if ok, err := r1.RLockTimeout(30 * time.Millisecond); ok || err != nil {
		t.Fatal("reader beside a writer:", ok, err)
	}
}

// Catches: bad input accepted or crashing, statuses lost on the way through
// cgo, error texts that are not ipl_strerror's, a closed Lock that crashes.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	for path, want := range map[string]Status{"": StatusInvalid, dir: StatusNotRegularFile} {
		_, err := Open(path)
		var ipl *Error
		if !errors.As(err, &ipl) || !errors.Is(err, want) {
			t.Fatalf("Open(%q) = %v, want status %d", path, err, want)
		}
		if !strings.Contains(err.Error(), want.String()) || want.String() == "" {
			t.Fatalf("error text %q lacks %q", err, want.String())
		}
	}
	path := lockPath(t)
	lock := mustOpen(t, path)
	if err := lock.Unlock(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("Unlock of an unheld lock:", err)
	}
	if err := lock.Lock(); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.TryLock(); !errors.Is(err, StatusWouldDeadlock) {
		t.Fatal("second lock on one handle:", err)
	}
	if err := lock.RUnlock(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("RUnlock while holding exclusive:", err)
	}
	if otherCanLock(t, path) {
		t.Fatal("the exclusive lock was dropped by a failed call")
	}
	lock.Close()
	if !otherCanLock(t, path) {
		t.Fatal("Close did not release")
	}
	if _, err := lock.TryLock(); !errors.Is(err, StatusInvalid) {
		t.Fatal("TryLock after Close:", err)
	}
	lock.Close() // a second Close is a no-op
	if StatusTimeout.String() == StatusNotHeld.String() || Version() == "" {
		t.Fatal("status texts or version not read from the library")
	}

	// The OS error behind a status is reachable through errors.Is/As.
	missing := filepath.Join(dir, "missing.lock")
	_, err := Open(missing, NoCreate())
	var iplErr *Error
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, StatusOS) || !errors.As(err, &iplErr) ||
		iplErr.OSError != int(syscall.ENOENT) || iplErr.Path != missing {
		t.Fatalf("Open(NoCreate) of a missing file: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("NoCreate created the file")
	}
	if _, err := Open(filepath.Join(dir, "a", "b.lock"), NoCreateDirs()); !errors.Is(err, StatusBadParent) {
		t.Fatal("NoCreateDirs with a missing folder:", err)
	}
	if _, err := Open(filepath.Join(dir, "a\x00b")); !errors.Is(err, StatusInvalid) {
		t.Fatal("a path with a NUL:", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Fatal("the path before the NUL was created")
	}
}

// Catches: a cancelled context that does not end the wait (or ends it late),
// a context wait that leaves the lock held when it gives up, a deadline
// that ends it early, and a context wait that misses the release.
func TestLockContext(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)

	ctx, cancel := context.WithCancel(context.Background())
	var cancelledAt time.Time
	go func() {
		time.Sleep(150 * time.Millisecond)
		cancelledAt = time.Now()
		cancel()
	}()
	start := time.Now()
	err := waiter.LockContext(ctx)
	returned := time.Now()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("LockContext with a cancelled context: %v", err)
	}
	if returned.Sub(start) < 150*time.Millisecond || returned.Sub(cancelledAt) > time.Second {
		t.Fatalf("LockContext returned %v after it started, %v after the cancel",
			returned.Sub(start), returned.Sub(cancelledAt))
	}
	t.Logf("cancel -> LockContext returned in %v", returned.Sub(cancelledAt))

	deadline, stop := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer stop()
	start = time.Now()
	if err := waiter.RLockContext(deadline); !errors.Is(err, context.DeadlineExceeded) ||
		time.Since(start) < 120*time.Millisecond {
		t.Fatalf("RLockContext past its deadline: %v after %v", err, time.Since(start))
	}
	if err := holder.Unlock(); err != nil {
		t.Fatal(err)
	}
	if !otherCanLock(t, path) {
		t.Fatal("a cancelled LockContext left the lock held")
	}

	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		holder.Unlock()
	}()
	long, stopLong := context.WithTimeout(context.Background(), bound)
	defer stopLong()
	if err := waiter.LockContext(long); err != nil {
		t.Fatal("LockContext did not get the released lock:", err)
	}
	if otherCanLock(t, path) {
		t.Fatal("LockContext returned nil without the lock")
	}
	if err := waiter.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// Catches: Close racing a call in flight (a handle freed under a waiting
// goroutine), and a Close that leaves a lock taken after it held.
func TestCloseWhileAnotherGoroutineWaits(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)
	done := make(chan error, 1)
	go func() { done <- waiter.Lock() }()
	time.Sleep(100 * time.Millisecond)
	waiter.Close() // the Lock call keeps the handle until it returns
	if _, err := waiter.TryLock(); !errors.Is(err, StatusInvalid) {
		t.Fatal("TryLock after Close:", err)
	}
	if err := holder.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal("the waiting Lock:", err)
		}
	case <-time.After(bound):
		t.Fatal("the waiting Lock never returned")
	}
	// The waiter got the lock after Close: closing the handle released it.
	deadline := time.Now().Add(bound)
	for !otherCanLock(t, path) {
		if time.Now().After(deadline) {
			t.Fatal("the lock taken after Close stays held")
		}
		time.Sleep(time.Millisecond)
	}
}

// Catches: CreateMode not reaching ipl_open_mode, or the umask applied to it.
func TestCreateMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "group.lock")
	old := syscall.Umask(0o077)
	lock, err := Open(path, CreateMode(0o664))
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	lock.Close()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o664 {
		t.Fatalf("mode %v, want 0664", info.Mode().Perm())
	}
	if _, err := Open(path, CreateMode(0o1000)); !errors.Is(err, StatusInvalid) {
		t.Fatal("CreateMode(01000):", err)
	}
}

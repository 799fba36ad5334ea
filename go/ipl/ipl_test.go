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
	"sort"
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
//	rhold: the same with a shared lock
//	try:  tries the lock once, says "locked" or "busy", exits
//	inherit-hold, plain-hold: takes the lock through Open(path, Inheritable())
//	      (or a plain Open), starts a grandchild `sleep 20` (which keeps
//	      every descriptor it inherits), says "locked <its pid>", waits as hold
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
	case "rhold":
		lock, err := Open(os.Getenv("IPL_GO_HELPER_PATH"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		if ok, err := lock.RLockTimeout(bound); !ok || err != nil {
			fmt.Println("error", ok, err)
			os.Exit(2)
		}
		fmt.Println("locked")
		time.AfterFunc(60*time.Second, func() { os.Exit(3) })
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	case "inherit-hold", "plain-hold":
		var options []Option
		if os.Getenv("IPL_GO_HELPER") == "inherit-hold" {
			options = append(options, Inheritable())
		}
		lock, err := Open(os.Getenv("IPL_GO_HELPER_PATH"), options...)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		if ok, err := lock.LockTimeout(bound); !ok || err != nil {
			fmt.Println("error", ok, err)
			os.Exit(2)
		}
		grandchild := exec.Command("sleep", "20")
		if err := grandchild.Start(); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println("locked", grandchild.Process.Pid)
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

// Catches: a cancelled context that does not end the wait (or ends it late:
// the wait must be canceled, not noticed between slices), a context wait
// that leaves the lock held when it gives up, a deadline that ends it
// early, and a context wait that misses the release.
func TestLockContext(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)
	// Should a context fail to end a wait, the holder lets go after `bound`
	// (the wait then succeeds, and the test fails instead of hanging).
	rescued := make(chan struct{})
	rescue := time.AfterFunc(bound, func() {
		holder.Unlock()
		close(rescued)
	})

	ctx, cancel := context.WithCancel(context.Background())
	cancelledAt := make(chan time.Time, 1)
	go func() {
		time.Sleep(150 * time.Millisecond)
		cancelledAt <- time.Now()
		cancel()
	}()
	start := time.Now()
	err := waiter.LockContext(ctx)
	returned := time.Now()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("LockContext with a cancelled context: %v", err)
	}
	at := <-cancelledAt
	if returned.Sub(start) < 150*time.Millisecond || returned.Sub(at) > time.Second {
		t.Fatalf("LockContext returned %v after it started, %v after the cancel",
			returned.Sub(start), returned.Sub(at))
	}
	t.Logf("cancel -> LockContext returned in %v", returned.Sub(at))

	deadline, stop := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer stop()
	start = time.Now()
	if err := waiter.RLockContext(deadline); !errors.Is(err, context.DeadlineExceeded) ||
		time.Since(start) < 120*time.Millisecond {
		t.Fatalf("RLockContext past its deadline: %v after %v", err, time.Since(start))
	}
	if !rescue.Stop() {
		<-rescued
		t.Fatal("the rescue ended the waits")
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

// ---- libipl 0.2.0: cancel, query, downgrade/upgrade, remove -----------------------

// cancelLatency runs wait (which should block) on a goroutine pinned to its
// OS thread, cancels its context from another pinned goroutine after
// `after`, and returns what wait returned, how long after cancel() it
// returned, and whether the two ran on different OS threads. A wait that a
// cancel does not end is ended by rescue after `bound`.
func cancelLatency(t *testing.T, wait func(ctx context.Context) error, rescue func(),
	after time.Duration) (error, time.Duration, bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type outcome struct {
		err  error
		at   time.Time
		tid  int
		done bool
	}
	returned := make(chan outcome, 1)
	waiterTid := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		waiterTid <- gettid()
		err := wait(ctx)
		returned <- outcome{err: err, at: time.Now(), tid: gettid(), done: true}
	}()
	tid := <-waiterTid
	time.Sleep(after)
	canceledAt := make(chan time.Time, 1)
	cancelerTid := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cancelerTid <- gettid()
		canceledAt <- time.Now()
		cancel()
	}()
	var got outcome
	select {
	case got = <-returned:
	case <-time.After(bound):
		rescue()
		got = <-returned
		t.Errorf("the canceled wait did not return within %v (returned %v after the rescue)", bound, got.err)
	}
	latency := got.at.Sub(<-canceledAt)
	return got.err, latency, tid != <-cancelerTid
}

// Catches: a context wait that polls in slices or misses the cancel (the
// wait must end within milliseconds of cancel(), from another OS thread),
// a canceled wait that returns something other than ctx.Err(), and one
// that leaves the lock held; for Lock, RLock and Upgrade.
func TestContextCancelEndsABlockedWaitPromptly(t *testing.T) {
	path := lockPath(t)
	holder := startHelper(t, "hold", path)
	holder.expect(t, "locked")
	waiter := mustOpen(t, path)
	var latencies []time.Duration
	for round := 0; round < 5; round++ {
		for _, shared := range []bool{false, true} {
			err, latency, crossThread := cancelLatency(t, func(ctx context.Context) error {
				if shared {
					return waiter.RLockContext(ctx)
				}
				return waiter.LockContext(ctx)
			}, func() { holder.cmd.Process.Kill() }, 50*time.Millisecond+time.Duration(round)*7*time.Millisecond)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("shared=%v: a canceled context wait returned %v", shared, err)
			}
			if !crossThread {
				t.Fatal("the cancel ran on the waiter's OS thread")
			}
			if latency > time.Second {
				t.Fatalf("shared=%v: returned %v after cancel()", shared, latency)
			}
			latencies = append(latencies, latency)
		}
	}
	t.Logf("cancel -> LockContext/RLockContext returned after %v", latencies)
	// A wait cut into slices (polling the context between them) returns a
	// slice's remainder later: a median in milliseconds. ipl_cancel ends it
	// within the latency of a deadline: well under 5 ms even on a busy machine.
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	if median := latencies[len(latencies)/2]; median > 5*time.Millisecond {
		t.Fatalf("median cancel latency %v: the wait is not canceled at once", median)
	}
	if err := waiter.Unlock(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("a canceled LockContext left the lock held:", err)
	}

	// UpgradeContext: the shared lock is kept.
	holder.cmd.Process.Kill()
	reader := startHelper(t, "rhold", path)
	reader.expect(t, "locked")
	if ok, err := waiter.TryRLock(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	err, latency, _ := cancelLatency(t, waiter.UpgradeContext, func() { reader.cmd.Process.Kill() },
		50*time.Millisecond)
	t.Logf("cancel -> UpgradeContext returned after %v", latency)
	if !errors.Is(err, context.Canceled) || latency > time.Second {
		t.Fatalf("UpgradeContext: %v after %v", err, latency)
	}
	if otherCanLock(t, path) {
		t.Fatal("lost the lock")
	}
	reader.cmd.Process.Kill()
	reader.cmd.Wait()
	if otherCanLock(t, path) {
		t.Fatal("a canceled upgrade dropped the shared lock")
	}
	if err := waiter.RUnlock(); err != nil {
		t.Fatal("a canceled upgrade does not hold the shared lock:", err)
	}
}

// Catches: Cancel not reaching ipl_cancel (the rescue would end the wait),
// a canceled wait that is not StatusCanceled or carries a stale errno, a
// canceled wait that holds the lock, and a Cancel without a wait that
// poisons the next one.
func TestCancelEndsAWaitInAnotherGoroutine(t *testing.T) {
	path := lockPath(t)
	holder := mustOpen(t, path)
	if err := holder.Lock(); err != nil {
		t.Fatal(err)
	}
	waiter := mustOpen(t, path)
	if err := waiter.Cancel(); err != nil { // no wait in progress: nothing
		t.Fatal(err)
	}
	start := time.Now()
	if ok, err := waiter.LockTimeout(200 * time.Millisecond); ok || err != nil || time.Since(start) < 200*time.Millisecond {
		t.Fatal("a Cancel without a wait changed the next wait:", ok, err, time.Since(start))
	}
	for _, name := range []string{"Lock", "LockTimeout", "RLock"} {
		returned := make(chan error, 1)
		go func() {
			var err error
			switch name {
			case "Lock":
				err = waiter.Lock()
			case "RLock":
				err = waiter.RLock()
			default:
				var ok bool
				ok, err = waiter.LockTimeout(bound)
				if ok {
					err = errors.New("acquired")
				}
			}
			returned <- err
		}()
		time.Sleep(50 * time.Millisecond)
		var err error
		deadline := time.Now().Add(bound)
	canceling:
		for {
			if cerr := waiter.Cancel(); cerr != nil {
				t.Fatal(cerr)
			}
			select {
			case err = <-returned:
				break canceling
			case <-time.After(time.Millisecond):
			}
			if time.Now().After(deadline) {
				holder.Unlock()
				err = <-returned
				t.Fatalf("%s: Cancel did not end the wait (%v)", name, err)
			}
		}
		var iplErr *Error
		if !errors.Is(err, StatusCanceled) || !errors.As(err, &iplErr) || iplErr.OSError != 0 {
			t.Fatalf("%s canceled: %v", name, err)
		}
	}
	if err := waiter.Unlock(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("a canceled Lock holds the lock:", err)
	}
}

// Catches: a state mapped wrongly, a holder's pid lost (or invented where
// QueryState asks for none), this Lock's own lock counted.
func TestQuery(t *testing.T) {
	path := lockPath(t)
	lock := mustOpen(t, path)
	if q, err := lock.Query(); err != nil || q != (QueryResult{StateFree, -1}) {
		t.Fatal("Query of a free lock:", q, err)
	}
	holder := startHelper(t, "hold", path)
	holder.expect(t, "locked")
	if q, err := lock.Query(); err != nil || q.State != StateExclusive || q.HolderPID != holder.cmd.Process.Pid {
		t.Fatalf("Query with a holder (pid %d): %+v, %v", holder.cmd.Process.Pid, q, err)
	}
	if s, err := lock.QueryState(); err != nil || s != StateExclusive {
		t.Fatal("QueryState:", s, err)
	}
	holder.cmd.Process.Kill()
	holder.cmd.Wait()
	reader := startHelper(t, "rhold", path)
	reader.expect(t, "locked")
	if ok, err := lock.TryRLock(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if q, err := lock.Query(); err != nil || q.State != StateShared || q.HolderPID != reader.cmd.Process.Pid {
		t.Fatalf("Query with a reader (pid %d): %+v, %v", reader.cmd.Process.Pid, q, err)
	}
	reader.cmd.Process.Kill()
	reader.cmd.Wait()
	if s, err := lock.QueryState(); err != nil || s != StateFree {
		t.Fatal("its own shared lock counted:", s, err)
	}
	lock.RUnlock()
	if StateShared.String() != "shared" {
		t.Fatal(StateShared.String())
	}
}

// Catches: a downgrade that lets a writer in or keeps readers out, an
// upgrade that does not wait for the other readers (or drops the shared
// lock when it fails), a second upgrader that waits instead of failing
// with StatusWouldDeadlock at once.
func TestDowngradeAndUpgrade(t *testing.T) {
	path := lockPath(t)
	lock, other := mustOpen(t, path), mustOpen(t, path)
	if err := lock.Downgrade(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("Downgrade without the lock:", err)
	}
	if err := lock.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Downgrade(); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.TryRLock(); !ok || err != nil {
		t.Fatal("a reader beside a downgraded lock:", ok, err)
	}
	if otherCanLock(t, path) {
		t.Fatal("a writer beside a downgraded lock")
	}
	if ok, err := lock.TryUpgrade(); ok || err != nil {
		t.Fatal("TryUpgrade beside another reader:", ok, err)
	}
	start := time.Now()
	if ok, err := lock.UpgradeTimeout(100 * time.Millisecond); ok || err != nil || time.Since(start) < 100*time.Millisecond {
		t.Fatal("UpgradeTimeout beside another reader:", ok, err, time.Since(start))
	}
	// `other` upgrades too, while `lock` waits: it must fail at once. It asks
	// only once `lock`'s upgrade is under way (a query through a handle that
	// is acquiring says StatusWouldDeadlock), and a moment later, once that
	// upgrade holds the arbitration byte: a try before that would hold the
	// byte itself for an instant and could make `lock`'s upgrade the one
	// that fails.
	upgraded := make(chan error, 1)
	go func() { upgraded <- lock.Upgrade() }()
	for deadline := time.Now().Add(bound); ; time.Sleep(time.Millisecond) {
		if _, err := lock.Query(); errors.Is(err, StatusWouldDeadlock) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upgrade never started")
		}
	}
	time.Sleep(100 * time.Millisecond)
	if ok, err := other.TryUpgrade(); ok || !errors.Is(err, StatusWouldDeadlock) {
		t.Fatal("the second upgrader:", ok, err)
	}
	start = time.Now()
	if _, err := other.UpgradeTimeout(bound); !errors.Is(err, StatusWouldDeadlock) || time.Since(start) > time.Second {
		t.Fatal("the second upgrader waited or failed otherwise:", err, time.Since(start))
	}
	if err := other.RUnlock(); err != nil { // it kept its shared lock; now it lets go
		t.Fatal(err)
	}
	select {
	case err := <-upgraded:
		if err != nil {
			t.Fatal("Upgrade:", err)
		}
	case <-time.After(bound):
		t.Fatal("Upgrade never finished after the other reader left")
	}
	if ok, err := other.TryRLock(); ok || err != nil {
		t.Fatal("a reader beside an upgraded lock:", ok, err)
	}
	if err := lock.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// Catches: Remove that leaves the file or the lock, that works without the
// exclusive lock, or after which the Lock cannot lock again.
func TestRemove(t *testing.T) {
	path := lockPath(t)
	lock := mustOpen(t, path)
	if err := lock.RLock(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Remove(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("Remove while holding it shared:", err)
	}
	lock.RUnlock()
	if err := lock.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("the lock file is still there:", err)
	}
	if err := lock.Unlock(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("still held after Remove:", err)
	}
	if ok, err := lock.TryLock(); !ok || err != nil {
		t.Fatal("TryLock after Remove:", ok, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("not created again:", err)
	}
	startHelper(t, "try", path).expect(t, "busy")
	lock.Unlock()
}

// Catches: Check that says "held" when the path names another file now
// (the lock file was removed under the Lock), a loss reported with another
// status, a Lock that still believes it holds the lock (Unlock must be
// StatusNotHeld) or cannot lock again afterwards.
func TestCheck(t *testing.T) {
	path := lockPath(t)
	lock := mustOpen(t, path)
	if err := lock.Check(); !errors.Is(err, StatusNotHeld) {
		t.Fatal("Check without a lock:", err)
	}
	for _, shared := range []bool{false, true} {
		var err error
		if shared {
			err = lock.RLock()
		} else {
			err = lock.Lock()
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := lock.Check(); err != nil {
			t.Fatal("Check while held:", err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := lock.Check(); !errors.Is(err, StatusLost) {
			t.Fatalf("Check after the file was removed (shared %v): %v", shared, err)
		}
		if err := lock.Unlock(); !errors.Is(err, StatusNotHeld) {
			t.Fatal("still held after the loss:", err)
		}
		if ok, err := lock.TryLock(); !ok || err != nil {
			t.Fatal("TryLock after the loss:", ok, err)
		}
		startHelper(t, "try", path).expect(t, "busy")
		lock.Unlock()
	}
}

// posixLocks is the POSIX lock kind of the libipl under test
// (IPL_TEST_POSIX_LOCKS, set by scripts/test-bindings; Linux builds default
// to OFD locks). On the classic backend ipl_open_fd and
// IPL_OPEN_INHERITABLE are IPL_E_UNSUPPORTED, and the tests expect exactly
// that there.
func posixLocks() string {
	if kind := os.Getenv("IPL_TEST_POSIX_LOCKS"); kind != "" {
		return kind
	}
	if runtime.GOOS == "linux" {
		return "ofd"
	}
	return "classic"
}

// Catches: OpenFile locking anything but f's open file description (another
// process would not see it, or Query would not name this process), Remove
// not refusing a handle without a path, a Lock that closes f; on the
// classic backend, anything but StatusUnsupported.
func TestOpenFile(t *testing.T) {
	path := lockPath(t)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := OpenFile(nil); !errors.Is(err, StatusInvalid) {
		t.Fatal("OpenFile(nil):", err)
	}
	lock, err := OpenFile(f)
	if posixLocks() != "ofd" {
		if !errors.Is(err, StatusUnsupported) {
			t.Fatal("OpenFile on the", posixLocks(), "backend:", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if lock.Path() != path {
		t.Fatal("Path:", lock.Path())
	}
	if ok, err := lock.TryLock(); !ok || err != nil {
		t.Fatal("TryLock:", ok, err)
	}
	startHelper(t, "try", path).expect(t, "busy")
	q, err := mustOpen(t, path).Query()
	if err != nil || q.State != StateExclusive || q.HolderPID != os.Getpid() {
		t.Fatal("Query from another handle:", q, err)
	}
	if err := lock.Check(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Remove(); !errors.Is(err, StatusUnsupported) {
		t.Fatal("Remove without a path:", err)
	}
	if err := lock.Close(); err != nil {
		t.Fatal(err)
	}
	startHelper(t, "try", path).expect(t, "locked")
	// f is still open: Close left it alone.
	if _, err := f.Stat(); err != nil {
		t.Fatal("f after Close:", err)
	}
}

// freeWithin: whether the lock becomes free (a separate handle gets it)
// within d.
func freeWithin(t *testing.T, path string, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if otherCanLock(t, path) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// Catches: an inheritable lock whose descriptor is still close-on-exec (the
// lock would end with its holder), a plain lock whose descriptor leaks into
// exec'd children (it would outlive its holder); on the classic backend,
// anything but StatusUnsupported.
func TestInheritableLockLivesOnInAnExecdChild(t *testing.T) {
	path := lockPath(t)
	if posixLocks() != "ofd" {
		if _, err := Open(path, Inheritable()); !errors.Is(err, StatusUnsupported) {
			t.Fatal("Inheritable on the", posixLocks(), "backend:", err)
		}
		return
	}
	for _, mode := range []string{"inherit-hold", "plain-hold"} {
		holder := startHelper(t, mode, path)
		var line string
		select {
		case line = <-holder.lines:
		case <-time.After(bound):
			t.Fatal("the helper said nothing")
		}
		fields := strings.Fields(line)
		if len(fields) != 2 || fields[0] != "locked" {
			t.Fatalf("helper said %q", line)
		}
		grandchild, _ := strconv.Atoi(fields[1])
		if otherCanLock(t, path) {
			t.Fatal("not held by the helper")
		}
		holder.cmd.Process.Kill()
		holder.cmd.Wait()
		var heldOn bool
		if mode == "inherit-hold" {
			time.Sleep(100 * time.Millisecond)
			heldOn = !otherCanLock(t, path)
		} else {
			heldOn = !freeWithin(t, path, bound)
		}
		if grandchild > 0 {
			syscall.Kill(grandchild, syscall.SIGKILL)
		}
		if heldOn != (mode == "inherit-hold") {
			t.Fatalf("%s: held after the holder died: %v", mode, heldOn)
		}
		if !freeWithin(t, path, bound) {
			t.Fatal(mode, ": the lock outlived every copy of its descriptor")
		}
	}
}

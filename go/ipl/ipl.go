// SPDX-License-Identifier: MIT

// Package ipl is libipl for Go: inter-process locks on a lock file, through
// cgo and the C ABI (ipl/ipl.h), found with pkg-config.
//
//	lock, err := ipl.Open("/var/lock/myapp/db.lock")
//	if err != nil { ... }
//	defer lock.Close()
//	if err := lock.Lock(); err != nil { ... }       // exclusive; blocks
//	defer lock.Unlock()
//
//	ok, err := lock.TryLock()                       // ok == false: held elsewhere
//	ok, err = lock.LockTimeout(2 * time.Second)     // ok == false: not in time
//	err = lock.LockContext(ctx)                     // ctx.Err() when ctx ends first
//	err = lock.RLock()                              // shared
//	err = lock.Downgrade()                          // exclusive to shared, atomically
//	ok, err = lock.UpgradeTimeout(time.Second)      // shared to exclusive
//	q, err := lock.Query()                          // held elsewhere? how, by which pid
//	err = lock.Remove()                             // delete the lock file, holding it
//	err = lock.Check()                              // still held? StatusLost when taken away
//
// A Lock is one libipl handle and holds at most one lock, shared or
// exclusive. Two Locks on one file exclude each other as two processes do,
// also in one goroutine. Locks are not reentrant: locking a Lock that holds
// the lock is an error matching StatusWouldDeadlock. The lock is the one
// Python's fasteners takes (whole-file fcntl on POSIX), so mixed fleets
// coordinate.
//
// A Lock is not tied to a goroutine or an OS thread: Go moves goroutines
// between threads, and libipl lets any thread release what another took.
// Every call blocks its goroutine's OS thread (a cgo call), which the Go
// runtime replaces while it waits. A wait ends early only through Cancel
// (from another goroutine) or a context: LockContext, RLockContext and
// UpgradeContext wait in one libipl call and, when the context is done,
// end it with ipl_cancel from a goroutine of their own.
//
// Locks that child processes inherit, as flock(1)'s (Linux OFD builds
// only; elsewhere StatusUnsupported): Open(path, Inheritable()) leaves the
// lock's descriptor open across exec (os/exec passes it on), and OpenFile
// locks the open file description of an *os.File the caller has.
//
// Timed waits (LockTimeout) need a signal to end a kernel wait at its
// deadline; libipl only takes one whose disposition is still the default.
// The Go runtime handles almost every signal (Go 1.19 leaves signal 34 at
// the default, so libipl takes that one). Where none is free, or with
// IPL_WAIT_SIGNAL=0 in the environment, timed waits poll (at most 10 ms
// between tries): LockTimeout still never returns early.
package ipl

/*
#cgo pkg-config: ipl
#include <stdlib.h>
#include <ipl/ipl.h>
*/
import "C"

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Status is a libipl status: StatusOK (0) or a negative IPL_E_* value.
type Status int

// The status values pinned by ipl.h.
const (
	StatusOK             Status = C.IPL_OK
	StatusTimeout        Status = C.IPL_E_TIMEOUT
	StatusInvalid        Status = C.IPL_E_INVALID
	StatusNotHeld        Status = C.IPL_E_NOT_HELD
	StatusWouldDeadlock  Status = C.IPL_E_WOULD_DEADLOCK
	StatusAccess         Status = C.IPL_E_ACCESS
	StatusNotRegularFile Status = C.IPL_E_NOT_REGULAR_FILE
	StatusNameTooLong    Status = C.IPL_E_NAME_TOO_LONG
	StatusNoMemory       Status = C.IPL_E_NO_MEMORY
	StatusOS             Status = C.IPL_E_OS
	StatusBadParent      Status = C.IPL_E_BAD_PARENT
	StatusInternal       Status = C.IPL_E_INTERNAL
	StatusUnsupported    Status = C.IPL_E_UNSUPPORTED
	StatusSignalInUse    Status = C.IPL_E_SIGNAL_IN_USE
	StatusCanceled       Status = C.IPL_E_CANCELED
	StatusLost           Status = C.IPL_E_LOST
)

// String is libipl's text for the status (ipl_strerror).
func (s Status) String() string { return C.GoString(C.ipl_strerror(C.int(s))) }

// Error lets a Status be the target of errors.Is.
func (s Status) Error() string { return s.String() }

// Error is a failed libipl call. errors.Is matches it against its Status
// (errors.Is(err, ipl.StatusNotHeld)), against the OS error behind it
// (errors.Is(err, fs.ErrNotExist) for ENOENT), and StatusAccess against
// fs.ErrPermission.
type Error struct {
	Op      string // "open", "lock", "unlock", ...
	Path    string
	Status  Status
	OSError int // the errno (GetLastError on Windows) behind it, 0 when none
}

func (e *Error) Error() string {
	text := fmt.Sprintf("ipl: %s %s: %s (status %d)", e.Op, e.Path, e.Status, int(e.Status))
	if e.OSError != 0 {
		text += fmt.Sprintf(": %v (errno %d)", syscall.Errno(e.OSError), e.OSError)
	}
	return text
}

// Is reports a match on the status, and StatusAccess as fs.ErrPermission.
func (e *Error) Is(target error) bool {
	if status, ok := target.(Status); ok {
		return status == e.Status
	}
	return target == fs.ErrPermission && e.Status == StatusAccess
}

// Unwrap is the OS error behind the status (a syscall.Errno), or nil.
func (e *Error) Unwrap() error {
	if e.OSError == 0 {
		return nil
	}
	return syscall.Errno(e.OSError)
}

// WaitForever is the timeout of Lock and RLock.
const WaitForever = time.Duration(-1)

// maxWait is the longest wait passed to C (100 years, as ipl.hpp).
const maxWait = 100 * 365 * 24 * time.Hour

// cancelRetry: how often a wait whose context is done is canceled again
// until it has returned (a cancel that comes before the wait has begun does
// nothing, see ipl.h).
const cancelRetry = time.Millisecond

// Lock is one open lock file. Its methods may be called from any
// goroutine; Close waits for none of them (see Close).
type Lock struct {
	path string
	file *os.File // OpenFile's: kept from the garbage collector, never closed here

	mu       sync.Mutex // guards the three fields below
	raw      *C.ipl_lock
	inFlight int  // calls into libipl now running on raw
	closing  bool // Close was called; the last call in flight closes raw
}

// Option is a choice for Open.
type Option func(*openOptions)

type openOptions struct {
	flags   C.uint32_t
	mode    os.FileMode
	hasMode bool
}

// NoCreate: the lock file must exist (else an error matching fs.ErrNotExist).
func NoCreate() Option { return func(o *openOptions) { o.flags |= C.IPL_OPEN_NO_CREATE } }

// NoCreateDirs: missing parent folders are an error (StatusBadParent).
func NoCreateDirs() Option {
	return func(o *openOptions) { o.flags |= C.IPL_OPEN_NO_CREATE_DIRS }
}

// Inheritable leaves the lock's descriptor open across fork and exec
// (IPL_OPEN_INHERITABLE): a child process (os/exec, syscall.Exec) inherits
// the lock, which then lasts while any copy of the descriptor is open
// (Unlock or Close still end it at once). Linux OFD builds only: elsewhere
// Open fails with StatusUnsupported.
func Inheritable() Option {
	return func(o *openOptions) { o.flags |= C.IPL_OPEN_INHERITABLE }
}

// CreateMode gives a lock file that Open creates exactly these permissions
// (0 to 0777), whatever the umask; folders it creates get the same plus
// search permission where it gives read (ipl_open_mode).
func CreateMode(mode os.FileMode) Option {
	return func(o *openOptions) { o.mode, o.hasMode = mode, true }
}

// Open opens (by default creating it and any missing parent folders) the
// lock file at path. The Lock holds nothing yet.
func Open(path string, options ...Option) (*Lock, error) {
	var o openOptions
	for _, option := range options {
		option(&o)
	}
	for i := 0; i < len(path); i++ {
		if path[i] == 0 { // C would see a shorter path
			return nil, &Error{Op: "open", Path: path, Status: StatusInvalid}
		}
	}
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	var raw *C.ipl_lock
	var osError C.int
	var status C.int
	if o.hasMode {
		if o.mode > 0o777 {
			return nil, &Error{Op: "open", Path: path, Status: StatusInvalid}
		}
		status = C.ipl_open_mode(cPath, o.flags, C.uint32_t(o.mode), &raw, &osError)
	} else {
		status = C.ipl_open_ex(cPath, o.flags, &raw, &osError)
	}
	if status != C.IPL_OK {
		return nil, &Error{Op: "open", Path: path, Status: Status(status), OSError: int(osError)}
	}
	l := &Lock{raw: raw, path: path}
	// A Lock dropped without Close still closes its handle (as os.File does).
	runtime.SetFinalizer(l, func(l *Lock) { l.Close() })
	return l, nil
}

// OpenFile returns a Lock over f, an open regular file, whose locks are
// taken on f's open file description (ipl_open_fd): shared by every copy
// of it (dup, fork, exec: pass f to a child in exec.Cmd.ExtraFiles), they
// outlive this process while a copy stays open, as flock(1)'s do. If the
// description holds a lock already (one an earlier process left on it),
// the Lock starts out holding it (Unlock or RUnlock, whichever it is, or
// Close ends it). The Lock keeps f from the garbage collector but never
// closes it: close f after the Lock. An exclusive lock needs f open for
// writing, a shared one for reading (else StatusAccess with EBADF). The
// Lock's Path is f.Name(); Remove fails with StatusUnsupported. Errors:
// StatusNotRegularFile; StatusUnsupported on the classic POSIX backend and
// Windows (their locks are not per description).
func OpenFile(f *os.File) (*Lock, error) {
	if f == nil {
		return nil, &Error{Op: "open", Status: StatusInvalid}
	}
	var raw *C.ipl_lock
	var osError C.int
	status := C.ipl_open_fd(C.int(f.Fd()), 0, &raw, &osError)
	runtime.KeepAlive(f)
	if status != C.IPL_OK {
		return nil, &Error{Op: "open", Path: f.Name(), Status: Status(status), OSError: int(osError)}
	}
	l := &Lock{raw: raw, path: f.Name(), file: f}
	runtime.SetFinalizer(l, func(l *Lock) { l.Close() })
	return l, nil
}

// Path is the lock file's path, as given to Open.
func (l *Lock) Path() string { return l.path }

// Close releases what the Lock holds and closes it; later calls fail with
// StatusInvalid. A call still running in another goroutine (a Lock that
// waits, say) keeps the handle open until it returns; then the handle is
// closed, releasing what that call took. A second Close is a no-op.
func (l *Lock) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing || l.raw == nil {
		return nil
	}
	l.closing = true
	if l.inFlight == 0 {
		C.ipl_close(l.raw)
		l.raw = nil
	}
	return nil
}

// enter returns the handle for one call, or an error when closed.
func (l *Lock) enter(op string) (*C.ipl_lock, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing || l.raw == nil {
		return nil, &Error{Op: op, Path: l.path, Status: StatusInvalid}
	}
	l.inFlight++
	return l.raw, nil
}

func (l *Lock) leave() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	if l.closing && l.inFlight == 0 && l.raw != nil {
		C.ipl_close(l.raw)
		l.raw = nil
	}
}

// timeoutMs rounds up to whole milliseconds, so a wait is never shorter
// than asked; a negative duration waits forever, zero tries once.
func timeoutMs(d time.Duration) C.int64_t {
	if d < 0 {
		return C.IPL_WAIT_FOREVER
	}
	if d > maxWait {
		d = maxWait
	}
	return C.int64_t((d + time.Millisecond - 1) / time.Millisecond)
}

func (l *Lock) fail(op string, raw *C.ipl_lock, status C.int) error {
	err := &Error{Op: op, Path: l.path, Status: Status(status)}
	switch status {
	case C.IPL_E_TIMEOUT, C.IPL_E_INVALID, C.IPL_E_NOT_HELD, C.IPL_E_WOULD_DEADLOCK,
		C.IPL_E_INTERNAL, C.IPL_E_CANCELED:
		// libipl's own rules: no system call failed, and ipl_os_error()
		// would give an older call's errno.
	default:
		err.OSError = int(C.ipl_os_error(raw))
	}
	return err
}

// acquire: true when acquired, false (and no error) when not in time.
func (l *Lock) acquire(op string, shared bool, d time.Duration) (bool, error) {
	raw, err := l.enter(op)
	if err != nil {
		return false, err
	}
	defer l.leave()
	var status C.int
	if shared {
		status = C.ipl_acquire_read(raw, timeoutMs(d))
	} else {
		status = C.ipl_acquire(raw, timeoutMs(d))
	}
	switch status {
	case C.IPL_OK:
		return true, nil
	case C.IPL_E_TIMEOUT:
		return false, nil
	}
	return false, l.fail(op, raw, status)
}

// waitContext makes the waiting call `wait` (on raw, without a time limit)
// and, once ctx is done, cancels it with ipl_cancel until it has returned:
// a goroutine waits on ctx.Done() meanwhile, and no polling happens while
// nothing is canceled. A call that ends IPL_E_CANCELED because of ctx
// returns ctx.Err(). The caller holds raw open (enter/leave) around it.
func (l *Lock) waitContext(ctx context.Context, op string, raw *C.ipl_lock,
	wait func() C.int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var status C.int
	if ctx.Done() == nil { // never canceled: just the wait
		status = wait()
	} else {
		returned := make(chan struct{})
		canceler := make(chan struct{})
		go func() {
			defer close(canceler)
			select {
			case <-returned:
				return
			case <-ctx.Done():
			}
			ticker := time.NewTicker(cancelRetry)
			defer ticker.Stop()
			for {
				C.ipl_cancel(raw)
				select {
				case <-returned:
					return
				case <-ticker.C:
				}
			}
		}()
		status = wait()
		close(returned)
		<-canceler // no ipl_cancel on raw after this call has left
	}
	switch status {
	case C.IPL_OK:
		return nil
	case C.IPL_E_CANCELED:
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return l.fail(op, raw, status)
}

// acquireContext takes the lock, waiting until it is granted or ctx is done.
func (l *Lock) acquireContext(ctx context.Context, op string, shared bool) error {
	raw, err := l.enter(op)
	if err != nil {
		return err
	}
	defer l.leave()
	return l.waitContext(ctx, op, raw, func() C.int {
		if shared {
			return C.ipl_acquire_read(raw, C.IPL_WAIT_FOREVER)
		}
		return C.ipl_acquire(raw, C.IPL_WAIT_FOREVER)
	})
}

// Lock takes the exclusive lock, waiting as long as it takes.
func (l *Lock) Lock() error {
	_, err := l.acquire("lock", false, WaitForever)
	return err
}

// TryLock takes the exclusive lock if it is free now (never sleeps).
func (l *Lock) TryLock() (bool, error) { return l.acquire("trylock", false, 0) }

// LockTimeout takes the exclusive lock, waiting at most d (rounded up to
// whole milliseconds; d <= 0 tries once).
func (l *Lock) LockTimeout(d time.Duration) (bool, error) {
	if d < 0 {
		d = 0
	}
	return l.acquire("lock", false, d)
}

// LockContext takes the exclusive lock, waiting until ctx is done; then it
// returns ctx.Err() and holds nothing. The wait is one libipl call, which
// a done context ends at once (ipl_cancel).
func (l *Lock) LockContext(ctx context.Context) error {
	return l.acquireContext(ctx, "lock", false)
}

// Unlock releases the exclusive lock (StatusNotHeld when not held).
func (l *Lock) Unlock() error { return l.release("unlock", false) }

// RLock takes a shared lock, waiting as long as it takes.
func (l *Lock) RLock() error {
	_, err := l.acquire("rlock", true, WaitForever)
	return err
}

// TryRLock takes a shared lock if one can be had now.
func (l *Lock) TryRLock() (bool, error) { return l.acquire("tryrlock", true, 0) }

// RLockTimeout takes a shared lock, waiting at most d.
func (l *Lock) RLockTimeout(d time.Duration) (bool, error) {
	if d < 0 {
		d = 0
	}
	return l.acquire("rlock", true, d)
}

// RLockContext takes a shared lock, waiting until ctx is done (as
// LockContext).
func (l *Lock) RLockContext(ctx context.Context) error {
	return l.acquireContext(ctx, "rlock", true)
}

// RUnlock releases the shared lock (StatusNotHeld when not held).
func (l *Lock) RUnlock() error { return l.release("runlock", true) }

func (l *Lock) release(op string, shared bool) error {
	raw, err := l.enter(op)
	if err != nil {
		return err
	}
	defer l.leave()
	var status C.int
	if shared {
		status = C.ipl_release_read(raw)
	} else {
		status = C.ipl_release(raw)
	}
	if status != C.IPL_OK {
		return l.fail(op, raw, status)
	}
	return nil
}

// ---- Beyond lock and unlock (libipl 0.2.0) ---------------------------------------

// State is how others hold the lock, as Query reports it (IPL_STATE_*).
type State int

// The lock states.
const (
	StateFree      State = C.IPL_STATE_FREE      // nobody else holds it
	StateShared    State = C.IPL_STATE_SHARED    // others hold it shared
	StateExclusive State = C.IPL_STATE_EXCLUSIVE // another holds it exclusive
)

func (s State) String() string {
	switch s {
	case StateFree:
		return "free"
	case StateShared:
		return "shared"
	case StateExclusive:
		return "exclusive"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// QueryResult is what Query found: a snapshot, possibly stale at once.
type QueryResult struct {
	State State
	// HolderPID is one holder's process id where the OS can tell (ipl.h,
	// ipl_query: classic fcntl holders such as fasteners through F_GETLK,
	// OFD holders through /proc/PID/fdinfo where this process may read
	// it), else -1.
	HolderPID int
}

// Query says whether the lock is held by anyone but this Lock right now,
// how, and by which process (ipl_query). This Lock's own lock never counts:
// holding it exclusive, Query sees StateFree. An error matching
// StatusWouldDeadlock means another goroutine is acquiring on this Lock.
func (l *Lock) Query() (QueryResult, error) { return l.query(true) }

// QueryState is Query without looking up a holder's process id (on Linux,
// a scan of /proc for OFD holders); HolderPID is then -1.
func (l *Lock) QueryState() (State, error) {
	q, err := l.query(false)
	return q.State, err
}

func (l *Lock) query(findHolder bool) (QueryResult, error) {
	result := QueryResult{State: StateFree, HolderPID: -1}
	raw, err := l.enter("query")
	if err != nil {
		return result, err
	}
	defer l.leave()
	var state C.int
	pid := C.int64_t(-1)
	var pidOut *C.int64_t
	if findHolder {
		pidOut = &pid
	}
	if status := C.ipl_query(raw, &state, pidOut); status != C.IPL_OK {
		return result, l.fail("query", raw, status)
	}
	result.State = State(state)
	if pid >= 0 {
		result.HolderPID = int(pid)
	}
	return result, nil
}

// Cancel ends a wait in progress on this Lock in another goroutine (Lock,
// LockTimeout, RLock, Upgrade, ...), which then returns an error matching
// StatusCanceled and holds what it held before. With no wait in progress it
// does nothing, also to a wait that starts afterwards: call it again until
// the waiting call has returned. (The *Context methods do this themselves.)
func (l *Lock) Cancel() error {
	raw, err := l.enter("cancel")
	if err != nil {
		return err
	}
	defer l.leave()
	if status := C.ipl_cancel(raw); status != C.IPL_OK {
		return l.fail("cancel", raw, status)
	}
	return nil
}

// Downgrade turns the exclusive lock this Lock holds into a shared one,
// atomically: no writer can get in between, other readers may join at once.
// Release it with RUnlock. StatusNotHeld unless the Lock holds it exclusive.
func (l *Lock) Downgrade() error {
	raw, err := l.enter("downgrade")
	if err != nil {
		return err
	}
	defer l.leave()
	if status := C.ipl_downgrade(raw); status != C.IPL_OK {
		return l.fail("downgrade", raw, status)
	}
	return nil
}

// Upgrade turns the shared lock this Lock holds into the exclusive one,
// waiting as long as it takes for the other readers to leave (release it
// with Unlock). The shared lock is kept while waiting and on every error.
// Only one upgrade of a lock file waits at a time: when another one (in any
// process) is waiting already, this returns an error matching
// StatusWouldDeadlock at once, and the caller should RUnlock so that the
// other can finish. StatusNotHeld unless the Lock holds it shared.
func (l *Lock) Upgrade() error {
	_, err := l.upgrade(WaitForever)
	return err
}

// TryUpgrade upgrades if no other reader holds the lock now.
func (l *Lock) TryUpgrade() (bool, error) { return l.upgrade(0) }

// UpgradeTimeout upgrades, waiting at most d for the other readers to
// leave; false (and the shared lock kept) when they did not.
func (l *Lock) UpgradeTimeout(d time.Duration) (bool, error) {
	if d < 0 {
		d = 0
	}
	return l.upgrade(d)
}

// UpgradeContext upgrades, waiting until ctx is done; then it returns
// ctx.Err() and still holds the shared lock.
func (l *Lock) UpgradeContext(ctx context.Context) error {
	raw, err := l.enter("upgrade")
	if err != nil {
		return err
	}
	defer l.leave()
	return l.waitContext(ctx, "upgrade", raw, func() C.int {
		return C.ipl_upgrade(raw, C.IPL_WAIT_FOREVER)
	})
}

func (l *Lock) upgrade(d time.Duration) (bool, error) {
	raw, err := l.enter("upgrade")
	if err != nil {
		return false, err
	}
	defer l.leave()
	switch status := C.ipl_upgrade(raw, timeoutMs(d)); status {
	case C.IPL_OK:
		return true, nil
	case C.IPL_E_TIMEOUT:
		return false, nil
	default:
		return false, l.fail("upgrade", raw, status)
	}
}

// Remove deletes the lock file while this Lock holds it exclusive, then
// releases the lock (ipl_remove), so that nothing is left behind; a later
// Lock creates the file again. A Lock waiting elsewhere ends up locking the
// file the path names next. Remove only lock files that fasteners processes
// do not use (ipl.h says why). StatusNotHeld unless the Lock holds it
// exclusive; StatusAccess when the file may not be removed (the lock is
// then kept).
func (l *Lock) Remove() error {
	raw, err := l.enter("remove")
	if err != nil {
		return err
	}
	defer l.leave()
	if status := C.ipl_remove(raw); status != C.IPL_OK {
		return l.fail("remove", raw, status)
	}
	return nil
}

// Check says whether the lock this Lock holds is still held (ipl_check):
// it asks the OS (on a network file system, the server) and checks that
// the path still names the locked file. It never waits for the lock, but
// an unreachable server can keep it waiting until the file system gives
// up. An error matching StatusLost means the lock is gone (the Lock then
// holds nothing; lock again); StatusNotHeld that the Lock holds none;
// StatusWouldDeadlock that another goroutine is acquiring on it.
func (l *Lock) Check() error {
	raw, err := l.enter("check")
	if err != nil {
		return err
	}
	defer l.leave()
	if status := C.ipl_check(raw); status != C.IPL_OK {
		return l.fail("check", raw, status)
	}
	return nil
}

// WaitSignal is the signal libipl's timed waits use, or 0 when they poll.
func WaitSignal() int { return int(C.ipl_wait_signal()) }

// SetWaitSignal chooses the signal for timed waits (ipl_set_wait_signal):
// WaitSignalAuto picks one, 0 makes timed waits poll, n > 0 uses signal n.
func SetWaitSignal(signo int) error {
	if status := C.ipl_set_wait_signal(C.int(signo)); status != C.IPL_OK {
		return &Error{Op: "set wait signal", Path: fmt.Sprint(signo), Status: Status(status)}
	}
	return nil
}

// WaitSignalAuto lets libipl pick the wait signal.
const WaitSignalAuto = int(C.IPL_WAIT_SIGNAL_AUTO)

// Version is the version of the libipl actually loaded.
func Version() string { return C.GoString(C.ipl_version_string()) }

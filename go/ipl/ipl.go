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
// runtime replaces while it waits.
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

// contextSlice is the longest single wait of LockContext: how late a
// cancelled context is noticed at worst. libipl has no way yet to end a
// wait from outside (ipl_cancel will be one); until then each slice is a
// kernel wait, so the lock is still taken the moment it is released.
const contextSlice = 20 * time.Millisecond

// Lock is one open lock file. Its methods may be called from any
// goroutine; Close waits for none of them (see Close).
type Lock struct {
	path string

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
	return &Error{Op: op, Path: l.path, Status: Status(status), OSError: int(C.ipl_os_error(raw))}
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

// acquireContext waits in slices until acquired, an error, or ctx is done.
func (l *Lock) acquireContext(ctx context.Context, op string, shared bool) error {
	if ctx.Done() == nil { // never cancelled: one kernel wait
		_, err := l.acquire(op, shared, WaitForever)
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		slice := contextSlice
		if deadline, ok := ctx.Deadline(); ok {
			if left := time.Until(deadline); left < slice {
				slice = left
			}
			if slice < 0 {
				slice = 0
			}
		}
		ok, err := l.acquire(op, shared, slice)
		if ok || err != nil {
			return err
		}
	}
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
// returns ctx.Err() and holds nothing. A cancellation is noticed within
// 20 ms.
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

// RLockContext takes a shared lock, waiting until ctx is done.
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

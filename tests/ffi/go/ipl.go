// Package ipl is libipl for Go: inter-process locks on a lock file, through
// cgo and the C ABI (include/ipl/ipl.h), found with pkg-config.
//
//	lock, err := ipl.Open("/tmp/app.lock")
//	if err != nil { ... }
//	defer lock.Close()
//	ok, err := lock.LockTimeout(2 * time.Second) // ok == false: not in time
//
// A Lock is not tied to a goroutine or an OS thread: Go moves goroutines
// between threads, and libipl lets any thread release what another took.
// Every call blocks its goroutine's OS thread (a cgo call), which the Go
// runtime replaces while it waits.
//
// Timed waits (LockTimeout) need a signal to end a kernel wait at its
// deadline; libipl only takes one whose disposition is still the default.
// The Go runtime handles almost every signal (Go 1.19 leaves signal 34,
// SIGRTMIN, at the default, so libipl takes that one). If none is free, or
// the program later asks os/signal for libipl's signal, timed waits poll
// (capped at 10 ms between tries): LockTimeout still never returns early and
// hands over within milliseconds. Lock (no timeout) sleeps in the kernel.
package ipl

/*
#cgo pkg-config: ipl
#include <stdlib.h>
#include <ipl/ipl.h>
*/
import "C"

import (
	"fmt"
	"time"
	"unsafe"
)

// Status is a libipl status: IPL_OK (0) or a negative IPL_E_* value.
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
func (s Status) String() string {
	return C.GoString(C.ipl_strerror(C.int(s)))
}

// Error is a failed libipl call. errors.Is(err, ipl.StatusNotHeld) and the
// like match on the status.
type Error struct {
	Op      string // "open", "lock", "unlock", ...
	Path    string
	Status  Status
	OSError int // the errno behind an OS-derived status, 0 when none
}

func (e *Error) Error() string {
	text := fmt.Sprintf("ipl: %s %s: %s (status %d)", e.Op, e.Path, e.Status, int(e.Status))
	if e.OSError != 0 {
		text += fmt.Sprintf(" (errno %d)", e.OSError)
	}
	return text
}

// Is makes errors.Is(err, ipl.StatusX) true for an *Error with that status.
func (e *Error) Is(target error) bool {
	status, ok := target.(Status)
	return ok && status == e.Status
}

// Error lets a Status be the target of errors.Is.
func (s Status) Error() string { return s.String() }

// WaitForever is the timeout of Lock and RLock.
const WaitForever = time.Duration(-1)

// Lock is one open lock file. It holds at most one lock, shared or
// exclusive. Close must not race with other calls on the same Lock.
type Lock struct {
	raw  *C.ipl_lock
	path string
}

// Open opens (creating it and any missing parent folders) the lock file at
// path. The Lock holds nothing yet.
func Open(path string) (*Lock, error) {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	var raw *C.ipl_lock
	var osError C.int
	if status := C.ipl_open_ex(cPath, 0, &raw, &osError); status != C.IPL_OK {
		return nil, &Error{Op: "open", Path: path, Status: Status(status), OSError: int(osError)}
	}
	return &Lock{raw: raw, path: path}, nil
}

// Close releases what the Lock holds and closes it. A second Close is a
// no-op.
func (l *Lock) Close() {
	C.ipl_close(l.raw)
	l.raw = nil
}

// timeoutMs rounds up to whole milliseconds, so a wait is never shorter
// than asked; a negative duration waits forever, zero tries once.
func timeoutMs(d time.Duration) C.int64_t {
	if d < 0 {
		return C.IPL_WAIT_FOREVER
	}
	return C.int64_t((d + time.Millisecond - 1) / time.Millisecond)
}

func (l *Lock) check(op string, status C.int) error {
	if status == C.IPL_OK {
		return nil
	}
	return &Error{Op: op, Path: l.path, Status: Status(status), OSError: int(C.ipl_os_error(l.raw))}
}

// acquire: true when acquired, false (and no error) when not in time.
func (l *Lock) acquire(op string, shared bool, d time.Duration) (bool, error) {
	var status C.int
	if shared {
		status = C.ipl_acquire_read(l.raw, timeoutMs(d))
	} else {
		status = C.ipl_acquire(l.raw, timeoutMs(d))
	}
	if status == C.IPL_E_TIMEOUT {
		return false, nil
	}
	return status == C.IPL_OK, l.check(op, status)
}

// Lock takes the exclusive lock, waiting as long as it takes.
func (l *Lock) Lock() error {
	_, err := l.acquire("lock", false, WaitForever)
	return err
}

// TryLock takes the exclusive lock if it is free now.
func (l *Lock) TryLock() (bool, error) { return l.acquire("trylock", false, 0) }

// LockTimeout takes the exclusive lock, waiting at most d.
func (l *Lock) LockTimeout(d time.Duration) (bool, error) {
	if d < 0 {
		d = 0
	}
	return l.acquire("lock", false, d)
}

// Unlock releases the exclusive lock.
func (l *Lock) Unlock() error { return l.check("unlock", C.ipl_release(l.raw)) }

// RLock takes the shared (read) lock, waiting as long as it takes.
func (l *Lock) RLock() error {
	_, err := l.acquire("rlock", true, WaitForever)
	return err
}

// TryRLock takes the shared lock if it can be had now.
func (l *Lock) TryRLock() (bool, error) { return l.acquire("tryrlock", true, 0) }

// RLockTimeout takes the shared lock, waiting at most d.
func (l *Lock) RLockTimeout(d time.Duration) (bool, error) {
	if d < 0 {
		d = 0
	}
	return l.acquire("rlock", true, d)
}

// RUnlock releases the shared lock.
func (l *Lock) RUnlock() error { return l.check("runlock", C.ipl_release_read(l.raw)) }

// WaitSignal is the signal libipl's timed waits use, or 0 when they poll
// (always 0 inside a Go program: the runtime handles every signal).
func WaitSignal() int { return int(C.ipl_wait_signal()) }

// SetWaitSignal asks libipl to use signal signo for timed waits (0: poll).
func SetWaitSignal(signo int) error {
	if status := C.ipl_set_wait_signal(C.int(signo)); status != C.IPL_OK {
		return &Error{Op: "set wait signal", Path: fmt.Sprint(signo), Status: Status(status)}
	}
	return nil
}

// Version is the version of the libipl actually loaded.
func Version() string { return C.GoString(C.ipl_version_string()) }

// Package throwaway starts real, disposable PostgreSQL and Redis servers for
// end-to-end tests and the demo. Each server runs from the Debian packages'
// binaries on a free loopback port, keeps all its state in one directory and
// is gone after Close.
package throwaway

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// installHint tells the reader how to get a missing server binary.
const installHint = "`.ci/run` and `make` install the Debian packages postgresql and redis-server (apt-get install postgresql redis-server)"

// startTimeout bounds how long a server may take to accept connections.
const startTimeout = 60 * time.Second

// FreePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the caller binds it; callers that can retry do.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// refuseUnderShort fails a start from a test binary run with -short: the
// fast tier (go test -short ./...) promises to need no servers, so a test
// that forgot to skip under testing.Short() fails, saying so, rather than
// quietly making the tier slow. flag.Lookup, not testing.Short, keeps the
// testing package out of the programs that use this package.
func refuseUnderShort(what string) error {
	if f := flag.Lookup("test.short"); f != nil && f.Value.String() == "true" {
		return fmt.Errorf("throwaway: not starting %s under go test -short (the fast tier needs no servers): "+
			"skip the test when testing.Short()", what)
	}
	return nil
}

// process is a running server child with a single waiter, so that Stop,
// Kill and readiness checks can all learn when it exits.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // cmd.Wait's result, valid after done is closed
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process; an already exited process is not an error.
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("send %v to pid %d: %w", sig, p.cmd.Process.Pid, err)
	}
	return nil
}

// stop sends sig and waits for the exit. If ctx ends first it escalates to
// SIGKILL, because leaving a server behind is worse than an unclean stop.
func (p *process) stop(ctx context.Context, sig syscall.Signal) error {
	if err := p.signal(sig); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	// The whole group, so that no child of the server survives it.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("pid %d did not exit after %v, killed it: %w", p.cmd.Process.Pid, sig, ctx.Err())
}

// sysProcAttr puts a server in its own process group, so a Ctrl-C aimed at
// the test or demo does not reach it before the owner shuts it down in
// order, and asks the kernel to send deathSig if the owner dies without
// cleaning up.
func sysProcAttr(deathSig syscall.Signal, cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: cred}
}

// logTail returns the last n lines of a log file, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logContains reports whether the log file mentions s.
func logContains(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

// waitReady polls ready until it succeeds, the process exits, or the
// deadline passes.
func waitReady(parent context.Context, p *process, what string, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, startTimeout)
	defer cancel()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		last = ready(attempt)
		cancelAttempt()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before accepting connections: %v", what, p.err)
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("waiting for %s to accept connections: %w", what, parent.Err())
			}
			return fmt.Errorf("%s did not accept connections within %v: %w (last attempt: %v)", what, startTimeout, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// closeOnce is shared by servers whose Close must be safe to call twice.
type closeOnce struct {
	once sync.Once
	err  error
}

func (c *closeOnce) do(f func() error) error {
	c.once.Do(func() { c.err = f() })
	return c.err
}

package throwaway

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a throwaway redis-server without persistence: every start,
// including Restart, begins with an empty dataset.
type Redis struct {
	extra   []string // more redis-server arguments, e.g. TLS settings
	conf    string   // a config file, first argument (sentinels need one they can rewrite)
	dir     string
	logPath string
	bin     string
	port    int
	tlsPort int // 0 unless started with RedisTLS (see RedisTLS.nodeArgs)
	proc    *process
	hold    *portHold // the port while stopped (see holdPort)
	closed  closeOnce
}

// StartRedis starts redis-server on a free loopback port with its working
// directory and log in dir; extraArgs are appended to its command line
// (e.g. --tls-port and certificate files; the plain port stays open).
func StartRedis(ctx context.Context, dir string, extraArgs ...string) (*Redis, error) {
	return startRedis(ctx, dir, 0, "", extraArgs)
}

// startRedis starts redis-server on port (0: a free one), with conf (if
// not empty) as its config file.
func startRedis(ctx context.Context, dir string, port int, conf string, extraArgs []string) (*Redis, error) {
	if err := refuseUnderShort("redis-server"); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server binary missing: %w; %s", err, installHint)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	r := &Redis{dir: dir, logPath: filepath.Join(dir, "redis.log"), bin: bin, extra: extraArgs, conf: conf}
	if port != 0 {
		r.port = port
		if err := r.start(ctx); err != nil {
			return nil, err
		}
		return r, nil
	}
	// Retry with a fresh port if another process took ours in the meantime.
	for attempt := 0; ; attempt++ {
		if r.port, err = FreePort(); err != nil {
			return nil, err
		}
		err = r.start(ctx)
		if err == nil {
			return r, nil
		}
		if attempt >= 2 || !logContains(r.logPath, "Address already in use") {
			return nil, err
		}
	}
}

func (r *Redis) start(ctx context.Context) error {
	r.hold.release()
	r.hold = nil
	logFile, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("redis log: %w", err)
	}
	defer logFile.Close()
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		// A replica syncs at once instead of after the default 5s wait for
		// more replicas to share the transfer.
		"--repl-diskless-sync-delay", "0",
		"--dir", r.dir,
		"--daemonize", "no",
	)
	cmd := exec.Command(r.bin, append(args, r.extra...)...)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr(syscall.SIGKILL, nil)
	proc, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	r.proc = proc
	err = waitReady(ctx, proc, "redis-server", func(ctx context.Context) error {
		c := r.Client()
		defer c.Close()
		return c.Ping(ctx).Err()
	})
	if err != nil {
		_ = proc.stop(context.Background(), syscall.SIGKILL)
		return fmt.Errorf("%w\nredis log %s (tail):\n%s", err, r.logPath, logTail(r.logPath, 30))
	}
	return nil
}

// Addr is host:port of the server.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Port is the server's TCP port; it stays the same across restarts.
func (r *Redis) Port() int { return r.port }

// TLSAddr is host:port of the TLS port of a node started with RedisTLS
// ("" otherwise).
func (r *Redis) TLSAddr() string {
	if r.tlsPort == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(r.tlsPort)
}

// peerPort is the port other nodes reach this one on: the TLS port when
// the nodes speak TLS to each other.
func (r *Redis) peerPort() int {
	if r.tlsPort != 0 {
		return r.tlsPort
	}
	return r.port
}

// peerAddr is host:port of peerPort, as sentinels report it.
func (r *Redis) peerAddr() string { return "127.0.0.1:" + strconv.Itoa(r.peerPort()) }

// URL is a redis:// URL for database 0.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// LogPath is the server's log file.
func (r *Redis) LogPath() string { return r.logPath }

// Client returns a new client for database 0; the caller closes it.
func (r *Redis) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr()})
}

// Running reports whether the server is up.
func (r *Redis) Running() bool { return r.proc != nil && !r.proc.exited() }

// Stop shuts the server down with SIGTERM and waits.
func (r *Redis) Stop() error {
	if !r.Running() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.proc.stop(ctx, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop redis: %w", err)
	}
	r.hold = holdPort(r.port)
	return nil
}

// Kill crashes the server with SIGKILL and waits for it to be gone.
func (r *Redis) Kill() error {
	if !r.Running() {
		return nil
	}
	if err := r.proc.stop(context.Background(), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill redis: %w", err)
	}
	r.hold = holdPort(r.port)
	return nil
}

// Restart stops the server if it is running and starts it again, empty, on
// the same port.
func (r *Redis) Restart(ctx context.Context) error {
	if err := r.Stop(); err != nil {
		return err
	}
	return r.start(ctx)
}

// Close stops the server and removes its directory. It is safe to call more
// than once.
func (r *Redis) Close() error {
	return r.closed.do(func() error {
		stopErr := r.Stop()
		r.hold.release()
		r.hold = nil
		rmErr := os.RemoveAll(r.dir)
		if rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			rmErr = fmt.Errorf("remove redis dir: %w", rmErr)
		}
		return errors.Join(stopErr, rmErr)
	})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walbust/walbust/internal/throwaway"
)

const (
	slot          = "walbust_sandbox"
	publication   = "walbust_sandbox"
	eventsChannel = "walbust:events"
	// readyTimeout bounds the wait for walbust's /readyz after it starts.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds walbust's exit after SIGTERM; its own
	// shutdown_timeout (set to 10s below) comes first.
	stopTimeout = 20 * time.Second
)

// cleanups run in reverse order of registration, collecting errors.
type cleanups []func() error

func (c *cleanups) add(f func() error) { *c = append(*c, f) }

func (c cleanups) run() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i]())
	}
	return errors.Join(errs...)
}

// run starts everything, reports it, waits for a stop, and stops
// everything. Its error is the reason the sandbox failed; nil after a
// requested stop that went cleanly.
func run(ctx context.Context, o *options, stdout io.Writer) (err error) {
	root, err := o.resolve(ctx)
	if err != nil {
		return err
	}
	var undo cleanups
	defer func() {
		progress("stopping")
		if cerr := undo.run(); cerr != nil {
			err = errors.Join(err, cerr)
		} else if err == nil {
			progress("stopped cleanly")
		}
	}()
	if o.envFile != "" {
		// A file left by an earlier run must not pass for this one's.
		if err := removeIfExists(o.envFile); err != nil {
			return fmt.Errorf("--env-file: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "walbust-sandbox-")
	if err != nil {
		return err
	}
	undo.add(func() error { return removeIfExists(tmp) })
	// As root, PostgreSQL runs as the postgres user, which must be able to
	// pass through this directory to its own.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}
	progress("working directory %s", tmp)

	binary := o.walbust
	if binary == "" {
		binary = filepath.Join(tmp, "walbust")
		progress("building walbust (go build ./cmd/walbust in %s)", root)
		build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/walbust")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			return stopped(ctx, fmt.Errorf("go build ./cmd/walbust: %w\n%s", err, out))
		}
	}

	progress("starting PostgreSQL")
	// synchronous_commit=on: otherwise a commit reaches walbust only at the
	// WAL writer's next flush (200ms); with fsync off it costs nothing.
	pg, err := throwaway.StartPostgres(ctx, filepath.Join(tmp, "postgres"), throwaway.WithSetting("synchronous_commit", "on"))
	if err != nil {
		return stopped(ctx, fmt.Errorf("start PostgreSQL: %w", err))
	}
	undo.add(closer("PostgreSQL", pg.Close))
	schema, err := os.ReadFile(o.schema)
	if err != nil {
		return fmt.Errorf("--schema: %w", err)
	}
	if err := pg.CreateDatabase(ctx, o.database); err != nil {
		return stopped(ctx, err)
	}
	if err := pg.Exec(ctx, o.database, string(schema)); err != nil {
		return stopped(ctx, fmt.Errorf("apply %s: %w", o.schema, err))
	}
	progress("PostgreSQL on port %d, database %s, %s applied", pg.Port(), o.database, filepath.Base(o.schema))

	vars := []envVar{{"POSTGRES_URL", pg.URL(o.database)}}
	var replicaURL string
	if o.replica {
		progress("starting a streaming replica of PostgreSQL")
		var opts []throwaway.PostgresOption
		if o.replicaDelay > 0 {
			opts = append(opts, throwaway.WithSetting("recovery_min_apply_delay", strconv.FormatInt(o.replicaDelay.Milliseconds(), 10)+"ms"))
		}
		rep, err := throwaway.StartReplica(ctx, filepath.Join(tmp, "replica"), pg, opts...)
		if err != nil {
			return stopped(ctx, fmt.Errorf("start the replica: %w", err))
		}
		undo.add(closer("the replica", rep.Close))
		replicaURL = rep.URL(o.database)
		vars = append(vars, envVar{"REPLICA_URL", replicaURL})
		progress("replica on port %d", rep.Port())
	}

	var redisURL string
	vars = append(vars, envVar{"REDIS_MODE", o.redisMode})
	if o.redisMode == "cluster" {
		progress("starting a Redis Cluster (3 masters)")
		rc, err := throwaway.StartRedisCluster(ctx, filepath.Join(tmp, "redis-cluster"), 3, 0)
		if err != nil {
			return stopped(ctx, fmt.Errorf("start the Redis Cluster: %w", err))
		}
		undo.add(closer("the Redis Cluster", rc.Close))
		redisURL = rc.URL()
		vars = append(vars, envVar{"REDIS_CLUSTER", strings.Join(rc.Addrs(), ",")})
		progress("Redis Cluster nodes %s", strings.Join(rc.Addrs(), " "))
	} else {
		progress("starting redis-server")
		rds, err := throwaway.StartRedis(ctx, filepath.Join(tmp, "redis"))
		if err != nil {
			return stopped(ctx, fmt.Errorf("start redis-server: %w", err))
		}
		undo.add(closer("redis-server", rds.Close))
		redisURL = rds.URL()
		vars = append(vars, envVar{"REDIS_URL", redisURL})
		progress("redis-server on port %d", rds.Port())
	}

	configPath := filepath.Join(tmp, "walbust.yaml")
	if err := os.WriteFile(configPath, []byte(walbustConfig(pg.URL(o.database), o.redisMode, redisURL, o.deps, replicaURL)), 0o644); err != nil {
		return err
	}
	progress("walbust setup --config %s", configPath)
	setup := exec.CommandContext(ctx, binary, "setup", "--config", configPath)
	if out, err := setup.CombinedOutput(); err != nil {
		return stopped(ctx, fmt.Errorf("walbust setup: %w\n%s", err, out))
	}

	logPath := filepath.Join(tmp, "walbust.log")
	progress("walbust run --config %s (log %s)", configPath, logPath)
	wb, err := startWalbust(binary, configPath, logPath)
	if err != nil {
		return err
	}
	undo.add(wb.stop)
	metricsURL, err := wb.waitReady(ctx)
	if err != nil {
		return stopped(ctx, err)
	}

	vars = append(vars,
		envVar{"EVENTS_CHANNEL", eventsChannel},
		envVar{"SLOT", slot},
		envVar{"METRICS_URL", metricsURL},
		envVar{"LOG", logPath},
		envVar{"PID", strconv.Itoa(os.Getpid())},
		envVar{"READY", "1"},
	)
	text, err := formatVars(vars)
	if err != nil {
		return err
	}
	if o.envFile != "" {
		if err := writeAtomically(o.envFile, text); err != nil {
			return fmt.Errorf("--env-file: %w", err)
		}
		undo.add(func() error { return removeIfExists(o.envFile) })
	}
	if _, err := io.WriteString(stdout, text); err != nil {
		return fmt.Errorf("write to stdout: %w", err)
	}
	progress("ready (walbust pid %d); stop with Ctrl-C, SIGTERM or by closing stdin", wb.cmd.Process.Pid)

	select {
	case <-ctx.Done():
		return nil
	case <-wb.done:
		return fmt.Errorf("walbust run exited by itself (%v); its log %s ends:\n%s", wb.cmd.ProcessState, logPath, tail(logPath, 30))
	}
}

// stopped replaces err with a plainer message when it came from a
// requested stop during start-up.
func stopped(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStop) {
		return errors.New("stopped before walbust was ready")
	}
	return err
}

func closer(what string, f func() error) func() error {
	return func() error {
		if err := f(); err != nil {
			return fmt.Errorf("stop %s: %w", what, err)
		}
		return nil
	}
}

// walbustConfig is the generated walbust.yaml; paths are absolute.
func walbustConfig(pgURL, redisMode, redisURL, deps, replicaURL string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `postgres:
  url: %q
  slot: %s
  publication: %s
  status_interval: 1s
redis:
  mode: %s
  url: %q
`, pgURL, slot, publication, redisMode, redisURL)
	if redisMode == "cluster" {
		// The cluster's masters have no replicas to wait for.
		b.WriteString("  wait_replicas: 0\n")
	}
	fmt.Fprintf(&b, `deps: %q
checkpoint:
  path: checkpoint
events:
  channel: %q
log:
  format: json
  level: info
shutdown_timeout: 10s
# Port 0: any free port; the address is read back from the log.
listen: 127.0.0.1:0
`, deps, eventsChannel)
	if replicaURL != "" {
		fmt.Fprintf(&b, "replicas:\n  urls: [%q]\n", replicaURL)
	}
	return b.String()
}

// envVar is one output line, WALBUST_SANDBOX_<name>=<value>.
type envVar struct{ name, value string }

// safeValue is what a value may hold so that the line means the same to
// a POSIX shell (source, eval) and to a parser that splits at the first
// '=': no quoting is ever needed.
var safeValue = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./?~-]*$`)

func formatVars(vars []envVar) (string, error) {
	var b strings.Builder
	for _, v := range vars {
		if !safeValue.MatchString(v.value) {
			return "", fmt.Errorf("WALBUST_SANDBOX_%s=%s would need shell quoting (a space or special character, e.g. in TMPDIR): "+
				"set TMPDIR to a plain path", v.name, v.value)
		}
		fmt.Fprintf(&b, "WALBUST_SANDBOX_%s=%s\n", v.name, v.value)
	}
	return b.String(), nil
}

// writeAtomically writes text to a temporary file next to path and renames
// it into place, so a reader sees no file or the whole file.
func writeAtomically(path, text string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.WriteString(text)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr, os.Chmod(tmp, 0o644)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.RemoveAll(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// walbust is the running `walbust run`.
type walbust struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	stopped bool
}

func startWalbust(binary, configPath, logPath string) (*walbust, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "run", "--config", configPath)
	cmd.Dir = filepath.Dir(configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so a Ctrl-C reaches only the sandbox, which
	// then stops walbust first; and it dies if the sandbox is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start walbust run: %w", err)
	}
	w := &walbust{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(w.done)
	}()
	return w, nil
}

// waitReady waits for the "serving metrics" log line, then for GET /readyz
// to answer 200, and returns the metrics base URL.
func (w *walbust) waitReady(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	base, last := "", "no \"serving metrics\" line in the log yet"
	for {
		if base == "" {
			if addr := metricsAddr(w.logPath); addr != "" {
				base = "http://" + addr
			}
		}
		if base != "" {
			resp, err := client.Get(base + "/readyz")
			if err == nil {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return base, nil
				}
				last = fmt.Sprintf("GET /readyz = %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
			} else {
				last = err.Error()
			}
		}
		select {
		case <-w.done:
			return "", fmt.Errorf("walbust run exited before it was ready (%v); its log %s ends:\n%s", w.cmd.ProcessState, w.logPath, tail(w.logPath, 30))
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("walbust was not ready within %v (last: %s); its log %s ends:\n%s", readyTimeout, last, w.logPath, tail(w.logPath, 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metricsAddr finds the addr of the first "serving metrics" JSON log line.
func metricsAddr(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte("serving metrics")) {
			continue
		}
		var entry struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Msg == "serving metrics" && entry.Addr != "" {
			return entry.Addr
		}
	}
	return ""
}

// stop sends SIGTERM and waits; walbust must exit 0. Safe to call twice.
func (w *walbust) stop() error {
	if w.stopped {
		return nil
	}
	w.stopped = true
	select {
	case <-w.done:
		return nil // it exited by itself, which was reported as the failure
	default:
	}
	progress("stopping walbust (SIGTERM to pid %d)", w.cmd.Process.Pid)
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGTERM walbust: %w", err)
	}
	select {
	case <-w.done:
	case <-time.After(stopTimeout):
		_ = w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("walbust did not exit within %v of SIGTERM; killed it", stopTimeout)
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("walbust exited with code %d after SIGTERM, want 0; its log ends:\n%s", code, tail(w.logPath, 20))
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

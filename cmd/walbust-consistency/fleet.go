package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walbust/walbust/replication/wal"
)

// The fenced readers in Python and Node are processes of their own
// (clients/python/tests/consistency_reader.py, clients/node/test/
// consistency-reader.mjs) reading the same keys as the Go readers, at the
// same time. Each reports its reads on stdout, one JSON object a line;
// the harness judges them against the history as it judges its own.
// Their loaders read the database through a loopback HTTP endpoint of the
// harness (the clients have no Postgres driver: they depend on redis-py
// and ioredis only), which also records the fence LSN each load observed.

var langs = []string{"go", "python", "node"}

func parseLangs(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(s, ",") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		ok := false
		for _, k := range langs {
			ok = ok || k == l
		}
		if !ok {
			return nil, fmt.Errorf("unknown language %q (want go, python, node)", l)
		}
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no language given")
	}
	return out, nil
}

// preflight checks that the readers of each language can run, building
// the Node client when its dist/ is missing or older than its sources.
// Missing pieces are errors, with what to install.
func preflight(ctx context.Context, cfg config, root string, logf func(string, ...any)) error {
	for _, l := range cfg.Langs {
		switch l {
		case "python":
			script := filepath.Join(root, "clients/python/tests/consistency_reader.py")
			if _, err := os.Stat(script); err != nil {
				return fmt.Errorf("python readers: %w", err)
			}
			check := exec.CommandContext(ctx, cfg.Python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import redis, walbust_cache",
				filepath.Join(root, "clients/python"))
			if out, err := check.CombinedOutput(); err != nil {
				return fmt.Errorf("python readers: %s cannot import redis and walbust_cache (Debian: apt-get install python3-redis; `make deps`): %v\n%s",
					cfg.Python, err, strings.TrimSpace(string(out)))
			}
		case "node":
			if err := ensureNodeClient(ctx, filepath.Join(root, "clients/node"), cfg.Node, logf); err != nil {
				return fmt.Errorf("node readers: %w", err)
			}
		}
	}
	return nil
}

// ensureNodeClient runs npm ci (when node_modules is missing or older than
// package-lock.json) and npm run build (when dist/ is missing or older
// than src/), under the lock `make test-node` builds under too.
func ensureNodeClient(ctx context.Context, dir, node string, logf func(string, ...any)) error {
	if _, err := exec.LookPath(node); err != nil {
		return fmt.Errorf("%s not found: install Node.js >= 20 and npm (Debian: apt-get install nodejs npm)", node)
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "walbust-node-build.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	mtime := func(p string) time.Time {
		st, err := os.Stat(p)
		if err != nil {
			return time.Time{}
		}
		return st.ModTime()
	}
	newest := func(glob string) time.Time {
		var t time.Time
		files, _ := filepath.Glob(filepath.Join(dir, glob))
		for _, f := range files {
			if m := mtime(f); m.After(t) {
				t = m
			}
		}
		return t
	}
	npm := func(args ...string) error {
		if _, err := exec.LookPath("npm"); err != nil {
			return errors.New("npm not found (Debian: apt-get install npm); or build it yourself: cd clients/node && npm ci && npm run build")
		}
		logf("clients/node: npm %s", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "npm", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("npm %s in %s: %w\n%s", strings.Join(args, " "), dir, err, tail(string(out), 20))
		}
		return nil
	}
	installed := mtime(filepath.Join(dir, "node_modules/.package-lock.json"))
	if installed.IsZero() || installed.Before(mtime(filepath.Join(dir, "package-lock.json"))) {
		if err := npm("ci", "--no-audit", "--no-fund"); err != nil {
			return err
		}
	}
	built := mtime(filepath.Join(dir, "dist/index.js"))
	if built.IsZero() || built.Before(newest("src/*.ts")) || built.Before(newest("../../protocol/lua/*.lua")) {
		if err := npm("run", "build"); err != nil {
			return err
		}
	}
	if mtime(filepath.Join(dir, "dist/index.js")).IsZero() {
		return fmt.Errorf("%s/dist/index.js missing after npm run build", dir)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// loadServer answers the subprocess readers' loads: GET
// /load?db=primary|replica&id=N&fence=LSN returns the row's val, read then
// from that database, and records (for the primary) the fence LSN the
// load had observed, as the Go readers' loader does.
type loadServer struct {
	srv *http.Server
	url string
}

func (w *workload) startLoadServer() (*loadServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/load", func(rw http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		id, err := strconv.Atoi(q.Get("id"))
		if err != nil || id < 1 || id > w.cfg.Rows {
			http.Error(rw, "bad id", http.StatusBadRequest)
			return
		}
		fence, err := strconv.ParseUint(q.Get("fence"), 10, 64)
		if err != nil {
			http.Error(rw, "bad fence", http.StatusBadRequest)
			return
		}
		var db *pgxpool.Pool
		switch q.Get("db") {
		case "primary":
			db = w.e.primDB
		case "replica":
			db = w.e.replDB
		default:
			http.Error(rw, "bad db", http.StatusBadRequest)
			return
		}
		var v int64
		if err := db.QueryRow(r.Context(), "SELECT val FROM items_fence WHERE id = $1", id).Scan(&v); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		if db == w.e.primDB {
			w.hist.loaded(id, v, wal.LSN(fence))
		}
		_, _ = io.WriteString(rw, strconv.FormatInt(v, 10))
	})
	s := &loadServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, url: "http://" + ln.Addr().String() + "/load"}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *loadServer) close() { _ = s.srv.Close() }

// readerProc is one reader process of one group.
type readerProc struct {
	g     *group
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string
	ready chan struct{}
	done  chan struct{} // stdout drained and the process reaped
	err   error         // how it ended (after done)

	mu       sync.Mutex
	firstErr string
	stats    *readerStats
}

type readerLine struct {
	Ready bool         `json:"ready"`
	ID    int          `json:"id"`
	T     int64        `json:"t"`
	V     *int64       `json:"v"`
	Err   string       `json:"err"`
	Stats *readerStats `json:"stats"`
}

type readerStats struct {
	Loads     int64 `json:"loads"`
	FillsLost int64 `json:"fills_lost"`
}

// startProcs starts cfg.Procs processes for each group of a subprocess
// language and waits until all of them are connected.
func (w *workload) startProcs(ctx context.Context) error {
	var need bool
	for _, g := range w.groups {
		need = need || g.lang == "python" || g.lang == "node"
	}
	if !need {
		return nil
	}
	var err error
	if w.loads, err = w.startLoadServer(); err != nil {
		return err
	}
	per := max(1, (w.cfg.Readers+w.cfg.Procs-1)/w.cfg.Procs)
	for _, g := range w.groups {
		if g.lang != "python" && g.lang != "node" {
			continue
		}
		db := "primary"
		if g.replica {
			db = "replica"
		}
		args := []string{"--redis", w.e.redis.URL(), "--load", w.loads.url + "?db=" + db, "--prefix", g.prefix,
			"--rows", strconv.Itoa(w.cfg.Rows), "--readers", strconv.Itoa(per),
			"--stall", strconv.FormatFloat(w.cfg.Stall.Seconds(), 'f', -1, 64), "--lang", g.lang}
		for i := range w.cfg.Procs {
			var exe string
			var argv []string
			if g.lang == "python" {
				exe, argv = w.cfg.Python, append([]string{filepath.Join(w.e.root, "clients/python/tests/consistency_reader.py")}, args...)
			} else {
				exe, argv = w.cfg.Node, append([]string{filepath.Join(w.e.root, "clients/node/test/consistency-reader.mjs")}, args...)
			}
			p, err := w.spawn(g, fmt.Sprintf("%s-%s-%d", g.lang, db, i), exe, argv)
			if err != nil {
				return err
			}
			w.procs = append(w.procs, p)
		}
	}
	deadline := time.After(60 * time.Second)
	for _, p := range w.procs {
		select {
		case <-p.ready:
		case <-p.done:
			return fmt.Errorf("%s reader %s exited before it was ready (%v):\n%s", p.g.lang, p.name, p.err, p.logTail())
		case <-deadline:
			return fmt.Errorf("%s reader %s not ready within 60s:\n%s", p.g.lang, p.name, p.logTail())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (w *workload) spawn(g *group, name, exe string, argv []string) (*readerProc, error) {
	p := &readerProc{g: g, name: name, log: filepath.Join(w.e.work, name+".log"), ready: make(chan struct{}), done: make(chan struct{})}
	logFile, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	p.cmd = exec.Command(exe, argv...)
	p.cmd.Dir = w.e.root
	p.cmd.Stderr = logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s reader: %w", g.lang, err)
	}
	go func() {
		defer close(p.done)
		perr := w.consume(p, stdout)
		p.err = p.cmd.Wait()
		if p.err == nil && perr != nil {
			p.err = perr
		}
	}()
	return p, nil
}

// consume parses a reader process's stdout until it closes.
func (w *workload) consume(p *readerProc, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var bad error
	ready := false
	for sc.Scan() {
		var l readerLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			if bad == nil {
				bad = fmt.Errorf("unparsable line %q: %v", sc.Text(), err)
			}
			continue
		}
		switch {
		case l.Ready:
			if !ready {
				ready = true
				close(p.ready)
			}
		case l.Stats != nil:
			p.mu.Lock()
			p.stats = l.Stats
			p.mu.Unlock()
		case l.Err != "":
			p.g.errors.Add(1)
			p.mu.Lock()
			if p.firstErr == "" {
				p.firstErr = l.Err
			}
			p.mu.Unlock()
		case l.V != nil && l.ID >= 1 && l.ID <= w.cfg.Rows:
			w.record(p.g, l.ID, time.UnixMicro(l.T), *l.V)
		default:
			if bad == nil {
				bad = fmt.Errorf("unexpected line %q", sc.Text())
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return bad
}

func (p *readerProc) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), 20)
}

// procsExited reports a reader process that ended before it was told to.
func (w *workload) procsExited() error {
	for _, p := range w.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s reader %s exited mid-run (%v):\n%s", p.g.lang, p.name, p.err, p.logTail())
		default:
		}
	}
	return nil
}

// stopProcs closes the readers' stdin (their signal to stop), waits for
// them to report their counters and exit, and stops the load endpoint.
func (w *workload) stopProcs() error {
	var errs []error
	for _, p := range w.procs {
		_ = p.stdin.Close()
	}
	for _, p := range w.procs {
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			errs = append(errs, fmt.Errorf("%s reader %s did not stop within 60s of end of input", p.g.lang, p.name))
			continue
		}
		if p.err != nil {
			errs = append(errs, fmt.Errorf("%s reader %s: %v\n%s", p.g.lang, p.name, p.err, p.logTail()))
		}
	}
	if w.loads != nil {
		w.loads.close()
		w.loads = nil
	}
	w.procs, w.stopped = nil, append(w.stopped, w.procs...)
	return errors.Join(errs...)
}

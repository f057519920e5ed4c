package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

// Helpers for the operability tests: configs that vary what newEnv writes,
// scraping the daemon's HTTP endpoints, dedicated servers for tests that
// must stop or reconfigure them, and certificates made on the spot.

// opsConfig is what a test changes in walbust.yaml; the rest is what newEnv
// writes (status_interval 200ms, debug logs, checkpoint next to the config).
type opsConfig struct {
	pgURL      string // default: the shared cluster, as superuser
	redisURL   string // default: the shared Redis
	listen     string // default: 127.0.0.1:0
	heartbeat  string // postgres.heartbeat_interval; "" leaves the default
	pgExtra    []string
	redisExtra []string
	extra      []string // top-level YAML lines
	checkpoint []string // lines under checkpoint:, after its path
}

// opsWriteConfig replaces walbust.yaml. Strings are double-quoted, so URLs with
// ?, & or # need no care.
func (e *env) opsWriteConfig(c opsConfig) {
	e.t.Helper()
	if c.pgURL == "" {
		c.pgURL = pg.URL(e.name)
	}
	if c.redisURL == "" {
		c.redisURL = rds.URL()
	}
	if c.listen == "" {
		c.listen = "127.0.0.1:0"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "postgres:\n  url: %s\n  slot: %s\n  publication: %s\n  status_interval: 200ms\n",
		strconv.Quote(c.pgURL), e.name, e.name)
	if c.heartbeat != "" {
		fmt.Fprintf(&b, "  heartbeat_interval: %s\n", c.heartbeat)
	}
	for _, l := range c.pgExtra {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "redis:\n  url: %s\n", strconv.Quote(c.redisURL))
	for _, l := range c.redisExtra {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "deps: deps.yaml\ncheckpoint:\n  path: checkpoint\n")
	for _, l := range c.checkpoint {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "log:\n  level: debug\nlisten: %s\n", strconv.Quote(c.listen))
	for _, l := range c.extra {
		fmt.Fprintf(&b, "%s\n", l)
	}
	e.writeFile("walbust.yaml", b.String())
}

// opsStartServing starts `walbust run` and returns the base URL of its HTTP
// server, read from the "serving metrics" line of this run's log (the
// configs listen on port 0).
func (e *env) opsStartServing() string {
	e.t.Helper()
	var offset int64
	if fi, err := os.Stat(e.logPath); err == nil {
		offset = fi.Size()
	}
	e.start()
	addr := opsMetricsAddr(e.logSince(offset))
	if addr == "" {
		e.t.Fatal(`walbust is streaming but logged no "serving metrics" line with an addr`)
	}
	return "http://" + addr
}

// opsMetricsAddr finds the addr field of the first "serving metrics" line.
func opsMetricsAddr(log string) string {
	for _, line := range strings.Split(log, "\n") {
		var entry struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "serving metrics" {
			return entry.Addr
		}
	}
	return ""
}

// opsLogSize is the current length of the walbust log, to look only at what
// comes after it.
func (e *env) opsLogSize() int64 {
	fi, err := os.Stat(e.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// opsWalbust runs a one-shot command with the test's config and returns
// stdout and stderr apart (status --json must be parseable on its own).
func (e *env) opsWalbust(command string, args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{command, "--config", e.configPath}, args...)...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitCode()
	}
	e.t.Fatalf("walbust %s: %v\n%s%s", command, err, out.String(), errOut.String())
	return "", "", -1
}

// opsRunUntilExit runs `walbust run` in the foreground, for runs that must
// fail. Its output is appended to the walbust log, so it is shown on
// failure and covered by scans of the log.
func (e *env) opsRunUntilExit(timeout time.Duration) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "run", "--config", e.configPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if f, ferr := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
		f.Write(out)
		f.Close()
	}
	if ctx.Err() != nil {
		e.t.Fatalf("walbust run did not exit within %v:\n%s", timeout, out)
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	e.t.Fatalf("walbust run: %v\n%s", err, out)
	return "", -1
}

// opsUseRedis points the test's client at another server.
func (e *env) opsUseRedis(c *redis.Client) {
	e.rdb.Close()
	e.rdb = c
}

// opsSlotConfirmed returns the slot's confirmed_flush_lsn (0 if none).
func (e *env) opsSlotConfirmed() wal.LSN {
	e.t.Helper()
	var text string
	e.queryRow(`SELECT coalesce((SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1), '0/0')`,
		[]any{&text}, e.name)
	return opsLSN(e.t, text)
}

// opsWALInsertLSN is the current WAL insert position: every commit made
// before the call ends at or before it.
func (e *env) opsWALInsertLSN() wal.LSN {
	e.t.Helper()
	var text string
	e.queryRow(`SELECT pg_current_wal_insert_lsn()::text`, []any{&text})
	return opsLSN(e.t, text)
}

func opsLSN(t *testing.T, s string) wal.LSN {
	t.Helper()
	lsn, err := wal.ParseLSN(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return lsn
}

// within polls cond every 100ms (HTTP scrapes and SQL are not free on a
// shared machine) until it holds or timeout passes; cond says what is
// still wrong.
func opsWithin(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var opsHTTP = &http.Client{Timeout: 5 * time.Second}

// get fetches url; err is a transport error (the daemon not answering).
func opsGet(url string) (code int, body string, err error) {
	resp, err := opsHTTP.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// opsSample is one series of a Prometheus text exposition.
type opsSample struct {
	name   string
	labels map[string]string
	value  float64
}

type opsScrape []opsSample

// opsScrapeMetrics fetches and parses base/metrics.
func opsScrapeMetrics(t *testing.T, base string) opsScrape {
	t.Helper()
	code, body, err := opsGet(base + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s/metrics: %d %v\n%s", base, code, err, body)
	}
	s, err := opsParseMetrics(body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return s
}

// opsParseMetrics reads the text format as promhttp writes it: comment lines,
// then `name{k="v",...} value` (no timestamps).
func opsParseMetrics(text string) (opsScrape, error) {
	var out opsScrape
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("line %d: no value: %q", n+1, line)
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value: %v", n+1, err)
		}
		s := opsSample{labels: map[string]string{}, value: v}
		series := line[:sp]
		brace := strings.IndexByte(series, '{')
		if brace < 0 {
			s.name = series
			out = append(out, s)
			continue
		}
		s.name = series[:brace]
		rest := series[brace+1:]
		for {
			rest = strings.TrimLeft(rest, ",")
			if strings.HasPrefix(rest, "}") {
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return nil, fmt.Errorf("line %d: bad labels: %q", n+1, line)
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			i := 0
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[i])
					}
					continue
				}
				val.WriteByte(rest[i])
			}
			if i == len(rest) {
				return nil, fmt.Errorf("line %d: unterminated label value: %q", n+1, line)
			}
			s.labels[key] = val.String()
			rest = rest[i+1:]
		}
		out = append(out, s)
	}
	return out, nil
}

// get sums the series of name whose labels include the given pairs
// (key, value, key, value...); ok is false when none matches.
func (s opsScrape) get(name string, labels ...string) (sum float64, ok bool) {
next:
	for _, m := range s {
		if m.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if m.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		sum += m.value
		ok = true
	}
	return sum, ok
}

// val is get with absent series counting as 0, for counters that appear on
// their first increment.
func (s opsScrape) val(name string, labels ...string) float64 {
	v, _ := s.get(name, labels...)
	return v
}

func (s opsScrape) has(name string) bool {
	_, ok := s.get(name)
	return ok
}

// opsDedicatedPostgres starts a cluster of the test's own, for tests that
// reconfigure authentication or TLS. prepare may write files into the
// cluster's directory (already made, not yet handed to the postgres OS
// user) and returns extra options. The cluster is closed in t.Cleanup.
func opsDedicatedPostgres(t *testing.T, prepare func(dir string) []throwaway.PostgresOption) (*throwaway.Postgres, string) {
	t.Helper()
	// MkdirTemp directly: as root, the postgres user must reach the
	// directory, and t.TempDir's parent is private to root.
	dir, err := os.MkdirTemp("", "walbust-e2e-ops-pg-")
	if err != nil {
		t.Fatal(err)
	}
	var opts []throwaway.PostgresOption
	if prepare != nil {
		opts = prepare(dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := throwaway.StartPostgres(ctx, dir, opts...)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return srv, dir
}

// opsDedicatedRedis starts a Redis of the test's own, for tests that stop
// it or lock it with a password.
func opsDedicatedRedis(t *testing.T, args ...string) *throwaway.Redis {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-e2e-ops-redis-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := throwaway.StartRedis(ctx, dir, args...)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// opsNewEnvOn is newEnv on a dedicated cluster: the database, schema,
// seed and deps.yaml, a superuser connection over srv's plain URL, and the
// shared Redis. It writes no walbust.yaml and runs nothing: the test does,
// once it has set up authentication. The database goes with the cluster.
func opsNewEnvOn(t *testing.T, srv *throwaway.Postgres, o envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, name: identifier(t.Name()), dir: t.TempDir()}
	e.configPath = filepath.Join(e.dir, "walbust.yaml")
	e.checkpoint = filepath.Join(e.dir, "checkpoint")
	e.logPath = filepath.Join(e.dir, "walbust.log")
	if err := srv.CreateDatabase(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile(filepath.Join(repoRoot, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Exec(ctx, e.name, string(schema)+";\n"+o.extraSchema); err != nil {
		t.Fatalf("apply schema: %v", err)
	}
	if o.seed != "" {
		if err := srv.Exec(ctx, e.name, o.seed); err != nil {
			t.Fatalf("seed: %v", err)
		}
	}
	if e.db, err = srv.Connect(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close(context.Background()) })
	deps := o.deps
	if deps == "" {
		b, err := os.ReadFile(filepath.Join(repoRoot, "deps.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		deps = string(b)
	}
	e.writeFile("deps.yaml", deps)
	e.rdb = rds.Client()
	t.Cleanup(func() { e.rdb.Close() })
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.dumpLogOnFailure)
	t.Cleanup(func() {
		if e.proc != nil {
			e.stop()
		}
	})
	return e
}

// opsSetHBA replaces the cluster's pg_hba.conf and reloads it. The reload is
// asked for over srv's plain URL, which the old rules still admit.
func opsSetHBA(t *testing.T, srv *throwaway.Postgres, dir, rules string) {
	t.Helper()
	// Overwriting in place keeps the file's owner (postgres, as root).
	if err := os.WriteFile(filepath.Join(dir, "data", "pg_hba.conf"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Exec(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
		t.Fatalf("reload pg_hba.conf: %v", err)
	}
}

// opsPostgresOwner returns the uid and gid that own a dedicated cluster's
// files: the postgres OS user when running as root (throwaway runs the
// server as that user), else ourselves.
func opsPostgresOwner(t *testing.T) (int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		return os.Getuid(), os.Getgid()
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatal(err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	return uid, gid
}

// opsCA is a certificate authority made for one test.
type opsCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func opsNewCA(t *testing.T, name string) *opsCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          opsSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &opsCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issueServer returns a server certificate for hosts (IP addresses or DNS
// names) and its key, both PEM.
func (ca *opsCA) issueServer(t *testing.T, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: opsSerial(t),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func opsSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// opsRandomHex returns n random bytes as hex: the distinctive core of a secret,
// so a scan finds it however the secret around it was escaped.
func opsRandomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Package deploycheck holds only tests: with no Docker engine at hand, they
// check what can be checked of docker-compose.yml and the Dockerfile without
// one. The files compose mounts exist; the walbust config it mounts loads
// with the real loader (internal/config) and its deps.yaml with the real
// parser, laid out as the containers see them (the offline part of
// `walbust validate`); the config's addresses point at the compose services;
// the Postgres healthcheck goes over TCP; walbust is never restarted forever;
// host ports come from ${VAR:-default}; and demo-reader caches exactly the
// keys walbust invalidates for the rows writer changes.
package deploycheck

import (
	"flag"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/daemon"
	"github.com/walbust/walbust/mapping"
)

// root is the repository, from this package's directory.
const root = "../.."

type composeFile struct {
	Services map[string]*service `yaml:"services"`
	Volumes  map[string]any      `yaml:"volumes"`
}

type service struct {
	name        string
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Restart string `yaml:"restart"`
}

// walbust reports whether the service runs the image built from the Dockerfile.
func (s *service) walbust() bool { return s.Build != nil || s.Image == "walbust:local" }

// mount is one short-syntax volume entry, "source:target[:mode]".
type mount struct{ source, target string }

func (s *service) mounts(t *testing.T) []mount {
	var out []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 {
			t.Errorf("%s: volume %q is not source:target[:mode]", s.name, v)
			continue
		}
		out = append(out, mount{parts[0], parts[1]})
	}
	return out
}

func (m mount) bind() bool {
	return strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/")
}

// configPath is the container path after --config in the command.
func (s *service) configPath() string {
	if i := slices.Index(s.Command, "--config"); i >= 0 && i+1 < len(s.Command) {
		return s.Command[i+1]
	}
	return ""
}

// publishes reports whether a ports entry maps to container port port.
func (s *service) publishes(port string) bool {
	for _, p := range s.Ports {
		if strings.HasSuffix(p, ":"+port) {
			return true
		}
	}
	return false
}

func readCompose(t *testing.T) *composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v (this test reads the list forms of command and volumes, the map form of environment)", err)
	}
	if len(c.Services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	for name, s := range c.Services {
		s.name = name
	}
	return &c
}

// walbustServices are the services running walbust, sorted by name.
func (c *composeFile) walbustServices(t *testing.T) []*service {
	t.Helper()
	var out []*service
	for _, s := range c.Services {
		if s.walbust() {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		t.Fatal("docker-compose.yml: no service runs the walbust image")
	}
	slices.SortFunc(out, func(a, b *service) int { return strings.Compare(a.name, b.name) })
	return out
}

// runService is the service running `walbust run`.
func (c *composeFile) runService(t *testing.T) *service {
	t.Helper()
	for _, s := range c.walbustServices(t) {
		if len(s.Command) > 0 && s.Command[0] == "run" {
			return s
		}
	}
	t.Fatal("docker-compose.yml: no service runs `walbust run`")
	return nil
}

func TestComposeMountsExist(t *testing.T) {
	c := readCompose(t)
	for _, s := range c.Services {
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(root, "Dockerfile")); err != nil {
				t.Errorf("%s: build: %v", s.name, err)
			}
		}
		for _, m := range s.mounts(t) {
			if !m.bind() {
				if _, ok := c.Volumes[m.source]; !ok {
					t.Errorf("%s: named volume %q is not declared under volumes:", s.name, m.source)
				}
				continue
			}
			if filepath.IsAbs(m.source) {
				t.Errorf("%s: %s: mount paths from the repository, relative to docker-compose.yml", s.name, m.source)
				continue
			}
			if _, err := os.Stat(filepath.Join(root, m.source)); err != nil {
				t.Errorf("%s: mounts %s, which is not in the repository: %v", s.name, m.source, err)
			}
		}
	}
}

// loadAsContainer copies the service's bind-mounted files to where the
// container sees them, under a temporary directory, and loads the config
// and deps.yaml from there, as `walbust validate` does before it connects.
func loadAsContainer(t *testing.T, s *service) (*config.Config, *mapping.Registry) {
	t.Helper()
	cfgPath := s.configPath()
	if cfgPath == "" {
		t.Fatalf("%s: no --config in command %q", s.name, s.Command)
	}
	fake := t.TempDir()
	for _, m := range s.mounts(t) {
		if !m.bind() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, m.source))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(fake, filepath.FromSlash(m.target))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	loader := config.NewLoader(fs)
	if err := fs.Parse([]string{"--config", filepath.Join(fake, filepath.FromSlash(cfgPath))}); err != nil {
		t.Fatal(err)
	}
	// The container's environment is what compose gives it, nothing of ours.
	cfg, err := loader.Load(func(k string) (string, bool) { v, ok := s.Environment[k]; return v, ok })
	if err != nil {
		t.Fatalf("%s: config %s (mounted from the repository): %v", s.name, cfgPath, err)
	}
	reg, err := daemon.LoadRegistry(cfg)
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	for _, w := range reg.Warnings {
		t.Errorf("%s: deps registry: %s", s.name, w)
	}
	return cfg, reg
}

func TestComposeWalbustConfigLoads(t *testing.T) {
	c := readCompose(t)
	schema, err := os.ReadFile(filepath.Join(root, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	created := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?i)CREATE TABLE (?:IF NOT EXISTS )?(\w+)`).FindAllStringSubmatch(string(schema), -1) {
		created[strings.ToLower(m[1])] = true
	}
	for _, s := range c.walbustServices(t) {
		t.Run(s.name, func(t *testing.T) {
			cfg, reg := loadAsContainer(t, s)
			if len(reg.Tables) == 0 {
				t.Errorf("%s: no tables", reg.File)
			}
			for _, tbl := range reg.Tables {
				if tbl.Schema != "public" || !created[tbl.Relname] {
					t.Errorf("%s: %s is not created by schema.sql, which compose runs at Postgres's first start", reg.File, tbl.Name)
				}
			}
			checkPostgresURL(t, c, cfg.Postgres.URL)
			checkRedisURL(t, c, cfg.Redis.URL)
		})
	}
}

// checkPostgresURL: the URL names a compose service running Postgres, with
// the database, user and password that service is initialised with.
func checkPostgresURL(t *testing.T, c *composeFile, raw string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("postgres.url: %v", err)
	}
	pg, ok := c.Services[u.Hostname()]
	if !ok || !strings.HasPrefix(pg.Image, "postgres:") {
		t.Fatalf("postgres.url: host %q is not a compose service running postgres", u.Hostname())
	}
	if p := u.Port(); p != "" && p != "5432" {
		t.Errorf("postgres.url: port %s, but the postgres image listens on 5432", p)
	}
	env := pg.Environment
	pass, _ := u.User.Password()
	if u.User.Username() != env["POSTGRES_USER"] || pass != env["POSTGRES_PASSWORD"] {
		t.Errorf("postgres.url: user %q and its password do not match %s's POSTGRES_USER and POSTGRES_PASSWORD", u.User.Username(), pg.name)
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != env["POSTGRES_DB"] {
		t.Errorf("postgres.url: database %q, but %s creates POSTGRES_DB %q", db, pg.name, env["POSTGRES_DB"])
	}
}

func checkRedisURL(t *testing.T, c *composeFile, raw string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("redis.url: %v", err)
	}
	r, ok := c.Services[u.Hostname()]
	if !ok || !strings.HasPrefix(r.Image, "redis:") {
		t.Fatalf("redis.url: host %q is not a compose service running redis", u.Hostname())
	}
	if p := u.Port(); p != "" && p != "6379" {
		t.Errorf("redis.url: port %s, but the redis image listens on 6379", p)
	}
}

// TestComposeRunService: the checkpoint survives container replacement and
// the metrics listener is reachable through the published port.
func TestComposeRunService(t *testing.T) {
	c := readCompose(t)
	s := c.runService(t)
	cfg, _ := loadAsContainer(t, s)
	onVolume := false
	for _, m := range s.mounts(t) {
		if !m.bind() && strings.HasPrefix(cfg.Checkpoint.Path, strings.TrimSuffix(m.target, "/")+"/") {
			onVolume = true
		}
	}
	if !onVolume {
		t.Errorf("%s: checkpoint.path %s is on no volume: it would be lost with the container", s.name, cfg.Checkpoint.Path)
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		t.Fatalf("listen %q: %v", cfg.Listen, err)
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("%s: listen %s: only the container itself could reach it; listen on 0.0.0.0", s.name, cfg.Listen)
	}
	if !s.publishes(port) {
		t.Errorf("%s: listens on %s, but no ports entry publishes container port %s (ports: %q)", s.name, cfg.Listen, port, s.Ports)
	}
}

func TestComposeHealthchecks(t *testing.T) {
	c := readCompose(t)
	for _, s := range c.Services {
		for dep, d := range s.DependsOn {
			target, ok := c.Services[dep]
			if !ok {
				t.Errorf("%s: depends on %q, which is no service", s.name, dep)
				continue
			}
			switch d.Condition {
			case "service_healthy":
				if target.Healthcheck == nil || len(target.Healthcheck.Test) == 0 {
					t.Errorf("%s: waits for %s to be healthy, which has no healthcheck", s.name, dep)
				}
			case "service_completed_successfully":
				if r := target.Restart; r == "always" || r == "unless-stopped" {
					t.Errorf("%s: waits for %s to complete, but restart: %s never lets it", s.name, dep, r)
				}
			}
		}
	}
	checked := 0
	for _, s := range c.Services {
		if !strings.HasPrefix(s.Image, "postgres:") || s.Healthcheck == nil {
			continue
		}
		checked++
		test := strings.Join(s.Healthcheck.Test, " ")
		// The init phase's temporary server listens on the unix socket only.
		if !strings.Contains(test, "pg_isready") || !regexp.MustCompile(`(^|\s)-h\s*127\.0\.0\.1(\s|$)`).MatchString(test) {
			t.Errorf("%s: healthcheck %q: use pg_isready -h 127.0.0.1, or it reports healthy during initdb, before TCP works", s.name, test)
		}
	}
	if checked == 0 {
		t.Error("docker-compose.yml: no postgres service with a healthcheck")
	}
}

// TestComposeRestartPolicies: exit 2 is a configuration error, which no
// restart fixes, and compose's policies cannot tell exit codes apart, so the
// walbust services restart on failure a bounded number of times.
func TestComposeRestartPolicies(t *testing.T) {
	c := readCompose(t)
	for _, s := range c.walbustServices(t) {
		switch r := s.Restart; {
		case r == "" || r == "no":
		case strings.HasPrefix(r, "on-failure:"):
			n, err := strconv.Atoi(strings.TrimPrefix(r, "on-failure:"))
			if err != nil || n < 1 || n > 10 {
				t.Errorf("%s: restart: %s: want on-failure:N with N from 1 to 10", s.name, r)
			}
		default:
			t.Errorf("%s: restart: %s would restart an exit-2 configuration error forever; use on-failure:N (small N)", s.name, r)
		}
	}
}

var portRE = regexp.MustCompile(`^(?:127\.0\.0\.1:)?\$\{([A-Z][A-Z0-9_]*):-([0-9]+)\}:([0-9]+)$`)

func TestComposePortsConfigurable(t *testing.T) {
	c := readCompose(t)
	// walbust reads its own settings from WALBUST_* variables; a port
	// variable must not be one of them.
	fs := flag.NewFlagSet("walbust", flag.ContinueOnError)
	config.NewLoader(fs)
	settings := map[string]bool{"WALBUST_CONFIG": true}
	envRE := regexp.MustCompile(`\(env (WALBUST_[A-Z0-9_]+)`)
	fs.VisitAll(func(f *flag.Flag) {
		if m := envRE.FindStringSubmatch(f.Usage); m != nil {
			settings[m[1]] = true
		}
	})
	if len(settings) < 10 {
		t.Fatalf("found only %d walbust environment variables in the flag usage; has its format changed?", len(settings))
	}
	seen := map[string]string{}
	published := 0
	for _, s := range c.Services {
		for _, p := range s.Ports {
			published++
			m := portRE.FindStringSubmatch(p)
			if m == nil {
				t.Errorf("%s: port %q: want \"127.0.0.1:${VAR:-default}:port\" so the host port can be changed", s.name, p)
				continue
			}
			if other, dup := seen[m[1]]; dup {
				t.Errorf("%s and %s both publish ${%s}", other, s.name, m[1])
			}
			seen[m[1]] = s.name
			if settings[m[1]] {
				t.Errorf("%s: port variable %s is also a walbust setting", s.name, m[1])
			}
			if m[2] != m[3] {
				t.Errorf("%s: port %q: the default host port should be the service's usual port %s", s.name, p, m[3])
			}
		}
	}
	if published == 0 {
		t.Error("docker-compose.yml publishes no ports")
	}
}

// TestComposeDollars: compose substitutes $NAME and ${NAME} everywhere,
// commands included; a shell's own $ must be written $$.
func TestComposeDollars(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	ref := regexp.MustCompile(`^\$\{[A-Z][A-Z0-9_]*:-[^}$]*\}`)
	for i, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for j := 0; j < len(line); j++ {
			if line[j] != '$' {
				continue
			}
			if j+1 < len(line) && line[j+1] == '$' {
				j++
				continue
			}
			if m := ref.FindString(line[j:]); m != "" {
				j += len(m) - 1
				continue
			}
			t.Errorf("docker-compose.yml:%d:%d: compose would substitute this $ (write $$ for the shell, ${NAME:-default} for compose): %s", i+1, j+1, strings.TrimSpace(line))
		}
	}
}

// row is a mapping.Row for rendering templates.
type row map[string]string

func (r row) Text(column string) ([]byte, bool) {
	v, ok := r[column]
	return []byte(v), ok
}

// TestComposeDemoKeys: demo-reader caches the keys deps.yaml renders for the
// rows writer updates (products 1 to 5, each in category 1 or 7), no more,
// no fewer, so `redis-cli monitor` shows each one cached, then invalidated.
func TestComposeDemoKeys(t *testing.T) {
	c := readCompose(t)
	reader, ok := c.Services["demo-reader"]
	if !ok {
		t.Fatal("docker-compose.yml: no demo-reader service")
	}
	writer, ok := c.Services["writer"]
	if !ok {
		t.Fatal("docker-compose.yml: no writer service")
	}
	script := strings.Join(writer.Command, " ")
	for _, s := range []string{"generate_series(1, 5)", "floor(random() * 5)", "THEN 1 ELSE 7"} {
		if !strings.Contains(script, s) {
			t.Fatalf("writer no longer contains %q: update the rows this test renders keys for", s)
		}
	}
	reg, err := mapping.Load(filepath.Join(root, "deps.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	products, ok := reg.Tables["public.products"]
	if !ok {
		t.Fatal("deps.yaml: no public.products")
	}
	want := map[string]bool{}
	for id := 1; id <= 5; id++ {
		for _, cat := range []string{"1", "7"} {
			r := row{"id": strconv.Itoa(id), "category_id": cat, "name": "product", "price_cents": "100"}
			for _, rule := range products.Rules {
				if rule.Query != nil {
					t.Fatalf("deps.yaml: %s of public.products has a query: demo-reader cannot know its keys offline", rule.Name)
				}
				for _, tmpl := range rule.Keys {
					k, ok := tmpl.AppendRender(nil, r)
					if !ok {
						t.Fatalf("deps.yaml: %s: cannot render for %v", tmpl, r)
					}
					want[string(k)] = true
				}
			}
		}
	}
	got := map[string]bool{}
	for _, k := range strings.Fields(reader.Environment["DEMO_KEYS"]) {
		got[k] = true
		if !want[k] {
			t.Errorf("demo-reader caches %s, which walbust never invalidates for writer's rows", k)
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("demo-reader does not cache %s, which walbust invalidates when writer changes its row", k)
		}
	}
	if !strings.Contains(strings.Join(reader.Command, " "), "$$DEMO_KEYS") {
		t.Errorf("demo-reader's command does not use $$DEMO_KEYS: %q", reader.Command)
	}
}

// TestDockerfileGoVersion: the golang image sets GOTOOLCHAIN=local, so it
// must be at least the go line of go.mod or `docker build` fails.
func TestDockerfileGoVersion(t *testing.T) {
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	image := regexp.MustCompile(`(?m)^FROM golang:(\d+)\.(\d+)`).FindSubmatch(dockerfile)
	mod := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindSubmatch(gomod)
	if image == nil || mod == nil {
		t.Fatalf("no `FROM golang:X.Y` in Dockerfile or no go line in go.mod")
	}
	v := func(m [][]byte) [2]int {
		a, _ := strconv.Atoi(string(m[1]))
		b, _ := strconv.Atoi(string(m[2]))
		return [2]int{a, b}
	}
	if img, need := v(image), v(mod); img[0] < need[0] || img[0] == need[0] && img[1] < need[1] {
		t.Errorf("Dockerfile builds with golang:%d.%d, but go.mod needs go %d.%d", img[0], img[1], need[0], need[1])
	}
}

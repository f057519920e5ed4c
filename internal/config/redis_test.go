package config_test

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/config"
)

func TestRedisMode(t *testing.T) {
	path := writeConfig(t, "redis:\n  mode: cluster\n  url: redis://a:7000?addr=b:7000\n  wait_replicas: 1\n")
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.Mode != config.ModeCluster || cfg.Redis.WaitReplicas != 1 {
		t.Errorf("mode %q wait_replicas %d, want cluster 1", cfg.Redis.Mode, cfg.Redis.WaitReplicas)
	}
	cfg, err = load(t, []string{"--config", path, "--redis-url", "redis://s:26379", "--redis-sentinel-master", "m"},
		env{"WALBUST_REDIS_MODE": "sentinel"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.Mode != config.ModeSentinel || cfg.Redis.SentinelMaster != "m" {
		t.Errorf("mode %q master %q, want sentinel m (env and flag over file)", cfg.Redis.Mode, cfg.Redis.SentinelMaster)
	}
	if cfg, err := load(t, nil, env{}); err != nil || cfg.Redis.Mode != config.ModeStandalone {
		t.Errorf("default mode %v (err %v), want standalone", cfg, err)
	}
}

func TestRedisModeValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // "" means valid
	}{
		{"unknown mode", []string{"--redis-mode", "ring"}, `redis.mode "ring"`},
		{"sentinel without master", []string{"--redis-mode", "sentinel", "--redis-url", "redis://s:26379"}, "needs the master's name"},
		{"sentinel master in the URL", []string{"--redis-mode", "sentinel", "--redis-url", "redis://s:26379?master_name=m"}, ""},
		{"sentinel master twice, differing", []string{"--redis-mode", "sentinel", "--redis-url", "redis://s:26379?master_name=m", "--redis-sentinel-master", "n"}, "differ"},
		{"sentinel master in standalone mode", []string{"--redis-sentinel-master", "m"}, "redis.sentinel_master is set but redis.mode is standalone"},
		{"sentinel password in cluster mode", []string{"--redis-mode", "cluster", "--redis-sentinel-password-file", "x"}, "redis.sentinel_password_file is set but redis.mode is cluster"},
		{"cluster with a database", []string{"--redis-mode", "cluster", "--redis-url", "redis://a:7000/3"}, "only database 0"},
		{"cluster with database 0", []string{"--redis-mode", "cluster", "--redis-url", "redis://a:7000/0"}, ""},
		{"negative wait_replicas", []string{"--redis-wait-replicas", "-1"}, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.args, env{})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Load = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// In sentinel mode the URL is go-redis's: user:password@ is the sentinels'
// login and ?password= the master's, so each password file goes to its own
// place.
func TestSentinelPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	data, sentinel := filepath.Join(dir, "data.pw"), filepath.Join(dir, "sentinel.pw")
	if err := os.WriteFile(data, []byte("d&ta=pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sentinel, []byte("s3nt:nel\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := load(t, []string{"--redis-mode", "sentinel", "--redis-sentinel-master", "m",
		"--redis-url", "redis://sentuser@s1:26379/2?addr=s2:26379",
		"--redis-password-file", data, "--redis-sentinel-password-file", sentinel}, env{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cfg.Redis.URL)
	if err != nil {
		t.Fatal(err)
	}
	if pw, _ := u.User.Password(); u.User.Username() != "sentuser" || pw != "s3nt:nel" {
		t.Errorf("sentinel login %v, want sentuser:s3nt:nel", u.User)
	}
	if got := u.Query().Get("password"); got != "d&ta=pw" {
		t.Errorf("data password %q, want d&ta=pw", got)
	}
	if got := u.Query()["addr"]; len(got) != 1 || got[0] != "s2:26379" || u.Path != "/2" {
		t.Errorf("addr %v path %q: the rest of the URL changed", got, u.Path)
	}
}

func TestRedisURLNeedsScheme(t *testing.T) {
	for _, tt := range []struct {
		url, want string // want "" means valid
	}{
		{"127.0.0.1:6379", "redis.url has no scheme: write it as redis://HOST:PORT/DB"},
		{"localhost:6379", "redis.url has no scheme"},
		{"walbust:hunter2@cache:6379", "redis.url has no scheme"},
		{"http://cache:6379", "redis.url scheme http: want redis://"},
		{"redis://cache:6379/0", ""},
		{"rediss://walbust:hunter2@cache:6380/0", ""},
		{"unix:///run/redis.sock", ""},
	} {
		_, err := load(t, []string{"--redis-url", tt.url}, env{})
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s rejected: %v", tt.url, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want %q", tt.url, err, tt.want)
		case err != nil && strings.Contains(err.Error(), "hunter2"):
			t.Errorf("%s: the error shows the password: %v", tt.url, err)
		}
	}
}

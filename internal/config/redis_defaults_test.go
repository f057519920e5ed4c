package config_test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestWaitReplicasDefault: wait_replicas defaults to 1 in the HA modes, so
// a failover cannot lose an acknowledged invalidation, and to 0 standalone;
// whatever the file, environment or a flag says wins, 0 included.
func TestWaitReplicasDefault(t *testing.T) {
	sentinel := []string{"--redis-mode", "sentinel", "--redis-sentinel-master", "m", "--redis-url", "redis://s:26379"}
	tests := []struct {
		name string
		file string // walbust.yaml, "" for none
		args []string
		env  env
		want int
	}{
		{"standalone", "", nil, env{}, 0},
		{"sentinel by flag", "", sentinel, env{}, 1},
		{"cluster by file", "redis:\n  mode: cluster\n  url: redis://a:7000\n", nil, env{}, 1},
		{"cluster by env", "", nil, env{"WALBUST_REDIS_MODE": "cluster"}, 1},
		{"cluster, 0 in the file", "redis:\n  mode: cluster\n  wait_replicas: 0\n", nil, env{}, 0},
		{"sentinel, 0 in the env", "", sentinel, env{"WALBUST_REDIS_WAIT_REPLICAS": "0"}, 0},
		{"cluster, 2 by flag", "", []string{"--redis-mode", "cluster", "--redis-wait-replicas", "2"}, env{}, 2},
		{"standalone, 1 in the file", "redis:\n  wait_replicas: 1\n", nil, env{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeConfig(t, tt.file)}, args...)
			}
			cfg, err := load(t, args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Redis.WaitReplicas != tt.want {
				t.Errorf("wait_replicas %d in mode %s, want %d", cfg.Redis.WaitReplicas, cfg.Redis.Mode, tt.want)
			}
		})
	}
}

// TestRedisClientCertificate: tls_cert_file and tls_key_file are set like
// every other path (file relative to itself; flag and env), and only
// together.
func TestRedisClientCertificate(t *testing.T) {
	path := writeConfig(t, "redis:\n  url: rediss://r:6380\n  tls_cert_file: client.pem\n  tls_key_file: client.key\n")
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	if cfg.Redis.CertFile != filepath.Join(dir, "client.pem") || cfg.Redis.KeyFile != filepath.Join(dir, "client.key") {
		t.Errorf("cert %q key %q, want both next to the config file", cfg.Redis.CertFile, cfg.Redis.KeyFile)
	}
	cfg, err = load(t, []string{"--redis-tls-cert-file", "/c.pem"}, env{"WALBUST_REDIS_TLS_KEY_FILE": "/k.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.CertFile != "/c.pem" || cfg.Redis.KeyFile != "/k.pem" {
		t.Errorf("cert %q key %q, want /c.pem and /k.pem from flag and env", cfg.Redis.CertFile, cfg.Redis.KeyFile)
	}
	for _, args := range [][]string{{"--redis-tls-cert-file", "/c.pem"}, {"--redis-tls-key-file", "/k.pem"}} {
		if _, err := load(t, args, env{}); err == nil || !strings.Contains(err.Error(), "go together") {
			t.Errorf("%v: Load = %v, want an error saying cert and key go together", args, err)
		}
	}
}

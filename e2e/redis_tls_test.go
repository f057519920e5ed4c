package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/throwaway"
)

// TestOpsRedisTLS: walbust reaches a Redis that speaks TLS (rediss://),
// verifying it against redis.tls_ca_file, and invalidates through it.
func TestOpsRedisTLS(t *testing.T) {
	dir, err := os.MkdirTemp("", "walbust-e2e-redis-tls-")
	if err != nil {
		t.Fatal(err)
	}
	ca := opsNewCA(t, "walbust test redis CA")
	certPEM, keyPEM := ca.issueServer(t, "127.0.0.1")
	files := map[string][]byte{"ca.pem": ca.pem, "server.pem": certPEM, "server.key": keyPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tlsPort, err := throwaway.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := throwaway.StartRedis(ctx, dir,
		"--tls-port", strconv.Itoa(tlsPort),
		"--tls-cert-file", filepath.Join(dir, "server.pem"),
		"--tls-key-file", filepath.Join(dir, "server.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"),
		"--tls-auth-clients", "no")
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})

	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(r.Client()) // the test itself caches over the plain port
	e.opsWriteConfig(opsConfig{
		redisURL:   "rediss://127.0.0.1:" + strconv.Itoa(tlsPort) + "/0",
		redisExtra: []string{"tls_ca_file: " + strconv.Quote(filepath.Join(dir, "ca.pem"))},
	})
	e.start()
	e.cache("product:1", "product:2")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1")
	e.fence()
	e.assertPresent("product:2")
}

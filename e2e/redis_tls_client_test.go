package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
)

// tlsFiles are a CA, a certificate for the Redis nodes (server and client:
// nodes present it to each other) and one for walbust (client only), all
// written into a directory of their own.
type tlsFiles struct {
	dir                   string
	ca, nodeCert, nodeKey string
	clientCert, clientKey string
}

func writeTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-e2e-redis-mtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca := opsNewCA(t, "walbust e2e redis mTLS CA")
	nodeCert, nodeKey := issueCert(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, "127.0.0.1", "localhost")
	clientCert, clientKey := issueCert(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, "walbust")
	f := tlsFiles{dir: dir}
	for _, w := range []struct {
		path *string
		name string
		data []byte
	}{{&f.ca, "ca.pem", ca.pem}, {&f.nodeCert, "node.pem", nodeCert}, {&f.nodeKey, "node.key", nodeKey},
		{&f.clientCert, "client.pem", clientCert}, {&f.clientKey, "client.key", clientKey}} {
		*w.path = filepath.Join(dir, w.name)
		if err := os.WriteFile(*w.path, w.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// issueCert signs a certificate for hosts (IP addresses or DNS names; the
// first is the common name) with the given extended key usages.
func issueCert(t *testing.T, ca *opsCA, usages []x509.ExtKeyUsage, hosts ...string) (certPEM, keyPEM []byte) {
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
		ExtKeyUsage:  usages,
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
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// tlsRefusedWithoutCert proves the server at addr demands a client
// certificate: a TLS client that trusts it but has none is turned away.
func tlsRefusedWithoutCert(t *testing.T, ctx context.Context, addr string, f tlsFiles) {
	t.Helper()
	pemCA, err := os.ReadFile(f.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatalf("%s answers a TLS client without a certificate: the test would prove nothing", addr)
	}
}

// clientCertLines are walbust.yaml's redis lines for the client certificate.
func (f tlsFiles) clientCertLines() []string {
	return []string{"tls_ca_file: " + strconv.Quote(f.ca), "tls_cert_file: " + strconv.Quote(f.clientCert), "tls_key_file: " + strconv.Quote(f.clientKey)}
}

// TestRedisTLSClientCertificate: a redis-server with tls-auth-clients yes
// turns away clients without a certificate; walbust, given one in
// redis.tls_cert_file and redis.tls_key_file, invalidates through it.
func TestRedisTLSClientCertificate(t *testing.T) {
	f := writeTLSFiles(t)
	tlsPort, err := throwaway.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := throwaway.StartRedis(ctx, filepath.Join(f.dir, "redis"),
		"--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", f.nodeCert, "--tls-key-file", f.nodeKey,
		"--tls-ca-cert-file", f.ca, "--tls-auth-clients", "yes")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	tlsAddr := "127.0.0.1:" + strconv.Itoa(tlsPort)
	tlsRefusedWithoutCert(t, ctx, tlsAddr, f)

	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(r.Client()) // the test itself caches over the plain port
	e.opsWriteConfig(opsConfig{redisURL: "rediss://" + tlsAddr + "/0", redisExtra: f.clientCertLines()})
	e.start()
	e.cache("product:1", "product:2")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1")
	e.fence()
	e.assertPresent("product:2")
}

// TestRedisSentinelTLSClientCertificate: the same through Sentinel, every
// node (sentinels, master, replica) speaking TLS and requiring client
// certificates: walbust presents its certificate to the sentinels and to
// the master they name. With the HA default wait_replicas 1, each batch is
// also acknowledged by the replica, which replicates over TLS.
func TestRedisSentinelTLSClientCertificate(t *testing.T) {
	f := writeTLSFiles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := throwaway.StartRedisSentinelTLS(ctx, filepath.Join(f.dir, "sentinel"), "cache", 1, 1,
		throwaway.RedisTLS{CA: f.ca, Cert: f.nodeCert, Key: f.nodeKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	master, err := s.Master(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tlsRefusedWithoutCert(t, ctx, s.Sentinels()[0].TLSAddr(), f)
	tlsRefusedWithoutCert(t, ctx, master.TLSAddr(), f)

	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(master.Client()) // plain port: the sentinels name the TLS one
	e.opsWriteConfig(opsConfig{redisURL: s.SentinelTLSURL(),
		redisExtra: append([]string{"mode: sentinel", "sentinel_master: " + s.MasterName()}, f.clientCertLines()...)})
	e.start()
	e.cache("product:1", "product:2")
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	e.waitGone("product:1")
	e.fence()
	e.assertPresent("product:2")
	if strings.Contains(e.log(), "redis unavailable") {
		t.Errorf("walbust retried batches, want every one acknowledged at the first attempt:\n%s", e.log())
	}
}

package invalidator

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis modes (as in walbust.yaml's redis.mode).
const (
	Standalone = "standalone"
	Cluster    = "cluster"
	Sentinel   = "sentinel"
)

const (
	dialTimeout = 5 * time.Second
	ioTimeout   = 5 * time.Second
)

// newClient builds the client for opts.Mode from a URL in go-redis's own
// syntax: ParseURL, ParseClusterURL (seed nodes, more with ?addr=) or
// ParseFailoverURL (sentinels; the master's password in ?password=).
// *redis.ClusterClient is returned as well in cluster mode.
func newClient(opts Options) (redis.UniversalClient, *redis.ClusterClient, error) {
	var tlsConfig **tls.Config
	var build func() redis.UniversalClient // after the TLS roots are in place
	switch opts.Mode {
	case "", Standalone:
		o, err := redis.ParseURL(opts.URL)
		if err != nil {
			return nil, nil, urlError(err)
		}
		o.ClientName = "walbust"
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
		tlsConfig = &o.TLSConfig
		build = func() redis.UniversalClient { return redis.NewClient(o) }
	case Cluster:
		o, err := redis.ParseClusterURL(opts.URL)
		if err != nil {
			return nil, nil, urlError(err)
		}
		if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
			return nil, nil, errReplicaRouting
		}
		o.ClientName = "walbust"
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
		tlsConfig = &o.TLSConfig
		build = func() redis.UniversalClient { return redis.NewClusterClient(o) }
	case Sentinel:
		o, err := redis.ParseFailoverURL(opts.URL)
		if err != nil {
			return nil, nil, urlError(err)
		}
		if opts.SentinelMaster != "" {
			o.MasterName = opts.SentinelMaster
		}
		if o.ReplicaOnly || o.RouteByLatency || o.RouteRandomly || o.UseDisconnectedReplicas {
			return nil, nil, errReplicaRouting
		}
		if o.MasterName == "" {
			return nil, nil, errors.New("redis sentinel mode needs the master's name (sentinel_master)")
		}
		o.ClientName = "walbust"
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
		tlsConfig = &o.TLSConfig
		build = func() redis.UniversalClient { return redis.NewFailoverClient(o) }
	default:
		return nil, nil, fmt.Errorf("redis mode %q: must be standalone, cluster or sentinel", opts.Mode)
	}
	if err := applyTLSFiles(*tlsConfig, opts); err != nil {
		return nil, nil, err
	}
	client := build()
	cluster, _ := client.(*redis.ClusterClient)
	return client, cluster, nil
}

// applyTLSFiles puts the CA bundle and the client certificate into cfg,
// the TLS config go-redis made for a rediss:// URL (nil for redis://).
func applyTLSFiles(cfg *tls.Config, opts Options) error {
	if opts.CAFile == "" && opts.CertFile == "" && opts.KeyFile == "" {
		return nil
	}
	if cfg == nil {
		return errors.New("redis tls_ca_file, tls_cert_file or tls_key_file is set but the URL is redis://: use rediss:// for TLS")
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return fmt.Errorf("redis tls_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("redis tls_ca_file %s: no PEM certificates in it", opts.CAFile)
		}
		cfg.RootCAs = pool
	}
	if opts.CertFile != "" || opts.KeyFile != "" {
		if opts.CertFile == "" || opts.KeyFile == "" {
			return errors.New("redis tls_cert_file and tls_key_file go together: set both or neither")
		}
		// Read once at start: a renewed certificate takes a restart.
		cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return fmt.Errorf("redis tls_cert_file %s / tls_key_file %s: %w (both PEM, the key matching the certificate)", opts.CertFile, opts.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return nil
}

// errReplicaRouting: walbust writes, and a read it makes (DUMP, SCAN) must
// see the master's data, so replicas are never read from.
var errReplicaRouting = errors.New("redis url: read_only, replica_only, route_by_latency, route_randomly and use_disconnected_replicas send reads to replicas, which can lag; walbust reads and writes masters only: remove them")

func urlError(err error) error {
	// net/url's errors quote the URL, password included.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return errors.New("parse redis url: malformed URL (not shown: it may hold a password; check %-escapes)")
	}
	return fmt.Errorf("parse redis url: %w", err)
}

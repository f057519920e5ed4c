package throwaway

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisSentinel is a throwaway Sentinel setup on loopback: a master, its
// replicas and sentinels watching them under one master name. Any process
// can be killed and restarted; the sentinels promote a replica within
// seconds of the master going silent, and turn a restarted old master into
// a replica of the new one.
type RedisSentinel struct {
	name      string
	dir       string
	data      []*Redis // the master and replicas, in start order
	sentinels []*Redis
	tls       *RedisTLS
	closed    closeOnce
}

// RedisTLS are the PEM files of a setup whose nodes speak TLS to each other
// and to clients, and require client certificates (tls-auth-clients yes).
// Every node presents Cert, as a server and as a client, so it needs both
// the serverAuth and clientAuth extended key usages. The plain ports stay
// open, for the package's own health checks.
type RedisTLS struct{ CA, Cert, Key string }

// nodeArgs are the redis-server arguments of a node on tlsPort.
func (t *RedisTLS) nodeArgs(tlsPort int) []string {
	return []string{"--tls-port", strconv.Itoa(tlsPort),
		"--tls-cert-file", t.Cert, "--tls-key-file", t.Key, "--tls-ca-cert-file", t.CA,
		"--tls-auth-clients", "yes", "--tls-replication", "yes"}
}

// sentinelDownAfter is how long a silent master is given before the
// sentinels fail it over: short, so failover tests take seconds.
const sentinelDownAfter = 1000 * time.Millisecond

// StartRedisSentinel starts a master, replicas replicas and sentinels
// sentinels (quorum: a majority) in dir, monitoring the master as name.
func StartRedisSentinel(ctx context.Context, dir, name string, replicas, sentinels int) (*RedisSentinel, error) {
	return startRedisSentinel(ctx, dir, name, replicas, sentinels, nil)
}

// StartRedisSentinelTLS is StartRedisSentinel with every node speaking TLS
// on a port of its own (Redis.TLSAddr, SentinelTLSURL): replication, the
// sentinels' links and clients, all with client certificates.
func StartRedisSentinelTLS(ctx context.Context, dir, name string, replicas, sentinels int, files RedisTLS) (*RedisSentinel, error) {
	return startRedisSentinel(ctx, dir, name, replicas, sentinels, &files)
}

func startRedisSentinel(ctx context.Context, dir, name string, replicas, sentinels int, tlsFiles *RedisTLS) (_ *RedisSentinel, err error) {
	if sentinels < 1 || replicas < 1 {
		return nil, fmt.Errorf("a sentinel setup needs at least one replica and one sentinel")
	}
	s := &RedisSentinel{name: name, dir: dir, tls: tlsFiles}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	master, err := s.startNode(ctx, filepath.Join(dir, "data-0"), "", nil)
	if err != nil {
		return nil, fmt.Errorf("master: %w", err)
	}
	s.data = append(s.data, master)
	for i := 1; i <= replicas; i++ {
		r, err := s.startNode(ctx, filepath.Join(dir, fmt.Sprintf("data-%d", i)), "", []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.peerPort())})
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i, err)
		}
		s.data = append(s.data, r)
	}
	for i := range sentinels {
		sdir := filepath.Join(dir, fmt.Sprintf("sentinel-%d", i))
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			return nil, err
		}
		// The sentinel rewrites its config file with what it learns, so
		// each gets a writable file of its own.
		conf := filepath.Join(sdir, "sentinel.conf")
		body := fmt.Sprintf(`sentinel monitor %[1]s 127.0.0.1 %[2]d %[3]d
sentinel down-after-milliseconds %[1]s %[4]d
sentinel failover-timeout %[1]s 10000
sentinel parallel-syncs %[1]s 1
`, name, master.peerPort(), sentinels/2+1, sentinelDownAfter.Milliseconds())
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return nil, err
		}
		sn, err := s.startNode(ctx, sdir, conf, []string{"--sentinel"})
		if err != nil {
			return nil, fmt.Errorf("sentinel %d: %w", i, err)
		}
		s.sentinels = append(s.sentinels, sn)
	}
	if err := s.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// startNode starts a data node or sentinel, with a TLS port of its own
// when the setup speaks TLS.
func (s *RedisSentinel) startNode(ctx context.Context, dir, conf string, args []string) (*Redis, error) {
	if s.tls == nil {
		return startRedis(ctx, dir, 0, conf, args)
	}
	tlsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	r, err := startRedis(ctx, dir, 0, conf, append(args, s.tls.nodeArgs(tlsPort)...))
	if err != nil {
		return nil, err
	}
	r.tlsPort = tlsPort
	return r, nil
}

// SentinelTLSURL is URL with the sentinels' TLS ports, as rediss://.
func (s *RedisSentinel) SentinelTLSURL() string {
	addrs := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		addrs[i] = n.TLSAddr()
	}
	return "rediss" + strings.TrimPrefix(seedURL(addrs), "redis")
}

// MasterName is the name the sentinels monitor the master by.
func (s *RedisSentinel) MasterName() string { return s.name }

// Data are the master and replicas (roles change with failovers).
func (s *RedisSentinel) Data() []*Redis { return s.data }

// Sentinels are the sentinel processes.
func (s *RedisSentinel) Sentinels() []*Redis { return s.sentinels }

// SentinelAddrs are the sentinels' host:port addresses.
func (s *RedisSentinel) SentinelAddrs() []string {
	out := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		out[i] = n.Addr()
	}
	return out
}

// URL is a go-redis failover URL (redis.ParseFailoverURL) naming every
// sentinel: redis://first?addr=second&...; the master name is not in it.
func (s *RedisSentinel) URL() string { return seedURL(s.SentinelAddrs()) }

// Client returns a client that follows the master through failovers; the
// caller closes it.
func (s *RedisSentinel) Client() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.name, SentinelAddrs: s.SentinelAddrs()})
}

// Master asks the sentinels which data node is the master.
func (s *RedisSentinel) Master(ctx context.Context) (*Redis, error) {
	var last error
	for _, sn := range s.sentinels {
		if !sn.Running() {
			continue
		}
		hostPort, d, err := s.masterOf(ctx, sn)
		if err != nil {
			last = err
			continue
		}
		if d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("sentinel %s names %s as master, which is not one of ours", sn.Addr(), hostPort)
	}
	if last == nil {
		last = errors.New("no sentinel is running")
	}
	return nil, fmt.Errorf("ask sentinels for the master: %w", last)
}

// WaitFailover waits until every running sentinel names a running master
// other than old, and that master says it is one.
func (s *RedisSentinel) WaitFailover(ctx context.Context, old *Redis) (*Redis, error) {
	var master *Redis
	err := s.waitFor(ctx, "a failover away from "+old.Addr(), func() string {
		m, wrong := s.agreedMaster(ctx)
		if wrong != "" {
			return wrong
		}
		if m == old {
			return "the sentinels still name " + old.Addr()
		}
		master = m
		return ""
	})
	return master, err
}

// RestartAsReplica starts the stopped data node d again, empty, as a
// replica of the master the sentinels name, as a supervisor that asks the
// sentinels at start does. (Left alone, the sentinels would convert it
// themselves, but only after 10-20 seconds.)
func (s *RedisSentinel) RestartAsReplica(ctx context.Context, d *Redis) error {
	m, err := s.Master(ctx)
	if err != nil {
		return err
	}
	if m == d {
		return fmt.Errorf("%s is still the master", d.Addr())
	}
	d.extra = []string{"--replicaof", "127.0.0.1", strconv.Itoa(m.peerPort())}
	if s.tls != nil {
		d.extra = append(d.extra, s.tls.nodeArgs(d.tlsPort)...)
	}
	return d.Restart(ctx)
}

// WaitHealthy waits until the sentinels agree on a running master, see each
// other and every replica, and every other data node replicates from it.
func (s *RedisSentinel) WaitHealthy(ctx context.Context) error {
	return s.waitFor(ctx, "the sentinel setup to be healthy", func() string {
		m, wrong := s.agreedMaster(ctx)
		if wrong != "" {
			return wrong
		}
		for _, sn := range s.sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr()})
			others, err := c.Sentinels(ctx, s.name).Result()
			replicas, err2 := c.Replicas(ctx, s.name).Result()
			c.Close()
			if err = errors.Join(err, err2); err != nil {
				return fmt.Sprintf("sentinel %s: %v", sn.Addr(), err)
			}
			if len(others) != len(s.sentinels)-1 {
				return fmt.Sprintf("sentinel %s knows %d other sentinels, want %d", sn.Addr(), len(others), len(s.sentinels)-1)
			}
			up := 0
			for _, r := range replicas {
				if !strings.Contains(r["flags"], "down") && r["master-link-status"] == "ok" {
					up++
				}
			}
			if up != len(s.data)-1 {
				return fmt.Sprintf("sentinel %s sees %d healthy replicas, want %d", sn.Addr(), up, len(s.data)-1)
			}
		}
		for _, d := range s.data {
			if d == m {
				continue
			}
			c := d.Client()
			info, err := c.Info(ctx, "replication").Result()
			c.Close()
			if err != nil {
				return fmt.Sprintf("%s: %v", d.Addr(), err)
			}
			if !strings.Contains(info, "master_port:"+strconv.Itoa(m.peerPort())) || !strings.Contains(info, "master_link_status:up") {
				return d.Addr() + " does not replicate from the master yet"
			}
		}
		return ""
	})
}

// masterOf asks one sentinel for the master's address, and returns the
// data node at it (nil if none of ours is).
func (s *RedisSentinel) masterOf(ctx context.Context, sn *Redis) (string, *Redis, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr()})
	addr, err := c.GetMasterAddrByName(ctx, s.name).Result()
	c.Close()
	if err != nil {
		return "", nil, fmt.Errorf("sentinel %s: %w", sn.Addr(), err)
	}
	hostPort := net.JoinHostPort(addr[0], addr[1])
	for _, d := range s.data {
		if d.peerAddr() == hostPort {
			return hostPort, d, nil
		}
	}
	return hostPort, nil, nil
}

// agreedMaster is the master every running sentinel names, if they agree
// and it runs and says it is a master.
func (s *RedisSentinel) agreedMaster(ctx context.Context) (*Redis, string) {
	var master *Redis
	for _, sn := range s.sentinels {
		if !sn.Running() {
			continue
		}
		hostPort, d, err := s.masterOf(ctx, sn)
		if err != nil {
			return nil, err.Error()
		}
		if master != nil && master.peerAddr() != hostPort {
			return nil, "the sentinels disagree on the master"
		}
		master = d
		if master == nil {
			return nil, "the sentinels name an unknown master " + hostPort
		}
	}
	if master == nil {
		return nil, "no sentinel is running"
	}
	if !master.Running() {
		return nil, "the master the sentinels name is not running"
	}
	c := master.Client()
	info, err := c.Info(ctx, "replication").Result()
	c.Close()
	if err != nil || !strings.Contains(info, "role:master") {
		return nil, fmt.Sprintf("%s does not say it is the master yet (err %v)", master.Addr(), err)
	}
	return master, ""
}

func (s *RedisSentinel) waitFor(parent context.Context, what string, cond func() string) error {
	ctx, cancel := context.WithTimeout(parent, startTimeout)
	defer cancel()
	for {
		wrong := cond()
		if wrong == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			var logs strings.Builder
			for _, n := range append(append([]*Redis(nil), s.data...), s.sentinels...) {
				fmt.Fprintf(&logs, "%s log (tail):\n%s\n", n.Addr(), logTail(n.LogPath(), 8))
			}
			return fmt.Errorf("waiting for %s: %w (last: %s)\n%s", what, ctx.Err(), wrong, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops every process and removes the setup's directory. It is safe
// to call more than once.
func (s *RedisSentinel) Close() error {
	return s.closed.do(func() error {
		var errs []error
		for _, n := range append(append([]*Redis(nil), s.sentinels...), s.data...) {
			errs = append(errs, n.Close())
		}
		if err := os.RemoveAll(s.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove sentinel dir: %w", err))
		}
		return errors.Join(errs...)
	})
}

package throwaway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a throwaway Redis Cluster of redis-server processes on
// loopback: masters, each with replicas, made with `redis-cli --cluster
// create`. Nodes can be killed and restarted one by one: a node keeps its
// identity (nodes.conf) across restarts but, like every throwaway Redis,
// none of its data, so a restarted node rejoins as a replica of whichever
// node took over its slots and resynchronises from it.
type RedisCluster struct {
	dir    string
	nodes  []*Redis
	closed closeOnce
}

// clusterNodeTimeout is how long a silent master is given before its
// replica takes over: short, so failover tests take seconds.
const clusterNodeTimeout = 1000 * time.Millisecond

// StartRedisCluster starts masters×(1+replicas) nodes in dir and joins them
// into a cluster with every slot covered and every replica in sync.
func StartRedisCluster(ctx context.Context, dir string, masters, replicas int) (_ *RedisCluster, err error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli binary missing (it comes with redis-server): %w; %s", err, installHint)
	}
	if masters < 3 {
		return nil, fmt.Errorf("a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	c := &RedisCluster{dir: dir}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster dir: %w", err)
	}
	addrs := make([]string, 0, masters*(1+replicas))
	for i := range masters * (1 + replicas) {
		// The bus port is chosen here rather than derived (port+10000,
		// which may be taken or beyond 65535).
		bus, err := FreePort()
		if err != nil {
			return nil, err
		}
		n, err := startRedis(ctx, filepath.Join(dir, fmt.Sprintf("node-%d", i)), 0, "", []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
			"--cluster-port", strconv.Itoa(bus),
			// A replica whose master died may take over however long it
			// was out of touch: a test kills nodes on purpose.
			"--cluster-replica-validity-factor", "0",
		})
		if err != nil {
			return nil, fmt.Errorf("cluster node %d: %w", i, err)
		}
		c.nodes = append(c.nodes, n)
		addrs = append(addrs, n.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	cctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	out, err := exec.CommandContext(cctx, cli, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := c.WaitHealthy(ctx, replicas); err != nil {
		return nil, err
	}
	return c, nil
}

// Nodes are the cluster's servers, masters and replicas, in start order.
func (c *RedisCluster) Nodes() []*Redis { return c.nodes }

// Addrs are the nodes' host:port addresses.
func (c *RedisCluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.Addr()
	}
	return out
}

// URL is a go-redis cluster URL (redis.ParseClusterURL) naming every node
// as a seed: redis://first?addr=second&addr=...
func (c *RedisCluster) URL() string { return seedURL(c.Addrs()) }

// seedURL is go-redis's form for several servers in one URL:
// redis://first?addr=second&addr=...
func seedURL(addrs []string) string {
	u := "redis://" + addrs[0]
	for i, a := range addrs[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + a
	}
	return u
}

// Client returns a cluster client; the caller closes it.
func (c *RedisCluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
}

// ClusterNode is one line of CLUSTER NODES.
type ClusterNode struct {
	Addr      string
	Master    bool
	MasterID  string // a replica's master
	ID        string
	Failed    bool // flagged fail or pfail
	Connected bool
	Slots     int // slots served (masters)
}

// Topology reads CLUSTER NODES from the first running node that answers.
func (c *RedisCluster) Topology(ctx context.Context) ([]ClusterNode, error) {
	var last error
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		cl := n.Client()
		text, err := cl.ClusterNodes(ctx).Result()
		cl.Close()
		if err != nil {
			last = err
			continue
		}
		return parseClusterNodes(text)
	}
	if last == nil {
		last = errors.New("no node is running")
	}
	return nil, fmt.Errorf("cluster nodes: %w", last)
}

func parseClusterNodes(text string) ([]ClusterNode, error) {
	var out []ClusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("cluster nodes: cannot parse %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := ClusterNode{ID: f[0], Addr: addr, Connected: f[7] == "connected"}
		for _, flag := range strings.Split(f[2], ",") {
			switch flag {
			case "master":
				n.Master = true
			case "fail", "fail?":
				n.Failed = true
			}
		}
		if f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("cluster nodes: slot %q in %q", r, line)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("cluster nodes: slot %q in %q", r, line)
				}
			}
			n.Slots += b - a + 1
		}
		out = append(out, n)
	}
	return out, nil
}

// Node returns the running-or-not node with address addr.
func (c *RedisCluster) Node(addr string) *Redis {
	for _, n := range c.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// MasterWithReplica returns a master serving slots that has a connected,
// healthy replica: the one to kill for a failover.
func (c *RedisCluster) MasterWithReplica(ctx context.Context) (*Redis, error) {
	nodes, err := c.Topology(ctx)
	if err != nil {
		return nil, err
	}
	for _, m := range nodes {
		if !m.Master || m.Slots == 0 || m.Failed {
			continue
		}
		for _, r := range nodes {
			if r.MasterID == m.ID && !r.Failed && r.Connected {
				if n := c.Node(m.Addr); n != nil && n.Running() {
					return n, nil
				}
			}
		}
	}
	return nil, errors.New("no master has a healthy replica")
}

// WaitFailover waits until the slots of the stopped node old are served by
// another node and the cluster says it is ok.
func (c *RedisCluster) WaitFailover(ctx context.Context, old *Redis) error {
	return c.waitFor(ctx, "a replica to take over the slots of "+old.Addr(), func(nodes []ClusterNode) string {
		for _, n := range nodes {
			if n.Addr == old.Addr() && n.Master && n.Slots > 0 {
				return old.Addr() + " still serves slots"
			}
		}
		return c.allOK(ctx)
	})
}

// WaitHealthy waits until every node runs and agrees the cluster is ok,
// every slot is served, and every master has at least replicas connected
// replicas in sync.
func (c *RedisCluster) WaitHealthy(ctx context.Context, replicas int) error {
	return c.waitFor(ctx, "the cluster to be healthy", func(nodes []ClusterNode) string {
		if len(nodes) != len(c.nodes) {
			return fmt.Sprintf("%d of %d nodes known", len(nodes), len(c.nodes))
		}
		slots := 0
		for _, m := range nodes {
			if m.Failed || !m.Connected && m.Slots > 0 {
				return m.Addr + " is failed or disconnected"
			}
			if !m.Master || m.Slots == 0 {
				continue
			}
			slots += m.Slots
			synced := 0
			for _, r := range nodes {
				if r.MasterID == m.ID && !r.Failed && c.inSync(ctx, r.Addr) {
					synced++
				}
			}
			if synced < replicas {
				return fmt.Sprintf("master %s has %d replicas in sync, want %d", m.Addr, synced, replicas)
			}
		}
		if slots != 16384 {
			return fmt.Sprintf("%d of 16384 slots served", slots)
		}
		return c.allOK(ctx)
	})
}

// inSync reports whether the replica at addr has an up link to its master.
func (c *RedisCluster) inSync(ctx context.Context, addr string) bool {
	n := c.Node(addr)
	if n == nil || !n.Running() {
		return false
	}
	cl := n.Client()
	defer cl.Close()
	info, err := cl.Info(ctx, "replication").Result()
	return err == nil && strings.Contains(info, "master_link_status:up")
}

// allOK is "" when every running node says cluster_state:ok.
func (c *RedisCluster) allOK(ctx context.Context) string {
	for _, n := range c.nodes {
		if !n.Running() {
			continue
		}
		cl := n.Client()
		info, err := cl.ClusterInfo(ctx).Result()
		cl.Close()
		if err != nil {
			return fmt.Sprintf("%s: %v", n.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return n.Addr() + " says the cluster is not ok"
		}
	}
	return ""
}

// waitFor polls cond (which says what is still wrong, "" when nothing is)
// until it holds or startTimeout passes.
func (c *RedisCluster) waitFor(parent context.Context, what string, cond func([]ClusterNode) string) error {
	ctx, cancel := context.WithTimeout(parent, startTimeout)
	defer cancel()
	wrong := ""
	for {
		nodes, err := c.Topology(ctx)
		if err == nil {
			if wrong = cond(nodes); wrong == "" {
				return nil
			}
		} else {
			wrong = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)\n%s", what, ctx.Err(), wrong, c.logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *RedisCluster) logs() string {
	var b bytes.Buffer
	for _, n := range c.nodes {
		fmt.Fprintf(&b, "node %s log (tail):\n%s\n", n.Addr(), logTail(n.LogPath(), 8))
	}
	return b.String()
}

// Close stops every node and removes the cluster's directory. It is safe
// to call more than once.
func (c *RedisCluster) Close() error {
	return c.closed.do(func() error {
		var errs []error
		for _, n := range c.nodes {
			errs = append(errs, n.Close())
		}
		if err := os.RemoveAll(c.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cluster dir: %w", err))
		}
		return errors.Join(errs...)
	})
}

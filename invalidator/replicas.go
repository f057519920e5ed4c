package invalidator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrTooFewReplicas: a master acknowledged a batch but fewer of its
// replicas than wait_replicas did, so walbust does not confirm it and
// holds the stream: Redis is reachable, its replication is behind.
var ErrTooFewReplicas = errors.New("too few redis replicas acknowledged the batch")

// MasterReplicas is one master and how many replicas are connected to it
// and in sync (able to acknowledge a WAIT).
type MasterReplicas struct {
	Addr     string
	Replicas int
}

// Replicas lists every master walbust writes to with its connected
// replicas: INFO replication on the master (standalone and sentinel), or
// CLUSTER NODES (cluster).
func (iv *Invalidator) Replicas(ctx context.Context) ([]MasterReplicas, error) {
	if iv.cluster != nil {
		text, err := iv.cluster.ClusterNodes(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("redis CLUSTER NODES: %w", err)
		}
		return clusterReplicas(text), nil
	}
	info, err := iv.client.Info(ctx, "replication").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO replication: %w", err)
	}
	n, role := infoReplicas(info)
	if role != "master" {
		return nil, fmt.Errorf("redis INFO replication: the server walbust writes to is a %s, not a master", role)
	}
	// A failover client's own Addr is a placeholder: name the master.
	addr := "the sentinels' master"
	if iv.opts.SentinelMaster != "" {
		addr = strconv.Quote(iv.opts.SentinelMaster)
	}
	if o, ok := iv.client.(*redis.Client); ok && iv.opts.Mode != Sentinel {
		addr = o.Options().Addr
	}
	return []MasterReplicas{{Addr: addr, Replicas: n}}, nil
}

// infoReplicas counts the replicas INFO replication lists as online, and
// returns the server's role.
func infoReplicas(info string) (int, string) {
	n, role := 0, ""
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if r, ok := strings.CutPrefix(line, "role:"); ok {
			role = r
		}
		// slave0:ip=127.0.0.1,port=6380,state=online,offset=...,lag=0
		if k, v, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(k, "slave") && strings.Contains(v, "state=online") {
			if _, err := strconv.Atoi(strings.TrimPrefix(k, "slave")); err == nil {
				n++
			}
		}
	}
	return n, role
}

// clusterReplicas counts, per master of CLUSTER NODES, its replicas whose
// link is up and that are not failing.
func clusterReplicas(text string) []MasterReplicas {
	type node struct{ id, addr, flags, master, link string }
	var nodes []node
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		nodes = append(nodes, node{id: f[0], addr: addr, flags: f[2], master: f[3], link: f[7]})
	}
	count := map[string]int{}
	for _, n := range nodes {
		if strings.Contains(n.flags, "slave") && !strings.Contains(n.flags, "fail") && n.link == "connected" {
			count[n.master]++
		}
	}
	var out []MasterReplicas
	for _, n := range nodes {
		if strings.Contains(n.flags, "master") && !strings.Contains(n.flags, "fail") {
			out = append(out, MasterReplicas{Addr: n.addr, Replicas: count[n.id]})
		}
	}
	return out
}

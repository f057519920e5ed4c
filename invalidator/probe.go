package invalidator

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Probe is what a preflight check connects with: the client walbust
// streams with (same URL, credentials and TLS), and a plain client to the
// first address of the URL, which tells what kind of server redis.url
// names (a sentinel, in sentinel mode).
type Probe struct {
	Client   redis.UniversalClient
	Seed     *redis.Client
	SeedAddr string
	User     string // the ACL user of the data nodes ("default" when none is given)
	cluster  *redis.ClusterClient
	ownSeed  bool
}

// NewProbe builds the clients; like New, it does not connect.
func NewProbe(opts Options) (*Probe, error) {
	client, cluster, err := newClient(opts)
	if err != nil {
		return nil, err
	}
	p := &Probe{Client: client, cluster: cluster, User: "default"}
	var seed *redis.Options
	switch {
	case cluster != nil:
		o := cluster.Options()
		seed = &redis.Options{Addr: o.Addrs[0], Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig}
		p.setUser(o.Username)
	case opts.Mode == Sentinel:
		fo, err := redis.ParseFailoverURL(opts.URL)
		if err != nil {
			client.Close()
			return nil, urlError(err)
		}
		o := client.(*redis.Client).Options()
		seed = &redis.Options{Addr: fo.SentinelAddrs[0], Username: fo.SentinelUsername, Password: fo.SentinelPassword, TLSConfig: o.TLSConfig}
		p.setUser(o.Username)
	default:
		p.Seed = client.(*redis.Client)
		p.SeedAddr = p.Seed.Options().Addr
		p.setUser(p.Seed.Options().Username)
		return p, nil
	}
	seed.DialTimeout, seed.ReadTimeout, seed.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
	seed.MaxRetries = -1 // a probe reports the first failure rather than retrying it
	p.Seed, p.SeedAddr, p.ownSeed = redis.NewClient(seed), seed.Addr, true
	return p, nil
}

func (p *Probe) setUser(u string) {
	if u != "" {
		p.User = u
	}
}

// Close closes both clients.
func (p *Probe) Close() {
	if p.ownSeed {
		_ = p.Seed.Close()
	}
	_ = p.Client.Close()
}

// Masters are the servers that hold keys, each with its address.
func (p *Probe) Masters(ctx context.Context) (map[string]*redis.Client, error) {
	if p.cluster == nil {
		c, ok := p.Client.(*redis.Client)
		if !ok {
			return nil, fmt.Errorf("redis: unexpected client %T", p.Client)
		}
		addr := c.Options().Addr
		if strings.HasPrefix(addr, "FailoverClient") || addr == "" {
			addr = "the master"
		}
		return map[string]*redis.Client{addr: c}, nil
	}
	var mu sync.Mutex
	out := map[string]*redis.Client{}
	err := p.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		out[c.Options().Addr] = c
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ScriptSHA is the SHA1 of a script walbust loads, for ACL checks of
// EVALSHA.
func ScriptSHA() string { return bumpScript.Hash() }

// IndexDrainSHA is the SHA1 of the script that drains a pattern family's
// index (protocol.IndexDrainScript), for the same probes.
func IndexDrainSHA() string { return indexDrainScript.Hash() }

// IndexUnlinkSHA is the SHA1 of the script that deletes an indexed
// family's members and index in one step (delete rules, outside a
// cluster), for ACL checks.
func IndexUnlinkSHA() string { return indexUnlinkScript.Hash() }

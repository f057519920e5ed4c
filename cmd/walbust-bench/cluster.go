package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/replication/wal"
)

// clusterResult is part 5: one backlog of single-row
// transactions drained by
//
//   - one walbust against the one redis-server (the baseline),
//   - one walbust against a Redis Cluster of 3 masters with a replica each
//     (redis.mode: cluster), and
//   - two walbusts side by side, one shard each (accounts | orders), against
//     the one redis-server.
//
// Each run drains its own copy of one slot, so all see the same WAL.
type clusterResult struct {
	SingleRowTxs int64   `json:"single_row_txs"`
	RowChanges   int64   `json:"row_changes"`
	WALBytes     int64   `json:"wal_bytes"`
	Masters      int     `json:"cluster_masters"`
	Replicas     int     `json:"cluster_replicas_per_master"`
	WarmupSecs   float64 `json:"warmup_seconds"`
	// Medians over runs, in row changes per second from process start to
	// slot confirmed (for the shards: to both slots confirmed).
	StandaloneRowsPerSec float64      `json:"standalone_rows_per_sec"`
	ClusterRowsPerSec    float64      `json:"cluster_rows_per_sec"`
	ShardsRowsPerSec     float64      `json:"two_shards_rows_per_sec"`
	ClusterRatio         float64      `json:"ratio_cluster_to_standalone"`
	ShardsRatio          float64      `json:"ratio_two_shards_to_one"`
	Runs                 []clusterRun `json:"runs"`
}

type clusterRun struct {
	Order       []string           `json:"order"`
	Seconds     map[string]float64 `json:"seconds"`
	RowsPerSec  map[string]float64 `json:"rows_per_sec"`
	ShardSecs   map[string]float64 `json:"shard_seconds"` // each shard's own drain
	KeysChecked int                `json:"keys_checked"`
	KeysLeft    map[string]int64   `json:"keys_left"` // must be 0
}

const (
	cfgStandalone = "standalone"
	cfgCluster    = "cluster"
	cfgShards     = "two shards"
)

func runCluster(ctx context.Context, e *env) (res *clusterResult, err error) {
	sc := e.sc
	res = &clusterResult{Masters: 3, Replicas: 1}
	// Shard publications, then the slots (a publication younger than a
	// slot cannot decode the WAL between them).
	for _, sql := range []string{
		"DROP PUBLICATION IF EXISTS bench_accounts", "DROP PUBLICATION IF EXISTS bench_orders",
		"CREATE PUBLICATION bench_accounts FOR TABLE accounts", "CREATE PUBLICATION bench_orders FOR TABLE orders",
		// Rows changed by earlier parts would count as changed by this one.
		"UPDATE accounts SET v = 0 WHERE v > 0", "UPDATE orders SET v = 0 WHERE v > 0",
	} {
		if err := e.exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("%s: %w", sql, err)
		}
	}
	const baseSlot, warmSlot = "cl_base", "cl_warmup"
	var slots []string
	defer func() {
		for _, s := range append(slots, baseSlot, warmSlot) {
			_ = e.dropSlot(context.WithoutCancel(ctx), s)
		}
	}()
	if err := e.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", baseSlot); err != nil {
		return nil, err
	}
	slotOf := func(run int, name string) string { return fmt.Sprintf("cl_%d_%s", run, name) }
	for r := range sc.ClusterRuns {
		for _, name := range []string{"std", "cluster", "accounts", "orders"} {
			slots = append(slots, slotOf(r, name))
		}
	}
	for _, s := range append([]string{warmSlot}, slots...) {
		if err := e.exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2)", baseSlot, s); err != nil {
			return nil, fmt.Errorf("copy slot %s to %s: %w", baseSlot, s, err)
		}
	}
	start, err := e.confirmedLSN(ctx, baseSlot)
	if err != nil {
		return nil, err
	}

	e.logf("part 5: starting a Redis Cluster (%d masters, %d replica each)", res.Masters, res.Replicas)
	clusterDir, err := e.tempDir("walbust-bench-cluster-")
	if err != nil {
		return nil, err
	}
	cluster, err := throwaway.StartRedisCluster(ctx, clusterDir, res.Masters, res.Replicas)
	if err != nil {
		return nil, err
	}
	defer cluster.Close()
	crdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	defer crdb.Close()

	e.logf("part 5: writing the backlog: %d single-row transactions", sc.ClusterTxs)
	perClient := (sc.ClusterTxs + backlogClients - 1) / backlogClients
	r, err := e.pgbench(ctx, []script{
		{name: "cluster_accounts", body: singleAccountScript, weight: 1},
		{name: "cluster_orders", body: singleOrderScript, weight: 1},
	}, "-c synchronous_commit=off",
		"-c", strconv.Itoa(backlogClients), "-j", "2", "-t", strconv.Itoa(perClient),
		"-D", "naccounts="+strconv.Itoa(sc.Accounts), "-D", "norders="+strconv.Itoa(sc.Orders))
	if err != nil {
		return nil, err
	}
	res.SingleRowTxs, res.RowChanges = r.Transactions, r.Transactions
	end, err := e.fence(ctx)
	if err != nil {
		return nil, err
	}
	// The orders shard's own last transaction, past end too: a slot idle
	// since its last transaction is advanced on the status interval's clock.
	if err := e.exec(ctx, "UPDATE orders SET total = total WHERE id = 1"); err != nil {
		return nil, err
	}
	res.WALBytes = int64(end - start)
	for _, sql := range []string{"VACUUM accounts", "VACUUM orders", "CHECKPOINT"} {
		if err := e.exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("%s: %w", sql, err)
		}
	}
	seed := e.allKeys()
	touched, err := e.touchedKeys(ctx)
	if err != nil {
		return nil, err
	}
	var warm drainRun
	if err := drainRecv(ctx, e, warmSlot, end, &warm); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	res.WarmupSecs = warm.RecvSeconds
	e.logf("part 5: backlog of %d row changes, %.0f MB of WAL; untimed warm-up drain %.2fs", res.RowChanges, float64(res.WALBytes)/1e6, warm.RecvSeconds)

	shardsConfig, err := e.writeShardsConfig()
	if err != nil {
		return nil, err
	}
	rates := map[string][]float64{}
	configs := []string{cfgStandalone, cfgCluster, cfgShards}
	for run := range sc.ClusterRuns {
		// Rotate which configuration goes first.
		order := append(append([]string(nil), configs[run%len(configs):]...), configs[:run%len(configs)]...)
		cr := clusterRun{Order: order, Seconds: map[string]float64{}, RowsPerSec: map[string]float64{}, ShardSecs: map[string]float64{},
			KeysChecked: len(touched), KeysLeft: map[string]int64{}}
		for _, cfg := range order {
			var secs float64
			var left int64
			switch cfg {
			case cfgStandalone:
				secs, left, err = e.clusterDrainOne(ctx, fmt.Sprintf("cl-%d-standalone", run+1), slotOf(run, "std"), end, seed, touched, nil, nil)
			case cfgCluster:
				secs, left, err = e.clusterDrainOne(ctx, fmt.Sprintf("cl-%d-cluster", run+1), slotOf(run, "cluster"), end, seed, touched, crdb,
					// The bench cluster has no replicas, and this compares
					// drain rates with standalone's, which does not WAIT.
					[]string{"--redis-mode", "cluster", "--redis-url", cluster.URL(), "--redis-wait-replicas", "0"})
			case cfgShards:
				secs, left, err = e.clusterDrainShards(ctx, run, shardsConfig, slotOf, end, seed, touched, cr.ShardSecs)
			}
			if err != nil {
				return res, fmt.Errorf("%s: %w", cfg, err)
			}
			cr.Seconds[cfg], cr.KeysLeft[cfg] = secs, left
			cr.RowsPerSec[cfg] = float64(res.RowChanges) / secs
			rates[cfg] = append(rates[cfg], cr.RowsPerSec[cfg])
			e.logf("part 5 run %d: %s drained in %.2fs (%.0f rows/s), keys left %d", run+1, cfg, secs, cr.RowsPerSec[cfg], left)
			if left != 0 {
				return res, fmt.Errorf("%s drained the backlog but %d keys of changed rows are still in Redis", cfg, left)
			}
		}
		res.Runs = append(res.Runs, cr)
	}
	res.StandaloneRowsPerSec, res.ClusterRowsPerSec, res.ShardsRowsPerSec = median(rates[cfgStandalone]), median(rates[cfgCluster]), median(rates[cfgShards])
	res.ClusterRatio = res.ClusterRowsPerSec / res.StandaloneRowsPerSec
	res.ShardsRatio = res.ShardsRowsPerSec / res.StandaloneRowsPerSec
	return res, nil
}

// writeShardsConfig writes walbust.yaml with shards: accounts and orders,
// each on a publication of its own table; every run picks its slots with
// --slot (the base) and the shard's suffix.
func (e *env) writeShardsConfig() (string, error) {
	base, err := os.ReadFile(e.config)
	if err != nil {
		return "", err
	}
	path := filepath.Join(e.work, "walbust-shards.yaml")
	body := string(base) + `shards:
  accounts:
    tables: [public.accounts]
    publication: bench_accounts
  orders:
    tables: [public.orders]
    publication: bench_orders
`
	return path, os.WriteFile(path, []byte(body), 0o644)
}

// clusterDrainOne times one walbust draining slot to end, against the
// bench's redis-server, or (crdb and args given) a cluster.
func (e *env) clusterDrainOne(ctx context.Context, name, slot string, end wal.LSN, seed, touched []string, crdb *redis.ClusterClient, args []string) (float64, int64, error) {
	if err := e.seedFor(ctx, crdb, seed); err != nil {
		return 0, 0, err
	}
	e.logf("part 5: %s draining slot %s", name, slot)
	w, err := e.startWalbustArgs(ctx, name, slot, e.deps, args...)
	if err != nil {
		return 0, 0, err
	}
	defer w.stop()
	doneAt, err := e.waitConfirmed(ctx, slot, end, 30*time.Minute, 5*time.Millisecond, w)
	if err != nil {
		return 0, 0, err
	}
	if err := w.stop(); err != nil {
		return 0, 0, err
	}
	left, err := e.countFor(ctx, crdb, touched)
	return doneAt.Sub(w.started).Seconds(), left, err
}

// clusterDrainShards times two walbusts, one per shard, draining their
// slots side by side: until both have confirmed end.
func (e *env) clusterDrainShards(ctx context.Context, run int, config string, slotOf func(int, string) string, end wal.LSN,
	seed, touched []string, shardSecs map[string]float64) (float64, int64, error) {
	if err := e.seedFor(ctx, nil, seed); err != nil {
		return 0, 0, err
	}
	shards := []string{"accounts", "orders"}
	e.logf("part 5: two shards (%s) draining side by side", strings.Join(shards, ", "))
	procs := make([]*walbust, len(shards))
	for i, shard := range shards {
		// --slot cl_<run>: the shard's slot is cl_<run>_<shard>.
		w, err := e.startWalbustArgs(ctx, fmt.Sprintf("cl-%d-shard-%s", run+1, shard), strings.TrimSuffix(slotOf(run, shard), "_"+shard), e.deps,
			"--config", config, "--shard", shard)
		if err != nil {
			return 0, 0, err
		}
		defer w.stop()
		procs[i] = w
	}
	began := procs[0].started
	var g errgroup.Group
	done := make([]time.Time, len(shards))
	for i, shard := range shards {
		g.Go(func() (err error) {
			done[i], err = e.waitConfirmed(ctx, slotOf(run, shard), end, 30*time.Minute, 5*time.Millisecond, procs[i])
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, 0, err
	}
	last := began
	for i, shard := range shards {
		shardSecs[shard] = done[i].Sub(procs[i].started).Seconds()
		if done[i].After(last) {
			last = done[i]
		}
	}
	for _, w := range procs {
		if err := w.stop(); err != nil {
			return 0, 0, err
		}
	}
	left, err := e.countFor(ctx, nil, touched)
	return last.Sub(began).Seconds(), left, err
}

// seedFor empties the target Redis (the bench's, or the cluster) and sets
// keys in it.
func (e *env) seedFor(ctx context.Context, crdb *redis.ClusterClient, keys []string) error {
	if crdb == nil {
		if err := e.flushRedis(ctx); err != nil {
			return err
		}
		return e.setKeys(ctx, keys)
	}
	if err := crdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
		return fmt.Errorf("flush cluster: %w", err)
	}
	// SETs, not MSETs: a cluster pipeline splits per node, but one MSET
	// may not span slots.
	const chunk = 5000
	for i := 0; i < len(keys); i += chunk {
		pipe := crdb.Pipeline()
		for _, k := range keys[i:min(i+chunk, len(keys))] {
			pipe.Set(ctx, k, "cached", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("seed cluster: %w", err)
		}
	}
	return nil
}

// countFor counts the keys that exist in the target Redis.
func (e *env) countFor(ctx context.Context, crdb *redis.ClusterClient, keys []string) (int64, error) {
	if crdb == nil {
		return e.countExisting(ctx, keys)
	}
	var n int64
	const chunk = 5000
	for i := 0; i < len(keys); i += chunk {
		pipe := crdb.Pipeline()
		cmds := make([]*redis.IntCmd, 0, chunk)
		for _, k := range keys[i:min(i+chunk, len(keys))] {
			cmds = append(cmds, pipe.Exists(ctx, k))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, fmt.Errorf("check cluster: %w", err)
		}
		for _, c := range cmds {
			n += c.Val()
		}
	}
	return n, nil
}

// clusterRows are part 5's lines in the table.
func clusterRows(c *clusterResult, row func(...string)) {
	f0 := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	f2 := func(x float64) string { return fmt.Sprintf("%.2f", x) }
	row("5 scale", fmt.Sprintf("backlog: %d single-row txs, %.0f MB WAL", c.SingleRowTxs, float64(c.WALBytes)/1e6), "", "", "")
	row("", fmt.Sprintf("rows/s, median of %d: Redis Cluster (%dx%d) vs 1 redis-server", len(c.Runs), c.Masters, 1+c.Replicas),
		f0(c.ClusterRowsPerSec), f0(c.StandaloneRowsPerSec), f2(c.ClusterRatio))
	row("", fmt.Sprintf("rows/s, median of %d: two shards side by side vs 1 walbust", len(c.Runs)),
		f0(c.ShardsRowsPerSec), f0(c.StandaloneRowsPerSec), f2(c.ShardsRatio))
	for i, r := range c.Runs {
		row("", fmt.Sprintf("run %d seconds (%s first): standalone / cluster / shards", i+1, r.Order[0]),
			fmt.Sprintf("%.2f / %.2f / %.2f", r.Seconds[cfgStandalone], r.Seconds[cfgCluster], r.Seconds[cfgShards]), "", "")
		row("", fmt.Sprintf("run %d seconds, each shard's own drain: accounts / orders", i+1),
			fmt.Sprintf("%.2f / %.2f", r.ShardSecs["accounts"], r.ShardSecs["orders"]), "", "")
	}
}

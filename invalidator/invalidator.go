// Package invalidator applies invalidations to Redis: one pipeline per batch,
// retried as a whole until Redis acknowledges it. Every action is idempotent,
// so a retry or a replay after a crash is harmless.
package invalidator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// Options configures an Invalidator.
type Options struct {
	// Mode is Standalone (the default), Cluster or Sentinel; URL is in the
	// matching go-redis syntax (see newClient).
	Mode string
	URL  string
	// SentinelMaster names the master in Sentinel mode; it takes the place
	// of the URL's master_name.
	SentinelMaster string
	CAFile         string // PEM roots for rediss://
	// CertFile and KeyFile: the client certificate (PEM) a server with
	// tls-auth-clients asks for, sent to sentinels and data nodes alike.
	CertFile, KeyFile string
	// WaitReplicas: a batch counts as acknowledged only once this many
	// replicas of every master it wrote to have it (WAIT), so a failover
	// cannot undo an invalidation walbust has confirmed. 0: do not wait.
	WaitReplicas int
	Logger       *zap.Logger
	MaxBackoff   time.Duration // cap of the retry backoff
	// KeysPerCommand bounds multi-key UNLINK commands so one command never
	// blocks Redis for long.
	KeysPerCommand int
	// ScanCount is the COUNT hint of the SCANs of a pattern pass (default
	// 1000). With a MATCH prefix filter Redis still walks that many slots
	// per call but returns only the keys that can match.
	ScanCount int64
	// EventsChannel is where ApplyBatch publishes events ("" disables).
	EventsChannel string
	// Watermark is the key where ApplyBatch records the end LSN of every
	// batch it applied (protocol.AppliedKey; "" disables).
	Watermark string
	// Settled is the key of the settled position (protocol.SettledKey; ""
	// disables): how far every change is in Redis and, with replicas,
	// fenced again after the replicas replayed it. ApplyBatch records it
	// with the watermark, unless SettleLater: then Settle does, once the
	// re-fence is done.
	Settled     string
	SettleLater bool
	// OnResult is told the outcome of every attempt to apply a batch (nil:
	// acknowledged), so an outage shows in metrics while the batch is still
	// retrying. Pings are not reported: a server that answers PING may
	// still refuse every command walbust sends.
	OnResult func(error)
}

// Invalidator applies batches to one Redis: a server, a Sentinel-managed
// master, or a Redis Cluster.
type Invalidator struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // client, in cluster mode; nil otherwise
	opts    Options
	log     *zap.Logger
	pos     positions // how Watermark and Settled are written

	sweep    *sweep     // the keyspace walk pattern passes share
	indexMu  sync.Mutex // one index drain at a time
	passMu   sync.Mutex
	lastPass *Pass // the latest StartPass, which the next one records after
}

// Stats describes one applied batch.
type Stats struct {
	Attempts       int
	Keys           int  // direct keys acted on
	Patterns       int  // distinct patterns applied
	PatternMatches int  // keys found by patterns (by SCAN or in an index)
	KeysScanned    int  // keys SCAN returned to a pattern pass, matched in Go
	IndexHits      int  // keys found in indexes of indexed patterns
	Scanned        bool // a SCAN pass ran (some pattern is not index-only)
}

// New connects lazily: Redis may be down at start, and Apply retries.
func New(opts Options) (*Invalidator, error) {
	client, cluster, err := newClient(opts)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	// go-redis has one logger per process; walbust has one Redis client.
	redis.SetLogger(&redisLogger{log: opts.Logger.Named("go-redis")})
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.KeysPerCommand <= 0 {
		opts.KeysPerCommand = 256
	}
	if opts.ScanCount <= 0 {
		opts.ScanCount = 1000
	}
	iv := &Invalidator{client: client, cluster: cluster, opts: opts, log: opts.Logger}
	iv.sweep = &sweep{iv: iv}
	return iv, nil
}

// Close ends the keyspace walk (passes under way fail) and closes the
// connection pool.
func (iv *Invalidator) Close() error {
	iv.sweep.close()
	return iv.client.Close()
}

// Ping checks that Redis answers: in cluster mode, every master.
func (iv *Invalidator) Ping(ctx context.Context) error {
	var err error
	if iv.cluster != nil {
		err = iv.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() })
	} else {
		err = iv.client.Ping(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// Apply performs invs, retrying the whole batch with capped, jittered
// exponential backoff until Redis acknowledges every command or ctx ends.
// It returns nil only when every invalidation was acknowledged.
func (iv *Invalidator) Apply(ctx context.Context, invs []mapping.Invalidation) (Stats, error) {
	return iv.apply(ctx, invs, nil, marks{})
}

// ApplyBatch is Apply for the invalidations of the batch ending at lsn,
// which it then publishes on the events channel (Options.EventsChannel) as
// a protocol.Event: at least once, in order, and only once Redis has
// applied them, so a subscriber that reloads at once misses in Redis too.
// Without patterns (and in standalone or sentinel mode) the PUBLISH ends
// the batch's own pipeline: one round trip for both. It then records lsn
// as the applied watermark (Options.Watermark), even when invs is empty:
// the watermark must reach every position walbust checkpoints.
func (iv *Invalidator) ApplyBatch(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (Stats, error) {
	m := marks{applied: lsn, settled: lsn}
	if iv.opts.SettleLater {
		m.settled = 0
	}
	return iv.applyEvent(ctx, lsn, invs, m)
}

// ApplyChunk is ApplyBatch for a part of the batch ending at lsn that is
// not its last (or that was applied before, as a re-fence is): the
// watermark is left alone, since the batch is not all in Redis yet, or its
// position was recorded already and later batches may have moved past it.
func (iv *Invalidator) ApplyChunk(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (Stats, error) {
	return iv.applyEvent(ctx, lsn, invs, marks{})
}

func (iv *Invalidator) applyEvent(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation, mark marks) (Stats, error) {
	if iv.opts.EventsChannel == "" || len(invs) == 0 {
		return iv.apply(ctx, invs, nil, mark)
	}
	ev := protocol.Event{LSN: lsn}
	for _, inv := range invs {
		if inv.Pattern {
			ev.Patterns = append(ev.Patterns, inv.Key)
		} else {
			ev.Keys = append(ev.Keys, inv.Key)
		}
	}
	msg, err := ev.Marshal()
	if err != nil {
		return Stats{}, fmt.Errorf("encode event: %w", err)
	}
	return iv.apply(ctx, invs, msg, mark)
}

// apply runs invs, then records mark's positions, then sends event.
func (iv *Invalidator) apply(ctx context.Context, invs []mapping.Invalidation, event []byte, mark marks) (Stats, error) {
	mark = iv.enabledMarks(mark)
	if len(invs) == 0 && mark.none() {
		return Stats{}, nil
	}
	return iv.retrying(ctx, "batch", len(invs), func(st *Stats) error {
		err := iv.applyOnce(ctx, invs, event, mark, st)
		if isNoScript(err) {
			// Redis restarted or SCRIPT FLUSH ran: EVALSHA inside a pipeline
			// does not fall back to EVAL, so load the scripts and go again.
			// Not a nested retry: it happens at most once per attempt, at
			// once, because go-redis needs it; waiting is retrying's job.
			if err = iv.loadScripts(ctx); err == nil {
				*st = Stats{Attempts: st.Attempts} // count the keys once
				err = iv.applyOnce(ctx, invs, event, mark, st)
			}
		}
		if iv.markNoPerm(err) {
			// The user may not run raise.lua: plain SETs from now on.
			*st = Stats{Attempts: st.Attempts}
			err = iv.applyOnce(ctx, invs, event, mark, st)
		}
		return err
	})
}

// retrying runs attempt until it succeeds or ctx ends, with capped,
// jittered exponential backoff; what and n describe it in logs.
func (iv *Invalidator) retrying(ctx context.Context, what string, n int, attempt func(*Stats) error) (Stats, error) {
	var st Stats
	backoff := retry.Backoff{Initial: 50 * time.Millisecond, Max: iv.opts.MaxBackoff, Jitter: retry.Equal}
	var lastLog time.Time
	for {
		st = Stats{Attempts: st.Attempts + 1}
		err := attempt(&st)
		if iv.opts.OnResult != nil {
			iv.opts.OnResult(err)
		}
		if err == nil {
			if st.Attempts > 1 {
				iv.log.Info("redis recovered; "+what+" applied", zap.Int("attempts", st.Attempts), zap.Int("invalidations", n))
			}
			return st, nil
		}
		if ctx.Err() != nil {
			return st, fmt.Errorf("%s of %d invalidations: %w (last error: %v)", what, n, ctx.Err(), err)
		}
		if errors.Is(err, ErrClosed) {
			return st, fmt.Errorf("%s of %d invalidations: %w", what, n, err)
		}
		if iv.cluster != nil {
			// A failover or resharding moved slots: learn the new map
			// before the next attempt rather than after a redirect.
			iv.cluster.ReloadState(ctx)
		}
		if time.Since(lastLog) > 10*time.Second {
			msg := "redis unavailable; retrying " + what
			if errors.Is(err, ErrTooFewReplicas) {
				msg = "redis replicas behind wait_replicas; holding the stream, retrying " + what
			}
			iv.log.Warn(msg, zap.Error(err), zap.Int("attempt", st.Attempts), zap.Int("invalidations", n))
			lastLog = time.Now()
		}
		if serr := retry.Sleep(ctx, backoff.Next()); serr != nil {
			return st, fmt.Errorf("%s of %d invalidations: %w (last error: %v)", what, n, serr, err)
		}
	}
}

func (iv *Invalidator) applyOnce(ctx context.Context, invs []mapping.Invalidation, event []byte, mark marks, st *Stats) error {
	// A new token per attempt, written into every tombstone of it: a
	// retry or a replay re-fences with a token no reader has observed,
	// which can only make more fills fail, never fewer. Local, since a
	// pattern pass may run concurrently (ApplyPass).
	token := protocol.NewToken()
	b := iv.newBatch()
	b.token = token
	var patterns []mapping.Invalidation
	var families []string // of inlined patterns, each once
	var seen map[string]bool
	// Not while another pattern of the batch acts on an index otherwise
	// (a fence, say): the delete would empty the index under it.
	inline := iv.cluster == nil && !slices.ContainsFunc(invs, func(inv mapping.Invalidation) bool { return indexed(inv) && !Inline(inv) })
	for _, inv := range invs {
		if inline && inv.Pattern && Inline(inv) {
			if family, ok := protocol.IndexFamily(inv.Key); ok {
				if seen == nil {
					seen = map[string]bool{}
				}
				if !seen[family] {
					seen[family] = true
					families = append(families, family)
					st.Patterns++
				}
				continue
			}
		}
		if inv.Pattern {
			patterns = append(patterns, inv)
			continue
		}
		if err := b.queue(ctx, inv, inv.Key); err != nil {
			return err
		}
		st.Keys++
	}
	// One pipeline on one connection runs in order: the watermark and the
	// event can ride along (the watermark first, so a subscriber told of a
	// batch finds the watermark at it). A cluster pipeline runs on several
	// nodes, and pattern scans come after it, so then both go last, on
	// their own. WAIT, which ends the pipeline, covers the watermark too.
	// The UNLINKs still buffered go first: the watermark and the event
	// must follow every command of the batch, since other clients'
	// commands may run between those of a pipeline.
	if err := b.flushUnlinks(ctx); err != nil {
		return err
	}
	inlined := b.unlinkFamilies(ctx, families)
	inPipe := false
	if !mark.none() && len(patterns) == 0 && b.pipe != nil && iv.cluster == nil {
		iv.queueMarks(ctx, b.pipe, mark)
		inPipe = true
	}
	if event != nil && len(patterns) == 0 && b.pipe != nil && iv.cluster == nil && iv.opts.WaitReplicas == 0 {
		b.pipe.Publish(ctx, iv.opts.EventsChannel, event)
		event = nil
	}
	if err := b.exec(ctx); err != nil {
		return err
	}
	for _, c := range inlined {
		n, _ := c.Int() // exec returned nil: every command succeeded
		st.IndexHits += n
		st.PatternMatches += n
	}
	if inPipe {
		iv.marked(mark)
		mark = marks{}
	}
	if len(patterns) > 0 {
		if err := iv.applyPatterns(ctx, CoalescePatterns(patterns), st); err != nil {
			return err
		}
	}
	return iv.markAndPublish(ctx, mark, event)
}

// queue adds the commands that apply inv's action to key.
func (b *batch) queue(ctx context.Context, inv mapping.Invalidation, key string) error {
	switch inv.Action {
	case mapping.Bump:
		vkey := inv.Aux.For(key)
		pipe, err := b.pipeFor(ctx, vkey)
		if err != nil {
			return err
		}
		bumpScript.EvalSha(ctx, pipe, []string{vkey}, strconv.FormatUint(uint64(inv.Version), 10))
	case mapping.Stale:
		skey := inv.Aux.For(key)
		if b.iv.cluster != nil && keySlot(key) != keySlot(skey) {
			// A script may only touch keys of one slot (CROSSSLOT).
			b.moves = append(b.moves, move{key: key, to: skey, ttl: inv.TTL})
			return nil
		}
		pipe, err := b.pipeFor(ctx, key)
		if err != nil {
			return err
		}
		staleScript.EvalSha(ctx, pipe, []string{key, skey}, inv.TTL.Milliseconds())
	case mapping.Fence:
		pipe, err := b.pipeFor(ctx, key)
		if err != nil {
			return err
		}
		fenceScript.EvalSha(ctx, pipe, []string{key}, strconv.FormatUint(uint64(inv.Version), 10), b.token, inv.TTL.Milliseconds())
	case mapping.Refresh:
		return b.refresh(ctx, inv, key)
	default:
		return b.unlink(ctx, key)
	}
	return nil
}

func execPipeline(ctx context.Context, pipe redis.Pipeliner) error {
	if pipe.Len() == 0 {
		return nil
	}
	cmds, err := pipe.Exec(ctx)
	var errs []error
	for _, c := range cmds {
		if c.Err() != nil && !errors.Is(c.Err(), redis.Nil) {
			errs = append(errs, c.Err())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("redis pipeline: %w", errors.Join(errs...))
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redis pipeline: %w", err)
	}
	return nil
}

// loadScripts loads the scripts on every master: a promoted replica, or a
// restarted server, has none (scripts are not replicated).
func (iv *Invalidator) loadScripts(ctx context.Context) error {
	nodes, err := iv.masters(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		for _, s := range scripts {
			if err := s.Load(ctx, n).Err(); err != nil {
				return fmt.Errorf("load script: %w", err)
			}
		}
	}
	return nil
}

// masters are the servers that hold keys: every master of a cluster, or
// the one server (the master, with Sentinel).
func (iv *Invalidator) masters(ctx context.Context) ([]redis.UniversalClient, error) {
	if iv.cluster == nil {
		return []redis.UniversalClient{iv.client}, nil
	}
	var mu sync.Mutex
	var nodes []redis.UniversalClient
	err := iv.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		nodes = append(nodes, c)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list cluster masters: %w", err)
	}
	return nodes, nil
}

func isNoScript(err error) bool {
	for err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			return true
		}
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				if isNoScript(e) {
					return true
				}
			}
			return false
		}
		err = errors.Unwrap(err)
	}
	return false
}

// Add accumulates o into s.
func (s *Stats) Add(o Stats) {
	s.Attempts = max(s.Attempts, o.Attempts)
	s.Keys += o.Keys
	s.Patterns += o.Patterns
	s.PatternMatches += o.PatternMatches
	s.KeysScanned += o.KeysScanned
	s.IndexHits += o.IndexHits
	s.Scanned = s.Scanned || o.Scanned
}

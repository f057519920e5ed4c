// Package invalidator applies invalidations to Redis: one pipeline per batch,
// retried as a whole until Redis acknowledges it. Every action is idempotent,
// so a retry or a replay after a crash is harmless.
package invalidator

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// Options configures an Invalidator.
type Options struct {
	URL        string
	CAFile     string // PEM roots for rediss://
	Logger     *zap.Logger
	MaxBackoff time.Duration // cap of the retry backoff
	// KeysPerCommand bounds multi-key UNLINK commands so one command never
	// blocks Redis for long.
	KeysPerCommand int
	// ScanCount is the COUNT hint of pattern SCANs.
	ScanCount int64
	// OnResult is told the outcome of every attempt (nil: acknowledged),
	// so an outage shows in metrics while the batch is still retrying.
	OnResult func(error)
}

// Invalidator applies batches to one Redis.
type Invalidator struct {
	client *redis.Client
	opts   Options
	log    *zap.Logger
	keys   []string // reused argument buffer
	// token is written into every tombstone of one attempt. A new one per
	// attempt: a retry or a replay re-fences with a token no reader has
	// observed, which can only make more fills fail, never fewer.
	token string
}

// Stats describes one applied batch.
type Stats struct {
	Attempts       int
	Keys           int // direct keys acted on
	Patterns       int // patterns scanned
	PatternMatches int // keys found by pattern scans
}

// New connects lazily: Redis may be down at start, and Apply retries.
func New(opts Options) (*Invalidator, error) {
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		// net/url's errors quote the URL, password included.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return nil, errors.New("parse redis url: malformed URL (not shown: it may hold a password; check %-escapes)")
		}
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	ro.ClientName = "walbust"
	if opts.CAFile != "" {
		if ro.TLSConfig == nil {
			return nil, fmt.Errorf("redis tls_ca_file is set but the URL is not rediss://")
		}
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("redis tls_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis tls_ca_file %s: no PEM certificates", opts.CAFile)
		}
		ro.TLSConfig.RootCAs = pool
	}
	ro.DialTimeout = 5 * time.Second
	ro.ReadTimeout = 5 * time.Second
	ro.WriteTimeout = 5 * time.Second
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
	return &Invalidator{client: redis.NewClient(ro), opts: opts, log: opts.Logger}, nil
}

// Close closes the connection pool.
func (iv *Invalidator) Close() error { return iv.client.Close() }

// Ping checks that Redis answers.
func (iv *Invalidator) Ping(ctx context.Context) error {
	err := iv.client.Ping(ctx).Err()
	if iv.opts.OnResult != nil {
		iv.opts.OnResult(err)
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
	var st Stats
	if len(invs) == 0 {
		return st, nil
	}
	backoff := 50 * time.Millisecond
	var lastLog time.Time
	for {
		st = Stats{Attempts: st.Attempts + 1}
		err := iv.applyOnce(ctx, invs, &st)
		if isNoScript(err) {
			// Redis restarted or SCRIPT FLUSH ran: EVALSHA inside a pipeline
			// does not fall back to EVAL, so load the scripts and go again.
			if err = iv.loadScripts(ctx); err == nil {
				st = Stats{Attempts: st.Attempts} // count the keys once
				err = iv.applyOnce(ctx, invs, &st)
			}
		}
		if iv.opts.OnResult != nil {
			iv.opts.OnResult(err)
		}
		if err == nil {
			if st.Attempts > 1 {
				iv.log.Info("redis recovered; batch applied", zap.Int("attempts", st.Attempts), zap.Int("invalidations", len(invs)))
			}
			return st, nil
		}
		if ctx.Err() != nil {
			return st, fmt.Errorf("apply %d invalidations: %w (last error: %v)", len(invs), ctx.Err(), err)
		}
		if time.Since(lastLog) > 10*time.Second {
			iv.log.Warn("redis unavailable; retrying batch", zap.Error(err), zap.Int("attempt", st.Attempts), zap.Int("invalidations", len(invs)))
			lastLog = time.Now()
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("apply %d invalidations: %w (last error: %v)", len(invs), ctx.Err(), err)
		case <-time.After(wait):
		}
		backoff = min(backoff*2, iv.opts.MaxBackoff)
	}
}

func (iv *Invalidator) applyOnce(ctx context.Context, invs []mapping.Invalidation, st *Stats) error {
	iv.token = protocol.NewToken()
	pipe := iv.client.Pipeline()
	iv.keys = iv.keys[:0]
	var patterns []mapping.Invalidation
	for _, inv := range invs {
		if inv.Pattern {
			patterns = append(patterns, inv)
			continue
		}
		iv.queue(ctx, pipe, inv, inv.Key)
		st.Keys++
	}
	iv.flushUnlink(ctx, pipe)
	if err := execPipeline(ctx, pipe); err != nil {
		return err
	}
	for _, inv := range patterns {
		n, err := iv.scan(ctx, inv)
		if err != nil {
			return err
		}
		st.Patterns++
		st.PatternMatches += n
	}
	return nil
}

// queue adds the commands that apply inv's action to key.
func (iv *Invalidator) queue(ctx context.Context, pipe redis.Pipeliner, inv mapping.Invalidation, key string) {
	switch inv.Action {
	case mapping.Bump:
		bumpScript.EvalSha(ctx, pipe, []string{inv.Aux.For(key)}, strconv.FormatUint(inv.Version, 10))
	case mapping.Stale:
		staleScript.EvalSha(ctx, pipe, []string{key, inv.Aux.For(key)}, inv.TTL.Milliseconds())
	case mapping.Fence:
		fenceScript.EvalSha(ctx, pipe, []string{key}, strconv.FormatUint(inv.Version, 10), iv.token, inv.TTL.Milliseconds())
	default:
		iv.keys = append(iv.keys, key)
		if len(iv.keys) == iv.opts.KeysPerCommand {
			iv.flushUnlink(ctx, pipe)
		}
	}
}

func (iv *Invalidator) flushUnlink(ctx context.Context, pipe redis.Pipeliner) {
	if len(iv.keys) > 0 {
		pipe.Unlink(ctx, iv.keys...)
		iv.keys = iv.keys[:0]
	}
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

func (iv *Invalidator) loadScripts(ctx context.Context) error {
	for _, s := range scripts {
		if err := s.Load(ctx, iv.client).Err(); err != nil {
			return fmt.Errorf("load script: %w", err)
		}
	}
	return nil
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
}

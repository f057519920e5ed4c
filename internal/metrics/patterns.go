package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walbust/walbust/internal/observe"
)

// passMetrics describe the pattern passes: one walk of the keyspace (and
// the index sets of indexed patterns) serving the patterns of many batches.
type passMetrics struct {
	seconds     prometheus.Histogram
	perPass     prometheus.Histogram
	keysScanned prometheus.Counter
	matches     prometheus.Counter
	indexHits   prometheus.Counter
}

func newPassMetrics(f factory) passMetrics {
	return passMetrics{
		seconds: f.histogram("pattern_pass_seconds", "Duration of a pattern pass (every distinct pattern of the batches waiting for it, one SCAN of the keyspace).",
			[]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}),
		perPass:     f.histogram("pattern_patterns_per_pass", "Distinct patterns one pattern pass served.", prometheus.ExponentialBuckets(1, 4, 10)),
		keysScanned: f.counter("pattern_keys_scanned_total", "Keys SCAN returned to pattern passes, each matched in walbust against the pass's patterns."),
		matches:     f.counter("pattern_matches_total", "Keys pattern passes acted on (found by SCAN or in an index)."),
		indexHits:   f.counter("pattern_index_hits_total", "Keys found in the index sets of indexed patterns."),
	}
}

// PatternPass counts one acknowledged pattern pass.
func (m *Metrics) PatternPass(p observe.PatternPass) {
	m.passes.seconds.Observe(p.Duration.Seconds())
	m.passes.perPass.Observe(float64(p.Patterns))
	m.passes.keysScanned.Add(float64(p.KeysScanned))
	m.passes.matches.Add(float64(p.Matches))
	m.passes.indexHits.Add(float64(p.IndexHits))
	if p.Scanned {
		m.patternScans.Inc()
	}
	m.patternKeys.Add(float64(p.Matches))
	if p.Attempts > 1 {
		m.redisRetries.Inc()
	}
}

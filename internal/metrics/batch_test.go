package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/observe"
)

func TestBatchAppliedCountsPlainValues(t *testing.T) {
	m := New("test", "slot")
	m.InitSeries([]string{"public.users"}, []string{"delete", "fence"})
	now := time.Now()
	m.BatchApplied(observe.Batch{
		Txs:           []observe.Tx{{CommitTime: now.Add(-time.Second)}, {CommitTime: now, Heartbeat: now.Add(-2 * time.Second)}},
		EndLSN:        0x1000,
		Changes:       []observe.Count{{Table: "public.users", Op: "update", N: 3}},
		Invalidations: []observe.Invalidations{{Action: "delete", N: 4}, {Action: "fence", Pattern: true, N: 1}},
		Keys:          5, Attempts: 2, Acked: now,
	})
	m.TableMissing("public.gone")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range []string{
		`# HELP walbust_invalidations_total Invalidations sent to Redis, by action and kind (key or pattern).`,
		`walbust_invalidations_total{action="delete",kind="key"} 4`,
		`walbust_invalidations_total{action="delete",kind="pattern"} 0`,
		`walbust_invalidations_total{action="fence",kind="key"} 0`,
		`walbust_invalidations_total{action="fence",kind="pattern"} 1`,
		`walbust_changes_total{op="update",table="public.users"} 3`,
		`walbust_changes_total{op="insert",table="public.users"} 0`,
		`walbust_table_missing{table="public.gone"} 1`,
		`walbust_transactions_total 2`,
		`walbust_redis_retries_total 1`,
		`walbust_checkpoint_lsn 4096`,
		`walbust_heartbeat_lag_seconds 2`,
	} {
		if !strings.Contains(rec.Body.String(), line+"\n") {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if st := m.Snapshot(); st.CheckpointLSN != "0/1000" || st.Transactions != 2 {
		t.Errorf("Snapshot = %+v", st)
	}
}

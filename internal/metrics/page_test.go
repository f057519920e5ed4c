package metrics

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/observe"
)

func pageGet(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Result()
}

func TestStatusPageServedWithCSP(t *testing.T) {
	h := New("test", "slot").Handler()
	for path, want := range map[string]struct{ contentType, contains string }{
		"/":         {"text/html; charset=utf-8", `<script src="page.js"`},
		"/page.js":  {"text/javascript; charset=utf-8", "status/history"},
		"/page.css": {"text/css; charset=utf-8", ".banner"},
	} {
		resp := pageGet(t, h, path)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %d", path, resp.StatusCode)
			continue
		}
		if got := resp.Header.Get("Content-Type"); got != want.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", path, got, want.contentType)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || strings.Contains(csp, "unsafe") || strings.Contains(csp, "http") {
			t.Errorf("GET %s: Content-Security-Policy %q, want only 'self'", path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
		if !strings.Contains(string(body), want.contains) {
			t.Errorf("GET %s: body lacks %q", path, want.contains)
		}
	}
	// Self-contained: nothing from another origin, nothing inline that the
	// CSP would refuse, no HTML built from strings.
	for _, f := range []string{"page/index.html", "page/page.js", "page/page.css"} {
		b, err := pageFiles.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, bad := range []string{"http://", "https://", "//cdn", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "<style", "style=", "onclick", "onload", "eval("} {
			if strings.Contains(strings.ReplaceAll(s, "http://www.w3.org/2000/svg", ""), bad) {
				t.Errorf("%s contains %q", f, bad)
			}
		}
		if strings.Contains(s, "<script>") || strings.Contains(s, "<script ") && !strings.Contains(s, `<script src="page.js" defer></script>`) {
			t.Errorf("%s has an inline script", f)
		}
	}
	if n := len(must(pageFiles.ReadFile("page/index.html"))) + len(must(pageFiles.ReadFile("page/page.js"))) +
		len(must(pageFiles.ReadFile("page/page.css"))); n > 16<<10 {
		t.Errorf("the page is %d bytes; it should stay small", n)
	}
	for _, path := range []string{"/nope", "/page/index.html", "/index.html"} {
		if resp := pageGet(t, h, path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, resp.StatusCode)
		}
	}
	// The older endpoints are still there, unchanged.
	if resp := pageGet(t, h, "/status"); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET /status = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func batch(acked time.Time, lag time.Duration, table string, changes, keys int) observe.Batch {
	return observe.Batch{
		Txs:           []observe.Tx{{CommitTime: acked.Add(-lag)}},
		EndLSN:        0x16B3748,
		Changes:       []observe.Count{{Table: table, Op: "update", N: changes}},
		Invalidations: []observe.Invalidations{{Action: "delete", N: keys}},
		Keys:          keys,
		Attempts:      1,
		Acked:         acked,
	}
}

// historyJSON is the shape /status/history promises.
type historyJSON struct {
	State  string `json:"state"`
	Causes []struct {
		Cause, Error string
		Since        time.Time
	} `json:"causes"`
	Status struct {
		Slot       string `json:"slot"`
		Ready      bool   `json:"ready"`
		LagBytes   uint64 `json:"lag_bytes"`
		Checkpoint string `json:"checkpoint_lsn"`
	} `json:"status"`
	IntervalMS int64 `json:"interval_ms"`
	Capacity   int   `json:"capacity"`
	Samples    []struct {
		T            int64    `json:"t"`
		Ready        bool     `json:"ready"`
		LagBytes     uint64   `json:"lag_bytes"`
		LagMS        *float64 `json:"lag_ms"`
		Transactions int      `json:"transactions"`
		Keys         int      `json:"keys"`
		Changes      int      `json:"changes"`
	} `json:"samples"`
	TxPerSec   float64 `json:"transactions_per_sec"`
	KeysPerSec float64 `json:"keys_per_sec"`
	Tables     []struct {
		Table         string  `json:"table"`
		ChangesPerSec float64 `json:"changes_per_sec"`
		ChangesTotal  uint64  `json:"changes_total"`
	} `json:"tables"`
	Invalidations []struct {
		Action, Kind string
		PerSec       float64 `json:"per_sec"`
		Total        uint64  `json:"total"`
	} `json:"invalidations"`
	Events []struct {
		Time   time.Time `json:"time"`
		Kind   string    `json:"kind"`
		Cause  string    `json:"cause"`
		Detail string    `json:"detail"`
		Txs    int       `json:"transactions"`
		Keys   int       `json:"keys"`
	} `json:"events"`
}

func fetchHistory(t *testing.T, h http.Handler) historyJSON {
	t.Helper()
	resp := pageGet(t, h, "/status/history")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /status/history = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.Header.Get("Content-Security-Policy") == "" {
		t.Error("GET /status/history has no Content-Security-Policy")
	}
	var out historyJSON
	dec := json.NewDecoder(resp.Body)
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHistoryShapeAndBounds(t *testing.T) {
	m := New("test", "slot_a")
	m.InitSeries([]string{"public.products", "public.categories"}, []string{"delete"})
	h := m.Handler()

	empty := fetchHistory(t, h)
	if empty.State != "stalled" || len(empty.Causes) == 0 || empty.Samples == nil || len(empty.Samples) != 0 ||
		empty.Events == nil || empty.Capacity != historySamples || empty.IntervalMS != 1000 {
		t.Fatalf("before anything happened: %+v", empty)
	}
	if len(empty.Tables) != 2 || empty.Tables[0].Table != "public.categories" || empty.Tables[0].ChangesTotal != 0 {
		t.Errorf("registered tables are listed at zero: %+v", empty.Tables)
	}

	m.Connected(true)
	m.PingResult(nil)
	now := time.Now()
	m.Reported(0x16B3748+4096, 0x16B3748)
	m.BatchApplied(batch(now, 40*time.Millisecond, "public.products", 3, 5))
	m.BatchApplied(batch(now, 10*time.Millisecond, "public.products", 1, 2))
	m.sampleNow(now)
	m.sampleNow(now.Add(time.Second)) // a second with nothing applied
	got := fetchHistory(t, h)
	if got.State != "streaming" || len(got.Causes) != 0 || !got.Status.Ready || got.Status.Slot != "slot_a" || got.Status.Checkpoint != "0/16B3748" {
		t.Fatalf("streaming: state %q causes %+v status %+v", got.State, got.Causes, got.Status)
	}
	if len(got.Samples) != 2 {
		t.Fatalf("%d samples, want 2", len(got.Samples))
	}
	s0, s1 := got.Samples[0], got.Samples[1]
	if s0.T != now.UnixMilli() || !s0.Ready || s0.LagBytes != 4096 || s0.LagMS == nil || *s0.LagMS < 39 || *s0.LagMS > 41 ||
		s0.Transactions != 2 || s0.Keys != 7 || s0.Changes != 4 {
		t.Errorf("first sample %+v (lag_ms %v), want t=%d ready, 4096 bytes, ~40 ms, 2 tx, 7 keys, 4 changes", s0, s0.LagMS, now.UnixMilli())
	}
	if s1.LagMS != nil || s1.Transactions != 0 {
		t.Errorf("an idle second: %+v, want lag_ms null and no transactions", s1)
	}
	if got.TxPerSec != 1 || got.KeysPerSec != 3.5 {
		t.Errorf("rates over 2 s: %v tx/s, %v keys/s; want 1 and 3.5", got.TxPerSec, got.KeysPerSec)
	}
	var products bool
	for _, tr := range got.Tables {
		if tr.Table == "public.products" {
			products = tr.ChangesTotal == 4 && tr.ChangesPerSec == 2
		}
	}
	if !products || len(got.Invalidations) != 1 || got.Invalidations[0].Action != "delete" || got.Invalidations[0].Kind != "key" ||
		got.Invalidations[0].Total != 7 {
		t.Errorf("tables %+v invalidations %+v", got.Tables, got.Invalidations)
	}
	// Two batches acknowledged within a second are one event.
	if len(got.Events) != 2 || got.Events[0].Kind != "batch" || got.Events[0].Txs != 2 || got.Events[0].Keys != 7 ||
		got.Events[1].Kind != "started" {
		t.Errorf("events %+v, want the merged batch, then started", got.Events)
	}

	// A Redis outage: stalled, caused by redis, with the error; then back.
	m.PingResult(errors.New("dial tcp 127.0.0.1:6379: connect: connection refused <script>"))
	got = fetchHistory(t, h)
	if got.State != "stalled" || len(got.Causes) != 1 || got.Causes[0].Cause != "redis" ||
		!strings.Contains(got.Causes[0].Error, "connection refused <script>") || got.Causes[0].Since.IsZero() {
		t.Fatalf("Redis down: state %q causes %+v", got.State, got.Causes)
	}
	if got.Events[0].Kind != "stalled" || got.Events[0].Cause != "redis" {
		t.Errorf("newest event %+v, want stalled (redis)", got.Events[0])
	}
	m.Stalled("lookup", errors.New("permission denied"))
	m.PingResult(nil)
	m.Recovered("lookup")
	got = fetchHistory(t, h)
	if got.State != "streaming" {
		t.Errorf("after recovery: %q %+v", got.State, got.Causes)
	}
	var kinds []string
	for _, e := range got.Events {
		kinds = append(kinds, e.Kind+":"+e.Cause)
	}
	if want := "recovered:lookup recovered:redis stalled:lookup stalled:redis"; !strings.HasPrefix(strings.Join(kinds, " "), want) {
		t.Errorf("events %v, want them to start %s", kinds, want)
	}

	// Bounded: ten minutes of samples, 20 batch events and 20 state changes.
	for i := range 3 * historySamples {
		at := now.Add(time.Duration(i+2) * time.Second)
		m.BatchApplied(batch(at, time.Millisecond, "public.products", 1, 1))
		m.sampleNow(at)
		m.Stalled("checkpoint", errors.New("disk full"))
		m.Recovered("checkpoint")
	}
	got = fetchHistory(t, h)
	if len(got.Samples) != historySamples {
		t.Errorf("%d samples, want %d", len(got.Samples), historySamples)
	}
	last := now.Add(time.Duration(3*historySamples+1) * time.Second).UnixMilli()
	if got.Samples[len(got.Samples)-1].T != last || got.Samples[0].T != last-int64(historySamples-1)*1000 {
		t.Errorf("samples from %d to %d, want the newest %d ending at %d", got.Samples[0].T, got.Samples[len(got.Samples)-1].T, historySamples, last)
	}
	for i := 1; i < len(got.Samples); i++ {
		if got.Samples[i].T <= got.Samples[i-1].T {
			t.Fatalf("samples out of order at %d", i)
		}
	}
	if len(got.Events) != 2*historyEvents {
		t.Errorf("%d events, want %d", len(got.Events), 2*historyEvents)
	}
	for i := 1; i < len(got.Events); i++ {
		if got.Events[i].Time.After(got.Events[i-1].Time) {
			t.Fatalf("events not newest first at %d", i)
		}
	}
	if got.TxPerSec != 1 {
		t.Errorf("%v tx/s over the window, want 1", got.TxPerSec)
	}
}

package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz (the process answers), /readyz
// (streaming and Redis reachable; 503 with the reason otherwise) and
// /status (JSON, for `walbust status`), the status page at / with its
// /status/history (page.go), and /debug/pprof/ once EnableProfiles was
// called.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready, why, since := m.ready(); !ready {
			http.Error(w, fmt.Sprintf("not ready since %s (%s): %s", since.UTC().Format(time.RFC3339), time.Since(since).Round(time.Second), why),
				http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if m.profiles {
		handleProfiles(mux)
	}
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(m.Snapshot())
	})
	m.handlePage(mux)
	return mux
}

// Listen binds addr now, so a taken port is reported at start, and serves
// until ctx ends. done yields the server's error, if any, once it has
// stopped: after ctx ended, once its shutdown returned.
func (m *Metrics) Listen(ctx context.Context, addr string) (net.Addr, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go m.sampleEvery(ctx, historyInterval)
	served := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		served <- err
	}()
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		done <- <-served
	}()
	return ln.Addr(), done, nil
}

package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// reloadMetrics count deps.yaml reloads (SIGHUP).
type reloadMetrics struct {
	total       *prometheus.CounterVec // result: ok, error
	lastSuccess prometheus.Gauge
	lastTime    prometheus.Gauge
}

func newReloadMetrics(f factory) reloadMetrics {
	r := reloadMetrics{
		total: f.counterVec("registry_reloads_total",
			"deps.yaml reloads asked for with SIGHUP, by result: ok (in use from the next transaction) or error (refused; the running registry stays).", "result"),
		lastSuccess: f.gauge("registry_last_reload_success", "1 when the last reload was applied (or none was asked for), 0 when it was refused."),
		lastTime:    f.gauge("registry_last_reload_timestamp_seconds", "When the last reload was asked for (0: never)."),
	}
	r.total.WithLabelValues("ok")
	r.total.WithLabelValues("error")
	r.lastSuccess.Set(1) // the registry loaded at start is the file's content
	return r
}

// RegistryReloaded records a reload's outcome: nil when it was applied.
func (m *Metrics) RegistryReloaded(err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reloads.total.WithLabelValues(result).Inc()
	m.reloads.lastSuccess.Set(b2f(err == nil))
	m.reloads.lastTime.Set(float64(time.Now().UnixNano()) / 1e9)
}

package config

import (
	"fmt"
	"net/url"
	"time"
)

// Replicas are the read replicas whose lag the fence action must outlast:
// fenced keys are fenced again once every replica has replayed the batch
// (or WaitMax has passed).
type Replicas struct {
	// FromPrimary discovers the replicas in the primary's
	// pg_stat_replication.
	FromPrimary bool
	// URLs are replicas polled directly, for cascades the primary does not
	// list (or for exact replay positions: pg_stat_replication's are as old
	// as the standby's last status report).
	URLs []string
	// WaitMax bounds the wait for the replicas (replica_wait_max).
	WaitMax time.Duration
}

// Enabled reports whether fenced keys are fenced again.
func (r Replicas) Enabled() bool { return r.FromPrimary || len(r.URLs) > 0 }

// Events configure the channel acknowledged invalidations are published on.
type Events struct {
	Channel string // "" disables
}

func (c *Config) replicaSettings() []setting {
	return []setting{
		{path: "replicas.from_primary", flag: "replicas-from-primary", env: "WALBUST_REPLICAS_FROM_PRIMARY", boolean: &c.Replicas.FromPrimary, usage: "re-fence once the replicas the primary lists in pg_stat_replication have replayed a batch"},
		{path: "replicas.urls", flag: "replica-urls", env: "WALBUST_REPLICA_URLS", list: &c.Replicas.URLs, usage: "comma-separated replica URLs to poll for their replay position (cascades)"},
		{path: "replicas.wait_max", flag: "replica-wait-max", env: "WALBUST_REPLICA_WAIT_MAX", dur: &c.Replicas.WaitMax, usage: "longest wait for the replicas before fencing again anyway"},
		{path: "events.channel", flag: "events-channel", env: "WALBUST_EVENTS_CHANNEL", str: &c.Events.Channel, usage: "Redis channel acknowledged invalidations are published on (empty disables)"},
	}
}

func (r Replicas) validate() []error {
	var errs []error
	if r.WaitMax <= 0 {
		errs = append(errs, fmt.Errorf("replicas.wait_max must be positive"))
	}
	for i, u := range r.URLs {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "postgres" && p.Scheme != "postgresql") {
			// Not the URL itself: it may hold a password.
			errs = append(errs, fmt.Errorf("replicas.urls[%d]: want a postgres:// URL", i))
		}
	}
	return errs
}

package config_test

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReplicasAndEvents(t *testing.T) {
	path := writeConfig(t, `replicas:
  from_primary: true
  urls: ["postgres://r1/app", "postgres://r2/app"]
  wait_max: 2s
events:
  channel: cache:events
`)
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Replicas.FromPrimary || cfg.Replicas.WaitMax != 2*time.Second || cfg.Events.Channel != "cache:events" ||
		!reflect.DeepEqual(cfg.Replicas.URLs, []string{"postgres://r1/app", "postgres://r2/app"}) {
		t.Errorf("from the file: replicas %+v, events %+v", cfg.Replicas, cfg.Events)
	}
	if !cfg.Replicas.Enabled() {
		t.Error("Enabled() = false with replicas configured")
	}

	cfg, err = load(t, []string{"--config", path, "--replicas-from-primary=false", "--events-channel="},
		env{"WALBUST_REPLICA_URLS": "postgres://r3/app, postgres://r4/app,"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Replicas.FromPrimary || cfg.Events.Channel != "" ||
		!reflect.DeepEqual(cfg.Replicas.URLs, []string{"postgres://r3/app", "postgres://r4/app"}) {
		t.Errorf("flags and environment over the file: replicas %+v, events %+v", cfg.Replicas, cfg.Events)
	}

	cfg, err = load(t, nil, env{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Replicas.Enabled() || cfg.Events.Channel != "walbust:events" {
		t.Errorf("defaults: replicas %+v (want none), events %+v (want walbust:events)", cfg.Replicas, cfg.Events)
	}
}

func TestReplicasErrors(t *testing.T) {
	for _, tt := range []struct {
		name, file string
		env        env
		want       string
	}{
		{"bad boolean", "replicas:\n  from_primary: sometimes\n", nil, `replicas.from_primary: invalid boolean "sometimes"`},
		{"bad wait", "replicas:\n  wait_max: 0s\n", nil, "replicas.wait_max must be positive"},
		{"not a URL", "replicas:\n  urls: [\"mysql://x\"]\n", nil, "replicas.urls[0]: want a postgres:// URL"},
		{"unknown field", "replicas:\n  lag: 1s\n", nil, "walbust.yaml:2:3"},
		{"bad boolean in the environment", "", env{"WALBUST_REPLICAS_FROM_PRIMARY": "yes please"}, "WALBUST_REPLICAS_FROM_PRIMARY: invalid boolean"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{}
			if tt.file != "" {
				args = append(args, "--config", writeConfig(t, tt.file))
			}
			_, err := load(t, args, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

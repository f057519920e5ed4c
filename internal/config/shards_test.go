package config_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const shardedConfig = `postgres:
  slot: wb
  publication: wbpub
checkpoint:
  path: state/cp
listen: 127.0.0.1:9187
shards:
  orders:
    tables: [public.orders, public.order_items]
  users:
    tables:
      - public.users
    slot: users_slot
    checkpoint: users.cp
    listen: 127.0.0.1:9188
`

func TestShards(t *testing.T) {
	path := writeConfig(t, shardedConfig)
	dir := filepath.Dir(path)
	base, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if got := base.ShardNames(); !reflect.DeepEqual(got, []string{"orders", "users"}) {
		t.Errorf("shards %v, want [orders users] in file order", got)
	}
	if base.Tables != nil || base.Postgres.Slot != "wb" {
		t.Errorf("no shard selected, but tables %v slot %q", base.Tables, base.Postgres.Slot)
	}
	tests := []struct {
		shard                 string
		slot, pub, cp, listen string
		tables                []string
		viaEnv                bool
	}{
		{"orders", "wb_orders", "wbpub_orders", filepath.Join(dir, "state/cp") + ".orders", "127.0.0.1:9187", []string{"public.orders", "public.order_items"}, false},
		{"users", "users_slot", "wbpub_users", filepath.Join(dir, "users.cp"), "127.0.0.1:9188", []string{"public.users"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.shard, func(t *testing.T) {
			args, e := []string{"--config", path, "--shard", tt.shard}, env{}
			if tt.viaEnv {
				args, e = []string{"--config", path}, env{"WALBUST_SHARD": tt.shard}
			}
			cfg, err := load(t, args, e)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Shard != tt.shard || cfg.Postgres.Slot != tt.slot || cfg.Postgres.Publication != tt.pub ||
				cfg.Checkpoint.Path != tt.cp || cfg.Listen != tt.listen || !reflect.DeepEqual(cfg.Tables, tt.tables) {
				t.Errorf("shard %q slot %q publication %q checkpoint %q listen %q tables %v,\nwant %q %q %q %q %q %v",
					cfg.Shard, cfg.Postgres.Slot, cfg.Postgres.Publication, cfg.Checkpoint.Path, cfg.Listen, cfg.Tables,
					tt.shard, tt.slot, tt.pub, tt.cp, tt.listen, tt.tables)
			}
			// The same, derived from the unsharded configuration.
			again, err := base.ForShard(tt.shard)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(again, cfg) {
				t.Errorf("ForShard:\n%+v\nLoad --shard:\n%+v", again, cfg)
			}
			if _, err := cfg.ForShard(tt.shard); err == nil {
				t.Error("ForShard of a shard's configuration succeeded, want an error (suffixes would be applied twice)")
			}
		})
	}
	if _, err := load(t, []string{"--config", path, "--shard", "billing"}, env{}); err == nil || !strings.Contains(err.Error(), `shard "billing" is not defined (shards: orders, users)`) {
		t.Errorf("unknown shard: %v", err)
	}
	if _, err := load(t, []string{"--shard", "orders"}, env{}); err == nil || !strings.Contains(err.Error(), "defines no shards") {
		t.Errorf("shard without shards: %v", err)
	}
}

func TestShardErrors(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string
		line, col int
		want      string
	}{
		{"table in two shards", "shards:\n  a:\n    tables: [public.x]\n  b:\n    tables: [public.y, public.x]\n", 5, 24, "table public.x is already in shard a"},
		{"unqualified table", "shards:\n  a:\n    tables: [x]\n", 3, 14, `table name "x" must be schema-qualified`},
		{"bad name", "shards:\n  Orders:\n    tables: [public.x]\n", 2, 3, `shard name "Orders"`},
		{"no tables", "shards:\n  a:\n    slot: s\n", 2, 3, "missing: list the deps.yaml tables"},
		{"empty tables", "shards:\n  a:\n    tables: []\n", 3, 13, "empty list"},
		{"unknown field", "shards:\n  a:\n    tables: [public.x]\n    table: [public.y]\n", 4, 5, `unknown field "table"`},
		{"empty shards", "shards: {}\n", 1, 9, "no shards"},
		{"list for shards", "shards: [a]\n", 1, 9, "must be a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			_, err := load(t, []string{"--config", path}, env{})
			want := fmt.Sprintf("%s:%d:%d: ", path, tt.line, tt.col)
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load = %v, want an error at %s containing %q", err, want, tt.want)
			}
		})
	}
	// Names that only clash once derived.
	path := writeConfig(t, "postgres:\n  slot: wb\nshards:\n  a:\n    tables: [public.x]\n  b:\n    tables: [public.y]\n    slot: wb_a\n")
	if _, err := load(t, []string{"--config", path}, env{}); err == nil || !strings.Contains(err.Error(), `shard b: slot "wb_a" is also the slot of shard a`) {
		t.Errorf("clashing slots: %v", err)
	}
	if _, err := load(t, []string{"--config", path, "--slot", strings.Repeat("s", 62)}, env{}); err == nil || !strings.Contains(err.Error(), "shard a: slot") {
		t.Errorf("derived slot past 63 bytes: %v", err)
	}
}

func TestCheckShards(t *testing.T) {
	path := writeConfig(t, shardedConfig)
	cfg, err := load(t, []string{"--config", path}, env{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckShards([]string{"public.order_items", "public.orders", "public.users"}); err != nil {
		t.Errorf("full coverage rejected: %v", err)
	}
	err = cfg.CheckShards([]string{"public.orders", "public.users", "public.audit"})
	for _, want := range []string{
		path + ":9:29: shards.orders: table public.order_items is not in deps.yaml",
		"table public.audit of deps.yaml is in no shard",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckShards = %v, want it to contain %q", err, want)
		}
	}
	unsharded, err := load(t, nil, env{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unsharded.CheckShards([]string{"public.x"}); err != nil {
		t.Errorf("no shards: %v", err)
	}
}

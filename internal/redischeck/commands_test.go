package redischeck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

func loadDeps(t *testing.T, tables string) *mapping.Registry {
	t.Helper()
	path := filepath.Join(t.TempDir(), "deps.yaml")
	if err := os.WriteFile(path, []byte("version: 1\ntables:\n"+tables), 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := mapping.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

const (
	deleteTable = "  public.a:\n    keys: [\"a:{id}\"]\n    on_truncate:\n      patterns: [\"a:*\"]\n"
	bumpTable   = "  public.b:\n    action: bump\n    version_key: \"v:{key}\"\n    keys: [\"b:{id}\"]\n"
	staleTable  = "  public.s:\n    action: stale\n    stale_key: \"{key}:stale\"\n    stale_ttl: 10m\n    keys: [\"s:{id}\"]\n"
	fenceTable  = "  public.f:\n    action: fence\n    fence_ttl: 60s\n    keys: [\"f:{id}\"]\n"
)

// docs/security.md gives the minimal ACL SETUSER line per set of
// actions: it must be the one the checks would accept, no more, no less.
func TestSecurityDocMinimalACL(t *testing.T) {
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	opts := invalidator.Options{EventsChannel: "walbust:events", Watermark: protocol.AppliedKey("walbust")}
	for name, tables := range map[string]string{
		"delete":           deleteTable,
		"delete and bump":  deleteTable + bumpTable,
		"delete and stale": deleteTable + staleTable,
		"delete and fence": deleteTable + fenceTable,
		"every action":     deleteTable + bumpTable + staleTable + fenceTable,
	} {
		line := MinimalACL("walbust", loadDeps(t, tables), opts)
		if !strings.Contains(string(doc), line) {
			t.Errorf("docs/security.md does not give the minimal line for %s:\n%s", name, line)
		}
	}
}

func TestCommandsUseRealKeys(t *testing.T) {
	reg := loadDeps(t, deleteTable+bumpTable+staleTable)
	cmds := commands(reg, invalidator.Options{Mode: invalidator.Cluster, WaitReplicas: 1, EventsChannel: "ch", Watermark: protocol.AppliedKey("s")})
	want := map[string]bool{
		"unlink a:" + probeValue:                                 false,
		"get v:b:" + probeValue:                                  false,
		"rename s:" + probeValue + " s:" + probeValue + ":stale": false,
		"dump s:" + probeValue:                                   false,
		"publish ch x":                                           false,
		"wait 0 0":                                               false,
		"scan 0 match * count 1":                                 false,
		"set walbust:applied:{s} 0/0":                            false,
		"get walbust:applied:{s}":                                false,
	}
	for _, c := range cmds {
		if _, ok := want[strings.Join(c.args, " ")]; ok {
			want[strings.Join(c.args, " ")] = true
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("commands do not include %q", k)
		}
	}
}

func TestOlderThan(t *testing.T) {
	for _, tt := range []struct {
		have, want string
		older      bool
	}{
		{"3.2.12", "4.0.0", true}, {"4.0.0", "4.0.0", false}, {"7.0.15", "4.0.0", false}, {"10.0", "4.0.0", false}, {"4", "4.0.1", true},
	} {
		if got := olderThan(tt.have, tt.want); got != tt.older {
			t.Errorf("olderThan(%s, %s) = %v", tt.have, tt.want, got)
		}
	}
}

package protocol

import (
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/luatest"
)

// No Redis needed: the scripts' behaviour is tested in redis_test.go.
func TestScriptFiles(t *testing.T) {
	luatest.Check(t, map[string]string{
		"lua/fence.lua":       FenceScript,
		"lua/lease.lua":       LeaseScript,
		"lua/cas.lua":         CASScript,
		"lua/cas_indexed.lua": IndexedCASScript,
		"lua/index_add.lua":   IndexAddScript,
		"lua/index_drain.lua": IndexDrainScript,
	})
}

// fence.lua and lease.lua each carry mark() so that each file can be sent
// as is; the two copies must not drift apart.
func TestMarkIsTheSameInEveryScript(t *testing.T) {
	mark := func(src string) string {
		i := strings.Index(src, "local function mark(")
		if i < 0 {
			return ""
		}
		j := strings.Index(src[i:], "\nend\n")
		if j < 0 {
			return ""
		}
		return src[i : i+j+len("\nend\n")]
	}
	fence, lease := mark(FenceScript), mark(LeaseScript)
	if fence == "" || lease == "" {
		t.Fatalf("mark() not found: in fence.lua %t, in lease.lua %t", fence != "", lease != "")
	}
	if fence != lease {
		t.Errorf("mark() differs between fence.lua and lease.lua:\n%s\n---\n%s", fence, lease)
	}
}

package invalidator

import (
	"testing"

	"github.com/walbust/walbust/internal/luatest"
)

// No Redis needed: the scripts' behaviour is tested against a real one in
// the package's other tests.
func TestScriptFiles(t *testing.T) {
	luatest.Check(t, map[string]string{
		"lua/bump.lua":  bumpSource,
		"lua/stale.lua": staleSource,
		"lua/raise.lua": raiseSource,
		// indexed delete families, with the direct keys
		"lua/index_unlink.lua": indexUnlinkSource,
		// action: refresh
		"lua/refresh.lua": refreshSource,
	})
}

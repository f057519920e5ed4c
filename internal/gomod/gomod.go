// Package gomod finds the walbust module's directory, where the demo, the
// bench, the consistency harness and the e2e tests build the binary from.
package gomod

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Root asks the go command where the current module's go.mod is; run is
// how a user starts the caller (e.g. "go run ./cmd/walbust-demo"), for the error.
func Root(ctx context.Context, run string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the walbust module (go env GOMOD = %q): run %s from the repository", mod, run)
	}
	return filepath.Dir(mod), nil
}

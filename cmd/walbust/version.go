package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// versionString is the version set at build time plus what the Go
// toolchain recorded about the build.
func versionString() string {
	s := fmt.Sprintf("walbust %s %s %s/%s", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range info.Settings {
			if kv.Key == "vcs.revision" || kv.Key == "vcs.modified" {
				s += fmt.Sprintf(" %s=%s", kv.Key, kv.Value)
			}
		}
	}
	return s
}

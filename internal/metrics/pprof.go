package metrics

import (
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
)

// EnableProfiles makes Handler serve Go profiles under /debug/pprof/.
// Call it before Listen.
func (m *Metrics) EnableProfiles() { m.profiles = true }

// handleProfiles serves what a slow walbust needs first: CPU, heap,
// goroutine and execution-trace profiles. They hold code addresses and
// counts, never data; the command line is the exception (flags can hold
// passwords), so /debug/pprof/cmdline shows only the program and command.
func handleProfiles(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte(redactedCmdline(os.Args)))
	})
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// redactedCmdline is pprof.Cmdline's NUL-separated form without the
// flags, whose values may be passwords.
func redactedCmdline(args []string) string {
	kept := args[:min(len(args), 1)]
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		kept = args[:2] // the command: run, validate...
	}
	if len(args) > len(kept) {
		kept = append(kept[:len(kept):len(kept)], "[flags not shown]")
	}
	return strings.Join(kept, "\x00")
}

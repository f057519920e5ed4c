package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestProfilesOffByDefault(t *testing.T) {
	m := New("test", "slot")
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/symbol"} {
		if code, _ := get(t, m.Handler(), path); code != http.StatusNotFound {
			t.Errorf("GET %s = %d without EnableProfiles, want 404", path, code)
		}
	}
	m.EnableProfiles()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2"} {
		if code, _ := get(t, m.Handler(), path); code != http.StatusOK {
			t.Errorf("GET %s = %d with EnableProfiles, want 200", path, code)
		}
	}
}

func TestRedactedCmdline(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"walbust"}, "walbust"},
		{[]string{"walbust", "run"}, "walbust\x00run"},
		{[]string{"walbust", "run", "--postgres-url", "postgres://u:hunter2@db/app"}, "walbust\x00run\x00[flags not shown]"},
		{[]string{"walbust", "--redis-url=redis://:hunter2@r"}, "walbust\x00[flags not shown]"},
	} {
		got := redactedCmdline(tt.args)
		if got != tt.want {
			t.Errorf("redactedCmdline(%q) = %q, want %q", tt.args, got, tt.want)
		}
		if strings.Contains(got, "hunter2") {
			t.Errorf("redactedCmdline(%q) shows the password", tt.args)
		}
	}
}

package metrics

import (
	"embed"
	"encoding/json"
	"net/http"
)

// The status page: HTML, CSS and JS embedded in the binary, nothing
// fetched from elsewhere. The page polls /status/history and renders it
// with textContent only: table names and errors are not trusted.
//
//go:embed page/index.html page/page.css page/page.js
var pageFiles embed.FS

// pageCSP allows the page's own files and requests to this server, and
// nothing else: no inline script or style, no other origin, no framing.
const pageCSP = "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"

func (m *Metrics) handlePage(mux *http.ServeMux) {
	for pattern, f := range map[string]struct{ file, contentType string }{
		"GET /{$}":      {"page/index.html", "text/html; charset=utf-8"},
		"GET /page.css": {"page/page.css", "text/css; charset=utf-8"},
		"GET /page.js":  {"page/page.js", "text/javascript; charset=utf-8"},
	} {
		body, err := pageFiles.ReadFile(f.file)
		if err != nil {
			panic(err) // embedded above: cannot happen
		}
		mux.HandleFunc(pattern, func(w http.ResponseWriter, _ *http.Request) {
			pageHeaders(w, f.contentType)
			w.Header().Set("Cache-Control", "no-cache")
			_, _ = w.Write(body)
		})
	}
	mux.HandleFunc("GET /status/history", func(w http.ResponseWriter, _ *http.Request) {
		pageHeaders(w, "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(m.History())
	})
}

func pageHeaders(w http.ResponseWriter, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

package e2e

import (
	"context"
	"fmt"
	"html"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The status page at `listen`'s /, looked at in a real browser: Debian's
// chromium, headless. Each look is `chromium --dump-dom` with a virtual
// time budget: the page loads, its JS polls /status/history a few times
// (virtual time runs the timers; the fetches go to the real daemon), and
// chromium prints the DOM as the JS left it. Everything checked here is
// written by the page's JS: the static HTML has none of it.

// statusPageBudget is the virtual time each look gets: four polls.
const statusPageBudget = 4000 * time.Millisecond

func TestStatusPage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): this test looks at the status page in Debian's chromium, headless; "+
			"`make deps` installs it (apt-get install chromium)", err)
	}
	r := opsDedicatedRedis(t)
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsUseRedis(r.Client())
	e.opsWriteConfig(opsConfig{redisURL: r.URL()})
	base := e.opsStartServing()
	profile := t.TempDir()
	look := func() statusPageDOM { t.Helper(); return statusPageLook(t, chromium, profile, base+"/") }

	code, static, err := opsGet(base + "/")
	if err != nil || code != 200 {
		t.Fatalf("GET /: %d %v", code, err)
	}
	if s := statusPageParse(static); s.state != "loading…" || s.banner != "loading" || len(s.tables) != 0 || s.text["transactions"] != "–" {
		t.Fatalf("the static page already shows data (%+v): the checks below would not prove the JS rendered it", s)
	}

	// It loads, shows the state, and polls again and again within one load.
	var page statusPageDOM
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		page = look()
		return page.state == "streaming" && page.banner == "streaming",
			fmt.Sprintf("the page shows state %q (banner %q), want streaming", page.state, page.banner)
	})
	if page.polls < 2 {
		t.Errorf("the page polled %d times in %v of virtual time, want it to keep polling without a reload", page.polls, statusPageBudget)
	}
	if page.text["positions"] == "" || !strings.Contains(page.text["positions"], e.name) {
		t.Errorf("positions %q do not name the slot %s", page.text["positions"], e.name)
	}
	t.Logf("streaming: %d polls in one load; positions %q", page.polls, page.text["positions"])
	before := page

	// A write: its transaction, its table's change and its keys show up,
	// with a lag measured in ms. Same page, new data: different figures.
	e.cache("product:2")
	e.exec("UPDATE products SET price_cents = 4242 WHERE id = 2")
	e.waitGone("product:2")
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		page = look()
		products := page.tables["public.products"]
		ok := page.state == "streaming" && len(products) == 3 && products[2] != "0" &&
			page.text["transactions"] != before.text["transactions"] && page.text["lag-ms"] != "–" &&
			strings.HasSuffix(page.text["lag-ms"], " ms") && page.actionKeys > 0 && strings.Contains(page.text["events"], "batch")
		return ok, fmt.Sprintf("after a write: state %q, products row %q, transactions %q (before %q), lag %q, keys sent %d, events %q",
			page.state, products, page.text["transactions"], before.text["transactions"], page.text["lag-ms"], page.actionKeys, page.text["events"])
	})

	t.Logf("after a write: products %q, transactions %q, lag %q / %q, keys sent %d", page.tables["public.products"],
		page.text["transactions"], page.text["lag-bytes"], page.text["lag-ms"], page.actionKeys)

	// Redis stops: stalled, because of Redis, since when, and the error.
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		page = look()
		ok := page.state == "stalled" && page.banner == "stalled" && strings.Contains(page.text["causes"], "redis: ") &&
			strings.HasPrefix(page.text["since"], "since ") && strings.Contains(page.text["events"], "stalled (redis)")
		return ok, fmt.Sprintf("Redis stopped: state %q (banner %q), causes %q, %q, events %q",
			page.state, page.banner, page.text["causes"], page.text["since"], page.text["events"])
	})

	t.Logf("Redis stopped: %s %s; %s", page.state, page.text["since"], page.text["causes"])

	// Redis is back: streaming again, and the recovery is in the events.
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	opsWithin(t, opsOutageTimeout, func() (bool, string) {
		page = look()
		ok := page.state == "streaming" && page.text["causes"] == "" && strings.Contains(page.text["events"], "recovered (redis)")
		return ok, fmt.Sprintf("Redis restarted: state %q, causes %q, events %q", page.state, page.text["causes"], page.text["events"])
	})
}

// statusPageDOM is what a look at the page found.
type statusPageDOM struct {
	banner, state string
	polls         int
	text          map[string]string   // text content by element id
	tables        map[string][]string // the tables table's rows by table name
	actionKeys    int                 // keys sent, summed over the invalidations table
}

// statusPageLook loads url in headless chromium and parses the DOM it
// dumps once the virtual time budget has run out.
func statusPageLook(t *testing.T, chromium, profile, url string) statusPageDOM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"--headless=new", "--disable-gpu", "--no-first-run", "--disable-extensions", "--mute-audio",
		"--user-data-dir=" + profile, "--virtual-time-budget=" + strconv.Itoa(int(statusPageBudget.Milliseconds())), "--dump-dom", url}
	if os.Geteuid() == 0 {
		args = append([]string{"--no-sandbox"}, args...) // chromium refuses to run as root with its sandbox
	}
	cmd := exec.CommandContext(ctx, chromium, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), `id="banner"`) {
		t.Fatalf("chromium --dump-dom %s: %v\nstdout:\n%s\nstderr:\n%s", url, err, out, stderr.String())
	}
	return statusPageParse(string(out))
}

var (
	statusPageAttr = func(id, attr string) *regexp.Regexp {
		return regexp.MustCompile(`<[a-z]+ [^>]*id="` + id + `"[^>]*\s` + attr + `="([^"]*)"|<[a-z]+ [^>]*` + attr + `="([^"]*)"[^>]*\sid="` + id + `"`)
	}
	statusPageBanner = statusPageAttr("banner", "data-state")
	statusPagePolls  = statusPageAttr("updated", "data-polls")
	statusPageTag    = regexp.MustCompile(`<[^>]*>`)
	statusPageRow    = regexp.MustCompile(`(?s)<tr[^>]*>(.*?)</tr>`)
	statusPageCell   = regexp.MustCompile(`(?s)<td[^>]*>(.*?)</td>`)
)

// statusPageElement returns the inner HTML of the element with that id;
// the page nests no element inside one of the same tag.
func statusPageElement(dom, id string) string {
	m := regexp.MustCompile(`<([a-z]+)\b[^>]*\bid="` + regexp.QuoteMeta(id) + `"[^>]*>`).FindStringSubmatchIndex(dom)
	if m == nil {
		return ""
	}
	rest := dom[m[1]:]
	if end := strings.Index(rest, "</"+dom[m[2]:m[3]]+">"); end >= 0 {
		return rest[:end]
	}
	return ""
}

func statusPageText(inner string) string {
	return strings.Join(strings.Fields(html.UnescapeString(statusPageTag.ReplaceAllString(inner, " "))), " ")
}

func statusPageParse(dom string) statusPageDOM {
	first := func(m []string) string {
		if m == nil {
			return ""
		}
		return m[1] + m[2]
	}
	p := statusPageDOM{banner: first(statusPageBanner.FindStringSubmatch(dom)), text: map[string]string{}, tables: map[string][]string{}}
	p.polls, _ = strconv.Atoi(first(statusPagePolls.FindStringSubmatch(dom)))
	for _, id := range []string{"state", "since", "causes", "lag-bytes", "lag-ms", "tx-rate", "keys-rate", "transactions", "positions", "events"} {
		p.text[id] = statusPageText(statusPageElement(dom, id))
	}
	p.state = p.text["state"]
	rows := func(id string) [][]string {
		var out [][]string
		for _, tr := range statusPageRow.FindAllStringSubmatch(statusPageElement(dom, id), -1) {
			var cells []string
			for _, td := range statusPageCell.FindAllStringSubmatch(tr[1], -1) {
				cells = append(cells, statusPageText(td[1]))
			}
			if len(cells) > 0 {
				out = append(out, cells)
			}
		}
		return out
	}
	for _, r := range rows("tables") {
		p.tables[r[0]] = r
	}
	for _, r := range rows("actions") {
		if n, err := strconv.Atoi(r[len(r)-1]); err == nil {
			p.actionKeys += n
		}
	}
	return p
}

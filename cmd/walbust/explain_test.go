package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const explainRefreshDeps = `version: 1
tables:
  public.products:
    keys: ["products:all"]
    derived:
      - keys: ["product:{id}"]
        action: refresh
        value: row
        ttl: 1h
        negative: {value: "null", ttl: 5m}
      - keys: ["product:{id}:title"]
        action: refresh
        value: "{name} ({id})"
        ttl: 10m
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 10m
        query: "SELECT json_agg(id ORDER BY id) AS value FROM products WHERE category_id = $1"
        args: [category_id]
      - keys: ["product:{id}:siblings"]
        action: refresh
        ttl: 2m
        query: |
          SELECT json_agg(id ORDER BY id)
            FROM products WHERE category_id = $1 AND id <> $2
        args: [category_id, id]
`

// explain shows each refreshed key: where its value comes from (the row
// as JSON, the value template rendered, or the query with the arguments
// it would run with), its TTL and LSN key, and what a DELETE leaves. No
// database: explain assumes REPLICA IDENTITY FULL over the columns given
// (in alphabetical order), and runs no query.
func TestExplainRefresh(t *testing.T) {
	t.Setenv("WALBUST_CONFIG", "")
	dir := t.TempDir()
	deps := filepath.Join(dir, "deps.yaml")
	if err := os.WriteFile(deps, []byte(explainRefreshDeps), 0o644); err != nil {
		t.Fatal(err)
	}
	const dune = `{"id":42,"category_id":1,"name":"Dune"}`
	lsn := func(key string) string { return ", commit LSN in " + key + ":lsn, only over an older one" }
	query := func(key, sql, args, ttl string) string {
		return "write the value of the query " + sql + " with " + args + " (run after the commit, not by explain), ttl " + ttl + " ±10%" +
			lsn(key) + "; no row or NULL: delete; query fails: the value stays, flagged stale in " + key + ":lsn"
	}
	const categories = `"SELECT json_agg(id ORDER BY id) AS value FROM products WHERE category_id = $1"`
	const siblings = `"SELECT json_agg(id ORDER BY id) FROM products WHERE category_id = $1 AND id <> $2"`
	cases := []struct {
		name   string
		args   []string
		header string
		want   [][2]string // key and the line's detail, in order
	}{{
		name:   "insert",
		args:   []string{"--op", "insert", "--new", `{"id":42,"category_id":null,"name":"Dune"}`},
		header: "insert public.products: 1 invalidation(s), 3 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: [][2]string{
			{"products:all", ""},
			{"product:42", `write the row as JSON {"category_id":null,"id":"42","name":"Dune"}, ttl 1h0m0s ±10%` + lsn("product:42")},
			{"product:42:title", `write "Dune (42)" (value "{name} ({id})"), ttl 10m0s ±10%` + lsn("product:42:title")},
			// A NULL category renders no list key, but is an argument.
			{"product:42:siblings", query("product:42:siblings", siblings, `$1=NULL, $2="42"`, "2m0s")},
		},
	}, {
		name:   "update moving the product",
		args:   []string{"--op", "update", "--old", dune, "--new", strings.Replace(dune, `"category_id":1`, `"category_id":3`, 1)},
		header: "update public.products: 1 invalidation(s), 5 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: [][2]string{
			{"products:all", ""},
			{"product:42", `write the row as JSON {"category_id":"3","id":"42","name":"Dune"}, ttl 1h0m0s ±10%` + lsn("product:42")},
			{"product:42:title", `write "Dune (42)" (value "{name} ({id})"), ttl 10m0s ±10%` + lsn("product:42:title")},
			{"category:1:products", query("category:1:products", categories, `$1="1"`, "10m0s")},
			{"category:3:products", query("category:3:products", categories, `$1="3"`, "10m0s")},
			{"product:42:siblings", query("product:42:siblings", siblings, `$1="3", $2="42"`, "2m0s")},
		},
	}, {
		name:   "update of the key",
		args:   []string{"--op", "update", "--old", dune, "--new", strings.Replace(dune, `"id":42`, `"id":43`, 1)},
		header: "update public.products: 1 invalidation(s), 7 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: [][2]string{
			{"products:all", ""},
			{"product:42", `no new value for this key (the row moved to another key, or its value could not be built): write the negative marker "null", ttl 5m0s` + lsn("product:42")},
			{"product:43", `write the row as JSON {"category_id":"1","id":"43","name":"Dune"}, ttl 1h0m0s ±10%` + lsn("product:43")},
			{"product:42:title", `no new value for this key (the row moved to another key, or its value could not be built): delete` + lsn("product:42:title")},
			{"product:43:title", `write "Dune (43)" (value "{name} ({id})"), ttl 10m0s ±10%` + lsn("product:43:title")},
			{"category:1:products", query("category:1:products", categories, `$1="1"`, "10m0s")},
			{"product:42:siblings", query("product:42:siblings", siblings, `$1="1", $2="42"`, "2m0s")},
			{"product:43:siblings", query("product:43:siblings", siblings, `$1="1", $2="43"`, "2m0s")},
		},
	}, {
		name:   "delete",
		args:   []string{"--op", "delete", "--old", dune},
		header: "delete public.products: 1 invalidation(s), 4 refreshed key(s), 0 rule(s) skipped, 0 lookup(s)",
		want: [][2]string{
			{"products:all", ""},
			{"product:42", `the row was deleted: write the negative marker "null", ttl 5m0s` + lsn("product:42")},
			{"product:42:title", `the row was deleted: delete` + lsn("product:42:title")},
			// An aggregate changes with every row that feeds it: the query runs on DELETE too.
			{"category:1:products", query("category:1:products", categories, `$1="1"`, "10m0s")},
			{"product:42:siblings", query("product:42:siblings", siblings, `$1="1", $2="42"`, "2m0s")},
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			args := append([]string{"explain", "--deps", deps, "--postgres-url", "postgres://walbust@127.0.0.1:1/none?connect_timeout=2",
				"--table", "public.products"}, tc.args...)
			if err := run(context.Background(), args, &stdout, &stderr); err != nil {
				t.Fatalf("explain: %v\n%s", err, stderr.String())
			}
			out := stdout.String()
			if !strings.Contains(out, tc.header+"\n") {
				t.Errorf("no summary %q:\n%s", tc.header, out)
			}
			var got [][2]string
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				if !strings.HasPrefix(l, "  ") || len(f) < 5 {
					continue
				}
				detail := strings.Join(f[5:], " ")
				if f[0] == "refresh" {
					// Only the table's padding is collapsed: the detail is the rest of the line.
					detail = strings.TrimSpace(l[strings.Index(l, f[4]+"  ")+len(f[4]):])
				}
				got = append(got, [2]string{f[2], detail})
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(got), len(tc.want), out)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("line %d:\n got %q\nwant %q", i, got[i], tc.want[i])
				}
			}
		})
	}
}

package scaffold

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/mapping"
)

// fakeSchema is a database made up in Go, without publications.
type fakeSchema []Table

func (f fakeSchema) Tables(context.Context) ([]Table, error) { return f, nil }

func (f fakeSchema) Publication(context.Context, string) (*Publication, error) { return nil, nil }

// withPublication is a made-up database with one publication.
type withPublication struct {
	fakeSchema
	pub Publication
}

func (w withPublication) Publication(_ context.Context, name string) (*Publication, error) {
	if name != w.pub.Name {
		return nil, nil
	}
	p := w.pub
	return &p, nil
}

func col(name, typ string) Column { return Column{Name: name, Type: typ, NotNull: true} }

var (
	orders = Table{Schema: "public", Name: "orders", ReplicaIdentity: 'd',
		Columns: []Column{col("id", "bigint"), {Name: "customer", Type: "text"}}, PrimaryKey: []string{"id"}}
	products = Table{Schema: "public", Name: "products", ReplicaIdentity: 'f',
		Columns: []Column{col("id", "bigint"), {Name: "category_id", Type: "bigint"}}, PrimaryKey: []string{"id"},
		ForeignKeys: []ForeignKey{{Name: "products_category_id_fkey", Columns: []string{"category_id"}, RefSchema: "public", RefTable: "categories", RefColumns: []string{"id"}}}}
	categories = Table{Schema: "public", Name: "categories", ReplicaIdentity: 'd',
		Columns: []Column{col("id", "bigint")}, PrimaryKey: []string{"id"}}
	orderItems = Table{Schema: "public", Name: "order_items", ReplicaIdentity: 'd',
		Columns:    []Column{col("order_id", "bigint"), col("line_no", "integer"), {Name: "product_id", Type: "bigint"}, col("qty", "integer")},
		PrimaryKey: []string{"order_id", "line_no"},
		ForeignKeys: []ForeignKey{
			{Name: "order_items_order_id_fkey", Columns: []string{"order_id"}, RefSchema: "public", RefTable: "orders", RefColumns: []string{"id"}},
			{Name: "order_items_product_id_fkey", Columns: []string{"product_id"}, RefSchema: "public", RefTable: "products", RefColumns: []string{"id"}},
		}}
	auditLog = Table{Schema: "public", Name: "audit_log", ReplicaIdentity: 'd',
		Columns: []Column{col("at", "timestamp with time zone"), col("note", "text")}}
)

// mapRow is a row for rendering templates in tests.
type mapRow map[string]string

func (r mapRow) Text(c string) ([]byte, bool) {
	v, ok := r[c]
	return []byte(v), ok
}

func keysOf(t *testing.T, reg *mapping.Registry, table string) []string {
	t.Helper()
	tb := reg.Tables[table]
	if tb == nil {
		t.Fatalf("deps.yaml has no table %s (has %v)", table, reg.Names())
	}
	var out []string
	for _, r := range tb.Rules {
		for _, k := range r.Keys {
			out = append(out, k.Source)
		}
	}
	return out
}

func patternsOf(reg *mapping.Registry, table string) []string {
	var out []string
	if tr := reg.Tables[table].OnTruncate; tr != nil {
		for _, p := range tr.Patterns {
			out = append(out, p.Source)
		}
	}
	return out
}

func TestDeps(t *testing.T) {
	cases := []struct {
		name   string
		schema fakeSchema
		tables []string
		// table -> its direct keys, and its on_truncate patterns
		keys, patterns map[string][]string
		absent         []string // tables deps.yaml must not name (commented out)
		contains       []string // text the file must hold
		render         map[string]mapRow
		rendered       map[string]string // table -> what its first key renders from render[table]
	}{
		{
			name:   "composite primary key and foreign keys",
			schema: fakeSchema{categories, orderItems, orders, products},
			keys: map[string][]string{"public.order_items": {"order_items:{order_id}:{line_no}"}, "public.orders": {"orders:{id}"},
				"public.categories": {"categories:{id}"}, "public.products": {"products:{id}"}},
			patterns: map[string][]string{"public.order_items": {"order_items:*"}},
			contains: []string{
				`# - "orders:{order_id}:order_items"   # list key on the referenced public.orders row (order_items_order_id_fkey); works with this replica identity`,
				`# - "products:{product_id}:order_items"   # list key on the referenced public.products row (order_items_product_id_fkey); product_id not in the old row: needs ALTER TABLE "public"."order_items" REPLICA IDENTITY FULL;`,
				`# - "orders:*:order_items"   # with the list key above`,
				"# columns: order_id bigint (primary key), line_no integer (primary key), product_id bigint,\n  #   qty integer not null\n",
				"# replica identity DEFAULT: UPDATE and DELETE send only the primary key (order_id, line_no) of the old row: keys from those work as they are;\n  #   a key from any other column, on UPDATE or DELETE, needs ALTER TABLE \"public\".\"order_items\" REPLICA IDENTITY FULL;\n",
				// products is FULL: its list key works as it is.
				`# - "categories:{category_id}:products"   # list key on the referenced public.categories row (products_category_id_fkey); works with this replica identity`,
				"# replica identity FULL: UPDATE and DELETE send the whole old row, so keys from any column work.",
			},
			render:   map[string]mapRow{"public.order_items": {"order_id": "7", "line_no": "2"}},
			rendered: map[string]string{"public.order_items": "order_items:7:2"},
		},
		{
			name:     "no primary key: commented out",
			schema:   fakeSchema{auditLog, orders},
			keys:     map[string][]string{"public.orders": {"orders:{id}"}},
			absent:   []string{"public.audit_log"},
			contains: []string{"# public.audit_log: left commented out.", `ALTER TABLE "public"."audit_log" ADD PRIMARY KEY (column, ...);`, `#   keys:`, `#     - "audit_log:{CHANGE_ME}"`},
		},
		{
			name: "odd names: mixed case, dots, quotes, braces and glob characters",
			schema: fakeSchema{
				{Schema: "public", Name: "Users", ReplicaIdentity: 'd', Columns: []Column{col("UserId", "integer")}, PrimaryKey: []string{"UserId"}},
				{Schema: "my.schema", Name: `a.b"c`, ReplicaIdentity: 'd', Columns: []Column{col("id", "integer")}, PrimaryKey: []string{"id"}},
				{Schema: "public", Name: "x{y}*", ReplicaIdentity: 'd', Columns: []Column{col("k ey", "integer")}, PrimaryKey: []string{"k ey"}},
				{Schema: "public", Name: "line\nbreak", ReplicaIdentity: 'd', Columns: []Column{col("id", "integer")}, PrimaryKey: []string{"id"}},
			},
			keys: map[string][]string{
				"public.Users":         {"Users:{UserId}"},
				`"my.schema"."a.b""c"`: {`a.b"c:{id}`},
				"public.x{y}*":         {"x{{y}}*:{k ey}"},
				"public.line\nbreak":   {"line\nbreak:{id}"},
			},
			patterns: map[string][]string{"public.x{y}*": {`x{{y}}\*:*`}},
			contains: []string{`"\"my.schema\".\"a.b\"\"c\"":`, `"public.x{y}*":`, "\n  public.Users:\n"},
			render:   map[string]mapRow{"public.x{y}*": {"k ey": "5"}},
			rendered: map[string]string{"public.x{y}*": "x{y}*:5"},
		},
		{
			name: "same table name in two schemas: schema-qualified prefixes",
			schema: fakeSchema{
				{Schema: "public", Name: "users", ReplicaIdentity: 'd', Columns: []Column{col("id", "bigint")}, PrimaryKey: []string{"id"}},
				{Schema: "archive", Name: "users", ReplicaIdentity: 'd', Columns: []Column{col("id", "bigint")}, PrimaryKey: []string{"id"}},
				{Schema: "public", Name: "sessions", ReplicaIdentity: 'd', Columns: []Column{col("id", "bigint"), col("user_id", "bigint")}, PrimaryKey: []string{"id"},
					ForeignKeys: []ForeignKey{{Name: "sessions_user_id_fkey", Columns: []string{"user_id"}, RefSchema: "public", RefTable: "users", RefColumns: []string{"id"}}}},
			},
			tables:   []string{"public.users", "archive.users", "public.sessions"},
			keys:     map[string][]string{"public.users": {"public.users:{id}"}, "archive.users": {"archive.users:{id}"}, "public.sessions": {"sessions:{id}"}},
			patterns: map[string][]string{"public.users": {"public.users:*"}},
			contains: []string{`# - "public.users:{user_id}:sessions"`},
		},
		{
			name: "replica identity NOTHING and an identity index without the key",
			schema: fakeSchema{orders,
				{Schema: "public", Name: "quiet", ReplicaIdentity: 'n', Columns: []Column{col("id", "bigint")}, PrimaryKey: []string{"id"}},
				{Schema: "public", Name: "byidx", ReplicaIdentity: 'i', Columns: []Column{col("id", "bigint"), col("code", "text")}, PrimaryKey: []string{"id"}, IdentityIndex: []string{"code"}},
				{Schema: "public", Name: "byidx2", ReplicaIdentity: 'i', Columns: []Column{col("id", "bigint"), col("code", "text")}, PrimaryKey: []string{"id"}, IdentityIndex: []string{"id", "code"}},
			},
			keys:     map[string][]string{"public.orders": {"orders:{id}"}, "public.byidx2": {"byidx2:{id}"}},
			absent:   []string{"public.quiet", "public.byidx"},
			contains: []string{`ALTER TABLE "public"."quiet" REPLICA IDENTITY DEFAULT;`, `ALTER TABLE "public"."byidx" REPLICA IDENTITY DEFAULT;`, "USING INDEX (id, code)"},
		},
		{
			name: "partitions: the parent by default, a partition when named",
			schema: fakeSchema{
				{Schema: "public", Name: "events", Partitioned: true, ReplicaIdentity: 'd', Columns: []Column{col("id", "bigint"), col("day", "date")}, PrimaryKey: []string{"id", "day"}},
				{Schema: "public", Name: "events_2024", PartitionOf: "public.events", ReplicaIdentity: 'd', Columns: []Column{col("id", "bigint"), col("day", "date")}, PrimaryKey: []string{"id", "day"}},
			},
			keys:     map[string][]string{"public.events": {"events:{id}:{day}"}},
			absent:   []string{"public.events_2024"},
			contains: []string{"# partitioned: rows changed in any partition arrive as this table"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Generate(context.Background(), c.schema, Options{Settings: SettingsFrom(config.Defaults()), Tables: c.tables})
			if err != nil {
				t.Fatal(err)
			}
			reg, err := mapping.Parse("deps.yaml", []byte(f.Deps))
			if err != nil {
				t.Fatalf("generated deps.yaml does not load: %v\n%s", err, f.Deps)
			}
			if len(reg.Warnings) > 0 {
				t.Errorf("warnings: %v", reg.Warnings)
			}
			for table, want := range c.keys {
				if got := keysOf(t, reg, table); !slices.Equal(got, want) {
					t.Errorf("%s keys = %q, want %q\n%s", table, got, want, f.Deps)
				}
				if len(patternsOf(reg, table)) == 0 {
					t.Errorf("%s has no on_truncate patterns", table)
				}
			}
			for table, want := range c.patterns {
				if got := patternsOf(reg, table); !slices.Equal(got, want) {
					t.Errorf("%s on_truncate patterns = %q, want %q", table, got, want)
				}
			}
			if len(reg.Tables) != len(c.keys) {
				t.Errorf("deps.yaml names %v, want exactly the tables %v", reg.Names(), c.keys)
			}
			for _, name := range c.absent {
				if reg.Tables[name] != nil {
					t.Errorf("%s should be commented out", name)
				}
			}
			for _, s := range c.contains {
				if !strings.Contains(f.Deps, s) {
					t.Errorf("deps.yaml lacks %q:\n%s", s, f.Deps)
				}
			}
			for table, want := range c.rendered {
				got, ok := reg.Tables[table].Rules[0].Keys[0].AppendRender(nil, c.render[table])
				if !ok || string(got) != want {
					t.Errorf("%s key renders %q (%v), want %q", table, got, ok, want)
				}
			}
		})
	}
}

// Uncommenting every offered list key must still load: the comments are
// valid YAML entries, aligned with the ones above them.
func TestDepsOfferedKeysLoad(t *testing.T) {
	f, err := Generate(context.Background(), fakeSchema{categories, orderItems, orders, products}, Options{Settings: SettingsFrom(config.Defaults())})
	if err != nil {
		t.Fatal(err)
	}
	uncommented := strings.ReplaceAll(f.Deps, "# - ", "- ")
	reg, err := mapping.Parse("deps.yaml", []byte(uncommented))
	if err != nil {
		t.Fatalf("%v\n%s", err, uncommented)
	}
	want := []string{"order_items:{order_id}:{line_no}", "orders:{order_id}:order_items", "products:{product_id}:order_items"}
	if got := keysOf(t, reg, "public.order_items"); !slices.Equal(got, want) {
		t.Errorf("keys = %q, want %q", got, want)
	}
	if got := patternsOf(reg, "public.order_items"); !slices.Equal(got, []string{"order_items:*", "orders:*:order_items", "products:*:order_items"}) {
		t.Errorf("patterns = %q", got)
	}
}

// A commented-out stanza, uncommented, is a table entry too.
func TestNoPrimaryKeyStanzaUncomments(t *testing.T) {
	var b strings.Builder
	why := newGen([]Table{auditLog}).table(&b, &auditLog)
	if why == "" {
		t.Fatal("a table without a primary key was not commented out")
	}
	// What a user does: uncomment from the entry's name on.
	text := b.String()
	i := strings.Index(text, "\n  # public.audit_log:\n")
	if i < 0 {
		t.Fatalf("no commented-out entry:\n%s", text)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(text[i+1:], "\n"), "\n") {
		lines = append(lines, strings.Replace(l, "# ", "", 1))
	}
	doc := "version: 1\ntables:\n" + strings.Join(lines, "\n") + "\n"
	reg, err := mapping.Parse("deps.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	if got := keysOf(t, reg, "public.audit_log"); !slices.Equal(got, []string{"audit_log:{CHANGE_ME}"}) {
		t.Errorf("keys = %q", got)
	}
}

func TestSelect(t *testing.T) {
	all := []Table{orders, auditLog, {Schema: "public", Name: "p", Partitioned: true}, {Schema: "public", Name: "p_1", PartitionOf: "public.p"}}
	cases := []struct {
		names []string
		want  []string
		err   string
	}{
		{want: []string{"public.audit_log", "public.orders", "public.p"}},
		{names: []string{"public.orders", `"public".orders`}, want: []string{"public.orders"}},
		{names: []string{"public.p_1"}, want: []string{"public.p_1"}},
		{names: []string{"public.p", "public.p_1"}, err: "names both public.p and its partition public.p_1"},
		{names: []string{"public.nope"}, err: "no ordinary or partitioned table public.nope"},
		{names: []string{"orders"}, err: "--tables: "},
		{names: []string{"orders"}, err: "must be schema-qualified"},
	}
	for _, c := range cases {
		got, err := Select(all, c.names, "--tables")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Select(%q): error %v, want %q", c.names, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Select(%q): %v", c.names, err)
			continue
		}
		var names []string
		for _, t := range got {
			names = append(names, t.QualifiedName())
		}
		if !slices.Equal(names, c.want) {
			t.Errorf("Select(%q) = %q, want %q", c.names, names, c.want)
		}
	}
	if _, err := Generate(context.Background(), fakeSchema{auditLog}, Options{}); err == nil || !strings.Contains(err.Error(), "no table init can write a key for") {
		t.Errorf("only a table without a primary key: error %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"postgres://walbust:s3cret@db:5432/app?sslmode=disable", "postgres://walbust@db:5432/app?sslmode=disable"},
		{"postgres://walbust@db/app?password=s3cret&sslmode=require", "postgres://walbust@db/app?sslmode=require"},
		{"host=db user=walbust password='s3 cret' dbname=app", "host=db user=walbust dbname=app"},
		{"host=db password=s3cret sslpassword=k3y", "host=db"},
		{"redis://default:s3cret@cache:6379/0", "redis://default@cache:6379/0"},
		{"postgres://walbust@db/app", "postgres://walbust@db/app"},
	}
	for _, c := range cases {
		got, dropped := RedactURL(c.in)
		if got != c.want || dropped != (c.in != c.want) {
			t.Errorf("RedactURL(%q) = %q, %v; want %q", c.in, got, dropped, c.want)
		}
	}
}

// The generated walbust.yaml loads with the real config loader, keeps every
// setting given, and holds no password.
func TestConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pg-password")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		s    Settings
	}{
		{"defaults", SettingsFrom(config.Defaults())},
		{"given", Settings{PostgresURL: "postgres://app:s3cret@db.internal:5433/shop?sslmode=require", PostgresPasswordFile: pwFile,
			RedisURL: "redis://default:s3cret@cache:6379/2", RedisMode: "standalone", Slot: "shop_slot", Publication: "shop_pub",
			Checkpoint: "/var/lib/walbust/checkpoint", Listen: "127.0.0.1:0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			text, notes := Config(c.s, DepsFile)
			if strings.Contains(text, "s3cret") {
				t.Fatalf("walbust.yaml holds the password:\n%s", text)
			}
			if c.name == "given" && len(notes) != 2 {
				t.Errorf("notes = %q, want one for each password left out", notes)
			}
			sub := filepath.Join(dir, c.name)
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(sub, ConfigFile)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			l := config.NewLoader(fs)
			if err := fs.Parse([]string{"--config", path}); err != nil {
				t.Fatal(err)
			}
			cfg, err := l.Load(func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatalf("generated walbust.yaml does not load: %v\n%s", err, text)
			}
			wantPG, _ := RedactURL(c.s.PostgresURL)
			if c.s.PostgresPasswordFile != "" {
				wantPG = strings.Replace(wantPG, "app@", "app:s3cret@", 1) // the file's password, applied by the loader
			}
			checks := map[string][2]string{
				"postgres.url":         {cfg.Postgres.URL, wantPG},
				"postgres.slot":        {cfg.Postgres.Slot, c.s.Slot},
				"postgres.publication": {cfg.Postgres.Publication, c.s.Publication},
				"listen":               {cfg.Listen, c.s.Listen},
				"deps":                 {cfg.Deps, filepath.Join(sub, DepsFile)},
			}
			wantCheckpoint := c.s.Checkpoint
			if !filepath.IsAbs(wantCheckpoint) {
				wantCheckpoint = filepath.Join(sub, wantCheckpoint)
			}
			checks["checkpoint.path"] = [2]string{cfg.Checkpoint.Path, wantCheckpoint}
			for k, v := range checks {
				if v[0] != v[1] {
					t.Errorf("%s = %q, want %q", k, v[0], v[1])
				}
			}
		})
	}
}

// Write refuses to overwrite without force, naming the file and the flag,
// and writes nothing then.
func TestWriteRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	f := &Files{Config: "a: 1\n", Deps: "b: 2\n"}
	if err := os.WriteFile(filepath.Join(dir, DepsFile), []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Write(dir, f, false)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, DepsFile)) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("error %v, want one naming %s and --force", err, DepsFile)
	}
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err == nil {
		t.Error("walbust.yaml was written although deps.yaml was refused")
	}
	if _, err := Write(dir, f, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, DepsFile)); string(b) != f.Deps {
		t.Errorf("with force, deps.yaml = %q", b)
	}
}

// Without --tables, init writes rules for exactly the tables of the
// configured publication when it exists and lists any, so that setup finds
// it unchanged; else for every table. --tables still wins. What setup
// would have to alter in the publication is said.
func TestTablesFromPublication(t *testing.T) {
	events := Table{Schema: "public", Name: "events", Partitioned: true, ReplicaIdentity: 'd',
		Columns: []Column{col("id", "bigint"), col("day", "date")}, PrimaryKey: []string{"id", "day"}}
	events2024 := events
	events2024.Name, events2024.Partitioned, events2024.PartitionOf = "events_2024", false, "public.events"
	db := fakeSchema{auditLog, categories, events, events2024, orders, products}
	pub := func(name string, viaRoot bool, tables ...string) Schema {
		return withPublication{db, Publication{Name: name, Tables: tables, ViaRoot: viaRoot}}
	}
	everyTable := []string{"public.categories", "public.events", "public.orders", "public.products"}
	cases := []struct {
		name        string
		schema      Schema
		publication string // configured; "" for the default, walbust
		tables      []string
		keyed       []string // tables deps.yaml has rules for
		said        []string // in init's output
		notSaid     []string
	}{
		{name: "no publication: every table", schema: db, keyed: everyTable,
			said:    []string{"creates the publication (which needs the tables' owner"},
			notSaid: []string{"tables from publication", "ALTER PUBLICATION"}},
		{name: "a publication of some tables: exactly those", schema: pub("walbust", true, "public.orders", "public.products"),
			keyed:   []string{"public.orders", "public.products"},
			said:    []string{"tables from publication walbust: public.orders, public.products\n", "finds publication walbust"},
			notSaid: []string{"ALTER PUBLICATION", "public.categories"}},
		{name: "a partitioned table as published via its root", schema: pub("walbust", true, "public.events"),
			keyed: []string{"public.events"}, said: []string{"tables from publication walbust: public.events\n"}, notSaid: []string{"events_2024", "ALTER PUBLICATION"}},
		{name: "--tables wins over the publication", schema: pub("walbust", true, "public.orders"), tables: []string{"public.categories"},
			keyed:   []string{"public.categories"},
			said:    []string{"publication walbust lists public.orders but deps.yaml has keys for public.categories: walbust setup will ALTER PUBLICATION"},
			notSaid: []string{"tables from publication"}},
		{name: "a publication without tables: every table", schema: pub("walbust", true), keyed: everyTable,
			said: []string{"publication walbust lists no tables but deps.yaml has keys for public.categories, public.events, public.orders, public.products"}, notSaid: []string{"tables from publication"}},
		{name: "a published table init cannot key", schema: pub("walbust", true, "public.audit_log", "public.orders"),
			keyed: []string{"public.orders"},
			said: []string{"tables from publication walbust: public.audit_log, public.orders\n", "left commented out: public.audit_log",
				"publication walbust lists public.audit_log, public.orders but deps.yaml has keys for public.orders: walbust setup will ALTER PUBLICATION"}},
		{name: "the configured publication, not another", schema: pub("walbust", true, "public.orders"), publication: "shop", keyed: everyTable,
			notSaid: []string{"tables from publication", "finds publication"}},
		{name: "the configured publication by its name", schema: pub("shop", true, "public.orders"), publication: "shop", keyed: []string{"public.orders"},
			said: []string{"tables from publication shop: public.orders\n", "finds publication shop"}},
		{name: "a publication without publish_via_partition_root", schema: pub("walbust", false, "public.orders"), keyed: []string{"public.orders"},
			said: []string{"tables from publication walbust: public.orders\n", `ALTER PUBLICATION "walbust" SET (publish_via_partition_root = true)`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := SettingsFrom(config.Defaults())
			if c.publication != "" {
				s.Publication = c.publication
			}
			dir := t.TempDir()
			var out strings.Builder
			if err := Run(context.Background(), c.schema, Options{Settings: s, Tables: c.tables, Dir: dir}, &out); err != nil {
				t.Fatal(err)
			}
			deps, err := os.ReadFile(filepath.Join(dir, DepsFile))
			if err != nil {
				t.Fatal(err)
			}
			reg, err := mapping.Parse(DepsFile, deps)
			if err != nil {
				t.Fatalf("deps.yaml does not load: %v\n%s", err, deps)
			}
			if got := reg.Names(); !slices.Equal(got, c.keyed) {
				t.Errorf("deps.yaml has rules for %q, want %q\n%s", got, c.keyed, out.String())
			}
			for _, want := range c.said {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			for _, not := range c.notSaid {
				if strings.Contains(out.String(), not) {
					t.Errorf("output says %q:\n%s", not, out.String())
				}
			}
		})
	}
}

// Names from a publication that Select refuses are blamed on the
// publication, not on --tables.
func TestSelectFromPublicationErrors(t *testing.T) {
	_, err := Select([]Table{orders}, []string{"public.gone"}, "publication walbust")
	if err == nil || !strings.Contains(err.Error(), "publication walbust: no ordinary or partitioned table public.gone") {
		t.Errorf("error %v", err)
	}
}

package scaffold

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

// The files init writes, in its --dir.
const (
	ConfigFile = "walbust.yaml"
	DepsFile   = "deps.yaml"
)

// ErrExists is why Write refused: a file exists and force was not given.
var ErrExists = errors.New("not overwriting existing files")

// Options are walbust init's.
type Options struct {
	Settings Settings
	// Tables: schema.table; nil: the tables of the publication
	// Settings.Publication when it exists and lists any, else every table
	// that is not a partition.
	Tables []string
	Dir    string
	Force  bool // overwrite existing files
}

// Files is what init writes.
type Files struct {
	Config, Deps string
	Summary      Summary
	Notes        []string
	// Publication is the configured publication when it exists, nil
	// else; FromPublication: the tables are its tables.
	Publication     *Publication
	FromPublication bool
}

// Generate reads the schema and renders both files.
func Generate(ctx context.Context, schema Schema, o Options) (*Files, error) {
	all, err := schema.Tables(ctx)
	if err != nil {
		return nil, err
	}
	var pub *Publication
	if o.Settings.Publication != "" {
		if pub, err = schema.Publication(ctx, o.Settings.Publication); err != nil {
			return nil, err
		}
	}
	names, from := o.Tables, "--tables"
	fromPub := len(names) == 0 && pub != nil && len(pub.Tables) > 0
	if fromPub {
		// The tables the user published are the ones to watch: setup then
		// finds the publication as it is, with nothing to alter (which
		// would need the tables' owner).
		names, from = pub.Tables, "publication "+pub.Name
	}
	chosen, err := Select(all, names, from)
	if err != nil {
		return nil, err
	}
	deps, sum := Deps(chosen, all)
	if len(sum.Tables) == 0 {
		return nil, fmt.Errorf("no table init can write a key for (%s): a deps.yaml needs at least one; fix the tables as the reasons say, or name others with --tables",
			strings.Join(sum.Commented, "; "))
	}
	// What init writes must load: a slip here is a bug, not the user's.
	if _, err := mapping.Parse(DepsFile, []byte(deps)); err != nil {
		return nil, fmt.Errorf("walbust init generated a deps.yaml that does not load (a bug; please report it):\n%w", err)
	}
	cfg, notes := Config(o.Settings, DepsFile)
	notes = append(notes, publicationNotes(pub, sum.Tables)...)
	return &Files{Config: cfg, Deps: deps, Summary: sum, Notes: notes, Publication: pub, FromPublication: fromPub}, nil
}

// publicationNotes says what walbust setup will have to change in an
// existing publication for deps.yaml's tables (keyed, sorted): setup makes
// the publication list exactly those, via the partition root, and
// altering it needs its tables' owner.
func publicationNotes(pub *Publication, keyed []string) []string {
	if pub == nil {
		return nil
	}
	var notes []string
	name := pgx.Identifier{pub.Name}.Sanitize()
	listed := slices.Sorted(slices.Values(pub.Tables))
	if want := slices.Sorted(slices.Values(keyed)); !slices.Equal(listed, want) {
		were := strings.Join(listed, ", ")
		if were == "" {
			were = "no tables"
		}
		notes = append(notes, fmt.Sprintf("publication %s lists %s but deps.yaml has keys for %s: walbust setup will ALTER PUBLICATION %s SET TABLE to deps.yaml's tables, which needs the tables' owner (run setup as the owner, or have them run it)",
			pub.Name, were, strings.Join(want, ", "), name))
	}
	if !pub.ViaRoot {
		notes = append(notes, fmt.Sprintf("publication %s is without publish_via_partition_root: walbust setup will ALTER PUBLICATION %s SET (publish_via_partition_root = true), which needs its owner",
			pub.Name, name))
	}
	return notes
}

// Write puts the files into dir. Without force it writes nothing when
// either file exists.
func Write(dir string, f *Files, force bool) ([]string, error) {
	files := []struct{ name, data string }{{ConfigFile, f.Config}, {DepsFile, f.Deps}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if !force {
		var exist []string
		for _, file := range files {
			p := filepath.Join(dir, file.name)
			if _, err := os.Lstat(p); err == nil {
				exist = append(exist, p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
		}
		if len(exist) > 0 {
			return nil, fmt.Errorf("%s already exist(s): %w; pass --force to replace them, or choose another --dir", strings.Join(exist, " and "), ErrExists)
		}
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !force {
		flags |= os.O_EXCL // created since the check: still not overwritten
	}
	var written []string
	for _, file := range files {
		p := filepath.Join(dir, file.name)
		out, err := os.OpenFile(p, flags, 0o644)
		if errors.Is(err, fs.ErrExist) {
			return written, fmt.Errorf("%s already exists: %w; pass --force to replace it", p, ErrExists)
		}
		if err != nil {
			return written, err
		}
		_, err = out.WriteString(file.data)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, fmt.Errorf("write %s: %w", p, err)
		}
		written = append(written, p)
	}
	return written, nil
}

// Run is walbust init: read the schema, write both files, say what next.
func Run(ctx context.Context, schema Schema, o Options, stdout io.Writer) error {
	f, err := Generate(ctx, schema, o)
	if err != nil {
		return err
	}
	written, err := Write(o.Dir, f, o.Force)
	if err != nil {
		return err
	}
	for _, p := range written {
		fmt.Fprintln(stdout, "wrote", p)
	}
	if f.FromPublication {
		fmt.Fprintf(stdout, "tables from publication %s: %s\n", f.Publication.Name, strings.Join(f.Publication.Tables, ", "))
	}
	fmt.Fprintf(stdout, "%s: keys for %d table(s): %s\n", DepsFile, len(f.Summary.Tables), strings.Join(f.Summary.Tables, ", "))
	for _, c := range f.Summary.Commented {
		fmt.Fprintf(stdout, "%s: left commented out: %s\n", DepsFile, c)
	}
	for _, n := range f.Notes {
		fmt.Fprintln(stdout, "note:", n)
	}
	cfg := filepath.Join(o.Dir, ConfigFile)
	setup := "creates the publication (which needs the tables' owner: see walbust setup --print-sql)\n     and the replication slot (which keeps WAL until run reads it)"
	if f.Publication != nil {
		setup = fmt.Sprintf("finds publication %s (altered only where its tables differ from deps.yaml's, which\n     needs their owner) and creates the replication slot (which keeps WAL until run reads it)", f.Publication.Name)
	}
	fmt.Fprintf(stdout, `
Next:
  1. Edit %s: make the keys the ones your application caches; the comments offer
     a list key for each foreign key and say which need REPLICA IDENTITY FULL.
  2. walbust setup --config %s
     %s
  3. walbust validate --config %s
     checks deps.yaml against the database and Redis
  4. walbust run --config %s
     streams changes and invalidates keys
`, filepath.Join(o.Dir, DepsFile), cfg, setup, cfg, cfg)
	return nil
}

// Connect opens the connection init reads the catalog over, explaining a
// refusal as the other commands do.
func Connect(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", replication.ExplainConnect(validate.ConnectError(err)))
	}
	return conn, nil
}

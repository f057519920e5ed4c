package shellcount

import (
	"slices"
	"testing"
)

func TestCommands(t *testing.T) {
	cases := []struct {
		name, script string
		want         []string
	}{
		{"empty", "", nil},
		{"blank lines and comments only", "\n  \n# a comment\n   # another\n", nil},
		{"trailing comments", "make demo   # see walbust invalidate keys\nmake test   # lint; unit && e2e\n",
			[]string{"make demo", "make test"}},
		{"and, or, semicolon", "a && b || c; d\n", []string{"a", "b", "c", "d"}},
		{"operators inside quotes", `echo "a && b; c" 'x || y; z'` + "\n", []string{`echo "a && b; c" 'x || y; z'`}},
		{"a pipeline is one command", "bin/walbust setup --print-sql | grep '^CREATE PUBLICATION' | sudo -u postgres psql app\n",
			[]string{"bin/walbust setup --print-sql | grep '^CREATE PUBLICATION' | sudo -u postgres psql app"}},
		{"a pipe at the end of a line continues it", "a |\n  b\nc\n", []string{"a | b", "c"}},
		{"backslash continuations", "psql app -c \"ALTER SYSTEM SET wal_level = logical\" \\\n  -c \"CREATE ROLE walbust\" \\\n  -c 'SELECT 1'\nsudo systemctl restart postgresql\n",
			[]string{`psql app -c "ALTER SYSTEM SET wal_level = logical" -c "CREATE ROLE walbust" -c 'SELECT 1'`, "sudo systemctl restart postgresql"}},
		{"one line, two commands", `sudo -u postgres psql -c "ALTER SYSTEM SET wal_level = logical" && sudo systemctl restart postgresql`,
			[]string{`sudo -u postgres psql -c "ALTER SYSTEM SET wal_level = logical"`, "sudo systemctl restart postgresql"}},
		{"escaped separators", `echo a\;b \&\& c`, []string{`echo a\;b \&\& c`}},
		{"command substitution", "x=$(cd /tmp; ls | wc -l) && echo \"$x\"\n", []string{"x=$(cd /tmp; ls | wc -l)", `echo "$x"`}},
		{"# inside a word or quotes is no comment", "echo a#b \"#c\" ${X:-#}\n", []string{`echo a#b "#c" ${X:-#}`}},
		{"single & and redirections", "cmd 2>&1 >/dev/null\n", []string{"cmd 2>&1 >/dev/null"}},
		{"export and a URL", "export PGPASSWORD=secret DATABASE_URL=postgres://walbust@${PGHOST:-localhost}:${PGPORT:-5432}/app\nbin/walbust init --postgres-url \"$DATABASE_URL\"\n",
			[]string{"export PGPASSWORD=secret DATABASE_URL=postgres://walbust@${PGHOST:-localhost}:${PGPORT:-5432}/app", `bin/walbust init --postgres-url "$DATABASE_URL"`}},
		{"a dangling && leaves no empty command", "a &&\nb\n", []string{"a", "b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Commands(c.script); !slices.Equal(got, c.want) {
				t.Errorf("Commands(%q)\n got %q\nwant %q", c.script, got, c.want)
			}
		})
	}
}

package replication_test

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

type pv = pgoutputtest.Value

const (
	relUsers  = 16384
	relTeams  = 16390
	xid       = 731
	commitLSN = 0x16B3748
	endLSN    = 0x16B3778
)

var (
	commitTime = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	usersCols  = []pgoutputtest.Column{{Name: "id", Key: true, Type: 23}, {Name: "email"}, {Name: "bio"}}
	teamsCols  = []pgoutputtest.Column{{Name: "id", Key: true, Type: 23}, {Name: "name"}}
)

func usersRelation(identity byte) []byte {
	return pgoutputtest.Relation(relUsers, "public", "users", identity, usersCols)
}

func teamsRelation() []byte { return pgoutputtest.Relation(relTeams, "app", "teams", 'd', teamsCols) }

func begin() []byte { return pgoutputtest.Begin(commitLSN, commitTime, xid) }

func commit() []byte { return pgoutputtest.Commit(commitLSN, endLSN, commitTime) }

func text(s string) wal.Value {
	return wal.Value{Kind: wal.Text, Data: []byte(s)}
}

var (
	null      = wal.Value{Kind: wal.Null}
	missing   = wal.Value{Kind: wal.Missing}
	unchanged = wal.Value{Kind: wal.Unchanged}
)

// decodeAll feeds msgs to d and returns the transactions it completes.
func decodeAll(t *testing.T, d *replication.Decoder[replication.Sink], msgs ...[]byte) []*replication.Committed[replication.Sink] {
	t.Helper()
	var txs []*replication.Committed[replication.Sink]
	for i, m := range msgs {
		tx, _, err := d.Decode(m)
		if err != nil {
			t.Fatalf("message %d (%q): %v", i, m[0], err)
		}
		if tx != nil {
			txs = append(txs, tx)
		}
	}
	return txs
}

// TestPgoutputtestWireFormat pins the test message builder to the pgoutput
// wire format, written out byte by byte.
func TestPgoutputtestWireFormat(t *testing.T) {
	at := time.Date(2000, 1, 1, 0, 0, 5, 0, time.UTC)
	micros := []byte{0, 0, 0, 0, 0, 0x4C, 0x4B, 0x40} // 5,000,000 µs after the Postgres epoch
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"relation", pgoutputtest.Relation(0x4000, "public", "t", 'd', []pgoutputtest.Column{{Name: "id", Key: true, Type: 23}, {Name: "v"}}),
			concat([]byte{'R', 0, 0, 0x40, 0}, []byte("public\x00t\x00"), []byte{'d', 0, 2},
				[]byte{1}, []byte("id\x00"), []byte{0, 0, 0, 23, 0xFF, 0xFF, 0xFF, 0xFF},
				[]byte{0}, []byte("v\x00"), []byte{0, 0, 0, 25, 0xFF, 0xFF, 0xFF, 0xFF})},
		{"begin", pgoutputtest.Begin(0x0102030405060708, at, 0x0A0B0C0D),
			concat([]byte{'B', 1, 2, 3, 4, 5, 6, 7, 8}, micros, []byte{0x0A, 0x0B, 0x0C, 0x0D})},
		{"insert", pgoutputtest.Insert(0x4000, pv("1"), nil, pgoutputtest.Unchanged),
			[]byte{'I', 0, 0, 0x40, 0, 'N', 0, 3, 't', 0, 0, 0, 1, '1', 'n', 'u'}},
		{"update K", pgoutputtest.Update(0x4000, 'K', []pv{pv("1"), nil}, []pv{pv("2"), pv("x")}),
			[]byte{'U', 0, 0, 0x40, 0, 'K', 0, 2, 't', 0, 0, 0, 1, '1', 'n', 'N', 0, 2, 't', 0, 0, 0, 1, '2', 't', 0, 0, 0, 1, 'x'}},
		{"update without old", pgoutputtest.Update(0x4000, 0, nil, []pv{pv("ab")}),
			[]byte{'U', 0, 0, 0x40, 0, 'N', 0, 1, 't', 0, 0, 0, 2, 'a', 'b'}},
		{"delete O", pgoutputtest.Delete(0x4000, 'O', []pv{pv("1")}),
			[]byte{'D', 0, 0, 0x40, 0, 'O', 0, 1, 't', 0, 0, 0, 1, '1'}},
		{"truncate", pgoutputtest.Truncate(1, 2),
			[]byte{'T', 0, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 2}},
		{"commit", pgoutputtest.Commit(0x10, 0x20, at),
			concat([]byte{'C', 0}, []byte{0, 0, 0, 0, 0, 0, 0, 0x10}, []byte{0, 0, 0, 0, 0, 0, 0, 0x20}, micros)},
	}
	for _, tt := range tests {
		if !bytes.Equal(tt.got, tt.want) {
			t.Errorf("%s:\n got % x\nwant % x", tt.name, tt.got, tt.want)
		}
	}
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestDecodeInsertTransaction(t *testing.T) {
	d := replication.NewDecoder()
	tx, rel, err := d.Decode(usersRelation('d'))
	if err != nil || tx != nil || rel == nil {
		t.Fatalf("Relation: %v %v %v", tx, rel, err)
	}
	wantRel := &wal.Relation{ID: relUsers, Namespace: "public", Name: "users", ReplicaIdentity: 'd', Columns: []wal.Column{
		{Name: "id", TypeOID: 23, Key: true}, {Name: "email", TypeOID: 25}, {Name: "bio", TypeOID: 25}}}
	if !reflect.DeepEqual(rel, wantRel) {
		t.Errorf("relation %+v, want %+v", rel, wantRel)
	}
	if rel.QualifiedName() != "public.users" {
		t.Errorf("QualifiedName() = %q", rel.QualifiedName())
	}
	if d.InTransaction() {
		t.Error("in a transaction before Begin")
	}
	for _, m := range [][]byte{begin(), pgoutputtest.Insert(relUsers, pv("1"), pv("a@x"), nil)} {
		if tx, r, err := d.Decode(m); tx != nil || r != nil || err != nil {
			t.Fatalf("%q: %v %v %v", m[0], tx, r, err)
		}
	}
	if !d.InTransaction() {
		t.Error("not in a transaction after Begin")
	}
	tx, r, err := d.Decode(commit())
	if err != nil || r != nil || tx == nil {
		t.Fatalf("Commit: %v %v %v", tx, r, err)
	}
	if d.InTransaction() {
		t.Error("in a transaction after Commit")
	}
	if tx.Xid != xid || tx.CommitLSN != commitLSN || !tx.CommitTime.Equal(commitTime) {
		t.Errorf("tx xid %d commit %s at %v", tx.Xid, tx.CommitLSN, tx.CommitTime)
	}
	if tx.EndLSN != endLSN {
		t.Errorf("EndLSN = %s, want the commit's transaction end LSN %s (CommitLSN is %s)", tx.EndLSN, wal.LSN(endLSN), wal.LSN(commitLSN))
	}
	if len(tx.Changes) != 1 {
		t.Fatalf("%d changes", len(tx.Changes))
	}
	c := tx.Changes[0]
	if c.Op != wal.Insert || c.Relation != rel || c.Old != nil {
		t.Errorf("change %+v", c)
	}
	if want := []wal.Value{text("1"), text("a@x"), null}; !reflect.DeepEqual(c.New, want) {
		t.Errorf("New = %+v, want %+v", c.New, want)
	}
}

func TestDecodeRowChanges(t *testing.T) {
	big := strings.Repeat("toasted ", 1000)
	tests := []struct {
		name     string
		identity byte
		msg      []byte
		op       wal.Op
		old, new []wal.Value
	}{
		{"insert with NULL", 'd', pgoutputtest.Insert(relUsers, pv("1"), nil, pv("")),
			wal.Insert, nil, []wal.Value{text("1"), null, text("")}},
		{"update without old tuple", 'd', pgoutputtest.Update(relUsers, 0, nil, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
			wal.Update, nil, []wal.Value{text("1"), text("b@x"), unchanged}},
		{"update with K old tuple marks non-key columns Missing", 'd',
			pgoutputtest.Update(relUsers, 'K', []pv{pv("1"), nil, nil}, []pv{pv("2"), pv("b@x"), pv("bio")}),
			wal.Update, []wal.Value{text("1"), missing, missing}, []wal.Value{text("2"), text("b@x"), text("bio")}},
		{"unchanged toast stays unchanged with a K old tuple", 'd',
			pgoutputtest.Update(relUsers, 'K', []pv{pv("1"), nil, nil}, []pv{pv("2"), pv("b@x"), pgoutputtest.Unchanged}),
			wal.Update, []wal.Value{text("1"), missing, missing}, []wal.Value{text("2"), text("b@x"), unchanged}},
		{"unchanged toast is filled from an O old tuple", 'f',
			pgoutputtest.Update(relUsers, 'O', []pv{pv("1"), pv("a@x"), pv(big)}, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
			wal.Update, []wal.Value{text("1"), text("a@x"), text(big)}, []wal.Value{text("1"), text("b@x"), text(big)}},
		{"unchanged toast filled with an old NULL", 'f',
			pgoutputtest.Update(relUsers, 'O', []pv{pv("1"), pv("a@x"), nil}, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
			wal.Update, []wal.Value{text("1"), text("a@x"), null}, []wal.Value{text("1"), text("b@x"), null}},
		{"unchanged toast in both tuples stays unchanged", 'f',
			pgoutputtest.Update(relUsers, 'O', []pv{pv("1"), pv("a@x"), pgoutputtest.Unchanged}, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
			wal.Update, []wal.Value{text("1"), text("a@x"), unchanged}, []wal.Value{text("1"), text("b@x"), unchanged}},
		{"delete with K old tuple", 'd', pgoutputtest.Delete(relUsers, 'K', []pv{pv("1"), nil, nil}),
			wal.Delete, []wal.Value{text("1"), missing, missing}, nil},
		{"delete with O old tuple keeps NULLs", 'f', pgoutputtest.Delete(relUsers, 'O', []pv{pv("1"), nil, pv("x")}),
			wal.Delete, []wal.Value{text("1"), null, text("x")}, nil},
		{"key column sent as NULL in a K tuple is NULL", 'd', pgoutputtest.Delete(relUsers, 'K', []pv{nil, nil, nil}),
			wal.Delete, []wal.Value{null, missing, missing}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := replication.NewDecoder()
			txs := decodeAll(t, d, usersRelation(tt.identity), begin(), tt.msg, commit())
			if len(txs) != 1 || len(txs[0].Changes) != 1 {
				t.Fatalf("got %+v", txs)
			}
			c := txs[0].Changes[0]
			if c.Op != tt.op {
				t.Errorf("op %v, want %v", c.Op, tt.op)
			}
			if !reflect.DeepEqual(c.Old, tt.old) {
				t.Errorf("Old = %s, want %s", showValues(c.Old), showValues(tt.old))
			}
			if !reflect.DeepEqual(c.New, tt.new) {
				t.Errorf("New = %s, want %s", showValues(c.New), showValues(tt.new))
			}
		})
	}
}

func showValues(vs []wal.Value) string {
	if vs == nil {
		return "nil"
	}
	var parts []string
	for _, v := range vs {
		switch v.Kind {
		case wal.Missing:
			parts = append(parts, "Missing")
		case wal.Null:
			parts = append(parts, "NULL")
		case wal.Unchanged:
			parts = append(parts, "Unchanged")
		default:
			s := string(v.Data)
			if len(s) > 20 {
				s = s[:20] + "..."
			}
			parts = append(parts, "'"+s+"'")
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func TestDecodeTruncate(t *testing.T) {
	d := replication.NewDecoder()
	txs := decodeAll(t, d, usersRelation('d'), teamsRelation(), begin(), pgoutputtest.Truncate(relUsers, relTeams), commit())
	if len(txs) != 1 {
		t.Fatalf("%d transactions", len(txs))
	}
	var got []string
	for _, c := range txs[0].Changes {
		if c.Op != wal.Truncate || c.Old != nil || c.New != nil {
			t.Errorf("change %+v", c)
		}
		got = append(got, c.Relation.QualifiedName())
	}
	if want := []string{"public.users", "app.teams"}; !reflect.DeepEqual(got, want) {
		t.Errorf("truncated %q, want %q", got, want)
	}
}

func TestDecodeSeveralTransactions(t *testing.T) {
	d := replication.NewDecoder()
	txs := decodeAll(t, d,
		usersRelation('d'), teamsRelation(),
		pgoutputtest.Begin(100, commitTime, 1), pgoutputtest.Insert(relUsers, pv("1"), pv("a"), pv("b")), pgoutputtest.Commit(100, 110, commitTime),
		pgoutputtest.Begin(200, commitTime, 2), pgoutputtest.Insert(relTeams, pv("5"), pv("t")),
		pgoutputtest.Delete(relUsers, 'K', []pv{pv("1"), nil, nil}), pgoutputtest.Commit(200, 210, commitTime),
		pgoutputtest.Begin(300, commitTime, 3), pgoutputtest.Commit(300, 310, commitTime),
	)
	if len(txs) != 3 {
		t.Fatalf("%d transactions", len(txs))
	}
	for i, want := range []struct {
		xid      uint32
		end      wal.LSN
		nchanges int
	}{{1, 110, 1}, {2, 210, 2}, {3, 310, 0}} {
		if tx := txs[i]; tx.Xid != want.xid || tx.EndLSN != want.end || len(tx.Changes) != want.nchanges {
			t.Errorf("tx %d: xid %d end %s %d changes, want %d %s %d", i, tx.Xid, tx.EndLSN, len(tx.Changes), want.xid, want.end, want.nchanges)
		}
	}
	if r := txs[1].Changes[0].Relation; r.QualifiedName() != "app.teams" {
		t.Errorf("second transaction's first change on %s", r.QualifiedName())
	}
}

// A Relation message resent after a schema change replaces the cached one.
func TestDecodeRelationReplaced(t *testing.T) {
	d := replication.NewDecoder()
	wider := pgoutputtest.Relation(relUsers, "public", "users", 'd', append(usersCols[:3:3], pgoutputtest.Column{Name: "team_id"}))
	txs := decodeAll(t, d, usersRelation('d'), wider, begin(), pgoutputtest.Insert(relUsers, pv("1"), nil, nil, pv("7")), commit())
	c := txs[0].Changes[0]
	if len(c.Relation.Columns) != 4 || c.Relation.Columns[3].Name != "team_id" || len(c.New) != 4 {
		t.Errorf("change on %+v with %d values", c.Relation, len(c.New))
	}
	// The old shape is now an error.
	decodeAll(t, d, begin())
	if _, _, err := d.Decode(pgoutputtest.Insert(relUsers, pv("1"), nil, nil)); err == nil || !strings.Contains(err.Error(), "3 columns, relation has 4") {
		t.Errorf("insert with the old column count: %v", err)
	}
}

func TestDecodeReset(t *testing.T) {
	d := replication.NewDecoder()
	decodeAll(t, d, usersRelation('d'), begin(), pgoutputtest.Insert(relUsers, pv("1"), nil, nil))
	d.Reset()
	if d.InTransaction() {
		t.Error("in a transaction after Reset")
	}
	if _, _, err := d.Decode(commit()); err == nil || !strings.Contains(err.Error(), "without begin") {
		t.Errorf("commit after Reset: %v", err)
	}
	// The relation cache survives: the server does not resend relations.
	txs := decodeAll(t, d, begin(), pgoutputtest.Insert(relUsers, pv("2"), nil, nil), commit())
	if len(txs) != 1 || len(txs[0].Changes) != 1 || string(txs[0].Changes[0].New[0].Data) != "2" {
		t.Errorf("after Reset: %+v", txs)
	}
}

// Streamed (in-progress) transactions, protocol version 2.

func withXid(msg []byte, x uint32) []byte {
	return concat(msg[:1], binary.BigEndian.AppendUint32(nil, x), msg[1:])
}

func streamStart(x uint32, first bool) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'S'}, x)
	if first {
		return append(b, 1)
	}
	return append(b, 0)
}

func streamStop() []byte { return []byte{'E'} }

func streamCommit(x uint32, commit, end uint64) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'c'}, x)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, commit)
	b = binary.BigEndian.AppendUint64(b, end)
	return binary.BigEndian.AppendUint64(b, uint64(commitTime.Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Microseconds()))
}

func streamAbort(x, sub uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32([]byte{'A'}, x), sub)
}

func TestDecodeStreamedTransactions(t *testing.T) {
	d := replication.NewDecoder()
	txs := decodeAll(t, d,
		streamStart(500, true),
		withXid(usersRelation('d'), 500),
		withXid(pgoutputtest.Insert(relUsers, pv("1"), nil, nil), 500),
		streamStop(),
		// An ordinary transaction commits in between.
		begin(), pgoutputtest.Insert(relUsers, pv("9"), nil, nil), commit(),
		streamStart(600, true),
		withXid(pgoutputtest.Insert(relUsers, pv("60"), nil, nil), 600),
		streamStop(),
		streamStart(500, false),
		withXid(pgoutputtest.Delete(relUsers, 'K', []pv{pv("1"), nil, nil}), 501), // a subtransaction
		streamStop(),
		streamAbort(600, 600),
		streamAbort(500, 501), // subtransaction abort: changes are kept
		streamCommit(500, 0x9000, 0x9040),
	)
	if len(txs) != 2 {
		t.Fatalf("%d transactions, want 2", len(txs))
	}
	if txs[0].Xid != xid || len(txs[0].Changes) != 1 {
		t.Errorf("ordinary transaction %+v", txs[0])
	}
	s := txs[1]
	if s.Xid != 500 || s.CommitLSN != 0x9000 || s.EndLSN != 0x9040 || !s.CommitTime.Equal(commitTime) {
		t.Errorf("streamed transaction xid %d commit %s end %s at %v", s.Xid, s.CommitLSN, s.EndLSN, s.CommitTime)
	}
	if len(s.Changes) != 2 || s.Changes[0].Op != wal.Insert || s.Changes[1].Op != wal.Delete {
		t.Errorf("streamed changes %+v", s.Changes)
	}
	if d.InTransaction() {
		t.Error("in a transaction after everything committed or aborted")
	}
	if _, _, err := d.Decode(streamCommit(600, 1, 2)); err == nil || !strings.Contains(err.Error(), "unknown transaction 600") {
		t.Errorf("commit of the aborted stream: %v", err)
	}
}

func heartbeat(transactional bool, content string) []byte {
	b := []byte{'M', 0}
	if transactional {
		b[1] = 1
	}
	b = binary.BigEndian.AppendUint64(b, 0x500)
	b = append(append(b, replication.HeartbeatPrefix...), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(content)))
	return append(b, content...)
}

func TestDecodeHeartbeat(t *testing.T) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 42, time.UTC)
	d := replication.NewDecoder()
	txs := decodeAll(t, d, begin(), heartbeat(true, "1704067200000000042"), commit(),
		begin(), heartbeat(false, "1704067200000000042"), commit(),
		begin(), heartbeat(true, "not a number"), commit(),
		heartbeat(false, "1"))
	if len(txs) != 3 {
		t.Fatalf("%d transactions", len(txs))
	}
	if !txs[0].Heartbeat.Equal(at) {
		t.Errorf("Heartbeat = %v, want %v", txs[0].Heartbeat, at)
	}
	if !txs[1].Heartbeat.IsZero() || !txs[2].Heartbeat.IsZero() {
		t.Errorf("non-transactional or garbled heartbeat recorded: %v %v", txs[1].Heartbeat, txs[2].Heartbeat)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup [][]byte
		msg   []byte
		want  string
	}{
		{"empty message", nil, []byte{}, "empty pgoutput message"},
		{"unknown message type", nil, []byte{'Z', 1, 2, 3}, "parse pgoutput message"},
		{"insert outside a transaction", [][]byte{usersRelation('d')}, pgoutputtest.Insert(relUsers, pv("1"), nil, nil), "outside a transaction"},
		{"truncate outside a transaction", [][]byte{usersRelation('d')}, pgoutputtest.Truncate(relUsers), "outside a transaction"},
		{"insert on an unknown relation", [][]byte{begin()}, pgoutputtest.Insert(99, pv("1")), "unknown relation 99"},
		{"truncate of an unknown relation", [][]byte{usersRelation('d'), begin()}, pgoutputtest.Truncate(relUsers, 98), "unknown relation 98"},
		{"commit without begin", nil, commit(), "without begin"},
		{"stream commit of an unknown transaction", nil, streamCommit(7, 1, 2), "unknown transaction 7"},
		{"too few columns", [][]byte{usersRelation('d'), begin()}, pgoutputtest.Insert(relUsers, pv("1"), nil), "2 columns, relation has 3"},
		{"too many old columns", [][]byte{usersRelation('d'), begin()},
			pgoutputtest.Update(relUsers, 'K', []pv{pv("1"), nil, nil, nil}, []pv{pv("1"), nil, nil}), "old row: 4 columns"},
		{"binary column", [][]byte{usersRelation('d'), begin()},
			[]byte{'I', 0, 0, 0x40, 0, 'N', 0, 3, 'b', 0, 0, 0, 1, 1, 'n', 'n'}, "unsupported tuple data type"},
		{"unknown column kind", [][]byte{usersRelation('d'), begin()},
			[]byte{'I', 0, 0, 0x40, 0, 'N', 0, 3, 'x', 'n', 'n'}, ""}, // any error
		{"insert with an old tuple marker", [][]byte{usersRelation('d'), begin()},
			[]byte{'I', 0, 0, 0x40, 0, 'K', 0, 3, 'n', 'n', 'n'}, "parse pgoutput message"},
		{"delete with a new tuple marker", [][]byte{usersRelation('d'), begin()},
			[]byte{'D', 0, 0, 0x40, 0, 'N', 0, 3, 'n', 'n', 'n'}, "parse pgoutput message"},
		{"update with a bad tuple marker", [][]byte{usersRelation('d'), begin()},
			[]byte{'U', 0, 0, 0x40, 0, 'X', 0, 3, 'n', 'n', 'n'}, "parse pgoutput message"},
		{"text length past the end", [][]byte{usersRelation('d'), begin()},
			[]byte{'I', 0, 0, 0x40, 0, 'N', 0, 1, 't', 0, 0, 0, 9, 'a'}, "malformed pgoutput message"},
		{"relation name without terminator", nil, []byte{'R', 0, 0, 0, 1, 'p', 'u', 'b', 'l', 'i', 'c'}, "parse pgoutput message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := replication.NewDecoder()
			decodeAll(t, d, tt.setup...)
			tx, rel, err := d.Decode(tt.msg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, tt.want)
			}
			if tx != nil || rel != nil {
				t.Errorf("Decode returned %v %v with its error", tx, rel)
			}
		})
	}
}

// validMessages are well-formed messages; decodePrimed decodes one after the
// relations and a Begin, so row changes reach the tuple decoder.
func validMessages() [][]byte {
	return [][]byte{
		usersRelation('d'),
		teamsRelation(),
		begin(),
		pgoutputtest.Insert(relUsers, pv("1"), pv("a@x"), nil),
		pgoutputtest.Insert(relTeams, pv("12345"), pv("ünïcødé")),
		pgoutputtest.Update(relUsers, 0, nil, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
		pgoutputtest.Update(relUsers, 'K', []pv{pv("1"), nil, nil}, []pv{pv("2"), pv("b@x"), pv("bio")}),
		pgoutputtest.Update(relUsers, 'O', []pv{pv("1"), pv("a@x"), pv("bio")}, []pv{pv("1"), pv("b@x"), pgoutputtest.Unchanged}),
		pgoutputtest.Delete(relUsers, 'K', []pv{pv("1"), nil, nil}),
		pgoutputtest.Delete(relUsers, 'O', []pv{pv("1"), pv("a@x"), pv("bio")}),
		pgoutputtest.Truncate(relUsers, relTeams),
		heartbeat(true, "1704067200000000042"),
		commit(),
	}
}

func decodePrimed(t testing.TB, msg []byte) (*replication.Committed[replication.Sink], *wal.Relation, error) {
	return primedDecoder(t).Decode(msg)
}

func primedDecoder(t testing.TB) *replication.Decoder[replication.Sink] {
	d := replication.NewDecoder()
	for _, m := range [][]byte{usersRelation('d'), teamsRelation(), begin()} {
		if _, _, err := d.Decode(m); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// Every strict prefix of a valid message is an error, never a panic, and
// never a silently shortened row.
func TestDecodeTruncatedMessages(t *testing.T) {
	for _, msg := range validMessages() {
		if _, _, err := decodePrimed(t, msg); err != nil {
			t.Fatalf("valid %q message: %v", msg[0], err)
		}
		for n := 0; n < len(msg); n++ {
			// The capacity is cut too: pglogrepl slices some fields up to
			// the capacity, which would read the bytes cut off.
			tx, rel, err := decodePrimed(t, msg[:n:n])
			if err == nil {
				t.Errorf("%q message cut to %d of %d bytes decoded without error (tx %v, relation %v)", msg[0], n, len(msg), tx, rel)
			}
		}
	}
}

// Garbage after a valid message is ignored by pgoutput's decoder; the values
// decoded must still be the message's own.
func TestDecodeTrailingBytes(t *testing.T) {
	msg := append(pgoutputtest.Insert(relUsers, pv("1"), pv("a@x"), nil), 't', 0, 0, 0, 1, 'z')
	d := replication.NewDecoder()
	decodeAll(t, d, usersRelation('d'), begin(), msg)
	txs := decodeAll(t, d, commit())
	if want := []wal.Value{text("1"), text("a@x"), null}; !reflect.DeepEqual(txs[0].Changes[0].New, want) {
		t.Errorf("New = %s", showValues(txs[0].Changes[0].New))
	}
}

// A malformed message that claims a huge column must become an error
// without allocating what it claims: an allocation the size of the claimed
// length is an out-of-memory crash waiting for a big enough number (up to
// 4 GiB per column, 16 GiB for a Truncate's relation count), which no
// recover() can catch.
func TestDecodeHugeLengthsDoNotAllocate(t *testing.T) {
	const claimed = 256 << 20
	tests := []struct {
		name string
		msg  []byte
	}{
		{"text column length", concat([]byte{'I', 0, 0, 0x40, 0, 'N', 0, 3, 't'}, binary.BigEndian.AppendUint32(nil, claimed), []byte("x"))},
		{"old tuple text column length", concat([]byte{'U', 0, 0, 0x40, 0, 'O', 0, 3, 't'}, binary.BigEndian.AppendUint32(nil, claimed), []byte("x"))},
		{"truncate relation count", concat([]byte{'T'}, binary.BigEndian.AppendUint32(nil, claimed/4), []byte{0, 0, 0, 0x40, 0})},
		// pglogrepl reads a column of unknown kind as an empty one and goes
		// on to the next column, which can claim any length.
		{"column after an unknown column kind", concat([]byte{'I', 0, 0, 0x40, 0, 'N', 0, 3, 'x', 't'}, binary.BigEndian.AppendUint32(nil, claimed), []byte("x"))},
		// pglogrepl skips the byte after an old tuple without looking at it
		// and decodes the new tuple that follows whatever it is.
		{"new tuple after a bad marker", concat([]byte{'U', 0, 0, 0x40, 0, 'K', 0, 3, 'n', 'n', 'n', 'X', 0, 3, 't'}, binary.BigEndian.AppendUint32(nil, claimed), []byte("x"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := decodePrimed(t, tt.msg)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Error("no error")
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
				t.Errorf("decoding a %d-byte message allocated %d MiB", len(tt.msg), n>>20)
			}
		})
	}
}

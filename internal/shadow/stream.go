package shadow

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// ErrNoPublication means the configured publication does not exist: run
// `walbust setup` first (the operator's to fix).
var ErrNoPublication = errors.New("publication does not exist")

// StreamOptions configures Stream.
type StreamOptions struct {
	URL         string
	Publication string
	// Duration is how long changes are streamed; ctx ending stops sooner.
	Duration time.Duration
	// StatusInterval is how often the walsender hears from shadow.
	StatusInterval time.Duration
	Core           *Core
	Logger         *zap.Logger
	// Slot names the temporary slot; "" makes a unique name.
	Slot string
}

// Stream creates a temporary logical slot on a replication connection of
// its own, streams the publication's changes from it into o.Core for
// o.Duration (or until ctx ends), and disconnects, which drops the slot.
// Only that slot ever hears a position; it returns how long it streamed.
func Stream(ctx context.Context, o StreamOptions) (SlotReport, time.Duration, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.Slot == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.Slot = fmt.Sprintf("walbust_shadow_%d_%s", os.Getpid(), hex.EncodeToString(b))
	}
	rep := SlotReport{Name: o.Slot, Temporary: true}
	conn, err := replication.Connect(ctx, o.URL)
	if err != nil {
		return rep, 0, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = conn.Close(cctx) // the temporary slot goes with the session
		cancel()
	}()
	if err := checkPublication(ctx, conn, o.Publication, o.Core); err != nil {
		return rep, 0, err
	}
	// A temporary slot lives only on the connection that creates it: this
	// one, which then streams from it.
	slot, err := pglogrepl.CreateReplicationSlot(ctx, conn, o.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication,
	})
	if err != nil {
		return rep, 0, fmt.Errorf("create temporary slot %s (the REPLICATION role is needed): %w", o.Slot, err)
	}
	start, err := wal.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return rep, 0, fmt.Errorf("temporary slot %s: %w", o.Slot, err)
	}
	rep.CreatedAt = start.String()
	if err := pglogrepl.StartReplication(ctx, conn, o.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
		PluginArgs: pluginArgs(conn, o.Publication),
	}); err != nil {
		return rep, 0, fmt.Errorf("start replication on temporary slot %s: %w", o.Slot, err)
	}
	o.Logger.Info("shadow streaming", zap.String("slot", o.Slot), zap.String("publication", o.Publication),
		zap.Stringer("start_lsn", start), zap.Duration("duration", o.Duration))
	s := &session{o: o, conn: conn, dec: replication.NewSinkDecoder(o.Core.Begin), received: start}
	began := time.Now()
	err = s.run(ctx, began.Add(o.Duration))
	elapsed := time.Since(began)
	if err == nil && !conn.IsClosed() {
		// The last position, to the temporary slot: nothing else hears it.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = s.report(sctx, false)
		cancel()
	}
	rep.Received, rep.ServerWALEnd, rep.LastCommit, rep.Confirmed = s.received.String(), lsnText(s.serverWALEnd), lsnText(s.lastCommit), lsnText(s.reported)
	return rep, elapsed, err
}

func lsnText(l wal.LSN) string {
	if l == 0 {
		return ""
	}
	return l.String()
}

// checkPublication refuses a missing publication and warns about the
// candidate's tables it does not publish: their changes never arrive.
func checkPublication(ctx context.Context, conn *pgconn.PgConn, publication string, core *Core) error {
	lit := "'" + strings.ReplaceAll(publication, "'", "''") + "'"
	exists, err := simpleQuery(ctx, conn, "SELECT count(*) FROM pg_publication WHERE pubname = "+lit)
	if err != nil {
		return fmt.Errorf("look up publication %s: %w", publication, err)
	}
	if len(exists) != 1 || string(exists[0][0]) == "0" {
		return fmt.Errorf("%w: %s (create it with `walbust setup`)", ErrNoPublication, publication)
	}
	tables, err := simpleQuery(ctx, conn, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = "+lit)
	if err != nil {
		return fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	var published []string
	for _, row := range tables {
		published = append(published, wal.QualifiedName(string(row[0]), string(row[1])))
	}
	cand := core.regs[Candidate]
	for _, name := range cand.Names() {
		if !slices.Contains(published, name) {
			core.agg.Warn(fmt.Sprintf("%s is in the candidate but not in publication %s: its changes were not streamed, so its rules were not tried "+
				"(after deploying the candidate, `walbust setup` adds it)", name, publication))
		}
	}
	return nil
}

// simpleQuery runs SQL on a replication connection (simple protocol).
func simpleQuery(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) != 1 {
		return nil, fmt.Errorf("%d results, want 1", len(res))
	}
	return res[0].Rows, res[0].Err
}

// pluginArgs are the daemon's: protocol 2 with streaming of large
// transactions on 14+, else protocol 1.
func pluginArgs(conn *pgconn.PgConn, publication string) []string {
	args := []string{fmt.Sprintf("publication_names '%s'", publication)}
	var major int
	fmt.Sscanf(conn.ParameterStatus("server_version"), "%d", &major)
	if major >= 14 {
		return append(args, "proto_version '2'", "streaming 'on'", "messages 'true'")
	}
	return append(args, "proto_version '1'")
}

// session is one streaming connection's positions.
type session struct {
	o            StreamOptions
	conn         *pgconn.PgConn
	dec          *replication.Decoder[*Tx]
	received     wal.LSN // highest WAL position received
	idle         wal.LSN // server WAL end seen between transactions
	serverWALEnd wal.LSN // highest WAL end the server reported
	lastCommit   wal.LSN // end of the last transaction mapped
	reported     wal.LSN // flush position last sent
	lastReport   time.Time
}

func (s *session) run(ctx context.Context, deadline time.Time) error {
	stopWake := context.AfterFunc(ctx, func() { _ = s.conn.Conn().SetReadDeadline(time.Now()) })
	defer stopWake()
	s.lastReport = time.Now()
	for {
		now := time.Now()
		if ctx.Err() != nil || !now.Before(deadline) {
			return nil
		}
		if now.Sub(s.lastReport) >= s.o.StatusInterval {
			if err := s.report(ctx, true); err != nil {
				return err
			}
		}
		wake := s.lastReport.Add(s.o.StatusInterval)
		if deadline.Before(wake) {
			wake = deadline
		}
		if err := s.conn.Conn().SetReadDeadline(wake); err != nil {
			return fmt.Errorf("set read deadline: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		if err := s.handle(ctx, msg); err != nil {
			return err
		}
	}
}

func (s *session) handle(ctx context.Context, msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return errors.New("empty CopyData message")
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			s.serverWALEnd = max(s.serverWALEnd, wal.LSN(ka.ServerWALEnd))
			if !s.dec.InTransaction() {
				s.idle = max(s.idle, wal.LSN(ka.ServerWALEnd))
			}
			if ka.ReplyRequested {
				return s.report(ctx, false)
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			s.received = max(s.received, wal.LSN(xld.WALStart)+wal.LSN(len(xld.WALData)))
			tx, rel, err := s.dec.Decode(xld.WALData)
			if err != nil {
				return fmt.Errorf("decode at %s: %w", xld.WALStart, err)
			}
			if rel != nil {
				s.o.Core.Relation(rel)
			}
			if tx != nil {
				// Lookups finish even after a stop: the last transaction is
				// counted whole. Each has its own timeout.
				s.o.Core.Commit(context.WithoutCancel(ctx), tx.Sink)
				s.lastCommit = max(s.lastCommit, tx.EndLSN)
			}
		}
	case *pgproto3.CopyDone:
		return errors.New("server ended the replication stream")
	case *pgproto3.ErrorResponse:
		return pgconn.ErrorResponseToPgError(m)
	}
	return nil
}

// report sends a standby status update to the temporary slot: what was
// received as written, what was mapped (or held nothing) as flushed.
func (s *session) report(ctx context.Context, requestReply bool) error {
	flush := s.lastCommit
	if !s.dec.InTransaction() {
		flush = max(flush, s.idle)
	}
	flush = max(flush, s.reported)
	write := max(s.received, flush)
	if flush == 0 {
		write = 0 // pglogrepl would send a zero flush as the write position
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(write), WALFlushPosition: pglogrepl.LSN(flush), WALApplyPosition: pglogrepl.LSN(flush), ReplyRequested: requestReply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.reported, s.lastReport = flush, time.Now()
	return nil
}

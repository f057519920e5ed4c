package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/retry"
	"github.com/walbust/walbust/replication/wal"
)

// Consumer is what the stream delivers to, and everything the Streamer
// asks of it. Its methods are called from the streaming goroutine; S is
// the consumer's own per-transaction sink, which comes back to it in each
// Committed transaction.
type Consumer[S Sink] interface {
	// Relation is told every Relation message, so its schema can be
	// checked against what the consumer expects.
	Relation(rel *wal.Relation)
	// Begin gives a transaction that begins the sink its row changes go to
	// as they are decoded (the decoder never keeps the rows).
	Begin() S
	// TryAdmit takes room for a committed transaction if there is some
	// now; until it has room, a transaction is not delivered, which bounds
	// what is queued for the consumer by more than the queue's length.
	TryAdmit(tx *Committed[S]) bool
	// Admit waits for room; an error means ctx ended first.
	Admit(ctx context.Context, tx *Committed[S]) error
	// Acknowledged returns the end LSN of the last transaction applied and
	// saved, and how many delivered transactions have been applied in
	// total. Only acknowledged positions are ever reported to Postgres as
	// flushed, so the slot never releases WAL whose effects were lost.
	Acknowledged() (lsn wal.LSN, applied uint64)
}

// Options configures a Streamer.
type Options struct {
	URL            string
	Slot           string
	Publication    string
	StatusInterval time.Duration // periodic standby status updates
	// ServerTimeout: no message from the server for this long means the
	// connection is dead (half-open TCP), and we reconnect.
	ServerTimeout time.Duration
	Logger        *zap.Logger
	// OnConnected is told when streaming starts (true) and stops (false).
	OnConnected func(bool)
	// OnReport is told the server's WAL end and the confirmed position at
	// every status update.
	OnReport func(serverWALEnd, confirmed wal.LSN)
	// SaveIdle, when set, durably records a position past the acknowledged
	// one (WAL that touched no published table) before it is confirmed, so
	// the slot is never ahead of the checkpoint: a slot found ahead of it was
	// moved by something else.
	SaveIdle func(wal.LSN) error
	// BeforeStart, when set, runs before every START_REPLICATION, so a slot
	// re-created while walbust was disconnected is noticed on reconnect.
	// Its error ends the session (wrap ErrSlotLost or ErrFatal to stop).
	BeforeStart func(context.Context) error
}

// Streamer reads a logical replication slot and delivers committed
// transactions to its Consumer in commit order. It reconnects on
// connection failures and resumes from the acknowledged position.
type Streamer[S Sink] struct {
	opts Options
	log  *zap.Logger
	to   Consumer[S]
	dec  *Decoder[S]
	conn *pgconn.PgConn
	// sendStatus sends a standby status update; nil: on conn.
	sendStatus func(context.Context, pglogrepl.StandbyStatusUpdate) error

	pos           positions
	lastReport    time.Time
	lastServerMsg time.Time
}

// NewStreamer returns a Streamer that delivers to c and will skip every
// transaction ending at or before checkpoint: those were already applied.
func NewStreamer[S Sink](opts Options, checkpoint wal.LSN, c Consumer[S]) *Streamer[S] {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.ServerTimeout <= 0 {
		opts.ServerTimeout = 3 * opts.StatusInterval
	}
	return &Streamer[S]{opts: opts, log: opts.Logger, to: c, dec: NewSinkDecoder(c.Begin), pos: positions{lastDelivered: checkpoint}}
}

// ErrFatal marks errors that reconnecting cannot fix.
var ErrFatal = errors.New("fatal replication error")

// ErrSlotLost means the slot is gone or invalidated: changes were or may
// have been missed, and only a resync can restore correctness.
var ErrSlotLost = errors.New("replication slot lost")

// Stream delivers committed transactions to out until ctx is done or a fatal
// error occurs. The connection stays open afterwards so Close can report the
// final position.
func (s *Streamer[S]) Stream(ctx context.Context, out chan<- *Committed[S]) error {
	backoff := retry.Backoff{Initial: time.Second, Max: 10 * time.Second, Jitter: retry.Equal}
	for {
		err := s.session(ctx, out)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrFatal) || errors.Is(err, ErrSlotLost) {
			return err
		}
		s.closeConn()
		level := zap.WarnLevel
		if isSlotInUse(err) {
			// A standby waiting for the active instance's slot: poll often so
			// a takeover happens within seconds.
			level = zap.InfoLevel
			backoff.Reset()
		}
		wait := backoff.Next()
		s.log.Check(level, "replication interrupted; reconnecting").Write(zap.Error(err), zap.Duration("retry_in", wait))
		if retry.Sleep(ctx, wait) != nil {
			return nil
		}
		if err == nil || s.lastServerMsg.After(time.Now().Add(-time.Minute)) {
			// The session worked for a while: this is a new outage, not
			// the same one going on.
			backoff.Reset()
		}
	}
}

// session runs one connection from connect to failure or ctx done.
func (s *Streamer[S]) session(ctx context.Context, out chan<- *Committed[S]) error {
	conn, err := Connect(ctx, s.opts.URL)
	if err != nil {
		return classify(err)
	}
	s.conn = conn
	s.dec.Reset()
	// Start from what is durably applied: anything after it that is still
	// queued for the consumer is skipped on arrival (positions.replayed).
	start, _ := s.to.Acknowledged()
	if s.opts.BeforeStart != nil {
		if err := s.opts.BeforeStart(ctx); err != nil {
			return err
		}
	}
	from, fromWhat := startPosition(ctx, conn, s.opts.Slot, start)
	err = pglogrepl.StartReplication(ctx, conn, s.opts.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
		PluginArgs: pluginArgs(conn, s.opts.Publication),
	})
	if err != nil {
		return classify(fmt.Errorf("start replication on slot %s: %w", s.opts.Slot, err))
	}
	s.lastServerMsg = time.Now()
	s.connected(true)
	defer s.connected(false)
	// Receives pass no context (see receive); a stop interrupts the one in
	// progress through the connection's deadline instead.
	stopWake := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Now()) })
	defer stopWake()
	s.log.Info("streaming", zap.String("slot", s.opts.Slot), zap.String("publication", s.opts.Publication),
		zap.Stringer("start_lsn", from), zap.String("start_from", fromWhat), zap.Stringer("requested_lsn", start))
	for {
		if err := s.maybeReport(ctx, false); err != nil {
			return err
		}
		msg, err := s.receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				if time.Since(s.lastServerMsg) > s.opts.ServerTimeout {
					return fmt.Errorf("no message from the server for %s", s.opts.ServerTimeout)
				}
				continue
			}
			return classify(fmt.Errorf("receive: %w", err))
		}
		s.lastServerMsg = time.Now()
		if err := s.handle(ctx, msg, out); err != nil {
			return err
		}
	}
}

// pluginArgs asks for protocol 2 with streaming where the server has it
// (14+): Postgres then sends large transactions while they run instead of
// spilling them to disk and sending them all at commit.
func pluginArgs(conn *pgconn.PgConn, publication string) []string {
	args := []string{fmt.Sprintf("publication_names '%s'", publication)}
	var major int
	fmt.Sscanf(conn.ParameterStatus("server_version"), "%d", &major)
	if major >= 14 {
		return append(args, "proto_version '2'", "streaming 'on'", "messages 'true'")
	}
	return append(args, "proto_version '1'")
}

// receive waits for one message, briefly when there is an acknowledgement
// to report so the slot advances promptly, else until the next status update.
// The wait is a read deadline on the connection rather than a context:
// pgconn watches a cancellable context with a goroutine handoff on every
// call, which cost a sixth of walbust's CPU per message when profiled.
func (s *Streamer[S]) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	wait := time.Until(s.lastReport.Add(s.opts.StatusInterval))
	if s.pos.pending(s.acked()) {
		wait = min(wait, 50*time.Millisecond)
	}
	if err := s.conn.Conn().SetReadDeadline(time.Now().Add(max(wait, time.Millisecond))); err != nil {
		return nil, fmt.Errorf("set read deadline: %w", err)
	}
	if ctx.Err() != nil { // the stop may have come before the deadline was set
		return nil, ctx.Err()
	}
	return s.conn.ReceiveMessage(context.Background())
}

func (s *Streamer[S]) handle(ctx context.Context, msg pgproto3.BackendMessage, out chan<- *Committed[S]) error {
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return fmt.Errorf("empty CopyData message")
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			s.pos.keepalive(wal.LSN(ka.ServerWALEnd), s.dec.InTransaction())
			return s.maybeReport(ctx, ka.ReplyRequested)
		case pglogrepl.XLogDataByteID:
			// WALData aliases pgconn's receive buffer; it is decoded here, in
			// this goroutine, and the decoder copies what it keeps.
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			s.pos.data(wal.LSN(xld.WALStart), len(xld.WALData), wal.LSN(xld.ServerWALEnd))
			tx, rel, err := s.dec.Decode(xld.WALData)
			if err != nil {
				return fmt.Errorf("%w: decode at %s: %v", ErrFatal, xld.WALStart, err)
			}
			if rel != nil {
				s.to.Relation(rel)
			}
			if tx != nil {
				return s.deliver(ctx, tx, out)
			}
		}
		return nil
	case *pgproto3.CopyDone:
		return fmt.Errorf("server ended the replication stream")
	case *pgproto3.ErrorResponse:
		return classify(pgconn.ErrorResponseToPgError(m))
	}
	return nil
}

// deliver hands tx to the consumer, skipping transactions already applied
// (the server resends from the slot's confirmed position after a reconnect).
// While the consumer is busy it keeps the walsender informed, so a slow
// consumer does not make Postgres drop the connection.
func (s *Streamer[S]) deliver(ctx context.Context, tx *Committed[S], out chan<- *Committed[S]) error {
	if s.pos.replayed(tx.EndLSN) {
		return nil
	}
	if !s.to.TryAdmit(tx) {
		if err := s.admit(ctx, tx); err != nil {
			return err
		}
	}
	for {
		timer := time.NewTimer(time.Until(s.lastReport.Add(s.opts.StatusInterval)))
		select {
		case out <- tx:
			timer.Stop()
			s.pos.handedOver(tx.EndLSN)
			return nil
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
			if err := s.report(ctx, false); err != nil {
				return err
			}
		}
	}
}

// admit waits for room for tx, reporting to the walsender while it waits.
func (s *Streamer[S]) admit(ctx context.Context, tx *Committed[S]) error {
	for {
		actx, cancel := context.WithDeadline(ctx, s.lastReport.Add(s.opts.StatusInterval))
		err := s.to.Admit(actx, tx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if err := s.report(ctx, false); err != nil {
			return err
		}
	}
}

// acked is the consumer's acknowledgement, with whether a transaction is
// half received.
func (s *Streamer[S]) acked() acked {
	lsn, applied := s.to.Acknowledged()
	return acked{lsn: lsn, applied: applied, inTransaction: s.dec.InTransaction()}
}

func (s *Streamer[S]) maybeReport(ctx context.Context, replyRequested bool) error {
	due := time.Since(s.lastReport) >= s.opts.StatusInterval
	// New acknowledgements are reported at most every 100ms: a status
	// update per small transaction costs the walsender as much as decoding.
	fresh := s.pos.flush(s.acked()) > s.pos.reported && time.Since(s.lastReport) >= 100*time.Millisecond
	if replyRequested || due || fresh {
		return s.report(ctx, due)
	}
	return nil
}

// report sends a standby status update. requestReply asks the server for a
// keepalive, which is how a silent half-open connection gets noticed.
func (s *Streamer[S]) report(ctx context.Context, requestReply bool) error {
	a := s.acked()
	flush, warn := s.pos.confirm(a, s.opts.SaveIdle)
	if warn != nil {
		// Confirming it unsaved would leave the slot ahead of the
		// checkpoint, which the next start takes for a re-created slot.
		s.log.Warn("cannot save the idle position; confirming only the acknowledged one", zap.Stringer("lsn", s.pos.flush(a)), zap.Error(warn))
	}
	if err := s.send(ctx, statusUpdate(s.pos.received, flush, requestReply)); err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	if flush > s.pos.reported {
		s.log.Debug("confirmed", zap.Stringer("flush_lsn", flush))
	}
	s.pos.sent(flush)
	s.lastReport = time.Now()
	if s.opts.OnReport != nil {
		s.opts.OnReport(max(s.pos.serverWALEnd, flush), flush)
	}
	return nil
}

func (s *Streamer[S]) send(ctx context.Context, u pglogrepl.StandbyStatusUpdate) error {
	if s.sendStatus != nil {
		return s.sendStatus(ctx, u)
	}
	return pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, u)
}

func (s *Streamer[S]) connected(up bool) {
	if s.opts.OnConnected != nil {
		s.opts.OnConnected(up)
	}
}

// Close reports the final acknowledged position and closes the connection.
func (s *Streamer[S]) Close(ctx context.Context) error {
	if s.conn == nil || s.conn.IsClosed() {
		return nil
	}
	err := s.report(ctx, false)
	s.closeConn()
	return err
}

// Reported is the last flush position sent to Postgres.
func (s *Streamer[S]) Reported() wal.LSN { return s.pos.reported }

func (s *Streamer[S]) closeConn() {
	if s.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.conn.Close(ctx)
		cancel()
		s.conn = nil
	}
}

// classify marks errors that retrying cannot fix as fatal.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if isPublicationMissing(pgErr) {
			return fmt.Errorf("%w: %w: %w", ErrSlotLost, ErrPublicationMissing, err)
		}
		if isSlotLoss(pgErr) {
			return fmt.Errorf("%w: %w", ErrSlotLost, err)
		}
		switch pgErr.Code {
		case "42704", // undefined_object: slot or publication missing
			"3D000",          // database does not exist
			"28000", "28P01", // authentication
			"42501", // insufficient privilege
			"55000": // object_not_in_prerequisite_state: e.g. slot invalidated, wal_level
			return fmt.Errorf("%w: %w", ErrFatal, err)
		}
	}
	return err
}

// isSlotLoss recognises a dropped slot (a promoted standby that never had
// it, an operator's drop) and one invalidated by max_slot_wal_keep_size.
func isSlotLoss(e *pgconn.PgError) bool {
	switch e.Code {
	case "42704":
		return strings.Contains(e.Message, "replication slot")
	case "55000":
		return strings.Contains(e.Detail, "invalidated") || strings.Contains(e.Message, "can no longer get changes") ||
			strings.Contains(e.Message, "cannot read from logical replication slot")
	}
	return false
}

// isSlotInUse: 'replication slot "x" is active for PID n'. Expected while an
// old walsender lingers or another instance holds the slot.
func isSlotInUse(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}

// startPosition is where streaming from requested really starts: Postgres
// sends nothing before the slot's confirmed_flush_lsn, so the later of the
// two, and what it came from.
func startPosition(ctx context.Context, conn *pgconn.PgConn, slot string, requested wal.LSN) (wal.LSN, string) {
	// A replication connection runs simple-protocol SQL; slot names are
	// identifiers (lower-case letters, digits, underscores).
	res, err := conn.Exec(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '"+strings.ReplaceAll(slot, "'", "''")+"'").ReadAll()
	var confirmed wal.LSN
	if err == nil && (len(res) != 1 || len(res[0].Rows) != 1 || res[0].Rows[0][0] == nil) {
		err = fmt.Errorf("slot %s has no confirmed position", slot)
	}
	if err == nil {
		confirmed, err = wal.ParseLSN(string(res[0].Rows[0][0]))
	}
	switch {
	case err != nil:
		return requested, "requested position (the slot's confirmed position is unknown: " + err.Error() + ")"
	case requested == 0:
		return confirmed, "the slot's confirmed_flush_lsn (the checkpoint is empty)"
	case confirmed > requested:
		return confirmed, "the slot's confirmed_flush_lsn (ahead of the checkpoint)"
	}
	return requested, "the checkpoint"
}

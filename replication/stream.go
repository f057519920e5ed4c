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

// Acknowledger reports how far the consumer of the stream has durably
// applied what it was given. Only acknowledged positions are ever reported to
// Postgres as flushed, so the slot never releases WAL whose invalidations
// have not reached Redis.
type Acknowledger interface {
	// Acknowledged returns the end LSN of the last transaction applied and
	// saved, and how many delivered transactions have been applied in total.
	Acknowledged() (lsn wal.LSN, applied uint64)
}

// Admitter holds transactions back until the consumer has room for them.
type Admitter interface {
	// TryAdmit takes room for tx if there is some now.
	TryAdmit(tx *Transaction) bool
	// Admit waits for room; an error means ctx ended first.
	Admit(ctx context.Context, tx *Transaction) error
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
	// OnRelation is called in the streaming goroutine for every Relation
	// message, so its schema can be checked against the registry.
	OnRelation func(*wal.Relation)
	// NewSink gives each transaction the Sink its row changes go to (see
	// Decoder.NewSink).
	NewSink func() Sink
	// Admitter, when set, bounds what is queued for the consumer in bytes
	// and not only in transactions.
	Admitter Admitter
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
// transactions in commit order. It reconnects on connection failures and
// resumes from the acknowledged position.
type Streamer struct {
	opts Options
	log  *zap.Logger
	dec  *Decoder
	conn *pgconn.PgConn

	delivered     uint64  // transactions handed to out, in total
	lastDelivered wal.LSN // end LSN of the last transaction handed to out
	received      wal.LSN // highest WAL position received
	serverWALEnd  wal.LSN // highest WAL end the server reported
	idleWALEnd    wal.LSN // server WAL end seen in a keepalive while between transactions
	reported      wal.LSN // flush position last sent; 0 before the first
	savedIdle     wal.LSN // highest position SaveIdle recorded
	idleSaveFails bool    // SaveIdle failed last time: warned already
	lastReport    time.Time
	lastServerMsg time.Time
}

// NewStreamer returns a Streamer that will skip every transaction ending at
// or before checkpoint: those were already applied.
func NewStreamer(opts Options, checkpoint wal.LSN) *Streamer {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.ServerTimeout <= 0 {
		opts.ServerTimeout = 3 * opts.StatusInterval
	}
	dec := NewDecoder()
	dec.NewSink = opts.NewSink
	return &Streamer{opts: opts, log: opts.Logger, dec: dec, lastDelivered: checkpoint}
}

// ErrFatal marks errors that reconnecting cannot fix.
var ErrFatal = errors.New("fatal replication error")

// ErrSlotLost means the slot is gone or invalidated: changes were or may
// have been missed, and only a resync can restore correctness.
var ErrSlotLost = errors.New("replication slot lost")

// Stream delivers committed transactions to out until ctx is done or a fatal
// error occurs. The connection stays open afterwards so Close can report the
// final position.
func (s *Streamer) Stream(ctx context.Context, out chan<- *Transaction, ack Acknowledger) error {
	backoff := retry.Backoff{Initial: time.Second, Max: 10 * time.Second, Jitter: retry.Equal}
	for {
		err := s.session(ctx, out, ack)
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
func (s *Streamer) session(ctx context.Context, out chan<- *Transaction, ack Acknowledger) error {
	conn, err := Connect(ctx, s.opts.URL)
	if err != nil {
		return classify(err)
	}
	s.conn = conn
	s.dec.Reset()
	// Start from what is durably applied: anything after it that is still
	// queued for the applier is skipped on arrival by lastDelivered.
	start, _ := ack.Acknowledged()
	if s.opts.BeforeStart != nil {
		if err := s.opts.BeforeStart(ctx); err != nil {
			return err
		}
	}
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
	s.log.Info("streaming", zap.String("slot", s.opts.Slot), zap.String("publication", s.opts.Publication), zap.Stringer("start_lsn", start))
	for {
		if err := s.maybeReport(ctx, ack, false); err != nil {
			return err
		}
		msg, err := s.receive(ctx, ack)
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
		if err := s.handle(ctx, msg, out, ack); err != nil {
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
func (s *Streamer) receive(ctx context.Context, ack Acknowledger) (pgproto3.BackendMessage, error) {
	wait := time.Until(s.lastReport.Add(s.opts.StatusInterval))
	if _, applied := ack.Acknowledged(); s.flushPosition(ack) > s.reported || applied < s.delivered {
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

func (s *Streamer) handle(ctx context.Context, msg pgproto3.BackendMessage, out chan<- *Transaction, ack Acknowledger) error {
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
			walEnd := wal.LSN(ka.ServerWALEnd)
			s.serverWALEnd = max(s.serverWALEnd, walEnd)
			if !s.dec.InTransaction() && walEnd > s.idleWALEnd {
				s.idleWALEnd = walEnd
			}
			return s.maybeReport(ctx, ack, ka.ReplyRequested)
		case pglogrepl.XLogDataByteID:
			// WALData aliases pgconn's receive buffer; it is decoded here, in
			// this goroutine, and the decoder copies what it keeps.
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return fmt.Errorf("parse XLogData: %w", err)
			}
			s.serverWALEnd = max(s.serverWALEnd, wal.LSN(xld.ServerWALEnd))
			if end := wal.LSN(xld.WALStart) + wal.LSN(len(xld.WALData)); end > s.received {
				s.received = end
			}
			tx, rel, err := s.dec.Decode(xld.WALData)
			if err != nil {
				return fmt.Errorf("%w: decode at %s: %v", ErrFatal, xld.WALStart, err)
			}
			if rel != nil && s.opts.OnRelation != nil {
				s.opts.OnRelation(rel)
			}
			if tx != nil {
				return s.deliver(ctx, tx, out, ack)
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

// deliver hands tx to the applier, skipping transactions already applied
// (the server resends from the slot's confirmed position after a reconnect).
// While the applier is busy it keeps the walsender informed, so a slow
// Redis does not make Postgres drop the connection.
func (s *Streamer) deliver(ctx context.Context, tx *Transaction, out chan<- *Transaction, ack Acknowledger) error {
	if tx.EndLSN <= s.lastDelivered {
		return nil
	}
	if s.opts.Admitter != nil && !s.opts.Admitter.TryAdmit(tx) {
		if err := s.admit(ctx, tx, ack); err != nil {
			return err
		}
	}
	for {
		timer := time.NewTimer(time.Until(s.lastReport.Add(s.opts.StatusInterval)))
		select {
		case out <- tx:
			timer.Stop()
			s.delivered++
			s.lastDelivered = tx.EndLSN
			return nil
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
			if err := s.report(ctx, ack, false); err != nil {
				return err
			}
		}
	}
}

// admit waits for room for tx, reporting to the walsender while it waits.
func (s *Streamer) admit(ctx context.Context, tx *Transaction, ack Acknowledger) error {
	for {
		actx, cancel := context.WithDeadline(ctx, s.lastReport.Add(s.opts.StatusInterval))
		err := s.opts.Admitter.Admit(actx, tx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if err := s.report(ctx, ack, false); err != nil {
			return err
		}
	}
}

// flushPosition is the LSN that is safe to confirm: the acknowledged one, or
// the server's WAL end when everything delivered is acknowledged and no
// transaction is half received (lets the slot advance past WAL that only
// touched unpublished tables). It is never past what this server has
// streamed: an acknowledged position can come from a checkpoint, and one
// from elsewhere would make the slot skip every change up to it.
func (s *Streamer) flushPosition(ack Acknowledger) wal.LSN {
	lsn, applied := ack.Acknowledged()
	if applied == s.delivered && !s.dec.InTransaction() && s.idleWALEnd > lsn {
		lsn = s.idleWALEnd
	}
	return min(lsn, max(s.received, s.idleWALEnd))
}

func (s *Streamer) maybeReport(ctx context.Context, ack Acknowledger, replyRequested bool) error {
	due := time.Since(s.lastReport) >= s.opts.StatusInterval
	// New acknowledgements are reported at most every 100ms: a status
	// update per small transaction costs the walsender as much as decoding.
	fresh := s.flushPosition(ack) > s.reported && time.Since(s.lastReport) >= 100*time.Millisecond
	if replyRequested || due || fresh {
		return s.report(ctx, ack, due)
	}
	return nil
}

// report sends a standby status update. requestReply asks the server for a
// keepalive, which is how a silent half-open connection gets noticed.
func (s *Streamer) report(ctx context.Context, ack Acknowledger, requestReply bool) error {
	flush := s.flushPosition(ack)
	if acked, _ := ack.Acknowledged(); flush > acked && flush > s.savedIdle && s.opts.SaveIdle != nil {
		if err := s.opts.SaveIdle(flush); err != nil {
			// Confirming it unsaved would leave the slot ahead of the
			// checkpoint, which the next start takes for a re-created slot.
			if !s.idleSaveFails {
				s.log.Warn("cannot save the idle position; confirming only the acknowledged one", zap.Stringer("lsn", flush), zap.Error(err))
			}
			s.idleSaveFails, flush = true, acked
		} else {
			s.idleSaveFails, s.savedIdle = false, flush
		}
	}
	if flush < s.reported {
		flush = s.reported
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, statusUpdate(s.received, flush, requestReply))
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	if flush > s.reported {
		s.log.Debug("confirmed", zap.Stringer("flush_lsn", flush))
	}
	s.reported, s.lastReport = flush, time.Now()
	if s.opts.OnReport != nil {
		s.opts.OnReport(max(s.serverWALEnd, flush), flush)
	}
	return nil
}

// statusUpdate reports received WAL as written and flush as confirmed.
// With nothing to confirm yet (flush 0, a first start whose first
// checkpoint is not saved) the write position is 0 too: pglogrepl sends a
// zero flush position as the write position, which would confirm to the
// slot everything received, saved or not.
func statusUpdate(received, flush wal.LSN, requestReply bool) pglogrepl.StandbyStatusUpdate {
	write := max(received, flush)
	if flush == 0 {
		write = 0
	}
	return pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(write), WALFlushPosition: pglogrepl.LSN(flush), WALApplyPosition: pglogrepl.LSN(flush), ReplyRequested: requestReply}
}

func (s *Streamer) connected(up bool) {
	if s.opts.OnConnected != nil {
		s.opts.OnConnected(up)
	}
}

// Close reports the final acknowledged position and closes the connection.
func (s *Streamer) Close(ctx context.Context, ack Acknowledger) error {
	if s.conn == nil || s.conn.IsClosed() {
		return nil
	}
	err := s.report(ctx, ack, false)
	s.closeConn()
	return err
}

// Reported is the last flush position sent to Postgres.
func (s *Streamer) Reported() wal.LSN { return s.reported }

func (s *Streamer) closeConn() {
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

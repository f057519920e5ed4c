"""The synchronous client, over ``redis.Redis`` or ``redis.RedisCluster``."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional, Set, Union

from . import _common as c
from .l1 import L1
from .options import Counters, NotFound, Observation, Options, Refreshed, Result, Stats
from .protocol import Envelope, Event, Kind, ProtocolError, decode, lease, new_token, settled_key, tombstone
from .scripts import CAS, FENCE, LEASE, lease_reply

__all__ = ["Client", "Loader"]

#: A loader reads a key's value from the database; it raises NotFound when
#: there is no such row (cached as such).
Loader = Callable[[Observation], Union[bytes, bytearray, memoryview, str]]


class _Flight:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[Result] = None
        self.error: Optional[BaseException] = None


class Client:
    """A cache-aside reader over one Redis (standalone or Cluster). Safe for
    concurrent use by threads. ``close()`` stops its background work; the
    redis client stays the caller's.

    With ``l1`` set it subscribes to walbust's events at once, in a daemon
    thread; the L1 serves nothing until the subscription is confirmed.
    """

    def __init__(self, redis: Any, options: Optional[Options] = None, **overrides: Any) -> None:
        c.check_client(redis)
        self.redis = redis
        self.options = Options.build(options, overrides)
        self._n = Counters()
        self._flights: Dict[str, _Flight] = {}
        self._flock = threading.Lock()
        self._reval: Set[str] = set()
        self._threads: Set[threading.Thread] = set()
        self._tlock = threading.Lock()
        self._closed = threading.Event()
        self.l1: Optional[L1] = None
        self._sub_thread: Optional[threading.Thread] = None
        self._pubsub: Any = None
        # wait_applied's shared state: one poller and one subscription
        # however many threads wait.
        self._wcond = threading.Condition()
        self._wknown = 0  # highest settled position read
        self._wpending: Dict[object, int] = {}
        self._wrunning = False  # the poller runs
        self._wsub: Optional[threading.Thread] = None  # the subscription
        self._wpubsub: Any = None
        self._wkicked = False
        self._werr: Optional[BaseException] = None  # the last read's error
        if self.options.l1 is not None:
            self.l1 = L1(self.options.l1.max_entries, self.options.l1.ttl)
            self._sub_thread = threading.Thread(target=self._subscribe, name="walbust-cache-l1", daemon=True)
            self._sub_thread.start()

    # --- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Stop the L1 subscription and wait for background revalidations."""
        if self._closed.is_set():
            return
        self._closed.set()
        ps = self._pubsub
        if ps is not None:
            try:
                ps.close()
            except Exception:
                pass
        with self._wcond:
            self._wcond.notify_all()
        ps = self._wpubsub
        if ps is not None:
            try:
                ps.close()
            except Exception:
                pass
        if self._sub_thread is not None:
            self._sub_thread.join(timeout=self.options.l1.ping_interval * 2 + 1 if self.options.l1 else 1)
        if self._wsub is not None:
            self._wsub.join(timeout=2)
        with self._tlock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=self.options.load_timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> Stats:
        return self._n.snapshot()

    # --- reads -------------------------------------------------------------

    def get(self, key: str, loader: Loader, *, stale_fallback: Optional[bool] = None) -> bytes:
        """key's value: from the L1, from Redis, or from ``loader``, which
        then fills Redis under the fence protocol. A cached not-found raises
        :class:`NotFound`. With ``stale_fallback`` (default
        ``Options.stale_fallback``) a failing loader is answered from the
        stale key walbust's ``stale`` action keeps, when there is one."""
        return self._get(key, key, loader, stale_fallback, None, 0)

    def get_versioned(self, key: str, loader: Loader, *, stale_fallback: Optional[bool] = None) -> bytes:
        """For ``action: bump``: read key's version (``Options.version_key``,
        0 before the first bump) and get the value cached under
        ``Options.versioned_key`` for it. The loader's observation carries the
        version (a commit LSN) as ``fence_lsn``. The L1 keeps the entry under
        ``key``, the key walbust's events name."""
        if self.l1 is not None:
            e = self.l1.get(key)
            if e is not None:
                self._n.add("l1_hits")
                return c.answer(key, Result(e.payload, e.not_found))
        mark = self.l1.mark() if self.l1 is not None else 0
        vk = c.KeyFormat(self.options.version_key)(key)
        version = c.version_of(self.redis.get(vk), vk)
        return self._get(c.versioned_key(self.options, key, version), key, loader, stale_fallback, mark, version)

    def _get(self, key: str, l1_key: str, loader: Loader, stale_fallback: Optional[bool],
             mark: Optional[int], floor_lsn: int) -> bytes:
        l1 = self.l1
        if l1 is not None and mark is None:
            e = l1.get(l1_key)
            if e is not None:
                self._n.add("l1_hits")
                return c.answer(key, Result(e.payload, e.not_found))
        if mark is None:
            mark = l1.mark() if l1 is not None else 0
        raw = self.redis.get(key)
        if raw is not None:
            content = decode(raw)
            if content.kind == Kind.VALUE:
                env = content.envelope
                assert env is not None
                self._n.add("hits")
                if env.is_stale():
                    self._n.add("stale_served")
                    self._revalidate(key, raw, env, loader)
                elif l1 is not None:
                    l1.put(mark, l1_key, env.payload, env.not_found, env.soft_expiry_ms)
                return c.answer(key, Result(env.payload, env.not_found))
        self._n.add("misses")
        try:
            r = self._shared(key, lambda: self._fill(key, loader, floor_lsn))
        except Exception as err:
            use_stale = self.options.stale_fallback if stale_fallback is None else stale_fallback
            if not use_stale or isinstance(err, NotFound):
                raise
            r = self._stale(key, err)
        if r.cache_l1 and l1 is not None:
            l1.put(mark, l1_key, r.payload, r.not_found, r.soft_expiry_ms)
        return c.answer(key, r)

    def _stale(self, key: str, err: Exception) -> Result:
        """The last good value walbust's stale action moved aside, or err."""
        try:
            raw = self.redis.get(c.stale_key(self.options, key))
        except Exception:
            raise err from None
        content = decode(raw)
        if content.kind != Kind.VALUE or content.envelope is None:
            raise err
        self._n.add("stale_fallbacks")
        return Result(content.envelope.payload, content.envelope.not_found, from_stale=True)

    def _shared(self, key: str, fn: Callable[[], Result]) -> Result:
        """One fill per key in this process; concurrent callers share it."""
        with self._flock:
            f = self._flights.get(key)
            leader = f is None
            if f is None:
                f = self._flights[key] = _Flight()
        if leader:
            try:
                f.result = fn()
            except BaseException as e:
                f.error = e
            finally:
                with self._flock:
                    del self._flights[key]
                f.done.set()
        else:
            f.done.wait()
        if f.error is not None:
            raise f.error
        assert f.result is not None
        return f.result

    def _fill(self, key: str, loader: Loader, floor_lsn: int) -> Result:
        """The miss path: observe (as a lease), load, compare-and-set."""
        o = self.options
        deadline = time.monotonic() + o.lease_wait
        backoff = c.Backoff(0.005, 0.05, 1.5)
        waited = False
        attempt = 0
        while True:
            token = new_token()
            acquired, content, pttl = lease_reply(LEASE.run(self.redis, key, token, c.ms(o.lease_ttl)))
            dec = decode(content)
            if acquired:
                mine = True
            elif dec.kind == Kind.VALUE:
                env = dec.envelope
                assert env is not None
                return Result(env.payload, env.not_found, env.soft_expiry_ms, not env.is_stale())
            elif dec.kind == Kind.LEASE and o.lease_wait >= 0 and time.monotonic() < deadline:
                if not waited:
                    waited = True
                    self._n.add("lease_waits")
                if self._closed.wait(min(backoff.next(), deadline - time.monotonic() + 0.001)):
                    raise RuntimeError(f"walbust_cache: client closed while waiting for the lease on {key!r}")
                continue
            elif dec.kind == Kind.LEASE:
                mine = False  # waited long enough: load too, fill only over that lease
            else:
                # A string the script took for a value that is not one:
                # replace it with a lease like any foreign value.
                mylease = lease(0, token)
                if not self._cas(key, content, mylease, o.lease_ttl):
                    continue
                content, pttl, mine = mylease, c.ms(o.lease_ttl), True
            r, fenced = self._load_and_fill(key, loader, content, max(dec.fence.lsn, floor_lsn), dec.fence.lsn,
                                            pttl / 1000.0, mine)
            attempt += 1
            if not fenced or attempt >= c.MAX_FILL_ATTEMPTS:
                return r

    def _load_and_fill(self, key: str, loader: Loader, expected: bytes, obs_lsn: int, lease_lsn: int,
                       lease_ttl: float, mine: bool) -> "tuple[Result, bool]":
        o = self.options
        start = time.monotonic()
        self._n.add("loads")
        not_found = False
        try:
            v = c.to_bytes(loader(Observation(fence_lsn=obs_lsn)))
        except NotFound:
            not_found, v = True, b""
        except BaseException:
            if mine:
                self._release(key, expected, lease_lsn)
            raise
        if not_found and not o.negative_caching:
            if mine:
                self._release(key, expected, lease_lsn)
            return Result(not_found=True), False
        r = Result(v, not_found)
        if time.monotonic() - start + o.fill_margin >= lease_ttl:
            # The lease may be gone and, with it, the fence it replaced.
            self._n.add("fills_skipped")
            return r, False
        env, ttl = c.make_envelope(o, v, not_found)
        if not self._cas(key, expected, env.encode(), ttl):
            self._n.add("fills_lost")
            now = self.redis.get(key)
            return r, decode(now).kind == Kind.TOMBSTONE
        self._n.add("fills")
        r.soft_expiry_ms, r.cache_l1 = env.soft_expiry_ms, True
        return r, False

    def _cas(self, key: str, expected: bytes, new: bytes, ttl: float) -> bool:
        """Set key to new if it still holds expected; ttl 0 keeps the TTL."""
        return CAS.run(self.redis, key, expected, new, c.ms(ttl) if ttl > 0 else 0) == 1

    def _release(self, key: str, held: bytes, lsn: int) -> None:
        """Turn our lease back into a tombstone after a failed load, so the
        next reader need not wait for it; the LSN and the TTL stay."""
        try:
            self._cas(key, held, tombstone(lsn, new_token()), 0)
        except Exception:
            pass

    def _revalidate(self, key: str, observed: bytes, env: Envelope, loader: Loader) -> None:
        """Reload a stale value in the background, once across processes:
        claim it (a copy whose soft expiry lies load_timeout ahead, by
        compare-and-set on what was read), load, set over the claim."""
        if self._closed.is_set():
            return
        with self._tlock:
            if key in self._reval:
                return
            self._reval.add(key)

        def run() -> None:
            try:
                o = self.options
                claimed = Envelope(c.now_ms() + int(o.load_timeout * 1000), new_token(), env.payload,
                                   env.not_found).encode()
                if not self._cas(key, observed, claimed, 0):
                    return  # another reader claimed it, or it was fenced
                self._n.add("revalidations")
                self._n.add("loads")
                not_found = False
                try:
                    v = c.to_bytes(loader(Observation(revalidation=True)))
                except NotFound:
                    not_found, v = True, b""
                except Exception:
                    return  # the claim runs out and someone tries again
                if not_found and not o.negative_caching:
                    return
                nxt, ttl = c.make_envelope(o, v, not_found)
                self._n.add("fills" if self._cas(key, claimed, nxt.encode(), ttl) else "fills_lost")
            except Exception:
                pass
            finally:
                with self._tlock:
                    self._reval.discard(key)
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"walbust-cache-revalidate-{key}", daemon=True)
        with self._tlock:
            self._threads.add(t)
        t.start()

    def get_refreshed(self, key: str) -> Optional[Refreshed]:
        """Read a key under walbust's refresh action (deps.yaml ``action:
        refresh``) and its LSN key in one round trip, ``MGET key key:lsn``;
        None when the key is absent (never cached, deleted by walbust, or
        expired). The :class:`Refreshed` says whether the value is stale: a
        later change's refresh query failed. It neither loads nor fills
        (those keys hold plain values, not envelopes): fill a miss with
        ``SET key value NX PX ttl``, which never replaces a value walbust
        wrote meanwhile. On a Redis Cluster a key without a hash tag raises
        :class:`NoHashTag` before any round trip."""
        return c.refreshed(self.redis.mget(c.refreshed_keys(self.redis, key)))

    # --- writes ------------------------------------------------------------

    def fence(self, *keys: str) -> None:
        """Write a tombstone (LSN 0) into each key, as walbust's fence action
        would: for the application's own write paths that want a key
        refreshed at once without opening the populate race."""
        token = new_token()
        for k in keys:
            FENCE.run(self.redis, k, "0", token, c.ms(self.options.fence_ttl))
        if self.l1 is not None:
            self.l1.apply(Event(keys=list(keys)))

    # --- read your writes ----------------------------------------------------

    def wait_applied(self, lsn: Union[int, str], timeout: Optional[float] = None) -> None:
        """Return once walbust has applied every change up to ``lsn`` to
        Redis: its settled position (``protocol.settled_key(slot)``) is at
        ``lsn`` or past it. Then a read through the cache sees every write
        committed at or before ``lsn``. Take ``lsn`` (an int, or pg_lsn's
        ``X/Y`` text) after COMMIT, from the same session::

            SELECT pg_current_wal_insert_lsn()

        With ``replicas:`` configured in walbust, the settled position moves
        only after the keys were fenced again once every replica replayed the
        change, so a fill from a replica cannot cache an older row either.

        Raises TimeoutError after ``timeout`` seconds (None: no bound),
        chained to the last Redis error if reading the position failed, and
        :class:`BadPosition` instead when the key holds no LSN. Waiters share
        one subscription to walbust's events (``WaitOptions.channel``) and
        one poll of the key (1ms doubling to ``WaitOptions.max_poll``), so a
        lost event, a write no rule maps or no events channel still end the
        wait. The L1, if any, lags Redis by the events' delivery."""
        w = self.options.wait
        want = c.past_page_header(c.lsn_arg(lsn), w.wal_block_size, w.wal_segment_size)
        deadline = None if timeout is None else time.monotonic() + timeout
        me = object()
        with self._wcond:
            if want <= self._wknown:
                return
            if self._closed.is_set():
                raise RuntimeError("walbust_cache: client closed")
            self._wpending[me] = want
            try:
                if not self._wrunning:
                    self._wrunning = True
                    threading.Thread(target=self._poll_position, name="walbust-cache-wait-poll", daemon=True).start()
                if self._wsub is None and self.options.wait_channel != "-":
                    self._wsub = threading.Thread(target=self._watch_events, name="walbust-cache-wait-events",
                                                  daemon=True)
                    self._wsub.start()
                self._kick()
                while want > self._wknown:
                    if self._closed.is_set():
                        raise RuntimeError("walbust_cache: client closed")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        c.raise_wait_timeout(want, self._werr)
                    self._wcond.wait(left)
            finally:
                self._wpending.pop(me, None)

    def applied(self) -> Optional[int]:
        """walbust's settled position now (None when walbust never wrote
        it); :class:`BadPosition` when the key holds no LSN."""
        return c.parse_settled(self.redis.get(settled_key(self.options.wait.slot)))

    def _kick(self) -> None:
        """Wake the poller (with _wcond held)."""
        self._wkicked = True
        self._wcond.notify_all()

    def _poll_position(self) -> None:
        """Read the position while anyone waits, at once when woken (a new
        waiter, an event), else with backoff; end when nobody waits."""
        interval = 0.001
        while True:
            lsn: Optional[int] = None
            err: Optional[BaseException] = None
            try:
                lsn = self.applied()
            except Exception as e:
                err = e
            with self._wcond:
                self._werr = err
                if lsn is not None and lsn > self._wknown:
                    self._wknown = lsn
                    interval = 0.001
                self._wcond.notify_all()
                if not any(want > self._wknown for want in self._wpending.values()) or self._closed.is_set():
                    self._wrunning = False
                    return
                if not self._wkicked:
                    end = time.monotonic() + interval
                    while not self._wkicked and not self._closed.is_set():
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._wcond.wait(left)
                if self._wkicked:
                    self._wkicked = False
                else:
                    interval = min(2 * interval, self.options.wait.max_poll)

    def _watch_events(self) -> None:
        """Wake the poller on every event past the known position, until
        close (resubscribing after a failure)."""
        backoff = c.Backoff(0.1, 5.0)
        channel = self.options.wait_channel
        while not self._closed.is_set():
            ps = None
            try:
                ps = self._wpubsub = self._pubsub_source().pubsub()
                ps.subscribe(channel)
                while not self._closed.is_set():
                    msg = ps.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    backoff.reset()
                    kind = msg.get("type")
                    if isinstance(kind, bytes):
                        kind = kind.decode()
                    if kind != "message":
                        continue
                    ev = c.event_lsn(msg.get("data"))
                    with self._wcond:
                        if ev is None or ev > self._wknown:
                            self._kick()
            except Exception:
                pass
            finally:
                self._wpubsub = None
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass
            self._closed.wait(backoff.next())

    # --- the L1's subscription ----------------------------------------------

    def _pubsub_source(self) -> Any:
        l1o = self.options.l1
        return l1o.pubsub_client if l1o is not None and l1o.pubsub_client is not None else self.redis

    def _new_pubsub(self) -> Any:
        return self._pubsub_source().pubsub()

    def _subscribe(self) -> None:
        """Keep the L1's subscription up until close. The L1 serves only
        between a confirmed SUBSCRIBE and the first sign of trouble; every
        (re)subscription starts it empty."""
        assert self.l1 is not None
        backoff = c.Backoff(0.1, 5.0)
        while not self._closed.is_set():
            ps = None
            confirmed = False
            try:
                ps = self._pubsub = self._new_pubsub()
                confirmed = self._listen(ps)
            except Exception:
                pass
            finally:
                self._pubsub = None
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass
                self.l1.reset(False)
                self._n.add("l1_resets")
            if confirmed:
                backoff.reset()
            self._closed.wait(backoff.next())

    def _listen(self, ps: Any) -> bool:
        """Read events until the subscription fails; report whether it was
        ever confirmed."""
        l1o = self.options.l1
        assert l1o is not None and self.l1 is not None
        channel = l1o.channel.encode()
        confirmed = pinged = False
        ps.subscribe(l1o.channel)
        while not self._closed.is_set():
            try:
                msg = ps.get_message(timeout=l1o.ping_interval)
            except Exception:
                return confirmed
            if msg is None:
                if pinged or self._closed.is_set():
                    return confirmed  # silent for an interval after a ping: dead
                try:
                    ps.ping()
                except Exception:
                    return confirmed
                pinged = True
                continue
            pinged = False
            kind = msg.get("type")
            if isinstance(kind, bytes):
                kind = kind.decode()
            if kind in ("subscribe", "unsubscribe"):
                ch = msg.get("channel")
                if isinstance(ch, str):
                    ch = ch.encode()
                if ch != channel:
                    continue
                if kind != "subscribe":
                    return confirmed
                confirmed = True
                self.l1.reset(True)
                self._n.add("l1_resets")
            elif kind == "message":
                try:
                    ev = Event.unmarshal(msg.get("data") or b"")
                except ProtocolError:
                    ev = Event(flush=True)  # unreadable: assume the worst
                self.l1.apply(ev)
        return confirmed

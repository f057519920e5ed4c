"""The asyncio client, over ``redis.asyncio.Redis`` or
``redis.asyncio.RedisCluster``."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Union

from . import _common as c
from .l1 import L1
from .options import Counters, NotFound, Observation, Options, Refreshed, Result, Stats
from .protocol import Envelope, Event, Kind, ProtocolError, decode, lease, new_token, settled_key, tombstone
from .scripts import CAS, FENCE, LEASE, lease_reply

__all__ = ["AsyncClient", "AsyncLoader"]

_Value = Union[bytes, bytearray, memoryview, str]
#: A loader: a coroutine function (or a plain function) of the Observation
#: returning the value; it raises NotFound when there is no such row.
AsyncLoader = Callable[[Observation], Union[Awaitable[_Value], _Value]]


class AsyncClient:
    """A cache-aside reader over one Redis (standalone or Cluster) for
    asyncio. Concurrent ``get``\\ s of one key in the process share one load
    (an asyncio task the callers await, each cancellable on its own: the
    load goes on for the others). Call :meth:`start` (or use ``async with``)
    to start the L1's subscription; ``aclose()`` stops background work.
    """

    def __init__(self, redis: Any, options: Optional[Options] = None, **overrides: Any) -> None:
        c.check_client(redis)
        self.redis = redis
        self.options = Options.build(options, overrides)
        self._n = Counters()
        self._flights: Dict[str, "asyncio.Future[Result]"] = {}
        self._reval: Dict[str, "asyncio.Task[None]"] = {}
        self._closed = False
        self.l1: Optional[L1] = None
        self._sub_task: Optional["asyncio.Task[None]"] = None
        self._closing: Optional[asyncio.Event] = None
        if self.options.l1 is not None:
            self.l1 = L1(self.options.l1.max_entries, self.options.l1.ttl)
        # wait_applied's shared state: one poller task and one subscription
        # task however many wait.
        self._wknown = 0  # highest settled position read
        self._wpending: Dict["asyncio.Future[None]", int] = {}
        self._wpoll: Optional["asyncio.Task[None]"] = None
        self._wsub: Optional["asyncio.Task[None]"] = None
        self._wwake: Optional[asyncio.Event] = None
        self._werr: Optional[BaseException] = None  # the last read's error

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> "AsyncClient":
        """Start the L1 subscription (a no-op without L1 or when started);
        called by the first get too."""
        self._ensure_started()
        return self

    def _ensure_started(self) -> None:
        if self.l1 is not None and self._sub_task is None and not self._closed:
            self._closing = asyncio.Event()
            self._sub_task = asyncio.ensure_future(self._subscribe())

    async def aclose(self) -> None:
        """Stop the L1 subscription, cancel background revalidations and
        wait for them."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        for fut in list(self._wpending):
            if not fut.done():
                fut.set_exception(RuntimeError("walbust_cache: client closed"))
        tasks = [t for t in [self._sub_task, self._wpoll, self._wsub, *self._reval.values()] if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> "AsyncClient":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def stats(self) -> Stats:
        return self._n.snapshot()

    # --- reads -------------------------------------------------------------

    async def get(self, key: str, loader: AsyncLoader, *, stale_fallback: Optional[bool] = None) -> bytes:
        """key's value: from the L1, from Redis, or from ``loader``, which
        then fills Redis under the fence protocol. A cached not-found raises
        :class:`NotFound`. With ``stale_fallback`` (default
        ``Options.stale_fallback``) a failing loader is answered from the
        stale key walbust's ``stale`` action keeps, when there is one."""
        return await self._get(key, key, loader, stale_fallback, None, 0)

    async def get_versioned(self, key: str, loader: AsyncLoader, *, stale_fallback: Optional[bool] = None) -> bytes:
        """For ``action: bump``: see :meth:`walbust_cache.Client.get_versioned`."""
        self._ensure_started()
        if self.l1 is not None:
            e = self.l1.get(key)
            if e is not None:
                self._n.add("l1_hits")
                return c.answer(key, Result(e.payload, e.not_found))
        mark = self.l1.mark() if self.l1 is not None else 0
        vk = c.KeyFormat(self.options.version_key)(key)
        version = c.version_of(await self.redis.get(vk), vk)
        return await self._get(c.versioned_key(self.options, key, version), key, loader, stale_fallback, mark, version)

    async def _get(self, key: str, l1_key: str, loader: AsyncLoader, stale_fallback: Optional[bool],
                   mark: Optional[int], floor_lsn: int) -> bytes:
        self._ensure_started()
        l1 = self.l1
        if l1 is not None and mark is None:
            e = l1.get(l1_key)
            if e is not None:
                self._n.add("l1_hits")
                return c.answer(key, Result(e.payload, e.not_found))
        if mark is None:
            mark = l1.mark() if l1 is not None else 0
        raw = await self.redis.get(key)
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
        fut = self._flights.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._bounded_fill(key, loader, floor_lsn))
            self._flights[key] = fut
            fut.add_done_callback(lambda f, k=key: self._flights.pop(k, None) if self._flights.get(k) is f else None)
        try:
            # shield: a caller's cancellation leaves the shared load running.
            r = await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            use_stale = self.options.stale_fallback if stale_fallback is None else stale_fallback
            if not use_stale or isinstance(err, NotFound):
                raise
            r = await self._stale(key, err)
        if r.cache_l1 and l1 is not None:
            l1.put(mark, l1_key, r.payload, r.not_found, r.soft_expiry_ms)
        return c.answer(key, r)

    async def _stale(self, key: str, err: Exception) -> Result:
        try:
            raw = await self.redis.get(c.stale_key(self.options, key))
        except Exception:
            raise err from None
        content = decode(raw)
        if content.kind != Kind.VALUE or content.envelope is None:
            raise err
        self._n.add("stale_fallbacks")
        return Result(content.envelope.payload, content.envelope.not_found, from_stale=True)

    async def _bounded_fill(self, key: str, loader: AsyncLoader, floor_lsn: int) -> Result:
        o = self.options
        return await asyncio.wait_for(self._fill(key, loader, floor_lsn), o.load_timeout + max(o.lease_wait, 0))

    async def _load(self, loader: AsyncLoader, obs: Observation) -> bytes:
        v = loader(obs)
        if inspect.isawaitable(v):
            v = await asyncio.wait_for(v, self.options.load_timeout)
        return c.to_bytes(v)

    async def _fill(self, key: str, loader: AsyncLoader, floor_lsn: int) -> Result:
        o = self.options
        deadline = time.monotonic() + o.lease_wait
        backoff = c.Backoff(0.005, 0.05, 1.5)
        waited = False
        attempt = 0
        while True:
            token = new_token()
            acquired, content, pttl = lease_reply(await LEASE.run_async(self.redis, key, token, c.ms(o.lease_ttl)))
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
                await asyncio.sleep(min(backoff.next(), deadline - time.monotonic() + 0.001))
                continue
            elif dec.kind == Kind.LEASE:
                mine = False
            else:
                mylease = lease(0, token)
                if not await self._cas(key, content, mylease, o.lease_ttl):
                    continue
                content, pttl, mine = mylease, c.ms(o.lease_ttl), True
            r, fenced = await self._load_and_fill(key, loader, content, max(dec.fence.lsn, floor_lsn),
                                                  dec.fence.lsn, pttl / 1000.0, mine)
            attempt += 1
            if not fenced or attempt >= c.MAX_FILL_ATTEMPTS:
                return r

    async def _load_and_fill(self, key: str, loader: AsyncLoader, expected: bytes, obs_lsn: int, lease_lsn: int,
                             lease_ttl: float, mine: bool) -> "tuple[Result, bool]":
        o = self.options
        start = time.monotonic()
        self._n.add("loads")
        not_found = False
        try:
            v = await self._load(loader, Observation(fence_lsn=obs_lsn))
        except NotFound:
            not_found, v = True, b""
        except BaseException:
            if mine:
                await self._release(key, expected, lease_lsn)
            raise
        if not_found and not o.negative_caching:
            if mine:
                await self._release(key, expected, lease_lsn)
            return Result(not_found=True), False
        r = Result(v, not_found)
        if time.monotonic() - start + o.fill_margin >= lease_ttl:
            self._n.add("fills_skipped")
            return r, False
        env, ttl = c.make_envelope(o, v, not_found)
        if not await self._cas(key, expected, env.encode(), ttl):
            self._n.add("fills_lost")
            now = await self.redis.get(key)
            return r, decode(now).kind == Kind.TOMBSTONE
        self._n.add("fills")
        r.soft_expiry_ms, r.cache_l1 = env.soft_expiry_ms, True
        return r, False

    async def _cas(self, key: str, expected: bytes, new: bytes, ttl: float) -> bool:
        return await CAS.run_async(self.redis, key, expected, new, c.ms(ttl) if ttl > 0 else 0) == 1

    async def _release(self, key: str, held: bytes, lsn: int) -> None:
        async def give_back() -> None:
            try:
                await asyncio.wait_for(self._cas(key, held, tombstone(lsn, new_token()), 0), 2.0)
            except Exception:
                pass

        # Shielded: a cancelled load (load_timeout) still gives its lease back.
        await asyncio.shield(asyncio.ensure_future(give_back()))

    def _revalidate(self, key: str, observed: bytes, env: Envelope, loader: AsyncLoader) -> None:
        if self._closed or key in self._reval:
            return

        async def run() -> None:
            try:
                o = self.options
                claimed = Envelope(c.now_ms() + int(o.load_timeout * 1000), new_token(), env.payload,
                                   env.not_found).encode()
                if not await self._cas(key, observed, claimed, 0):
                    return
                self._n.add("revalidations")
                self._n.add("loads")
                not_found = False
                try:
                    v = await self._load(loader, Observation(revalidation=True))
                except NotFound:
                    not_found, v = True, b""
                except Exception:
                    return
                if not_found and not o.negative_caching:
                    return
                nxt, ttl = c.make_envelope(o, v, not_found)
                self._n.add("fills" if await self._cas(key, claimed, nxt.encode(), ttl) else "fills_lost")
            except Exception:
                pass
            finally:
                self._reval.pop(key, None)

        self._reval[key] = asyncio.ensure_future(run())

    async def get_refreshed(self, key: str) -> Optional[Refreshed]:
        """Read a key under walbust's refresh action (deps.yaml ``action:
        refresh``) and its LSN key in one round trip, ``MGET key key:lsn``;
        None when the key is absent (never cached, deleted by walbust, or
        expired). The :class:`Refreshed` says whether the value is stale: a
        later change's refresh query failed. It neither loads nor fills
        (those keys hold plain values, not envelopes): fill a miss with
        ``SET key value NX PX ttl``, which never replaces a value walbust
        wrote meanwhile. On a Redis Cluster a key without a hash tag raises
        :class:`NoHashTag` before any round trip."""
        return c.refreshed(await self.redis.mget(c.refreshed_keys(self.redis, key)))

    # --- writes ------------------------------------------------------------

    async def fence(self, *keys: str) -> None:
        """Write a tombstone (LSN 0) into each key, as walbust's fence would."""
        token = new_token()
        for k in keys:
            await FENCE.run_async(self.redis, k, "0", token, c.ms(self.options.fence_ttl))
        if self.l1 is not None:
            self.l1.apply(Event(keys=list(keys)))

    # --- read your writes ----------------------------------------------------

    async def wait_applied(self, lsn: Union[int, str], timeout: Optional[float] = None) -> None:
        """Return once walbust has applied every change up to ``lsn`` (an
        int, or pg_lsn's ``X/Y`` text) to Redis: see
        :meth:`walbust_cache.Client.wait_applied`. Raises TimeoutError after
        ``timeout`` seconds (None: no bound; cancelling the call works too),
        :class:`BadPosition` instead when the key holds no LSN. Waiters
        share one subscription task and one poll task."""
        w = self.options.wait
        want = c.past_page_header(c.lsn_arg(lsn), w.wal_block_size, w.wal_segment_size)
        if want <= self._wknown:
            return
        if self._closed:
            raise RuntimeError("walbust_cache: client closed")
        fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._wpending[fut] = want
        if self._wwake is None:
            self._wwake = asyncio.Event()
        if self._wpoll is None:
            self._wpoll = asyncio.ensure_future(self._poll_position())
        if self._wsub is None and self.options.wait_channel != "-":
            self._wsub = asyncio.ensure_future(self._watch_events())
        self._wwake.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return  # released meanwhile
            c.raise_wait_timeout(want, self._werr)
        finally:
            self._wpending.pop(fut, None)
            if not fut.done():
                fut.cancel()

    async def applied(self) -> Optional[int]:
        """walbust's settled position now (None when walbust never wrote
        it); :class:`BadPosition` when the key holds no LSN."""
        return c.parse_settled(await self.redis.get(settled_key(self.options.wait.slot)))

    def _kick(self) -> None:
        if self._wwake is not None:
            self._wwake.set()

    async def _poll_position(self) -> None:
        """Read the position while anyone waits, at once when woken (a new
        waiter, an event), else with backoff; end when nobody waits."""
        assert self._wwake is not None
        interval = 0.001
        try:
            while True:
                lsn: Optional[int] = None
                err: Optional[BaseException] = None
                try:
                    lsn = await asyncio.wait_for(self.applied(), 1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    err = e
                self._werr = err
                if lsn is not None and lsn > self._wknown:
                    self._wknown = lsn
                    interval = 0.001
                for fut, want in list(self._wpending.items()):
                    if want <= self._wknown:
                        if not fut.done():
                            fut.set_result(None)
                        del self._wpending[fut]
                if not self._wpending or self._closed:
                    return
                try:
                    await asyncio.wait_for(self._wwake.wait(), interval)
                except asyncio.TimeoutError:
                    interval = min(2 * interval, self.options.wait.max_poll)
                self._wwake.clear()
        finally:
            self._wpoll = None

    async def _watch_events(self) -> None:
        """Wake the poller on every event past the known position, until
        aclose (resubscribing after a failure)."""
        backoff = c.Backoff(0.1, 5.0)
        channel = self.options.wait_channel
        while not self._closed:
            ps = owner = None
            try:
                ps, owner = await self._new_pubsub()
                await ps.subscribe(channel)
                while not self._closed:
                    msg = await ps.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    backoff.reset()
                    kind = msg.get("type")
                    if isinstance(kind, bytes):
                        kind = kind.decode()
                    if kind != "message":
                        continue
                    ev = c.event_lsn(msg.get("data"))
                    if ev is None or ev > self._wknown:
                        self._kick()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            finally:
                await self._close_quietly(ps, owner)
            await asyncio.sleep(backoff.next())

    # --- the L1's subscription ----------------------------------------------

    async def _new_pubsub(self) -> "tuple[Any, Any]":
        """A PubSub, and a client to close with it (None: not ours)."""
        l1o = self.options.l1
        src = l1o.pubsub_client if l1o is not None and l1o.pubsub_client is not None else self.redis
        if hasattr(src, "pubsub"):
            return src.pubsub(), None
        # redis.asyncio.RedisCluster (4.x) has no pub/sub: PUBLISH reaches
        # every node of a cluster, so subscribe on one of them.
        from redis.asyncio import Redis
        from redis.asyncio.connection import Connection, ConnectionPool

        nodes = src.get_nodes()
        if not nodes:
            await src.initialize()
            nodes = src.get_nodes()
        node = random.choice(nodes)
        # The node's own connection settings (host, port, auth, TLS...).
        kwargs = dict(node.connection_kwargs)
        kwargs.pop("response_callbacks", None)
        kwargs.setdefault("host", node.host)
        kwargs.setdefault("port", node.port)
        cls = getattr(node, "connection_class", Connection)
        client = Redis(connection_pool=ConnectionPool(connection_class=cls, **kwargs))
        return client.pubsub(), client

    async def _subscribe(self) -> None:
        assert self.l1 is not None and self._closing is not None
        backoff = c.Backoff(0.1, 5.0)
        while not self._closed:
            ps = owner = None
            confirmed = False
            try:
                ps, owner = await self._new_pubsub()
                confirmed = await self._listen(ps)
            except asyncio.CancelledError:
                self.l1.reset(False)
                await self._close_quietly(ps, owner)
                raise
            except Exception:
                pass
            self.l1.reset(False)
            self._n.add("l1_resets")
            await self._close_quietly(ps, owner)
            if confirmed:
                backoff.reset()
            try:
                await asyncio.wait_for(self._closing.wait(), backoff.next())
            except asyncio.TimeoutError:
                pass

    @staticmethod
    async def _close_quietly(ps: Any, owner: Any) -> None:
        for closer in (getattr(ps, "close", None) or getattr(ps, "reset", None),
                       getattr(owner, "close", None) if owner is not None else None):
            if closer is None:
                continue
            try:
                r = closer()
                if inspect.isawaitable(r):
                    await r
            except Exception:
                pass

    async def _listen(self, ps: Any) -> bool:
        l1o = self.options.l1
        assert l1o is not None and self.l1 is not None
        channel = l1o.channel.encode()
        confirmed = pinged = False
        await ps.subscribe(l1o.channel)
        while not self._closed:
            try:
                msg = await ps.get_message(timeout=l1o.ping_interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                return confirmed
            if msg is None:
                if pinged:
                    return confirmed
                try:
                    await ps.ping()
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
                    ev = Event(flush=True)
                self.l1.apply(ev)
        return confirmed

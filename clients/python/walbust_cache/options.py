"""Options, errors and the small types the sync and async clients share."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional

from .protocol import DEFAULT_EVENTS_CHANNEL, ProtocolError

__all__ = ["Options", "L1Options", "WaitOptions", "BadPosition", "NotFound", "NoHashTag", "Observation", "Refreshed",
           "Stats", "KeyFormat", "jitter"]


class NotFound(Exception):
    """Raised by a loader when there is no such row; ``get`` caches that
    (for ``Options.negative_ttl``) and raises it again for the cached entry."""

    def __init__(self, key: str = "") -> None:
        super().__init__(f"{key!r}: not found" if key else "not found")
        self.key = key


class BadPosition(ProtocolError):
    """walbust's settled position key holds something that is not an LSN
    (raised by ``wait_applied`` instead of TimeoutError when the wait times
    out on such a key, and by ``applied``)."""


class NoHashTag(ValueError):
    """``get_refreshed`` on a Redis Cluster of a key without a hash tag: the
    key and its LSN key are in different slots, so no single command reads
    both, and walbust does not refresh such a key at all (it removes it
    instead; ``walbust validate`` warns about the rule). Give the deps.yaml
    key a hash tag, e.g. ``"{{product:{id}}}"``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"walbust_cache: {key!r} has no hash tag, so it and its LSN key are in different cluster slots "
                         "(give the deps.yaml key one, e.g. \"{{product:{id}}}\")")
        self.key = key


@dataclass(frozen=True)
class Refreshed:
    """A key under walbust's refresh action (deps.yaml ``action: refresh``)
    as ``get_refreshed`` read it.

    ``value`` is exactly what the key holds (what walbust wrote, its
    negative marker, or a reader's ``SET … NX`` fill); ``lsn`` is its commit
    LSN (0 for a reader's fill). ``stale``: a later change's refresh query
    failed, so the value is older than that change (``stale_lsn``, the
    newest such change); treat it as a miss, or serve it and refresh in the
    background."""

    value: bytes
    lsn: int = 0
    stale: bool = False
    stale_lsn: int = 0


@dataclass(frozen=True)
class Observation:
    """What the reader saw in Redis before deciding to load."""

    #: Commit LSN of the newest fence the key carried (0 if none was seen:
    #: the key was simply absent). A loader reading a replica can check
    #: :meth:`replica_caught_up` and read the primary instead.
    fence_lsn: int = 0
    #: A background stale-while-revalidate reload.
    revalidation: bool = False

    def replica_caught_up(self, replay_lsn: int) -> bool:
        """Whether a replica whose ``pg_last_wal_replay_lsn()`` is
        ``replay_lsn`` has applied the commit the fence stands for (the LSN
        is the start of the commit record, so replay must be past it)."""
        return replay_lsn > self.fence_lsn


class KeyFormat:
    """A companion key as deps.yaml spells it: text around ``{key}``, e.g.
    ``"{key}:stale"`` or ``"{key}:version"``."""

    def __init__(self, spec: str) -> None:
        prefix, sep, suffix = spec.partition("{key}")
        if not sep or "{key}" in suffix:
            raise ValueError(f"{spec!r} must contain {{key}} exactly once")
        if not prefix and not suffix:
            raise ValueError(f"{spec!r} would be the key itself")
        self.spec, self.prefix, self.suffix = spec, prefix, suffix

    def __call__(self, key: str) -> str:
        return self.prefix + key + self.suffix

    def __repr__(self) -> str:
        return f"KeyFormat({self.spec!r})"


@dataclass(frozen=True)
class L1Options:
    """The in-process cache. It holds entries only while subscribed to
    walbust's events channel; every event drops the keys it lists and the
    keys its patterns match, and the whole L1 is emptied whenever the
    subscription is (re)established or found dead."""

    #: walbust's events channel (``events.channel``).
    channel: str = DEFAULT_EVENTS_CHANNEL
    #: Caps an entry's life in process (seconds), whatever the events say.
    ttl: float = 5.0
    #: Bound on entries; when full an arbitrary entry is evicted.
    max_entries: int = 10000
    #: A subscription silent this long (seconds) is pinged, and one silent
    #: for twice as long is considered dead.
    ping_interval: float = 1.0
    #: Optional client to subscribe with instead of the cache's own (for
    #: ``redis.asyncio.RedisCluster``, which has no pub/sub in redis-py 4.3,
    #: the client otherwise subscribes on one of the cluster's nodes).
    pubsub_client: Any = None

    def validate(self) -> None:
        if self.ttl < 0 or self.ping_interval <= 0 or self.max_entries < 0:
            raise ValueError("walbust_cache: L1 ttl and max_entries must not be negative, ping_interval must be positive")


@dataclass(frozen=True)
class WaitOptions:
    """Configure ``wait_applied`` (the twin of Go's ``cacheaside.WaitOptions``)."""

    #: walbust's replication slot (``postgres.slot``): the position waited
    #: for is ``protocol.settled_key(slot)``.
    slot: str = "walbust"
    #: walbust's events channel ("": the L1's channel, else
    #: ``walbust:events``); each event wakes the waiters at once. "-": do
    #: not subscribe, only poll.
    channel: str = ""
    #: Caps the interval (seconds) between two reads of the position while
    #: someone waits. Polls start at 1ms and double: they end a wait no
    #: event announces (a write to a table walbust does not map, an idle
    #: position, a lost event).
    max_poll: float = 0.1
    #: The server's ``wal_block_size`` and ``wal_segment_size`` (Postgres's
    #: defaults): an LSN just past a WAL page header is taken for the page's
    #: start (see ``past_page_header``).
    wal_block_size: int = 8192
    wal_segment_size: int = 16 << 20

    def validate(self) -> None:
        if not self.slot:
            raise ValueError("walbust_cache: wait slot must not be empty")
        if self.max_poll <= 0 or self.wal_block_size < 0 or self.wal_segment_size < 0:
            raise ValueError("walbust_cache: wait max_poll must be positive, the WAL sizes not negative")


@dataclass(frozen=True)
class Options:
    """Configure a client. Durations are in seconds (floats)."""

    #: How long a filled value is fresh, give or take ``jitter``.
    ttl: float = 600.0
    #: Spread TTLs by ±jitter×ttl so keys filled together do not expire
    #: together (0 or negative: none).
    jitter: float = 0.1
    #: Keep a value in Redis this long after it went stale: readers get it
    #: at once while one of them reloads it in the background (0: off).
    stale_while_revalidate: float = 0.0
    #: How long a not-found result is cached (None or negative: not cached).
    negative_ttl: Optional[float] = 30.0
    #: Bound on a lease taken over an absent key; a lease over a tombstone
    #: keeps the tombstone's remaining TTL.
    lease_ttl: float = 10.0
    #: How long a reader that finds another reader's lease waits for its
    #: value before loading itself (negative: do not wait).
    lease_wait: float = 2.0
    #: Bound on one load (async loaders are cancelled after it; sync ones
    #: cannot be interrupted) and the claim a revalidation takes.
    load_timeout: float = 10.0
    #: A load that took longer than the lease's TTL minus this is not
    #: written back: the lease, and the fence it replaced, may be gone.
    fill_margin: float = 0.25
    #: TTL of the tombstones ``fence()`` writes (walbust's fence_ttl default).
    fence_ttl: float = 60.0
    #: ``action: stale``: when the loader fails, serve the last good value
    #: walbust moved to ``stale_key`` (per call: ``get(..., stale_fallback=)``).
    stale_fallback: bool = False
    #: deps.yaml's ``stale_key``.
    stale_key: str = "{key}:stale"
    #: deps.yaml's ``version_key`` (``action: bump``), for ``get_versioned``.
    version_key: str = "{key}:version"
    #: Where ``get_versioned`` caches a version's value; ``{version}`` is the
    #: decimal version (0 before the first bump).
    versioned_key: str = "{key}:v{version}"
    #: The in-process cache (None: none).
    l1: Optional[L1Options] = None
    #: ``wait_applied``'s slot, channel and poll (see :class:`WaitOptions`).
    wait: WaitOptions = WaitOptions()

    def validate(self) -> "Options":
        if self.ttl < 0.001:
            raise ValueError(f"walbust_cache: ttl {self.ttl}: must be at least 1ms")
        if self.jitter >= 1:
            raise ValueError(f"walbust_cache: jitter {self.jitter}: must be below 1")
        if self.stale_while_revalidate < 0:
            raise ValueError("walbust_cache: stale_while_revalidate must not be negative")
        if min(self.lease_ttl, self.load_timeout, self.fence_ttl) < 0.001:
            raise ValueError("walbust_cache: lease_ttl, load_timeout and fence_ttl must be at least 1ms")
        if self.fill_margin < 0:
            raise ValueError("walbust_cache: fill_margin must not be negative")
        KeyFormat(self.stale_key)
        KeyFormat(self.version_key)
        if "{key}" not in self.versioned_key or "{version}" not in self.versioned_key:
            raise ValueError("walbust_cache: versioned_key must contain {key} and {version}")
        if self.l1 is not None:
            self.l1.validate()
        self.wait.validate()
        return self

    @property
    def wait_channel(self) -> str:
        """The channel ``wait_applied`` subscribes to ("-": none)."""
        if self.wait.channel:
            return self.wait.channel
        return self.l1.channel if self.l1 is not None else DEFAULT_EVENTS_CHANNEL

    @classmethod
    def build(cls, options: Optional["Options"], overrides: Dict[str, Any]) -> "Options":
        o = options if options is not None else cls()
        if overrides:
            known = {f.name for f in fields(cls)}
            bad = set(overrides) - known
            if bad:
                raise TypeError(f"walbust_cache: unknown options {sorted(bad)}")
            o = replace(o, **overrides)
        return o.validate()

    @property
    def negative_caching(self) -> bool:
        return self.negative_ttl is not None and self.negative_ttl >= 0


def jitter(d: float, j: float) -> float:
    """``d`` spread by ±j×d, at least 1ms."""
    if j > 0:
        d += d * j * (2 * random.random() - 1)
    return max(d, 0.001)


@dataclass
class Stats:
    """A client's counters since it was made."""

    hits: int = 0  # gets answered from Redis
    l1_hits: int = 0  # gets answered in process
    misses: int = 0  # gets that found no value in Redis
    loads: int = 0  # loader calls, revalidations included
    fills: int = 0  # values written back
    fills_lost: int = 0  # write-backs refused because the key changed
    fills_skipped: int = 0  # write-backs not attempted: the load outlasted the lease
    lease_waits: int = 0  # misses that waited for another reader's lease
    stale_served: int = 0  # stale values served while revalidating
    revalidations: int = 0  # background reloads started
    stale_fallbacks: int = 0  # failed loads answered from the stale key
    l1_resets: int = 0  # times the L1 was emptied because its subscription (re)started or died


class Counters:
    """Thread-safe counters behind :class:`Stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = Stats()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._n, name, getattr(self._n, name) + n)

    def snapshot(self) -> Stats:
        with self._lock:
            return replace(self._n)


@dataclass
class Result:
    """What one get learned: a value or a not-found."""

    payload: bytes = b""
    not_found: bool = False
    soft_expiry_ms: int = 0  # of the envelope in Redis, when filled or read
    cache_l1: bool = False  # came from Redis or from our own fill: fit for the L1
    from_stale: bool = field(default=False)

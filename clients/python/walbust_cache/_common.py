"""Helpers shared by the sync and async clients (no I/O here)."""

from __future__ import annotations

import random
from typing import Any, Optional, Tuple

from .options import BadPosition, KeyFormat, NoHashTag, NotFound, Options, Refreshed, Result, jitter
from .protocol import (Envelope, Event, ProtocolError, format_pg_lsn, has_hash_tag, new_token, now_ms, parse_pg_lsn,
                       parse_refresh_mark, refresh_lsn_key)

# How often one fill starts over because a fence landed while it loaded:
# the value it loaded may predate that write.
MAX_FILL_ATTEMPTS = 3


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds a script's TTL argument takes
    (at least 1, since 0 means "keep the TTL" to cas.lua)."""
    return max(1, int(seconds * 1000))


def check_client(rdb: Any) -> None:
    if rdb is None:
        raise ValueError("walbust_cache: nil redis client")
    enc = None
    try:
        enc = rdb.get_encoder()
    except Exception:  # pragma: no cover - other client types
        pool = getattr(rdb, "connection_pool", None)
        if pool is not None:
            enc = pool.get_encoder()
    if enc is not None and getattr(enc, "decode_responses", False):
        raise ValueError("walbust_cache: the redis client must use decode_responses=False (values are bytes)")


def to_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"walbust_cache: a loader must return bytes or str, not {type(v).__name__}")


def make_envelope(opts: Options, payload: bytes, not_found: bool) -> Tuple[Envelope, float]:
    """A loaded value with fresh TTLs: the envelope (soft expiry) and the
    TTL Redis keeps it for."""
    if not_found:
        ttl = jitter(opts.negative_ttl or 0.0, opts.jitter)
        return Envelope(now_ms() + int(ttl * 1000), new_token(), b"", True), ttl
    ttl = jitter(opts.ttl, opts.jitter)
    return Envelope(now_ms() + int(ttl * 1000), new_token(), payload, False), ttl + opts.stale_while_revalidate


def answer(key: str, r: Result) -> bytes:
    if r.not_found:
        raise NotFound(key)
    return r.payload


def version_of(raw: Optional[bytes], version_key: str) -> int:
    """The decimal version walbust's bump action keeps (0 when absent)."""
    if raw is None:
        return 0
    s = raw.decode("ascii", "replace")
    if not s.isdigit() or (len(s) > 1 and s[0] == "0"):
        raise ProtocolError(f"walbust_cache: {version_key!r} holds {s[:40]!r}, not a decimal version")
    return int(s)


def versioned_key(opts: Options, key: str, version: int) -> str:
    return opts.versioned_key.replace("{version}", str(version)).replace("{key}", key)


def stale_key(opts: Options, key: str) -> str:
    return KeyFormat(opts.stale_key)(key)


class Backoff:
    """Exponential backoff with equal jitter (half fixed, half random)."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        self.initial, self.max, self.factor = initial, maximum, factor
        self._cur = initial

    def next(self) -> float:
        d = self._cur
        self._cur = min(self._cur * self.factor, self.max)
        return d / 2 + random.random() * d / 2

    def reset(self) -> None:
        self._cur = self.initial


# --- read-your-writes (wait_applied) --------------------------------------------

MAX_LSN = (1 << 64) - 1


def lsn_arg(lsn: Any) -> int:
    """wait_applied's lsn: an int, or pg_lsn's ``X/Y`` text (str or bytes)."""
    if isinstance(lsn, bool):
        raise TypeError("walbust_cache: lsn must be an int or pg_lsn text, not bool")
    if isinstance(lsn, int):
        if not 0 <= lsn <= MAX_LSN:
            raise ValueError(f"walbust_cache: lsn {lsn} is not an unsigned 64-bit integer")
        return lsn
    if isinstance(lsn, (bytes, bytearray)):
        lsn = bytes(lsn).decode("ascii", "replace")
    if isinstance(lsn, str):
        return parse_pg_lsn(lsn.strip())
    raise TypeError(f"walbust_cache: lsn must be an int or pg_lsn text, not {type(lsn).__name__}")


def past_page_header(lsn: int, block: int, segment: int) -> int:
    """Map an LSN just past a WAL page header to the page's start.

    ``pg_current_wal_insert_lsn()`` points past the header of the next page
    when the last record ended exactly at a page boundary, while that
    record's end (what walbust records) is the boundary itself: no change
    can end inside a header, so both mean the same, and without this a wait
    would last until the next WAL is written. (Go: cacheaside's
    pastPageHeader.)"""
    short, long = 24, 40  # SizeOfXLogShortPHD, SizeOfXLogLongPHD
    if segment > 0 and lsn % segment == long:
        return lsn - long
    if block > 0 and lsn % block == short and (segment == 0 or lsn % segment != short):
        return lsn - short
    return lsn


def parse_settled(raw: Optional[bytes]) -> Optional[int]:
    """The settled position read from Redis (None: walbust never wrote it)."""
    if raw is None:
        return None
    try:
        return parse_pg_lsn(raw.decode("ascii"))
    except (UnicodeDecodeError, ProtocolError):
        raise BadPosition("walbust_cache: walbust's settled position is not an LSN") from None


def event_lsn(data: Any) -> Optional[int]:
    """An event's LSN, None when the event is unreadable."""
    try:
        return Event.unmarshal(data or b"").lsn
    except ProtocolError:
        return None


def raise_wait_timeout(lsn: int, err: Optional[BaseException]) -> None:
    """What a wait that timed out raises: BadPosition when the key held no
    LSN, else TimeoutError (chained to the last Redis error, if any)."""
    if isinstance(err, BadPosition):
        raise err
    raise TimeoutError(f"walbust_cache: walbust has not applied up to {format_pg_lsn(lsn)} yet"
                       + (f" (reading its position: {err})" if err is not None else "")) from err


# --- refreshed keys (get_refreshed) ---------------------------------------------


def is_cluster(rdb: Any) -> bool:
    """Whether rdb is redis-py's RedisCluster, sync or asyncio."""
    try:
        from redis.cluster import RedisCluster
        if isinstance(rdb, RedisCluster):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        return isinstance(rdb, AsyncRedisCluster)
    except ImportError:  # pragma: no cover - redis-py without asyncio cluster
        return False


def refreshed_keys(rdb: Any, key: str) -> Tuple[str, str]:
    """The two keys get_refreshed reads with one MGET; NoHashTag on a
    cluster when they cannot share a slot."""
    if is_cluster(rdb) and not has_hash_tag(key):
        raise NoHashTag(key)
    return key, refresh_lsn_key(key)


def refreshed(values: Any) -> Optional[Refreshed]:
    """MGET key key:lsn's reply as get_refreshed returns it."""
    value, mark = values
    if value is None:
        return None
    m = parse_refresh_mark(mark)
    return Refreshed(bytes(value), m.lsn, m.stale, m.stale_lsn)

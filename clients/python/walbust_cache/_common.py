"""Helpers shared by the sync and async clients (no I/O here)."""

from __future__ import annotations

import random
from typing import Any, Optional, Tuple

from .options import KeyFormat, NotFound, Options, Result, jitter
from .protocol import Envelope, ProtocolError, new_token, now_ms

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

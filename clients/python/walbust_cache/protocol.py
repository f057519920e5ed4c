"""walbust's wire protocol: the stored forms, events and glob matching.

This module is the Python twin of the Go package ``protocol``
(github.com/walbust/walbust/protocol); every encoder here produces the same
bytes as its Go counterpart and every parser accepts exactly what Go's
accepts. Stored forms (plain Redis strings)::

    tombstone  wbfence:1:<lsn>:<token>                            written by walbust's fence action
    lease      wblease:1:<lsn>:<token>                            a reader's claim to fill the key
    value      wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload>  a filled value; kind v (value) or n (not found)

LSNs are unsigned 64-bit integers in decimal without leading zeros ("0" is
allowed); tokens are 16 to 64 lower-case hex digits (:func:`new_token` makes
32). Everything else in a key is *foreign* and readers treat it as absent.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Union

__all__ = [
    "TOMBSTONE_PREFIX",
    "LEASE_PREFIX",
    "VALUE_PREFIX",
    "DEFAULT_EVENTS_CHANNEL",
    "MIN_TOKEN_LEN",
    "MAX_TOKEN_LEN",
    "ProtocolError",
    "Fence",
    "Envelope",
    "Kind",
    "Content",
    "Event",
    "new_token",
    "tombstone",
    "lease",
    "parse_tombstone",
    "parse_lease",
    "parse_envelope",
    "decode",
    "format_pg_lsn",
    "parse_pg_lsn",
    "applied_key",
    "settled_key",
    "REFRESH_LSN_SUFFIX",
    "RefreshMark",
    "refresh_lsn_key",
    "parse_refresh_mark",
    "has_hash_tag",
    "match",
    "now_ms",
]

TOMBSTONE_PREFIX = b"wbfence:1:"
LEASE_PREFIX = b"wblease:1:"
VALUE_PREFIX = b"wbval:1:"

#: The channel walbust publishes events on unless configured otherwise
#: (``events.channel``).
DEFAULT_EVENTS_CHANNEL = "walbust:events"

MIN_TOKEN_LEN = 16
MAX_TOKEN_LEN = 64

_MAX_U64 = (1 << 64) - 1
_HEX = frozenset(b"0123456789abcdef")
_DIGITS = frozenset(b"0123456789")

Bytesish = Union[bytes, bytearray, memoryview, str]


class ProtocolError(ValueError):
    """A string that is not a well-formed tombstone, lease, value or event."""


def _b(s: Bytesish) -> bytes:
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape")
    return bytes(s)


def now_ms() -> int:
    """Unix time in milliseconds, the clock of soft expiries."""
    return time.time_ns() // 1_000_000


def new_token() -> str:
    """32 random lower-case hex digits (128 bits)."""
    return os.urandom(16).hex()


def _valid_token(t: bytes) -> bool:
    return MIN_TOKEN_LEN <= len(t) <= MAX_TOKEN_LEN and all(c in _HEX for c in t)


def _parse_decimal(s: bytes) -> int:
    # Decimal, no sign, no leading zeros, at most 20 digits, fits in uint64:
    # the form Lua compares as strings (longer is larger).
    if not s or len(s) > 20 or (len(s) > 1 and s[0:1] == b"0") or not all(c in _DIGITS for c in s):
        raise ProtocolError(f"{s!r}: want a decimal number without leading zeros")
    v = int(s)
    if v > _MAX_U64:
        raise ProtocolError(f"{s!r}: out of range")
    return v


def _format_decimal(v: int) -> bytes:
    if not 0 <= v <= _MAX_U64:
        raise ValueError(f"LSN {v} is not an unsigned 64-bit integer")
    return str(v).encode()


@dataclass(frozen=True)
class Fence:
    """A parsed tombstone or lease.

    ``lsn`` is the commit LSN (start of the commit record) of the newest
    transaction that fenced the key; 0 when unknown (a lease taken over an
    absent key). A replica has replayed that commit once its
    ``pg_last_wal_replay_lsn()`` is strictly greater than ``lsn``.
    """

    lsn: int
    token: str


def tombstone(lsn: int, token: str) -> bytes:
    """``wbfence:1:<lsn>:<token>``, what walbust's fence action writes."""
    return TOMBSTONE_PREFIX + _format_decimal(lsn) + b":" + token.encode("ascii")


def lease(lsn: int, token: str) -> bytes:
    """``wblease:1:<lsn>:<token>``, a reader's claim to fill a key."""
    return LEASE_PREFIX + _format_decimal(lsn) + b":" + token.encode("ascii")


def _parse_fence(s: Bytesish, prefix: bytes, what: str) -> Fence:
    b = _b(s)
    if not b.startswith(prefix):
        raise ProtocolError(f"{what} {b[:40]!r}: wrong prefix (want {prefix.decode()}<lsn>:<token>)")
    lsn, sep, token = b[len(prefix):].partition(b":")
    if not sep:
        raise ProtocolError(f"{what} {b[:40]!r}: want {prefix.decode()}<lsn>:<token>")
    try:
        v = _parse_decimal(lsn)
    except ProtocolError as e:
        raise ProtocolError(f"{what} {b[:40]!r}: lsn {e}") from None
    if not _valid_token(token):
        raise ProtocolError(f"{what} {b[:40]!r}: token must be {MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} lower-case hex digits")
    return Fence(v, token.decode("ascii"))


def parse_tombstone(s: Bytesish) -> Fence:
    return _parse_fence(s, TOMBSTONE_PREFIX, "tombstone")


def parse_lease(s: Bytesish) -> Fence:
    return _parse_fence(s, LEASE_PREFIX, "lease")


@dataclass(frozen=True)
class Envelope:
    """A cached value as readers store it:
    ``wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload>``.

    ``soft_expiry_ms`` is Unix time in milliseconds after which the value is
    stale (still served, due for revalidation). ``nonce`` is a token, so two
    fills of the same bytes are different strings. ``not_found`` is kind
    ``n`` (a cached "no such row", empty payload).
    """

    soft_expiry_ms: int
    nonce: str
    payload: bytes = b""
    not_found: bool = False

    def encode(self) -> bytes:
        kind = b"n" if self.not_found else b"v"
        return b"".join(
            (VALUE_PREFIX, str(self.soft_expiry_ms).encode(), b":", self.nonce.encode("ascii"), b":", kind, b":",
             bytes(self.payload))
        )

    def is_stale(self, at_ms: Optional[int] = None) -> bool:
        """Whether the soft expiry has passed at ``at_ms`` (default: now)."""
        return (now_ms() if at_ms is None else at_ms) >= self.soft_expiry_ms


def parse_envelope(s: Bytesish) -> Envelope:
    b = _b(s)
    if not b.startswith(VALUE_PREFIX):
        raise ProtocolError(f"value {b[:40]!r}: wrong prefix (want {VALUE_PREFIX.decode()}...)")
    fields = b[len(VALUE_PREFIX):].split(b":", 3)
    if len(fields) != 4:
        raise ProtocolError(f"value {b[:40]!r}: want wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload>")
    try:
        ms = _parse_decimal(fields[0])
    except ProtocolError:
        ms = -1
    if ms < 0 or ms > 1 << 62:
        raise ProtocolError(f"value {b[:40]!r}: soft expiry must be Unix milliseconds in decimal")
    if not _valid_token(fields[1]):
        raise ProtocolError(f"value {b[:40]!r}: nonce must be {MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} lower-case hex digits")
    nonce = fields[1].decode("ascii")
    if fields[2] == b"v":
        return Envelope(ms, nonce, fields[3], False)
    if fields[2] == b"n":
        if fields[3]:
            raise ProtocolError(f"value {b[:40]!r}: a not-found entry has no payload")
        return Envelope(ms, nonce, b"", True)
    raise ProtocolError(f"value {b[:40]!r}: kind must be v or n")


class Kind(enum.IntEnum):
    """What a key's content is, by the protocol."""

    ABSENT = 0  # no such key
    FOREIGN = 1  # a string that is not part of the protocol, or a malformed one
    TOMBSTONE = 2  # walbust fenced the key
    LEASE = 3  # a reader is filling the key
    VALUE = 4  # a filled value or not-found entry

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Content:
    """A key's content, decoded."""

    kind: Kind
    fence: Fence = field(default_factory=lambda: Fence(0, ""))  # TOMBSTONE, LEASE
    envelope: Optional[Envelope] = None  # VALUE


def decode(s: Optional[Bytesish]) -> Content:
    """Classify what a key holds. Never fails: anything that is not a
    well-formed tombstone, lease or value is ``Kind.FOREIGN`` (``None``, a
    missing key, is ``Kind.ABSENT``)."""
    if s is None:
        return Content(Kind.ABSENT)
    b = _b(s)
    try:
        if b.startswith(TOMBSTONE_PREFIX):
            return Content(Kind.TOMBSTONE, fence=parse_tombstone(b))
        if b.startswith(LEASE_PREFIX):
            return Content(Kind.LEASE, fence=parse_lease(b))
        if b.startswith(VALUE_PREFIX):
            return Content(Kind.VALUE, envelope=parse_envelope(b))
    except ProtocolError:
        pass
    return Content(Kind.FOREIGN)


# --- LSNs in pg_lsn text form -------------------------------------------------


def format_pg_lsn(lsn: int) -> str:
    """The pg_lsn text form ``X/Y`` (upper-case hex) of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _parse_hex32(s: str) -> int:
    if not 1 <= len(s) <= 8 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise ProtocolError(f"{s!r}: want 1-8 hex digits")
    return int(s, 16)


def parse_pg_lsn(s: str) -> int:
    """Parse pg_lsn's ``X/Y`` into an integer."""
    hi, sep, lo = s.partition("/")
    if not sep:
        raise ProtocolError(f"lsn {s!r}: want X/Y (two hex numbers)")
    return _parse_hex32(hi) << 32 | _parse_hex32(lo)


def applied_key(slot: str) -> str:
    """The key where walbust records how far it has applied ``slot``'s
    changes (an LSN in ``X/Y`` form)."""
    return "walbust:applied:{" + slot + "}"


def settled_key(slot: str) -> str:
    """The key of walbust's settled position for ``slot`` (``X/Y`` form):
    every change up to it is in Redis and, when walbust watches read
    replicas, was fenced again after they replayed it. Same form and same
    monotonic write as :func:`applied_key`; this is the position
    read-your-writes waits for (:meth:`walbust_cache.Client.wait_applied`)."""
    return "walbust:settled:{" + slot + "}"


# --- Refreshed keys (deps.yaml action: refresh) ------------------------------
#
# A refreshed key holds exactly its value, no envelope. Next to it,
# refresh_lsn_key(key) holds the value's commit LSN in pg_lsn text, followed
# by " stale <lsn>" while the value is stale (a later change's value query
# failed): "16/B374D848", "16/B374D848 stale 16/B3750000", or "0/0 stale …"
# for a value a reader cached. walbust writes both in one script, so in a
# Redis Cluster the key needs a hash tag (has_hash_tag), as does a reader's
# MGET of the two. (Go: protocol.ParseRefreshMark.)

#: Appended to a refreshed key to name its LSN key.
REFRESH_LSN_SUFFIX = ":lsn"


def refresh_lsn_key(key: str) -> str:
    """Where walbust keeps the commit LSN and stale flag of a key it
    refreshes: ``key + ":lsn"``."""
    return key + REFRESH_LSN_SUFFIX


@dataclass(frozen=True)
class RefreshMark:
    """What a refreshed key's LSN key says.

    ``lsn`` is the value's commit LSN (0 when there is no LSN key, or the
    flagged value was a reader's); ``stale``: a later change's refresh
    failed and the value is older than it; ``stale_lsn`` is the newest
    change whose refresh failed."""

    lsn: int = 0
    stale: bool = False
    stale_lsn: int = 0


def _lenient_lsn(s: str) -> int:
    try:
        return parse_pg_lsn(s)
    except ProtocolError:
        return 0


def parse_refresh_mark(raw: Optional[Bytesish]) -> RefreshMark:
    """Read an LSN key's text (None: absent). As lenient as walbust's
    script: what does not parse as an LSN counts as 0/0, and the value is
    stale whenever the text holds ``" stale "``."""
    if raw is None:
        return RefreshMark()
    text = _b(raw).decode("latin-1")
    base, sep, flag = text.partition(" stale ")
    return RefreshMark(_lenient_lsn(base), bool(sep), _lenient_lsn(flag) if sep else 0)


def has_hash_tag(key: Bytesish) -> bool:
    """Whether key carries a Redis Cluster hash tag: a non-empty text
    between its first ``{`` and the next ``}``, which alone decides its
    slot, so that key and ``refresh_lsn_key(key)`` share one."""
    k = _b(key)
    i = k.find(b"{")
    return i >= 0 and k.find(b"}", i + 1) > i + 1


# --- Events -------------------------------------------------------------------


def _go_json_string_list(items: List[str]) -> str:
    # Go's encoding/json escapes <, >, & and U+2028/U+2029; Python's
    # json.dumps escapes the rest (", \, control characters) the same way.
    s = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return (
        s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


def _valid_utf8(items: List[str]) -> "tuple[List[str], bool]":
    out, ok = [], True
    for s in items:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape
            ok = False
            continue
        out.append(s)
    return out, ok


@dataclass
class Event:
    """What walbust publishes after each acknowledged batch::

        {"lsn": "16/B374D848", "keys": ["product:1"], "patterns": ["search:users:\\\\*:*"]}

    ``keys`` are exact keys, ``patterns`` Redis glob patterns (as SCAN MATCH
    reads them); ``flush`` means drop every entry.
    """

    lsn: int = 0
    keys: List[str] = field(default_factory=list)
    patterns: List[str] = field(default_factory=list)
    flush: bool = False

    def marshal(self) -> bytes:
        """The JSON walbust publishes, byte for byte as Go's Event.Marshal.
        A key or pattern that is not valid UTF-8 is left out and the event
        says flush instead."""
        keys, ok_k = _valid_utf8(self.keys)
        patterns, ok_p = _valid_utf8(self.patterns)
        out = '{"lsn":' + json.dumps(format_pg_lsn(self.lsn)) + ',"keys":' + _go_json_string_list(keys)
        out += ',"patterns":' + _go_json_string_list(patterns)
        if self.flush or not ok_k or not ok_p:
            out += ',"flush":true'
        return (out + "}").encode("utf-8")

    @classmethod
    def unmarshal(cls, data: Bytesish) -> "Event":
        """Parse an event: ``lsn`` is required, ``keys`` and ``patterns`` may
        be missing or null, unknown fields are ignored."""
        try:
            raw = json.loads(_b(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolError(f"event: {e}") from None
        if not isinstance(raw, dict):
            raise ProtocolError("event: not a JSON object")
        lsn = raw.get("lsn")
        if not isinstance(lsn, str):
            raise ProtocolError("event: missing lsn" if lsn is None else "event: lsn must be a string")
        ev = cls(lsn=parse_pg_lsn(lsn))
        for name in ("keys", "patterns"):
            v = raw.get(name)
            if v is None:
                continue
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ProtocolError(f"event: {name} must be a list of strings")
            setattr(ev, name, v)
        flush = raw.get("flush", False)
        if flush is not None and not isinstance(flush, bool):
            raise ProtocolError("event: flush must be a boolean")
        ev.flush = bool(flush)
        return ev

    def touches(self, key: str) -> bool:
        """Whether the event invalidates ``key``: a flush, one of its keys,
        or a key one of its patterns matches."""
        if self.flush or key in self.keys:
            return True
        return any(match(p, key) for p in self.patterns)


# --- Redis glob matching --------------------------------------------------------


def match(pattern: Bytesish, key: Bytesish) -> bool:
    """Whether ``key`` matches the Redis glob ``pattern`` as SCAN MATCH would,
    byte by byte, quirks included (a port of Go's protocol.Match, itself
    Redis's stringmatchlen). A range with a byte of 0x80 or above matches if
    either a signed or an unsigned C char would: matching too much is the
    safe side for a cache."""
    p, s = _b(pattern), _b(key)
    if p == b"*":
        return True
    return _match(p, 0, s, 0, [False], 0)


def _s8(c: int) -> int:
    return c - 256 if c >= 128 else c


def _in_range(lo: int, hi: int, c: int) -> bool:
    if lo > hi:
        lo, hi = hi, lo
    return lo <= c <= hi


def _match(p: bytes, pi: int, s: bytes, si: int, skip: List[bool], nesting: int) -> bool:
    if nesting > 1000:
        return False
    np, ns = len(p), len(s)

    def at(i: int) -> int:
        return p[i] if i < np else 0

    while pi < np and si < ns:
        c = p[pi]
        if c == 0x2A:  # '*'
            while pi < np and at(pi + 1) == 0x2A:
                pi += 1
            if np - pi == 1:
                return True
            while si < ns:
                if _match(p, pi + 1, s, si, skip, nesting + 1):
                    return True
                if skip[0]:
                    return False
                si += 1
            skip[0] = True
            return False
        elif c == 0x3F:  # '?'
            si += 1
        elif c == 0x5B:  # '['
            pi += 1
            neg = at(pi) == 0x5E
            if neg:
                pi += 1
            mu = ms = False
            while True:
                if at(pi) == 0x5C and np - pi >= 2:
                    pi += 1
                    if p[pi] == s[si]:
                        mu = ms = True
                elif at(pi) == 0x5D:
                    break
                elif np - pi == 0:
                    pi -= 1
                    break
                elif np - pi >= 3 and p[pi + 1] == 0x2D:
                    lo, hi, ch = p[pi], p[pi + 2], s[si]
                    pi += 2
                    if _in_range(lo, hi, ch):
                        mu = True
                    if _in_range(_s8(lo), _s8(hi), _s8(ch)):
                        ms = True
                else:
                    if p[pi] == s[si]:
                        mu = ms = True
                pi += 1
            if neg:
                mu, ms = not mu, not ms
            if not mu and not ms:
                return False
            si += 1
        else:
            if c == 0x5C and np - pi >= 2:  # '\\'
                pi += 1
            if p[pi] != s[si]:
                return False
            si += 1
        pi += 1
        if si == ns:
            while at(pi) == 0x2A:
                pi += 1
            break
    return pi == np and si == ns

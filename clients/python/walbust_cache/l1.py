"""The in-process cache (L1), shared by the sync and async clients.

It serves only while ready (subscribed and listening). A value read from
Redis is put with the mark taken before the read; the put is refused if any
event that could concern its key arrived after the mark, since the value
may predate that invalidation.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

from .protocol import Event

RECENT_EVENTS = 128


class L1Entry:
    __slots__ = ("payload", "not_found", "expires")

    def __init__(self, payload: bytes, not_found: bool, expires: float) -> None:
        self.payload, self.not_found, self.expires = payload, not_found, expires


class L1:
    def __init__(self, max_entries: int, ttl: float) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[str, L1Entry] = {}
        self._max = max_entries
        self._ttl = ttl
        self._ready = False
        self._seq = 0
        self._recent: List[Optional[Event]] = [None] * RECENT_EVENTS

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str, now: Optional[float] = None) -> Optional[L1Entry]:
        """The entry for key, if the L1 is serving and it has not expired
        (``now`` is ``time.monotonic()``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            e = self._entries.get(key)
            if e is None or not self._ready:
                return None
            if now >= e.expires:
                del self._entries[key]
                return None
            return e

    def mark(self) -> int:
        """Taken before reading Redis; see :meth:`put`."""
        with self._lock:
            return self._seq

    def put(self, mark: int, key: str, payload: bytes, not_found: bool, soft_expiry_ms: int) -> None:
        with self._lock:
            if not self._ready or self._seq - mark >= RECENT_EVENTS:
                return
            for s in range(mark + 1, self._seq + 1):
                ev = self._recent[s % RECENT_EVENTS]
                if ev is not None and ev.touches(key):
                    return
            now = time.monotonic()
            # The soft expiry is wall-clock; convert what is left of it.
            soft_left = soft_expiry_ms / 1000.0 - time.time()
            expires = now + min(self._ttl, soft_left)
            if now >= expires:
                return
            if key not in self._entries and len(self._entries) >= self._max:
                if self._max == 0:
                    return
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = L1Entry(payload, not_found, expires)

    def apply(self, ev: Event) -> None:
        """Drop what ev invalidates."""
        with self._lock:
            self._seq += 1
            self._recent[self._seq % RECENT_EVENTS] = ev
            if ev.flush:
                self._entries.clear()
                return
            for k in ev.keys:
                self._entries.pop(k, None)
            if ev.patterns:
                from .protocol import match

                for k in [k for k in self._entries if any(match(p, k) for p in ev.patterns)]:
                    del self._entries[k]

    def reset(self, ready: bool) -> None:
        """Empty the L1 and refuse every put in flight; ``ready`` says
        whether it may serve from now on."""
        with self._lock:
            self._entries.clear()
            self._seq += 1
            self._recent[self._seq % RECENT_EVENTS] = Event(flush=True)
            self._ready = ready

    def snapshot(self) -> Tuple[bool, int]:
        with self._lock:
            return self._ready, len(self._entries)

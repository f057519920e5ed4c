"""walbust_cache: the Python read side of walbust.

A cache-aside ``get`` that stays consistent with PostgreSQL when walbust
fences the keys it reads, over redis-py: :class:`Client` for ``redis.Redis``
and ``redis.RedisCluster``, :class:`AsyncClient` for ``redis.asyncio``. It
speaks walbust's protocol (see :mod:`walbust_cache.protocol` and walbust's
docs/caching.md) with the same Lua scripts as the Go client ``cacheaside``.
"""

from .aio import AsyncClient, AsyncLoader
from .client import Client, Loader
from .options import (BadPosition, KeyFormat, L1Options, NoHashTag, NotFound, Observation, Options, Refreshed, Stats,
                      WaitOptions)
from .protocol import DEFAULT_EVENTS_CHANNEL, Content, Envelope, Event, Fence, Kind, ProtocolError

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncLoader",
    "BadPosition",
    "Client",
    "Content",
    "DEFAULT_EVENTS_CHANNEL",
    "Envelope",
    "Event",
    "Fence",
    "KeyFormat",
    "Kind",
    "L1Options",
    "Loader",
    "NoHashTag",
    "NotFound",
    "Observation",
    "Options",
    "ProtocolError",
    "Refreshed",
    "Stats",
    "WaitOptions",
]

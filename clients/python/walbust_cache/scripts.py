"""The protocol's Lua scripts, loaded verbatim from the package's lua/
directory (copies of walbust's protocol/lua/, kept identical by
``make -C clients/python sync-lua`` and a test).

Each script touches one key, so it runs on Redis Cluster too. They are
sent with EVALSHA, falling back to EVAL (which also caches the script on
that node) when a server answers NOSCRIPT: no SCRIPT LOAD on every node.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence, Union

from redis.exceptions import NoScriptError

__all__ = ["Script", "FENCE", "LEASE", "CAS", "LUA_DIR"]

LUA_DIR = Path(__file__).resolve().parent / "lua"

Arg = Union[bytes, str, int]


class Script:
    """One Lua script of the protocol: its source and its SHA1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source: bytes = (LUA_DIR / name).read_bytes()
        self.sha: str = hashlib.sha1(self.source).hexdigest()

    def run(self, rdb: Any, key: str, *args: Arg) -> Any:
        """Run on a sync ``redis.Redis`` or ``redis.RedisCluster``."""
        try:
            return rdb.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return rdb.eval(self.source, 1, key, *args)

    async def run_async(self, rdb: Any, key: str, *args: Arg) -> Any:
        """Run on a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``."""
        try:
            return await rdb.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return await rdb.eval(self.source, 1, key, *args)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha})"


#: walbust's fence: KEYS[1]=key, ARGV = lsn, token, ttl_ms; returns 1.
FENCE = Script("fence.lua")
#: A reader's miss: KEYS[1]=key, ARGV = token, ttl_ms; returns
#: [1, lease, ttl_ms] (acquired) or [0, content, pttl].
LEASE = Script("lease.lua")
#: The conditional fill: KEYS[1]=key, ARGV = expected, new, ttl_ms (0 keeps
#: the TTL); returns 1 if set, 0 if the key had changed.
CAS = Script("cas.lua")


def lease_reply(res: Sequence[Any]) -> "tuple[bool, bytes, int]":
    """Decode lease.lua's {acquired, content, ttl}."""
    if not isinstance(res, (list, tuple)) or len(res) != 3:
        raise RuntimeError(f"walbust_cache: unexpected lease reply {res!r}")
    flag, content, ttl = res
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogateescape")
    if not isinstance(flag, int) or not isinstance(content, bytes) or not isinstance(ttl, int):
        raise RuntimeError(f"walbust_cache: unexpected lease reply {res!r}")
    return flag == 1, content, ttl

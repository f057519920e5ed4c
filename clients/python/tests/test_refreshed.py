"""get_refreshed: a key under walbust's refresh action and its stale flag
in one MGET, sync and asyncio, standalone and on a Redis Cluster. The test
plays walbust with the daemon's own script (invalidator/lua/refresh.lua),
so what it reads is what walbust writes. The twin of Go's TestGetRefreshed
(cacheaside/refreshed_test.go)."""

import asyncio

import pytest
import redis.asyncio as aioredis

from walbust_cache import AsyncClient, Client, NoHashTag, Refreshed
from walbust_cache import protocol as p

from conftest import REPO_ROOT

REFRESH_LUA = (REPO_ROOT / "invalidator" / "lua" / "refresh.lua").read_bytes()
HOUR_MS = 3_600_000

# (step, walbust's op or a reader's fill, lsn, value, what get_refreshed returns)
STORY = [
    ("never cached", None, 0, None, None),
    ("a reader's fill", "fill", 0, b"filled", Refreshed(b"filled")),
    ("a reader's fill flagged stale", "stale", 0x50, None, Refreshed(b"filled", 0, True, 0x50)),
    ("refreshed", "set", 0x100, b'{"id":"1"}', Refreshed(b'{"id":"1"}', 0x100)),
    ("refresh failed", "stale", 0x200, None, Refreshed(b'{"id":"1"}', 0x100, True, 0x200)),
    ("failed again", "stale", 0x1_0000_0000, None, Refreshed(b'{"id":"1"}', 0x100, True, 0x1_0000_0000)),
    ("an older change replayed", "set", 0x80, b"old", Refreshed(b'{"id":"1"}', 0x100, True, 0x1_0000_0000)),
    ("recovered", "set", 0x1_0000_0010, b"v2", Refreshed(b"v2", 0x1_0000_0010)),
    ("deleted, negative marker", "del", 0x1_0000_0020, b"null", Refreshed(b"null", 0x1_0000_0020)),
    ("deleted", "del", 0x1_0000_0040, None, None),
]


def walbust_refresh(r, key, op, lsn, value):
    """What walbust's refresh action does to key for a change at lsn."""
    args = [op, p.format_pg_lsn(lsn), HOUR_MS] + ([value] if value is not None else [])
    return r.eval(REFRESH_LUA, 2, key, p.refresh_lsn_key(key), *args)


def step(r, key, op, lsn, value):
    if op == "fill":
        r.set(key, value, nx=True, px=HOUR_MS)
    elif op is not None:
        walbust_refresh(r, key, op, lsn, value)


def check_story(r, c, key):
    for name, op, lsn, value, want in STORY:
        step(r, key, op, lsn, value)
        assert c.get_refreshed(key) == want, name


async def check_story_async(r, c, key):
    for name, op, lsn, value, want in STORY:
        if op == "fill":
            await r.set(key, value, nx=True, px=HOUR_MS)
        elif op is not None:
            args = [op, p.format_pg_lsn(lsn), HOUR_MS] + ([value] if value is not None else [])
            await r.eval(REFRESH_LUA, 2, key, p.refresh_lsn_key(key), *args)
        assert await c.get_refreshed(key) == want, name


@pytest.mark.parametrize("key", ["product:1", "{product:2}"])
def test_get_refreshed(rdb, key):
    with Client(rdb) as c:
        check_story(rdb, c, key)


def test_get_refreshed_async(rdb, redis_server):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        async with AsyncClient(r) as c:
            await check_story_async(r, c, "product:3")
        await r.close()

    asyncio.run(main())


@pytest.mark.cluster
def test_get_refreshed_cluster(redis_cluster):
    redis_cluster.flush()
    rc = redis_cluster.client()
    try:
        with Client(rc) as c:
            for key in ["{product:1}", "category:{7}:products"]:
                check_story(rc, c, key)
            rc.set("product:1", b"filled")
            with pytest.raises(NoHashTag):
                c.get_refreshed("product:1")
    finally:
        rc.close()


@pytest.mark.cluster
def test_get_refreshed_cluster_async(redis_cluster):
    redis_cluster.flush()

    async def main():
        rc = redis_cluster.async_client()
        try:
            async with AsyncClient(rc) as c:
                await check_story_async(rc, c, "{product:1}")
                with pytest.raises(NoHashTag):
                    await c.get_refreshed("product:1")
        finally:
            await rc.close()

    asyncio.run(main())

"""The asyncio client against a real redis-server."""

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from walbust_cache import AsyncClient, Event, Kind, L1Options, NotFound
from walbust_cache import protocol as p

from conftest import RedisServer
from test_client import bump, stale_rollover, stored, walbust_fence


def run(coro):
    return asyncio.run(coro)


async def until(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what}")
        await asyncio.sleep(0.005)


def test_async_fill_fence_and_shared_load(rdb, redis_server):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        async with AsyncClient(r, ttl=3600) as c:
            calls = []

            async def load(obs):
                calls.append(obs)
                await asyncio.sleep(0.05)
                return b"v1"

            got = await asyncio.gather(*[c.get("product:1", load) for _ in range(20)])
            assert got == [b"v1"] * 20 and len(calls) == 1
            assert await c.get("product:1", load) == b"v1" and c.stats().hits == 1
            walbust_fence(rdb, "product:1", 77, 60)

            async def load2(obs):
                calls.append(obs)
                if len(calls) == 2:
                    walbust_fence(rdb, "product:1", 78, 60)  # lands during the load
                    return b"old"
                return b"new"

            assert await c.get("product:1", load2) == b"new"
            assert calls[1].fence_lsn == 77 and calls[2].fence_lsn == 78
            assert c.stats().fills_lost == 1
            # A plain function is a loader too.
            await c.fence("plain")
            assert await c.get("plain", lambda obs: "text") == b"text"
        await r.close()

    run(main())
    assert stored(rdb, "product:1")[0].envelope.payload == b"new"


def test_async_caller_cancellation_leaves_the_shared_load(rdb, redis_server):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        async with AsyncClient(r) as c:
            gate = asyncio.Event()
            calls = []

            async def load(obs):
                calls.append(1)
                await gate.wait()
                return b"v"

            t1 = asyncio.ensure_future(c.get("k", load))
            t2 = asyncio.ensure_future(c.get("k", load))
            await until(lambda: calls)
            t1.cancel()
            await asyncio.sleep(0.01)
            gate.set()
            assert await t2 == b"v"
            with pytest.raises(asyncio.CancelledError):
                await t1
            assert len(calls) == 1
        await r.close()

    run(main())


def test_async_load_timeout_releases_lease(rdb, redis_server):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        walbust_fence(rdb, "k", 5, 60)
        async with AsyncClient(r, load_timeout=0.1) as c:
            async def hang(obs):
                await asyncio.sleep(10)

            with pytest.raises(asyncio.TimeoutError):
                await c.get("k", hang)
        await r.close()

    run(main())
    content, _ = stored(rdb, "k")
    assert content.kind == Kind.TOMBSTONE and content.fence.lsn == 5


def test_async_negative_swr_stale_and_versioned(rdb, redis_server):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        async with AsyncClient(r, ttl=3600, stale_while_revalidate=3600, negative_ttl=20, jitter=-1) as c:
            async def missing(obs):
                raise NotFound()

            for _ in range(2):
                with pytest.raises(NotFound):
                    await c.get("user-by-email:x", missing)
            assert c.stats().loads == 1
            assert 19_000 <= rdb.pttl("user-by-email:x") <= 20_000

            # Stale-while-revalidate: stale at once, one reload.
            rdb.set("s", p.Envelope(p.now_ms() - 1000, p.new_token(), b"v1").encode(), ex=3600)
            reloads = []

            async def reload(obs):
                assert obs.revalidation
                reloads.append(1)
                return b"v2"

            assert await c.get("s", reload) == b"v1"
            assert await c.get("s", reload) in (b"v1", b"v2")  # the claim, or the reload already done
            await until(lambda: stored(rdb, "s")[0].envelope.payload == b"v2", what="revalidated")
            assert reloads == [1] and await c.get("s", reload) == b"v2"

            # Stale fallback.
            assert await c.get("md", lambda o: b"good") == b"good"
            stale_rollover(rdb, "md", "md:stale")

            async def down(obs):
                raise ConnectionRefusedError("database down")

            with pytest.raises(ConnectionRefusedError):
                await c.get("md", down)
            assert await c.get("md", down, stale_fallback=True) == b"good"
            assert c.stats().stale_fallbacks == 1

            # Versioned reads.
            assert await c.get_versioned("product:9", lambda o: b"v0") == b"v0"
            bump(rdb, "product:9:version", 99)
            seen = []

            async def v1(obs):
                seen.append(obs.fence_lsn)
                return b"v1"

            assert await c.get_versioned("product:9", v1) == b"v1" and seen == [99]
            assert rdb.exists("product:9:v99")
        await r.close()

    run(main())


def test_async_l1_clears_on_subscription_drop(workdir):
    srv = RedisServer(workdir / "async-l1")

    async def main():
        r = aioredis.Redis(port=srv.port)
        sync = srv.client()
        async with AsyncClient(r, l1=L1Options(ttl=3600, ping_interval=0.1)) as c:
            await until(lambda: c.l1.ready, 10, "subscribed")
            calls = []

            async def load(obs):
                calls.append(1)
                return b"v%d" % len(calls)

            for _ in range(3):
                assert await c.get("product:1", load) == b"v1"
            assert c.stats().l1_hits == 2
            walbust_fence(sync, "product:1", 10, 60)
            sync.publish("walbust:events", Event(10, ["product:1"]).marshal())
            await until(lambda: c.l1.get("product:1") is None, what="dropped by the event")
            assert await c.get("product:1", load) == b"v2"
            assert len(c.l1) == 1
            resets = c.stats().l1_resets
            assert sync.client_kill_filter(_type="pubsub") >= 1
            await until(lambda: c.stats().l1_resets >= resets + 1, what="the drop seen")
            assert len(c.l1) == 0
            await until(lambda: c.l1.ready, 10, "subscribed again")
            assert len(c.l1) == 0
            assert await c.get("product:1", load) == b"v2"  # from Redis, into the L1 again
            assert c.l1.get("product:1") is not None
        await r.close()

    try:
        run(main())
    finally:
        srv.stop()

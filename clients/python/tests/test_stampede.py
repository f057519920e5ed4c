"""The stampede: a hot key has just been fenced, and 200 readers in four
processes (50 threads each, each process its own client and connections)
miss on it at once. In each process the readers share one load; across
processes the lease decides: exactly one loader call in total. Without
waiting for leases each process loads at most once."""

import asyncio
import multiprocessing

import pytest
import redis.asyncio as aioredis

from walbust_cache import AsyncClient, Kind
from walbust_cache import protocol as p

import stampede_worker
from test_client import walbust_fence

PROCESSES, READERS = 4, 200
KEY = "product:hot"


def hot_key_just_fenced(r):
    r.set(KEY, p.Envelope(p.now_ms() + 3_600_000, p.new_token(), b"old").encode(), ex=3600)
    walbust_fence(r, KEY, 4242, 60)


@pytest.mark.parametrize("lease_wait", [-1, 10], ids=["without the lease", "with the fence lease"])
def test_stampede_across_processes(rdb, redis_server, lease_wait):
    hot_key_just_fenced(rdb)
    ctx = multiprocessing.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=stampede_worker.run,
                         args=(redis_server.port, KEY, READERS // PROCESSES, lease_wait, ready, start, results))
             for _ in range(PROCESSES)]
    for pr in procs:
        pr.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        start.set()
        got = [results.get(timeout=60) for _ in procs]
    finally:
        for pr in procs:
            pr.join(30)
            if pr.is_alive():
                pr.kill()
    loads = [g[0] for g in got]
    assert sum(g[1] for g in got) == 0, "readers got the old value or another one"
    assert sum(g[2] for g in got) == 0, "readers failed"
    assert all(n <= 1 for n in loads), f"a process loaded more than once: {loads}"
    if lease_wait > 0:
        assert sum(loads) == 1, f"{sum(loads)} loads in total, want exactly 1 with the lease: {loads}"
    assert sum(loads) >= 1
    c = p.decode(rdb.get(KEY))
    assert c.kind == Kind.VALUE and c.envelope.payload == b"new"


def test_stampede_asyncio(rdb, redis_server):
    """The same with asyncio: 200 tasks over four AsyncClients."""
    hot_key_just_fenced(rdb)

    async def main():
        conns = [aioredis.Redis(port=redis_server.port) for _ in range(PROCESSES)]
        clients = [AsyncClient(r, lease_wait=10) for r in conns]
        loads = [0] * PROCESSES

        def loader(i):
            async def load(obs):
                loads[i] += 1
                await asyncio.sleep(0.05)
                return b"new"
            return load

        got = await asyncio.gather(*[clients[i % PROCESSES].get(KEY, loader(i % PROCESSES)) for i in range(READERS)])
        for c in clients:
            await c.aclose()
        for r in conns:
            await r.close()
        return got, loads

    got, loads = asyncio.run(main())
    assert got == [b"new"] * READERS
    assert sum(loads) == 1, loads

"""Redis Cluster: three throwaway masters (redis-server --cluster-enabled,
joined with redis-cli --cluster create), sync and asyncio clients."""

import asyncio
import time

import pytest

from walbust_cache import AsyncClient, Client, Event, Kind, L1Options
from walbust_cache import protocol as p
from walbust_cache.scripts import FENCE

from conftest import eventually

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(redis_cluster):
    redis_cluster.flush()
    rc = redis_cluster.client()
    yield rc
    rc.close()


def test_cluster_fill_fence_versioned_stale(cluster, redis_cluster):
    keys = [f"product:{i}" for i in range(30)]  # spread over the three masters
    slots = {cluster.keyslot(k) for k in keys}
    assert len({cluster.get_node_from_key(k).port for k in keys}) == 3, slots
    with Client(cluster, stale_fallback=True) as c:
        calls = []

        def load(obs):
            calls.append(obs)
            return b"row"

        for k in keys:
            assert c.get(k, load) == b"row"
            assert p.decode(cluster.get(k)).kind == Kind.VALUE
        for k in keys:
            assert c.get(k, load) == b"row"
        assert len(calls) == len(keys)
        # walbust fences on each master; the next reader sees the LSN.
        for k in keys:
            FENCE.run(cluster, k, "321", p.new_token(), 60_000)
        calls.clear()
        for k in keys:
            assert c.get(k, load) == b"row"
        assert len(calls) == len(keys) and all(o.fence_lsn == 321 for o in calls)
        # The application's own fence.
        c.fence(*keys[:5])
        assert all(p.decode(cluster.get(k)).kind == Kind.TOMBSTONE for k in keys[:5])

        # Versioned reads: the version key and the value may be on
        # different masters.
        assert c.get_versioned("item:1", lambda o: b"v0") == b"v0"
        cluster.set("item:1:version", "500")
        assert c.get_versioned("item:1", lambda o: b"v500") == b"v500"
        assert p.decode(cluster.get("item:1:v500")).envelope.payload == b"v500"

        # Stale fallback with a hash tag: key and stale copy share a slot,
        # as walbust's stale action needs to be one script.
        assert c.get("{md}", lambda o: b"good") == b"good"
        cluster.rename("{md}", "{md}:stale")

        def down(obs):
            raise OSError("database down")

        assert c.get("{md}", down) == b"good"


def test_cluster_l1_events(cluster, redis_cluster):
    with Client(cluster, l1=L1Options(ttl=3600, ping_interval=0.1)) as c:
        eventually(lambda: c.l1.ready, 10, "the L1 subscribed")
        n = []
        assert c.get("product:1", lambda o: n.append(1) or b"v1") == b"v1"
        assert c.get("product:1", lambda o: n.append(1) or b"v1") == b"v1"
        assert c.stats().l1_hits == 1
        # walbust publishes through whichever node; every node delivers.
        for node in redis_cluster.nodes:
            c.get("product:1", lambda o: b"v1")
            assert c.l1.get("product:1") is not None
            node.client().publish("walbust:events", Event(1, ["product:1"]).marshal())
            eventually(lambda: c.l1.get("product:1") is None, what=f"dropped by an event via {node.port}")
        # Kill the subscription wherever it is.
        c.get("product:1", lambda o: b"v1")
        resets = c.stats().l1_resets
        for node in redis_cluster.nodes:
            node.client().client_kill_filter(_type="pubsub")
        eventually(lambda: c.stats().l1_resets >= resets + 1, what="the drop seen")
        eventually(lambda: c.l1.ready, 10, "subscribed again")
        assert len(c.l1) == 0


def test_cluster_asyncio(cluster, redis_cluster):
    async def main():
        rc = redis_cluster.async_client()
        async with AsyncClient(rc, l1=L1Options(ttl=3600, ping_interval=0.1)) as c:
            deadline = time.monotonic() + 10
            while not c.l1.ready:
                assert time.monotonic() < deadline, "async L1 never subscribed on the cluster"
                await asyncio.sleep(0.01)
            calls = []

            async def load(obs):
                calls.append(obs)
                await asyncio.sleep(0.02)
                return b"row"

            keys = [f"k:{i}" for i in range(12)]
            got = await asyncio.gather(*[c.get(k, load) for k in keys for _ in range(5)])
            assert got == [b"row"] * 60 and len(calls) == 12
            for k in keys:
                FENCE.run(cluster, k, "9", p.new_token(), 60_000)
            cluster.publish("walbust:events", Event(9, keys).marshal())
            deadline = time.monotonic() + 5
            while any(c.l1.get(k) is not None for k in keys):
                assert time.monotonic() < deadline, "the event did not reach the async L1"
                await asyncio.sleep(0.01)
            calls.clear()
            await asyncio.gather(*[c.get(k, load) for k in keys])
            assert len(calls) == 12 and all(o.fence_lsn == 9 for o in calls)
            assert await c.get_versioned("item:2", load) == b"row"
            await c.fence("k:1")
            assert p.decode(cluster.get("k:1")).kind == Kind.TOMBSTONE
        await rc.close()

    asyncio.run(main())

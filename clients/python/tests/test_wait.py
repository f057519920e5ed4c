"""wait_applied (read your writes) against a real redis-server: the test
plays walbust, raising the settled position (and publishing an event)
while a waiter waits. The twin of Go's TestWaitApplied."""

import asyncio
import threading
import time

import pytest
import redis.asyncio as aioredis

from walbust_cache import AsyncClient, BadPosition, Client, Event, WaitOptions
from walbust_cache import protocol as p

SLOT = "waitslot"
KEY = p.settled_key(SLOT)


def settle(r, lsn, channel=None):
    """What walbust does after a batch: raise the position, then publish."""
    r.set(KEY, p.format_pg_lsn(lsn))
    if channel is not None:
        r.publish(channel, Event(lsn=lsn, keys=["k"]).marshal())


# (name, channel, publish, max_poll): with max_poll 10s an event must end
# the wait, since the poll, backing off, is a second away by then.
CASES = [
    ("event", "test:events", True, 10.0),
    ("poll, no event", "test:events", False, 0.02),
    ("poll, no channel", "-", False, 0.02),
]


@pytest.mark.parametrize("name,channel,publish,max_poll", CASES, ids=[c[0] for c in CASES])
def test_wait_applied(rdb, new_redis, name, channel, publish, max_poll):
    with Client(new_redis(), wait=WaitOptions(slot=SLOT, channel=channel, max_poll=max_poll)) as c:
        settle(rdb, 0x100)
        c.wait_applied(0x100, timeout=2)
        c.wait_applied("0/80", timeout=0)  # known to be past it: at once
        results = []
        waiters = [threading.Thread(target=lambda lsn=lsn: results.append(c.wait_applied(lsn, timeout=5)))
                   for lsn in (0x200, 0x240, "0/250")]
        for t in waiters:
            t.start()
        time.sleep(1.1 if publish else 0.05)
        assert not results, "returned before the position reached 0/200"
        start = time.monotonic()
        settle(rdb, 0x250, channel if publish else None)
        for t in waiters:
            t.join(5)
        took = time.monotonic() - start
        assert results == [None] * 3, "wait_applied did not return after the position passed it"
        if publish:
            assert took < 0.5, f"the event did not end the wait ({took:.3f}s)"
        with pytest.raises(TimeoutError):
            c.wait_applied(0x300, timeout=0.1)
        assert c.applied() == 0x250


def test_wait_applied_page_boundary_and_errors(rdb, new_redis):
    with Client(new_redis(), wait=WaitOptions(slot=SLOT, channel="-")) as c:
        assert c.applied() is None
        settle(rdb, 0x1_0000_2000)
        # pg_current_wal_insert_lsn() past the next page's header: the boundary.
        c.wait_applied("1/2018", timeout=1)
        with pytest.raises(TimeoutError):
            c.wait_applied("1/2019", timeout=0.05)
        rdb.set(KEY, "garbage")
        with pytest.raises(BadPosition):
            c.wait_applied(0x2_0000_0000, timeout=0.1)
        with pytest.raises(BadPosition):
            c.applied()
    with pytest.raises(RuntimeError):
        c.wait_applied(0x2_0000_0000, timeout=0.1)


def test_wait_applied_unblocked_by_close(rdb, new_redis):
    c = Client(new_redis(), wait=WaitOptions(slot=SLOT, channel="-"))
    errs = []

    def wait():
        try:
            c.wait_applied(0x900)
        except Exception as e:
            errs.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    c.close()
    t.join(3)
    assert len(errs) == 1 and isinstance(errs[0], RuntimeError)


@pytest.mark.parametrize("name,channel,publish,max_poll", CASES, ids=[c[0] for c in CASES])
def test_async_wait_applied(rdb, redis_server, name, channel, publish, max_poll):
    async def main():
        r = aioredis.Redis(port=redis_server.port)
        async with AsyncClient(r, wait=WaitOptions(slot=SLOT, channel=channel, max_poll=max_poll)) as c:
            settle(rdb, 0x100)
            await c.wait_applied(0x100, timeout=2)
            waits = [asyncio.ensure_future(c.wait_applied(lsn, timeout=5)) for lsn in (0x200, 0x240, "0/250")]
            await asyncio.sleep(1.1 if publish else 0.05)
            assert not any(w.done() for w in waits), "returned before the position reached 0/200"
            start = time.monotonic()
            settle(rdb, 0x250, channel if publish else None)
            assert await asyncio.gather(*waits) == [None] * 3
            took = time.monotonic() - start
            if publish:
                assert took < 0.5, f"the event did not end the wait ({took:.3f}s)"
            with pytest.raises(TimeoutError):
                await c.wait_applied(0x300, timeout=0.1)
            assert await c.applied() == 0x250
            settle(rdb, 0x1_0000_2000)
            await c.wait_applied("1/2018", timeout=1)
            rdb.set(KEY, "garbage")
            with pytest.raises(BadPosition):
                await c.wait_applied(0x2_0000_0000, timeout=0.1)
            # A cancelled waiter leaves the others alone.
            w = asyncio.ensure_future(c.wait_applied(0x3_0000_0000))
            await asyncio.sleep(0.02)
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w
            assert not c._wpending
            pending = asyncio.ensure_future(c.wait_applied(0x3_0000_0000))
            await asyncio.sleep(0.02)
        with pytest.raises(RuntimeError):
            await pending
        await r.close()

    asyncio.run(main())

"""The sync client against a real redis-server: the twins of cacheaside's
client_test.go and l1_test.go, plus the stale fallback and versioned reads."""

import threading
import time

import pytest

from walbust_cache import Client, Event, Kind, L1Options, NotFound, Observation, Options
from walbust_cache import protocol as p
from walbust_cache.scripts import FENCE

from conftest import eventually


class Loader:
    """Counts calls and answers what ``next`` says."""

    def __init__(self, value=b"v", next=None):
        self.calls = 0
        self.obs = None
        self.next = next or (lambda n: value)
        self.lock = threading.Lock()

    def __call__(self, obs: Observation):
        with self.lock:
            self.calls += 1
            n = self.calls
            self.obs = obs
        return self.next(n)


def walbust_fence(r, key, lsn, ttl_s):
    """What walbust's fence action does to key."""
    FENCE.run(r, key, str(lsn), p.new_token(), int(ttl_s * 1000))


def stored(r, key):
    return p.decode(r.get(key)), r.pttl(key)


@pytest.fixture
def client_factory(rdb):
    made = []

    def make(r=None, **kw):
        c = Client(r or rdb, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_get_miss_fill_hit(rdb, client_factory):
    c = client_factory(ttl=3600, jitter=0.1)
    l = Loader(b"v1")
    assert c.get("product:1", l) == b"v1"
    assert l.obs.fence_lsn == 0
    content, ttl = stored(rdb, "product:1")
    assert content.kind == Kind.VALUE and content.envelope.payload == b"v1"
    assert 54 * 60_000 <= ttl <= 66 * 60_000
    soft = content.envelope.soft_expiry_ms - p.now_ms()
    assert 53 * 60_000 <= soft <= 66 * 60_000
    for _ in range(3):
        assert c.get("product:1", l) == b"v1"
    assert l.calls == 1
    st = c.stats()
    assert (st.hits, st.misses, st.fills) == (3, 1, 1)


def test_get_after_fence_sees_lsn(rdb, client_factory):
    c = client_factory()
    walbust_fence(rdb, "product:1", 987654321, 60)
    l = Loader(b"fresh")
    assert c.get("product:1", l) == b"fresh"
    assert l.obs.fence_lsn == 987654321
    assert not l.obs.replica_caught_up(987654321) and l.obs.replica_caught_up(987654322)


def test_fence_during_load_fails_the_fill(rdb, client_factory):
    c = client_factory()

    def nxt(n):
        if n == 1:
            walbust_fence(rdb, "product:1", 500, 60)  # the write commits after this read
            return b"old"
        return b"new"

    l = Loader(next=nxt)
    assert c.get("product:1", l) == b"new"
    content, _ = stored(rdb, "product:1")
    assert content.kind == Kind.VALUE and content.envelope.payload == b"new"
    st = c.stats()
    assert (st.loads, st.fills_lost, st.fills) == (2, 1, 1)
    assert l.obs.fence_lsn == 500


def test_fence_storm(rdb, client_factory):
    c = client_factory()

    def nxt(n):
        walbust_fence(rdb, "k", n, 60)
        return b"v"

    l = Loader(next=nxt)
    assert c.get("k", l) == b"v"
    assert l.calls == 3
    content, _ = stored(rdb, "k")
    assert content.kind == Kind.TOMBSTONE and content.fence.lsn == 3


def test_fill_skipped_when_load_outlasts_lease(rdb, client_factory):
    c = client_factory(fill_margin=0.25)
    walbust_fence(rdb, "k", 9, 0.2)
    assert c.get("k", Loader(b"v")) == b"v"
    st = c.stats()
    assert (st.fills_skipped, st.fills) == (1, 0)
    assert stored(rdb, "k")[0].kind != Kind.VALUE


def test_negative_caching(rdb, client_factory):
    c = client_factory(negative_ttl=20, jitter=-1)

    def missing(n):
        raise NotFound()

    l = Loader(next=missing)
    for _ in range(2):
        with pytest.raises(NotFound):
            c.get("user-by-email:x", l)
    assert l.calls == 1
    content, ttl = stored(rdb, "user-by-email:x")
    assert content.kind == Kind.VALUE and content.envelope.not_found
    assert 19_000 <= ttl <= 20_000
    # The row is inserted: walbust renders the key from the new row and
    # fences it; the next get finds the row.
    walbust_fence(rdb, "user-by-email:x", 10, 60)
    l.next = lambda n: b"user 1"
    assert c.get("user-by-email:x", l) == b"user 1"

    # negative_ttl None: not-found is not cached.
    c2 = client_factory(negative_ttl=None)
    l2 = Loader(next=missing)
    for _ in range(2):
        with pytest.raises(NotFound):
            c2.get("nothing", l2)
    assert l2.calls == 2
    assert stored(rdb, "nothing")[0].kind == Kind.TOMBSTONE  # the released lease


def test_load_error_releases_lease(rdb, client_factory):
    c = client_factory(lease_wait=5)
    walbust_fence(rdb, "k", 77, 60)

    class DatabaseDown(Exception):
        pass

    def boom(n):
        raise DatabaseDown("database down")

    l = Loader(next=boom)
    with pytest.raises(DatabaseDown):
        c.get("k", l)
    content, ttl = stored(rdb, "k")
    assert content.kind == Kind.TOMBSTONE and content.fence.lsn == 77 and ttl >= 55_000
    start = time.monotonic()
    l.next = lambda n: b"ok"
    assert c.get("k", l) == b"ok"
    assert c.stats().lease_waits == 0 and time.monotonic() - start < 2


def test_lease_of_dead_reader_is_taken_over(rdb, client_factory):
    rdb.set("k", p.lease(5, p.new_token()), px=30_000)
    c = client_factory(lease_wait=0.2)
    l = Loader(b"v")
    start = time.monotonic()
    assert c.get("k", l) == b"v"
    assert time.monotonic() - start >= 0.2
    st = c.stats()
    assert (st.lease_waits, st.fills) == (1, 1)
    assert l.obs.fence_lsn == 5
    assert stored(rdb, "k")[0].kind == Kind.VALUE


def test_lease_waiter_gets_owners_value(rdb, new_redis, client_factory):
    owner = client_factory(new_redis())
    waiter = client_factory(new_redis(), lease_wait=10)
    release = threading.Event()

    def owner_next(n):
        release.wait(10)
        return b"owned"

    t = threading.Thread(target=lambda: owner.get("k", Loader(next=owner_next)))
    t.start()
    eventually(lambda: stored(rdb, "k")[0].kind == Kind.LEASE, what="the owner's lease")
    got = []
    wl = Loader(b"waiter")
    w = threading.Thread(target=lambda: got.append(waiter.get("k", wl)))
    w.start()
    eventually(lambda: waiter.stats().lease_waits == 1, what="the waiter waiting")
    release.set()
    t.join(10)
    w.join(10)
    assert got == [b"owned"] and wl.calls == 0


def test_foreign_value_is_a_miss(rdb, client_factory):
    import redis

    c = client_factory()
    for legacy in [b"legacy-json", b"wbval:1:garbage"]:
        rdb.set("k", legacy, ex=3600)
        assert c.get("k", Loader(b"v")) == b"v"
        assert stored(rdb, "k")[0].kind == Kind.VALUE
    rdb.hset("h", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        c.get("h", Loader(b"v"))


def test_in_process_callers_share_one_load(rdb, client_factory):
    c = client_factory()
    gate = threading.Event()

    def slow(n):
        gate.wait(5)
        return b"v"

    l = Loader(next=slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(c.get("k", l))) for _ in range(50)]
    for t in threads:
        t.start()
    eventually(lambda: l.calls == 1, what="the load")
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(10)
    assert got == [b"v"] * 50 and l.calls == 1


def test_stale_while_revalidate(rdb, new_redis, client_factory):
    opts = Options(ttl=3600, stale_while_revalidate=3600)
    a, b = client_factory(new_redis(), options=opts), client_factory(new_redis(), options=opts)
    stale = p.Envelope(p.now_ms() - 1000, p.new_token(), b"v1").encode()
    rdb.set("k", stale, ex=3600)
    release = threading.Event()

    def reload(n):
        release.wait(10)
        return b"v2"

    l = Loader(next=reload)
    for c in (a, b, a, b):
        assert c.get("k", l) == b"v1"  # the stale value, at once
    release.set()
    eventually(lambda: stored(rdb, "k")[0].envelope is not None and stored(rdb, "k")[0].envelope.payload == b"v2",
               what="the revalidated value in Redis")
    assert l.calls == 1  # one reload across two processes
    assert b.get("k", l) == b"v2"
    content, ttl = stored(rdb, "k")
    assert not content.envelope.is_stale(p.now_ms() + 50 * 60_000) and ttl >= 100 * 60_000

    # A fence during a revalidation wins.
    rdb.set("k2", stale, ex=3600)

    def fenced(n):
        walbust_fence(rdb, "k2", 3, 60)
        return b"old"

    l2 = Loader(next=fenced)
    assert a.get("k2", l2) == b"v1"
    eventually(lambda: l2.calls == 1, what="revalidation")
    a.close()  # waits for the revalidation
    assert stored(rdb, "k2")[0].kind == Kind.TOMBSTONE


def stale_rollover(r, key, stale_key, ttl_ms=600_000):
    """What walbust's stale action does (invalidator/lua/stale.lua)."""
    r.eval("if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
           "redis.call('RENAME', KEYS[1], KEYS[2]) redis.call('PEXPIRE', KEYS[2], ARGV[1]) return 1",
           2, key, stale_key, ttl_ms)


def test_stale_fallback(rdb, client_factory):
    c = client_factory(stale_fallback=True)
    assert c.get("master-data", Loader(b"rates v1")) == b"rates v1"
    # The row changes: walbust moves the value to master-data:stale.
    stale_rollover(rdb, "master-data", "master-data:stale")
    assert rdb.get("master-data") is None and rdb.get("master-data:stale") is not None

    class Outage(Exception):
        pass

    def down(n):
        raise Outage("database down")

    l = Loader(next=down)
    assert c.get("master-data", l) == b"rates v1"
    assert c.stats().stale_fallbacks == 1
    # Not written back: the next get tries the database again.
    assert stored(rdb, "master-data")[0].kind != Kind.VALUE
    assert c.get("master-data", l) == b"rates v1"
    assert l.calls == 2
    # Per call off, or no stale copy: the loader's error.
    with pytest.raises(Outage):
        c.get("master-data", l, stale_fallback=False)
    with pytest.raises(Outage):
        c.get("other", l)
    # The database is back: the new value is loaded and cached.
    l.next = lambda n: b"rates v2"
    assert c.get("master-data", l) == b"rates v2"
    assert stored(rdb, "master-data")[0].envelope.payload == b"rates v2"

    # A custom stale_key, off by default.
    c2 = client_factory(stale_key="stale:{key}")
    c2.get("md2", Loader(b"x"))
    stale_rollover(rdb, "md2", "stale:md2")
    with pytest.raises(Outage):
        c2.get("md2", l.__class__(next=down))
    assert c2.get("md2", Loader(next=down), stale_fallback=True) == b"x"


def bump(r, version_key, lsn):
    """What walbust's bump action does (invalidator/lua/bump.lua)."""
    r.eval("local cur = redis.call('GET', KEYS[1]) local new = ARGV[1] "
           "if cur and (#cur > #new or (#cur == #new and cur >= new)) then return 0 end "
           "redis.call('SET', KEYS[1], new) return 1", 1, version_key, str(lsn))


def test_versioned_read(rdb, client_factory):
    c = client_factory()
    l = Loader(b"p v0")
    assert c.get_versioned("product:42", l) == b"p v0"
    assert stored(rdb, "product:42:v0")[0].envelope.payload == b"p v0"
    assert c.get_versioned("product:42", l) == b"p v0" and l.calls == 1
    # A write: walbust bumps the version to the commit LSN.
    bump(rdb, "product:42:version", 1234)
    l.next = lambda n: b"p v1"
    assert c.get_versioned("product:42", l) == b"p v1"
    assert l.obs.fence_lsn == 1234  # a replica must be past the bump's commit
    assert stored(rdb, "product:42:v1234")[0].envelope.payload == b"p v1"
    assert stored(rdb, "product:42:v0")[0].envelope.payload == b"p v0"  # ages out by TTL
    assert c.get_versioned("product:42", l) == b"p v1" and l.calls == 2
    # Custom formats.
    c2 = client_factory(version_key="ver:{key}", versioned_key="{key}@{version}")
    bump(rdb, "ver:x", 7)
    assert c2.get_versioned("x", Loader(b"x7")) == b"x7"
    assert rdb.exists("x@7")


@pytest.fixture
def own_server(workdir):
    from conftest import RedisServer

    srv = RedisServer(workdir / f"own-{time.monotonic_ns()}")
    yield srv
    srv.stop()


def wait_ready(c):
    eventually(lambda: c.l1.ready, timeout=10, what="the L1 subscribed")


def test_l1_with_events(own_server, client_factory):
    r = own_server.client()
    c = client_factory(r, l1=L1Options(ttl=3600, ping_interval=0.1))
    wait_ready(c)
    l = Loader(b"v1")
    for _ in range(3):
        assert c.get("product:1", l) == b"v1"
    assert c.stats().l1_hits == 2 and l.calls == 1
    # walbust fences the key, then publishes the batch.
    walbust_fence(r, "product:1", 10, 60)
    r.publish("walbust:events", Event(10, ["product:1"]).marshal())
    eventually(lambda: c.l1.get("product:1") is None, what="product:1 dropped from the L1")
    l.next = lambda n: b"v2"
    assert c.get("product:1", l) == b"v2"
    # Patterns.
    c.get("search:users:bob:1", Loader(b"page"))
    c.get("search:users:ann:1", Loader(b"page"))
    r.publish("walbust:events", Event(11, patterns=["search:users:bob:*"]).marshal())
    eventually(lambda: c.l1.get("search:users:bob:1") is None, what="pattern match dropped")
    assert c.l1.get("search:users:ann:1") is not None
    # An unreadable event empties the L1.
    r.publish("walbust:events", b"not json")
    eventually(lambda: len(c.l1) == 0, what="L1 emptied by a bad event")
    # The application's own fence drops the key too.
    c.get("product:1", l)
    c.fence("product:1")
    assert c.l1.get("product:1") is None

    # The subscription is killed: the L1 empties itself and serves nothing
    # until it has subscribed again.
    c.get("product:1", l)
    assert len(c.l1) == 1
    resets = c.stats().l1_resets
    assert r.client_kill_filter(_type="pubsub") >= 1
    eventually(lambda: c.stats().l1_resets >= resets + 1, what="the drop seen")
    wait_ready(c)
    assert len(c.l1) == 0
    assert c.get("product:1", l) == b"v2"

    # The server dies: the L1 is off and empty, and comes back with it.
    c.get("product:1", l)
    assert len(c.l1) == 1
    own_server.stop()
    eventually(lambda: c.l1.snapshot() == (False, 0), what="L1 emptied and off after the server died")
    own_server.start()
    wait_ready(c)
    assert len(c.l1) == 0
    assert c.get("product:1", l) in (b"v2",)


def test_l1_refuses_value_read_before_its_event():
    from walbust_cache.l1 import L1, RECENT_EVENTS

    l = L1(3, 60)
    soft = p.now_ms() + 3_600_000
    l.put(l.mark(), "a", b"1", False, soft)
    assert l.get("a") is None  # not subscribed
    l.reset(True)
    l.put(l.mark(), "a", b"1", False, soft)
    assert l.get("a").payload == b"1"
    m = l.mark()
    l.apply(Event(keys=["b"]))
    l.put(m, "b", b"old", False, soft)
    assert l.get("b") is None
    l.put(m, "c", b"3", False, soft)
    assert l.get("c") is not None
    m = l.mark()
    l.apply(Event(patterns=["user:*"]))
    l.put(m, "user:1", b"old", False, soft)
    assert l.get("user:1") is None
    m = l.mark()
    for _ in range(RECENT_EVENTS):
        l.apply(Event(keys=["x"]))
    l.put(m, "d", b"4", False, soft)
    assert l.get("d") is None
    l.put(l.mark(), "soon", b"s", False, p.now_ms() + 10)
    assert l.get("soon", time.monotonic() + 0.02) is None
    assert l.get("c", time.monotonic() + 120) is None
    for k in "pqrs":
        l.put(l.mark(), k, b"k", False, soft)
    assert len(l) <= 3
    m = l.mark()
    l.reset(True)
    l.put(m, "late", b"l", False, soft)
    assert len(l) == 0


def test_decode_responses_is_refused(redis_server):
    with pytest.raises(ValueError, match="decode_responses"):
        Client(redis_server.client(decode_responses=True))

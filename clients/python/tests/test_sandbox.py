"""walbust itself, end to end, through cmd/walbust-sandbox (throwaway
Postgres + Redis + walbust). Skipped unless the sandbox's settings are
given: WALBUST_SANDBOX_ENV_FILE (the file --env-file writes) or the
WALBUST_SANDBOX_* variables (WALBUST_SANDBOX_POSTGRES_URL,
WALBUST_SANDBOX_REDIS_URL or, under --redis cluster,
WALBUST_SANDBOX_REDIS_CLUSTER, WALBUST_SANDBOX_EVENTS_CHANNEL). `make
test-python` runs it twice: with a standalone Redis and with a Cluster.

The sandbox serves the repository's schema.sql and deps.yaml: products rows
are cached under product:{id}. Writes go through psql (no Python Postgres
driver: the client depends on redis-py only)."""

import shutil
import subprocess
import time

import pytest
import redis

from walbust_cache import Client, Kind, L1Options, WaitOptions
from walbust_cache import protocol as p

from conftest import eventually, sandbox_redis

pytestmark = pytest.mark.sandbox


def psql(url, sql):
    exe = shutil.which("psql")
    if exe is None:
        pytest.skip("psql not installed (Debian: postgresql-client)")
    out = subprocess.run([exe, url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr}")
    return out.stdout.strip()


def wait_applied(r, slot, lsn):
    """Waits until walbust's applied watermark for slot reaches lsn."""
    def applied():
        v = r.get(p.applied_key(slot))
        return v is not None and p.parse_pg_lsn(v.decode()) >= lsn
    eventually(applied, 15, f"walbust applied up to {p.format_pg_lsn(lsn)}")


def test_walbust_invalidates_what_python_cached(sandbox):
    url = sandbox.get("WALBUST_SANDBOX_POSTGRES_URL")
    if not url:
        pytest.skip("the sandbox gave no WALBUST_SANDBOX_POSTGRES_URL")
    channel = sandbox.get("WALBUST_SANDBOX_EVENTS_CHANNEL", p.DEFAULT_EVENTS_CHANNEL)
    r = sandbox_redis(sandbox)
    mode = "cluster" if isinstance(r, redis.RedisCluster) else "standalone"
    assert mode == sandbox.get("WALBUST_SANDBOX_REDIS_MODE", mode)
    pid = 900000 + int(time.time()) % 90000
    key = sandbox.get("WALBUST_SANDBOX_PRODUCT_KEY", "product:{id}").replace("{id}", str(pid))
    psql(url, "INSERT INTO categories (id, name) VALUES (900001, 'py') ON CONFLICT DO NOTHING")
    psql(url, f"INSERT INTO products (id, category_id, name, price_cents) VALUES ({pid}, 900001, 'py', 100)")
    # The inserts' own invalidations (and their events) must be behind us
    # before caching: one arriving late would clear what the test caches.
    wait_applied(r, sandbox.get("WALBUST_SANDBOX_SLOT", "walbust_sandbox"), p.parse_pg_lsn(psql(url, "SELECT pg_current_wal_insert_lsn()")))

    def load(obs):
        return psql(url, f"SELECT price_cents FROM products WHERE id = {pid}").encode()

    with Client(r, l1=L1Options(channel=channel, ttl=60, ping_interval=0.5)) as c:
        eventually(lambda: c.l1.ready, 10, "subscribed to walbust's events")
        assert c.get(key, load) == b"100"
        assert c.get(key, load) == b"100" and c.stats().l1_hits == 1
        psql(url, f"UPDATE products SET price_cents = 200 WHERE id = {pid}")
        # walbust invalidates the key in Redis and tells the L1.
        eventually(lambda: p.decode(r.get(key)).kind != Kind.VALUE, 15, "walbust invalidated the key")
        eventually(lambda: c.l1.get(key) is None, 15, "the event reached the L1")
        assert c.get(key, load) == b"200"
    psql(url, f"DELETE FROM products WHERE id = {pid}")
    r.close()


def test_read_your_writes(sandbox):
    """After an UPDATE, wait_applied(pg_current_wal_insert_lsn()) and a read
    through the client sees the new value (no waiting for the key to go)."""
    url = sandbox.get("WALBUST_SANDBOX_POSTGRES_URL")
    if not url:
        pytest.skip("the sandbox gave no WALBUST_SANDBOX_POSTGRES_URL")
    channel = sandbox.get("WALBUST_SANDBOX_EVENTS_CHANNEL", p.DEFAULT_EVENTS_CHANNEL)
    slot = sandbox.get("WALBUST_SANDBOX_SLOT", "walbust_sandbox")
    r = sandbox_redis(sandbox)
    pid = 800000 + int(time.time() * 1000) % 90000
    key = sandbox.get("WALBUST_SANDBOX_PRODUCT_KEY", "product:{id}").replace("{id}", str(pid))
    psql(url, "INSERT INTO categories (id, name) VALUES (900001, 'py') ON CONFLICT DO NOTHING")
    psql(url, f"INSERT INTO products (id, category_id, name, price_cents) VALUES ({pid}, 900001, 'py', 100)")

    def load(obs):
        return psql(url, f"SELECT price_cents FROM products WHERE id = {pid}").encode()

    try:
        with Client(r, wait=WaitOptions(slot=slot, channel=channel)) as c:
            c.wait_applied(psql(url, "SELECT pg_current_wal_insert_lsn()"), timeout=15)
            assert c.get(key, load) == b"100"
            for price in (200, 300):
                psql(url, f"UPDATE products SET price_cents = {price} WHERE id = {pid}")
                c.wait_applied(psql(url, "SELECT pg_current_wal_insert_lsn()"), timeout=15)
                assert c.get(key, load) == str(price).encode()
    finally:
        psql(url, f"DELETE FROM products WHERE id = {pid}")
        r.close()

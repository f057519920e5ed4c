// Against a running walbust: cmd/walbust-sandbox starts PostgreSQL, Redis
// and walbust and prints WALBUST_SANDBOX_POSTGRES_URL,
// WALBUST_SANDBOX_REDIS_URL (or, under --redis cluster,
// WALBUST_SANDBOX_REDIS_CLUSTER=host:port,... and
// WALBUST_SANDBOX_REDIS_MODE=cluster) and WALBUST_SANDBOX_EVENTS_CHANNEL;
// `make test-node` runs it under both; with those in
// the environment this test writes rows with the real psql and checks that
// the client, L1 included, sees walbust's invalidations. Without them it is
// skipped (the other tests start their own redis-server, or use the
// sandbox's Redis when WALBUST_SANDBOX_REDIS_URL is set).
//
// It expects the repository's schema.sql (table products) with a deps.yaml
// rule whose keys name the product id, as the demo's `product:{id}` does;
// the key itself is learnt from walbust's event, and the action (delete,
// fence, stale or bump) from what walbust left in Redis.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { Redis, Cluster } from 'ioredis';
import { CacheClient, parseEvent, DEFAULT_EVENTS_CHANNEL } from '../dist/index.js';
import { eventually } from './helpers.mjs';

const run = promisify(execFile);
const PG = process.env.WALBUST_SANDBOX_POSTGRES_URL;
const REDIS = process.env.WALBUST_SANDBOX_REDIS_URL;
const CLUSTER = process.env.WALBUST_SANDBOX_REDIS_CLUSTER;
const MODE = process.env.WALBUST_SANDBOX_REDIS_MODE || (CLUSTER && !REDIS ? 'cluster' : 'standalone');
const HAVE = Boolean(PG && (MODE === 'cluster' ? CLUSTER : REDIS));
// Under clients/with-sandbox a sandbox is up: its test must run, not skip.
if (process.env.WALBUST_SANDBOX_READY === '1' && !HAVE) {
  throw new Error(`the sandbox is ready but gave no ${MODE === 'cluster' ? 'WALBUST_SANDBOX_REDIS_CLUSTER' : 'WALBUST_SANDBOX_REDIS_URL'} (or no WALBUST_SANDBOX_POSTGRES_URL)`);
}

/** A connection to the sandbox's Redis: a Redis, or a Cluster over its nodes. */
function connect() {
  if (MODE !== 'cluster') return new Redis(REDIS);
  const nodes = CLUSTER.split(',').map((a) => {
    const i = a.lastIndexOf(':');
    return { host: a.slice(0, i) || '127.0.0.1', port: Number(a.slice(i + 1)) };
  });
  return new Cluster(nodes);
}
const CHANNEL = process.env.WALBUST_SANDBOX_EVENTS_CHANNEL || DEFAULT_EVENTS_CHANNEL;
const ID = 990001 + Math.floor(Math.random() * 1000);

function psqlBinary() {
  if (process.env.PSQL) return process.env.PSQL;
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    for (const v of readdirSync(base).sort().reverse()) {
      if (existsSync(`${base}/${v}/bin/psql`)) return `${base}/${v}/bin/psql`;
    }
  }
  return 'psql';
}

async function sql(q) {
  const { stdout } = await run(psqlBinary(), ['-X', '-v', 'ON_ERROR_STOP=1', '-At', '-d', PG, '-c', q]);
  return stdout.trim();
}

test(`walbust invalidates what the client cached, in Redis and in the L1 (${MODE} Redis)`, { skip: !HAVE && 'WALBUST_SANDBOX_POSTGRES_URL and WALBUST_SANDBOX_REDIS_URL (or _REDIS_CLUSTER) not set (run under cmd/walbust-sandbox)' }, async (t) => {
  if ((await sql(`SELECT to_regclass('products') IS NOT NULL`)) !== 't') return t.skip('the sandbox has no products table');
  const sub = connect();
  const rdb = connect();
  const c = new CacheClient(connect(), { l1: { channel: CHANNEL, ttl: 60_000 } });
  const events = [];
  try {
    sub.on('message', (ch, msg) => {
      try {
        events.push(parseEvent(msg));
      } catch {}
    });
    await sub.subscribe(CHANNEL);
    await eventually(() => c.l1Ready, 'the L1 subscribed', 10_000);
    const upsert = (price) =>
      sql(`INSERT INTO products (id, category_id, name, price_cents) VALUES (${ID}, NULL, 'walbust-node', ${price})
           ON CONFLICT (id) DO UPDATE SET price_cents = EXCLUDED.price_cents`);
    const keyEvent = async (what) => {
      let found;
      await eventually(() => (found = events.find((e) => e.keys.some((k) => k.includes(String(ID))))), what, 15_000);
      events.length = 0;
      return found.keys.find((k) => k.includes(String(ID)));
    };
    await upsert(100);
    const key = await keyEvent('an event naming the product after the insert');
    t.diagnostic(`walbust's key for product ${ID}: ${key}`);
    const bump = (await rdb.exists(`${key}:version`)) === 1;
    const read = (loader) => (bump ? c.getVersioned(key, loader) : c.get(key, loader));
    const load = async () => (await sql(`SELECT price_cents FROM products WHERE id = ${ID}`)) || null;

    assert.equal((await read(load)).toString(), '100');
    assert.equal((await read(load)).toString(), '100');
    assert.ok(c.stats().l1Hits >= 1, 'served from the L1');

    await upsert(200);
    await keyEvent('an event naming the product after the update');
    await eventually(() => c.l1.get(key, bump) === undefined, 'the L1 dropped the key', 5_000);
    if ((await rdb.exists(`${key}:stale`)) === 1) {
      // action: stale moved the last good value aside: a failed load serves it.
      const down = async () => {
        throw new Error('database down');
      };
      assert.equal((await c.get(key, down, { staleFallback: true })).toString(), '100');
      t.diagnostic('stale fallback served the last good value');
    }
    // The event reached the L1 too, and Redis no longer holds the old value.
    assert.equal((await read(load)).toString(), '200');
    await sql(`DELETE FROM products WHERE id = ${ID}`);
    await keyEvent('an event naming the product after the delete');
    await eventually(() => c.l1.get(key, bump) === undefined, 'the L1 dropped the key', 5_000);
    assert.equal(await read(load), null);
  } finally {
    await c.close();
    c.redis.disconnect();
    sub.disconnect();
    rdb.disconnect();
    await sql(`DELETE FROM products WHERE id = ${ID}`).catch(() => {});
  }
});

test(`read your writes: waitApplied(pg_current_wal_insert_lsn()) after an UPDATE, then a read sees it (${MODE} Redis)`, { skip: !HAVE && 'WALBUST_SANDBOX_POSTGRES_URL and WALBUST_SANDBOX_REDIS_URL (or _REDIS_CLUSTER) not set (run under cmd/walbust-sandbox)' }, async (t) => {
  if ((await sql(`SELECT to_regclass('products') IS NOT NULL`)) !== 't') return t.skip('the sandbox has no products table');
  const id = ID + 2000;
  const key = `product:${id}`;
  const c = new CacheClient(connect(), { wait: { slot: process.env.WALBUST_SANDBOX_SLOT || 'walbust_sandbox', channel: CHANNEL } });
  const load = async () => (await sql(`SELECT price_cents FROM products WHERE id = ${id}`)) || null;
  const write = async (q) => {
    await sql(q);
    await c.waitApplied(await sql('SELECT pg_current_wal_insert_lsn()'), { timeoutMs: 15_000 });
  };
  try {
    await write(`INSERT INTO products (id, category_id, name, price_cents) VALUES (${id}, NULL, 'walbust-node-ryw', 100)`);
    assert.equal((await c.get(key, load)).toString(), '100');
    for (const price of [200, 300]) {
      await write(`UPDATE products SET price_cents = ${price} WHERE id = ${id}`);
      assert.equal((await c.get(key, load)).toString(), String(price));
    }
  } finally {
    await c.close();
    c.redis.disconnect();
    await sql(`DELETE FROM products WHERE id = ${id}`).catch(() => {});
  }
});

// Behaviour against a real redis-server of the test's own: the Go
// client's tests (cacheaside/client_test.go), plus the stale fallback and
// versioned reads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CacheClient, NotFoundError, LoadError, MAX_FILL_ATTEMPTS, decode, encodeEnvelope, lease, newToken } from '../dist/index.js';
import { RUN, startRedis, walbustFence, eventually, counting, sleep } from './helpers.mjs';

let srv;
let rdb;
const clients = [];
const conns = [];

before(async () => {
  srv = await startRedis();
  rdb = srv.client();
});
after(async () => {
  for (const c of clients) await c.close();
  for (const c of conns) c.disconnect();
  rdb.disconnect();
  await srv.stop();
});

/** A CacheClient over a connection of its own (a "process"). */
function client(opts) {
  const conn = srv.client();
  conns.push(conn);
  const c = new CacheClient(conn, opts);
  clients.push(c);
  return c;
}

let seq = 0;
const key = (name) => `${RUN}${++seq}:${name}`;

async function stored(k) {
  const raw = await rdb.getBuffer(k);
  return [decode(raw), await rdb.pttl(k)];
}

const constant = (v) => counting(() => v);

test('miss, fill, hit', async () => {
  const c = client({ ttl: 3_600_000, jitter: 0.1 });
  const k = key('product:1');
  const l = constant('v1');
  const v = await c.get(k, l);
  assert.equal(v.toString(), 'v1');
  assert.equal(l.last.fenceLsn, 0n);
  assert.equal(l.last.revalidation, false);
  const [content, ttl] = await stored(k);
  assert.equal(content.kind, 'value');
  assert.equal(content.envelope.payload.toString(), 'v1');
  assert.ok(ttl >= 54 * 60_000 && ttl <= 66 * 60_000, `TTL ${ttl}`);
  const soft = content.envelope.softExpiry - Date.now();
  assert.ok(soft >= 53 * 60_000 && soft <= 66 * 60_000, `soft expiry in ${soft}`);
  v[0] = 0x58; // the caller's copy
  for (let i = 0; i < 3; i++) assert.equal((await c.get(k, l)).toString(), 'v1');
  assert.equal(l.calls, 1);
  const st = c.stats();
  assert.deepEqual([st.hits, st.misses, st.fills], [3, 1, 1]);
});

test('binary payloads survive byte for byte', async () => {
  const c = client({});
  const k = key('bin');
  const payload = Buffer.from([0x00, 0xff, 0x3a, 0xc3, 0x28, 0x0a]);
  assert.ok((await c.get(k, async () => payload)).equals(payload));
  assert.ok((await c.get(k, async () => 'other')).equals(payload));
});

test('a get after a fence sees its LSN', async () => {
  const c = client({});
  const k = key('product:1');
  await walbustFence(rdb, k, 987654321, 60_000);
  const l = constant('fresh');
  assert.equal((await c.get(k, l)).toString(), 'fresh');
  assert.equal(l.last.fenceLsn, 987654321n);
  assert.ok(!l.last.replicaCaughtUp(987654321n));
  assert.ok(l.last.replicaCaughtUp(987654322n));
});

test('populate race: a fence during the load fails the fill, and the reader loads again', async () => {
  const c = client({});
  const k = key('product:1');
  const l = counting(async (n) => {
    if (n === 1) {
      await walbustFence(rdb, k, 500, 60_000);
      return 'old';
    }
    return 'new';
  });
  assert.equal((await c.get(k, l)).toString(), 'new');
  const [content] = await stored(k);
  assert.equal(content.kind, 'value');
  assert.equal(content.envelope.payload.toString(), 'new');
  const st = c.stats();
  assert.deepEqual([st.loads, st.fillsLost, st.fills], [2, 1, 1]);
  assert.equal(l.last.fenceLsn, 500n);
});

test('fence storm: after MAX_FILL_ATTEMPTS the caller gets the last value, nothing stale is written', async () => {
  const c = client({});
  const k = key('k');
  const l = counting(async (n) => {
    await walbustFence(rdb, k, n, 60_000);
    return 'v';
  });
  assert.equal((await c.get(k, l)).toString(), 'v');
  assert.equal(l.calls, MAX_FILL_ATTEMPTS);
  const [content] = await stored(k);
  assert.equal(content.kind, 'tombstone');
  assert.equal(content.fence.lsn, BigInt(MAX_FILL_ATTEMPTS));
});

test('a load that outlasts the lease is not written back', async () => {
  const c = client({ fillMargin: 250 });
  const k = key('k');
  await walbustFence(rdb, k, 9, 200);
  assert.equal((await c.get(k, constant('v'))).toString(), 'v');
  const st = c.stats();
  assert.deepEqual([st.fillsSkipped, st.fills], [1, 0]);
  assert.notEqual((await stored(k))[0].kind, 'value');
});

test('negative caching, cleared by the insert', async () => {
  const c = client({ negativeTtl: 20_000, jitter: -1 });
  const k = key('user-by-email:x');
  const l = counting(() => null);
  for (let i = 0; i < 2; i++) assert.equal(await c.get(k, l), null);
  assert.equal(l.calls, 1, 'the not-found is cached');
  const [content, ttl] = await stored(k);
  assert.equal(content.kind, 'value');
  assert.equal(content.envelope.notFound, true);
  assert.ok(ttl <= 20_000 && ttl >= 19_000, `TTL ${ttl}`);
  // The row is inserted: walbust renders the key from the new row and fences it.
  await walbustFence(rdb, k, 10, 60_000);
  assert.equal((await c.get(k, async () => 'user 1')).toString(), 'user 1');

  // A NotFoundError works like null; negativeTtl < 0: nothing cached.
  const c2 = client({ negativeTtl: -1 });
  const k2 = key('nothing');
  const l2 = counting(() => {
    throw new NotFoundError();
  });
  for (let i = 0; i < 2; i++) assert.equal(await c2.get(k2, l2), null);
  assert.equal(l2.calls, 2);
  assert.equal((await stored(k2))[0].kind, 'tombstone', 'the released lease');
});

test('a failed load releases its lease as a tombstone of the same LSN', async () => {
  const c = client({ leaseWait: 5_000 });
  const k = key('k');
  await walbustFence(rdb, k, 77, 60_000);
  const boom = new Error('database down');
  await assert.rejects(
    c.get(k, async () => {
      throw boom;
    }),
    (err) => err instanceof LoadError && err.cause === boom && err.message.includes(JSON.stringify(k)),
  );
  const [content, ttl] = await stored(k);
  assert.equal(content.kind, 'tombstone');
  assert.equal(content.fence.lsn, 77n);
  assert.ok(ttl > 55_000);
  const start = Date.now();
  assert.equal((await c.get(k, constant('ok'))).toString(), 'ok');
  assert.equal(c.stats().leaseWaits, 0);
  assert.ok(Date.now() - start < 2_000);
});

test("a dead reader's lease is taken over after leaseWait", async () => {
  const k = key('k');
  await rdb.set(k, lease(5n, newToken()), 'PX', 30_000);
  const c = client({ leaseWait: 200 });
  const l = constant('v');
  const start = Date.now();
  assert.equal((await c.get(k, l)).toString(), 'v');
  assert.ok(Date.now() - start >= 200);
  const st = c.stats();
  assert.deepEqual([st.leaseWaits, st.fills], [1, 1]);
  assert.equal(l.last.fenceLsn, 5n);
  assert.equal((await stored(k))[0].kind, 'value');
});

test("a reader waiting on a lease gets the owner's value without loading", async () => {
  const owner = client({});
  const waiter = client({ leaseWait: 10_000 });
  const k = key('k');
  let release;
  const gate = new Promise((r) => (release = r));
  const done = owner.get(k, async () => {
    await gate;
    return 'owned';
  });
  await eventually(async () => (await stored(k))[0].kind === 'lease', "the owner's lease");
  const wl = constant('waiter');
  const got = waiter.get(k, wl);
  await eventually(() => waiter.stats().leaseWaits === 1, 'the waiter waiting');
  release();
  await done;
  assert.equal((await got).toString(), 'owned');
  assert.equal(wl.calls, 0);
});

test('a foreign value is a miss; another type is an error', async () => {
  const c = client({});
  const k = key('k');
  for (const legacy of ['legacy-json', 'wbval:1:garbage']) {
    await rdb.set(k, legacy, 'PX', 3_600_000);
    assert.equal((await c.get(k, constant('v'))).toString(), 'v');
    assert.equal((await stored(k))[0].kind, 'value');
  }
  const h = key('h');
  await rdb.hset(h, 'f', 'v');
  await assert.rejects(c.get(h, constant('v')), /WRONGTYPE/);
});

test('in one process concurrent gets share one load', async () => {
  const c = client({});
  const k = key('shared');
  const l = counting(async () => {
    await sleep(50);
    return 'v';
  });
  const vs = await Promise.all(Array.from({ length: 50 }, () => c.get(k, l)));
  assert.ok(vs.every((v) => v.toString() === 'v'));
  assert.equal(l.calls, 1);
});

test('stale-while-revalidate: served at once, reloaded once across processes; a fence wins', async () => {
  const opts = { ttl: 3_600_000, staleWhileRevalidate: 3_600_000 };
  const a = client(opts);
  const b = client(opts);
  const k = key('k');
  const stale = encodeEnvelope({ softExpiry: Date.now() - 1000, nonce: newToken(), notFound: false, payload: Buffer.from('v1') });
  await rdb.set(k, stale, 'PX', 3_600_000);
  let release;
  const gate = new Promise((r) => (release = r));
  const l = counting(async (n, ctx) => {
    assert.equal(ctx.revalidation, true);
    await gate;
    return 'v2';
  });
  for (const c of [a, b, a, b]) assert.equal((await c.get(k, l)).toString(), 'v1');
  release();
  await eventually(async () => {
    const [c] = await stored(k);
    return c.kind === 'value' && c.envelope.payload.toString() === 'v2';
  }, 'the revalidated value in Redis');
  assert.equal(l.calls, 1, 'one reload across two processes');
  assert.equal((await b.get(k, l)).toString(), 'v2');
  const [content, ttl] = await stored(k);
  assert.ok(content.envelope.softExpiry > Date.now() + 50 * 60_000);
  assert.ok(ttl > 100 * 60_000, `TTL ${ttl}`);
  assert.ok(a.stats().staleServed + b.stats().staleServed >= 1);

  // A fence during a revalidation wins.
  const k2 = key('k2');
  await rdb.set(k2, stale, 'PX', 3_600_000);
  const l2 = counting(async () => {
    await walbustFence(rdb, k2, 3, 60_000);
    return 'old';
  });
  await a.get(k2, l2);
  await a.close(); // waits for the revalidation
  assert.equal(l2.calls, 1);
  assert.equal((await stored(k2))[0].kind, 'tombstone');
});

test("AbortSignal: a caller's signal ends its wait, the shared load goes on", async () => {
  const k = key('k');
  await rdb.set(k, lease(0n, newToken()), 'PX', 60_000);
  const c = client({ leaseWait: 60_000 });
  const start = Date.now();
  await assert.rejects(c.get(k, constant('v'), { signal: AbortSignal.timeout(100) }), (err) => err.name === 'TimeoutError');
  assert.ok(Date.now() - start < 1_000);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(c.get(k, constant('v'), { signal: ac.signal }), (err) => err.name === 'AbortError');

  // Two callers share a load; one gives up, the other gets the value.
  const k2 = key('k2');
  const l = counting(async () => {
    await sleep(200);
    return 'v';
  });
  const ac2 = new AbortController();
  const first = c.get(k2, l, { signal: ac2.signal });
  const second = c.get(k2, l);
  await sleep(20);
  ac2.abort();
  await assert.rejects(first, (err) => err.name === 'AbortError');
  assert.equal((await second).toString(), 'v');
  assert.equal(l.calls, 1);
});

test('loadTimeout aborts the loader signal and bounds a load that ignores it', async () => {
  const c = client({ loadTimeout: 100, leaseWait: -1 });
  const k = key('slow');
  let aborted = false;
  await assert.rejects(
    c.get(k, async ({ signal }) => {
      signal.addEventListener('abort', () => (aborted = true));
      await sleep(1_000);
      return 'late';
    }),
    LoadError,
  );
  assert.ok(aborted);
});

test("the stale action's fallback: a failed load serves {key}:stale", async () => {
  const c = client({});
  const k = key('master-data');
  // A good value, then walbust's stale action (RENAME to {key}:stale with stale_ttl).
  assert.equal((await c.get(k, constant('good'))).toString(), 'good');
  await rdb.rename(k, `${k}:stale`);
  await rdb.pexpire(`${k}:stale`, 600_000);
  const down = counting(async () => {
    throw new Error('database down');
  });
  assert.equal((await c.get(k, down, { staleFallback: true })).toString(), 'good');
  assert.equal(c.stats().staleFallbacks, 1);
  // Without the option the error stands; with no stale copy too.
  await assert.rejects(c.get(k, down), LoadError);
  await assert.rejects(c.get(key('none'), down, { staleFallback: true }), LoadError);
  // The database is back: the live key is filled again.
  assert.equal((await c.get(k, constant('fresh'), { staleFallback: true })).toString(), 'fresh');
  assert.equal((await stored(k))[0].envelope.payload.toString(), 'fresh');
});

test("versioned reads for the bump action", async () => {
  const c = client({});
  const k = key('product:42');
  const l = counting((n, ctx) => `v${n}@${ctx.version}`);
  assert.equal((await c.getVersioned(k, l)).toString(), 'v1@0');
  assert.equal((await c.getVersioned(k, l)).toString(), 'v1@0');
  assert.equal((await stored(`${k}:v0`))[0].kind, 'value');
  // walbust's bump: the version key becomes the commit LSN.
  await rdb.set(`${k}:version`, '97500059720');
  assert.equal((await c.getVersioned(k, l)).toString(), 'v2@97500059720');
  assert.equal((await stored(`${k}:v97500059720`))[0].envelope.payload.toString(), 'v2@97500059720');
  assert.equal(l.calls, 2);
  await rdb.set(`${k}:version`, 'junk');
  await assert.rejects(c.getVersioned(k, l), /not a version/);
});

test('fence() writes tombstones like walbust', async () => {
  const c = client({});
  const k = key('k');
  await c.get(k, constant('v'));
  await c.fence(k);
  const [content, ttl] = await stored(k);
  assert.equal(content.kind, 'tombstone');
  assert.equal(content.fence.lsn, 0n);
  assert.ok(ttl > 55_000 && ttl <= 60_000);
  assert.equal((await c.get(k, constant('v2'))).toString(), 'v2');
});

test('close() twice is fine; constructor checks', async () => {
  const c = client({});
  await c.close();
  await c.close();
  assert.throws(() => new CacheClient(null), TypeError);
  assert.throws(() => new CacheClient(rdb, { jitter: 2 }), RangeError);
});

// Redis Cluster: three masters made by redis-cli --cluster create. The
// scripts run by EVALSHA on the node owning each key (NOSCRIPT falls back
// to EVAL there), and the L1 subscribes on one node: classic PUBLISH on
// any node reaches it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CacheClient, NoHashTagError, decode, protocol } from '../dist/index.js';
import { startCluster, walbustFence, eventually, counting, sleep, checkRefreshedStory } from './helpers.mjs';

let cl;
let rdb;
const started = Date.now();
before(async () => {
  cl = await startCluster();
  rdb = cl.client();
  await rdb.ping();
});
after(async () => {
  rdb?.disconnect();
  await cl?.stop();
});

// Keys that land on different slots, hence on different masters.
const keys = Array.from({ length: 12 }, (_, i) => `product:${i}`);

test('cluster comes up well within a minute', () => {
  assert.ok(Date.now() - started < 60_000);
});

test('cluster: miss, fill, hit, fence and refill on every master', async () => {
  const conn = cl.client();
  const c = new CacheClient(conn, { ttl: 60_000 });
  try {
    for (const k of keys) assert.equal((await c.get(k, () => `${k}=1`)).toString(), `${k}=1`);
    for (const k of keys) assert.equal((await c.get(k, () => 'never')).toString(), `${k}=1`);
    assert.equal(c.stats().hits, keys.length);
    for (const k of keys) await walbustFence(rdb, k, 42, 60_000);
    const l = counting((n, ctx) => `${ctx.fenceLsn}`);
    for (const k of keys) assert.equal((await c.get(k, l)).toString(), '42');
    assert.equal(l.calls, keys.length);
    // The masters own different keys: the scripts ran on each.
    const masters = new Set(await Promise.all(keys.map(async (k) => (await rdb.cluster('KEYSLOT', k)) < 5461 ? 'a' : (await rdb.cluster('KEYSLOT', k)) < 10923 ? 'b' : 'c')));
    assert.equal(masters.size, 3);
    // Scripts flushed on every node: EVALSHA falls back to EVAL.
    for (const node of rdb.nodes('master')) await node.script('FLUSH');
    await c.fence(...keys);
    for (const k of keys) assert.equal(decode(await rdb.getBuffer(k)).kind, 'tombstone');
    for (const k of keys) assert.equal((await c.get(k, () => 'again')).toString(), 'again');
  } finally {
    await c.close();
    conn.disconnect();
  }
});

test('cluster: the lease makes one load across two clients', async () => {
  const a = cl.client();
  const b = cl.client();
  const ca = new CacheClient(a, { leaseWait: 10_000 });
  const cb = new CacheClient(b, { leaseWait: 10_000 });
  try {
    await walbustFence(rdb, 'hot', 7, 60_000);
    const l = counting(async () => {
      await sleep(50);
      return 'new';
    });
    const vs = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? ca : cb).get('hot', l)));
    assert.ok(vs.every((v) => v.toString() === 'new'));
    assert.equal(l.calls, 1);
  } finally {
    await ca.close();
    await cb.close();
    a.disconnect();
    b.disconnect();
  }
});

test('cluster: L1 fed from any node, emptied when its subscription is killed', async () => {
  const conn = cl.client();
  const c = new CacheClient(conn, { l1: { ttl: 60_000, pingInterval: 200 } });
  try {
    await eventually(() => c.l1Ready, 'subscribed', 10_000);
    for (const k of keys) await c.get(k, () => 'l1');
    assert.equal(c.l1.size, keys.length);
    // PUBLISH on every master in turn: each event reaches the subscriber.
    for (const [i, port] of cl.ports.entries()) {
      const node = cl.node(port);
      await node.publish(protocol.DEFAULT_EVENTS_CHANNEL, protocol.formatEvent({ lsn: BigInt(i + 1), keys: [keys[i]] }));
      node.disconnect();
      await eventually(() => c.l1.get(keys[i], false) === undefined, `event published on node ${port}`);
    }
    assert.equal(c.l1.size, keys.length - 3);
    const resets = c.stats().l1Resets;
    let killed = 0;
    for (const port of cl.ports) {
      const node = cl.node(port);
      const list = await node.client('LIST');
      for (const line of list.split('\n').filter((l) => / name=walbust-cache-l1 /.test(l))) {
        await node.client('KILL', 'ID', /id=(\d+)/.exec(line)[1]);
        killed++;
      }
      node.disconnect();
    }
    assert.equal(killed, 1);
    await eventually(() => c.stats().l1Resets > resets, 'reset by the drop');
    assert.equal(c.l1.size, 0);
    await eventually(() => c.l1Ready, 'subscribed again', 10_000);
    await c.get(keys[5], () => 'x');
    assert.ok(c.l1.get(keys[5], false));
  } finally {
    await c.close();
    conn.disconnect();
  }
});

test('cluster: getRefreshed reads a tagged key and its LSN key on their one slot; refuses a key without a tag', async () => {
  const c = new CacheClient(rdb);
  try {
    await checkRefreshedStory(rdb, c, '{product:1}');
    await checkRefreshedStory(rdb, c, 'category:{7}:products');
    await rdb.set('product:1', 'filled');
    await assert.rejects(c.getRefreshed('product:1'), NoHashTagError);
  } finally {
    await c.close();
  }
});

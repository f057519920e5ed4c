// The L1: its bookkeeping (no Redis), then fed by events over a real
// subscription, emptied when the subscription drops (CLIENT KILL).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { L1, RECENT_EVENTS } from '../dist/l1.js';
import { CacheClient, encodeEnvelope, newToken, protocol } from '../dist/index.js';
import { RUN, startRedis, eventually, counting, walbustFence } from './helpers.mjs';

const ev = (o) => ({ lsn: 0n, keys: [], patterns: [], flush: false, ...o });
const HOUR = 3_600_000;

test('L1 bookkeeping', () => {
  const l = new L1(3, 60_000);
  const now = Date.now();
  const put = (m, k, v, soft = now + HOUR) => l.put(m, k, soft, Buffer.from(v), false);
  put(l.mark(), 'a', '1');
  assert.equal(l.get('a', false), undefined, 'an L1 that is not subscribed served an entry');
  l.reset(true);
  put(l.mark(), 'a', '1');
  assert.equal(l.get('a', false).payload.toString(), '1');
  assert.equal(l.get('a', true), undefined, 'a plain entry answered a versioned read');
  // An event between the mark and the put keeps the value out.
  let m = l.mark();
  l.apply(ev({ keys: ['b'] }));
  put(m, 'b', 'old');
  assert.equal(l.get('b', false), undefined);
  put(m, 'c', '3');
  assert.ok(l.get('c', false), 'an event about b kept c out');
  m = l.mark();
  l.apply(ev({ patterns: ['user:*'] }));
  put(m, 'user:1', 'old');
  assert.equal(l.get('user:1', false), undefined);
  // Too many events since the mark: refused.
  m = l.mark();
  for (let i = 0; i < RECENT_EVENTS; i++) l.apply(ev({ keys: ['x'] }));
  put(m, 'd', '4');
  assert.equal(l.get('d', false), undefined);
  // Events drop keys and pattern matches.
  put(l.mark(), 'user:2', 'u');
  l.apply(ev({ keys: ['a'], patterns: ['user:[0-9]'] }));
  assert.equal(l.get('a', false), undefined);
  assert.equal(l.get('user:2', false), undefined);
  assert.ok(l.get('c', false));
  // Expiry: the soft expiry or the L1 TTL, whichever is first.
  put(l.mark(), 'soon', 's', now + 10);
  assert.equal(l.get('soon', false, now + 20), undefined);
  assert.equal(l.get('c', false, now + 120_000), undefined);
  // Bounded.
  for (const k of ['p', 'q', 'r', 's']) put(l.mark(), k, k);
  assert.ok(l.size <= 3);
  // A reset empties it and refuses puts in flight.
  m = l.mark();
  l.reset(true);
  put(m, 'late', 'l');
  assert.equal(l.size, 0);
  // A flush event empties it.
  put(l.mark(), 'e', 'e');
  l.apply(ev({ flush: true }));
  assert.equal(l.size, 0);
});

let srv;
let rdb;
before(async () => {
  srv = await startRedis();
  rdb = srv.client();
});
after(async () => {
  rdb.disconnect();
  await srv.stop();
});

/** Kills the L1's subscriber connections (named walbust-cache-l1) on this server. */
async function killSubscribers(conn) {
  const list = await conn.client('LIST');
  const ids = list
    .split('\n')
    .filter((l) => / name=walbust-cache-l1 /.test(l))
    .map((l) => /id=(\d+)/.exec(l)[1]);
  for (const id of ids) await conn.client('KILL', 'ID', id);
  return ids.length;
}

test('L1 fed by events; emptied when the subscription drops (CLIENT KILL)', async () => {
  const channel = `${RUN}events`;
  const conn = srv.client();
  const c = new CacheClient(conn, { l1: { channel, ttl: HOUR, pingInterval: 100 } });
  try {
    await eventually(() => c.l1Ready, 'the L1 subscribed');
    const k = `${RUN}product:1`;
    const l = counting(() => 'v1');
    for (let i = 0; i < 3; i++) assert.equal((await c.get(k, l)).toString(), 'v1');
    assert.equal(c.stats().l1Hits, 2);
    assert.equal(l.calls, 1);
    // The caller's Buffer is a copy: changing it changes no cache.
    (await c.get(k, l))[0] = 0x58;
    assert.equal((await c.get(k, l)).toString(), 'v1');

    // walbust fences the key, then publishes the batch.
    await walbustFence(rdb, k, 10, 60_000);
    await rdb.publish(channel, protocol.formatEvent({ lsn: 10n, keys: [k] }));
    await eventually(() => c.l1.get(k, false) === undefined, 'the key dropped from the L1');
    assert.equal((await c.get(k, () => 'v2')).toString(), 'v2');

    // Patterns.
    const bob = `${RUN}search:users:bob:1`;
    const ann = `${RUN}search:users:ann:1`;
    await c.get(bob, () => 'page');
    await c.get(ann, () => 'page');
    await rdb.publish(channel, protocol.formatEvent({ lsn: 11n, patterns: [`${RUN}search:users:bob:*`] }));
    await eventually(() => c.l1.get(bob, false) === undefined, 'the pattern match dropped');
    assert.ok(c.l1.get(ann, false), 'a key the pattern does not match was dropped');

    // An unreadable event empties the L1.
    await rdb.publish(channel, 'not json');
    await eventually(() => c.l1.size === 0, 'emptied by a bad event');

    // fence() drops the key from the L1 at once.
    await c.get(k, () => 'x');
    assert.ok(c.l1.get(k, false));
    await c.fence(k);
    assert.equal(c.l1.get(k, false), undefined);

    // The subscription drops: the L1 empties itself and serves nothing
    // until it has subscribed again; then it starts empty.
    const live = `${RUN}live`;
    assert.equal((await c.get(live, () => 'before')).toString(), 'before');
    assert.ok(c.l1.get(live, false));
    // Redis changes without an event (as if it were lost while disconnected).
    await rdb.set(live, encodeEnvelope({ softExpiry: Date.now() + HOUR, nonce: newToken(), notFound: false, payload: Buffer.from('after') }), 'PX', HOUR);
    assert.equal((await c.get(live, () => 'x')).toString(), 'before', 'still served from the L1');
    const resets = c.stats().l1Resets;
    assert.equal(await killSubscribers(rdb), 1);
    await eventually(() => c.stats().l1Resets > resets, 'the L1 reset by the drop');
    assert.equal(c.l1.size, 0);
    assert.equal((await c.get(live, () => 'x')).toString(), 'after', 'read from Redis after the drop');
    await eventually(() => c.l1Ready, 'subscribed again', 10_000);
    assert.equal(c.l1.size, 0, 'empty after resubscribing');
    // And it works again.
    await c.get(live, () => 'x');
    assert.ok(c.l1.get(live, false));
    await rdb.publish(channel, protocol.formatEvent({ lsn: 12n, keys: [live] }));
    await eventually(() => c.l1.get(live, false) === undefined, 'events after resubscribing');
  } finally {
    await c.close();
    conn.disconnect();
  }
});

test('L1 with versioned reads: kept under the base key that events name', async () => {
  const channel = `${RUN}events2`;
  const conn = srv.client();
  const c = new CacheClient(conn, { l1: { channel, ttl: HOUR } });
  try {
    await eventually(() => c.l1Ready, 'the L1 subscribed');
    const k = `${RUN}product:7`;
    const l = counting((n) => `v${n}`);
    assert.equal((await c.getVersioned(k, l)).toString(), 'v1');
    assert.equal((await c.getVersioned(k, l)).toString(), 'v1');
    assert.equal(c.stats().l1Hits, 1);
    // walbust bumps the version and publishes the key.
    await rdb.set(`${k}:version`, '1234');
    await rdb.publish(channel, protocol.formatEvent({ lsn: 1234n, keys: [k] }));
    await eventually(() => c.l1.get(k, true) === undefined, 'dropped by the event');
    assert.equal((await c.getVersioned(k, l)).toString(), 'v2');
  } finally {
    await c.close();
    conn.disconnect();
  }
});

test('L1 detects a dead subscription by ping when the server stops answering', async (t) => {
  const own = await startRedis();
  const conn = own.client();
  conn.on('error', () => {});
  const c = new CacheClient(conn, { l1: { channel: 'walbust:events', pingInterval: 100 } });
  try {
    await eventually(() => c.l1Ready, 'subscribed');
    await c.get('k', () => 'v');
    assert.equal(c.l1.size, 1);
    own.pause(); // the connection stays up, silent: only the ping can tell
    const start = Date.now();
    await eventually(() => !c.l1Ready && c.l1.size === 0, 'L1 emptied and off');
    t.diagnostic(`found dead after ${Date.now() - start} ms`);
  } finally {
    await c.close();
    conn.disconnect();
    await own.stop();
  }
});

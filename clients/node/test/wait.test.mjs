// waitApplied (read your writes) against a real redis-server of the
// test's own: the test plays walbust, raising the settled position (and
// publishing an event) while waiters wait. The twin of Go's TestWaitApplied.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BadPositionError, CacheClient, WaitTimeoutError, protocol } from '../dist/index.js';
import { RUN, startRedis, sleep } from './helpers.mjs';

let srv;
let rdb;
const clients = [];

before(async () => {
  srv = await startRedis();
  rdb = srv.client();
});
after(async () => {
  for (const c of clients) {
    await c.close();
    c.redis.disconnect();
  }
  rdb.disconnect();
  await srv.stop();
});

let seq = 0;
function client(wait) {
  const slot = `${RUN}slot${++seq}`;
  const c = new CacheClient(srv.client(), { wait: { slot, ...wait } });
  clients.push(c);
  return { c, key: protocol.settledKey(slot) };
}

/** What walbust does after a batch: raise the position, then publish. */
async function settle(key, lsn, channel) {
  await rdb.set(key, protocol.formatLsn(lsn));
  if (channel) await rdb.publish(channel, JSON.stringify({ lsn: protocol.formatLsn(lsn), keys: ['k'] }));
}

// With maxPoll 10 s an event must end the wait: the poll, backing off, is a second away by then.
for (const [name, channel, publish, maxPoll] of [
  ['event', `${RUN}events`, true, 10_000],
  ['poll, no event', `${RUN}events`, false, 20],
  ['poll, no channel', '-', false, 20],
]) {
  test(`waitApplied ends on the position reached (${name})`, async () => {
    const { c, key } = client({ channel, maxPoll });
    await settle(key, 0x100n);
    await c.waitApplied(0x100n, { timeoutMs: 2_000 });
    await c.waitApplied('0/80', { timeoutMs: 0 }); // known to be past it: at once
    let done = 0;
    const waits = [0x200n, 0x240n, '0/250'].map((lsn) => c.waitApplied(lsn, { timeoutMs: 5_000 }).then(() => done++));
    await sleep(publish ? 1_100 : 50);
    assert.equal(done, 0, 'returned before the position reached 0/200');
    const start = Date.now();
    await settle(key, 0x250n, publish && channel);
    await Promise.all(waits);
    const took = Date.now() - start;
    if (publish) assert.ok(took < 500, `the event did not end the wait (${took} ms)`);
    await assert.rejects(c.waitApplied(0x300n, { timeoutMs: 100 }), (err) => err instanceof WaitTimeoutError && err.name === 'TimeoutError');
    assert.equal(await c.applied(), 0x250n);
  });
}

test('waitApplied: page boundary, signal, bad position, close', async () => {
  const { c, key } = client({ channel: '-' });
  assert.equal(await c.applied(), null);
  await settle(key, 0x1_0000_2000n);
  // pg_current_wal_insert_lsn() past the next page's header: the boundary.
  await c.waitApplied('1/2018', { timeoutMs: 1_000 });
  await assert.rejects(c.waitApplied('1/2019', { timeoutMs: 50 }), WaitTimeoutError);
  const ac = new AbortController();
  const aborted = c.waitApplied(0x2_0000_0000n, { signal: ac.signal });
  setTimeout(() => ac.abort(new Error('gave up')), 30);
  await assert.rejects(aborted, /gave up/);
  await assert.rejects(c.waitApplied('nope'), SyntaxError);
  await assert.rejects(c.waitApplied(-1n), RangeError);
  await rdb.set(key, 'garbage');
  await assert.rejects(c.waitApplied(0x2_0000_0000n, { timeoutMs: 100 }), BadPositionError);
  await assert.rejects(c.applied(), BadPositionError);
  const pending = assert.rejects(c.waitApplied(0x3_0000_0000n), /client closed/);
  await sleep(20);
  await c.close();
  await pending;
  await assert.rejects(c.waitApplied(0x3_0000_0000n), /client closed/);
});

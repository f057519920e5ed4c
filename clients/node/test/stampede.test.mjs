// The stampede: a hot key has just been fenced, and 200 readers in four
// processes miss on it at once. In each process the readers share one
// load; across processes the lease decides: exactly one loader call in
// total. Without waiting for leases, at most one per process.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { encodeEnvelope, newToken, decode } from '../dist/index.js';
import { RUN, startRedis, walbustFence } from './helpers.mjs';

const PROCESSES = 4;
const READERS = 200;
const reader = fileURLToPath(new URL('./fixtures/stampede-reader.mjs', import.meta.url));

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

async function stampede(key, leaseWait) {
  await rdb.set(key, encodeEnvelope({ softExpiry: Date.now() + 3_600_000, nonce: newToken(), notFound: false, payload: Buffer.from('old') }), 'PX', 3_600_000);
  await walbustFence(rdb, key, 4242, 60_000);
  const children = Array.from({ length: PROCESSES }, () =>
    fork(reader, [srv.url, key, String(READERS / PROCESSES), String(leaseWait)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  try {
    await Promise.all(children.map((c) => new Promise((resolve, reject) => {
      c.once('message', resolve);
      c.once('exit', (code) => reject(new Error(`reader exited with ${code}`)));
    })));
    const reports = children.map((c) => new Promise((resolve) => c.once('message', resolve)));
    for (const c of children) c.send('go');
    const results = await Promise.all(reports);
    await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r() : c.once('exit', r)))));
    return results;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill();
  }
}

for (const [name, leaseWait] of [
  ['without the lease', -1],
  ['with the fence lease', 10_000],
]) {
  test(`stampede ${name}: ${READERS} readers in ${PROCESSES} processes`, async (t) => {
    const key = `${RUN}product:hot:${leaseWait}`;
    const results = await stampede(key, leaseWait);
    let total = 0;
    for (const [p, r] of results.entries()) {
      assert.equal(r.failed, 0, `process ${p}: readers failed`);
      assert.equal(r.wrong, 0, `process ${p}: readers got the old value or another one`);
      assert.ok(r.loads <= 1, `process ${p} called the loader ${r.loads} times, want at most once`);
      total += r.loads;
    }
    if (leaseWait > 0) assert.equal(total, 1, 'exactly one load in total with the lease');
    assert.ok(total >= 1, 'nobody loaded');
    t.diagnostic(`${READERS} readers in ${PROCESSES} processes: ${total} loads`);
    const c = decode(await rdb.getBuffer(key));
    assert.equal(c.kind, 'value');
    assert.equal(c.envelope.payload.toString(), 'new');
  });
}

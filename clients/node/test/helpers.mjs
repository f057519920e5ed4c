// Test helpers: throwaway redis-server processes (standalone and a
// 3-node Cluster) on free loopback ports; the walbust sandbox's Redis is
// only for walbust.test.mjs.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Redis, Cluster } from 'ioredis';
import assert from 'node:assert/strict';
import { scripts, newToken, formatLsn, refreshLsnKey } from '../dist/index.js';

const run = promisify(execFile);
const REDIS_SERVER = process.env.REDIS_SERVER || 'redis-server';
const REDIS_CLI = process.env.REDIS_CLI || 'redis-cli';

/** A prefix that keeps one test run's keys apart from anything else in a shared Redis. */
export const RUN = `t${randomBytes(4).toString('hex')}:`;

export async function freePort(needBus = false) {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    if (!needBus || port + 10000 > 65535) {
      if (!needBus) return port;
      continue;
    }
    if (await portFree(port + 10000)) return port;
  }
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function waitPing(port, deadline = Date.now() + 10_000) {
  for (;;) {
    try {
      const { stdout } = await run(REDIS_CLI, ['-p', String(port), 'ping']);
      if (stdout.trim() === 'PONG') return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not answer`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function spawnServer(port, dir, extra = []) {
  const p = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return p;
}

/**
 * A standalone Redis of the test's own: { url, port, client(), stop() }.
 * Always a fresh server, even under the sandbox: these tests pause and
 * flush it; only walbust.test.mjs talks to the sandbox's Redis.
 */
export async function startRedis() {
  const dir = mkdtempSync(join(tmpdir(), 'walbust-node-redis-'));
  const port = await freePort();
  const proc = spawnServer(port, dir);
  await waitPing(port);
  const url = `redis://127.0.0.1:${port}`;
  return {
    url,
    port,
    sandbox: false,
    client: () => new Redis(url),
    /** SIGSTOP: the server keeps its sockets open but answers nothing. */
    pause: () => proc.kill('SIGSTOP'),
    stop: async () => {
      proc.kill('SIGKILL');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Three masters with --cluster-enabled yes, joined by redis-cli --cluster create. */
export async function startCluster() {
  const dir = mkdtempSync(join(tmpdir(), 'walbust-node-cluster-'));
  const ports = [];
  const procs = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort(true);
    ports.push(port);
    procs.push(
      spawnServer(port, dir, ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000']),
    );
  }
  const stop = async () => {
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r() : p.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const p of ports) await waitPing(p);
    await run(REDIS_CLI, ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    const deadline = Date.now() + 30_000;
    for (const p of ports) {
      for (;;) {
        const { stdout } = await run(REDIS_CLI, ['-p', String(p), 'cluster', 'info']);
        if (stdout.includes('cluster_state:ok')) break;
        if (Date.now() > deadline) throw new Error('cluster did not reach cluster_state:ok');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    ports,
    client: () => new Cluster(ports.map((port) => ({ host: '127.0.0.1', port }))),
    node: (port) => new Redis(port, '127.0.0.1'),
    stop,
  };
}

/** What walbust's fence action does to key. */
export async function walbustFence(rdb, key, lsn, ttlMs) {
  await scripts().fence.run(rdb, key, String(lsn), newToken(), String(ttlMs));
}

export async function eventually(cond, what, timeout = 5_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`not true within ${timeout} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A loader that counts its calls and answers what next(n) says. */
export function counting(next) {
  const l = async (ctx) => {
    l.calls++;
    l.last = ctx;
    return next(l.calls, ctx);
  };
  l.calls = 0;
  l.last = undefined;
  return l;
}

// walbust's own refresh script (invalidator/lua/refresh.lua): tests play
// walbust with it, so what they read is what the daemon writes.
const REFRESH_LUA = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'invalidator', 'lua', 'refresh.lua'), 'utf8');
const HOUR_MS = '3600000';

/** What walbust's refresh action does to key for a change at lsn: op set, del or stale. */
export async function walbustRefresh(rdb, key, op, lsn, value = null) {
  const args = [op, formatLsn(lsn), HOUR_MS];
  if (value !== null) args.push(value);
  return rdb.eval(REFRESH_LUA, 2, key, refreshLsnKey(key), ...args);
}

/**
 * One refreshed key's story through getRefreshed: a reader's fill, walbust's
 * writes, failed refreshes (stale), a replayed older change, recovery, and a
 * DELETE with and without the negative marker. The twin of Go's
 * checkRefreshed (cacheaside/refreshed_test.go).
 */
export async function checkRefreshedStory(rdb, c, key) {
  const r = (value, lsn = 0n, stale = false, staleLsn = 0n) => ({ value: Buffer.from(value), lsn, stale, staleLsn });
  const story = [
    ['never cached', null, 0n, null, null],
    ["a reader's fill", 'fill', 0n, 'filled', r('filled')],
    ["a reader's fill flagged stale", 'stale', 0x50n, null, r('filled', 0n, true, 0x50n)],
    ['refreshed', 'set', 0x100n, '{"id":"1"}', r('{"id":"1"}', 0x100n)],
    ['refresh failed', 'stale', 0x200n, null, r('{"id":"1"}', 0x100n, true, 0x200n)],
    ['failed again', 'stale', 0x1_0000_0000n, null, r('{"id":"1"}', 0x100n, true, 0x1_0000_0000n)],
    ['an older change replayed', 'set', 0x80n, 'old', r('{"id":"1"}', 0x100n, true, 0x1_0000_0000n)],
    ['recovered', 'set', 0x1_0000_0010n, 'v2', r('v2', 0x1_0000_0010n)],
    ['deleted, negative marker', 'del', 0x1_0000_0020n, 'null', r('null', 0x1_0000_0020n)],
    ['deleted', 'del', 0x1_0000_0040n, null, null],
  ];
  for (const [name, op, lsn, value, want] of story) {
    if (op === 'fill') await rdb.set(key, value, 'PX', HOUR_MS, 'NX');
    else if (op !== null) await walbustRefresh(rdb, key, op, lsn, value);
    assert.deepEqual(await c.getRefreshed(key), want, name);
  }
}

// A fleet of fenced cache-aside readers for cmd/walbust-consistency, over
// the built client (dist/: npm ci && npm run build).
//
// The harness spawns this with node and reads what it does from stdout, one
// JSON object a line:
//
//   {"ready":true}                    connected; reading from now on
//   {"id":7,"t":1764630000123456,"v":41}
//                                     one read of key PREFIX7: it began at t
//                                     (Unix microseconds) and returned v
//   {"id":7,"err":"..."}              a read that failed
//   {"stats":{"loads":...,"fills_lost":...}}  the client's counters, last
//
// --readers concurrent loops read random keys PREFIX1..PREFIX{rows} through
// CacheClient until stdin reaches end of file. On a miss the loader fetches
// the row's value from the harness's load endpoint (--load, which queries
// the primary or the replica and records the fence LSN the load had
// observed), then sometimes stalls (1 load in 10, up to --stall seconds)
// before the client fills: the populate race's window. Values are cached as
// "<val>/node", so the harness can tell which language filled a key.
//
// The client depends on ioredis only, so the database is read through the
// harness rather than with a Postgres driver of its own.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { CacheClient } from '../dist/index.js';

const { values: a } = parseArgs({
  options: {
    redis: { type: 'string' },
    load: { type: 'string' },
    prefix: { type: 'string' },
    rows: { type: 'string' },
    readers: { type: 'string', default: '4' },
    stall: { type: 'string', default: '0' },
    lang: { type: 'string', default: 'node' },
  },
});
for (const k of ['redis', 'load', 'prefix', 'rows']) {
  if (!a[k]) {
    console.error(`consistency-reader: --${k} is required`);
    process.exit(2);
  }
}
const rows = Number(a.rows);
const readers = Number(a.readers);
const stallMs = Number(a.stall) * 1000;
const loadBase = a.load + (a.load.includes('?') ? '&' : '?');

const pending = [];
function flush() {
  if (pending.length) {
    process.stdout.write(pending.join('\n') + '\n'); // synchronous for pipes on Linux
    pending.length = 0;
  }
}
function emit(o, now = false) {
  pending.push(JSON.stringify(o));
  if (now || pending.length >= 256) flush();
}
setInterval(flush, 200).unref();

const agent = new http.Agent({ keepAlive: true, maxSockets: readers });
function fetchLoad(id, fence) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${loadBase}id=${id}&fence=${fence}`, { agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`load: HTTP ${res.statusCode}: ${body.slice(0, 200)}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error('load: timed out')));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

const rdb = new Redis(a.redis, { maxRetriesPerRequest: null });
await rdb.ping();
const client = new CacheClient(rdb, { ttl: 3_600_000 });
let stop = false;
process.stdin.on('end', () => (stop = true));
process.stdin.on('close', () => (stop = true));
process.stdin.resume();

async function reader() {
  while (!stop) {
    const id = 1 + Math.floor(Math.random() * rows);
    const loader = async (ctx) => {
      const v = await fetchLoad(id, ctx.fenceLsn.toString());
      if (stallMs > 0 && Math.random() < 0.1) await sleep(Math.random() * stallMs);
      return `${v}/${a.lang}`;
    };
    const t = nowMicros();
    try {
      const b = await client.get(`${a.prefix}${id}`, loader);
      const s = b.toString();
      emit({ id, t, v: Number(s.slice(0, s.indexOf('/') < 0 ? s.length : s.indexOf('/'))) });
    } catch (err) {
      emit({ id, err: String(err?.stack?.split('\n')[0] ?? err).slice(0, 300) });
    }
  }
}

emit({ ready: true }, true);
await Promise.all(Array.from({ length: readers }, reader));
await client.close();
const s = client.stats();
emit({ stats: { loads: s.loads, fills: s.fills, fills_lost: s.fillsLost, hits: s.hits, misses: s.misses, lease_waits: s.leaseWaits } }, true);
rdb.disconnect();
agent.destroy();
process.exit(0);

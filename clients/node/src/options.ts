import { DEFAULT_EVENTS_CHANNEL } from './protocol';

/**
 * Options of a CacheClient. Durations are milliseconds. An option left out
 * (or 0, as in Go's cacheaside) takes its default; negative values switch a
 * feature off where that is documented.
 */
export interface CacheOptions {
  /** How long a filled value is fresh (default 600000: 10 min), give or take `jitter`. */
  ttl?: number;
  /** Spreads TTLs by ±jitter×ttl (default 0.1; negative: none). Must be below 1. */
  jitter?: number;
  /** Keeps a value in Redis this long after it went stale, served while one reader reloads it (default 0: off). */
  staleWhileRevalidate?: number;
  /** How long a not-found result is cached (default 30000; negative: not cached). */
  negativeTtl?: number;
  /** TTL of a lease over an absent key (default 10000). A lease over a tombstone keeps the tombstone's TTL. */
  leaseTtl?: number;
  /** How long a reader that finds another reader's lease waits for its value (default 2000; negative: load at once). */
  leaseWait?: number;
  /** Bounds one load (default 10000). Loads run detached from a caller's AbortSignal, since callers share them. */
  loadTimeout?: number;
  /** A load that took longer than the lease's TTL minus this is not written back (default 250). */
  fillMargin?: number;
  /** TTL of tombstones written by `fence()` (default 60000, walbust's fence_ttl default). */
  fenceTtl?: number;
  /** Where walbust's `stale` action keeps the last good value (default "{key}:stale", deps.yaml's stale_key). */
  staleKey?: string;
  /** Where walbust's `bump` action keeps a key's version (default "{key}:version", deps.yaml's version_key). */
  versionKey?: string;
  /** The Redis key a versioned read caches under (default "{key}:v{version}"). */
  versionedKey?: string;
  /** An in-process cache fed by walbust's events channel; `true` for the defaults. */
  l1?: L1Options | boolean;
  /** waitApplied's slot, channel and poll (see WaitOptions). */
  wait?: WaitOptions;
}

/** Configure waitApplied (the twin of Go's cacheaside.WaitOptions). */
export interface WaitOptions {
  /** walbust's replication slot (postgres.slot; default "walbust"): the position waited for is settledKey(slot). */
  slot?: string;
  /**
   * walbust's events channel (default: the L1's channel, else
   * "walbust:events"); each event wakes the waiters at once. "-": do not
   * subscribe, only poll.
   */
  channel?: string;
  /**
   * Caps the interval between two reads of the position while someone
   * waits (default 100 ms). Polls start at 1 ms and double: they end a wait
   * no event announces (a write to a table walbust does not map, an idle
   * position, a lost event).
   */
  maxPoll?: number;
  /** The server's wal_block_size (default 8192) and wal_segment_size (default 16 MiB), for pastPageHeader. */
  walBlockSize?: number;
  walSegmentSize?: number;
}

/**
 * The in-process cache. It holds entries only while subscribed to walbust's
 * events channel; each event drops the keys it lists and the keys its
 * patterns match, and the whole L1 empties itself whenever the subscription
 * is (re)established or found dead.
 */
export interface L1Options {
  /** walbust's events channel (default "walbust:events"). */
  channel?: string;
  /** Caps an entry's life in process (default 5000 ms), whatever the events say. */
  ttl?: number;
  /** Bounds the L1 (default 10000 entries); when full, the oldest entry is evicted. */
  maxEntries?: number;
  /** A subscription silent this long is pinged, and one silent twice as long is dead (default 1000 ms). */
  pingInterval?: number;
}

export interface ResolvedOptions {
  ttl: number;
  jitter: number;
  staleWhileRevalidate: number;
  negativeTtl: number;
  leaseTtl: number;
  leaseWait: number;
  loadTimeout: number;
  fillMargin: number;
  fenceTtl: number;
  staleKey: string;
  versionKey: string;
  versionedKey: string;
  l1: Required<L1Options> | null;
  wait: Required<WaitOptions>;
}

const def = (v: number | undefined, d: number) => (v === undefined || v === 0 ? d : v);

function keyFormat(name: string, v: string | undefined, d: string, extra: string[] = []): string {
  const f = v ?? d;
  if (f.split('{key}').length !== 2) throw new TypeError(`walbust-cache: ${name} ${JSON.stringify(f)} must contain {key} exactly once`);
  for (const e of extra) {
    if (f.split(e).length !== 2) throw new TypeError(`walbust-cache: ${name} ${JSON.stringify(f)} must contain ${e} exactly once`);
  }
  return f;
}

export function resolveOptions(o: CacheOptions = {}): ResolvedOptions {
  const r: ResolvedOptions = {
    ttl: def(o.ttl, 600_000),
    jitter: o.jitter === undefined ? 0.1 : o.jitter,
    staleWhileRevalidate: o.staleWhileRevalidate ?? 0,
    negativeTtl: def(o.negativeTtl, 30_000),
    leaseTtl: def(o.leaseTtl, 10_000),
    leaseWait: def(o.leaseWait, 2_000),
    loadTimeout: def(o.loadTimeout, 10_000),
    fillMargin: def(o.fillMargin, 250),
    fenceTtl: def(o.fenceTtl, 60_000),
    staleKey: keyFormat('staleKey', o.staleKey, '{key}:stale'),
    versionKey: keyFormat('versionKey', o.versionKey, '{key}:version'),
    versionedKey: keyFormat('versionedKey', o.versionedKey, '{key}:v{version}', ['{version}']),
    l1: null,
    wait: { slot: '', channel: '', maxPoll: 0, walBlockSize: 0, walSegmentSize: 0 },
  };
  const all = [r.ttl, r.jitter, r.staleWhileRevalidate, r.negativeTtl, r.leaseTtl, r.leaseWait, r.loadTimeout, r.fillMargin, r.fenceTtl];
  if (!all.every(Number.isFinite)) throw new TypeError('walbust-cache: options must be finite numbers');
  if (r.ttl < 1) throw new RangeError(`walbust-cache: ttl ${r.ttl}: must be at least 1 ms`);
  if (r.jitter >= 1) throw new RangeError(`walbust-cache: jitter ${r.jitter}: must be below 1`);
  if (r.staleWhileRevalidate < 0) throw new RangeError(`walbust-cache: staleWhileRevalidate ${r.staleWhileRevalidate}: must not be negative`);
  if (r.leaseTtl < 1 || r.loadTimeout < 1 || r.fenceTtl < 1) {
    throw new RangeError('walbust-cache: leaseTtl, loadTimeout and fenceTtl must be at least 1 ms');
  }
  if (r.fillMargin < 0) throw new RangeError(`walbust-cache: fillMargin ${r.fillMargin}: must not be negative`);
  if (o.l1) {
    const l = o.l1 === true ? {} : o.l1;
    const l1 = {
      channel: l.channel || DEFAULT_EVENTS_CHANNEL,
      ttl: def(l.ttl, 5_000),
      maxEntries: def(l.maxEntries, 10_000),
      pingInterval: def(l.pingInterval, 1_000),
    };
    if (l1.ttl < 0 || l1.maxEntries < 0 || l1.pingInterval < 0) {
      throw new RangeError('walbust-cache: l1 ttl, maxEntries and pingInterval must not be negative');
    }
    r.l1 = l1;
  }
  const w = o.wait ?? {};
  r.wait = {
    slot: w.slot || 'walbust',
    channel: w.channel || (r.l1 ? r.l1.channel : DEFAULT_EVENTS_CHANNEL),
    maxPoll: def(w.maxPoll, 100),
    walBlockSize: def(w.walBlockSize, 8192),
    walSegmentSize: def(w.walSegmentSize, 16 << 20),
  };
  if (!(r.wait.maxPoll > 0) || !Number.isInteger(r.wait.walBlockSize) || !Number.isInteger(r.wait.walSegmentSize) || r.wait.walBlockSize < 0 || r.wait.walSegmentSize < 0) {
    throw new RangeError('walbust-cache: wait maxPoll must be positive, walBlockSize and walSegmentSize non-negative integers');
  }
  return r;
}

/** d spread by ±j×d, at least 1 ms. */
export function jitter(d: number, j: number): number {
  if (j > 0) d += d * j * (2 * Math.random() - 1);
  return Math.max(Math.round(d), 1);
}

import type { Cluster, Redis } from 'ioredis';

import { L1 } from './l1';
import { jitter, resolveOptions, type CacheOptions, type ResolvedOptions } from './options';
import {
  decode,
  encodeEnvelope,
  isStale,
  lease as leaseString,
  newToken,
  parseDecimal,
  tombstone,
  type Envelope,
  type WalbustEvent,
} from './protocol';
import { scripts, type Script } from './scripts';
import { Backoff, sleep } from './backoff';
import { subscribeLoop } from './subscribe';

/** What the reader saw in Redis before it decided to load, and the load's signal. */
export interface LoadContext {
  /** Aborted after `loadTimeout`, or when the client closes. */
  signal: AbortSignal;
  /**
   * Commit LSN of the newest fence the key carried (0n if none was seen:
   * the key was absent). A loader reading a replica can check
   * `replicaCaughtUp(replayLsn)` and read the primary instead.
   */
  fenceLsn: bigint;
  /** A background stale-while-revalidate reload. */
  revalidation: boolean;
  /** For getVersioned: the version read from the version key (0n when absent); null otherwise. */
  version: bigint | null;
  /** Whether a replica whose pg_last_wal_replay_lsn() is `replay` has applied the observed fence's commit. */
  replicaCaughtUp(replay: bigint): boolean;
}

/**
 * Reads a key's value from the database. Return the bytes (a Buffer,
 * Uint8Array or string, UTF-8), or null when there is no such row, which is
 * cached as such for `negativeTtl` (throwing a NotFoundError does the same).
 */
export type Loader = (ctx: LoadContext) => Promise<Buffer | Uint8Array | string | null> | Buffer | Uint8Array | string | null;

/** Per-call options of get() and getVersioned(). */
export interface GetOptions {
  /** Abandons this caller's wait; a load shared with other callers goes on. */
  signal?: AbortSignal;
  /**
   * For keys under walbust's `stale` action: when the load fails, serve the
   * last good value walbust moved to the stale key (`staleKey`, default
   * "{key}:stale") instead of failing.
   */
  staleFallback?: boolean;
}

/** Thrown by a loader for "no such row": cached like a null return. */
export class NotFoundError extends Error {
  constructor(message = 'not found') {
    super(message);
    this.name = 'NotFoundError';
  }
}

/** A loader's failure (its error is the cause), as get() reports it. */
export class LoadError extends Error {
  constructor(
    readonly key: string,
    cause: unknown,
  ) {
    super(`walbust-cache: load ${JSON.stringify(key)}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'LoadError';
  }
}

/** A CacheClient's counters since it was created. */
export interface Stats {
  /** Gets answered from Redis. */
  hits: number;
  /** Gets answered in process. */
  l1Hits: number;
  /** Gets that found no value in Redis. */
  misses: number;
  /** Loader calls, revalidations included. */
  loads: number;
  /** Values written back. */
  fills: number;
  /** Write-backs refused because the key changed: a fence landed, or another reader filled. */
  fillsLost: number;
  /** Write-backs not attempted: the load outlasted the lease. */
  fillsSkipped: number;
  /** Misses that waited for another reader's lease. */
  leaseWaits: number;
  /** Stale values served while revalidating. */
  staleServed: number;
  /** Background reloads started. */
  revalidations: number;
  /** Failed loads answered from the stale key (walbust's `stale` action). */
  staleFallbacks: number;
  /** Times the L1 was emptied because its subscription (re)started or died. */
  l1Resets: number;
}

/** At most this many fills start over because a fence landed during the load. */
export const MAX_FILL_ATTEMPTS = 3;

interface Result {
  payload: Buffer;
  notFound: boolean;
  softExpiry: number;
  /** Came from Redis or from our own fill: fit for the L1. */
  cacheL1: boolean;
}

interface L1Target {
  key: string;
  versioned: boolean;
  mark: number;
}

const EMPTY = Buffer.alloc(0);

/**
 * A cache-aside reader over one Redis or Redis Cluster (an ioredis `Redis`
 * or `Cluster`, which the caller keeps owning: close() does not close it).
 * With the `l1` option it subscribes to walbust's events at once; the L1
 * serves nothing until the subscription is confirmed.
 */
export class CacheClient {
  readonly options: ResolvedOptions;
  /** @internal */ readonly redis: Redis | Cluster;
  /** @internal */ readonly l1: L1 | null;
  /** @internal */ readonly n: Stats = {
    hits: 0,
    l1Hits: 0,
    misses: 0,
    loads: 0,
    fills: 0,
    fillsLost: 0,
    fillsSkipped: 0,
    leaseWaits: 0,
    staleServed: 0,
    revalidations: 0,
    staleFallbacks: 0,
    l1Resets: 0,
  };
  /** @internal */ readonly bg = new AbortController();
  private readonly scripts: { fence: Script; lease: Script; cas: Script };
  private readonly flights = new Map<string, Promise<Result>>();
  private readonly revalidating = new Set<string>();
  private readonly background = new Set<Promise<unknown>>();
  private closed = false;

  constructor(redis: Redis | Cluster, options: CacheOptions = {}) {
    if (!redis || typeof (redis as unknown as { evalshaBuffer?: unknown }).evalshaBuffer !== 'function') {
      throw new TypeError('walbust-cache: want an ioredis Redis or Cluster');
    }
    const o = redis.options as { keyPrefix?: string; redisOptions?: { keyPrefix?: string } };
    if (o?.keyPrefix || o?.redisOptions?.keyPrefix) {
      throw new TypeError('walbust-cache: the ioredis keyPrefix option is not supported (walbust names full keys)');
    }
    this.redis = redis;
    this.options = resolveOptions(options);
    this.scripts = scripts();
    this.l1 = this.options.l1 ? new L1(this.options.l1.maxEntries, this.options.l1.ttl) : null;
    if (this.l1) this.track(subscribeLoop(this));
  }

  /** Whether the L1 is subscribed and serving (false without an L1). */
  get l1Ready(): boolean {
    return this.l1?.ready ?? false;
  }

  /** The counters. */
  stats(): Stats {
    return { ...this.n };
  }

  /** Stops the L1 subscription and background revalidations, and waits for them. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.bg.abort(new Error('walbust-cache: client closed'));
    while (this.background.size > 0) await Promise.allSettled([...this.background]);
  }

  /**
   * Returns key's value: from the L1, from Redis, or from the loader, which
   * then fills Redis under the fence protocol. Resolves to null for "not
   * found" (cached or just loaded). The Buffer is the caller's.
   */
  async get(key: string, loader: Loader, opts: GetOptions = {}): Promise<Buffer | null> {
    opts.signal?.throwIfAborted();
    if (this.l1) {
      const e = this.l1.get(key, false);
      if (e) {
        this.n.l1Hits++;
        return e.notFound ? null : Buffer.from(e.payload);
      }
    }
    return this.read(key, key, loader, opts, null, { key, versioned: false, mark: this.l1?.mark() ?? 0 });
  }

  /**
   * A versioned read for keys under walbust's `bump` action: reads the
   * version key ("{key}:version", the commit LSN walbust wrote; absent is
   * 0), then reads "{key}:v{version}" like get(). A write raises the
   * version, so readers move to a new key and no delete races a fill. The
   * L1 keeps the result under key itself, which walbust's events name.
   */
  async getVersioned(key: string, loader: Loader, opts: GetOptions = {}): Promise<Buffer | null> {
    opts.signal?.throwIfAborted();
    if (this.l1) {
      const e = this.l1.get(key, true);
      if (e) {
        this.n.l1Hits++;
        return e.notFound ? null : Buffer.from(e.payload);
      }
    }
    const mark = this.l1?.mark() ?? 0;
    const vkey = this.options.versionKey.replace('{key}', key);
    const raw = await this.redis.getBuffer(vkey);
    let version = 0n;
    if (raw !== null) {
      try {
        version = parseDecimal(raw.toString('latin1'));
      } catch {
        throw new Error(`walbust-cache: version key ${JSON.stringify(vkey)} holds ${JSON.stringify(raw.toString('latin1').slice(0, 40))}, not a version`);
      }
    }
    const dataKey = this.options.versionedKey.replace('{key}', key).replace('{version}', version.toString());
    return this.read(dataKey, key, loader, opts, version, { key, versioned: true, mark });
  }

  /**
   * Writes a tombstone (LSN 0) into each key, as walbust's fence action
   * would: for write paths of the application itself that want a key
   * refreshed at once without opening the populate race.
   */
  async fence(...keys: string[]): Promise<void> {
    const token = newToken();
    const ttl = String(this.options.fenceTtl);
    for (const k of keys) {
      try {
        await this.scripts.fence.run(this.redis, k, '0', token, ttl);
      } catch (err) {
        throw new Error(`walbust-cache: fence ${JSON.stringify(k)}: ${(err as Error).message}`, { cause: err });
      }
    }
    this.l1?.apply({ lsn: 0n, keys, patterns: [], flush: false });
  }

  /** @internal Applies an event to the L1 (the subscription calls it). */
  applyEvent(ev: WalbustEvent): void {
    this.l1?.apply(ev);
  }

  private async read(
    key: string,
    name: string,
    loader: Loader,
    opts: GetOptions,
    version: bigint | null,
    l1: L1Target,
  ): Promise<Buffer | null> {
    let raw: Buffer | null;
    try {
      raw = await this.redis.getBuffer(key);
    } catch (err) {
      throw new Error(`walbust-cache: get ${JSON.stringify(key)}: ${(err as Error).message}`, { cause: err });
    }
    const content = decode(raw);
    if (content.kind === 'value') {
      this.n.hits++;
      const env = content.envelope;
      if (isStale(env)) {
        this.n.staleServed++;
        this.revalidate(key, raw!, env, loader, version);
      } else {
        this.l1?.put(l1.mark, l1.key, env.softExpiry, env.payload, env.notFound, l1.versioned);
      }
      // A copy: the L1 may hold env.payload.
      return env.notFound ? null : Buffer.from(env.payload);
    }
    this.n.misses++;
    // One fill per key in this process; callers wait for it, each under its own signal.
    let flight = this.flights.get(key);
    if (!flight) {
      const signal = AbortSignal.any([AbortSignal.timeout(this.options.loadTimeout + Math.max(this.options.leaseWait, 0)), this.bg.signal]);
      flight = this.fill(key, loader, signal, version);
      const f = flight;
      this.flights.set(key, f);
      f.then(
        () => this.flights.get(key) === f && this.flights.delete(key),
        () => this.flights.get(key) === f && this.flights.delete(key),
      );
    }
    let res: Result;
    try {
      res = await abortable(flight, opts.signal);
    } catch (err) {
      if (opts.staleFallback && err instanceof LoadError) {
        const stale = await this.staleValue(name).catch(() => undefined);
        if (stale !== undefined) {
          this.n.staleFallbacks++;
          return stale;
        }
      }
      throw err;
    }
    if (res.cacheL1) this.l1?.put(l1.mark, l1.key, res.softExpiry, res.payload, res.notFound, l1.versioned);
    return res.notFound ? null : Buffer.from(res.payload);
  }

  /** The last good value walbust's stale action kept, or undefined. */
  private async staleValue(key: string): Promise<Buffer | null | undefined> {
    const c = decode(await this.redis.getBuffer(this.options.staleKey.replace('{key}', key)));
    if (c.kind !== 'value') return undefined;
    return c.envelope.notFound ? null : c.envelope.payload;
  }

  /** The miss path, once per key per process at a time: observe (as a lease), load, compare-and-set. */
  private async fill(key: string, loader: Loader, signal: AbortSignal, version: bigint | null): Promise<Result> {
    const deadline = Date.now() + this.options.leaseWait;
    const backoff = new Backoff(5, 50, 1.5, true);
    let waited = false;
    for (let attempt = 0; ; ) {
      signal.throwIfAborted();
      const token = newToken();
      let reply: unknown;
      try {
        reply = await this.scripts.lease.run(this.redis, key, token, String(this.options.leaseTtl));
      } catch (err) {
        throw new Error(`walbust-cache: lease ${JSON.stringify(key)}: ${(err as Error).message}`, { cause: err });
      }
      let [acquired, content, pttl] = leaseReply(key, reply);
      const dec = decode(content);
      let mine = false;
      if (acquired) {
        mine = true;
      } else if (dec.kind === 'value') {
        // Filled by someone else since our GET.
        const env = dec.envelope;
        return { payload: env.payload, notFound: env.notFound, softExpiry: env.softExpiry, cacheL1: !isStale(env) };
      } else if (dec.kind === 'lease' && this.options.leaseWait >= 0 && Date.now() < deadline) {
        // Another reader is loading: wait for its value.
        if (!waited) {
          waited = true;
          this.n.leaseWaits++;
        }
        await sleep(Math.min(backoff.next(), deadline - Date.now() + 1), signal);
        continue;
      } else if (dec.kind === 'lease') {
        // Waited long enough (or told not to): load too, and fill only if
        // that lease is still there, as its owner would.
      } else {
        // A string the script took for a value that is not one: replace it
        // with a lease like any foreign value.
        const l = Buffer.from(leaseString(0n, token), 'latin1');
        if (!(await this.casFill(key, content, l, this.options.leaseTtl))) continue;
        content = l;
        pttl = this.options.leaseTtl;
        mine = true;
      }
      const lsn = dec.kind === 'lease' || dec.kind === 'tombstone' ? dec.fence.lsn : 0n;
      const { result, fenced } = await this.loadAndFill(key, loader, content, lsn, pttl, mine, signal, version);
      attempt++;
      if (!fenced || attempt >= MAX_FILL_ATTEMPTS) return result;
    }
  }

  /**
   * Loads and writes the value back over expected, the lease observed (ours
   * when mine). fenced reports that the key was fenced again meanwhile, so
   * the value may be older than that write.
   */
  private async loadAndFill(
    key: string,
    loader: Loader,
    expected: Buffer,
    lsn: bigint,
    leaseTtl: number,
    mine: boolean,
    signal: AbortSignal,
    version: bigint | null,
  ): Promise<{ result: Result; fenced: boolean }> {
    const start = Date.now();
    this.n.loads++;
    const out = await this.callLoader(loader, loadContext(signal, lsn, false, version));
    if ('error' in out || (out.notFound && this.options.negativeTtl < 0)) {
      if (mine) await this.release(key, expected, lsn);
      if ('error' in out) throw new LoadError(key, out.error);
      return { result: { payload: EMPTY, notFound: true, softExpiry: 0, cacheL1: false }, fenced: false };
    }
    const result: Result = { payload: out.payload, notFound: out.notFound, softExpiry: 0, cacheL1: false };
    if (Date.now() - start + this.options.fillMargin >= leaseTtl) {
      // The lease may be gone and, with it, the fence it replaced; a fill
      // now could outlive a write we never saw.
      this.n.fillsSkipped++;
      return { result, fenced: false };
    }
    const [env, ttl] = this.envelope(out.payload, out.notFound);
    if (!(await this.casFill(key, expected, encodeEnvelope(env), ttl))) {
      this.n.fillsLost++;
      const now = await this.redis.getBuffer(key).catch(() => null);
      return { result, fenced: decode(now).kind === 'tombstone' };
    }
    this.n.fills++;
    result.softExpiry = env.softExpiry;
    result.cacheL1 = true;
    return { result, fenced: false };
  }

  /** Runs the loader, bounded by signal even if the loader ignores it. */
  private async callLoader(loader: Loader, ctx: LoadContext): Promise<{ payload: Buffer; notFound: boolean } | { error: unknown }> {
    try {
      const v = await abortable(Promise.resolve().then(() => loader(ctx)), ctx.signal);
      if (v === null) return { payload: EMPTY, notFound: true };
      if (typeof v === 'string') return { payload: Buffer.from(v, 'utf8'), notFound: false };
      if (v instanceof Uint8Array) return { payload: Buffer.from(v), notFound: false };
      return { error: new TypeError(`loader returned ${v === undefined ? 'undefined' : typeof v}; want a Buffer, a string or null`) };
    } catch (error) {
      if (error instanceof NotFoundError) return { payload: EMPTY, notFound: true };
      return { error };
    }
  }

  /** Turns our lease back into a tombstone after a failed load; the LSN and TTL stay. */
  private async release(key: string, lease: Buffer, lsn: bigint): Promise<void> {
    await this.casFill(key, lease, Buffer.from(tombstone(lsn, newToken()), 'latin1'), 0).catch(() => false);
  }

  /** Sets key to next if it still holds expected; ttl 0 keeps the TTL. */
  private async casFill(key: string, expected: Buffer, next: Buffer, ttl: number): Promise<boolean> {
    let n: unknown;
    try {
      n = await this.scripts.cas.run(this.redis, key, expected, next, String(Math.trunc(ttl)));
    } catch (err) {
      throw new Error(`walbust-cache: fill ${JSON.stringify(key)}: ${(err as Error).message}`, { cause: err });
    }
    return n === 1;
  }

  /** A loaded value with fresh TTLs: its envelope and the TTL Redis keeps it for. */
  private envelope(payload: Buffer, notFound: boolean): [Envelope, number] {
    const o = this.options;
    if (notFound) {
      const ttl = jitter(o.negativeTtl, o.jitter);
      return [{ softExpiry: Date.now() + ttl, nonce: newToken(), notFound: true, payload: EMPTY }, ttl];
    }
    const ttl = jitter(o.ttl, o.jitter);
    return [{ softExpiry: Date.now() + ttl, nonce: newToken(), notFound: false, payload }, ttl + o.staleWhileRevalidate];
  }

  /**
   * Reloads a stale value in the background, once across processes: it
   * claims the value by replacing it (compare-and-set on what it read) with
   * a copy whose soft expiry lies loadTimeout ahead, so other readers take
   * the copy as fresh; then it loads and sets the new value over its claim.
   * A fence replaces the claim, and the fill fails.
   */
  private revalidate(key: string, observed: Buffer, env: Envelope, loader: Loader, version: bigint | null): void {
    if (this.closed || this.revalidating.has(key)) return;
    this.revalidating.add(key);
    const run = async () => {
      const signal = AbortSignal.any([AbortSignal.timeout(this.options.loadTimeout), this.bg.signal]);
      const claimed = encodeEnvelope({
        softExpiry: Date.now() + this.options.loadTimeout,
        nonce: newToken(),
        notFound: env.notFound,
        payload: env.payload,
      });
      if (!(await this.casFill(key, observed, claimed, 0))) return; // another reader claimed it, or it was fenced
      this.n.revalidations++;
      this.n.loads++;
      const out = await this.callLoader(loader, loadContext(signal, 0n, true, version));
      if ('error' in out || (out.notFound && this.options.negativeTtl < 0)) return; // the claim runs out; someone tries again
      const [next, ttl] = this.envelope(out.payload, out.notFound);
      if (await this.casFill(key, claimed, encodeEnvelope(next), ttl)) this.n.fills++;
      else this.n.fillsLost++;
    };
    this.track(
      run()
        .catch(() => {})
        .finally(() => this.revalidating.delete(key)),
    );
  }

  private track(p: Promise<unknown>): void {
    this.background.add(p);
    p.finally(() => this.background.delete(p)).catch(() => {});
  }
}

function loadContext(signal: AbortSignal, fenceLsn: bigint, revalidation: boolean, version: bigint | null): LoadContext {
  return { signal, fenceLsn, revalidation, version, replicaCaughtUp: (replay: bigint) => replay > fenceLsn };
}

/** Decodes lease.lua's {acquired, content, ttl}. */
function leaseReply(key: string, r: unknown): [boolean, Buffer, number] {
  if (Array.isArray(r) && r.length === 3 && typeof r[0] === 'number' && Buffer.isBuffer(r[1]) && typeof r[2] === 'number') {
    return [r[0] === 1, r[1], r[2]];
  }
  throw new Error(`walbust-cache: lease ${JSON.stringify(key)}: unexpected reply ${String(r)}`);
}

/** p, or a rejection with signal's reason as soon as it aborts. */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

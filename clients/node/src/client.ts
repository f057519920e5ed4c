import type { Cluster, Redis } from 'ioredis';

import { L1 } from './l1';
import { jitter, resolveOptions, type CacheOptions, type ResolvedOptions } from './options';
import {
  decode,
  encodeEnvelope,
  isStale,
  lease as leaseString,
  formatLsn,
  hasHashTag,
  newToken,
  parseDecimal,
  parseLsn,
  parseRefreshMark,
  refreshLsnKey,
  pastPageHeader,
  settledKey,
  tombstone,
  type Envelope,
  type WalbustEvent,
} from './protocol';
import { scripts, type Script } from './scripts';
import { Backoff, sleep } from './backoff';
import { subscribeLoop, watchEvents } from './subscribe';

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

/** Per-call options of waitApplied(). */
export interface WaitAppliedOptions {
  /** Abandons the wait: it rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Bounds the wait: it rejects with a WaitTimeoutError after this many ms. */
  timeoutMs?: number;
}

/** waitApplied timed out; its cause is the last Redis error, if reading the position failed. */
export class WaitTimeoutError extends Error {
  constructor(
    readonly lsn: bigint,
    cause?: unknown,
  ) {
    super(`walbust-cache: walbust has not applied up to ${formatLsn(lsn)} yet${cause ? ` (reading its position: ${(cause as Error).message ?? String(cause)})` : ''}`, cause ? { cause } : undefined);
    this.name = 'TimeoutError';
  }
}

/** walbust's settled position key holds something that is not an LSN. */
export class BadPositionError extends Error {
  constructor() {
    super("walbust-cache: walbust's settled position is not an LSN");
    this.name = 'BadPositionError';
  }
}

/**
 * getRefreshed on a Redis Cluster of a key without a hash tag: it and its
 * LSN key are in different slots, so no single command reads both, and
 * walbust does not refresh such a key at all (it removes it instead;
 * `walbust validate` warns about the rule).
 */
export class NoHashTagError extends Error {
  constructor(readonly key: string) {
    super(
      `walbust-cache: ${JSON.stringify(key)} has no hash tag, so it and its LSN key are in different cluster slots (give the deps.yaml key one, e.g. "{{product:{id}}}")`,
    );
    this.name = 'NoHashTagError';
  }
}

/** A key under walbust's refresh action (deps.yaml `action: refresh`), as getRefreshed read it. */
export interface Refreshed {
  /** Exactly what the key holds: walbust's value, its negative marker, or a reader's SET NX fill. */
  value: Buffer;
  /** Commit LSN of the value; 0n for a reader's fill. */
  lsn: bigint;
  /**
   * A later change's refresh query failed: the value is older than that
   * change. Treat it as a miss, or serve it and refresh in the background.
   */
  stale: boolean;
  /** The newest change whose refresh failed, when stale (else 0n). */
  staleLsn: bigint;
}

const MAX_U64 = (1n << 64n) - 1n;

interface Waiter {
  want: bigint;
  release: () => void;
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
  // waitApplied's shared state: one poller and one subscription however many wait.
  private known = 0n; // highest settled position read
  private readonly pending = new Set<Waiter>();
  private polling = false;
  private subbed = false;
  private kicked = false;
  private wake: (() => void) | null = null;
  private lastErr: unknown = null; // the last read's error

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
   * Reads a key under walbust's refresh action (deps.yaml `action:
   * refresh`) and its LSN key in one round trip, MGET key key:lsn; null
   * when the key is absent (never cached, deleted by walbust, or expired).
   * `stale` says whether a later change's refresh query failed. It neither
   * loads nor fills (those keys hold plain values, not envelopes): fill a
   * miss with SET key value NX PX ttl, which never replaces a value walbust
   * wrote meanwhile. On a Cluster, a key without a hash tag rejects with a
   * NoHashTagError before any round trip.
   */
  async getRefreshed(key: string): Promise<Refreshed | null> {
    if ((this.redis as Cluster).isCluster && !hasHashTag(key)) throw new NoHashTagError(key);
    const [value, mark] = await this.redis.mgetBuffer(key, refreshLsnKey(key));
    if (value === null) return null;
    return { value, ...parseRefreshMark(mark) };
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

  /**
   * Resolves once walbust has applied every change up to lsn to Redis: its
   * settled position (settledKey(slot)) is at lsn or past it. Then a read
   * through the cache sees every write committed at or before lsn. Take lsn
   * (a bigint, or pg_lsn's X/Y text) after COMMIT, from the same session:
   *
   *     SELECT pg_current_wal_insert_lsn()
   *
   * With `replicas:` configured in walbust, the settled position moves only
   * after the keys were fenced again once every replica replayed the
   * change, so a fill from a replica cannot cache an older row either.
   *
   * Rejects with signal's reason when it aborts, with a WaitTimeoutError
   * after timeoutMs (its cause the last Redis error, if reading the position
   * failed), and with a BadPositionError instead when the key holds no LSN.
   * Waiters share one subscription to walbust's events and one poll of the
   * key (1 ms doubling to `wait.maxPoll`), so a lost event, a write no rule
   * maps or no events channel still end the wait. The L1, if any, lags
   * Redis by the events' delivery.
   */
  async waitApplied(lsn: bigint | string, opts: WaitAppliedOptions = {}): Promise<void> {
    const w = this.options.wait;
    const want = pastPageHeader(lsnArg(lsn), BigInt(w.walBlockSize), BigInt(w.walSegmentSize));
    if (want <= this.known) return;
    if (this.closed) throw new Error('walbust-cache: client closed');
    const signals = [this.bg.signal];
    if (opts.signal) signals.push(opts.signal);
    const timeout = opts.timeoutMs !== undefined ? AbortSignal.timeout(Math.max(0, opts.timeoutMs)) : null;
    if (timeout) signals.push(timeout);
    const signal = AbortSignal.any(signals);
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        want,
        release: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        this.pending.delete(waiter);
        if (this.bg.signal.aborted) return reject(new Error('walbust-cache: client closed'));
        if (this.lastErr instanceof BadPositionError) return reject(this.lastErr);
        if (opts.signal?.aborted) return reject(opts.signal.reason);
        reject(new WaitTimeoutError(want, this.lastErr ?? undefined));
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      this.pending.add(waiter);
      if (!this.polling) {
        this.polling = true;
        this.track(this.pollPosition().finally(() => (this.polling = false)));
      }
      if (!this.subbed && w.channel !== '-') {
        this.subbed = true;
        this.track(
          watchEvents(this, (lsn) => {
            if (lsn === null || lsn > this.known) this.kick();
          }),
        );
      }
      this.kick();
    });
  }

  /** walbust's settled position now; null when walbust never wrote it. Rejects with BadPositionError when the key holds no LSN. */
  async applied(): Promise<bigint | null> {
    const raw = await this.redis.getBuffer(settledKey(this.options.wait.slot));
    if (raw === null) return null;
    try {
      return parseLsn(raw.toString('latin1'));
    } catch {
      throw new BadPositionError();
    }
  }

  private kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  /** Reads the position while anyone waits, at once when woken (a new waiter, an event), else with backoff. */
  private async pollPosition(): Promise<void> {
    let interval = 1;
    const signal = this.bg.signal;
    for (;;) {
      let lsn: bigint | null = null;
      try {
        lsn = await this.applied();
        this.lastErr = null;
      } catch (err) {
        this.lastErr = err;
      }
      if (lsn !== null && lsn > this.known) {
        this.known = lsn;
        interval = 1;
      }
      for (const waiter of this.pending) {
        if (waiter.want <= this.known) {
          this.pending.delete(waiter);
          waiter.release();
        }
      }
      if (this.pending.size === 0 || signal.aborted) return;
      if (!this.kicked) {
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(t);
            signal.removeEventListener('abort', done);
            this.wake = null;
            resolve();
          };
          const t = setTimeout(done, interval);
          this.wake = done;
          signal.addEventListener('abort', done, { once: true });
        });
      }
      if (this.kicked) this.kicked = false;
      else interval = Math.min(2 * interval, this.options.wait.maxPoll);
    }
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

/** waitApplied's lsn: a bigint, or pg_lsn's X/Y text. */
function lsnArg(lsn: bigint | string): bigint {
  if (typeof lsn === 'string') return parseLsn(lsn.trim());
  if (typeof lsn !== 'bigint') throw new TypeError(`walbust-cache: lsn must be a bigint or pg_lsn text, not ${typeof lsn}`);
  if (lsn < 0n || lsn > MAX_U64) throw new RangeError(`walbust-cache: lsn ${lsn} is not an unsigned 64-bit integer`);
  return lsn;
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

import { type WalbustEvent, match, eventTouches } from './protocol';

/**
 * How many events the L1 remembers, so that a value read from Redis before
 * an event can be kept out of the L1 when the event arrives while the read
 * is still on its way in.
 */
export const RECENT_EVENTS = 128;

export interface L1Entry {
  payload: Buffer;
  notFound: boolean;
  expires: number;
  /** Filled by a versioned read (getVersioned), under the base key. */
  versioned: boolean;
}

const FLUSH: WalbustEvent = { lsn: 0n, keys: [], patterns: [], flush: true };

/** The in-process cache, a port of cacheaside's l1. */
export class L1 {
  private entries = new Map<string, L1Entry>();
  /** Subscribed and listening; otherwise empty, serving nothing. */
  ready = false;
  private seq = 0;
  private recent: WalbustEvent[] = new Array(RECENT_EVENTS);

  constructor(
    private readonly max: number,
    private readonly ttl: number,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get(key: string, versioned: boolean, now = Date.now()): L1Entry | undefined {
    const e = this.entries.get(key);
    if (!e || !this.ready || e.versioned !== versioned) return undefined;
    if (!(now < e.expires)) {
      this.entries.delete(key);
      return undefined;
    }
    return e;
  }

  /** Taken before reading Redis; put refuses a value if anything concerning its key happened since. */
  mark(): number {
    return this.seq;
  }

  put(mark: number, key: string, softExpiry: number, payload: Buffer, notFound: boolean, versioned = false): void {
    if (!this.ready || this.seq - mark >= RECENT_EVENTS) return;
    for (let s = mark + 1; s <= this.seq; s++) {
      if (eventTouches(this.recent[s % RECENT_EVENTS], key)) return;
    }
    const now = Date.now();
    const expires = Math.min(now + this.ttl, softExpiry);
    if (!(now < expires)) return;
    if (!this.entries.has(key) && this.entries.size >= this.max) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    if (this.max === 0) return;
    this.entries.set(key, { payload, notFound, expires, versioned });
  }

  /** Drops what ev invalidates. */
  apply(ev: WalbustEvent): void {
    this.seq++;
    this.recent[this.seq % RECENT_EVENTS] = ev;
    if (ev.flush) {
      this.entries.clear();
      return;
    }
    for (const k of ev.keys) this.entries.delete(k);
    if (ev.patterns.length > 0) {
      for (const k of [...this.entries.keys()]) {
        if (ev.patterns.some((p) => match(p, k))) this.entries.delete(k);
      }
    }
  }

  /** Empties the L1 and refuses every put in flight; ready says whether it may serve from now on. */
  reset(ready: boolean): void {
    this.entries.clear();
    this.seq++;
    this.recent[this.seq % RECENT_EVENTS] = FLUSH;
    this.ready = ready;
  }
}

// The walbust cache protocol: the stored forms (tombstone, lease, value
// envelope), LSNs, tokens, walbust's events and Redis glob matching. A port
// of the Go package protocol (the normative implementation), byte for byte:
// values are Buffers, so payloads that are not UTF-8 survive unchanged.

import { randomBytes } from 'node:crypto';

/** Prefix of a tombstone, `wbfence:1:<lsn>:<token>` (walbust's fence action). */
export const TOMBSTONE_PREFIX = 'wbfence:1:';
/** Prefix of a lease, `wblease:1:<lsn>:<token>` (a reader's claim to fill a key). */
export const LEASE_PREFIX = 'wblease:1:';
/** Prefix of a value, `wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload>`. */
export const VALUE_PREFIX = 'wbval:1:';
/** The channel walbust publishes events on unless configured otherwise. */
export const DEFAULT_EVENTS_CHANNEL = 'walbust:events';
/** Token lengths accepted in tombstones, leases and envelopes. */
export const MIN_TOKEN_LEN = 16;
export const MAX_TOKEN_LEN = 64;

const MAX_U64 = (1n << 64n) - 1n;
const MAX_SOFT_EXPIRY = 1n << 62n;

/** A random token: 32 lower-case hex digits (128 bits). */
export function newToken(): string {
  return randomBytes(16).toString('hex');
}

/** Whether s is 16 to 64 lower-case hex digits. */
export function validToken(s: string): boolean {
  return s.length >= MIN_TOKEN_LEN && s.length <= MAX_TOKEN_LEN && /^[0-9a-f]+$/.test(s);
}

/** Formats an LSN (an unsigned 64-bit integer) as the protocol's decimal. */
export function formatDecimal(v: bigint): string {
  if (v < 0n || v > MAX_U64) throw new RangeError(`LSN ${v} is not an unsigned 64-bit integer`);
  return v.toString(10);
}

/** Parses the protocol's decimal: no sign, no leading zeros, at most 2^64-1. */
export function parseDecimal(s: string): bigint {
  if (s === '' || s.length > 20 || (s.length > 1 && s[0] === '0') || !/^[0-9]+$/.test(s)) {
    throw new SyntaxError(`${JSON.stringify(s)}: want a decimal number without leading zeros`);
  }
  const v = BigInt(s);
  if (v > MAX_U64) throw new RangeError(`${JSON.stringify(s)}: out of range`);
  return v;
}

/** Parses an LSN in PostgreSQL's text form, X/Y (two hex numbers of 1-8 digits). */
export function parseLsn(s: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(s);
  if (!m) throw new SyntaxError(`lsn ${JSON.stringify(s)}: want X/Y (two hex numbers)`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

/** Formats an LSN in PostgreSQL's text form, X/Y, upper-case hex. */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

// Refreshed keys (deps.yaml action: refresh). A refreshed key holds exactly
// its value, no envelope. Next to it, refreshLsnKey(key) holds the value's
// commit LSN in X/Y form, followed by " stale <lsn>" while the value is
// stale (a later change's value query failed): "16/B374D848",
// "16/B374D848 stale 16/B3750000", or "0/0 stale ..." for a value a reader
// cached. walbust writes both in one script, so in a Redis Cluster the key
// needs a hash tag (hasHashTag), as does a reader's MGET of the two.
// (Go: protocol.ParseRefreshMark.)

/** Appended to a refreshed key to name its LSN key. */
export const REFRESH_LSN_SUFFIX = ':lsn';

/** Where walbust keeps the commit LSN and stale flag of a key it refreshes: key + ":lsn". */
export function refreshLsnKey(key: string): string {
  return key + REFRESH_LSN_SUFFIX;
}

/** What a refreshed key's LSN key says. */
export interface RefreshMark {
  /** Commit LSN of the value; 0n when there is no LSN key, or the flagged value was a reader's. */
  lsn: bigint;
  /** A later change's refresh failed: the value is older than that change. */
  stale: boolean;
  /** The newest change whose refresh failed, when stale (else 0n). */
  staleLsn: bigint;
}

function lenientLsn(s: string): bigint {
  try {
    return parseLsn(s);
  } catch {
    return 0n;
  }
}

/**
 * Reads an LSN key's text (null: absent). As lenient as walbust's script:
 * what does not parse as an LSN counts as 0/0, and the value is stale
 * whenever the text holds " stale ".
 */
export function parseRefreshMark(raw: string | Buffer | null): RefreshMark {
  if (raw === null) return { lsn: 0n, stale: false, staleLsn: 0n };
  const s = typeof raw === 'string' ? raw : raw.toString('latin1');
  const i = s.indexOf(' stale ');
  if (i < 0) return { lsn: lenientLsn(s), stale: false, staleLsn: 0n };
  return { lsn: lenientLsn(s.slice(0, i)), stale: true, staleLsn: lenientLsn(s.slice(i + ' stale '.length)) };
}

/**
 * Whether key carries a Redis Cluster hash tag: a non-empty text between
 * its first '{' and the next '}', which alone decides its slot, so that key
 * and refreshLsnKey(key) share one.
 */
export function hasHashTag(key: string): boolean {
  const open = key.indexOf('{');
  return open >= 0 && key.indexOf('}', open + 1) > open + 1;
}

/**
 * The key where walbust records how far it has applied slot's changes (an
 * LSN in X/Y form).
 */
export function appliedKey(slot: string): string {
  return 'walbust:applied:{' + slot + '}';
}

/**
 * The key of walbust's settled position for slot (X/Y form): every change
 * up to it is in Redis and, when walbust watches read replicas, was fenced
 * again after they replayed it. Same form and same monotonic write as
 * appliedKey; the position read-your-writes waits for (waitApplied).
 */
export function settledKey(slot: string): string {
  return 'walbust:settled:{' + slot + '}';
}

/**
 * Maps an LSN just past a WAL page header to the page's start.
 * pg_current_wal_insert_lsn() points past the header of the next page when
 * the last record ended exactly at a page boundary, while that record's end
 * (what walbust records) is the boundary itself: no change can end inside a
 * header, so both mean the same, and without this a wait would last until
 * the next WAL is written. block and segment are the server's
 * wal_block_size and wal_segment_size (Go: cacheaside's pastPageHeader).
 */
export function pastPageHeader(lsn: bigint, block: bigint, segment: bigint): bigint {
  const short = 24n; // SizeOfXLogShortPHD
  const long = 40n; // SizeOfXLogLongPHD
  if (segment > 0n && lsn % segment === long) return lsn - long;
  if (block > 0n && lsn % block === short && (segment === 0n || lsn % segment !== short)) return lsn - short;
  return lsn;
}

/** A parsed tombstone or lease. */
export interface Fence {
  /** Commit LSN (start of the commit record) of the newest fence; 0n when unknown. */
  lsn: bigint;
  token: string;
}

/** The tombstone walbust's fence action writes: `wbfence:1:<lsn>:<token>`. */
export function tombstone(lsn: bigint, token: string): string {
  return TOMBSTONE_PREFIX + formatDecimal(lsn) + ':' + token;
}

/** A reader's lease: `wblease:1:<lsn>:<token>`. */
export function lease(lsn: bigint, token: string): string {
  return LEASE_PREFIX + formatDecimal(lsn) + ':' + token;
}

function parseFence(s: string, prefix: string, what: string): Fence {
  if (!s.startsWith(prefix)) throw new SyntaxError(`${what} ${quote(s)}: wrong prefix (want ${prefix}<lsn>:<token>)`);
  const rest = s.slice(prefix.length);
  const i = rest.indexOf(':');
  if (i < 0) throw new SyntaxError(`${what} ${quote(s)}: want ${prefix}<lsn>:<token>`);
  let lsn: bigint;
  try {
    lsn = parseDecimal(rest.slice(0, i));
  } catch (e) {
    throw new SyntaxError(`${what} ${quote(s)}: lsn ${(e as Error).message}`);
  }
  const token = rest.slice(i + 1);
  if (!validToken(token)) {
    throw new SyntaxError(`${what} ${quote(s)}: token must be ${MIN_TOKEN_LEN}-${MAX_TOKEN_LEN} lower-case hex digits`);
  }
  return { lsn, token };
}

/** Parses a tombstone; throws on anything else. */
export function parseTombstone(s: string | Buffer): Fence {
  return parseFence(asLatin1(s), TOMBSTONE_PREFIX, 'tombstone');
}

/** Parses a lease; throws on anything else. */
export function parseLease(s: string | Buffer): Fence {
  return parseFence(asLatin1(s), LEASE_PREFIX, 'lease');
}

/** A cached value as readers store it. */
export interface Envelope {
  /** Unix time in milliseconds after which the value is stale. */
  softExpiry: number;
  nonce: string;
  /** A cached "not found" (the payload is empty). */
  notFound: boolean;
  payload: Buffer;
}

/** Renders an envelope: `wbval:1:<soft-expiry-ms>:<nonce>:<v|n>:<payload>`. */
export function encodeEnvelope(e: Envelope): Buffer {
  const head = `${VALUE_PREFIX}${Math.trunc(e.softExpiry)}:${e.nonce}:${e.notFound ? 'n' : 'v'}:`;
  return e.notFound ? Buffer.from(head, 'latin1') : Buffer.concat([Buffer.from(head, 'latin1'), e.payload]);
}

/** Whether the soft expiry has passed at now (Unix ms). */
export function isStale(e: Envelope, now: number = Date.now()): boolean {
  return !(now < e.softExpiry);
}

const COLON = 0x3a;

/** Parses a stored value; throws on anything that is not a well-formed one. */
export function parseEnvelope(raw: Buffer | string): Envelope {
  const b = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
  const s = () => quote(b.subarray(0, 40).toString('latin1'));
  if (b.length < VALUE_PREFIX.length || b.toString('latin1', 0, VALUE_PREFIX.length) !== VALUE_PREFIX) {
    throw new SyntaxError(`value ${s()}: wrong prefix (want ${VALUE_PREFIX}...)`);
  }
  // Three ':' after the prefix, then the payload (which may hold more).
  const cuts: number[] = [];
  let at = VALUE_PREFIX.length;
  while (cuts.length < 3) {
    const i = b.indexOf(COLON, at);
    if (i < 0) throw new SyntaxError(`value ${s()}: want ${VALUE_PREFIX}<soft-expiry-ms>:<nonce>:<kind>:<payload>`);
    cuts.push(i);
    at = i + 1;
  }
  const msText = b.toString('latin1', VALUE_PREFIX.length, cuts[0]);
  let ms: bigint;
  try {
    ms = parseDecimal(msText);
  } catch {
    throw new SyntaxError(`value ${s()}: soft expiry must be Unix milliseconds in decimal`);
  }
  if (ms > MAX_SOFT_EXPIRY) throw new SyntaxError(`value ${s()}: soft expiry must be Unix milliseconds in decimal`);
  const nonce = b.toString('latin1', cuts[0] + 1, cuts[1]);
  if (!validToken(nonce)) {
    throw new SyntaxError(`value ${s()}: nonce must be ${MIN_TOKEN_LEN}-${MAX_TOKEN_LEN} lower-case hex digits`);
  }
  const kind = b.toString('latin1', cuts[1] + 1, cuts[2]);
  const payload = Buffer.from(b.subarray(cuts[2] + 1)); // a copy: shares no memory with raw
  switch (kind) {
    case 'v':
      return { softExpiry: Number(ms), nonce, notFound: false, payload };
    case 'n':
      if (payload.length !== 0) throw new SyntaxError(`value ${s()}: a not-found entry has no payload`);
      return { softExpiry: Number(ms), nonce, notFound: true, payload };
    default:
      throw new SyntaxError(`value ${s()}: kind must be v or n`);
  }
}

/** What a key holds, by the protocol. */
export type Kind = 'absent' | 'foreign' | 'tombstone' | 'lease' | 'value';

/** A key's content, decoded. */
export type Content =
  | { kind: 'absent' }
  | { kind: 'foreign' }
  | { kind: 'tombstone'; fence: Fence }
  | { kind: 'lease'; fence: Fence }
  | { kind: 'value'; envelope: Envelope };

/**
 * Classifies what a key holds. It never throws: anything that is not a
 * well-formed tombstone, lease or value is 'foreign', which readers treat
 * like an absent key; null (no such key) is 'absent'.
 */
export function decode(raw: Buffer | string | null | undefined): Content {
  if (raw === null || raw === undefined) return { kind: 'absent' };
  const b = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
  const head = b.toString('latin1', 0, 10);
  try {
    if (head.startsWith(TOMBSTONE_PREFIX)) return { kind: 'tombstone', fence: parseTombstone(b) };
    if (head.startsWith(LEASE_PREFIX)) return { kind: 'lease', fence: parseLease(b) };
    if (head.startsWith(VALUE_PREFIX)) return { kind: 'value', envelope: parseEnvelope(b) };
  } catch {
    // malformed: foreign
  }
  return { kind: 'foreign' };
}

/** An event walbust publishes after each acknowledged batch. */
export interface WalbustEvent {
  lsn: bigint;
  keys: string[];
  patterns: string[];
  flush: boolean;
}

/**
 * Parses an event: `{"lsn":"16/B374D848","keys":[...],"patterns":[...],"flush":true}`.
 * lsn is required; keys and patterns may be missing or null; unknown fields
 * are ignored. Throws on anything else.
 */
export function parseEvent(json: string | Buffer): WalbustEvent {
  const v: unknown = JSON.parse(typeof json === 'string' ? json : json.toString('utf8'));
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new SyntaxError('event: not an object');
  const o = v as Record<string, unknown>;
  if (o.lsn === undefined || o.lsn === null) throw new SyntaxError('event: missing lsn');
  if (typeof o.lsn !== 'string') throw new SyntaxError('event: lsn must be a string');
  const strings = (name: string): string[] => {
    const x = o[name];
    if (x === undefined || x === null) return [];
    if (!Array.isArray(x) || !x.every((e) => typeof e === 'string')) {
      throw new SyntaxError(`event: ${name} must be a list of strings`);
    }
    return x as string[];
  };
  const flush = o.flush;
  if (flush !== undefined && flush !== null && typeof flush !== 'boolean') throw new SyntaxError('event: flush must be a boolean');
  return { lsn: parseLsn(o.lsn), keys: strings('keys'), patterns: strings('patterns'), flush: flush === true };
}

/** Renders an event as walbust does (for tests and tools). */
export function formatEvent(e: Partial<WalbustEvent> & { lsn: bigint }): string {
  const out: Record<string, unknown> = { lsn: formatLsn(e.lsn), keys: e.keys ?? [], patterns: e.patterns ?? [] };
  if (e.flush) out.flush = true;
  return JSON.stringify(out);
}

/** Whether the event invalidates key: a flush, one of its keys, or a pattern match. */
export function eventTouches(e: WalbustEvent, key: string): boolean {
  if (e.flush) return true;
  if (e.keys.includes(key)) return true;
  return e.patterns.some((p) => match(p, key));
}

/**
 * Whether key matches the Redis glob pattern as SCAN MATCH would ('*', '?',
 * '[...]' with '^' and ranges, '\' escapes), byte by byte over the UTF-8
 * encodings. A port of protocol.Match, itself Redis's stringmatchlen with its
 * quirks; a range with a byte of 0x80 or above matches if either a signed or
 * an unsigned C char would.
 */
export function match(pattern: string | Uint8Array, key: string | Uint8Array): boolean {
  const p = typeof pattern === 'string' ? Buffer.from(pattern, 'utf8') : pattern;
  const s = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  if (p.length === 1 && p[0] === 0x2a) return true; // "*": SCAN does not filter at all
  const skip = { v: false };
  return matchAt(p, 0, s, 0, skip, 0);
}

const int8 = (b: number) => (b << 24) >> 24;
function inRange(lo: number, hi: number, c: number): boolean {
  if (lo > hi) [lo, hi] = [hi, lo];
  return c >= lo && c <= hi;
}

function matchAt(p: Uint8Array, pi: number, s: Uint8Array, si: number, skip: { v: boolean }, nesting: number): boolean {
  if (nesting > 1000) return false;
  const at = (i: number) => (i < p.length ? p[i] : 0);
  while (pi < p.length && si < s.length) {
    switch (p[pi]) {
      case 0x2a: // '*'
        while (pi < p.length && at(pi + 1) === 0x2a) pi++;
        if (p.length - pi === 1) return true;
        while (si < s.length) {
          if (matchAt(p, pi + 1, s, si, skip, nesting + 1)) return true;
          if (skip.v) return false;
          si++;
        }
        skip.v = true;
        return false;
      case 0x3f: // '?'
        si++;
        break;
      case 0x5b: {
        // '['
        pi++;
        const not = at(pi) === 0x5e;
        if (not) pi++;
        let mu = false;
        let ms = false;
        for (;;) {
          if (at(pi) === 0x5c && p.length - pi >= 2) {
            pi++;
            if (p[pi] === s[si]) mu = ms = true;
          } else if (at(pi) === 0x5d) {
            break;
          } else if (p.length - pi === 0) {
            pi--;
            break;
          } else if (p.length - pi >= 3 && p[pi + 1] === 0x2d) {
            const lo = p[pi];
            const hi = p[pi + 2];
            const c = s[si];
            pi += 2;
            if (inRange(lo, hi, c)) mu = true;
            if (inRange(int8(lo), int8(hi), int8(c))) ms = true;
          } else if (p[pi] === s[si]) {
            mu = ms = true;
          }
          pi++;
        }
        if (not) {
          mu = !mu;
          ms = !ms;
        }
        if (!mu && !ms) return false;
        si++;
        break;
      }
      case 0x5c: // '\\'
        if (p.length - pi >= 2) pi++;
        if (p[pi] !== s[si]) return false;
        si++;
        break;
      default:
        if (p[pi] !== s[si]) return false;
        si++;
    }
    pi++;
    if (si === s.length) {
      while (at(pi) === 0x2a) pi++;
      break;
    }
  }
  return pi === p.length && si === s.length;
}

function asLatin1(s: string | Buffer): string {
  return typeof s === 'string' ? s : s.toString('latin1');
}

function quote(s: string): string {
  return JSON.stringify(s.length > 40 ? s.slice(0, 40) : s);
}

// The formats, byte for byte against the vectors of walbust's Go tests
// (protocol/formats_test.go, protocol/event_test.go).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  protocol,
  tombstone,
  lease,
  parseTombstone,
  parseLease,
  encodeEnvelope,
  parseEnvelope,
  decode,
  parseEvent,
  match,
  newToken,
  isStale,
  jitter,
  resolveOptions,
} from '../dist/index.js';

const tok = '0123456789abcdef0123456789abcdef';
const MAX_U64 = (1n << 64n) - 1n;

test('tombstone and lease formats', () => {
  for (const [lsn, ts, ls] of [
    [0n, 'wbfence:1:0:' + tok, 'wblease:1:0:' + tok],
    [1n, 'wbfence:1:1:' + tok, 'wblease:1:1:' + tok],
    [0x16b374d848n, 'wbfence:1:97500059720:' + tok, 'wblease:1:97500059720:' + tok],
    [MAX_U64, 'wbfence:1:18446744073709551615:' + tok, 'wblease:1:18446744073709551615:' + tok],
  ]) {
    assert.equal(tombstone(lsn, tok), ts);
    assert.equal(lease(lsn, tok), ls);
    assert.deepEqual(parseTombstone(ts), { lsn, token: tok });
    assert.deepEqual(parseLease(ls), { lsn, token: tok });
    assert.deepEqual(parseTombstone(Buffer.from(ts)), { lsn, token: tok });
    assert.throws(() => parseTombstone(ls));
    assert.throws(() => parseLease(ts));
  }
  assert.throws(() => tombstone(-1n, tok));
  assert.throws(() => tombstone(MAX_U64 + 1n, tok));
});

test('parseTombstone rejects what Go rejects', () => {
  for (const s of [
    '',
    'wbfence:1:',
    'wbfence:1:5',
    'wbfence:1:5:',
    'wbfence:1::' + tok,
    'wbfence:1:05:' + tok,
    'wbfence:1:-5:' + tok,
    'wbfence:1:+5:' + tok,
    'wbfence:1:18446744073709551616:' + tok,
    'wbfence:1:5:' + tok.toUpperCase(),
    'wbfence:1:5:0123456789abcde',
    'wbfence:1:5:' + 'a'.repeat(65),
    'wbfence:1:5:' + tok + ':x',
    'wbfence:2:5:' + tok,
    'WBFENCE:1:5:' + tok,
    ' wbfence:1:5:' + tok,
    'wbfence:1:5:' + tok + '\n',
  ]) {
    assert.throws(() => parseTombstone(s), undefined, JSON.stringify(s));
    assert.equal(decode(s).kind, 'foreign', JSON.stringify(s));
  }
});

test('newToken', () => {
  const seen = new Set();
  for (let i = 0; i < 100; i++) {
    const t = newToken();
    assert.match(t, /^[0-9a-f]{32}$/);
    assert.ok(!seen.has(t));
    seen.add(t);
  }
});

test('envelope encode and parse', () => {
  const soft = 1700000000123;
  const b = (s) => Buffer.from(s, 'latin1');
  for (const [env, want] of [
    [{ softExpiry: soft, nonce: tok, notFound: false, payload: b('hello') }, b(`wbval:1:1700000000123:${tok}:v:hello`)],
    [{ softExpiry: soft, nonce: tok, notFound: false, payload: b('a:b:c\x00\xff') }, b(`wbval:1:1700000000123:${tok}:v:a:b:c\x00\xff`)],
    [{ softExpiry: soft, nonce: tok, notFound: false, payload: Buffer.alloc(0) }, b(`wbval:1:1700000000123:${tok}:v:`)],
    [{ softExpiry: soft, nonce: tok, notFound: true, payload: Buffer.alloc(0) }, b(`wbval:1:1700000000123:${tok}:n:`)],
    [{ softExpiry: 0, nonce: tok, notFound: false, payload: b('x') }, b(`wbval:1:0:${tok}:v:x`)],
  ]) {
    const got = encodeEnvelope(env);
    assert.ok(got.equals(want), `${got.toString('latin1')} != ${want.toString('latin1')}`);
    const back = parseEnvelope(got);
    assert.equal(back.softExpiry, env.softExpiry);
    assert.equal(back.nonce, env.nonce);
    assert.equal(back.notFound, env.notFound);
    assert.ok(back.payload.equals(env.payload));
    assert.equal(decode(got).kind, 'value');
  }
  // The payload is a copy: it shares no memory with the input.
  const raw = b(`wbval:1:5:${tok}:v:abc`);
  const env = parseEnvelope(raw);
  raw[raw.length - 1] = 0x78;
  assert.equal(env.payload.toString(), 'abc');
  for (const s of [
    'wbval:1:',
    `wbval:1:1:${tok}:v`,
    `wbval:1:01:${tok}:v:x`,
    `wbval:1:x:${tok}:v:x`,
    'wbval:1:1:abc:v:x',
    `wbval:1:1:${tok}:q:x`,
    `wbval:1:1:${tok}:n:x`,
    `wbval:1:1:${tok}::x`,
    `wbval:2:1:${tok}:v:x`,
    `wbval:1:99999999999999999999:${tok}:v:x`,
    `wbval:1:4611686018427387905:${tok}:v:x`, // 2^62 + 1
  ]) {
    assert.throws(() => parseEnvelope(b(s)), undefined, s);
  }
  assert.ok(!isStale({ softExpiry: soft }, soft - 1));
  assert.ok(isStale({ softExpiry: soft }, soft));
});

test('decode', () => {
  for (const [s, kind, lsn] of [
    ['wbfence:1:42:' + tok, 'tombstone', 42n],
    ['wblease:1:42:' + tok, 'lease', 42n],
    ['wblease:1:0:' + tok, 'lease', 0n],
    [`wbval:1:5:${tok}:v:42`, 'value', undefined],
    ['42', 'foreign', undefined],
    ['', 'foreign', undefined],
    ['wbfence:1:42', 'foreign', undefined],
    ['wbval:1:junk', 'foreign', undefined],
  ]) {
    const c = decode(Buffer.from(s));
    assert.equal(c.kind, kind, s);
    if (lsn !== undefined) assert.equal(c.fence.lsn, lsn);
  }
  assert.equal(decode(null).kind, 'absent');
});

test('events', () => {
  const cases = [
    [`{"lsn":"0/A","keys":["k"],"patterns":["p*"]}`, { lsn: 10n, keys: ['k'], patterns: ['p*'], flush: false }],
    [`{"lsn":"0/a"}`, { lsn: 10n, keys: [], patterns: [], flush: false }],
    [`{"lsn":"0/A","keys":null,"patterns":null}`, { lsn: 10n, keys: [], patterns: [], flush: false }],
    [`{"lsn":"0/A","flush":true,"future":{"x":1}}`, { lsn: 10n, keys: [], patterns: [], flush: true }],
    [
      `{"lsn":"16/B374D848","keys":["product:1","category:7:products"],"patterns":["search:users:\\\\*:*"]}`,
      { lsn: 0x16b374d848n, keys: ['product:1', 'category:7:products'], patterns: ['search:users:\\*:*'], flush: false },
    ],
    [`{"lsn":"0/1","keys":["a\\"b\\\\c\\n\\u003cé\\u003e"],"patterns":[]}`, { lsn: 1n, keys: ['a"b\\c\n<é>'], patterns: [], flush: false }],
  ];
  for (const [json, want] of cases) assert.deepEqual(parseEvent(json), want, json);
  for (const bad of ['', 'null', '[]', '{}', '{"keys":["k"]}', '{"lsn":5}', '{"lsn":"5"}', '{"lsn":"0/A","keys":"k"}', '{"lsn":"0/A","keys":[1]}', '{"lsn":"0/A"']) {
    assert.throws(() => parseEvent(bad), undefined, bad);
  }
  // Go's Marshal output, as walbust publishes it.
  assert.equal(
    protocol.formatEvent({ lsn: 0x16b374d848n, keys: ['product:1', 'category:7:products'], patterns: ['search:users:\\*:*'] }),
    `{"lsn":"16/B374D848","keys":["product:1","category:7:products"],"patterns":["search:users:\\\\*:*"]}`,
  );
  assert.equal(protocol.formatEvent({ lsn: 1n, flush: true }), `{"lsn":"0/1","keys":[],"patterns":[],"flush":true}`);
  const ev = { lsn: 0n, keys: ['product:1'], patterns: ['category:*:products', 'search:\\*'], flush: false };
  for (const [key, want] of Object.entries({
    'product:1': true,
    'product:10': false,
    'category:7:products': true,
    'category:7': false,
    'search:*': true,
    'search:x': false,
  })) {
    assert.equal(protocol.eventTouches(ev, key), want, key);
  }
  assert.ok(protocol.eventTouches({ lsn: 0n, keys: [], patterns: [], flush: true }, 'anything'));
});

test('match: the table of protocol/formats_test.go', () => {
  for (const [p, k, want] of [
    ['*', '', true],
    ['*', 'anything', true],
    ['', '', true],
    ['**', '', false],
    ['a*', 'a', true],
    ['', 'a', false],
    ['a', '', false],
    ['user:*', 'user:1', true],
    ['user:*', 'users:1', false],
    ['search:users:\\*:*', 'search:users:*:p1', true],
    ['search:users:\\*:*', 'search:users:bob:p1', false],
    ['h?llo', 'hello', true],
    ['h?llo', 'hllo', false],
    ['h[ae]llo', 'hallo', true],
    ['h[ae]llo', 'hillo', false],
    ['h[^e]llo', 'hallo', true],
    ['h[^e]llo', 'hello', false],
    ['h[a-b]llo', 'hbllo', true],
    ['h[b-a]llo', 'hbllo', true],
    ['h[a-b]llo', 'hcllo', false],
    ['a\\[b', 'a[b', true],
    ['a[\\]]b', 'a]b', true],
    ['a[', 'ab', false],
    ['a[^', 'ab', true],
    ['a\\', 'a\\', true],
    ['**a**', 'xxa', true],
    ['a*b*c', 'abxxc', true],
    ['a*b*c', 'acb', false],
    ['*:products', 'category:7:products', true],
    ['category:*:products', 'category:7:products:extra', false],
  ]) {
    assert.equal(match(p, k), want, `match(${JSON.stringify(p)}, ${JSON.stringify(k)})`);
  }
  // High bytes: whatever a signed or an unsigned C char would match.
  const p = Buffer.from([0x5b, 0x61, 0x2d, 0xff, 0x5d]); // [a-\xff]
  for (const k of [[0x62], [0xfe], [0xff], [0x00], [0x41]]) assert.ok(match(p, Buffer.from(k)), String(k));
});

test('options: defaults and validation', () => {
  const o = resolveOptions({ l1: true });
  assert.deepEqual(
    [o.ttl, o.jitter, o.negativeTtl, o.leaseTtl, o.leaseWait, o.loadTimeout, o.fillMargin, o.fenceTtl, o.staleWhileRevalidate],
    [600000, 0.1, 30000, 10000, 2000, 10000, 250, 60000, 0],
  );
  assert.deepEqual(o.l1, { channel: 'walbust:events', ttl: 5000, maxEntries: 10000, pingInterval: 1000 });
  assert.equal(o.staleKey, '{key}:stale');
  assert.equal(o.versionKey, '{key}:version');
  for (const bad of [{ ttl: 0.5 }, { jitter: 1 }, { staleWhileRevalidate: -1 }, { leaseTtl: -1 }, { fillMargin: -1 }, { loadTimeout: -1 }, { l1: { ttl: -1 } }, { l1: { maxEntries: -1 } }, { staleKey: 'x' }, { versionedKey: '{key}:v' }]) {
    assert.throws(() => resolveOptions(bad), undefined, JSON.stringify(bad));
  }
});

test('jitter', () => {
  let lo = Infinity;
  let hi = 0;
  for (let i = 0; i < 2000; i++) {
    const d = jitter(3_600_000, 0.1);
    lo = Math.min(lo, d);
    hi = Math.max(hi, d);
  }
  assert.ok(lo >= 3_240_000 && hi <= 3_960_000, `[${lo}, ${hi}]`);
  assert.ok(hi - lo >= 360_000, 'too narrow to spread expiries');
  assert.equal(jitter(3_600_000, -1), 3_600_000);
  assert.equal(jitter(0, 0.5), 1);
});

test('applied and settled keys', () => {
  assert.equal(protocol.appliedKey('walbust'), 'walbust:applied:{walbust}');
  assert.equal(protocol.settledKey('walbust'), 'walbust:settled:{walbust}');
});

// The vectors of Go's TestPastPageHeader (cacheaside/wait_test.go).
test('pastPageHeader maps an LSN just past a WAL page header to the boundary', () => {
  const blk = 8192n;
  const seg = 16n << 20n;
  for (const [lsn, want] of [
    [0x1_0000_2018n, 0x1_0000_2000n], // past a short header
    [0x1_0100_0028n, 0x1_0100_0000n], // past a segment's long header
    [0x1_0100_0018n, 0x1_0100_0018n], // 24 bytes into a segment's first page: a real position
    [0x1_0000_2020n, 0x1_0000_2020n],
    [0x1_0000_2000n, 0x1_0000_2000n],
  ]) {
    assert.equal(protocol.pastPageHeader(lsn, blk, seg), want, protocol.formatLsn(lsn));
  }
});

// The vectors of Go's TestRefreshMark and TestHasHashTag (protocol/refresh_test.go).
test('refresh LSN key: mark and hash tag', () => {
  const m = (lsn = 0n, stale = false, staleLsn = 0n) => ({ lsn, stale, staleLsn });
  for (const [raw, want] of [
    [null, m()],
    ['', m()],
    ['16/B374D848', m(0x16b374d848n)],
    ['0/1', m(1n)],
    [Buffer.from('16/B374D848 stale 16/B3750000'), m(0x16b374d848n, true, 0x16b3750000n)],
    ['0/0 stale 1/0', m(0n, true, 1n << 32n)],
    ['garbage', m()],
    ['garbage stale 0/10', m(0n, true, 0x10n)],
    ['FFFFFFFF/FFFFFFFF', m(MAX_U64)],
  ]) {
    assert.deepEqual(protocol.parseRefreshMark(raw), want, String(raw));
  }
  assert.equal(protocol.refreshLsnKey('{product:42}'), '{product:42}:lsn');
  for (const [key, want] of Object.entries({
    '{product:42}': true,
    'user:{5}:profile': true,
    '{user}:5': true,
    'product:42': false,
    '{}product:42': false,
    'product:{42': false,
    'a}b{c}': true,
    '{}{x}': false,
    'category:{{1}}:xs': true,
  })) {
    assert.equal(protocol.hasHashTag(key), want, key);
  }
});

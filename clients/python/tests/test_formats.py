"""The stored forms and events, byte for byte as Go's package protocol.

The vectors are those of protocol/formats_test.go and protocol/event_test.go
(and replication/wal's LSN form); each Go case has its twin here.
"""

import json

import pytest

from walbust_cache import protocol as p
from walbust_cache.options import KeyFormat, Observation, Options, jitter
from walbust_cache.protocol import Envelope, Event, Fence, Kind, ProtocolError

TOK = "0123456789abcdef0123456789abcdef"
MAX_U64 = (1 << 64) - 1


@pytest.mark.parametrize("lsn,tomb,lease", [
    (0, "wbfence:1:0:" + TOK, "wblease:1:0:" + TOK),
    (1, "wbfence:1:1:" + TOK, "wblease:1:1:" + TOK),
    (0x16B374D848, "wbfence:1:97500059720:" + TOK, "wblease:1:97500059720:" + TOK),
    (MAX_U64, "wbfence:1:18446744073709551615:" + TOK, "wblease:1:18446744073709551615:" + TOK),
])
def test_tombstone_and_lease_formats(lsn, tomb, lease):
    assert p.tombstone(lsn, TOK) == tomb.encode()
    assert p.lease(lsn, TOK) == lease.encode()
    assert p.parse_tombstone(tomb) == Fence(lsn, TOK)
    assert p.parse_lease(lease.encode()) == Fence(lsn, TOK)
    with pytest.raises(ProtocolError):
        p.parse_tombstone(lease)
    with pytest.raises(ProtocolError):
        p.parse_lease(tomb)


def test_lsn_out_of_range_is_refused_on_encode():
    with pytest.raises(ValueError):
        p.tombstone(MAX_U64 + 1, TOK)
    with pytest.raises(ValueError):
        p.lease(-1, TOK)


@pytest.mark.parametrize("s", [
    "",
    "wbfence:1:",
    "wbfence:1:5",
    "wbfence:1:5:",
    "wbfence:1::" + TOK,
    "wbfence:1:05:" + TOK,
    "wbfence:1:-5:" + TOK,
    "wbfence:1:+5:" + TOK,
    "wbfence:1:18446744073709551616:" + TOK,
    "wbfence:1:5:" + TOK.upper(),
    "wbfence:1:5:0123456789abcde",
    "wbfence:1:5:" + "a" * 65,
    "wbfence:1:5:" + TOK + ":x",
    "wbfence:2:5:" + TOK,
    "WBFENCE:1:5:" + TOK,
    " wbfence:1:5:" + TOK,
    "wbfence:1:5:" + TOK + "\n",
    # Python's int() would take these; Go's parser (and Lua's pattern) does not.
    "wbfence:1:5_0:" + TOK,
    "wbfence:1:\u0665:" + TOK,
])
def test_parse_tombstone_rejects(s):
    with pytest.raises(ProtocolError):
        p.parse_tombstone(s)
    assert p.decode(s).kind == Kind.FOREIGN


def test_new_token():
    seen = set()
    for _ in range(100):
        t = p.new_token()
        assert len(t) == 32 and all(c in "0123456789abcdef" for c in t)
        assert t not in seen
        seen.add(t)


SOFT = 1700000000123


@pytest.mark.parametrize("env,want", [
    (Envelope(SOFT, TOK, b"hello"), b"wbval:1:1700000000123:" + TOK.encode() + b":v:hello"),
    (Envelope(SOFT, TOK, b"a:b:c\x00\xff"), b"wbval:1:1700000000123:" + TOK.encode() + b":v:a:b:c\x00\xff"),
    (Envelope(SOFT, TOK, b""), b"wbval:1:1700000000123:" + TOK.encode() + b":v:"),
    (Envelope(SOFT, TOK, not_found=True), b"wbval:1:1700000000123:" + TOK.encode() + b":n:"),
    (Envelope(0, TOK, b"x"), b"wbval:1:0:" + TOK.encode() + b":v:x"),
])
def test_envelope(env, want):
    got = env.encode()
    assert got == want
    back = p.parse_envelope(got)
    assert back == env
    assert p.decode(got).kind == Kind.VALUE
    assert p.decode(got).envelope == env


@pytest.mark.parametrize("s", [
    "wbval:1:",
    "wbval:1:1:" + TOK + ":v",
    "wbval:1:01:" + TOK + ":v:x",
    "wbval:1:x:" + TOK + ":v:x",
    "wbval:1:1:abc:v:x",
    "wbval:1:1:" + TOK + ":q:x",
    "wbval:1:1:" + TOK + ":n:x",
    "wbval:1:1:" + TOK + "::x",
    "wbval:2:1:" + TOK + ":v:x",
    "wbval:1:99999999999999999999:" + TOK + ":v:x",
    "wbval:1:" + str((1 << 62) + 1) + ":" + TOK + ":v:x",
])
def test_envelope_rejects(s):
    with pytest.raises(ProtocolError):
        p.parse_envelope(s)
    assert p.decode(s).kind == Kind.FOREIGN


def test_envelope_stale():
    e = Envelope(SOFT, TOK)
    assert not e.is_stale(SOFT - 1)
    assert e.is_stale(SOFT)


@pytest.mark.parametrize("s,kind,lsn", [
    ("wbfence:1:42:" + TOK, Kind.TOMBSTONE, 42),
    ("wblease:1:42:" + TOK, Kind.LEASE, 42),
    ("wblease:1:0:" + TOK, Kind.LEASE, 0),
    ("wbval:1:5:" + TOK + ":v:42", Kind.VALUE, 0),
    ("42", Kind.FOREIGN, 0),
    ("", Kind.FOREIGN, 0),
    ("wbfence:1:42", Kind.FOREIGN, 0),
    ("wbval:1:junk", Kind.FOREIGN, 0),
])
def test_decode(s, kind, lsn):
    c = p.decode(s.encode())
    assert (c.kind, c.fence.lsn) == (kind, lsn)


def test_decode_absent():
    assert p.decode(None).kind == Kind.ABSENT


# --- LSNs and the applied key ------------------------------------------------


def test_pg_lsn():
    assert p.format_pg_lsn(0x16B374D848) == "16/B374D848"
    assert p.format_pg_lsn(0) == "0/0"
    assert p.parse_pg_lsn("16/B374D848") == 0x16B374D848
    assert p.parse_pg_lsn("0/a") == 10
    for bad in ["", "5", "/1", "1/", "123456789/0", "g/0", "0/-1"]:
        with pytest.raises(ProtocolError):
            p.parse_pg_lsn(bad)
    assert p.applied_key("walbust") == "walbust:applied:{walbust}"
    assert p.settled_key("walbust") == "walbust:settled:{walbust}"


# The vectors of Go's TestPastPageHeader (cacheaside/wait_test.go).
@pytest.mark.parametrize("lsn,want", [
    (0x1_0000_2018, 0x1_0000_2000),  # past a short header
    (0x1_0100_0028, 0x1_0100_0000),  # past a segment's long header
    (0x1_0100_0018, 0x1_0100_0018),  # 24 bytes into a segment's first page: a real position
    (0x1_0000_2020, 0x1_0000_2020),
    (0x1_0000_2000, 0x1_0000_2000),
])
def test_past_page_header(lsn, want):
    from walbust_cache import _common

    assert _common.past_page_header(lsn, 8192, 16 << 20) == want


def test_wait_lsn_argument():
    from walbust_cache import _common

    assert _common.lsn_arg(0x16B374D848) == 0x16B374D848
    assert _common.lsn_arg("16/B374D848") == 0x16B374D848
    assert _common.lsn_arg(" 16/b374d848\n") == 0x16B374D848  # as psql prints it
    assert _common.lsn_arg(b"0/A") == 10
    with pytest.raises(ProtocolError):
        _common.lsn_arg("16B374D848")
    for bad in [-1, 1 << 64]:
        with pytest.raises(ValueError):
            _common.lsn_arg(bad)
    for bad in [True, 1.5, None]:
        with pytest.raises(TypeError):
            _common.lsn_arg(bad)


# --- events ------------------------------------------------------------------


@pytest.mark.parametrize("ev,want", [
    (Event(0x16B374D848, ["product:1", "category:7:products"], ["search:users:\\*:*"]),
     r'{"lsn":"16/B374D848","keys":["product:1","category:7:products"],"patterns":["search:users:\\*:*"]}'),
    (Event(1), '{"lsn":"0/1","keys":[],"patterns":[]}'),
    (Event(1, flush=True), '{"lsn":"0/1","keys":[],"patterns":[],"flush":true}'),
    # Go's "bad\xff": a str that is not valid UTF-8 (surrogateescape'd bytes).
    (Event(1, ["ok", b"bad\xff".decode("utf-8", "surrogateescape")]),
     '{"lsn":"0/1","keys":["ok"],"patterns":[],"flush":true}'),
    (Event(1, patterns=[b"\xc3(".decode("utf-8", "surrogateescape")]),
     '{"lsn":"0/1","keys":[],"patterns":[],"flush":true}'),
    (Event(1, ["a\"b\\c\n<é>"]), '{"lsn":"0/1","keys":["a\\"b\\\\c\\n\\u003cé\\u003e"],"patterns":[]}'),
    (Event(1, ["&\u2028\u2029\x01\b\f\t\r"]),
     '{"lsn":"0/1","keys":["\\u0026\\u2028\\u2029\\u0001\\b\\f\\t\\r"],"patterns":[]}'),
])
def test_event_marshal(ev, want):
    b = ev.marshal()
    assert b == want.encode("utf-8")
    assert Event.unmarshal(b).lsn == ev.lsn


@pytest.mark.parametrize("s,want", [
    ('{"lsn":"0/A","keys":["k"],"patterns":["p*"]}', Event(10, ["k"], ["p*"])),
    ('{"lsn":"0/a"}', Event(10)),
    ('{"lsn":"0/A","keys":null,"patterns":null}', Event(10)),
    ('{"lsn":"0/A","flush":true,"future":{"x":1}}', Event(10, flush=True)),
])
def test_event_unmarshal(s, want):
    assert Event.unmarshal(s) == want


@pytest.mark.parametrize("s", ["", "null", "[]", "{}", '{"keys":["k"]}', '{"lsn":5}', '{"lsn":"5"}',
                               '{"lsn":"0/A","keys":"k"}', '{"lsn":"0/A","keys":[1]}', '{"lsn":"0/A"'])
def test_event_unmarshal_rejects(s):
    with pytest.raises(ProtocolError):
        Event.unmarshal(s)


def test_event_touches():
    ev = Event(keys=["product:1"], patterns=["category:*:products", "search:\\*"])
    for key, want in {"product:1": True, "product:10": False, "category:7:products": True, "category:7": False,
                      "search:*": True, "search:x": False}.items():
        assert ev.touches(key) is want, key
    assert Event(flush=True).touches("anything")


# --- glob matching (protocol.Match) ------------------------------------------


@pytest.mark.parametrize("pattern,key,want", [
    ("*", "", True), ("*", "anything", True), ("", "", True), ("**", "", False), ("a*", "a", True),
    ("", "a", False), ("a", "", False), ("user:*", "user:1", True), ("user:*", "users:1", False),
    ("search:users:\\*:*", "search:users:*:p1", True), ("search:users:\\*:*", "search:users:bob:p1", False),
    ("h?llo", "hello", True), ("h?llo", "hllo", False), ("h[ae]llo", "hallo", True), ("h[ae]llo", "hillo", False),
    ("h[^e]llo", "hallo", True), ("h[^e]llo", "hello", False), ("h[a-b]llo", "hbllo", True),
    ("h[b-a]llo", "hbllo", True), ("h[a-b]llo", "hcllo", False), ("a\\[b", "a[b", True), ("a[\\]]b", "a]b", True),
    ("a[", "ab", False), ("a[^", "ab", True), ("a\\", "a\\", True), ("**a**", "xxa", True), ("a*b*c", "abxxc", True),
    ("a*b*c", "acb", False), ("*:products", "category:7:products", True),
    ("category:*:products", "category:7:products:extra", False),
])
def test_match_table(pattern, key, want):
    assert p.match(pattern, key) is want


def test_match_high_bytes_is_superset():
    pat = b"[a-\xff]"
    for k in [b"b", b"\xfe", b"\xff", b"\x00", b"A"]:
        assert p.match(pat, k), k


# --- options -----------------------------------------------------------------


def test_options_defaults_and_validation():
    o = Options().validate()
    assert (o.ttl, o.jitter, o.negative_ttl, o.lease_ttl, o.lease_wait, o.load_timeout, o.fill_margin,
            o.fence_ttl, o.stale_while_revalidate) == (600, 0.1, 30, 10, 2, 10, 0.25, 60, 0)
    from walbust_cache import L1Options
    l1 = L1Options()
    assert (l1.channel, l1.ttl, l1.max_entries, l1.ping_interval) == ("walbust:events", 5, 10000, 1)
    for bad in [dict(ttl=0.0001), dict(jitter=1), dict(stale_while_revalidate=-1), dict(lease_ttl=-1),
                dict(fill_margin=-1), dict(load_timeout=0), dict(stale_key="stale"), dict(version_key="{key}"),
                dict(l1=L1Options(ttl=-1)), dict(l1=L1Options(max_entries=-1))]:
        with pytest.raises(ValueError):
            Options.build(None, bad)
    with pytest.raises(TypeError):
        Options.build(None, {"nope": 1})
    assert KeyFormat("{key}:stale")("user:{5}") == "user:{5}:stale"
    assert KeyFormat("v:{key}")("x") == "v:x"
    assert Observation(fence_lsn=5).replica_caught_up(6) and not Observation(fence_lsn=5).replica_caught_up(5)


def test_jitter():
    vals = [jitter(3600, 0.1) for _ in range(2000)]
    assert min(vals) >= 3240 and max(vals) <= 3960
    assert max(vals) - min(vals) >= 360
    assert jitter(3600, -1) == 3600
    assert jitter(0, 0.5) == 0.001


def test_event_json_is_json():
    # What we marshal is what any JSON reader reads.
    ev = Event(7, ["k\u00e9", "<a&b>"], ["p*"])
    assert json.loads(ev.marshal()) == {"lsn": "0/7", "keys": ["k\u00e9", "<a&b>"], "patterns": ["p*"]}


# The vectors of Go's TestRefreshMark and TestHasHashTag (protocol/refresh_test.go).
@pytest.mark.parametrize("raw,want", [
    (None, p.RefreshMark()),
    ("", p.RefreshMark()),
    ("16/B374D848", p.RefreshMark(0x16_B374D848)),
    ("0/1", p.RefreshMark(1)),
    (b"16/B374D848 stale 16/B3750000", p.RefreshMark(0x16_B374D848, True, 0x16_B3750000)),
    ("0/0 stale 1/0", p.RefreshMark(0, True, 1 << 32)),
    ("garbage", p.RefreshMark()),
    ("garbage stale 0/10", p.RefreshMark(0, True, 0x10)),
    ("FFFFFFFF/FFFFFFFF", p.RefreshMark(MAX_U64)),
])
def test_refresh_mark(raw, want):
    assert p.parse_refresh_mark(raw) == want


def test_refresh_lsn_key_and_hash_tag():
    assert p.refresh_lsn_key("{product:42}") == "{product:42}:lsn"
    for key, want in {
        "{product:42}": True, "user:{5}:profile": True, "{user}:5": True, "product:42": False,
        "{}product:42": False, "product:{42": False, "a}b{c}": True, "{}{x}": False, "category:{{1}}:xs": True,
    }.items():
        assert p.has_hash_tag(key) is want, key

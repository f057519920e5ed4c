"""The package's Lua scripts are walbust's protocol/lua/ files, byte for byte.

walbust_cache/lua/ is a committed copy (make -C clients/python sync-lua);
these tests fail as soon as it drifts from protocol/lua/ or from the SHA1s
in protocol/testdata/lua.sha1 (the names EVALSHA knows the scripts by).
"""

import hashlib
from pathlib import Path

import pytest

from walbust_cache import scripts

from conftest import REPO_ROOT

PROTOCOL_LUA = REPO_ROOT / "protocol" / "lua"
SUMS = REPO_ROOT / "protocol" / "testdata" / "lua.sha1"


def sums():
    out = {}
    for line in SUMS.read_text().splitlines():
        if line.strip():
            sha, name = line.split()
            out[Path(name).name] = sha
    return out


def test_protocol_sources_present():
    if not PROTOCOL_LUA.is_dir():
        pytest.fail(f"{PROTOCOL_LUA} missing: run the tests from a walbust checkout")
    names = {p.name for p in PROTOCOL_LUA.glob("*.lua")}
    assert {"cas.lua", "fence.lua", "lease.lua"} <= names, names


# Every protocol script has its copy here, byte for byte: the ones this
# client runs and the ones it does not use yet (the index scripts).
@pytest.mark.parametrize("name", sorted(p.name for p in PROTOCOL_LUA.glob("*.lua")))
def test_copy_is_identical(name):
    ours = (scripts.LUA_DIR / name).read_bytes()
    theirs = (PROTOCOL_LUA / name).read_bytes()
    assert ours == theirs, f"walbust_cache/lua/{name} differs from protocol/lua/{name}: run make -C clients/python sync-lua"


@pytest.mark.parametrize("script", [scripts.CAS, scripts.FENCE, scripts.LEASE], ids=lambda s: s.name)
def test_sha1_matches_testdata(script):
    want = sums()[script.name]
    assert hashlib.sha1((scripts.LUA_DIR / script.name).read_bytes()).hexdigest() == want
    assert script.sha == want


def test_no_extra_copies():
    assert sorted(p.name for p in scripts.LUA_DIR.glob("*.lua")) == sorted(sums())


def test_redis_knows_them_by_that_sha(rdb):
    for s in (scripts.CAS, scripts.FENCE, scripts.LEASE):
        assert rdb.script_load(s.source) == s.sha

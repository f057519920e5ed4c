#!/usr/bin/env python3
"""Copy walbust's protocol Lua scripts (protocol/lua/*.lua) into the package
(walbust_cache/lua/), byte for byte, and check them against
protocol/testdata/lua.sha1. Run from anywhere: make -C clients/python sync-lua.
With --check it only reports whether the copies are current (exit 1 if not)."""

import hashlib
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent
SRC = PKG.parent.parent / "protocol" / "lua"
DST = PKG / "walbust_cache" / "lua"
SUMS = PKG.parent.parent / "protocol" / "testdata" / "lua.sha1"


def main() -> int:
    check = "--check" in sys.argv[1:]
    sums = {}
    for line in SUMS.read_text().splitlines():
        if line.strip():
            sha, name = line.split()
            sums[Path(name).name] = sha
    stale = []
    for src in sorted(SRC.glob("*.lua")):
        data = src.read_bytes()
        if hashlib.sha1(data).hexdigest() != sums.get(src.name):
            print(f"{src}: SHA1 is not the one in {SUMS}", file=sys.stderr)
            return 1
        dst = DST / src.name
        if not dst.exists() or dst.read_bytes() != data:
            stale.append(src.name)
            if not check:
                DST.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(data)
                print(f"copied {src.name}")
    for extra in sorted(set(p.name for p in DST.glob("*.lua")) - set(p.name for p in SRC.glob("*.lua"))):
        stale.append(extra)
        if not check:
            (DST / extra).unlink()
            print(f"removed {extra}")
    if check and stale:
        print("out of date: " + ", ".join(stale) + " (run make -C clients/python sync-lua)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

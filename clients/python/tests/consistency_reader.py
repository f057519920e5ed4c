#!/usr/bin/env python3
"""A fleet of fenced cache-aside readers for cmd/walbust-consistency.

The harness spawns this with /usr/bin/python3 and reads what it does from
stdout, one JSON object a line:

  {"ready": true}                      connected; reading from now on
  {"id": 7, "t": 1764630000123456, "v": 41}
                                       one read of key PREFIX7: it began at t
                                       (Unix microseconds) and returned v
  {"id": 7, "err": "..."}              a read that failed
  {"stats": {"loads": ..., ...}}       the client's counters, last

Threads (--readers) read random keys PREFIX1..PREFIX{rows} through
walbust_cache.Client until stdin reaches end of file. On a miss the loader
fetches the row's value from the harness's load endpoint (--load, which
queries the primary or the replica and records the fence LSN the load had
observed), then sometimes stalls (1 load in 10, up to --stall seconds) before
the client fills: the populate race's window. Values are cached as
"<val>/python", so the harness can tell which language filled a key.

The client depends on redis-py only, so the database is read through the
harness rather than with a Postgres driver of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clients/python

import redis  # noqa: E402

from walbust_cache import Client  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", required=True, help="redis://host:port")
    ap.add_argument("--load", required=True, help="the harness's load URL, e.g. http://127.0.0.1:1234/load?db=primary")
    ap.add_argument("--prefix", required=True, help="key prefix, e.g. fen:p:")
    ap.add_argument("--rows", type=int, required=True, help="keys PREFIX1..PREFIX{rows}")
    ap.add_argument("--readers", type=int, default=4, help="reader threads")
    ap.add_argument("--stall", type=float, default=0.0, help="longest stall between load and fill, seconds (1 load in 10)")
    ap.add_argument("--lang", default="python", help="tag appended to cached values")
    a = ap.parse_args()

    load = urllib.parse.urlsplit(a.load)
    load_path = load.path + ("?" + load.query + "&" if load.query else "?")
    out_lock = threading.Lock()
    pending: list = []

    def emit(obj, flush: bool = False) -> None:
        line = json.dumps(obj, separators=(",", ":"))
        with out_lock:
            pending.append(line)
            if flush or len(pending) >= 256:
                sys.stdout.write("\n".join(pending) + "\n")
                sys.stdout.flush()
                pending.clear()

    local = threading.local()

    def fetch(path: str) -> bytes:
        for attempt in range(2):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(load.hostname, load.port, timeout=30)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                local.conn = None
                if attempt:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"load: HTTP {resp.status}: {body[:200]!r}")
            return body
        raise AssertionError("unreachable")

    rdb = redis.Redis.from_url(a.redis, socket_timeout=30)
    rdb.ping()
    client = Client(rdb, ttl=3600.0)
    stop = threading.Event()

    def reader() -> None:
        rnd = random.Random()
        while not stop.is_set():
            i = rnd.randint(1, a.rows)

            def loader(obs, i=i) -> str:
                v = fetch(f"{load_path}id={i}&fence={obs.fence_lsn}").decode()
                if a.stall > 0 and rnd.randrange(10) == 0:
                    time.sleep(rnd.random() * a.stall)
                return f"{v}/{a.lang}"

            t = time.time_ns() // 1000
            try:
                b = client.get(f"{a.prefix}{i}", loader)
                v = int(b.split(b"/", 1)[0])
            except Exception as e:  # counted by the harness
                emit({"id": i, "err": f"{type(e).__name__}: {e}"[:300]})
                continue
            emit({"id": i, "t": t, "v": v})

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(a.readers)]
    emit({"ready": True}, flush=True)
    for th in threads:
        th.start()
    sys.stdin.buffer.read()  # the harness closes stdin to stop us
    stop.set()
    for th in threads:
        th.join(60)
    client.close()
    emit({"stats": dataclasses.asdict(client.stats())}, flush=True)
    rdb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

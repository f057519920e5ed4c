"""One "process" of the stampede test: a Client with its own connections
and many threads reading one key at once (run with multiprocessing)."""

import threading
import time


def run(port, key, threads, lease_wait, ready, start, results):
    import redis

    from walbust_cache import Client

    r = redis.Redis(port=port)
    c = Client(r, lease_wait=lease_wait)
    loads = 0
    lock = threading.Lock()
    wrong = failed = 0

    def load(obs):
        nonlocal loads
        with lock:
            loads += 1
        time.sleep(0.05)  # the database query
        return b"new"

    def reader():
        nonlocal wrong, failed
        start.wait(30)
        try:
            v = c.get(key, load)
        except Exception:
            with lock:
                failed += 1
            return
        if v != b"new":
            with lock:
                wrong += 1

    ts = [threading.Thread(target=reader) for _ in range(threads)]
    for t in ts:
        t.start()
    r.ping()  # connected
    ready.put(1)
    for t in ts:
        t.join(60)
    c.close()
    results.put((loads, wrong, failed))

"""Fixtures: throwaway redis-server processes (standalone and a 3-node
Cluster) on free loopback ports, and walbust's sandbox when it is around.

The servers are the binaries only (redis-server, redis-cli); nothing is
persisted and everything is stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
import redis

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent  # clients/python
REPO_ROOT = PKG_ROOT.parent.parent
if str(PKG_ROOT) not in sys.path:
    sys.path.insert(0, str(PKG_ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server on a free loopback port."""

    def __init__(self, workdir: Path, extra: Optional[List[str]] = None) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra or []
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(self.dir))
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, **kw)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="walbust-cache-py-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    srv = RedisServer(workdir / "standalone")
    yield srv
    srv.stop()


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A flushed server and a client of its own (a "process")."""
    r = redis_server.client()
    r.flushdb()
    yield r
    r.close()


@pytest.fixture
def new_redis(redis_server: RedisServer) -> Iterator:
    """Makes more clients of the same server, each a "process" of its own."""
    made: List[redis.Redis] = []

    def make() -> redis.Redis:
        r = redis_server.client()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


class RedisClusterNodes:
    """Three redis-server --cluster-enabled masters joined by redis-cli."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes: List[RedisServer] = []
        try:
            for i in range(masters):
                bus = free_port()
                self.nodes.append(RedisServer(workdir / f"cluster-{i}", [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "1000", "--cluster-port", str(bus)]))
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            out = subprocess.run(
                [cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-replicas", "0",
                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create: {out.stdout}\n{out.stderr}")
            deadline = time.monotonic() + 30
            while True:
                infos = [n.client().cluster("info") for n in self.nodes]
                states = [i.get("cluster_state") if isinstance(i, dict) else i for i in infos]
                if all(s == "ok" for s in states):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok: {states}")
                time.sleep(0.1)
        except Exception:
            self.stop()
            raise

    @property
    def startup_nodes(self):
        from redis.cluster import ClusterNode

        return [ClusterNode("127.0.0.1", n.port) for n in self.nodes]

    def client(self) -> "redis.RedisCluster":
        return redis.RedisCluster(startup_nodes=self.startup_nodes)

    def async_client(self):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes])

    def flush(self) -> None:
        for n in self.nodes:
            n.client().flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_cluster(workdir: Path) -> Iterator[RedisClusterNodes]:
    c = RedisClusterNodes(workdir / "cluster")
    yield c
    c.stop()


# --- walbust's sandbox (cmd/walbust-sandbox) ---------------------------------


def sandbox_env() -> Optional[Dict[str, str]]:
    """The sandbox's settings: from the file WALBUST_SANDBOX_ENV_FILE names
    (KEY=VALUE lines, as --env-file writes them), else from the environment.
    None when there is no sandbox. Its Redis is WALBUST_SANDBOX_REDIS_URL
    (standalone) or WALBUST_SANDBOX_REDIS_CLUSTER (host:port,... of a Redis
    Cluster: --redis cluster, WALBUST_SANDBOX_REDIS_MODE=cluster)."""
    env: Dict[str, str] = {}
    path = os.environ.get("WALBUST_SANDBOX_ENV_FILE")
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            k = k.strip()
            if k.startswith("export "):
                k = k[len("export "):].strip()
            env[k] = v.strip().strip("'\"")
    for k, v in os.environ.items():
        if k.startswith("WALBUST_SANDBOX_"):
            env.setdefault(k, v)
    if "WALBUST_SANDBOX_REDIS_URL" not in env and "WALBUST_SANDBOX_REDIS_CLUSTER" not in env:
        if env.get("WALBUST_SANDBOX_READY") == "1":
            # Under clients/with-sandbox: a sandbox is up, so its tests must run.
            pytest.fail("the sandbox is ready but gave neither WALBUST_SANDBOX_REDIS_URL nor WALBUST_SANDBOX_REDIS_CLUSTER")
        return None
    return env


@pytest.fixture(scope="session")
def sandbox() -> Dict[str, str]:
    env = sandbox_env()
    if env is None:
        pytest.skip("no walbust sandbox: set WALBUST_SANDBOX_ENV_FILE (cmd/walbust-sandbox --env-file) "
                    "or the WALBUST_SANDBOX_* variables")
    return env


def sandbox_redis(env: Dict[str, str]):
    """A client of the sandbox's Redis: redis.Redis, or redis.RedisCluster
    over the nodes of WALBUST_SANDBOX_REDIS_CLUSTER."""
    nodes = env.get("WALBUST_SANDBOX_REDIS_CLUSTER")
    cluster = env.get("WALBUST_SANDBOX_REDIS_MODE") == "cluster" or "WALBUST_SANDBOX_REDIS_URL" not in env
    if cluster:
        if not nodes:
            pytest.fail("WALBUST_SANDBOX_REDIS_MODE=cluster but no WALBUST_SANDBOX_REDIS_CLUSTER")
        from redis.cluster import ClusterNode

        startup = []
        for addr in nodes.split(","):
            host, _, port = addr.strip().rpartition(":")
            startup.append(ClusterNode(host or "127.0.0.1", int(port)))
        return redis.RedisCluster(startup_nodes=startup)
    return redis.Redis.from_url(env["WALBUST_SANDBOX_REDIS_URL"])


def eventually(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what}")
        time.sleep(0.005)

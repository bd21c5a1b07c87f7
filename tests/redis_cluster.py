"""A real Redis Cluster for the tests: three primaries of Debian's ``redis-server`` on
127.0.0.1, their slots assigned by ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.local.base import free_port, port_is_open

BUS_OFFSET = 10000
"""A cluster node talks to the others on its port plus 10000."""


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + BUS_OFFSET < 65536 and not port_is_open(port + BUS_OFFSET) \
                and port not in ports:
            ports.append(port)
    return ports


@contextmanager
def redis_cluster(home: Path, primaries: int = 3, timeout_s: float = 60.0) -> Iterator[str]:
    """Start the cluster in ``home``; yields its ``redis+cluster://`` URL (any node)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli are missing (Debian: redis-server)"
    ports = _ports(primaries)
    procs = []
    try:
        for port in ports:
            node = home / str(port)
            node.mkdir(parents=True)
            procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while not all(port_is_open(p) for p in ports):
            assert time.monotonic() < deadline, "the Redis Cluster nodes did not start"
            time.sleep(0.1)
        create = subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s)
        assert create.returncode == 0, create.stdout + create.stderr
        for port in ports:
            while "cluster_state:ok" not in subprocess.run(
                    [cli, "-p", str(port), "cluster", "info"], capture_output=True,
                    text=True, timeout=10).stdout:
                assert time.monotonic() < deadline, "the Redis Cluster did not come up"
                time.sleep(0.2)
        yield f"redis+cluster://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

"""Redis from Debian's ``redis-server``: the Feast online store."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import quote

from infra.local.base import LocalService, PrerequisiteError


def ensure_debian_package(binary: str, package: str, service: str) -> str:
    """Return the path of ``binary``, installing the Debian ``package`` when it is missing.

    Installing needs root and apt; without them the error says what to run.
    """
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PrerequisiteError(
            f"{service}: '{binary}' is missing; install it (Debian: apt-get install {package})."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise PrerequisiteError(
                f"{service}: 'apt-get install {package}' failed: {result.stderr.strip()[-300:]}"
            )
    path = shutil.which(binary)
    if path is None:
        raise PrerequisiteError(f"{service}: '{binary}' still missing after installing {package}.")
    return path


FACTORY_USER_RULES = ("~* resetchannels -@all +@connection +@read +@write +@keyspace "
                      "+@scripting +@transaction -@dangerous")
"""What the factory's Redis user may do: every key (Feast's keys are binary entity keys,
beside the factory's ``factory:*``), no pub/sub channel, the data, key and scripting
commands (Lua scripts of the router, the watermark and Feast's fast path), and none of
the dangerous ones (``FLUSHALL``, ``KEYS``, ``CONFIG``, ``ACL``, ``SHUTDOWN``, ...)."""


@dataclass
class RedisService(LocalService):
    """A Redis server bound to 127.0.0.1 that keeps its data across a restart: an
    append-only file in its folder, written once a second (the Feast online store, the
    label watermark and the model route survive ``factory down``/``up``; a crash loses
    at most the last second).

    ``password`` (``REDIS_PASSWORD``) protects the default user; with ``username``
    (``REDIS_USERNAME``) the default user is turned off and that ACL user gets the
    password and :data:`FACTORY_USER_RULES`. The configuration holds the password's
    SHA-256 only.
    """

    name: str = "redis"
    password: str | None = None
    username: str | None = None

    def __post_init__(self) -> None:
        self.ports.setdefault("redis", 6379)

    def url(self) -> str:
        user = quote(self.username or "", safe="")
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.ports['redis']}/0"

    def display_url(self) -> str:
        user = f"{self.username}:" if self.username else ":"
        auth = f"{user}**********@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.ports['redis']}/0"

    def acl_lines(self) -> list[str]:
        """The ``user`` directives of the configuration."""
        if self.username and not self.password:
            raise PrerequisiteError("redis: REDIS_USERNAME needs REDIS_PASSWORD (the ACL "
                                    "user's password).")
        if not self.password:
            return []
        if any(c.isspace() for c in self.password + (self.username or "")):
            raise PrerequisiteError("redis: REDIS_USERNAME and REDIS_PASSWORD must not "
                                    "contain white space.")
        digest = "#" + hashlib.sha256(self.password.encode()).hexdigest()
        if not self.username:
            return [f"user default on {digest} ~* &* +@all"]
        return ["user default off resetpass -@all",
                f"user {self.username} on {digest} {FACTORY_USER_RULES}"]

    def prepare(self) -> None:
        ensure_debian_package("redis-server", "redis-server", "redis")
        conf = [
            "bind 127.0.0.1",
            f"port {self.ports['redis']}",
            f"dir {self.home}",
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            "protected-mode yes",
            "daemonize no",
            "logfile \"\"",
        ]
        conf += self.acl_lines()
        path = self.home / "redis.conf"
        path.write_text("\n".join(conf) + "\n")
        path.chmod(0o600)

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [shutil.which("redis-server") or "redis-server", str(self.home / "redis.conf")], {}

    def healthy(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url(), socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

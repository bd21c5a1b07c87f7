"""Which model version scores new batches, and which one shadows it: shared in Redis.

The retrainer writes the route; every scoring worker reads it once a micro-batch and
acknowledges the generation it has moved to. A swap is then:

1. load version N+1 in Triton beside N; :meth:`ModelRouter.set_shadow` ``(N+1)``: each
   batch is also scored by N+1, and those scores are logged, never used for decisions;
2. :meth:`ModelRouter.promote` ``(N+1)``: every batch a worker starts after reading the
   new generation goes to N+1, whole (a batch never mixes versions);
3. :meth:`ModelRouter.drained` ``(generation)`` once every live worker acknowledged it:
   no batch is still on its way to N, which can be unloaded.

Rollback is a promotion of the older version (loaded again first). Workers with no
route yet (a fresh store) score with the newest version Triton reports READY.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from streams.clients.redis_conn import connect

# Fields change together, and the generation moves forward by one for every change.
_SET_ROUTE = """
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'serving', ARGV[1], 'shadow', ARGV[2], 'changed_at', ARGV[3])
return generation
"""


ROUTE_FIELDS = ["serving", "shadow", "generation"]

# Deletes the lock only when the caller still holds it (its token is the value).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RouteBusy(RuntimeError):
    """Another swap or rollback holds the route's lock; the message names its holder."""


@dataclass(frozen=True)
class Route:
    """The route of one generation: ``serving`` decides, ``shadow`` (0: none) only logs."""

    serving: int
    shadow: int
    generation: int


class ModelRouter:
    """The route of one model in a Redis hash, and the workers' acknowledgements."""

    def __init__(self, redis_url: str, model: str = "fraud_detector",
                 ack_ttl_s: float = 30.0) -> None:
        self.client = connect(redis_url)
        self.key = f"factory:router:{model}"
        self.acks_key = f"{self.key}:acks"
        self.lock_key = f"{self.key}:lock"
        self.ack_ttl_s = ack_ttl_s
        self._set = self.client.register_script(_SET_ROUTE)  # type: ignore[misc]  # redis-py types register_script's self as Redis only; RedisCluster has it too
        self._release = self.client.register_script(_RELEASE)  # type: ignore[misc]  # redis-py types register_script's self as Redis only; RedisCluster has it too

    @contextmanager
    def lock(self, holder: str, ttl_s: float = 1800.0) -> Iterator[None]:
        """Hold the route for one swap or rollback, so that two never interleave (the
        retrainer of ``factory serve`` and ``factory model promote`` from a shell).

        Raises :class:`RouteBusy` at once when another holder has it; the lock expires
        after ``ttl_s`` should its holder die mid-swap.
        """
        token = f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since "
        token += f"{time.strftime('%H:%M:%S')}) {uuid.uuid4().hex[:8]}"
        if not self.client.set(self.lock_key, token, nx=True, px=int(ttl_s * 1000)):
            other = self.client.get(self.lock_key)
            holder = other.decode() if isinstance(other, bytes) else "a holder that just left"
            raise RouteBusy(f"another swap is in progress: {holder}")
        try:
            yield
        finally:
            self._release(keys=[self.lock_key], args=[token])

    def route(self) -> Route | None:
        """The current route; ``None`` before any was set."""
        return self.parse_route(self.client.hmget(self.key, ROUTE_FIELDS))  # type: ignore[arg-type]  # redis-py types sync replies as Awaitable | T

    @staticmethod
    def parse_route(values: list[bytes | None]) -> Route | None:
        """The route from the ``HMGET`` of :data:`ROUTE_FIELDS` (for callers that batch it
        with other reads in one round trip)."""
        if values[0] is None:
            return None
        return Route(int(values[0]), int(values[1] or 0), int(values[2] or 0))

    def _write(self, serving: int, shadow: int) -> Route:
        generation = self._set(keys=[self.key],
                               args=[str(serving), str(shadow), repr(time.time())])
        return Route(serving, shadow, int(generation))

    def promote(self, version: int) -> Route:
        """Route every new batch to ``version``, with no shadow."""
        return self._write(version, 0)

    def set_shadow(self, version: int) -> Route:
        """Keep the serving version and let ``version`` shadow it (0 stops shadowing)."""
        current = self.route()
        if current is None:
            raise RuntimeError("no serving version yet; promote one before shadowing")
        return self._write(current.serving, version)

    def acknowledge(self, worker: str, generation: int) -> None:
        """A worker's word that its next batches follow ``generation`` (or later)."""
        self.client.hset(self.acks_key, worker, f"{generation}:{time.time()!r}")

    def acknowledgements(self) -> dict[str, tuple[int, float]]:
        """Each worker's acknowledged generation and when it said so (Unix s)."""
        out = {}
        acks: dict[bytes, bytes] = self.client.hgetall(self.acks_key)  # type: ignore[assignment]  # redis-py types sync replies as Awaitable | T
        for worker, value in acks.items():
            generation, _, at = value.decode().partition(":")
            out[worker.decode()] = (int(generation), float(at))
        return out

    def drained(self, generation: int) -> bool:
        """Whether every worker heard from in the last ``ack_ttl_s`` is at ``generation``.

        Workers acknowledge once a batch, so one that has been silent longer than the TTL
        has stopped (its batches in flight are gone with it). With no live worker at all,
        nothing is in flight either.
        """
        now = time.time()
        live = [g for g, at in self.acknowledgements().values() if now - at <= self.ack_ttl_s]
        return all(g >= generation for g in live)

    def wait_drained(self, generation: int, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.drained(generation):
                return True
            time.sleep(0.1)
        return False

    def reset(self) -> None:
        """Forget the route and the acknowledgements (a fresh deployment)."""
        for key in (self.key, self.acks_key, self.lock_key):  # one slot each in a cluster
            self.client.delete(key)

    def close(self) -> None:
        self.client.close()

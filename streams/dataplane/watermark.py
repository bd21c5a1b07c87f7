"""The label watermark: how far the labels stream has been applied, shared in Redis.

Each labels worker records, per ``labels`` partition it owns, the ``known_at`` of the
last label whose terminal state is already in Feast. Labels are produced in ``known_at``
order, so every label of a partition known strictly before that time is applied. A
transaction at ``t`` sees every label known by ``t`` once :meth:`LabelWatermark.current`
is greater than ``t``; strict replay waits for that, live mode exports the gap.
"""

from __future__ import annotations

from streams.clients.redis_conn import connect

# Sets a partition's mark only forward, so a restarted worker never moves it back.
_ADVANCE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if (not old) or tonumber(old) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


class LabelWatermark:
    """Per-partition label marks of one labels consumer group, in a Redis hash."""

    def __init__(self, redis_url: str, group: str, partitions: int) -> None:
        self.client = connect(redis_url)
        self.key = f"factory:label-watermark:{group}"
        self.partitions = partitions
        self._advance = self.client.register_script(_ADVANCE)  # type: ignore[misc]  # redis-py types register_script's self as Redis only; RedisCluster has it too

    def advance(self, partition: int, known_at: float) -> None:
        self._advance(keys=[self.key], args=[str(partition), repr(float(known_at))])

    def reset(self) -> None:
        """Forget every mark of the group, so scorers wait until labels are applied again."""
        self.client.delete(self.key)

    def forget(self, partitions: list[int]) -> None:
        """Forget the marks of ``partitions``: a labels worker that takes a partition
        replays its labels since the last commit and pushes terminal state rebuilt from
        its changelog, so for a while Feast may hold less than the old mark promised.
        Strict scorers wait until the partition is marked again."""
        if partitions:
            self.client.hdel(self.key, *[str(p) for p in partitions])

    def current(self) -> float | None:
        """The smallest mark over all partitions; ``None`` until each has one."""
        return self.parse(self.client.hgetall(self.key))  # type: ignore[arg-type]  # redis-py types sync replies as Awaitable | T

    def parse(self, marks: dict[bytes, bytes]) -> float | None:
        """:meth:`current` from the ``HGETALL`` of :attr:`key` (for callers that batch it
        with other reads in one round trip)."""
        if len(marks) < self.partitions:
            return None
        return min(float(value) for value in marks.values())

    def close(self) -> None:
        self.client.close()

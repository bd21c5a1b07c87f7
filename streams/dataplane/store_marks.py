"""Marks of what the online store holds, so that a Redis that lost its data is noticed.

The workers' changelog-backed tables are the truth; Redis holds a copy (Feast's online
store) and the control state beside it (the route, the label watermark). A worker that
has pushed the whole state of one of its partitions to Redis sets that partition's field
in a hash, ``factory:online-store:<group>``, in the same Redis. A Redis restarted empty
(or flushed) loses the hash with the data, so:

* each worker checks its partitions' fields once a commit interval, and pushes a
  partition's whole table again when its field is missing (then sets it);
* a scoring worker reads how many partitions of its labels group are marked, in the
  round trip of every batch; once it has seen them all, a smaller count means the terminal
  label state is gone, and it scores nothing until the labels worker has put it back.
"""

from __future__ import annotations

import time

from streams.clients.redis_conn import Client


def marks_key(group: str) -> str:
    """The hash of one consumer group's marks."""
    return f"factory:online-store:{group}"


class StoreMarks:
    """One group's marks: a field a partition, set once the partition's state is pushed."""

    def __init__(self, client: Client, group: str) -> None:
        self.client = client
        self.key = marks_key(group)

    def missing(self, partitions: list[int]) -> list[int]:
        """The partitions of ``partitions`` whose state is not marked as in the store."""
        if not partitions:
            return []
        found: list[bytes | None] = self.client.hmget(self.key, [str(p) for p in partitions])  # type: ignore[assignment]  # redis-py types sync replies as Awaitable | T
        return [p for p, value in zip(partitions, found, strict=True) if value is None]

    def mark(self, partition: int, who: str) -> None:
        """``partition``'s whole state is in the store (pushed by ``who``)."""
        self.client.hset(self.key, str(partition), f"{who} at {time.time():.3f}")

    def count(self) -> int:
        return int(self.client.hlen(self.key))  # type: ignore[arg-type]  # redis-py types sync replies as Awaitable | T

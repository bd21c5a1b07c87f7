"""Dead letters: the original bytes, untouched, with headers that say why.

Header names follow Kafka Connect's ``__connect.errors.*`` convention under the
``factory.errors.`` prefix.
"""

from __future__ import annotations

PREFIX = "factory.errors."


def dead_letter_headers(
    topic: str, partition: int, offset: int, stage: str, error: BaseException
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter for the message at ``topic/partition/offset``."""
    kind = getattr(error, "kind", None)
    headers = [
        (PREFIX + "topic", topic.encode()),
        (PREFIX + "partition", str(partition).encode()),
        (PREFIX + "offset", str(offset).encode()),
        (PREFIX + "stage", stage.encode()),
        (PREFIX + "exception.class.name", type(error).__name__.encode()),
        (PREFIX + "exception.message", str(error).encode()[:4096]),
    ]
    if kind:
        headers.append((PREFIX + "reason", str(kind).encode()))
    return headers


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``factory.errors.*`` headers of a message as a plain dict without the prefix."""
    return {
        name[len(PREFIX):]: value.decode(errors="replace")
        for name, value in headers or []
        if name.startswith(PREFIX)
    }

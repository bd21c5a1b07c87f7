"""Change marks of the terminal label arrays, so a scorer reads again only what changed.

Every push of a terminal's label arrays (the labels worker's, through either Feast path)
also sets the terminal's field in one Redis hash beside Feast's keys to a token that no
other push uses (a random prefix per process and a counter). A scorer keeps the arrays it
read with the token it read them under, and a batch asks Redis, in one script, for the
arrays of only those terminals whose token differs (:mod:`streams.clients.feast_fast`). A token is
never reused, so a flushed or restarted Redis, whose hash starts empty again, cannot make
an old copy look current. A write to the terminal view that does not go through these
pushes (a Feast materialization into it, say) moves no token: delete the hash
(:func:`versions_key`) after one, and the scorers read every terminal again.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def versions_key(project: str, view: str) -> bytes:
    """The hash of change tokens of ``view``'s label arrays in Feast project ``project``."""
    return f"factory:label-versions:{project}:{view}".encode()


def mark_changed(key: bytes, ids: np.ndarray) -> tuple[str | bytes, ...]:
    """The ``HSET`` command that gives each of ``ids`` a new token (one for this push)."""
    token = f"{_PREFIX}:{next(_COUNTER)}".encode()
    fields = np.asarray(ids, dtype=np.int64).tolist()
    return ("HSET", key, *itertools.chain.from_iterable((str(i).encode(), token)
                                                         for i in fields))

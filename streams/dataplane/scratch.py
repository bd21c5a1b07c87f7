"""Scratch arrays each thread keeps between calls of the batch functions.

The arrays as long as all the labels of a batch (:mod:`streams.dataplane.terminal_features`,
:mod:`streams.dataplane.terminal_histories`) live in scratch buffers that each thread keeps
between calls (a fresh array that size is paged in at every call, which costs more than
the work done in it): a few times 8 bytes a label of the largest batch seen, up to
:data:`_SCRATCH_MAX` bytes a buffer.
"""

from __future__ import annotations

import threading

import numpy as np

_SCRATCH_MAX = 64 << 20
"""Largest scratch buffer kept by a thread between calls, in bytes."""
_scratch = threading.local()


def buffer(name: str, size: int, dtype: type) -> np.ndarray:
    """``size`` items of the scratch buffer ``name`` of this thread (any content).

    A buffer grows to a quarter above the largest size asked for; one above
    :data:`_SCRATCH_MAX` bytes is not kept. The caller never returns it, nor keeps it
    past the call.
    """
    buffers = _scratch.__dict__
    buffer = buffers.get(name)
    if buffer is None or len(buffer) < size:
        buffer = np.empty(size + size // 4 + 1024, dtype=dtype)
        if buffer.nbytes > _SCRATCH_MAX:
            return buffer[:size]
        buffers[name] = buffer
    return buffer[:size]

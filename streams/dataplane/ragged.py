"""Ragged arrays laid end to end: many short arrays (one a card or terminal of a batch)
concatenated, with the start offset of each, so one numpy call works on all of them.

Besides the segments themselves: ranges of positions laid end to end and reductions over
each range, and binary searches run on every query at once, each confined to its own
range ``[lo, hi)`` (a card's or a terminal's entries), so they compare exact values and
never a key mixing the segment with the value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def segments(lengths: np.ndarray) -> np.ndarray:
    """Start offsets of consecutive segments of ``lengths``, and the total at the end."""
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


def segment_of(starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Index of the (non-empty) segment holding each position (``starts``: :func:`segments`)."""
    return np.searchsorted(starts, positions, side="right") - 1


def ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranges ``[starts[j], stops[j])`` laid end to end: positions, and range lengths.

    An empty or reversed range gives nothing (length 0).
    """
    lengths = np.maximum(stops - starts, 0)
    offsets = np.cumsum(lengths)
    total = int(offsets[-1]) if len(offsets) else 0
    offsets -= lengths
    positions = np.arange(total, dtype=np.int64)
    positions += np.repeat(starts - offsets, lengths)
    return positions, lengths


def owners(lengths: np.ndarray) -> np.ndarray:
    """The range number of each position of :func:`ranges`."""
    return np.repeat(np.arange(len(lengths)), lengths)


def reduce_ranges(ufunc: np.ufunc, values: np.ndarray, lengths: np.ndarray,
                  empty: float) -> np.ndarray:
    """``ufunc.reduce`` of each range of ``values`` laid out by :func:`ranges` (range
    ``lengths``); ``empty`` for an empty range."""
    out = np.full(len(lengths), empty, dtype=values.dtype)
    filled = lengths > 0
    if filled.any():
        offsets = np.cumsum(lengths) - lengths
        out[filled] = ufunc.reduceat(values, offsets[filled])
    return out


def first_above(values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                bound: np.ndarray) -> np.ndarray:
    """For each query, the first index of ``[lo, hi)`` whose value is above ``bound``.

    ``values[lo:hi]`` must be non-decreasing; ``hi`` where no value is above. A binary
    search run on every query at once: the last index at most ``bound`` moves up by
    halving powers of two, ``log2(max(hi - lo))`` steps.
    """
    last = lo - 1  # the last index known to hold a value at most bound
    span = int(np.max(hi - lo, initial=0))
    if not len(values) or span <= 0:
        return last + 1
    step = 1 << (span.bit_length() - 1)
    end = len(values) - 1
    while step:
        ahead = last + step
        up = ahead < hi
        np.minimum(ahead, end, out=ahead)  # where up is False: any index will do
        up &= values[ahead] <= bound  # (indexing, unlike take, copies no strided values)
        np.copyto(last, ahead, where=up)
        step >>= 1
    return last + 1


def first_not(lo: np.ndarray, hi: np.ndarray,
              before: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """For each query, the first row of ``[lo, hi)`` that ``before`` says False of, or hi.

    ``before(rows)`` tells, for each query, whether its row (an index array, one per
    query, clipped by the callee to valid rows) comes before the query; along each query's
    rows it is True, then False. A binary search run on every query at once, halving each
    range ``log2(max(hi - lo))`` times.
    """
    base = lo.astype(np.int64, copy=True)
    length = np.maximum(hi - lo, 0)
    if not len(base):
        return base
    for _ in range((int(length.max()) - 1).bit_length()):
        half = length >> 1
        probe = base + half
        np.copyto(base, probe, where=before(probe))
        length -= half
    return base + ((length > 0) & before(base))

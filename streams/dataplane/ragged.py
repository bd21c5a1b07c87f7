"""Ragged arrays laid end to end: many short arrays (one a card or terminal of a batch)
concatenated, with the start offset of each, so one numpy call works on all of them."""

from __future__ import annotations

import numpy as np


def segments(lengths: np.ndarray) -> np.ndarray:
    """Start offsets of consecutive segments of ``lengths``, and the total at the end."""
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


def segment_of(starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Index of the (non-empty) segment holding each position (``starts``: :func:`segments`)."""
    return np.searchsorted(starts, positions, side="right") - 1

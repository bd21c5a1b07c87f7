"""Terminal features a whole batch of transactions at a time.

A vectorised version of :func:`streams.dataplane.features.terminal_window_features`,
equal to it bit for bit. The terminals of a batch are laid end to end in one array, each
at its offset; every search is a vectorised binary search confined to the query's own
terminal (``lo``, ``hi`` per query), so it compares the exact times, never a key mixing
terminal and time into one float.

Where exactness would take more than a few array operations, the scalar function does
the work, for those rows only: a row whose labels with event time up to ``t - delay``
include one not known by ``t`` (``known_at[:high].max() > t``: the scalar function's own
``known_at <= t`` filtering, which only labels later than the delay cause); a row whose
terminal has non-finite or unsorted event times or a NaN known time; a row whose ``t`` is
not finite.

The arrays as long as all the labels of a batch are scratch buffers of the thread
(:mod:`streams.dataplane.scratch`).
"""

from __future__ import annotations

import numpy as np

from streams.dataplane.features import (
    DAY,
    HORIZON_DAYS,
    LABEL_DELAY_DAYS,
    terminal_window_features,
)
from streams.dataplane.ragged import first_not as _first_not
from streams.dataplane.ragged import segment_of as _segment_of
from streams.dataplane.ragged import segments as _segments
from streams.dataplane.scratch import buffer as _buffer

# Offsets from the terminal windows' end: the end itself, then each window's start (as in
# streams.dataplane.features).
_OFFSETS = np.array([0, 1, 7, 30]) * DAY


def _search(values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            query: np.ndarray) -> np.ndarray:
    """``lo + np.searchsorted(values[lo:hi], query, "right")`` for each query.

    ``values[lo:hi]`` must be sorted; the comparisons are those of
    :func:`numpy.searchsorted` on a NaN-free slice (``<=``).
    """
    if not len(values):
        return lo.astype(np.int64, copy=True)
    return _first_not(lo, hi, lambda rows: np.take(values, rows, mode="clip") <= query)



def terminal_features_batch(arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                            terminal: np.ndarray, t: np.ndarray,
                            delay_days: float = LABEL_DELAY_DAYS) -> np.ndarray:
    """Terminal features of a batch of transactions, as :func:`terminal_window_features`.

    Parameters
    ----------
    arrays
        ``arrays[k]`` is ``(event_times, known_at, frauds)`` of the k-th distinct terminal
        of the batch, as :func:`streams.dataplane.features.terminal_arrays` gives them: event times
        sorted, frauds integer labels; possibly empty.
    terminal
        ``terminal[i]``: index into ``arrays`` of transaction i.
    t
        ``t[i]``: the event time of transaction i (Unix seconds).
    delay_days
        The label delay, as for :func:`terminal_window_features`.

    Returns
    -------
    numpy.ndarray
        float64 ``[n, 9]``; row i equals, bit for bit,
        ``terminal_window_features(*arrays[terminal[i]], float(t[i]), delay_days)``.

    Notes
    -----
    Counts come from a running sum of the frauds over all terminals laid end to end, the
    latest genuine label from a binary search in the running count of genuine labels, and
    the window bounds from a binary search confined to each row's terminal (exact times,
    no key mixing terminal and time). A row goes through the scalar function (exact
    still, at its cost) when one of its terminal's labels with event time at most
    ``t - delay`` is not known by ``t`` (the scalar function's ``known_at <= t``
    filtering, which only labels later than the delay cause), when its terminal has
    non-finite or unsorted event times or a NaN known time, or when ``t`` is not finite.
    """
    t = np.asarray(t, dtype=np.float64)
    terminal = np.asarray(terminal, dtype=np.int64)
    n = len(t)
    if terminal.shape != (n,) or t.ndim != 1:
        raise ValueError("terminal and t are 1-D arrays of the same length")
    features = np.empty((n, 9), dtype=np.float64)
    if not n:
        return features
    groups = len(arrays)
    if terminal.min() < 0 or terminal.max() >= groups:
        raise IndexError(f"terminal indices lie in [0, {groups})")
    lengths = np.fromiter((len(a[0]) for a in arrays), dtype=np.int64, count=groups)
    starts = _segments(lengths)
    size = int(starts[-1])
    # The terminals laid end to end, in this thread's buffers; the frauds go straight into
    # their running sum (running[m]: frauds in rows [0, m)).
    times = _buffer("times", size, np.float64)
    known_at = _buffer("known", size, np.float64)
    running = _buffer("running", size + 1, np.int64)
    running[0] = 0
    frauds = running[1:]
    if size:
        np.concatenate([a[0] for a in arrays], out=times)
        np.concatenate([a[1] for a in arrays], out=known_at)
        labels = [a[2] for a in arrays]
        if all(a.dtype.kind in "biu" for a in labels):
            np.concatenate(labels, out=frauds, casting="unsafe")
        else:
            exact = np.concatenate(labels)
            if not np.array_equal(exact, np.trunc(exact)):
                raise ValueError("frauds are integer labels")
            frauds[:] = exact

    # Terminals the vectorised path leaves to the scalar function: non-finite or unsorted
    # event times, NaN known times. (A sum is not finite when any of these is there.)
    odd = np.zeros(groups, dtype=bool)
    if not np.isfinite(np.add.reduce(times)):
        odd[_segment_of(starts, np.flatnonzero(~np.isfinite(times)))] = True
    if np.isnan(np.add.reduce(known_at)):
        odd[_segment_of(starts, np.flatnonzero(np.isnan(known_at)))] = True
    down = np.flatnonzero(np.less(times[1:], times[:-1],
                                  out=_buffer("down", max(size - 1, 0), np.bool_))) + 1
    down = down[np.searchsorted(starts, down) == np.searchsorted(starts, down, "right")]
    odd[_segment_of(starts, down)] = True  # a drop from one terminal to the next is no drop

    # Each row's labels up to its end, and the three windows' first ones: rows
    # [start, high) and [low, high) of the terminals laid end to end.
    start = starts[terminal]
    end = t - delay_days * DAY  # the scalar function's own operations
    bounds = end[:, None] - _OFFSETS
    found = _search(times, np.repeat(start, 4), np.repeat(starts[terminal + 1], 4),
                    bounds.ravel()).reshape(n, 4)
    high, lows = found[:, 0], found[:, 1:]

    # Counts and risks: running sums of the frauds and of the genuine labels.
    if size and (frauds.min() < 0 or frauds.max() > 1):
        honest = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(frauds == 0, out=honest[1:])
    else:
        honest = None  # 0/1 labels: the genuine ones before row m are m - running[m]
    np.cumsum(frauds, out=frauds)
    counts = high[:, None] - lows
    sums = running[high][:, None] - running[lows]
    risks = np.zeros(counts.shape, dtype=np.float64)
    np.divide(sums.astype(np.float64), counts.astype(np.float64), out=risks,
              where=counts > 0)
    features[:, 0:6:2] = counts
    features[:, 1:6:2] = risks

    # The latest genuine label before high, in the row's terminal: the row after it is
    # the first from which the count of genuine labels reaches that at high.
    def genuine_before(m: np.ndarray) -> np.ndarray:
        m = np.minimum(m, size)
        return m - running[m] if honest is None else honest[m]

    target = genuine_before(high)
    has_genuine = target > genuine_before(start)
    lo = _first_not(start + 1, high, lambda m: genuine_before(m) < target)
    latest = lo - 1
    run = np.where(has_genuine, high - lo, high - start)
    today = np.floor_divide(t, DAY) + 0.0  # + 0.0: no -0.0 where int() gives 0
    if size:
        first = times[np.where(has_genuine, lo, start).clip(0, size - 1)]
        run_days = np.minimum(today - np.floor_divide(first, DAY), HORIZON_DAYS) + 0.0
        since = np.minimum(today - np.floor_divide(times[latest.clip(0, size - 1)], DAY),
                           HORIZON_DAYS) + 0.0
    else:
        run_days = since = today
    features[:, 6] = run
    features[:, 7] = np.where(run > 0, run_days, 0.0)
    features[:, 8] = np.where(has_genuine, since, float(HORIZON_DAYS))

    # Rows the scalar function computes: some label up to the end is not yet known.
    scalar = odd[terminal] | ~np.isfinite(t)
    if size:
        nonempty = lengths > 0
        most = np.full(groups, -np.inf)
        most[nonempty] = np.maximum.reduceat(known_at, starts[:-1][nonempty])
        suspect = np.flatnonzero((most[terminal] > t) & (high > start) & ~scalar)
        if len(suspect):
            scalar[suspect] = _late(known_at, starts, lengths, terminal[suspect],
                                    high[suspect], t[suspect])
    for i in np.flatnonzero(scalar).tolist():
        features[i] = terminal_window_features(*arrays[int(terminal[i])], float(t[i]),
                                               delay_days)
    return features



def _late(known_at: np.ndarray, starts: np.ndarray, lengths: np.ndarray, terminal: np.ndarray,
          high: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Whether ``known_at[starts[terminal]:high].max() > t``, for each row (no NaN).

    A running maximum over the rows' terminals laid end to end, on complex numbers
    (terminal + 1j * known_at), whose order is lexicographic: the maximum never carries
    over from one terminal to the next, and the known times are compared exactly.
    """
    picked, where = np.unique(terminal, return_inverse=True)
    sizes = lengths[picked]
    offsets = _segments(sizes)
    span = np.repeat(starts[picked] - offsets[:-1], sizes) + np.arange(offsets[-1])
    keys = np.empty(offsets[-1], dtype=np.complex128)
    keys.real = np.repeat(np.arange(len(picked), dtype=np.float64), sizes)
    keys.imag = known_at[span]
    np.maximum.accumulate(keys, out=keys)
    return keys.imag[offsets[where] + (high - starts[terminal]) - 1] > t

"""Terminal features and terminal label states a whole batch at a time.

Vectorised versions of :func:`streams.dataplane.features.terminal_window_features` and
:func:`streams.dataplane.features.update_terminal_history`, equal to them bit for bit (features) and
byte for byte (states). The terminals of a batch are laid end to end in one array, each
at its offset; every search is a vectorised binary search confined to the query's own
terminal (``lo``, ``hi`` per query), so it compares the exact times and ids, never a key
mixing terminal and time into one float.

Where exactness would take more than a few array operations, the scalar function does
the work, for those rows or terminals only:

* :func:`terminal_features_batch`: a row whose labels with event time up to
  ``t - delay`` include one not known by ``t`` (``known_at[:high].max() > t``: the scalar
  function's own ``known_at <= t`` filtering, which only labels later than the delay
  cause); a row whose terminal has non-finite or unsorted event times or a NaN known
  time; a row whose ``t`` is not finite.
* :func:`update_terminal_histories`: a terminal whose labels in the batch go back in
  ``known_at`` or have a non-finite time; whose state holds a NaN time or one id twice;
  or where a label repeats an id (of the state or earlier in the batch) whose record is
  known at or before that label's horizon (``known_at - TERMINAL_RETENTION_S``), so may
  have expired before the repeat.

The arrays as long as all the labels of a batch live in scratch buffers that each thread
keeps between calls (a fresh array that size is paged in at every call, which costs
more than the work done in it): a few times 8 bytes a label of the largest batch seen,
up to :data:`_SCRATCH_MAX` bytes a buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from streams.dataplane.features import (
    DAY,
    HORIZON_DAYS,
    LABEL_DELAY_DAYS,
    TERMINAL_DTYPE,
    TERMINAL_RETENTION_S,
    terminal_window_features,
    update_terminal_history,
)
from streams.dataplane.ragged import segment_of as _segment_of
from streams.dataplane.ragged import segments as _segments

# Offsets from the terminal windows' end: the end itself, then each window's start (as in
# streams.dataplane.features).
_OFFSETS = np.array([0, 1, 7, 30]) * DAY
_RECORD = TERMINAL_DTYPE.itemsize
# Multiplier of the id hash (Fibonacci hashing) that picks the state ids worth an exact look.
_HASH = np.uint64(0x9E3779B97F4A7C15)
_SCRATCH_MAX = 64 << 20
"""Largest scratch buffer kept by a thread between calls, in bytes."""
_scratch = threading.local()


def _buffer(name: str, size: int, dtype: type) -> np.ndarray:
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


def _first_not(lo: np.ndarray, hi: np.ndarray,
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


def _search(values: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            query: np.ndarray) -> np.ndarray:
    """``lo + np.searchsorted(values[lo:hi], query, "right")`` for each query.

    ``values[lo:hi]`` must be sorted; the comparisons are those of
    :func:`numpy.searchsorted` on a NaN-free slice (``<=``).
    """
    if not len(values):
        return lo.astype(np.int64, copy=True)
    return _first_not(lo, hi, lambda rows: np.take(values, rows, mode="clip") <= query)


def _search_records(times: np.ndarray, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    qtime: np.ndarray, qid: np.ndarray) -> np.ndarray:
    """For each query, ``lo`` + the rows of ``[lo, hi)`` before ``(qtime, qid)``.

    Rows are sorted by ``(time, id)``; the order is Python's tuple order, as in
    :func:`update_terminal_history`.
    """
    if not len(times):
        return lo.astype(np.int64, copy=True)

    last = len(times) - 1

    def before(rows: np.ndarray) -> np.ndarray:
        # Indexing, not np.take: take would first copy a strided column whole.
        rows = np.minimum(rows, last)
        time = times[rows]
        return (time < qtime) | ((time == qtime) & (ids[rows] < qid))

    return _first_not(lo, hi, before)


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


def update_terminal_histories(states: list[bytes], terminal: np.ndarray, tx_id: np.ndarray,
                              event_time: np.ndarray, is_fraud: np.ndarray,
                              known_at: np.ndarray) -> list[bytes]:
    """Apply a batch of labels to terminal states, as :func:`update_terminal_history` does.

    Parameters
    ----------
    states
        Terminal states (:data:`streams.dataplane.features.TERMINAL_DTYPE` records sorted by
        ``(event_time, tx_id)``, as :func:`update_terminal_history` makes them; ``b""``:
        none).
    terminal
        ``terminal[i]``: index into ``states`` of the terminal of label i.
    tx_id, event_time, is_fraud, known_at
        The labels, in the order they are applied.

    Returns
    -------
    list[bytes]
        The new states, one for each of ``states``; equal, byte for byte, to applying
        ``update_terminal_history(state, int(tx_id[i]), float(event_time[i]),
        int(is_fraud[i]), float(known_at[i]))`` to each label in batch order. A state no
        label changed is returned as is.

    Notes
    -----
    With each terminal's known times non-decreasing over the batch, the horizons
    (``known_at - TERMINAL_RETENTION_S``) only grow, so a terminal's new state is its
    state and its new labels, less those known at or before the horizon of its last new
    label (the last one itself always stays), in ``(event_time, tx_id)`` order. A label
    whose id is in the state or earlier in the batch is ignored when that record was
    surely still there (known after the label's own horizon). A terminal goes through
    the scalar function, label by label, when its labels of the batch go back in
    ``known_at`` or have a non-finite time, when its state holds a NaN time or one id
    twice, or when a repeated id may have expired before its repeat.

    Raises
    ------
    ValueError
        A state is not a whole number of records, or an ``is_fraud`` does not fit a
        signed byte (the scalar function raises ``struct.error``).
    """
    result = list(states)
    terminal = np.asarray(terminal, dtype=np.int64)
    n = len(terminal)
    if not n:
        return result
    tx_id = np.asarray(tx_id, dtype=np.int64)
    event_time = np.asarray(event_time, dtype=np.float64)
    known_at = np.asarray(known_at, dtype=np.float64)
    raw_fraud = np.asarray(is_fraud)
    is_fraud = raw_fraud.astype(np.int64)
    if not all(len(a) == n for a in (tx_id, event_time, known_at, is_fraud)):
        raise ValueError("the label arrays have the same length")
    if is_fraud.min() < -128 or is_fraud.max() > 127:
        raise ValueError("is_fraud values fit a signed byte")
    if terminal.min() < 0 or terminal.max() >= len(states):
        raise IndexError(f"terminal indices lie in [0, {len(states)})")

    # Labels grouped by terminal, each group in batch order.
    order = np.argsort(terminal, kind="stable")
    grouped = terminal[order]
    opens = np.ones(n, dtype=bool)
    opens[1:] = grouped[1:] != grouped[:-1]
    first_label = np.flatnonzero(opens)
    label_stop = np.append(first_label[1:], n)
    touched = grouped[first_label]
    count = len(touched)
    group = np.cumsum(opens) - 1
    ids, times, known = tx_id[order], event_time[order], known_at[order]
    horizon = known - TERMINAL_RETENTION_S

    # The touched states laid end to end.
    old_states = [states[k] for k in touched.tolist()]
    sizes = np.fromiter(map(len, old_states), dtype=np.int64, count=count)
    if (sizes % _RECORD).any():
        raise ValueError(f"a terminal state is a whole number of {_RECORD}-byte records")
    lengths = sizes // _RECORD
    starts = _segments(lengths)
    size = int(starts[-1])
    joined = b"".join(old_states)
    old = np.frombuffer(joined, dtype=TERMINAL_DTYPE)
    old_times, old_known, old_ids = old["event_time"], old["known_at"], old["tx_id"]

    # Terminals for the scalar function.
    slow = np.zeros(count, dtype=bool)
    slow[group[~(np.isfinite(times) & np.isfinite(known))]] = True
    slow[group[1:][(known[1:] < known[:-1]) & ~opens[1:]]] = True
    nonempty = lengths > 0
    oldest = np.full(count, np.inf)
    if size:
        oldest[nonempty] = np.minimum.reduceat(old_known, starts[:-1][nonempty])
        slow |= np.isnan(oldest)
        if np.isnan(np.add.reduce(old_times)):
            slow[_segment_of(starts, np.flatnonzero(np.isnan(old_times)))] = True

    # Repeated ids: in the state (a hash of the ids picks the candidates, then an exact
    # match) or earlier in the batch.
    unique_ids = np.sort(ids)
    unique_ids = unique_ids[np.append(True, unique_ids[1:] != unique_ids[:-1])]
    key = group * len(unique_ids) + np.searchsorted(unique_ids, ids)
    bits = max(12, n.bit_length() + 6)  # a table 64 times as long as the batch
    table = np.zeros(1 << bits, dtype=bool)
    shift = np.uint64(64 - bits)
    table[(ids.view(np.uint64) * _HASH) >> shift] = True
    hashed = _buffer("hash", size, np.uint64)
    np.multiply(old_ids.view(np.uint64), _HASH, out=hashed)
    np.right_shift(hashed, shift, out=hashed)
    hit = np.take(table, hashed, out=_buffer("hit", size, np.bool_), mode="clip")
    candidates = np.flatnonzero(hit)
    at = np.minimum(np.searchsorted(unique_ids, old_ids[candidates]), len(unique_ids) - 1)
    same = unique_ids[at] == old_ids[candidates]
    matched = candidates[same]  # positions in the states of ids of the batch
    old_key = _segment_of(starts, matched) * len(unique_ids) + at[same]
    sorting = np.argsort(old_key, kind="stable")
    old_key, matched = old_key[sorting], matched[sorting]
    twice = old_key[1:] == old_key[:-1]
    slow[old_key[1:][twice] // len(unique_ids)] = True
    place = np.minimum(np.searchsorted(old_key, key), max(len(old_key) - 1, 0))
    in_state = (old_key[place] == key) if len(old_key) else np.zeros(n, dtype=bool)
    by_key = np.argsort(key, kind="stable")
    run_open = np.ones(n, dtype=bool)
    run_open[1:] = key[by_key][1:] != key[by_key][:-1]
    first_of = np.empty(n, dtype=np.int64)
    first_of[by_key] = by_key[np.maximum.accumulate(np.where(run_open, np.arange(n), 0))]
    applied = ~in_state & (first_of == np.arange(n))
    presence = known[first_of]
    if len(old_key):
        presence = np.where(in_state, old_known[matched[place]], presence)
    slow[group[~applied & ~(presence > horizon)]] = True

    # The last new label of each terminal sets its horizon.
    last_applied = np.maximum.reduceat(np.where(applied, np.arange(n), -1), first_label)
    fast = (last_applied >= 0) & ~slow
    cut = np.where(fast, horizon[np.maximum(last_applied, 0)], -np.inf)

    if fast.any():
        new = np.flatnonzero(applied & fast[group] & ((known > cut[group])
                                                      | (np.arange(n) == last_applied[group])))
        built = _rebuild(joined, starts, oldest, cut, fast, group[new], ids[new], times[new],
                         known[new], is_fraud[order][new])
        for g, state in zip(np.flatnonzero(fast).tolist(), built, strict=True):
            result[int(touched[g])] = state

    # The rest, label by label.
    for g in np.flatnonzero(slow).tolist():
        state = states[int(touched[g])]
        for i in order[first_label[g]:label_stop[g]].tolist():
            state = update_terminal_history(state, int(tx_id[i]), float(event_time[i]),
                                            int(raw_fraud[i]), float(known_at[i]))
        result[int(touched[g])] = state
    return result


def _rebuild(joined: bytes, starts: np.ndarray, oldest: np.ndarray, cut: np.ndarray,
             fast: np.ndarray, group: np.ndarray, ids: np.ndarray, times: np.ndarray,
             known: np.ndarray, is_fraud: np.ndarray) -> list[bytes]:
    """The new states of the ``fast`` terminals: their old records known after ``cut``
    and their new ones (``group``, ``ids``, ...), in ``(event_time, tx_id)`` order.

    ``joined`` holds the old states end to end, terminal g's at records
    ``[starts[g], starts[g + 1])``; ``oldest`` is each one's earliest known time.
    """
    # New records, sorted by (terminal, event_time, tx_id), and where they go among the
    # old ones.
    ordered = (group[1:] > group[:-1]) | ((group[1:] == group[:-1]) & (
        (times[1:] > times[:-1]) | ((times[1:] == times[:-1]) & (ids[1:] > ids[:-1]))))
    sort = np.arange(len(ids)) if ordered.all() else np.lexsort((ids, times, group))
    new_group = group[sort]
    records = np.empty(len(sort), dtype=TERMINAL_DTYPE)
    records["event_time"] = times[sort]
    records["known_at"] = known[sort]
    records["is_fraud"] = is_fraud[sort]
    records["tx_id"] = ids[sort]
    old = np.frombuffer(joined, dtype=TERMINAL_DTYPE)
    size = len(old)
    old_times, old_ids = old["event_time"], old["tx_id"]
    new_times, new_ids = times[sort], ids[sort]
    # Most go after the last old record of their terminal: one comparison; the others are
    # searched for.
    spot = starts[new_group + 1]
    last = np.maximum(spot - 1, 0)
    inside = spot > starts[new_group]
    if size:
        before = (old_times[last] < new_times) | ((old_times[last] == new_times)
                                                   & (old_ids[last] < new_ids))
        inside &= ~before
    search = np.flatnonzero(inside)
    spot[search] = _search_records(old_times, old_ids, starts[new_group[search]],
                                   spot[search], new_times[search], new_ids[search])
    count = len(fast)

    # Runs of old records that stay together: cut at each terminal's start, where a new
    # record goes, and around the records that expire.
    cuts = [starts[:-1][fast], spot]
    expired = _expired(old["known_at"], starts, np.where(fast & (oldest <= cut), cut, -np.inf))
    if len(expired):
        gap = np.ones(len(expired) + 1, dtype=bool)
        gap[1:-1] = expired[1:] != expired[:-1] + 1
        cuts += [expired[gap[:-1]], expired[gap[1:]] + 1]
    run_start = np.sort(np.concatenate(cuts), kind="stable")  # sorted runs: a merge
    run_start = run_start[np.append(True, run_start[1:] != run_start[:-1])]
    run_start = run_start[run_start < size]
    run_group = _segment_of(starts, run_start)
    run_stop = np.minimum(np.append(run_start[1:], size), starts[run_group + 1])
    wanted = fast[run_group] & (run_stop > run_start)
    if len(expired):
        at = np.minimum(np.searchsorted(expired, run_start), len(expired) - 1)
        wanted &= expired[at] != run_start
    run_start, run_stop, run_group = run_start[wanted], run_stop[wanted], run_group[wanted]

    # Pieces of the new states in order: by terminal, then position; a new record comes
    # before the run that starts where it goes. Neighbours from one source merge.
    scale = 2 * (size + 1)
    run_key = run_group * scale + 2 * run_start + 1
    new_key = new_group * scale + 2 * spot
    pieces = len(run_key) + len(records)
    run_at = np.arange(len(run_key)) + np.searchsorted(new_key, run_key)
    new_at = np.arange(len(records)) + np.searchsorted(run_key, new_key)
    low = np.empty(pieces, dtype=np.int64)
    high = np.empty(pieces, dtype=np.int64)
    owner = np.empty(pieces, dtype=np.int64)
    source = np.zeros(pieces, dtype=bool)  # False: the old states, True: the new records
    low[run_at], high[run_at], owner[run_at] = run_start, run_stop, run_group
    low[new_at] = np.arange(len(records))
    high[new_at] = low[new_at] + 1
    owner[new_at], source[new_at] = new_group, True
    joins = np.ones(pieces, dtype=bool)
    joins[1:] = ((owner[1:] != owner[:-1]) | (source[1:] != source[:-1])
                 | (low[1:] != high[:-1]))
    heads = np.flatnonzero(joins)
    tails = np.append(heads[1:], pieces) - 1
    low, high, owner, source = low[heads], high[tails], owner[heads], source[heads]
    firsts = np.searchsorted(owner, np.arange(count + 1))
    views = (memoryview(joined), memoryview(records.tobytes()))
    spans = [views[s][a * _RECORD:b * _RECORD]
             for s, a, b in zip(source.tolist(), low.tolist(), high.tolist(), strict=True)]
    firsts = firsts.tolist()
    return [b"".join(spans[firsts[g]:firsts[g + 1]]) for g in np.flatnonzero(fast).tolist()]


def _expired(known: np.ndarray, starts: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Positions of the records known at or before their terminal's ``cut``, in order.

    One pass over the known times picks those at or before the highest cut, few in
    general; then each is compared with its own terminal's cut.
    """
    top = cut.max(initial=-np.inf)
    if top == -np.inf:
        return np.zeros(0, dtype=np.int64)
    picked = np.flatnonzero(np.less_equal(known, top,
                                          out=_buffer("expired", len(known), np.bool_)))
    return picked[known[picked] <= cut[_segment_of(starts, picked)]]

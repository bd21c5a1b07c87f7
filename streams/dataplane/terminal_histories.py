"""Terminal label states a whole batch of labels at a time.

A vectorised version of :func:`streams.dataplane.features.update_terminal_history`, equal
to it byte for byte. The terminals of a batch are laid end to end in one array, each at
its offset; every search is a vectorised binary search confined to the query's own
terminal (``lo``, ``hi`` per query), so it compares the exact times and ids, never a key
mixing terminal and time into one float.

Where exactness would take more than a few array operations, the scalar function does
the work, for those terminals only: a terminal whose labels in the batch go back in
``known_at`` or have a non-finite time; whose state holds a NaN time or one id twice; or
where a label repeats an id (of the state or earlier in the batch) whose record is known
at or before that label's horizon (``known_at - TERMINAL_RETENTION_S``), so may have
expired before the repeat.

The arrays as long as all the labels of a batch are scratch buffers of the thread
(:mod:`streams.dataplane.scratch`).
"""

from __future__ import annotations

import numpy as np

from streams.dataplane.features import (
    TERMINAL_DTYPE,
    TERMINAL_RETENTION_S,
    update_terminal_history,
)
from streams.dataplane.ragged import first_not as _first_not
from streams.dataplane.ragged import segment_of as _segment_of
from streams.dataplane.ragged import segments as _segments
from streams.dataplane.scratch import buffer as _buffer

_RECORD = TERMINAL_DTYPE.itemsize
# Multiplier of the id hash (Fibonacci hashing) that picks the state ids worth an exact look.
_HASH = np.uint64(0x9E3779B97F4A7C15)


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

"""Card features and card states a whole micro-batch at a time.

A vectorised version of :func:`streams.dataplane.features.update_card_history`, equal to it bit for
bit (features) and byte for byte (states) when applied to the events of a batch one after
the other. The states of the batch's cards are laid end to end in one array (each card's
entries a segment of it), and so are the batch's new entries (grouped by card, in arrival
order); a window of an event is then a range of its card's segment found by a vectorised
binary search confined to that segment, and the sums over the windows are taken over a
flat layout of (window, entry) pairs in arrival order with :func:`numpy.bincount`, which
adds each window's terms one after the other, as the scalar function's running sum does.
"""

from __future__ import annotations

import itertools

import numpy as np

from streams.dataplane.card_state_search import running_extremes as _running_extremes
from streams.dataplane.card_state_search import state_positions as _state_positions
from streams.dataplane.features import _CARD_OFFSETS, CARD_DTYPE, update_card_history
from streams.dataplane.ragged import first_above as _first_above
from streams.dataplane.ragged import owners as _owners
from streams.dataplane.ragged import ranges as _ranges
from streams.dataplane.ragged import reduce_ranges as _reduce
from streams.dataplane.ragged import segment_of as _segment_of
from streams.dataplane.ragged import segments as _segments

_RECORD = CARD_DTYPE.itemsize
# Columns of _CARD_OFFSETS: the three spending windows, the 90-day mean (also the
# retention) and the 14-day largest amount.
_SUMS = 3
_MEAN = 3
_RECENT = 4
# Integer-cents sums at most this large convert to float64 exactly, so that numpy's
# float division is Python's int / int.
_EXACT_INT = 2**53
# Entries of all the states taken this many at a time (their integer cents).
_CHUNK = 1 << 16
# State entries visited a chunk of events at a time, about this many.
_PAIRS = 1 << 16


def _chunks(volume: np.ndarray, size: int = _PAIRS) -> list[tuple[int, int]]:
    """Consecutive row ranges ``(r0, r1)`` covering all rows, each of about ``size`` in
    ``volume`` (at least one row)."""
    running = np.cumsum(volume)
    cuts = np.searchsorted(running, np.arange(size, int(running[-1]), size), side="right")
    edges = [0, *np.unique(cuts[(cuts > 0) & (cuts < len(volume))]).tolist(), len(volume)]
    return list(itertools.pairwise(edges))


def update_card_histories(states: list[bytes], card: np.ndarray, event_time: np.ndarray,
                          amount: np.ndarray, tx_id: np.ndarray
                          ) -> tuple[list[bytes], np.ndarray]:
    """Apply a batch of transactions to card states, as :func:`update_card_history` does.

    Parameters
    ----------
    states
        ``states[k]``: the state of the k-th distinct card of the batch
        (:data:`streams.dataplane.features.CARD_DTYPE` records in arrival order; ``b""``: none).
    card
        ``card[i]``: index into ``states`` of the card of event i; events are in batch
        (arrival) order.
    event_time, amount, tx_id
        The events' times (Unix seconds), amounts and ids (-1: unknown, never a repeat);
        taken as float64, float64 and int64.

    Returns
    -------
    tuple[list[bytes], numpy.ndarray]
        The new states, one for each of ``states`` (a state no event changed is returned
        as is), and the features, float64 ``[n, 8]``. Both equal, bit for bit, what
        applying ``update_card_history(state, event_time[i], amount[i], tx_id[i])`` to
        each event in batch order gives.

    Notes
    -----
    With a card's event times non-decreasing over the batch, each append's retention
    horizon (``t - 90 days``) is at most that of any later event, so an entry that an
    append drops lies outside every window of every later event: the windows of an event
    are those of its card's state and of the batch's new entries before it (up to its
    first occurrence, for a repeated id) with no retention applied, and the new state is
    the state and the new entries less those at or before the horizon of the card's last
    append (which itself always stays).

    A window is then a range of the card's entries, found by binary search: on the
    times, or for a state whose times go back (late arrivals), on their running maximum
    from the state's start, with the running minimum from its end bounding the entries
    to mask one by one. Counts are range lengths; a float sum is :func:`numpy.bincount`
    over the window's entries in arrival order (the scalar function's running sum adds
    the same terms in the same order, and its zeros for the entries outside the window
    change nothing); the integer-cents sum of the 90-day mean, exact in any order, is the
    state's total less the entries outside the window; the 14-day largest amount is a
    maximum over a range.

    A card goes through the scalar function, event by event (so exactly, at its cost),
    when:

    * its event times in the batch go back (an earlier append's retention could then
      hide entries from a later event), or an event time or amount is not finite;
    * its state holds a NaN time (whose minimum turns the scalar function's retention
      off) or a non-finite amount, or an entry later than the next
      :data:`streams.dataplane.card_state_search.SETTLE_STEPS` entries or more (its
      running maximum would take that many steps);
    * a repeated id's entry is at or before the repeat's 90-day horizon (it may have
      expired before the repeat, which then counts as new);
    * a window of one of its events is empty (a repeat whose time is past its entry's
      windows: the scalar function divides by zero and raises), a sum of a window or the
      14-day largest amount is zero (the sign of a zero depends on the order of terms),
      or an integer-cents sum is beyond 2**53.

    The results equal the scalar function's for float64 times and amounts and int64
    ids, the types they are taken as.

    Raises
    ------
    ValueError
        A state is not a whole number of records, or the arrays differ in length.
    IndexError
        A card index is outside ``states``.
    ZeroDivisionError
        Where the scalar function raises it (a window of a repeat is empty).
    """
    card = np.asarray(card, dtype=np.int64)
    event_time = np.asarray(event_time, dtype=np.float64)
    amount = np.asarray(amount, dtype=np.float64)
    tx_id = np.asarray(tx_id, dtype=np.int64)
    n = len(card)
    if not all(a.shape == (n,) for a in (card, event_time, amount, tx_id)):
        raise ValueError("card, event_time, amount and tx_id are 1-D arrays of one length")
    result = list(states)
    features = np.empty((n, 8), dtype=np.float64)
    if not n:
        return result, features
    cards = len(states)
    if card.min() < 0 or card.max() >= cards:
        raise IndexError(f"card indices lie in [0, {cards})")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        slow = _vectorised(states, card, event_time, amount, tx_id, result, features)
    # Cards for the scalar function, from their own states, event by event.
    if slow.any():
        mine = np.flatnonzero(slow[card])
        for k in np.flatnonzero(slow).tolist():
            result[k] = states[k]
        for i in mine.tolist():
            k = int(card[i])
            result[k], row = update_card_history(result[k], event_time[i], amount[i],
                                                 tx_id[i])
            features[i] = row
    return result, features


def _vectorised(states: list[bytes], card: np.ndarray, event_time: np.ndarray,
                amount: np.ndarray, tx_id: np.ndarray, result: list[bytes],
                features: np.ndarray) -> np.ndarray:
    """The vectorised path: fills ``features`` and ``result`` and returns the cards (a
    mask over ``states``) whose rows and state the scalar function must redo."""
    n = len(card)
    cards = len(states)
    sizes = np.fromiter(map(len, states), dtype=np.int64, count=cards)
    if (sizes % _RECORD).any():
        raise ValueError(f"a card state is a whole number of {_RECORD}-byte records")
    seg = _segments(sizes // _RECORD)  # card k's entries: [seg[k], seg[k + 1])
    filled = np.flatnonzero(sizes)
    entries = np.frombuffer(b"".join(states), dtype=CARD_DTYPE)
    times, amounts = entries["event_time"], entries["amount"]  # views, no copies
    slow = np.zeros(cards, dtype=bool)

    # Events grouped by card, each group in arrival order; cards whose times go back.
    order = np.argsort(card, kind="stable")
    grouped = card[order]
    opens = np.ones(n, dtype=bool)
    opens[1:] = grouped[1:] != grouped[:-1]
    back = ~opens[1:] & (event_time[order][1:] < event_time[order][:-1])
    slow[grouped[1:][back]] = True
    slow[card[~(np.isfinite(event_time) & np.isfinite(amount))]] = True

    # Repeated ids. Events with a known id grouped by (card, id): the first of a group is
    # new unless its id is in the card's state; every other one repeats the first.
    known = np.flatnonzero(tx_id >= 0)
    by_key = known[np.lexsort((tx_id[known], card[known]))]  # stable: arrival order kept
    key_card, key_id = card[by_key], tx_id[by_key]
    heads = np.ones(len(by_key), dtype=bool)
    heads[1:] = (key_card[1:] != key_card[:-1]) | (key_id[1:] != key_id[:-1])
    group = np.cumsum(heads) - 1
    head_event = by_key[heads]
    in_state = _state_positions(states, entries, seg, filled, card[head_event],
                                tx_id[head_event])
    is_new = np.ones(n, dtype=bool)
    is_new[by_key] = heads & (in_state[group] < 0)
    state_match = np.full(n, -1, dtype=np.int64)  # repeat of a state entry: its position
    state_match[by_key] = in_state[group]
    first = np.arange(n)  # repeat of a new entry of the batch: its event
    first[by_key] = head_event[group]

    # The new entries, grouped by card in arrival order.
    appended = order[is_new[order]]
    added = _segments(np.bincount(card[appended], minlength=cards))
    new_time = event_time[appended]
    new_amount = amount[appended]
    place = np.zeros(n, dtype=np.int64)
    place[appended] = np.arange(len(appended))

    # Each event's visible entries: state [seg[k], s_stop), new entries [added[k], a_stop).
    s_start, s_end, a_start = seg[card], seg[card + 1], added[card]
    repeat_of_state = state_match >= 0
    s_stop = np.where(repeat_of_state, state_match + 1, s_end)
    a_stop = np.where(repeat_of_state, a_start, place[first] + 1)
    bounds = event_time[:, None] - _CARD_OFFSETS  # as the scalar function computes them
    repeat = ~is_new
    if repeat.any():
        entry_time = event_time[first]
        entry_time[repeat_of_state] = times[state_match[repeat_of_state]]
        slow[card[repeat & ~(entry_time > bounds[:, _MEAN])]] = True

    # A state whose times go back is searched on their running maximum from its start
    # (ceiling) and minimum from its end (floor): its window of a bound holds no entry
    # before the ceiling's first above the bound, all from the floor's first above, and
    # the entries in between are masked one by one. A NaN time (whose minimum turns the
    # scalar function's retention off) sends its card to the scalar function.
    ceiling = floor = times
    down = np.flatnonzero(~(times[1:] >= times[:-1])) + 1  # NaN-safe
    down = down[seg[_segment_of(seg, down)] != down]  # from a card to the next: no going back
    unsorted = np.zeros(cards, dtype=bool)
    single = np.flatnonzero(sizes == _RECORD)  # no pair of entries to compare
    slow[single[np.isnan(times[seg[single]])]] = True
    if len(down):
        owner = _segment_of(seg, down)
        unsorted[owner] = True
        slow[owner[np.isnan(times[down]) | np.isnan(times[down - 1])]] = True
        ceiling, floor, unsettled = _running_extremes(times, seg, down, owner)
        slow[unsettled] = True
    masked = unsorted[card]
    any_masked = bool(masked.any())

    # Window starts: in the state (s_low) and in the new entries (a_low); the retention
    # cut of each card with new entries, at its last one's horizon.
    windows = len(_CARD_OFFSETS)
    growing = np.flatnonzero(added[1:] > added[:-1])
    cut = new_time[added[growing + 1] - 1] - _CARD_OFFSETS[_MEAN]
    queries = np.concatenate((bounds.ravel(), cut))
    found = _first_above(ceiling, np.concatenate((np.repeat(s_start, windows), seg[growing])),
                         np.concatenate((np.repeat(s_stop, windows), seg[growing + 1])),
                         queries)
    s_low, s_cut = found[:n * windows].reshape(n, windows), found[n * windows:]
    found = _first_above(new_time, np.concatenate((np.repeat(a_start, windows), added[growing])),
                         np.concatenate((np.repeat(a_stop, windows), added[growing + 1] - 1)),
                         queries)
    a_low, a_cut = found[:n * windows].reshape(n, windows), found[n * windows:]
    low = s_low[:, _MEAN]
    high = s_stop  # from here on, the 90-day window holds every state entry
    s_keep = s_cut  # from here on, the retention keeps every state entry
    if any_masked:
        masked_rows = np.flatnonzero(masked)
        grown = np.flatnonzero(unsorted[growing])
        found = _first_above(floor, np.concatenate((low[masked_rows], s_cut[grown])),
                             np.concatenate((s_stop[masked_rows], seg[growing[grown] + 1])),
                             np.concatenate((bounds[masked_rows, _MEAN], cut[grown])))
        high = s_stop.copy()
        high[masked_rows] = found[:len(masked_rows)]
        s_keep = s_cut.copy()
        s_keep[grown] = found[len(masked_rows):]

    # Over the state entries of the windows, a few hundred events at a time (temporaries
    # stay small): the spending windows' counts and sums, in arrival order; the entries to
    # take out of the 90-day integer-cents total (before the window, after a repeat's
    # entry, or out of order inside it); the 14-day largest amount among the entries
    # before the event's own (or its first occurrence's).
    sums = np.empty((n, _SUMS), dtype=np.float64)
    counts = (s_stop[:, None] - s_low[:, :_SUMS]) + (a_stop[:, None] - a_low[:, :_SUMS])
    in_mean = (s_stop - low) + (a_stop - a_low[:, _MEAN])
    outside_cents = np.zeros(n, dtype=np.int64)
    largest = np.full(n, -np.inf)
    r_stop = np.where(a_stop > a_start, s_stop, s_stop - 1)
    volume = ((s_stop[:, None] - s_low[:, :_SUMS]).sum(axis=1)
              + np.maximum(r_stop - s_low[:, _RECENT], 0))
    if any_masked:
        volume += high - low
    for r0, r1 in _chunks(volume):
        rows = slice(r0, r1)
        m = r1 - r0
        pos, lengths = _ranges(s_low[rows, :_SUMS].ravel(), np.repeat(s_stop[rows], _SUMS))
        bin_ = _owners(lengths)
        terms = amounts[pos]
        if any_masked:
            outside = ~(times[pos] > np.repeat(bounds[rows, :_SUMS].ravel(), lengths))
            terms[outside] = 0.0
            counts[rows] -= np.bincount(bin_[outside], minlength=m * _SUMS).reshape(m, _SUMS)
        sums[rows] = np.bincount(bin_, weights=terms, minlength=m * _SUMS).reshape(m, _SUMS)

        pos, lengths = _ranges(np.concatenate((s_start[rows], s_stop[rows])),
                               np.concatenate((low[rows], s_end[rows])))
        row = _owners(lengths)
        row %= m
        if any_masked and masked[rows].any():
            inner, lengths = _ranges(low[rows], high[rows])
            inner_row = _owners(lengths)
            out = ~(times[inner] > bounds[rows, _MEAN][inner_row])
            in_mean[rows] -= np.bincount(inner_row[out], minlength=m)
            pos = np.concatenate((pos, inner[out]))
            row = np.concatenate((row, inner_row[out]))
        cents = amounts[pos] * 100
        np.rint(cents, out=cents)
        np.add.at(outside_cents[rows], row, cents.astype(np.int64))

        pos, lengths = _ranges(s_low[rows, _RECENT], r_stop[rows])
        values = amounts[pos]
        if any_masked:
            values[~(times[pos] > np.repeat(bounds[rows, _RECENT], lengths))] = -np.inf
        largest[rows] = _reduce(np.maximum, values, lengths, -np.inf)

    # The new entries' part of the windows (they come after the state's).
    pos, lengths = _ranges(a_low[:, :_SUMS].ravel(), np.repeat(a_stop, _SUMS))
    bin_ = _owners(lengths)
    np.add.at(sums.reshape(-1), bin_, new_amount[pos])  # unbuffered: in order
    pos, lengths = _ranges(a_low[:, _RECENT], np.maximum(a_stop - 1, a_start))
    largest = np.maximum(largest, _reduce(np.maximum, new_amount[pos], lengths, -np.inf))
    new_cents = new_amount * 100
    np.rint(new_cents, out=new_cents)
    new_running = _segments(new_cents.astype(np.int64))

    # The 90-day mean over integer cents, a sum exact in any order: each state's total,
    # less its entries outside the window, plus the window's new entries.
    state_total = np.zeros(cards, dtype=np.int64)
    if len(filled):
        starts = seg[filled]
        edges = np.searchsorted(starts, np.arange(0, len(entries), _CHUNK))
        for c0, c1 in itertools.pairwise([*np.unique(edges).tolist(), len(starts)]):
            first_entry = starts[c0]
            last_entry = starts[c1] if c1 < len(starts) else len(entries)
            cents = amounts[first_entry:last_entry] * 100
            np.rint(cents, out=cents)
            odd = np.flatnonzero(~np.isfinite(cents))
            if len(odd):  # a state's amount not finite: its cents are no integers
                slow[_segment_of(seg, odd + first_entry)] = True
            state_total[filled[c0:c1]] = np.add.reduceat(cents, starts[c0:c1] - first_entry,
                                                         dtype=np.int64)
    total = (state_total[card] - outside_cents + new_running[a_stop]
             - new_running[a_low[:, _MEAN]])

    features[:, 0:6:2] = counts
    features[:, 1:6:2] = sums / counts
    mean = total / in_mean / 100
    positive = mean > 0
    safe_mean = np.where(positive, mean, 1.0)
    features[:, 6] = np.where(positive, amount / safe_mean, 1.0)
    features[:, 7] = np.where(largest > -np.inf, largest, 0.0) / safe_mean

    # Rows whose exact value needs the scalar function (see the docstring).
    odd = ((counts == 0).any(axis=1) | (in_mean == 0) | (sums == 0).any(axis=1)
           | (largest == 0) | (np.abs(total) > _EXACT_INT))
    slow[card[odd]] = True

    # New states: each card's state and new entries after its last append's cut.
    if len(growing):
        records = np.empty(len(appended), dtype=CARD_DTYPE)
        records["event_time"] = new_time
        records["amount"] = new_amount
        records["tx_id"] = tx_id[appended]
        blob = records.tobytes()
        contiguous = s_keep == s_cut
        keep = ~slow[growing] & contiguous
        plain = zip(growing[keep].tolist(), ((s_cut - seg[growing]) * _RECORD)[keep].tolist(),
                    (a_cut * _RECORD)[keep].tolist(),
                    (added[growing + 1] * _RECORD)[keep].tolist(), strict=True)
        for k, drop, a_from, a_to in plain:
            if drop:
                result[k] = b"".join((memoryview(states[k])[drop:], blob[a_from:a_to]))
            else:
                result[k] = states[k] + blob[a_from:a_to]
        at = np.flatnonzero(~slow[growing] & ~contiguous)
        if len(at):  # the entries kept of these states, in arrival order
            mixed = growing[at]
            pos, lengths = _ranges(s_cut[at], seg[mixed + 1])
            rank = _owners(lengths)
            kept = times[pos] > cut[at][rank]
            bounds_kept = _segments(np.bincount(rank[kept], minlength=len(at))) * _RECORD
            old = entries[pos[kept]].tobytes()
            for k, o0, o1, a_from, a_to in zip(mixed.tolist(), bounds_kept[:-1].tolist(),
                                               bounds_kept[1:].tolist(),
                                               (a_cut[at] * _RECORD).tolist(),
                                               (added[mixed + 1] * _RECORD).tolist(),
                                               strict=True):
                result[k] = old[o0:o1] + blob[a_from:a_to]
    return slow

"""Look-ups in the card states of a batch laid end to end, for the batch update of card
histories (:func:`streams.dataplane.card_batch.update_card_histories`): where the batch's
transaction ids already are in their card's state (redeliveries), and the running extremes
of the states whose times go back (late arrivals).
"""

from __future__ import annotations

import numpy as np

from streams.dataplane.features import CARD_DTYPE, _find_id
from streams.dataplane.ragged import segment_of as _segment_of

# Multiplier of the id hash (Fibonacci hashing) that picks the state ids worth an exact look.
_HASH = np.uint64(0x9E3779B97F4A7C15)
# Up to this many ids to look up in the states are searched one by one in the state's bytes,
# as the scalar function does; more, by a hash over all the states' entries.
_FEW_SEARCHES = 256
# Entries of all the states hashed this many at a time (small temporaries, in cache).
_CHUNK = 1 << 16
SETTLE_STEPS = 64
"""Steps of the running extremes of a state whose times go back (how many entries one late
entry may lie behind); a state that needs more goes to the scalar function."""


def state_positions(states: list[bytes], entries: np.ndarray, seg: np.ndarray,
                    filled: np.ndarray, card: np.ndarray, tx_id: np.ndarray) -> np.ndarray:
    """For each ``(card, tx_id)`` query (pairs distinct, ids not negative), the position in
    ``entries`` of the last entry of that card's segment with that id, or -1.

    Only an id within its card's range of ids can be there (new ids usually lie above
    it); a few such queries are answered by the scalar function's own search of the
    state's bytes, many by a hash of the queried ids that picks the candidate entries in
    one pass over the states, matched exactly after.
    """
    found = np.full(len(card), -1, dtype=np.int64)
    if not len(filled) or not len(card):
        return found
    ids = entries["tx_id"]
    top = np.full(len(states), -1, dtype=np.int64)
    bottom = np.zeros(len(states), dtype=np.int64)
    top[filled] = np.maximum.reduceat(ids, seg[filled])
    bottom[filled] = np.minimum.reduceat(ids, seg[filled])
    inside = np.flatnonzero((tx_id <= top[card]) & (tx_id >= bottom[card]))
    if len(inside) <= _FEW_SEARCHES:
        for q, k, tx in zip(inside.tolist(), card[inside].tolist(), tx_id[inside].tolist(),
                            strict=True):
            position = _find_id(states[k], tx, CARD_DTYPE)
            if position >= 0:
                found[q] = seg[k] + position
        return found
    unique_ids = np.unique(tx_id[inside])
    bits = max(12, int(len(unique_ids)).bit_length() + 5)
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[(unique_ids.view(np.uint64) * _HASH) >> shift] = True
    hashes = ids.view(np.uint64)
    pieces = []
    for at in range(0, len(ids), _CHUNK):  # in pieces: small temporaries, in cache
        hashed = hashes[at:at + _CHUNK] * _HASH
        hashed >>= shift
        pieces.append(np.flatnonzero(table[hashed]) + at)
    candidates = np.concatenate(pieces)
    candidate_ids = ids[candidates]
    nearest = np.minimum(np.searchsorted(unique_ids, candidate_ids), len(unique_ids) - 1)
    same = unique_ids[nearest] == candidate_ids
    if not same.any():
        return found
    matched = candidates[same]
    matched_card = _segment_of(seg, matched)
    matched_id = candidate_ids[same]
    # Matches and queries sorted by (card, id), matches first and by position: the entry
    # just before a query, if it has the query's card and id, is its last match.
    m = len(matched)
    all_card = np.r_[matched_card, card]
    all_id = np.r_[matched_id, tx_id]
    is_query = np.r_[np.zeros(m, dtype=bool), np.ones(len(card), dtype=bool)]
    sort = np.lexsort((np.r_[matched, np.zeros(len(card), dtype=np.int64)], is_query, all_id,
                       all_card))
    before, after = sort[:-1], sort[1:]
    hit = (is_query[after] & ~is_query[before] & (all_card[after] == all_card[before])
           & (all_id[after] == all_id[before]))
    found[after[hit] - m] = matched[before[hit]]
    return found


def running_extremes(times: np.ndarray, seg: np.ndarray, down: np.ndarray,
                     owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running maximum of ``times`` from each segment's start and running minimum from
    its end, for segments whose times go back at ``down`` (owned by segments ``owner``).

    Only the entries next to a descent can differ from ``times``: the maximum moves
    forward from each descent, the minimum backward, one entry a step, while it changes
    something; all descents move at once. Segments not settled after
    :data:`SETTLE_STEPS` steps are returned (third item) for the scalar function.
    """
    ceiling = np.array(times)  # contiguous copies
    floor = ceiling.copy()
    unsettled = []
    for extreme, step in ((ceiling, 1), (floor, -1)):
        at = down if step > 0 else down - 1
        who = owner
        for _ in range(SETTLE_STEPS):
            if not len(at):
                break
            other = extreme[at - step]
            moves = (other > extreme[at]) if step > 0 else (other < extreme[at])
            at, who = at[moves], who[moves]
            extreme[at] = other[moves]
            at = at + step
            within = (at < seg[who + 1]) if step > 0 else (at >= seg[who])
            at, who = at[within], who[within]
        unsettled.append(who if len(at) else who[:0])
    return ceiling, floor, np.concatenate(unsettled)

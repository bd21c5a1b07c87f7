"""Per-event features computed on event time; pure functions, no Kafka.

Card spending windows follow the handbook's definition: for window w the set of the
card's transactions in (t - w days, t], the current one included, in arrival order (two
transactions with the same timestamp see only those that came before them).

Terminal windows use labels: for window w, the terminal's labelled transactions with
event time in (t - d - w days, t - d days] that are known by t (``known_at <= t``); the
count and the share of frauds among them. With the handbook's constant delay d = 7 days
this equals the batch reference exactly.

Both histories are idempotent in ``tx_id``: an event processed twice (at-least-once
delivery, a restart) finds itself in the history and gets the same features again.

A history is kept as the bytes of a numpy structured array (:data:`CARD_DTYPE`,
:data:`TERMINAL_DTYPE`), the value of a changelog-backed table: writing it costs a copy,
not an encoding, and the windows are computed on its columns in a few numpy calls.
``b""`` is an empty history.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import numpy as np

DAY = 86400.0
CARD_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)
LABEL_DELAY_DAYS = 7
CARD_MEAN_DAYS = 90
"""Window of the card's reference mean amount (``amount_ratio_90day``)."""
CARD_RECENT_DAYS = 14
"""Window of the card's recent largest amount (``max_prev_amount_ratio_14day``)."""
HORIZON_DAYS = 60
"""Cap of the terminal day counts; also what "never" counts as."""
CARD_FEATURES = (
    *(name for w in CARD_WINDOWS_DAYS for name in (f"nb_tx_{w}day", f"avg_amount_{w}day")),
    "amount_ratio_90day",
    "max_prev_amount_ratio_14day",
)
TERMINAL_FEATURES = (
    *(name for w in TERMINAL_WINDOWS_DAYS for name in (f"nb_tx_{w}day", f"risk_{w}day")),
    "known_fraud_run",
    "known_fraud_run_days",
    "days_since_known_genuine",
)
CARD_RETENTION_S = CARD_MEAN_DAYS * DAY
# Terminal labels are kept this long after their known time: the day-count horizon plus
# the delay, and a margin for transactions that lag the labels stream.
TERMINAL_RETENTION_S = (HORIZON_DAYS + LABEL_DELAY_DAYS + 21) * DAY
CARD_DTYPE = np.dtype([("event_time", "<f8"), ("amount", "<f8"), ("tx_id", "<i8")])
"""One entry of a card's state; the state is these records' bytes, in arrival order."""
TERMINAL_DTYPE = np.dtype([("event_time", "<f8"), ("known_at", "<f8"), ("is_fraud", "i1"),
                           ("tx_id", "<i8")])
"""One label of a terminal's state; the state is these records' bytes, sorted by
``(event_time, tx_id)``."""
_CARD_RECORD = struct.Struct("<ddq")
_TERMINAL_RECORD = struct.Struct("<ddbq")
# Lower bounds of the card windows, subtracted from t: the three windows, the mean (which is
# also the retention) and the recent largest amount.
_CARD_OFFSETS = np.array([*CARD_WINDOWS_DAYS, CARD_MEAN_DAYS, CARD_RECENT_DAYS]) * DAY
# Offsets from the terminal windows' end: the end itself, then each window's start.
_TERMINAL_OFFSETS = np.array([0, *TERMINAL_WINDOWS_DAYS]) * DAY


def transaction_flags(event_time: float) -> tuple[int, int]:
    """``(during_weekend, during_night)`` of a Unix-seconds event time, in UTC.

    Weekend is Saturday or Sunday; night is hour <= 6 (00:00:00 to 06:59:59).
    """
    moment = datetime.fromtimestamp(event_time, UTC)
    return int(moment.weekday() >= 5), int(moment.hour <= 6)


def transaction_flags_batch(event_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`transaction_flags` of many event times: ``(during_weekend, during_night)``."""
    seconds = np.floor(np.asarray(event_time, dtype=np.float64))
    days = np.floor_divide(seconds, DAY)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    hour = np.floor_divide(seconds - days * DAY, 3600)
    return (weekday >= 5).astype(np.float64), (hour <= 6).astype(np.float64)


def card_entries(state: bytes) -> np.ndarray:
    """A card state as a :data:`CARD_DTYPE` array (read-only, no copy)."""
    return _entries(state, CARD_DTYPE, "card")


def terminal_entries(state: bytes) -> np.ndarray:
    """A terminal state as a :data:`TERMINAL_DTYPE` array (read-only, no copy)."""
    return _entries(state, TERMINAL_DTYPE, "terminal")


def _entries(state: bytes, dtype: np.dtype, what: str) -> np.ndarray:
    if not state:
        return np.empty(0, dtype=dtype)
    if len(state) % dtype.itemsize:
        raise ValueError(f"a {what} state is a whole number of {dtype.itemsize}-byte "
                         f"records; got {len(state)} bytes")
    return np.frombuffer(state, dtype=dtype)


def _find_id(state: bytes, tx_id: int, dtype: np.dtype) -> int:
    """Index of the last record of ``state`` whose ``tx_id`` is ``tx_id``, or -1.

    A search of the id's bytes, checked to fall on the ``tx_id`` field of a record: much
    cheaper than decoding the column to compare it.
    """
    if not state:
        return -1
    needle = struct.pack("<q", tx_id)
    offset = dtype.itemsize - len(needle)  # tx_id ends every record
    end = len(state)
    while (found := state.rfind(needle, 0, end)) >= 0:
        if found % dtype.itemsize == offset:
            return found // dtype.itemsize
        end = found + len(needle) - 1
    return -1


def update_card_history(
    state: bytes, event_time: float, amount: float, tx_id: int = -1
) -> tuple[bytes, list[float]]:
    """Add one transaction to a card's state and return the new state and its features.

    ``state`` is the card's entries of the last :data:`CARD_MEAN_DAYS` days as
    :data:`CARD_DTYPE` records in arrival order (``b""``: none). A transaction already in
    the state (same ``tx_id``, not -1) is not added again; its features are those it had
    the first time, from the entries up to and including it. Features are
    :data:`CARD_FEATURES`: ``nb_tx_1day, avg_amount_1day, ..., avg_amount_30day,
    amount_ratio_90day, max_prev_amount_ratio_14day`` (the last two as
    ``models.extra_features`` defines them: the mean in the ratio is taken over integer
    cents, so it does not depend on summation order).
    """
    starts = event_time - _CARD_OFFSETS
    position = _find_id(state, tx_id, CARD_DTYPE) if tx_id >= 0 else -1
    if position >= 0:
        new_state = state
        visible = card_entries(state)[: position + 1]
    else:
        record = _CARD_RECORD.pack(event_time, amount, tx_id)
        entries = card_entries(state)
        if len(entries) and entries["event_time"].min() <= starts[3]:
            state = entries[entries["event_time"] > starts[3]].tobytes()
        new_state = bytes(state) + record
        visible = np.frombuffer(new_state, dtype=CARD_DTYPE)
    times, amounts = visible["event_time"], visible["amount"]
    inside = times > starts[:, None]  # a row per window: which entries it holds
    counts = np.add.reduce(inside, axis=1).tolist()
    picked = np.where(inside[:4], amounts, 0.0)
    # A running sum adds left to right as Python's sum() does, and the zeros standing for
    # entries outside a window leave it unchanged: the means are those of the definition.
    sums = np.add.accumulate(picked[:3], axis=1)[:, -1].tolist()
    features: list[float] = []
    for count, total in zip(counts[:3], sums, strict=True):
        features += [float(count), total / count]
    cents = picked[3] * 100
    np.rint(cents, out=cents)  # half to even, as round() does
    mean = int(np.add.reduce(cents, dtype=np.int64)) / counts[3] / 100
    safe_mean = mean if mean > 0 else 1.0
    ratio = amount / safe_mean if mean > 0 else 1.0
    largest = float(np.maximum.reduce(amounts[:-1], where=inside[4, :-1], initial=-np.inf))
    features += [ratio, (largest if largest > -np.inf else 0.0) / safe_mean]
    return new_state, features


def update_terminal_history(
    state: bytes, tx_id: int, event_time: float, is_fraud: int, known_at: float
) -> bytes:
    """Add one label to a terminal's state and return the new state.

    ``state`` holds :data:`TERMINAL_DTYPE` records sorted by ``(event_time, tx_id)``
    (``b""``: none). A label already present (same ``tx_id``) is ignored; labels known
    :data:`TERMINAL_RETENTION_S` or more before this one expire.
    """
    if _find_id(state, tx_id, TERMINAL_DTYPE) >= 0:
        return state
    entries = terminal_entries(state)
    horizon = known_at - TERMINAL_RETENTION_S
    if len(entries) and entries["known_at"].min() <= horizon:
        entries = entries[entries["known_at"] > horizon]
        state = entries.tobytes()
    record = _TERMINAL_RECORD.pack(event_time, known_at, int(is_fraud), tx_id)
    if not len(entries):
        return record
    last_time, _, _, last_id = _TERMINAL_RECORD.unpack_from(state, len(state) - len(record))
    if (last_time, last_id) < (event_time, tx_id):  # the usual case: it goes last
        return bytes(state) + record
    times = entries["event_time"]
    low = np.searchsorted(times, event_time, "left")
    high = np.searchsorted(times, event_time, "right")
    at = int(low + np.searchsorted(entries["tx_id"][low:high], tx_id))
    return entries[:at].tobytes() + record + entries[at:].tobytes()


def terminal_arrays(state: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state as the three arrays stored in Feast: event times, known times, frauds."""
    entries = terminal_entries(state)
    return (np.ascontiguousarray(entries["event_time"]),
            np.ascontiguousarray(entries["known_at"]),
            entries["is_fraud"].astype(np.int64))


def terminal_window_features(
    event_times: np.ndarray, known_at: np.ndarray, frauds: np.ndarray, t: float,
    delay_days: float = LABEL_DELAY_DAYS,
) -> list[float]:
    """Terminal features of a transaction at ``t`` from its terminal's label arrays.

    The arrays are in ``(event_time, tx_id)`` order. Returns :data:`TERMINAL_FEATURES`:
    ``nb_tx_1day, risk_1day, ..., risk_30day`` (risk is 0 when the window holds no
    labelled transaction), then from the labels known at ``t`` (event time at most
    ``t - delay`` and arrived by ``t``): the number of frauds at the end of that
    sequence, the calendar days since the first of them (0 without a run), and the
    calendar days since the latest genuine one; day counts capped at
    :data:`HORIZON_DAYS`, which also stands for "none".
    """
    end = t - delay_days * DAY
    # Rows [0, high) have event times at most ``end``; window w starts at row lows[w].
    high, *lows = np.searchsorted(event_times, end - _TERMINAL_OFFSETS, side="right").tolist()
    times = event_times
    if high and known_at[:high].max() > t:
        # Some of those labels arrive after t: keep the known rows only.
        rows = np.flatnonzero(known_at[:high] <= t)
        lows = np.searchsorted(rows, lows).tolist()
        times = event_times[rows]
        flags = frauds[rows].tolist()
    else:
        flags = frauds[:high].tolist()
    known = len(flags)
    features: list[float] = []
    for low in lows:
        count = known - low
        features += [float(count), float(sum(flags[low:])) / count if count else 0.0]
    today = _day(t)
    try:
        last_genuine = known - 1 - flags[::-1].index(0)
    except ValueError:
        last_genuine = -1
    run = known - 1 - last_genuine
    run_days = (min(today - _day(float(times[last_genuine + 1])), HORIZON_DAYS)
                if run else 0)
    since_genuine = (min(today - _day(float(times[last_genuine])), HORIZON_DAYS)
                     if last_genuine >= 0 else HORIZON_DAYS)
    return [*features, float(run), float(run_days), float(since_genuine)]


def _day(t: float) -> int:
    """Calendar day (UTC) of a Unix-seconds time, as a day number."""
    return int(t // DAY)

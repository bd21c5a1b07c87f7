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
"""

from __future__ import annotations

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


def transaction_flags(event_time: float) -> tuple[int, int]:
    """``(during_weekend, during_night)`` of a Unix-seconds event time, in UTC.

    Weekend is Saturday or Sunday; night is hour <= 6 (00:00:00 to 06:59:59).
    """
    moment = datetime.fromtimestamp(event_time, UTC)
    return int(moment.weekday() >= 5), int(moment.hour <= 6)


def update_card_history(
    history: list[list[float]], event_time: float, amount: float, tx_id: int = -1
) -> tuple[list[list[float]], list[float]]:
    """Add one transaction to a card's history and return its card features.

    ``history`` is the card's ``[event_time, amount, tx_id]`` entries of the last
    :data:`CARD_MEAN_DAYS` days in arrival order. A transaction already in the history
    (same ``tx_id``, not -1) is not added again; its features are those it had the first
    time. Features are :data:`CARD_FEATURES`: ``nb_tx_1day, avg_amount_1day, ...,
    avg_amount_30day, amount_ratio_90day, max_prev_amount_ratio_14day`` (the last two as
    ``models.extra_features`` defines them: the mean in the ratio is taken over integer
    cents, so it does not depend on summation order).
    """
    position = -1
    if tx_id >= 0:
        for i in range(len(history) - 1, -1, -1):
            if len(history[i]) > 2 and history[i][2] == tx_id:
                position = i
                break
    if position >= 0:
        visible = history[: position + 1]
        kept = history
    else:
        kept = [entry for entry in history if entry[0] > event_time - CARD_RETENTION_S]
        kept.append([event_time, amount, tx_id])
        visible = kept
    features: list[float] = []
    for window in CARD_WINDOWS_DAYS:
        start = event_time - window * DAY
        amounts = [entry[1] for entry in visible if entry[0] > start]
        features += [float(len(amounts)), sum(amounts) / len(amounts)]
    start = event_time - CARD_MEAN_DAYS * DAY
    in_mean = [entry[1] for entry in visible if entry[0] > start]
    cents = sum(round(a * 100) for a in in_mean)
    mean = cents / len(in_mean) / 100
    safe_mean = mean if mean > 0 else 1.0
    ratio = amount / safe_mean if mean > 0 else 1.0
    start = event_time - CARD_RECENT_DAYS * DAY
    earlier = [entry[1] for entry in visible[:-1] if entry[0] > start]
    features += [ratio, (max(earlier) if earlier else 0.0) / safe_mean]
    return kept, features


def update_terminal_history(
    history: list[list[float]], tx_id: int, event_time: float, is_fraud: int, known_at: float
) -> list[list[float]]:
    """Add one label to a terminal's ``[event_time, known_at, is_fraud, tx_id]`` history.

    The history stays sorted by event time; a label already present (same ``tx_id``) is
    ignored; labels known more than :data:`TERMINAL_RETENTION_S` before this one expire.
    """
    if any(entry[3] == tx_id for entry in history):
        return history
    horizon = known_at - TERMINAL_RETENTION_S
    kept = [entry for entry in history if entry[1] > horizon]
    # tx_id stays an integer: ids beyond 2**53 would collide as floats.
    kept.append([event_time, known_at, float(is_fraud), int(tx_id)])
    kept.sort(key=lambda entry: (entry[0], entry[3]))
    return kept


def terminal_arrays(history: list[list[float]]) -> tuple[list[float], list[float], list[int]]:
    """The history as the three arrays stored in Feast: event times, known times, frauds."""
    return ([e[0] for e in history], [e[1] for e in history], [int(e[2]) for e in history])


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
    known = (known_at <= t) & (event_times <= end)
    features: list[float] = []
    for window in TERMINAL_WINDOWS_DAYS:
        mask = known & (event_times > end - window * DAY)
        count = int(mask.sum())
        features += [float(count), float(frauds[mask].sum()) / count if count else 0.0]
    today = _day(t)
    positions = np.flatnonzero(known)
    genuine = positions[frauds[positions] == 0]
    last_genuine = int(genuine[-1]) if len(genuine) else -1
    run_rows = positions[positions > last_genuine]
    run = len(run_rows)
    run_days = min(today - _day(float(event_times[run_rows[0]])), HORIZON_DAYS) if run else 0
    since_genuine = (min(today - _day(float(event_times[last_genuine])), HORIZON_DAYS)
                     if last_genuine >= 0 else HORIZON_DAYS)
    return [*features, float(run), float(run_days), float(since_genuine)]


def _day(t: float) -> int:
    """Calendar day (UTC) of a Unix-seconds time, as a day number."""
    return int(t // DAY)

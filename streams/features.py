"""Per-event features computed on event time; pure functions, no Kafka.

Card spending windows follow the handbook's definition: for window w the set of the
card's transactions in (t - w days, t], the current one included, in arrival order (two
transactions with the same timestamp see only those that came before them).
"""

from __future__ import annotations

from datetime import UTC, datetime

DAY = 86400.0
CARD_WINDOWS_DAYS = (1, 7, 30)
CARD_FEATURES = tuple(
    name for w in CARD_WINDOWS_DAYS for name in (f"nb_tx_{w}day", f"avg_amount_{w}day")
)


def transaction_flags(event_time: float) -> tuple[int, int]:
    """``(during_weekend, during_night)`` of a Unix-seconds event time, in UTC.

    Weekend is Saturday or Sunday; night is hour <= 6 (00:00:00 to 06:59:59).
    """
    moment = datetime.fromtimestamp(event_time, UTC)
    return int(moment.weekday() >= 5), int(moment.hour <= 6)


def update_card_history(
    history: list[list[float]], event_time: float, amount: float
) -> tuple[list[list[float]], list[float]]:
    """Add one transaction to a card's history and return its window features.

    ``history`` is the card's ``[event_time, amount]`` pairs of the last 30 days in
    arrival order; the returned history drops what left the longest window. Features are
    ``nb_tx_1day, avg_amount_1day, nb_tx_7day, ...`` as in :data:`CARD_FEATURES`.
    """
    longest = max(CARD_WINDOWS_DAYS) * DAY
    kept = [pair for pair in history if pair[0] > event_time - longest]
    kept.append([event_time, amount])
    features: list[float] = []
    for window in CARD_WINDOWS_DAYS:
        start = event_time - window * DAY
        amounts = [a for t, a in kept if t > start]
        features += [float(len(amounts)), sum(amounts) / len(amounts)]
    return kept, features

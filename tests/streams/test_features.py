"""Card windows on event time, against a direct count over the definition."""

from __future__ import annotations

import numpy as np

from streams.features import DAY, transaction_flags, update_card_history


def test_flags_weekend_and_night_boundaries() -> None:
    saturday = 1522454400  # 2018-03-31 00:00:00 UTC
    assert transaction_flags(saturday + 6 * 3600 + 59 * 60 + 59) == (1, 1)
    assert transaction_flags(saturday + 7 * 3600) == (1, 0)  # 07:00 is day
    monday_noon = 1522670400  # 2018-04-02 12:00 UTC
    assert transaction_flags(monday_noon) == (0, 0)


def test_windows_match_the_definition_including_ties() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.integers(0, 60 * 86400, 400)).astype(float)
    times[10] = times[11] = times[12]  # equal timestamps see only earlier rows
    amounts = rng.uniform(1, 200, 400).round(2)
    history: list[list[float]] = []
    for i, (t, a) in enumerate(zip(times, amounts, strict=True)):
        history, features = update_card_history(history, float(t), float(a))
        for j, w in enumerate((1, 7, 30)):
            mask = (times[: i + 1] > t - w * DAY)
            assert features[2 * j] == mask.sum()
            assert abs(features[2 * j + 1] - amounts[: i + 1][mask].mean()) < 1e-9
        assert all(t - h[0] < 30 * DAY for h in history)


def test_terminal_history_keeps_large_ids_apart_and_ignores_repeats() -> None:
    from streams.features import update_terminal_history

    history: list[list[float]] = []
    base = 17_958_835_770_008_804  # beyond 2**53: neighbours collide as floats
    for i in range(3):
        history = update_terminal_history(history, base + i, 1000.0 + i, i % 2, 2000.0 + i)
    history = update_terminal_history(history, base + 1, 1001.0, 1, 2001.0)
    assert [entry[3] for entry in history] == [base, base + 1, base + 2]

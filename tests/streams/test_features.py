"""Card windows on event time, against a direct count over the definition."""

from __future__ import annotations

import numpy as np
import pandas as pd

from streams.features import (
    CARD_RETENTION_S,
    DAY,
    LABEL_DELAY_DAYS,
    terminal_arrays,
    terminal_window_features,
    transaction_flags,
    update_card_history,
    update_terminal_history,
)


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
        assert all(t - h[0] < CARD_RETENTION_S for h in history)


def test_terminal_history_keeps_large_ids_apart_and_ignores_repeats() -> None:
    from streams.features import update_terminal_history

    history: list[list[float]] = []
    base = 17_958_835_770_008_804  # beyond 2**53: neighbours collide as floats
    for i in range(3):
        history = update_terminal_history(history, base + i, 1000.0 + i, i % 2, 2000.0 + i)
    history = update_terminal_history(history, base + 1, 1001.0, 1, 2001.0)
    assert [entry[3] for entry in history] == [base, base + 1, base + 2]


def test_stream_state_gives_every_model_feature_of_the_batch_definition() -> None:
    """Card state and terminal label arrays, fed in event-time order with labels arriving
    ``delay`` after their transaction, give exactly the batch model features."""
    from models.extra_features import MODEL_FEATURE_COLUMNS, add_model_features
    from models.simulator import simulate

    frame = add_model_features(simulate(n_customers=150, n_terminals=300, nb_days=75))
    frame = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    seconds = (frame["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    delay = LABEL_DELAY_DAYS * DAY
    cards: dict[int, list[list[float]]] = {}
    terminals: dict[int, list[list[float]]] = {}
    pending = 0  # labels are applied in event-time order, each once it is known
    rows = []
    columns = zip(seconds, frame["TRANSACTION_ID"], frame["CUSTOMER_ID"],
                  frame["TERMINAL_ID"], frame["TX_AMOUNT"], strict=True)
    for t, tx, card, terminal, amount in columns:
        while pending < len(frame) and seconds[pending] + delay <= t:
            j = frame.index[pending]
            key = int(frame.at[j, "TERMINAL_ID"])
            terminals[key] = update_terminal_history(
                terminals.get(key, []), int(frame.at[j, "TRANSACTION_ID"]), seconds[pending],
                int(frame.at[j, "TX_FRAUD"]), seconds[pending] + delay)
            pending += 1
        cards[card], card_features = update_card_history(cards.get(card, []), t, amount, tx)
        arrays = (np.asarray(a, dtype=float) for a in terminal_arrays(terminals.get(terminal, [])))
        rows.append([amount, *transaction_flags(t), *card_features,
                     *terminal_window_features(*arrays, t)])
    got = np.asarray(rows)
    want = frame[MODEL_FEATURE_COLUMNS].to_numpy(np.float64)
    assert got.shape == want.shape
    assert frame["TERMINAL_ID_KNOWN_FRAUD_RUN"].gt(0).sum() > 20
    bad = ~np.isclose(got, want, rtol=0, atol=1e-9)
    assert not bad.any(), pd.DataFrame(
        {"column": np.array(MODEL_FEATURE_COLUMNS)[bad.any(axis=0)]}).to_string()

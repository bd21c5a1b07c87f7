"""Card windows on event time, against a direct count over the definition."""

from __future__ import annotations

import numpy as np
import pandas as pd

from streams.dataplane.features import (
    CARD_DTYPE,
    CARD_RETENTION_S,
    DAY,
    HORIZON_DAYS,
    LABEL_DELAY_DAYS,
    TERMINAL_RETENTION_S,
    card_entries,
    terminal_arrays,
    terminal_entries,
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


def card_definition(times: np.ndarray, amounts: np.ndarray, i: int) -> list[float]:
    """Card features of row ``i`` straight from the definition: the rows that arrived up
    to and including it, by their event time (which may be later than the row's)."""
    t, seen, seen_amounts = times[i], times[: i + 1], amounts[: i + 1]
    features: list[float] = []
    for w in (1, 7, 30):
        mask = seen > t - w * DAY
        features += [float(mask.sum()), float(seen_amounts[mask].mean())]
    mean = np.round(seen_amounts[seen > t - 90 * DAY] * 100).sum() / (seen > t - 90 * DAY).sum()
    mean /= 100
    earlier = seen_amounts[:-1][seen[:-1] > t - 14 * DAY]
    largest = earlier.max() if len(earlier) else 0.0
    safe = mean if mean > 0 else 1.0
    return [*features, amounts[i] / safe if mean > 0 else 1.0, largest / safe]


def test_windows_match_the_definition_including_ties() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.integers(0, 120 * 86400, 400)).astype(float)
    times[10] = times[11] = times[12]  # equal timestamps see only earlier rows
    amounts = rng.uniform(1, 200, 400).round(2)
    state = b""
    for i, (t, a) in enumerate(zip(times, amounts, strict=True)):
        state, features = update_card_history(state, float(t), float(a), i)
        assert np.allclose(features, card_definition(times, amounts, i), rtol=0, atol=1e-9)
        kept = card_entries(state)
        assert (t - kept["event_time"] < CARD_RETENTION_S).all()
        assert kept["tx_id"][-1] == i and len(state) == len(kept) * CARD_DTYPE.itemsize


def test_windows_of_late_arrivals_count_every_earlier_arrival() -> None:
    """Out of event-time order, a window holds every entry that arrived before the row
    and lies in ``(t - w, t]`` or later, as the definition reads."""
    rng = np.random.default_rng(4)
    times = np.sort(rng.integers(0, 60 * 86400, 300)).astype(float)
    late = rng.choice(300, 40, replace=False)
    times[late] -= rng.uniform(0, 3 * 86400, 40).round()
    amounts = rng.uniform(0, 200, 300).round(2)
    amounts[::17] = 0.0
    state = b""
    for i, (t, a) in enumerate(zip(times, amounts, strict=True)):
        state, features = update_card_history(state, float(t), float(a), i)
        assert np.allclose(features, card_definition(times, amounts, i), rtol=0, atol=1e-9)


def test_states_round_trip_through_bytes_and_repeats_give_identical_features() -> None:
    rng = np.random.default_rng(5)
    # Within the retention: a repeat finds every entry of its windows still there.
    times = np.sort(rng.integers(0, 85 * 86400, 200)).astype(float)
    amounts = rng.uniform(1, 200, 200).round(2)
    ids = rng.integers(2**53, 2**62, 200)
    state, first = b"", []
    for t, a, tx in zip(times, amounts, ids, strict=True):
        state, features = update_card_history(state, float(t), float(a), int(tx))
        first.append(features)
    # What a changelog gives back after a restart: the same bytes, in a new object.
    restored = bytes(bytearray(state))
    assert card_entries(restored).tolist() == card_entries(state).tolist()
    for i in [*rng.choice(200, 30), 199]:
        again, features = update_card_history(restored, float(times[i]), float(amounts[i]),
                                              int(ids[i]))
        assert again == restored and features == first[i]
    terminal = b""
    for t, tx in zip(times, ids, strict=True):
        terminal = update_terminal_history(terminal, int(tx), float(t), int(tx) % 2,
                                           float(t) + 7 * DAY)
    restored = bytes(bytearray(terminal))
    for a, b in zip(terminal_arrays(restored), terminal_arrays(terminal), strict=True):
        assert np.array_equal(a, b)
    assert update_terminal_history(restored, int(ids[-1]), float(times[-1]), 0,
                                   float(times[-1]) + 7 * DAY) == restored


def test_an_id_is_matched_only_in_the_id_field() -> None:
    """State bytes equal to an id's bytes in another field are not that id."""
    state, features = update_card_history(b"", 1.5e9, 12.5, 1)
    time_as_id = int(np.array([1.5e9]).view(np.int64)[0])
    amount_as_id = int(np.array([12.5]).view(np.int64)[0])
    for tx in (time_as_id, amount_as_id):
        longer, _ = update_card_history(state, 1.5e9, 12.5, tx)
        assert card_entries(longer)["tx_id"].tolist() == [1, tx]
    terminal = update_terminal_history(b"", 7, 1.5e9, 1, 1.6e9)
    terminal = update_terminal_history(terminal, time_as_id, 1.5e9, 0, 1.6e9)
    assert terminal_entries(terminal)["tx_id"].tolist() == [7, time_as_id]


def test_terminal_history_keeps_large_ids_apart_and_ignores_repeats() -> None:
    state = b""
    base = 17_958_835_770_008_804  # beyond 2**53: neighbours collide as floats
    for i in (2, 0, 1):
        state = update_terminal_history(state, base + i, 1000.0 + i % 2, i % 2, 2000.0 + i)
    state = update_terminal_history(state, base + 1, 1001.0, 1, 2001.0)
    entries = terminal_entries(state)
    assert entries["tx_id"].tolist() == [base, base + 2, base + 1]  # by (event_time, tx_id)
    assert entries["is_fraud"].tolist() == [0, 0, 1]
    expired = update_terminal_history(state, base + 3, 1003.0, 0,
                                      2000.0 + TERMINAL_RETENTION_S)
    assert terminal_entries(expired)["tx_id"].tolist() == [base + 2, base + 1, base + 3]


def terminal_definition(event_times: np.ndarray, known_at: np.ndarray, frauds: np.ndarray,
                        t: float) -> list[float]:
    """Terminal features straight from their definition, label by label."""
    end = t - LABEL_DELAY_DAYS * DAY
    known = [i for i in range(len(event_times)) if known_at[i] <= t and event_times[i] <= end]
    features: list[float] = []
    for w in (1, 7, 30):
        rows = [i for i in known if event_times[i] > end - w * DAY]
        features += [float(len(rows)), sum(frauds[i] for i in rows) / len(rows) if rows else 0]
    genuine = [i for i in known if frauds[i] == 0]
    run = [i for i in known if not genuine or i > genuine[-1]]
    today = t // DAY
    run_days = min(today - event_times[run[0]] // DAY, HORIZON_DAYS) if run else 0
    since = min(today - event_times[genuine[-1]] // DAY, HORIZON_DAYS) if genuine else 60
    return [*features, len(run), run_days, since]


def test_terminal_features_follow_their_definition_with_late_labels() -> None:
    """Labels whose delay varies: some with an old event time are not yet known."""
    rng = np.random.default_rng(6)
    for _ in range(60):
        n = int(rng.integers(0, 150))
        times = np.sort(rng.integers(0, 90 * 86400, n)).astype(float)
        known_at = times + rng.choice([7 * DAY, 30 * DAY, 0.0], n) * rng.uniform(0, 1.5, n)
        frauds = (rng.random(n) < rng.uniform(0, 0.7)).astype(np.int64)
        frauds[-int(rng.integers(0, 4)):] = 1  # often a run of frauds at the end
        for t in rng.uniform(0, 110 * 86400, 8):
            got = terminal_window_features(times, known_at, frauds, float(t))
            assert np.allclose(got, terminal_definition(times, known_at, frauds, float(t)),
                               rtol=0, atol=1e-12)


def stream_features(frame: pd.DataFrame, delay_days: np.ndarray) -> np.ndarray:
    """Every model feature of ``frame``'s rows as the stream state gives them: card state
    and terminal label arrays fed in event-time order, each label once it is known,
    ``delay_days`` (per row, rounded to the second) after its transaction."""
    frame = frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    seconds = (frame["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    known_at = seconds + np.rint(delay_days[frame.index.to_numpy()] * DAY)
    by_known = np.argsort(known_at, kind="stable")
    cards: dict[int, bytes] = {}
    terminals: dict[int, bytes] = {}
    pending = 0  # labels are applied in the order they become known
    rows = []
    columns = zip(seconds, frame["TRANSACTION_ID"], frame["CUSTOMER_ID"],
                  frame["TERMINAL_ID"], frame["TX_AMOUNT"], strict=True)
    for t, tx, card, terminal, amount in columns:
        while pending < len(frame) and known_at[by_known[pending]] <= t:
            j = by_known[pending]
            key = int(frame["TERMINAL_ID"].iat[j])
            terminals[key] = update_terminal_history(
                terminals.get(key, b""), int(frame["TRANSACTION_ID"].iat[j]), seconds[j],
                int(frame["TX_FRAUD"].iat[j]), known_at[j])
            pending += 1
        cards[card], card_features = update_card_history(cards.get(card, b""), t, amount, tx)
        arrays = terminal_arrays(terminals.get(terminal, b""))
        rows.append([amount, *transaction_flags(t), *card_features,
                     *terminal_window_features(*arrays, t)])
    out = np.empty((len(frame), len(rows[0])))
    out[np.argsort(frame.index.to_numpy())] = np.asarray(rows)  # back in the frame's order
    return out


def assert_same_features(got: np.ndarray, frame: pd.DataFrame) -> None:
    from models.extra_features import MODEL_FEATURE_COLUMNS

    want = frame.sort_index()[MODEL_FEATURE_COLUMNS].to_numpy(np.float64)
    assert got.shape == want.shape
    bad = ~np.isclose(got, want, rtol=0, atol=1e-9)
    assert not bad.any(), pd.DataFrame(
        {"column": np.array(MODEL_FEATURE_COLUMNS)[bad.any(axis=0)],
         "rows": bad.sum(axis=0)[bad.any(axis=0)]}).to_string()


def test_stream_state_gives_every_model_feature_of_the_batch_definition() -> None:
    """Card state and terminal label arrays, fed in event-time order with labels arriving
    ``delay`` after their transaction, give exactly the batch model features."""
    from models.extra_features import add_model_features
    from models.simulator import simulate

    frame = add_model_features(simulate(n_customers=150, n_terminals=300, nb_days=75))
    assert frame["TERMINAL_ID_KNOWN_FRAUD_RUN"].gt(0).sum() > 20
    got = stream_features(frame, np.full(len(frame), float(LABEL_DELAY_DAYS)))
    assert_same_features(got, frame)


def test_batch_features_follow_late_labels_as_the_stream_does() -> None:
    """With a per-row LABEL_DELAY_DAYS (the label_delay drift: half the labels of days
    30-60 arrive 9-20 days late), the batch reference leaves each late label out of the
    windows until it arrives, as the stream does, on every row."""
    from models.drift import apply_drift
    from models.drift_spec import DriftSpec
    from models.extra_features import LABEL_DELAY_COLUMN, add_model_features
    from models.simulator import simulate

    spec = DriftSpec.parse("label_delay:start=30,days=30,intensity=0.5,delay_days=9,"
                           "delay_spread_days=11")
    world = apply_drift(simulate(n_customers=150, n_terminals=300, nb_days=75), [spec])
    frame = add_model_features(world)
    delays = frame[LABEL_DELAY_COLUMN].to_numpy(np.float64)
    assert (delays > LABEL_DELAY_DAYS).sum() > 1000
    constant = add_model_features(world.drop(columns=LABEL_DELAY_COLUMN))
    changed = ~np.isclose(frame["TERMINAL_ID_RISK_7DAY_WINDOW"],
                          constant["TERMINAL_ID_RISK_7DAY_WINDOW"])
    assert changed.sum() > 100  # the late labels do change features
    assert_same_features(stream_features(frame, delays), frame)

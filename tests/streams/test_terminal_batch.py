"""Batch terminal features and label states, against the scalar functions, exactly.

Every comparison is of bits (features) or bytes (states), never approximate. Run as a
script for the benchmark: ``python tests/streams/test_terminal_batch.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

import numpy as np
import pytest

from streams.dataplane import terminal_features, terminal_histories
from streams.dataplane.features import (
    DAY,
    TERMINAL_DTYPE,
    TERMINAL_RETENTION_S,
    terminal_arrays,
    terminal_entries,
    terminal_window_features,
    update_terminal_history,
)
from streams.dataplane.terminal_features import terminal_features_batch
from streams.dataplane.terminal_histories import update_terminal_histories

DELAY = 7 * DAY
T0 = 1_600_000_000.0  # 2020-09-13, a Sunday


def scalar_features(arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    terminal: np.ndarray, t: np.ndarray, delay_days: float = 7) -> np.ndarray:
    """The features row by row, by the scalar function."""
    rows = [terminal_window_features(*arrays[k], x, delay_days)
            for k, x in zip(terminal.tolist(), t.tolist(), strict=True)]
    return np.array(rows, dtype=np.float64).reshape(len(t), 9)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal bit for bit (so 0.0 is not -0.0, and == alone is not enough)."""
    assert got.dtype == np.float64 and got.shape == want.shape
    bad = np.flatnonzero((got.view(np.int64) != want.view(np.int64)).any(axis=1))
    assert not len(bad), f"rows {bad[:5].tolist()}: {got[bad[:2]]} != {want[bad[:2]]}"


def scalar_states(states: list[bytes], terminal: np.ndarray, tx_id: np.ndarray,
                  event_time: np.ndarray, is_fraud: np.ndarray,
                  known_at: np.ndarray) -> list[bytes]:
    """The labels applied one by one, in batch order, by the scalar function."""
    states = list(states)
    labels = zip(terminal.tolist(), tx_id.tolist(), event_time.tolist(), is_fraud.tolist(),
                 known_at.tolist(), strict=True)
    for k, tx, time, fraud, known in labels:
        states[k] = update_terminal_history(states[k], tx, time, fraud, known)
    return states


def label_arrays(rng: np.random.Generator, n: int, start: float, span: float,
                 integer: bool = True, late: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One terminal's label arrays: sorted event times, known ``DELAY`` later (a share
    ``late`` of them later still), frauds with runs at the end now and then."""
    times = np.sort(start + rng.uniform(0, span, n))
    if integer:
        times = np.floor(times)
    known = times + DELAY
    later = rng.random(n) < late
    known[later] += rng.choice([rng.uniform(0, 20 * DAY), 3 * DAY], later.sum())
    frauds = (rng.random(n) < rng.uniform(0, 0.6)).astype(np.int64)
    if n and rng.random() < 0.5:
        frauds[-int(rng.integers(1, min(n, 6) + 1)):] = 1
    return times, known, frauds


def world(rng: np.random.Generator, terminals: int, most: int, integer: bool = True,
          late: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Label arrays of ``terminals`` terminals, some empty, over 120 days."""
    return [label_arrays(rng, int(rng.integers(0, most + 1)) if rng.random() > 0.1 else 0,
                         T0, 120 * DAY, integer, late) for _ in range(terminals)]


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def scalar_rows(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the rows the batch hands to the scalar feature function."""
    counter = Counter(terminal_window_features)
    monkeypatch.setattr(terminal_features, "terminal_window_features", counter)
    return counter


@pytest.fixture
def scalar_labels(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the labels the batch hands to the scalar update function."""
    counter = Counter(update_terminal_history)
    monkeypatch.setattr(terminal_histories, "update_terminal_history", counter)
    return counter


# Features.


@pytest.mark.parametrize("integer", [True, False])
def test_features_equal_the_scalar_ones_with_the_constant_delay(integer: bool,
                                                                scalar_rows: Counter) -> None:
    rng = np.random.default_rng(10 + integer)
    for _ in range(8):
        arrays = world(rng, 120, 150, integer)
        terminal = rng.integers(0, len(arrays), 1500)
        t = T0 + rng.uniform(-10 * DAY, 150 * DAY, len(terminal))
        if integer:
            t = np.floor(t)
        assert_same_bits(terminal_features_batch(arrays, terminal, t),
                         scalar_features(arrays, terminal, t))
    if integer:  # every label up to t - 7 days is known by t: no row needs the scalar path
        assert scalar_rows.calls == 0


def test_features_with_late_labels_use_the_scalar_path_only_where_it_filters(
        scalar_rows: Counter) -> None:
    """Labels known later than the delay: the rows whose labels up to the end include one
    not yet known, and only those, go through the scalar function."""
    rng = np.random.default_rng(11)
    expected = 0
    for integer in (True, False):
        arrays = world(rng, 80, 120, integer, late=0.3)
        terminal = rng.integers(0, len(arrays), 2000)
        t = T0 + rng.uniform(0, 140 * DAY, len(terminal))
        # Some rows at exactly a label's known time: known_at <= t holds it.
        for i in range(0, len(t), 7):
            times, known, _ = arrays[terminal[i]]
            if len(known):
                t[i] = known[rng.integers(0, len(known))]
        scalar_rows.calls = 0
        got = terminal_features_batch(arrays, terminal, t)
        rows = scalar_rows.calls
        assert_same_bits(got, scalar_features(arrays, terminal, t))
        filtering = 0
        for k, x in zip(terminal.tolist(), t.tolist(), strict=True):
            times, known, _ = arrays[k]
            high = np.searchsorted(times, x - DELAY, side="right")
            filtering += bool(high and known[:high].max() > x)
        assert rows == filtering
        expected += filtering
    assert expected > 100


def test_features_of_empty_terminals_and_of_many_rows_on_one_terminal() -> None:
    rng = np.random.default_rng(12)
    empty = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    busy = label_arrays(rng, 3000, T0, 100 * DAY)
    arrays = [empty, busy, empty, label_arrays(rng, 1, T0, DAY), empty]
    terminal = np.r_[np.ones(3000, dtype=np.int64), rng.integers(0, 5, 500)]
    t = np.floor(T0 + rng.uniform(0, 110 * DAY, len(terminal)))
    assert_same_bits(terminal_features_batch(arrays, terminal, t),
                     scalar_features(arrays, terminal, t))
    only_empty = [empty, empty]
    terminal = np.array([0, 1, 1])
    t = np.array([T0, T0 + 1.5, T0 - 3e6])
    got = terminal_features_batch(only_empty, terminal, t)
    assert_same_bits(got, scalar_features(only_empty, terminal, t))
    assert got[0].tolist() == [0.0] * 6 + [0.0, 0.0, 60.0]
    assert terminal_features_batch(arrays, np.zeros(0, dtype=np.int64),
                                   np.zeros(0)).shape == (0, 9)


def test_window_boundaries_exactly_at_the_window_starts_and_midnights() -> None:
    """A label at exactly ``t - 7 - w`` days is out of window w, at ``t - 7`` days it is
    in; day counts turn at midnight UTC."""
    rng = np.random.default_rng(13)
    arrays = world(rng, 40, 80) + world(rng, 40, 80, integer=False)
    midnight = np.floor(T0 / DAY) * DAY
    arrays.append((midnight + np.array([0.0, DAY - 0.5, DAY, 3 * DAY - 1e-3, 3 * DAY]),
                   midnight + DELAY + np.array([0.0, DAY - 0.5, DAY, 3 * DAY - 1e-3, 3 * DAY]),
                   np.array([0, 1, 0, 1, 1])))
    terminal, t = [], []
    for k, (times, _, _) in enumerate(arrays):
        for time in times[rng.permutation(len(times))[:10]]:
            for days in (7, 8, 14, 37):
                for step in (0.0, 1.0, -1.0, 0.5, -0.5, 1e-6):
                    terminal.append(k)
                    t.append(time + days * DAY + step)
    terminal.extend([len(arrays) - 1] * 6)
    t.extend(midnight + DELAY + np.array([DAY, 2 * DAY, 4 * DAY - 1e-3, 4 * DAY, 10 * DAY,
                                          70 * DAY]))
    terminal, t = np.array(terminal), np.array(t)
    assert_same_bits(terminal_features_batch(arrays, terminal, t),
                     scalar_features(arrays, terminal, t))


def test_features_with_another_delay_and_other_label_types() -> None:
    """A delay of 3.5 days; frauds as bools, int8 or counts above 1; terminals with
    unsorted or NaN times (the scalar path): all as the scalar function."""
    rng = np.random.default_rng(14)
    arrays = world(rng, 60, 100, integer=False, late=0.1)
    for k in range(0, 60, 4):
        times, known, frauds = arrays[k]
        arrays[k] = (times, known, [frauds.astype(bool), frauds.astype(np.int8),
                                    frauds * 2, frauds.astype(float)][k // 4 % 4])
    times, known, frauds = label_arrays(rng, 50, T0, 60 * DAY)
    arrays.append((times[::-1].copy(), known, frauds))  # unsorted: undefined, but equal
    times, known, frauds = label_arrays(rng, 50, T0, 60 * DAY)
    known[10] = np.nan
    arrays.append((times, known, frauds))
    terminal = rng.integers(0, len(arrays), 3000)
    t = T0 + rng.uniform(0, 130 * DAY, len(terminal))
    for delay in (7, 3.5):
        assert_same_bits(terminal_features_batch(arrays, terminal, t, delay),
                         scalar_features(arrays, terminal, t, delay))


def test_features_of_states_made_by_the_stream() -> None:
    """Label arrays of states built by update_terminal_history, ties and large ids."""
    rng = np.random.default_rng(15)
    states = [b""] * 30
    base = 2**60
    for i in range(3000):
        k = int(rng.integers(0, 30))
        time = float(T0 + np.floor(i / 30) * 3600)  # ties on a terminal's event times
        states[k] = update_terminal_history(states[k], base - i * 7919, time,
                                            int(rng.random() < 0.2), time + DELAY)
    arrays = [terminal_arrays(state) for state in states]
    terminal = rng.integers(0, 30, 1000)
    t = np.floor(T0 + rng.uniform(0, 140 * DAY, len(terminal)))
    assert_same_bits(terminal_features_batch(arrays, terminal, t),
                     scalar_features(arrays, terminal, t))


# Label states.


def stored_states(rng: np.random.Generator, terminals: int, most: int, ids: int,
                  end: float) -> tuple[list[bytes], list[int]]:
    """States built by the scalar function from labels known before ``end``, over 100
    days, with event times out of order, ties and ids from ``ids`` on."""
    states, used = [], []
    for _ in range(terminals):
        state = b""
        count = int(rng.integers(0, most + 1)) if rng.random() > 0.1 else 0
        for known in np.sort(end - rng.uniform(0, 100 * DAY, count)).tolist():
            delay = DELAY if rng.random() < 0.6 else float(rng.uniform(0, 30 * DAY))
            time = float(np.floor((known - delay) / 600) * 600)  # ties
            state = update_terminal_history(state, ids, time, int(rng.random() < 0.3), known)
            used.append(ids)
            ids += int(rng.integers(1, 3))
        states.append(state)
    return states, used


def test_states_equal_the_scalar_ones_in_random_worlds(scalar_labels: Counter) -> None:
    """Labels known in order (each terminal's known times never go back): the constant
    delay, other delays (event times out of order, inserted inside), ties on event time,
    ids beyond 2**53, repeated ids of the states and of the batch, empty states, many
    labels on one terminal, expiry; all without the scalar path."""
    rng = np.random.default_rng(20)
    in_state = in_batch = inserted = expired = 0
    for trial in range(40):
        terminals = int(rng.integers(1, 60))
        first = int(rng.integers(2**53, 2**62))
        states, used = stored_states(rng, terminals, 60, first, T0)
        n = int(rng.integers(1, 600))
        terminal = rng.integers(0, terminals, n)
        if trial % 3 == 0:
            terminal[: n // 2] = 0  # many labels on one terminal
        spread = [DAY, 10 * DAY, 40 * DAY][trial % 3]  # the last: some states expire
        known = np.sort(T0 + rng.uniform(0, spread, n))
        constant = rng.random(n) < [1.0, 0.5, 0.2][trial % 3]
        event = np.where(constant, known - DELAY, np.floor(known - rng.uniform(0, 30 * DAY, n)))
        event = np.where(rng.random(n) < 0.2, np.floor(event / 600) * 600, event)
        tx_id = first + 10**6 + rng.permutation(3 * n)[:n]
        again = rng.random(n) < 0.15  # repeats of the batch, known after the first one
        tx_id[again] = tx_id[rng.integers(0, n, again.sum())]
        # Repeats of a state's labels that no label of the batch expires (the others may
        # take the scalar path: test_expiry_by_long_gaps_and_repeats_of_expired_ids).
        entries = terminal_entries(b"".join(states))
        recent = entries["tx_id"][entries["known_at"] > known[-1] - TERMINAL_RETENTION_S]
        if len(recent):
            old = rng.random(n) < 0.1
            tx_id[old] = rng.choice(recent, old.sum())
        fraud = (rng.random(n) < 0.3).astype(np.int64)
        got = update_terminal_histories(states, terminal, tx_id, event, fraud, known)
        want = scalar_states(states, terminal, tx_id, event, fraud, known)
        assert got == want
        in_state += sum(tx in set(terminal_entries(states[k])["tx_id"].tolist())
                        for k, tx in zip(terminal.tolist(), tx_id.tolist(), strict=True))
        pairs = list(zip(terminal.tolist(), tx_id.tolist(), strict=True))
        in_batch += len(pairs) - len(set(pairs))
        for state, after in zip(states, want, strict=True):  # new records before old ones
            ids = terminal_entries(after)["tx_id"]
            old = np.isin(ids, terminal_entries(state)["tx_id"])
            inserted += int((~old & (np.cumsum(old[::-1])[::-1] > 0)).sum())
        expired += sum(len(terminal_entries(state)) + (terminal == k).sum()
                       > len(terminal_entries(want[k]))
                       for k, state in enumerate(states))
        for before, after in zip(states, got, strict=True):
            if before == after:
                assert before is after or not before  # untouched states come back as is
    assert scalar_labels.calls == 0
    assert min(in_state, in_batch, inserted, expired) > 50


def test_expiry_by_long_gaps_and_repeats_of_expired_ids() -> None:
    """Known times that jump by more than the retention expire the state and earlier
    labels of the batch; an id repeated after its record expired is added again (the
    scalar path)."""
    rng = np.random.default_rng(21)
    states, _ = stored_states(rng, 8, 40, 1, T0)
    jumps = np.array([0.0, 0.5, TERMINAL_RETENTION_S, TERMINAL_RETENTION_S + 1.0,
                      2 * TERMINAL_RETENTION_S, 2 * TERMINAL_RETENTION_S])
    for k in range(8):
        n = 60
        terminal = np.full(n, k)
        known = np.sort(T0 + rng.uniform(0, DAY, n)) + np.repeat(jumps, 10)
        event = known - DELAY
        tx_id = 10**9 + np.arange(n)
        if k % 2:  # the first label's id again, after its record expired
            tx_id[-1] = tx_id[0]
        if k == 2:  # exactly at the horizon of a later label: expires
            known[10:] = known[0] + TERMINAL_RETENTION_S
        fraud = rng.integers(0, 2, n)
        got = update_terminal_histories(states, terminal, tx_id, event, fraud, known)
        want = scalar_states(states, terminal, tx_id, event, fraud, known)
        assert got == want
        assert len(want[k]) < len(states[k]) + n * TERMINAL_DTYPE.itemsize


def test_known_times_going_back_use_the_scalar_path_for_that_terminal_only(
        scalar_labels: Counter) -> None:
    rng = np.random.default_rng(22)
    states, _ = stored_states(rng, 10, 50, 1, T0)
    n = 400
    terminal = rng.integers(0, 10, n)
    known = np.sort(T0 + rng.uniform(0, 100 * DAY, n))
    back = np.flatnonzero(terminal == 3)
    known[back] = known[back][::-1]  # terminal 3's labels arrive newest first
    event = known - rng.uniform(0, 30 * DAY, n)
    tx_id = 10**6 + np.arange(n)
    fraud = rng.integers(0, 2, n)
    got = update_terminal_histories(states, terminal, tx_id, event, fraud, known)
    assert got == scalar_states(states, terminal, tx_id, event, fraud, known)
    assert scalar_labels.calls == len(back)


def test_batches_and_features_follow_the_stream() -> None:
    """A stream of transactions and of their labels, known a week later, in micro-batches:
    states by batches, features by batches, as the scalar functions give them."""
    rng = np.random.default_rng(23)
    n, terminals = 6000, 50
    times = np.sort(np.floor(T0 + rng.uniform(0, 150 * DAY, n)))
    terminal = rng.integers(0, terminals, n)
    fraud = (rng.random(n) < 0.15).astype(np.int64)
    tx_id = np.arange(n) + 2**55
    batch_states, scalar_state = [b""] * terminals, [b""] * terminals
    labelled = 0
    for low in range(0, n, 200):
        high = min(low + 200, n)
        until = times[high - 1]
        known = np.searchsorted(times + DELAY, until, side="right")
        labels = np.arange(labelled, known)
        labelled = known
        batch_states = update_terminal_histories(batch_states, terminal[labels],
                                                 tx_id[labels], times[labels],
                                                 fraud[labels], times[labels] + DELAY)
        scalar_state = scalar_states(scalar_state, terminal[labels], tx_id[labels],
                                     times[labels], fraud[labels], times[labels] + DELAY)
        assert batch_states == scalar_state
        keys, where = np.unique(terminal[low:high], return_inverse=True)
        arrays = [terminal_arrays(batch_states[k]) for k in keys.tolist()]
        assert_same_bits(terminal_features_batch(arrays, where, times[low:high]),
                         scalar_features(arrays, where, times[low:high]))
    assert max(map(len, batch_states)) > 60 * TERMINAL_DTYPE.itemsize


def test_empty_batches_and_bad_input() -> None:
    states = [b"", update_terminal_history(b"", 1, T0, 0, T0 + DELAY)]
    empty = np.zeros(0)
    same = update_terminal_histories(states, empty.astype(np.int64), empty.astype(np.int64),
                                     empty, empty.astype(np.int64), empty)
    assert same == states and same is not states
    with pytest.raises(ValueError, match="whole number"):
        update_terminal_histories([b"x" * 7], np.array([0]), np.array([1]), np.array([T0]),
                                  np.array([0]), np.array([T0]))
    with pytest.raises(ValueError, match="signed byte"):
        update_terminal_histories(states, np.array([0]), np.array([2]), np.array([T0]),
                                  np.array([300]), np.array([T0]))
    with pytest.raises(IndexError):
        terminal_features_batch([], np.array([0]), np.array([T0]))


# Benchmark.


def benchmark_world(seed: int = 0, terminals: int = 1500, events: int = 4096
                    ) -> tuple[list[bytes], np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """States of ``terminals`` terminals with 100-400 labels each over the retention,
    ``events`` transactions in the next hour and as many labels known in it."""
    rng = np.random.default_rng(seed)
    states = []
    ids = 10**12
    for _ in range(terminals):
        count = int(rng.integers(100, 401))
        records = np.zeros(count, dtype=TERMINAL_DTYPE)
        records["known_at"] = np.sort(T0 - rng.uniform(0, TERMINAL_RETENTION_S, count))
        records["event_time"] = records["known_at"] - DELAY
        records["is_fraud"] = rng.random(count) < 0.1
        records["tx_id"] = ids + np.arange(count)
        ids += count
        states.append(records.tobytes())
    terminal = rng.integers(0, terminals, events)
    t = np.sort(T0 + rng.uniform(0, 3600, events))
    known = np.sort(T0 + rng.uniform(0, 3600, events))
    labels = (terminal, ids + np.arange(events), known - DELAY,
              (rng.random(events) < 0.1).astype(np.int64), known)
    return states, terminal, t, labels


def _best(function: Callable[[], object], repeat: int) -> float:
    """The shortest of ``repeat`` runs of ``function``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = perf_counter()
        function()
        best = min(best, perf_counter() - started)
    return best


def main() -> None:
    states, terminal, t, labels = benchmark_world()
    n = len(t)
    keys, where = np.unique(terminal, return_inverse=True)
    arrays = [terminal_arrays(states[k]) for k in keys.tolist()]
    assert_same_bits(terminal_features_batch(arrays, where, t),
                     scalar_features(arrays, where, t))
    assert update_terminal_histories(states, *labels) == scalar_states(states, *labels)
    terminal_ids, tx_ids, _, frauds, known = labels
    delays = np.random.default_rng(1).uniform(DAY, 30 * DAY, n)  # inserted inside
    shuffled = (terminal_ids, tx_ids, known - delays, frauds, known)
    assert update_terminal_histories(states, *shuffled) == scalar_states(states, *shuffled)
    print(f"{n} events, {len(keys)} distinct terminals, "
          f"{sum(map(len, states)) // TERMINAL_DTYPE.itemsize / len(states):.0f} labels "
          "a terminal; microseconds an event (best of runs):")
    for name, scalar, batch in [
        ("terminal features", lambda: scalar_features(arrays, where, t),
         lambda: terminal_features_batch(arrays, where, t)),
        ("label updates", lambda: scalar_states(states, *labels),
         lambda: update_terminal_histories(states, *labels)),
        ("  delays 1-30 days", lambda: scalar_states(states, *shuffled),
         lambda: update_terminal_histories(states, *shuffled)),
    ]:
        slow, fast = _best(scalar, 3) / n * 1e6, _best(batch, 15) / n * 1e6
        print(f"  {name:18s} scalar {slow:6.2f}  batch {fast:6.2f}  ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()

"""The batch card update against the scalar one applied event by event, bit for bit."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

import streams.dataplane.card_batch as card_batch
import streams.dataplane.card_state_search as card_state_search
from streams.dataplane.card_batch import update_card_histories
from streams.dataplane.features import CARD_DTYPE, DAY, card_entries, update_card_history

T0 = 1.5e9  # Unix seconds, mid 2017


def sequential(states: list[bytes], card: np.ndarray, event_time: np.ndarray,
               amount: np.ndarray, tx_id: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The contract: the scalar function applied to the events one after the other."""
    new = list(states)
    rows = []
    for i in range(len(card)):
        new[card[i]], features = update_card_history(new[card[i]], event_time[i], amount[i],
                                                     tx_id[i])
        rows.append(features)
    return new, np.array(rows, dtype=np.float64).reshape(len(card), 8)


def assert_same(states: list[bytes], card, event_time, amount, tx_id) -> np.ndarray:
    """The batch function gives exactly the sequential states and features."""
    card = np.asarray(card, dtype=np.int64)
    event_time = np.asarray(event_time, dtype=np.float64)
    amount = np.asarray(amount, dtype=np.float64)
    tx_id = np.asarray(tx_id, dtype=np.int64)
    want_states, want = sequential(states, card, event_time, amount, tx_id)
    got_states, got = update_card_histories(states, card, event_time, amount, tx_id)
    assert got.shape == want.shape and got.dtype == np.float64
    differ = np.flatnonzero((got.view(np.int64) != want.view(np.int64)).any(axis=1))
    assert not len(differ), (differ[:5], got[differ[:5]], want[differ[:5]])
    assert len(got_states) == len(want_states)
    wrong = [k for k, (a, b) in enumerate(zip(got_states, want_states, strict=True)) if a != b]
    assert not wrong, (wrong[:5], [card_entries(got_states[k]) for k in wrong[:1]],
                       [card_entries(want_states[k]) for k in wrong[:1]])
    return got


@pytest.fixture
def scalar_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the batch function's calls of the scalar one (its fallback)."""
    calls: list[int] = []

    def counted(*args):
        calls.append(1)
        return update_card_history(*args)

    monkeypatch.setattr(card_batch, "update_card_history", counted)
    return calls


def histories(rng: np.random.Generator, cards: int, days: float, per_day: float = 2.0,
              end: float = T0, late: float = 0.0, ids=None) -> list[bytes]:
    """States the scalar function makes from each card's random past ending at ``end``;
    a share ``late`` of the events arrive up to three days late (out of time order)."""
    ids = ids if ids is not None else itertools.count(10**12)
    states = []
    for _ in range(cards):
        m = int(rng.poisson(per_day * days))
        times = np.sort(end - rng.uniform(0, days * DAY, m)).round()
        delayed = rng.random(m) < late
        times[delayed] -= rng.uniform(0, 3 * DAY, int(delayed.sum())).round()
        amounts = rng.uniform(1, 300, m).round(2)
        state = b""
        for t, a in zip(times.tolist(), amounts.tolist(), strict=True):
            state, _ = update_card_history(state, t, a, next(ids))
        states.append(state)
    return states


def _random_ids(rng: np.random.Generator):
    """Ids drawn at random from [0, 2**62): new ones fall inside a state's range of ids."""
    while True:
        yield int(rng.integers(0, 2**62))


def batch(rng: np.random.Generator, cards: int, n: int, start: float = T0,
          span: float = DAY, first_id: int = 10**15):
    """``n`` new events over ``cards`` cards, in time order over ``span`` seconds."""
    card = rng.integers(0, cards, n)
    event_time = np.sort(start + rng.uniform(0, span, n)).round()
    amount = rng.uniform(1, 300, n).round(2)
    tx_id = np.arange(first_id, first_id + n)
    return card, event_time, amount, tx_id


def test_in_order_batches_match_without_a_scalar_call(scalar_calls: list[int]) -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cards = int(rng.integers(1, 40))
        states = histories(rng, cards, float(rng.uniform(0, 120)))
        assert_same(states, *batch(rng, cards, int(rng.integers(1, 400)),
                                   span=float(rng.uniform(60, 5 * DAY))))
    assert not scalar_calls


def test_ties_in_event_time() -> None:
    """Equal times, in the batch and with the state's entries: arrival order decides."""
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        states = histories(rng, 12, 40)
        card, event_time, amount, tx_id = batch(rng, 12, 300)
        event_time = np.sort(T0 + rng.integers(-1, 6, 300) * 3600.0)
        last = [card_entries(s)["event_time"].max() if s else T0 for s in states]
        event_time[:12] = np.maximum.accumulate(np.array(last))[: 12]  # a state's last time
        event_time.sort()
        assert_same(states, card, event_time, amount, tx_id)


@pytest.fixture(params=["search", "hash"])
def lookup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Ids looked up in the states one by one (few of them) or by a hash (many)."""
    if request.param == "hash":
        monkeypatch.setattr(card_state_search, "_FEW_SEARCHES", -1)
    return request.param


def test_repeats_inside_the_batch_and_of_ids_already_in_state(
        scalar_calls: list[int], lookup: str) -> None:
    """Redeliveries: of state entries (first in their card's batch, as after a restart)
    and of the batch's own events (right after them); an id of another card is new."""
    for seed in range(5):
        rng = np.random.default_rng(200 + seed)
        cards = 20
        states = histories(rng, cards, 60, ids=_random_ids(rng) if seed % 2 else None)
        card, event_time, amount, tx_id = batch(rng, cards, 200, span=3 * DAY)
        events = list(zip(card.tolist(), event_time.tolist(), amount.tolist(), tx_id.tolist(),
                          strict=True))
        replays = []
        for k in range(cards):
            entries = card_entries(states[k])
            old = entries[max(len(entries) - int(rng.integers(0, 6)), 0):]  # the last few
            replays += [(k, float(e["event_time"]), float(e["amount"]), int(e["tx_id"]))
                        for e in old if rng.random() < 0.7]
        replays.sort(key=lambda e: e[1])
        mixed = []
        for e in events:
            mixed.append(e)
            while rng.random() < 0.3:  # delivered again, at once
                mixed.append(e)
        other = (0, event_time[0], 5.0, int(card_entries(states[1])["tx_id"][-1])
                 if states[1] else 7)
        rows = [*replays, other, *mixed, *replays[: len(replays) // 2]]
        columns = [np.array(c) for c in zip(*rows, strict=True)]
        assert_same(states, *columns)
        calls = len(scalar_calls)
        # Without the late replays at the end, no card goes back in time: no scalar call.
        assert_same(states, *[np.array(c) for c in zip(*[*replays, other, *mixed], strict=True)])
        assert len(scalar_calls) == calls


def test_repeats_far_from_their_entry_and_later_duplicates(lookup: str) -> None:
    """Repeats with another time (possibly past their entry's windows: the scalar function
    then divides by zero, and so does the batch) and duplicates after later events."""
    raised = 0
    for seed in range(30):
        rng = np.random.default_rng(300 + seed)
        states = histories(rng, 4, 30, per_day=4, ids=_random_ids(rng))
        span = float(rng.choice([DAY / 2, DAY / 2, 60 * DAY]))
        card, event_time, amount, tx_id = batch(rng, 4, 40, span=span)
        tx_id = rng.integers(0, 2**62, 40)
        picks = rng.choice(40, 10)
        tx_id[picks] = tx_id[rng.choice(40, 10)]
        for j in rng.choice(40, int(rng.integers(0, 3))):  # ids of the state's last days
            entries = card_entries(states[card[j]])
            if len(entries):
                tx_id[j] = entries["tx_id"][-int(rng.integers(1, min(len(entries), 4) + 1))]
        try:
            sequential(states, card, event_time, amount, tx_id)
        except ZeroDivisionError:
            raised += 1
            with pytest.raises(ZeroDivisionError):
                update_card_histories(states, card, event_time, amount, tx_id)
            continue
        assert_same(states, card, event_time, amount, tx_id)
    assert 0 < raised < 30


def test_unknown_ids_are_never_repeats() -> None:
    rng = np.random.default_rng(400)
    states = histories(rng, 6, 30, ids=itertools.repeat(-1))
    card, event_time, amount, tx_id = batch(rng, 6, 120)
    tx_id[:] = -1
    card[1::2], event_time[1::2], amount[1::2] = card[::2], event_time[::2], amount[::2]
    got = assert_same(states, card, event_time, amount, tx_id)
    assert not np.array_equal(got[::2, 0], got[1::2, 0])  # the second one counts the first
    tx_id[::3] = rng.integers(0, 5, len(tx_id[::3]))  # a few known ids, repeated
    assert_same(states, card, event_time, amount, tx_id)


def test_empty_states(scalar_calls: list[int]) -> None:
    rng = np.random.default_rng(500)
    assert_same([b""] * 30, *batch(rng, 30, 200))
    assert_same([b""], [0], [T0], [12.5], [3])
    assert not scalar_calls


def test_a_card_seen_many_times_in_one_batch(scalar_calls: list[int]) -> None:
    rng = np.random.default_rng(600)
    states = histories(rng, 1, 90, per_day=3)
    card, event_time, amount, tx_id = batch(rng, 1, 700, span=20 * DAY)
    assert_same(states, card, event_time, amount, tx_id)
    states = histories(rng, 3, 50)
    card, event_time, amount, tx_id = batch(rng, 3, 500, span=3 * DAY)
    card[rng.random(500) < 0.9] = 1
    assert_same(states, card, event_time, amount, tx_id)
    assert not scalar_calls


def test_out_of_order_times_fall_back_and_still_match(scalar_calls: list[int]) -> None:
    for seed in range(5):
        rng = np.random.default_rng(700 + seed)
        states = histories(rng, 15, 95)
        card, event_time, amount, tx_id = batch(rng, 15, 200, span=10 * DAY)
        late = rng.random(200) < 0.1
        event_time[late] -= rng.uniform(0, 100 * DAY, int(late.sum())).round()
        assert_same(states, card, event_time, amount, tx_id)
    # Only the cards that go back are left to the scalar function.
    rng = np.random.default_rng(799)
    states = histories(rng, 10, 30)
    card, event_time, amount, tx_id = batch(rng, 10, 100)
    mine = np.flatnonzero(card == card[50])
    event_time[mine[-1]] = T0 - 2 * DAY
    calls = len(scalar_calls)
    update_card_histories(states, card, event_time, amount, tx_id)
    assert len(scalar_calls) - calls == len(mine)


def test_states_with_late_entries_are_vectorised_exactly(scalar_calls: list[int]) -> None:
    """States whose times go back (late arrivals of the past) need no scalar call."""
    for seed in range(4):
        rng = np.random.default_rng(800 + seed)
        states = histories(rng, 20, 100, late=0.2)
        before = len(scalar_calls)
        assert_same(states, *batch(rng, 20, 300, start=T0 + float(rng.uniform(0, 5)) * DAY,
                                   span=4 * DAY))
        assert len(scalar_calls) == before


def test_a_state_far_out_of_order_goes_to_the_scalar_function(
        scalar_calls: list[int]) -> None:
    """An early entry later than a long run of others (a clock far ahead): its running
    maximum does not settle in a few steps, and the card takes the scalar function."""
    rng = np.random.default_rng(850)
    states = histories(rng, 3, 80, per_day=3)
    ahead = card_entries(states[1]).copy()
    ahead["event_time"][0] = T0 + 5 * DAY
    states[1] = ahead.tobytes()
    card, event_time, amount, tx_id = batch(rng, 3, 60)
    assert_same(states, card, event_time, amount, tx_id)
    assert len(scalar_calls) == (card == 1).sum()


def test_long_gaps_expire_entries() -> None:
    """Batches 80 to 200 days after the states, and batches whose own new entries expire
    before the batch ends."""
    for seed, gap in enumerate((80, 89.5, 95, 200)):
        rng = np.random.default_rng(900 + seed)
        states = histories(rng, 10, 90)
        assert_same(states, *batch(rng, 10, 150, start=T0 + gap * DAY, span=15 * DAY))
        assert_same(states, *batch(rng, 10, 150, start=T0 + gap * DAY, span=400 * DAY))
    # Retention cuts through a state whose times go back: a late entry drops, the entry
    # that arrived before it stays.
    late = np.zeros(4, dtype=CARD_DTYPE)
    late["event_time"] = T0 + np.array([10, 5, 20, 30]) * DAY
    late["amount"] = [1.0, 2.0, 3.0, 4.0]
    late["tx_id"] = [1, 2, 3, 4]
    assert_same([late.tobytes(), late[[1, 0, 2, 3]].tobytes()], [0, 1, 0],
                T0 + np.array([95.5, 95.5, 96]) * DAY, [5.0, 6.0, 7.0], [5, 6, 7])
    rng = np.random.default_rng(950)
    states = histories(rng, 2, 90)
    assert_same(states, [0, 0, 0, 1, 1], T0 + np.array([0, 90, 180, 1, 91]) * DAY,
                [1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3, 4, 5])
    assert_same(states, [0, 0], T0 + np.array([0.0, 90 * DAY]), [1.0, 2.0], [1, 2])


def test_a_batch_of_one_event_and_an_empty_batch() -> None:
    rng = np.random.default_rng(1000)
    states = histories(rng, 3, 60)
    for k in range(3):
        assert_same(states, [k], [T0 + 60], [42.0], [-1])
    assert_same(states, [1], [T0 + 60], [42.0], [card_entries(states[1])["tx_id"][-3]])
    new_states, features = update_card_histories(states, np.zeros(0, np.int64), np.zeros(0),
                                                 np.zeros(0), np.zeros(0, np.int64))
    assert new_states == states and features.shape == (0, 8)


def test_zero_and_odd_amounts() -> None:
    """Zero sums and maxima (whose sign the scalar function's order sets) and a huge
    amount go through the scalar function, and still match."""
    rng = np.random.default_rng(1100)
    states = histories(rng, 5, 30)
    card, event_time, amount, tx_id = batch(rng, 5, 100)
    amount[::3] = 0.0
    amount[1::7] = -0.0
    amount[5] = 1e14  # cents beyond 2**53
    amount[6] = -250.0
    assert_same(states, card, event_time, amount, tx_id)
    assert_same([b""] * 2, [0, 0, 1, 1], [T0, T0 + 1, T0, T0], [-0.0, -0.0, 0.0, -0.0],
                [1, 2, 3, 4])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_values_go_to_the_scalar_function(scalar_calls: list[int]) -> None:
    """NaN times in a state (the scalar function's retention then stops), non-finite
    amounts in a state or in the batch: those cards go through the scalar function."""
    rng = np.random.default_rng(1150)
    states = histories(rng, 6, 120, late=0.1)
    odd = [card_entries(s).copy() for s in states]
    odd[0]["event_time"][3] = np.nan
    odd[1]["event_time"][-1] = np.nan
    odd[2]["amount"][5] = np.inf
    odd[3] = odd[3][:1]
    odd[3]["event_time"][0] = np.nan
    states = [e.tobytes() for e in odd]
    card, event_time, amount, tx_id = batch(rng, 6, 120, start=T0 + 50 * DAY, span=60 * DAY)
    card[:6] = np.arange(6)
    amount[card == 4] = np.nan
    assert_same(states, card, event_time, amount, tx_id)
    assert len(scalar_calls) == (card < 5).sum()


def test_split_batches_give_the_one_batch_result() -> None:
    rng = np.random.default_rng(1200)
    keys = rng.choice(10**9, 25, replace=False)
    past = dict(zip(keys.tolist(), histories(rng, 25, 80, late=0.05), strict=True))
    card, event_time, amount, tx_id = batch(rng, 25, 600, span=6 * DAY)
    again = rng.choice(599, 40) + 1  # some events delivered twice in a row
    for column in (card, event_time, amount, tx_id):
        column[again] = column[again - 1]
    key = keys[card]

    def run(table: dict[int, bytes], rows: slice) -> np.ndarray:
        distinct, index = np.unique(key[rows], return_inverse=True)
        states = [table.get(k, b"") for k in distinct.tolist()]
        new, features = update_card_histories(states, index, event_time[rows], amount[rows],
                                              tx_id[rows])
        table.update(zip(distinct.tolist(), new, strict=True))
        return features

    whole = dict(past)
    one = run(whole, slice(None))
    split = dict(past)
    cuts = [0, 1, 2, 150, 151, 400, 600]
    parts = np.concatenate([run(split, slice(a, b)) for a, b in itertools.pairwise(cuts)])
    assert np.array_equal(one.view(np.int64), parts.view(np.int64))
    assert split == whole


def test_random_worlds_of_every_kind() -> None:
    """Everything at once, small: late states, batches in and out of order, ties, gaps,
    repeats of the state and of the batch, unknown ids, zero amounts."""
    for seed in range(40):
        rng = np.random.default_rng(2000 + seed)
        cards = int(rng.integers(1, 8))
        states = histories(rng, cards, float(rng.uniform(0, 100)), per_day=3,
                           late=float(rng.choice([0.0, 0.1])))
        n = int(rng.integers(1, 80))
        card, event_time, amount, tx_id = batch(rng, cards, n,
                                                start=T0 + float(rng.uniform(-2, 95)) * DAY,
                                                span=float(rng.choice([600, DAY, 30 * DAY])))
        if rng.random() < 0.3:
            event_time = (event_time // 3600) * 3600  # ties
        if rng.random() < 0.2:
            event_time[rng.random(n) < 0.1] -= 2 * DAY  # out of order
        amount[rng.random(n) < 0.05] = 0.0
        tx_id[rng.random(n) < 0.1] = -1
        again = np.flatnonzero(rng.random(n) < 0.15)
        again = again[again > 0]
        for column in (card, event_time, amount, tx_id):
            column[again] = column[again - 1]  # delivered twice
        for j in np.flatnonzero(rng.random(n) < 0.1):
            entries = card_entries(states[card[j]])
            if len(entries):  # a redelivery of a state entry
                e = entries[int(rng.integers(0, len(entries)))]
                event_time[j], amount[j], tx_id[j] = e["event_time"], e["amount"], e["tx_id"]
        try:
            sequential(states, card, event_time, amount, tx_id)
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                update_card_histories(states, card, event_time, amount, tx_id)
            continue
        assert_same(states, card, event_time, amount, tx_id)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        update_card_histories([b"\x00" * 25], [0], [T0], [1.0], [1])
    with pytest.raises(ValueError):
        update_card_histories([b""], [0, 0], [T0], [1.0], [1])
    with pytest.raises(IndexError):
        update_card_histories([b""], [1], [T0], [1.0], [1])


def benchmark_world(seed: int = 0, events: int = 4096, pool: int = 6000, late: float = 0.0):
    """The handbook's shape: ~2 transactions a card a day, 90 days kept (~100-250 entries
    a state), a batch of ``events`` in time order over ~3000 distinct cards; a share
    ``late`` of the states' entries arrived up to a day late (out of time order)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, pool, events)
    distinct, card = np.unique(drawn, return_inverse=True)
    states = []
    tx = itertools.count(1)
    for _ in range(len(distinct)):
        m = int(rng.integers(100, 251))
        entries = np.empty(m, dtype=CARD_DTYPE)
        entries["event_time"] = np.sort(T0 - rng.uniform(0, 90 * DAY - 3600, m)).round()
        delayed = np.flatnonzero(rng.random(m) < late)
        entries["event_time"][delayed] -= rng.uniform(0, DAY, len(delayed)).round()
        entries["amount"] = rng.uniform(1, 300, m).round(2)
        entries["tx_id"] = [next(tx) for _ in range(m)]
        states.append(entries.tobytes())
    event_time = np.sort(T0 + rng.uniform(0, 600, events)).round()
    amount = rng.uniform(1, 300, events).round(2)
    tx_id = np.arange(10**9, 10**9 + events)
    return states, card, event_time, amount, tx_id


def benchmark(repeats: int = 20) -> None:
    """Print µs an event of the scalar loop and of the batch function (best of runs), for
    states in time order and for states with 2% late entries."""
    for late in (0.0, 0.02):
        world = benchmark_world(late=late)
        n = len(world[1])
        print(f"{n} events, {len(world[0])} cards, "
              f"{sum(map(len, world[0])) // CARD_DTYPE.itemsize} state entries, "
              f"{late:.0%} late entries")
        best = min(_timed(sequential, world) for _ in range(3))
        print(f"  scalar loop: {best / n * 1e6:6.2f} µs/event")
        best = min(_timed(update_card_histories, world) for _ in range(repeats))
        print(f"  batch:       {best / n * 1e6:6.2f} µs/event")
        assert_same(*world)


def _timed(function, world) -> float:
    start = time.perf_counter()
    function(*world)
    return time.perf_counter() - start


if __name__ == "__main__":
    benchmark()

"""The fast path on Feast's Redis layout equals Feast's own pushes and reads, both ways."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis

from streams.clients.feast_client import CARD_VIEW, TERMINAL_VIEW, OnlineFeatures, open_store
from streams.clients.feast_fast import LABEL_FIELDS, FastOnlineFeatures
from streams.clients.redis_conn import connect, is_cluster

# Ids no other test uses: Feast's online state is shared by the whole session.
BASE = 700_000_000
LARGE = 2**62
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module", params=["server", "cluster"])
def redis_url(request: pytest.FixtureRequest, live_stack: Any) -> str:
    """Every test on the session's Redis server and on a Redis Cluster of three primaries."""
    if request.param == "server":
        return str(live_stack.endpoints.redis)
    return str(request.getfixturevalue("redis_cluster_url"))


@pytest.fixture(scope="module")
def store(redis_url: str) -> Any:
    return open_store(redis_url)


@pytest.fixture(scope="module")
def sdk(store: Any) -> OnlineFeatures:
    return OnlineFeatures(store)


@pytest.fixture(scope="module")
def fast(store: Any) -> Iterator[FastOnlineFeatures]:
    features = FastOnlineFeatures(store)
    yield features
    features.close()


def int_columns(fast: FastOnlineFeatures, view: str) -> list[int]:
    kinds = fast.layouts[view].kinds
    return [j for j, name in enumerate(fast.views[view]) if kinds[name] == "INT64"]


def random_values(rng: np.random.Generator, fast: FastOnlineFeatures, view: str,
                  n: int) -> np.ndarray:
    """Floats with NaN, infinities and signed zeros; Int64 fields get fractional and
    negative numbers (both paths truncate them) and numbers up to 2**52."""
    values = rng.normal(0, 1e3, (n, len(fast.views[view])))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[0, :] = np.resize([np.inf, -np.inf, -0.0, 0.0, 1e-300, -1e300], values.shape[1])
    for j in int_columns(fast, view):
        column = rng.integers(-2**52, 2**52, n).astype(np.float64)
        small = rng.random(n) < 0.5
        column[small] = rng.uniform(-3, 200, small.sum())
        values[:, j] = column
    return values


def random_arrays(rng: np.random.Generator, n: int) -> list[tuple[list[float], list[float],
                                                                   list[int]]]:
    """Label arrays of 0 to 60 elements; some frauds need multi-byte or negative varints."""
    arrays = []
    for i in range(n):
        size = 0 if i % 5 == 0 else int(rng.integers(1, 60))
        times = (1.6e9 + rng.uniform(0, 86_400, size).cumsum()).tolist()
        known = [t + 604_800 + rng.uniform(0, 1) for t in times]
        if size and i % 7 == 1:
            known[0] = float("nan")
        frauds = rng.integers(0, 2, size).tolist()
        if size and i % 3 == 1:
            frauds[-1] = [-1, 128, LARGE, -LARGE][i % 4]
        arrays.append((times, known, frauds))
    return arrays


def random_times(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(1.5e9, 1.8e9, n)


def expected_rows(fast: FastOnlineFeatures, view: str, values: np.ndarray) -> np.ndarray:
    """What a read returns for pushed ``values``: Int64 fields truncated, NaN as 0."""
    expected = values.copy()
    for j in int_columns(fast, view):
        expected[:, j] = np.trunc(expected[:, j])
    return np.nan_to_num(expected, nan=0.0, posinf=np.inf, neginf=-np.inf)


def assert_labels_equal(left: Mapping[int, tuple[np.ndarray, ...]],
                        right: Mapping[int, tuple[np.ndarray, ...]]) -> None:
    assert left.keys() == right.keys()
    for key, arrays in left.items():
        for a, b in zip(arrays, right[key], strict=True):
            assert a.dtype == b.dtype, key
            np.testing.assert_array_equal(a, b, err_msg=str(key))


def feast_rows(store: Any, view: str, key: str, names: list[str],
               ids: np.ndarray) -> dict[str, list[Any]]:
    """Feast's own ``get_online_features``, as Python values, one list a feature."""
    response = store.get_online_features(
        features=[f"{view}:{name}" for name in names],
        entity_rows=[{key: int(i)} for i in ids],
    ).to_dict()
    return {name: response[name] for name in names}


def hashes(client: redis.Redis, fast: FastOnlineFeatures, view: str,
           ids: np.ndarray) -> list[Any]:
    return [client.hgetall(key) for key in fast.layouts[view].keys(ids)]


@pytest.mark.integration
def test_fast_card_pushes_read_back_through_feast(store: Any, sdk: OnlineFeatures,
                                                  fast: FastOnlineFeatures) -> None:
    rng = np.random.default_rng(1)
    ids = np.r_[BASE + rng.choice(10_000, 298, replace=False), LARGE + BASE, INT64_MAX]
    values = random_values(rng, fast, CARD_VIEW, len(ids))
    fast.push_card_activity(ids, random_times(rng, len(ids)), values)

    lookup = np.concatenate([ids, ids[:5], [BASE + 20_000, BASE + 20_001]])
    expected = np.vstack([expected_rows(fast, CARD_VIEW, values), expected_rows(
        fast, CARD_VIEW, values[:5]), np.zeros((2, values.shape[1]))])
    np.testing.assert_array_equal(sdk.read(CARD_VIEW, "card_id", lookup), expected)
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", lookup), expected)

    names = fast.views[CARD_VIEW]
    direct = feast_rows(store, CARD_VIEW, "card_id", names, lookup)
    for j, name in enumerate(names):
        if j in int_columns(fast, CARD_VIEW):
            assert all(type(v) is int for v in direct[name][:len(ids)])
            assert direct[name][:len(ids)] == [int(v) for v in np.trunc(values[:, j])]
        else:
            want = [None if np.isnan(v) else v for v in values[:, j].tolist()]
            assert direct[name][:len(ids)] == want
        assert direct[name][-2:] == [None, None]


@pytest.mark.integration
def test_feast_card_pushes_read_back_through_fast_path(sdk: OnlineFeatures,
                                                       fast: FastOnlineFeatures) -> None:
    rng = np.random.default_rng(2)
    ids = BASE + 100_000 + rng.choice(10_000, 300, replace=False)
    values = random_values(rng, fast, CARD_VIEW, len(ids))
    sdk.push_card_activity(ids, random_times(rng, len(ids)), values)

    lookup = np.concatenate([[BASE + 120_000], ids[::-1], ids[:3]])
    expected = np.vstack([np.zeros((1, values.shape[1])),
                          expected_rows(fast, CARD_VIEW, values[::-1]),
                          expected_rows(fast, CARD_VIEW, values[:3])])
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", lookup), expected)
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", lookup),
                                  sdk.read(CARD_VIEW, "card_id", lookup))


@pytest.mark.integration
def test_terminal_pushes_read_back_the_same_both_ways(store: Any, sdk: OnlineFeatures,
                                                      fast: FastOnlineFeatures) -> None:
    rng = np.random.default_rng(3)
    n = 120
    by_fast = BASE + 200_000 + np.arange(n) * 7919
    by_sdk = BASE + 300_000 + np.arange(n) * 7919
    values = random_values(rng, fast, TERMINAL_VIEW, n)
    arrays = random_arrays(rng, n)
    times = random_times(rng, n)
    fast.push_terminal_risk(by_fast, times, values, arrays)
    sdk.push_terminal_risk(by_sdk, times, values, arrays)

    missing = np.array([BASE + 400_000, BASE + 400_001])
    for ids in (by_fast, by_sdk):
        lookup = np.concatenate([ids, missing])
        expected = {int(i): (np.asarray(a[0], np.float64), np.asarray(a[1], np.float64),
                             np.asarray(a[2], np.int64))
                    for i, a in zip(ids.tolist(), arrays, strict=True)}
        expected |= {int(i): (np.empty(0), np.empty(0), np.empty(0, np.int64))
                     for i in missing}
        assert_labels_equal(fast.read_terminal_labels(lookup), expected)
        assert_labels_equal(sdk.read_terminal_labels(lookup), expected)
        rows = expected_rows(fast, TERMINAL_VIEW, values)
        np.testing.assert_array_equal(fast.read(TERMINAL_VIEW, "terminal_id", lookup),
                                      np.vstack([rows, np.zeros((2, rows.shape[1]))]))
        np.testing.assert_array_equal(sdk.read(TERMINAL_VIEW, "terminal_id", lookup),
                                      fast.read(TERMINAL_VIEW, "terminal_id", lookup))

        direct = feast_rows(store, TERMINAL_VIEW, "terminal_id", list(LABEL_FIELDS), lookup)
        for j, name in enumerate(LABEL_FIELDS):
            got = direct[name]
            assert got[-2:] == [None, None]
            for value, a in zip(got[:n], arrays, strict=True):
                np.testing.assert_array_equal(np.asarray(value), np.asarray(a[j]))
        assert all(type(v) is int for value in direct["label_frauds"][:n] for v in value)


@pytest.mark.integration
def test_fast_writes_feasts_bytes(redis_url: str, sdk: OnlineFeatures,
                                  fast: FastOnlineFeatures) -> None:
    """The strongest check: the same rows leave the same hash fields and values."""
    rng = np.random.default_rng(4)
    client = connect(redis_url)
    n = 80
    for view, offset in ((CARD_VIEW, 500_000), (TERMINAL_VIEW, 600_000)):
        by_fast = np.r_[BASE + offset + np.arange(n - 2), INT64_MAX - 1, LARGE + BASE + 1]
        by_sdk = np.r_[BASE + offset + 50_000 + np.arange(n - 2), INT64_MAX - 2,
                       LARGE + BASE + 2]
        # Fractional times exercise the rounding to microseconds of Feast's push.
        times = random_times(rng, n)
        times[:3] = [1.5e9, 1.5e9 + 0.25, 1_600_000_000.123456789]
        values = random_values(rng, fast, view, n)
        if view == CARD_VIEW:
            fast.push_card_activity(by_fast, times, values)
            sdk.push_card_activity(by_sdk, times, values)
        else:
            arrays = random_arrays(rng, n)
            fast.push_terminal_risk(by_fast, times, values, arrays)
            sdk.push_terminal_risk(by_sdk, times, values, arrays)
        written = hashes(client, fast, view, by_fast)
        assert written == hashes(client, fast, view, by_sdk)
        assert all(f"_ts:{view}".encode() in h for h in written)
    client.close()


def paths_with(redis_url: str, skip_dedup: bool) -> tuple[OnlineFeatures, FastOnlineFeatures]:
    """Both paths on stores whose ``skip_dedup`` is set, whatever the repository says."""
    stores = [open_store(redis_url) for _ in range(2)]
    for each in stores:
        each.config.online_store.skip_dedup = skip_dedup
    return OnlineFeatures(stores[0]), FastOnlineFeatures(stores[1])


@pytest.mark.integration
def test_pushes_skip_rows_no_later_than_stored_as_feast_does(redis_url: str) -> None:
    """Feast's default: a row is written only if later than the key's stored event time."""
    rng = np.random.default_rng(5)
    sdk, fast = paths_with(redis_url, skip_dedup=False)
    client = connect(redis_url)
    n = 6
    by_fast = BASE + 700_000 + np.arange(n)
    by_sdk = BASE + 750_000 + np.arange(n)
    first = random_values(rng, fast, CARD_VIEW, n)
    fast.push_card_activity(by_fast, np.full(n, 1.7e9), first)
    sdk.push_card_activity(by_sdk, np.full(n, 1.7e9), first)
    # Earlier, equal, later, and within one batch the same card twice out of order.
    times = np.array([1.7e9 - 1, 1.7e9, 1.7e9 + 2e-5, 1.7e9 + 5, 1.7e9 + 9, 1.7e9 + 3])
    second = random_values(rng, fast, CARD_VIEW, n)
    fast.push_card_activity(np.r_[by_fast[:5], by_fast[4]], times, second)
    sdk.push_card_activity(np.r_[by_sdk[:5], by_sdk[4]], times, second)

    assert hashes(client, fast, CARD_VIEW, by_fast) == hashes(client, fast, CARD_VIEW, by_sdk)
    want = expected_rows(fast, CARD_VIEW, np.vstack([first[:2], second[2:5], first[5:]]))
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", by_fast), want)
    fast.close()
    client.close()


@pytest.mark.integration
def test_skip_dedup_overwrites_like_feast(redis_url: str) -> None:
    """With ``skip_dedup`` Feast writes every row, older or not; so does the fast path."""
    rng = np.random.default_rng(6)
    sdk, fast = paths_with(redis_url, skip_dedup=True)
    client = connect(redis_url)
    by_fast, by_sdk = BASE + 800_000 + np.arange(4), BASE + 810_000 + np.arange(4)
    for times in (np.full(4, 1.7e9), np.full(4, 1.6e9)):
        values = random_values(rng, fast, CARD_VIEW, 4)
        fast.push_card_activity(by_fast, times, values)
        sdk.push_card_activity(by_sdk, times, values)
    assert hashes(client, fast, CARD_VIEW, by_fast) == hashes(client, fast, CARD_VIEW, by_sdk)
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", by_fast),
                                  expected_rows(fast, CARD_VIEW, values))
    fast.close()
    client.close()


@pytest.mark.integration
def test_pushes_survive_a_flushed_script_cache(redis_url: str) -> None:
    _, fast = paths_with(redis_url, skip_dedup=False)
    ids = BASE + 900_000 + np.arange(3)
    values = np.arange(3 * len(fast.views[CARD_VIEW]), dtype=np.float64).reshape(3, -1)
    fast.redis.script_flush()
    fast.push_card_activity(ids, np.full(3, 1.7e9), values)
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", ids), values)
    fast.close()


@pytest.mark.integration
def test_scoring_round_trip_pushes_cards_and_reads_labels_and_commands(
        redis_url: str, store: Any, sdk: OnlineFeatures) -> None:
    """The scoring batch's single round trip: after a flushed script cache too, the card
    push reads back through Feast, the label arrays equal Feast's, and the caller's own
    commands on the same Redis get their replies."""
    fast = FastOnlineFeatures(store)
    client = connect(redis_url)
    # One round trip for the store's and the caller's commands on one server; in a
    # cluster each client routes its own commands.
    assert fast.serves(client) is not is_cluster(redis_url)
    assert not fast.serves(redis.Redis(host="127.0.0.1", port=1, db=0))
    rng = np.random.default_rng(7)
    terminals = BASE + 960_000 + np.arange(6) * 13
    arrays = random_arrays(rng, len(terminals))
    fast.push_terminal_risk(terminals, random_times(rng, len(terminals)),
                            random_values(rng, fast, TERMINAL_VIEW, len(terminals)), arrays)
    client.hset("test:scoring-round-trip", mapping={"a": "1", "b": "2"})
    fast.redis.script_flush()
    cards = BASE + 970_000 + np.arange(5)
    values = random_values(rng, fast, CARD_VIEW, len(cards))
    lookup = np.concatenate([terminals[::-1], terminals[:2], [BASE + 980_000]])
    commands = [(b"HMGET", "test:scoring-round-trip", "b", "c"),
                (b"HGETALL", "test:scoring-round-trip")] if fast.serves(client) else []
    replies, labels = fast.scoring_round_trip(
        commands, cards, random_times(rng, len(cards)), values, lookup)
    if commands:
        assert replies[0] == [b"2", None]
        assert dict(zip(replies[1][::2], replies[1][1::2], strict=True)) == {b"a": b"1",
                                                                            b"b": b"2"}
    assert_labels_equal(labels, sdk.read_terminal_labels(lookup))
    assert len(labels) == len(terminals) + 1
    np.testing.assert_array_equal(sdk.read(CARD_VIEW, "card_id", cards),
                                  expected_rows(fast, CARD_VIEW, values))
    client.delete("test:scoring-round-trip")
    client.close()
    fast.close()


@pytest.mark.integration
def test_scoring_reads_label_arrays_again_only_when_a_push_changed_them(
        redis_url: str, store: Any, sdk: OnlineFeatures) -> None:
    """The scorer's label cache: every push (fast path or Feast's SDK) is seen by the next
    read, a lost token hash (a flushed Redis) loses no push, and arrays whose token did not
    change are not read again (a write behind the tokens' back stays unseen)."""
    fast = FastOnlineFeatures(store)
    client = connect(redis_url)
    rng = np.random.default_rng(11)
    terminals = BASE + 990_000 + np.arange(8) * 17
    cards = np.array([BASE + 995_000])
    card_values = random_values(rng, fast, CARD_VIEW, 1)

    def push(writer: Any, ids: np.ndarray) -> None:
        writer.push_terminal_risk(ids, 1.7e9 + rng.uniform(0, 1e6, len(ids)),
                                  random_values(rng, fast, TERMINAL_VIEW, len(ids)),
                                  random_arrays(rng, len(ids)))

    def scored() -> dict[int, tuple[np.ndarray, ...]]:
        _, labels = fast.scoring_round_trip([], cards, np.array([1.7e9]), card_values,
                                            np.concatenate([terminals, terminals[:3]]))
        return labels

    push(fast, terminals)
    assert_labels_equal(scored(), sdk.read_terminal_labels(terminals))
    push(fast, terminals[:2])
    push(sdk, terminals[5:7])
    assert_labels_equal(scored(), sdk.read_terminal_labels(terminals))
    client.delete(fast.label_versions)
    push(fast, terminals[3:4])
    assert_labels_equal(scored(), sdk.read_terminal_labels(terminals))

    before = scored()
    layout = fast.layouts[TERMINAL_VIEW]
    field = layout.fields["label_frauds"]
    key = layout.keys(terminals[3:4])[0]
    client.hset(key, field, client.hget(layout.keys(terminals[4:5])[0], field) or b"")
    if fast.cache_labels:
        assert_labels_equal(scored(), before)
    else:  # a Redis Cluster: no cache, every batch reads the arrays
        assert_labels_equal(scored(), sdk.read_terminal_labels(terminals))
    client.close()
    fast.close()


@pytest.mark.integration
def test_reads_survive_a_killed_connection(redis_url: str, fast: FastOnlineFeatures) -> None:
    ids = BASE + 950_000 + np.arange(3)
    before = fast.read(CARD_VIEW, "card_id", ids)
    client = connect(redis_url)
    if fast.cluster:
        # Every other client's connections on every primary, the fast path's among them.
        killed = sum(node.redis_connection.client_kill_filter(_type="normal", skipme=True)
                     for node in client.get_primaries())
        assert killed >= 1
    else:
        client.client_kill_filter(_id=str(fast.redis.client_id()))
    np.testing.assert_array_equal(fast.read(CARD_VIEW, "card_id", ids), before)
    client.close()


@pytest.mark.integration
def test_swaps_in_for_online_features(sdk: OnlineFeatures, fast: FastOnlineFeatures) -> None:
    assert fast.order == sdk.order
    assert fast.views == sdk.views
    with pytest.raises(ValueError, match="keyed by 'card_id'"):
        fast.read(CARD_VIEW, "terminal_id", np.array([1]))
    empty = np.empty(0, dtype=np.int64)
    assert fast.read(CARD_VIEW, "card_id", empty).shape == (0, len(fast.views[CARD_VIEW]))
    assert fast.read_terminal_labels(empty) == {}
    fast.push_card_activity(empty, np.empty(0), np.empty((0, len(fast.views[CARD_VIEW]))))


def fake_store(**config: Any) -> Any:
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig

    settings = {"online_store": RedisOnlineStoreConfig(), "entity_key_serialization_version": 3,
                "registry": SimpleNamespace(enable_online_feature_view_versioning=False)}
    return SimpleNamespace(config=SimpleNamespace(**(settings | config)))


@pytest.mark.parametrize(("config", "message"), [
    ({"entity_key_serialization_version": 2}, "entity_key_serialization_version 3; "
                                              "feature_store.yaml sets 2"),
    ({"online_store": "sqlite"}, "online store is 'sqlite'"),
    ({"registry": SimpleNamespace(enable_online_feature_view_versioning=True)},
     "versioned online feature view names"),
])
def test_refuses_stores_it_cannot_serve(config: dict[str, Any], message: str) -> None:
    if config.get("online_store") == "sqlite":
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        config = {"online_store": SqliteOnlineStoreConfig()}
    with pytest.raises(ValueError, match=message):
        FastOnlineFeatures(fake_store(**config))


def test_refuses_redis_sentinel() -> None:
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    store = fake_store(online_store=RedisOnlineStoreConfig(redis_type=RedisType.redis_sentinel))
    with pytest.raises(ValueError, match="'redis' and 'redis_cluster', not 'redis_sentinel'"):
        FastOnlineFeatures(store)

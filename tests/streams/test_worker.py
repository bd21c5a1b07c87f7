"""The worker against real Kafka, Redis (Feast) and Triton: every event scored once, or
dead-lettered with its reason, and the scores equal in-process ONNX Runtime."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest

from streams.clients.feast_client import TERMINAL_VIEW, OnlineFeatures, open_store
from streams.clients.kafka_io import Received, consume, produce, topic_end_offsets
from streams.dataplane.deadletter import read_headers
from streams.dataplane.features import (
    DAY,
    terminal_window_features,
    transaction_flags,
    update_card_history,
)
from streams.records import Score, Transaction
from streams.schemas import load as load_schema
from streams.topics import SCORES, TRANSACTIONS_DLQ
from tests.streams.sink_checks import assert_scored_once, read_to_end

pytestmark = pytest.mark.integration


def make_transactions(n: int, seed: int) -> list[Transaction]:
    """``n`` valid transactions over a few days, with ids unique to this seed."""
    rng = random.Random(seed)
    base_id = seed * 10**7
    cards = [base_id + c for c in range(max(3, n // 20))]
    terminals = [base_id + t for t in range(max(2, n // 50))]
    start = 1_530_000_000.0
    times = sorted(start + rng.uniform(0, 5 * 86400) for _ in range(n))
    return [
        Transaction(base_id + i, round(t), rng.choice(cards), rng.choice(terminals),
                    round(rng.uniform(1, 300), 2))
        for i, t in enumerate(times)
    ]


def label_terminals(online: OnlineFeatures, txs: list[Transaction], count: int, labels_each: int,
                    seed: int) -> dict[int, tuple[list[float], list[float], list[int]]]:
    """Terminal features come from the label state in Feast: give ``count`` terminals of
    ``txs`` random labels (and their window values 1), pushed online; returns the labels."""
    terminals = sorted({tx.terminal_id for tx in txs})[:count]
    rng = np.random.default_rng(seed)
    labels = {}
    for terminal in terminals:
        times = np.sort(rng.uniform(txs[0].event_time - 40 * DAY, txs[-1].event_time,
                                    labels_each))
        labels[terminal] = (times.tolist(), (times + 7 * DAY).tolist(),
                            rng.integers(0, 2, labels_each).tolist())
    values = np.ones((len(terminals), len(online.views[TERMINAL_VIEW])))
    online.push_terminal_risk(np.array(terminals), np.full(len(terminals), 1.5e9), values,
                              [labels[t] for t in terminals])
    assert np.allclose(online.read(TERMINAL_VIEW, "terminal_id", np.array(terminals)), values)
    return labels


def expected_features(txs: list[Transaction],
                      terminal_labels: dict[int, tuple[list[float], list[float], list[int]]]
                      ) -> dict[int, np.ndarray]:
    """The feature vector each transaction should be scored on, computed independently."""
    histories: dict[int, list[list[float]]] = {}
    vectors = {}
    for tx in txs:
        history, card = update_card_history(histories.get(tx.card_id, []), tx.event_time,
                                            tx.amount)
        histories[tx.card_id] = history
        weekend, night = transaction_flags(tx.event_time)
        arrays = terminal_labels.get(tx.terminal_id, ([], [], []))
        terminal = terminal_window_features(*(np.asarray(a) for a in arrays), tx.event_time)
        vectors[tx.tx_id] = np.array([tx.amount, weekend, night, *card, *terminal])
    return vectors


def wait_for_scores(live_stack, start: dict[int, int], wanted: set[int]) -> None:  # noqa: ANN001
    """Wait until every one of ``wanted`` has a score (a count needs :func:`read_scores`)."""
    seen: set[int] = set()
    checked = 0

    def done(received: list[Received]) -> bool:
        nonlocal checked
        seen.update(json.loads(m.value)["tx_id"] for m in received[checked:])
        checked = len(received)
        return seen >= wanted

    consume(live_stack.endpoints.kafka, live_stack.settings, SCORES, until=done,
            start=start, timeout_s=120)
    assert seen >= wanted, f"{len(wanted - seen)} transactions not scored in 120 s"


def read_scores(live_stack, start: dict[int, int], wanted: set[int]) -> list[Score]:  # noqa: ANN001
    """The scores from ``start`` to the topic's end, once the worker stopped: one for each
    of ``wanted`` and nothing else."""
    received = read_to_end(live_stack.endpoints.kafka, live_stack.settings, SCORES, start)
    # Every record a consumer reads follows the published contract.
    contract = jsonschema.Draft202012Validator(load_schema("score"))
    for message in received:
        contract.validate(json.loads(message.value))
    assert_scored_once(received, wanted)
    return [Score.parse(m.value) for m in received]


def test_every_valid_event_is_scored_once_and_equals_onnx_runtime(
    live_stack, worker_factory: Callable[..., object]  # noqa: ANN001
) -> None:
    txs = make_transactions(1500, seed=11)
    online = OnlineFeatures(open_store(live_stack.endpoints.redis))
    labels = label_terminals(online, txs, count=10, labels_each=60, seed=5)

    # This worker serves metrics where the stack's Prometheus scrapes them.
    worker = worker_factory(metrics_port=live_stack.settings.worker_metrics_port)
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, SCORES)
    produce(live_stack.endpoints.kafka, live_stack.settings,
            ((str(tx.card_id).encode(), tx.to_json()) for tx in txs))
    wanted = {tx.tx_id for tx in txs}
    wait_for_scores(live_stack, start, wanted)
    assert worker.alive()
    scraped = prometheus_value(live_stack, "factory_events_scored_total", len(txs))
    samples = worker.metrics()
    worker.stop()  # everything it wrote is on the topic now
    scores = read_scores(live_stack, start, wanted)
    assert {s.model_version for s in scores} == {1}

    vectors = expected_features(txs, labels)
    session = ort.InferenceSession(
        str(live_stack.triton_repo / "fraud_detector" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    ids = [s.tx_id for s in scores]
    X = np.stack([vectors[i] for i in ids]).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: X})[0].reshape(-1)
    got = np.array([s.score for s in scores])
    assert np.abs(got - expected).max() <= 1e-5
    # The decisions follow the default policy.
    for s in scores:
        assert s.decision == ("block" if s.score >= 0.9 else
                              "review" if s.score >= 0.5 else "approve")
    # The card features the stream pushed to Feast are each card's last values.
    last = {}
    for tx in txs:
        last[tx.card_id] = vectors[tx.tx_id][3:3 + len(online.views["card_activity"])]
    cards = np.array(sorted(last))
    assert np.allclose(online.read("card_activity", "card_id", cards),
                       np.stack([last[c] for c in cards]))
    assert scraped >= len(txs)
    made = {d: samples.get(f'factory_decisions_total{{decision="{d}"}}', 0.0)
            for d in ("approve", "review", "block")}
    assert sum(made.values()) == len(txs)
    assert made["review"] == sum(s.decision == "review" for s in scores)
    lag = {k: v for k, v in samples.items() if k.startswith("factory_consumer_lag{")}
    assert lag and all('topic="transactions"' in k for k in lag)
    assert all(v == 0 for v in lag.values()), "nothing left behind once all are scored"


def prometheus_value(live_stack, query: str, at_least: float,  # noqa: ANN001
                     timeout_s: float = 30.0) -> float:
    """The value Prometheus has scraped for ``query``, waiting for the next scrape."""
    import time
    import urllib.parse
    import urllib.request

    url = f"{live_stack.endpoints.prometheus}/api/v1/query?query={urllib.parse.quote(query)}"
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
        value = sum(float(r["value"][1]) for r in result)
        if value >= at_least:
            break
        time.sleep(1)
    return value


BAD_EVENTS: list[tuple[bytes, str]] = [
    (b"this is not json", "not_json"),
    (b'{"v": 1, "tx_id": 5, "event_time": 1530000000, "card_id": 1}', "missing_field"),
    (b'{"v": 1, "tx_id": "5", "event_time": 1530000000, "card_id": 1, "terminal_id": 2,'
     b' "amount": 3.0}', "wrong_type"),
    (b'{"v": 1, "tx_id": 6, "event_time": 1530000000, "card_id": 1, "terminal_id": 2,'
     b' "amount": -3.0}', "invalid_value"),
    (b'{"v": 1, "tx_id": 7, "event_time": 1530000000, "card_id": 1, "terminal_id": 2,'
     b' "amount": NaN}', "invalid_value"),
    (b'{"v": 9, "tx_id": 8, "event_time": 1530000000, "card_id": 1, "terminal_id": 2,'
     b' "amount": 3.0}', "unknown_schema_version"),
    (b'{"v": 1, "tx_id": 9, "pad": "' + b"x" * (1024 * 1024) + b'"}', "payload_too_large"),
    (b'{"v": 1, "tx_id": 99999999999999999999, "event_time": 1530000000, "card_id": 1,'
     b' "terminal_id": 2, "amount": 3.0}', "invalid_value"),
    # Valid, but produced under the test's marker key rather than its card id.
    (b'{"v": 1, "tx_id": 10, "event_time": 1530000000, "card_id": 1, "terminal_id": 2,'
     b' "amount": 3.0}', "key_mismatch"),
]


def test_bad_events_go_to_the_dead_letter_topic_and_the_worker_keeps_going(
    live_stack, worker_factory: Callable[..., object]  # noqa: ANN001
) -> None:
    txs = make_transactions(600, seed=12)
    worker = worker_factory()
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    scores_start = topic_end_offsets(kafka, settings, SCORES)
    dlq_start = topic_end_offsets(kafka, settings, TRANSACTIONS_DLQ)
    messages: list[tuple[bytes, bytes]] = [(str(tx.card_id).encode(), tx.to_json()) for tx in txs]
    marker = f"bad-{random.random()}".encode()
    for i, (raw, _) in enumerate(BAD_EVENTS * 3):
        messages.insert(37 * (i + 1), (marker, raw))
    produce(kafka, settings, messages)

    wanted = {tx.tx_id for tx in txs}
    wait_for_scores(live_stack, scores_start, wanted)
    expected_bad = 3 * len(BAD_EVENTS)
    consume(kafka, settings, TRANSACTIONS_DLQ, start=dlq_start, timeout_s=60,
            until=lambda r: sum(m.key == marker for m in r) >= expected_bad)
    assert worker.alive()
    samples = worker.metrics()
    worker.stop()  # everything it wrote is on the topics now
    read_scores(live_stack, scores_start, wanted)

    letters = read_to_end(kafka, settings, TRANSACTIONS_DLQ, dlq_start)
    assert len(letters) == expected_bad and all(m.key == marker for m in letters), (
        f"{len(letters)} dead letters, {sum(m.key == marker for m in letters)} of them "
        f"the {expected_bad} bad events")
    by_bytes = {raw: kind for raw, kind in BAD_EVENTS}
    for letter in letters:
        assert letter.value in by_bytes, "the original bytes are kept untouched"
        headers = read_headers(letter.headers)
        assert headers["reason"] == by_bytes[letter.value]
        assert headers["topic"] == "transactions"
        assert headers["stage"] == "validate"
        assert headers["exception.class.name"] == "ValidationError"
        assert headers["exception.message"]
        assert int(headers["offset"]) >= 0 and int(headers["partition"]) >= 0
    assert samples["factory_events_scored_total"] == len(txs)
    assert sum(v for k, v in samples.items()
               if k.startswith("factory_events_dead_lettered_total")) == expected_bad


def test_an_event_whose_card_features_cannot_be_computed_is_dead_lettered_and_its_batch_scored(
    live_stack, worker_factory: Callable[..., object]  # noqa: ANN001
) -> None:
    """A transaction id sent again three days later on the same card finds its first
    entry outside every window of the new time: its card features divide by zero. It
    goes to the dead-letter topic at the features stage, with the exception; every other
    transaction, those of its batch included, is scored once."""
    txs = make_transactions(400, seed=14)
    first = txs[100]
    again = Transaction(first.tx_id, first.event_time + 3 * DAY, first.card_id,
                        first.terminal_id, first.amount)
    messages = [(str(tx.card_id).encode(), tx.to_json()) for tx in txs]
    messages.insert(250, (str(again.card_id).encode(), again.to_json()))
    worker = worker_factory()
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    scores_start = topic_end_offsets(kafka, settings, SCORES)
    dlq_start = topic_end_offsets(kafka, settings, TRANSACTIONS_DLQ)
    produce(kafka, settings, messages)

    wanted = {tx.tx_id for tx in txs}
    wait_for_scores(live_stack, scores_start, wanted)
    consume(kafka, settings, TRANSACTIONS_DLQ, start=dlq_start, timeout_s=60,
            until=lambda r: len(r) >= 1)
    assert worker.alive()
    samples = worker.metrics()
    worker.stop()  # everything it wrote is on the topics now
    scores = read_scores(live_stack, scores_start, wanted)
    assert {s.tx_id: s.event_time for s in scores}[first.tx_id] == first.event_time

    letters = read_to_end(kafka, settings, TRANSACTIONS_DLQ, dlq_start)
    assert [(m.key, m.value) for m in letters] == [(str(again.card_id).encode(),
                                                    again.to_json())]
    headers = read_headers(letters[0].headers)
    assert headers["stage"] == "features"
    assert headers["topic"] == "transactions"
    assert headers["exception.class.name"] == "ZeroDivisionError"
    assert headers["exception.message"] == "float division by zero"
    assert "reason" not in headers, "a failure of the features has no validation reason"
    assert samples['factory_events_dead_lettered_total{reason="ZeroDivisionError"}'] == 1
    assert samples["factory_events_scored_total"] == len(txs)

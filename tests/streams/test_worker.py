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

from streams.clients import Received, consume, produce, topic_end_offsets
from streams.deadletter import read_headers
from streams.feast_client import TERMINAL_VIEW, OnlineFeatures, open_store
from streams.features import (
    DAY,
    terminal_window_features,
    transaction_flags,
    update_card_history,
)
from streams.records import Score, Transaction
from streams.schemas import load as load_schema
from streams.topics import SCORES, TRANSACTIONS_DLQ

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


def read_scores(live_stack, start: dict[int, int], wanted: set[int]) -> list[Score]:  # noqa: ANN001
    def done(received: list[Received]) -> bool:
        return {json.loads(m.value)["tx_id"] for m in received} >= wanted

    received = consume(live_stack.endpoints.kafka, live_stack.settings, SCORES, until=done,
                       start=start, timeout_s=120)
    # Every record a consumer reads follows the published contract.
    contract = jsonschema.Draft202012Validator(load_schema("score"))
    for message in received:
        contract.validate(json.loads(message.value))
    return [s for s in (Score.parse(m.value) for m in received) if s.tx_id in wanted]


def test_every_valid_event_is_scored_once_and_equals_onnx_runtime(
    live_stack, worker_factory: Callable[..., object]  # noqa: ANN001
) -> None:
    txs = make_transactions(1500, seed=11)
    # Terminal features come from the label state in Feast: give some terminals labels.
    store = open_store(live_stack.endpoints.redis)
    online = OnlineFeatures(store)
    terminals = sorted({tx.terminal_id for tx in txs})[:10]
    rng = np.random.default_rng(5)
    labels = {}
    for terminal in terminals:
        times = np.sort(rng.uniform(txs[0].event_time - 40 * DAY, txs[-1].event_time, 60))
        labels[terminal] = (times.tolist(), (times + 7 * DAY).tolist(),
                            rng.integers(0, 2, 60).tolist())
    values = np.ones((len(terminals), len(online.views[TERMINAL_VIEW])))
    online.push_terminal_risk(np.array(terminals), np.full(len(terminals), 1.5e9), values,
                              [labels[t] for t in terminals])
    assert np.allclose(online.read(TERMINAL_VIEW, "terminal_id", np.array(terminals)), values)

    # This worker serves metrics where the stack's Prometheus scrapes them.
    worker = worker_factory(metrics_port=live_stack.settings.worker_metrics_port)
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, SCORES)
    produce(live_stack.endpoints.kafka, live_stack.settings,
            ((str(tx.card_id).encode(), tx.to_json()) for tx in txs))
    wanted = {tx.tx_id for tx in txs}
    scores = read_scores(live_stack, start, wanted)

    assert len(scores) == len(txs), "exactly one score per transaction"
    assert {s.tx_id for s in scores} == wanted
    assert {s.model_version for s in scores} == {1}
    assert worker.alive()

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
    assert prometheus_value(live_stack, "factory_events_scored_total", len(txs)) >= len(txs)
    samples = worker.metrics()
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
    scores = read_scores(live_stack, scores_start, wanted)
    assert sorted(s.tx_id for s in scores) == sorted(wanted)

    expected_bad = 3 * len(BAD_EVENTS)
    letters = consume(kafka, settings, TRANSACTIONS_DLQ, start=dlq_start, timeout_s=60,
                      until=lambda r: sum(m.key == marker for m in r) >= expected_bad)
    mine = [m for m in letters if m.key == marker]
    assert len(mine) == expected_bad
    by_bytes = {raw: kind for raw, kind in BAD_EVENTS}
    for letter in mine:
        assert letter.value in by_bytes, "the original bytes are kept untouched"
        headers = read_headers(letter.headers)
        assert headers["reason"] == by_bytes[letter.value]
        assert headers["topic"] == "transactions"
        assert headers["stage"] == "validate"
        assert headers["exception.class.name"] == "ValidationError"
        assert headers["exception.message"]
        assert int(headers["offset"]) >= 0 and int(headers["partition"]) >= 0
    assert worker.alive()
    samples = worker.metrics()
    assert samples["factory_events_scored_total"] >= len(txs)
    assert sum(v for k, v in samples.items()
               if k.startswith("factory_events_dead_lettered_total")) >= expected_bad

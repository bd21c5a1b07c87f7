"""The replay producer: validation, label schedule and pacing (pure), then real Kafka.

The integration tests replay small simulations with ``factory replay``'s ``main`` and read
both topics back. Cross-topic append order is checked on topics created with
``LogAppendTime``, where each message carries the broker's append time.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from models.drift import apply_drift
from models.drift_spec import DriftSpec
from models.simulator import simulate
from streams.clients import kafka_io as clients
from streams.clients.kafka_io import topic_end_offsets
from streams.records import Label, Transaction
from streams.replay import cli as replay_cli
from streams.replay import producer
from streams.replay.dataset import (
    Checkpoint,
    Dataset,
    DatasetError,
    LabelSchedule,
    paced_end,
    validate_frame,
)
from streams.topics import LABELS, TRANSACTIONS

DAY = 86400


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate(n_customers=50, n_terminals=100, nb_days=10)


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "column", "message"),
    [
        (lambda df: df.drop(columns="TERMINAL_ID"), "TERMINAL_ID", "missing"),
        (lambda df: df.drop(columns="TX_FRAUD"), "TX_FRAUD", "--no-labels"),
        (lambda df: df.assign(CUSTOMER_ID=df["CUSTOMER_ID"].astype(str)), "CUSTOMER_ID",
         "integers"),
        (lambda df: df.assign(TX_DATETIME=df["TX_TIME_SECONDS"]), "TX_DATETIME", "timestamp"),
        (lambda df: df.assign(TX_AMOUNT=df["TX_AMOUNT"].astype(str)), "TX_AMOUNT", "numeric"),
        (lambda df: df.assign(TX_AMOUNT=-df["TX_AMOUNT"]), "TX_AMOUNT", ">= 0"),
        (lambda df: df.assign(TX_FRAUD=df["TX_FRAUD"] * 2 + 1), "TX_FRAUD", "0 or 1"),
        (lambda df: df.assign(TERMINAL_ID=df["TERMINAL_ID"].where(df.index != 5)),
         "TERMINAL_ID", "missing values (first at row 5)"),
        (lambda df: df.assign(TRANSACTION_ID=0), "TRANSACTION_ID", "duplicates"),
        (lambda df: df.iloc[::-1].reset_index(drop=True), "TX_DATETIME", "not sorted"),
        (lambda df: df.assign(LABEL_DELAY_DAYS=np.nan), "LABEL_DELAY_DAYS", "missing"),
    ],
)
def test_bad_input_names_the_column(
    frame: pd.DataFrame, change: object, column: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=f"column '{column}'") as error:
        validate_frame(change(frame))  # type: ignore[operator]
    assert message in str(error.value)


def test_labels_are_optional(frame: pd.DataFrame) -> None:
    dataset = Dataset.from_frame(frame.drop(columns="TX_FRAUD"), labels=False)
    assert dataset.is_fraud is None and len(dataset) == len(frame)


def test_bad_parquet_produces_nothing(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bad.parquet"
    frame.iloc[::-1].to_parquet(path)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("Kafka was contacted")

    monkeypatch.setattr(replay_cli, "ensure_replay_topics", fail)
    monkeypatch.setattr(replay_cli, "replay", fail)
    assert replay_cli.main(["--parquet", str(path), "--bootstrap", "127.0.0.1:1"]) == 2
    assert "column 'TX_DATETIME' is not sorted" in capsys.readouterr().err


def test_records_parse_back(frame: pd.DataFrame) -> None:
    dataset = Dataset.from_frame(frame, default_delay_days=3)
    keys, values = dataset.encode_transactions(0, len(frame))
    first = Transaction.parse(values[0])
    assert first.tx_id == 0 and first.card_id == frame["CUSTOMER_ID"][0]
    amounts = [Transaction.parse(v).amount for v in values]
    assert amounts == frame["TX_AMOUNT"].tolist()
    assert keys == [str(c).encode() for c in frame["CUSTOMER_ID"]]
    keys, values = dataset.encode_labels(np.arange(3))
    label = Label.parse(values[2])
    assert label.known_at == label.event_time + 3 * DAY
    assert keys[2] == str(frame["TERMINAL_ID"][2]).encode()


# --- label schedule and pacing -------------------------------------------------------------

def test_label_schedule_orders_by_known_at() -> None:
    times = np.array([0, 10, 20, 30, 40])
    delays = np.array([25, 5, 5, 0, 100])
    schedule = LabelSchedule.build(times, delays)
    assert schedule.rows.tolist() == [1, 0, 2, 3, 4]
    assert schedule.due.tolist() == [15, 25, 25, 30, 140]
    assert schedule.due_end(0, clock=14, sent_rows=5) == 0
    assert schedule.due_end(0, clock=15, sent_rows=5) == 1
    assert schedule.due_end(1, clock=29, sent_rows=5) == 3
    assert schedule.due_end(3, clock=20, sent_rows=5) == 3  # never goes back
    # A zero delay: the label of row 3 waits until row 3 itself is sent.
    assert schedule.due_end(3, clock=30, sent_rows=3) == 3
    assert schedule.due_end(3, clock=30, sent_rows=4) == 4
    assert schedule.due_end(0, clock=10**9, sent_rows=5) == 5


def test_a_replay_from_a_time_continues_one_that_stopped_before_it(frame: pd.DataFrame) -> None:
    from streams.replay.producer import start_at

    dataset = Dataset.from_frame(frame)
    schedule = LabelSchedule.build(dataset.event_time, dataset.delay_s)
    cut = int(dataset.event_time[0]) + 8 * DAY + 3600  # labels come 7 days late
    row, label = start_at(dataset, schedule, cut)
    assert dataset.event_time[row - 1] < cut <= dataset.event_time[row]
    # Where a replay of the rows before the cut stands after its last acknowledgement,
    # without flushing the labels not yet due.
    assert label > 0 and label == schedule.due_end(0, int(dataset.event_time[row - 1]), row)
    sent_before = set(schedule.rows[:label].tolist())
    assert sent_before <= set(range(row)), "only labels of rows sent before"
    assert all(schedule.due[label:] > dataset.event_time[row - 1]), "the rest are due later"
    assert start_at(dataset, schedule, int(dataset.event_time[0])) == (0, 0)
    # Breaking it: a label position one further would lose a label, one back send it twice.
    assert schedule.due[label - 1] <= dataset.event_time[row - 1] < schedule.due[label]


def test_pacing_on_event_time() -> None:
    times = np.array([100, 100, 110, 130, 200])
    assert paced_end(times, 0, 5, 100, 0.0, None) == (5, 0.0)
    assert paced_end(times, 0, 5, 100, 0.0, 10.0) == (2, 0.0)
    assert paced_end(times, 2, 5, 100, 0.5, 10.0) == (2, pytest.approx(0.5))
    assert paced_end(times, 2, 5, 100, 1.0, 10.0) == (3, 0.0)
    assert paced_end(times, 2, 4, 100, 100.0, 10.0) == (4, 0.0)  # bounded by the stop row
    assert paced_end(times, 5, 5, 100, 0.0, 10.0) == (5, 0.0)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path, "abc")
    assert checkpoint.load() is None
    checkpoint.save(10, 4, rows=20)
    assert checkpoint.load() == (10, 4)
    assert json.loads(checkpoint.path.read_text())["rows"] == 20
    assert Checkpoint(tmp_path, "other").load() is None


# --- real Kafka ------------------------------------------------------------------------------

def _read(bootstrap: str, topic: str, start: dict[int, int], count: int,
          timeout_s: float = 60.0) -> list[tuple[int, int, int, bytes, bytes]]:
    """``(partition, offset, timestamp_ms, key, value)`` of ``count`` messages from ``start``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    out: list[tuple[int, int, int, bytes, bytes]] = []
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=5000, timeout=0.5):
                if m.error() is None:
                    out.append((m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value()))
    finally:
        consumer.close()
    return out


class _RecordingProducer:
    """A confluent-kafka producer that logs each produce call and each acknowledgement."""

    def __init__(self, inner: object, log: list[tuple[str, str, bytes]]) -> None:
        self.inner, self.log = inner, log

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: object) -> None:
        def acked(err: object, msg: object) -> None:
            self.log.append(("ack", topic, msg.value()))  # type: ignore[attr-defined]
            on_delivery(err, msg)  # type: ignore[operator]

        self.inner.produce(topic, value, key, on_delivery=acked)  # type: ignore[attr-defined]
        self.log.append(("produce", topic, value))

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _append_time_topics(bootstrap: str) -> tuple[str, str]:
    names = (f"replay-tx-{uuid.uuid4().hex[:8]}", f"replay-labels-{uuid.uuid4().hex[:8]}")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"message.timestamp.type": "LogAppendTime"}
    futures = admin.create_topics([NewTopic(n, 4, 1, config=config) for n in names])
    for future in futures.values():
        future.result()
    return names


@pytest.mark.integration
def test_replay_to_kafka(live_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path))
    kafka = live_stack.endpoints.kafka
    spec = ["label_delay:start=3,intensity=0.5,delay_days=1,delay_spread_days=2"]
    raw = simulate(n_customers=200, n_terminals=400, nb_days=10)
    drifted = apply_drift(raw, [DriftSpec.parse(spec[0])], seed=0)
    dataset = Dataset.from_frame(drifted, default_delay_days=2)
    n = len(dataset)
    tx_topic, label_topic = _append_time_topics(kafka)
    argv = ["--simulate", "--customers", "200", "--terminals", "400", "--days", "10",
            "--drift", spec[0], "--label-delay-days", "2", "--bootstrap", kafka, "--quiet",
            "--transactions-topic", tx_topic, "--labels-topic", label_topic]
    log: list[tuple[str, str, bytes]] = []
    real = clients.producer
    monkeypatch.setattr(clients, "producer",
                        lambda *a, **k: _RecordingProducer(real(*a, **k), log))
    assert replay_cli.main(argv) == 0

    start = {p: 0 for p in range(4)}
    txs = _read(kafka, tx_topic, start, n)
    labels = _read(kafka, label_topic, start, n)
    assert len(txs) == n and len(labels) == n

    # Every transaction once, keyed by card, in event-time order in each partition.
    parsed = {Transaction.parse(v).tx_id: (p, o, ts, k, Transaction.parse(v))
              for p, o, ts, k, v in txs}
    assert sorted(parsed) == dataset.tx_id.tolist()
    for _, _, _, key, tx in parsed.values():
        assert key == str(tx.card_id).encode()
    for partition in range(4):
        mine = sorted((o, tx.event_time, tx.tx_id) for p, o, _, _, tx in parsed.values()
                      if p == partition)
        assert [t for _, t, _ in mine] == sorted(t for _, t, _ in mine)
        assert [i for _, _, i in mine] == sorted(i for _, _, i in mine)

    # Every label once, keyed by terminal, known delay after its event time.
    delay = dict(zip(dataset.tx_id.tolist(), dataset.delay_s.tolist(), strict=True))
    fraud = dict(zip(dataset.tx_id.tolist(), dataset.is_fraud.tolist(), strict=True))
    seen = set()
    times = dataset.event_time
    last_tx_append = max(ts for _, _, ts, _, _ in txs)
    for _, _, ts, key, value in labels:
        label = Label.parse(value)
        seen.add(label.tx_id)
        assert key == str(label.terminal_id).encode()
        assert label.known_at == label.event_time + delay[label.tx_id]
        assert label.is_fraud == fraud[label.tx_id]
        # Appended no earlier than the transaction whose event time reaches known_at.
        first = int(np.searchsorted(times, label.known_at, side="left"))
        if first < n:
            assert ts >= parsed[int(dataset.tx_id[first])][2]
        else:
            assert ts >= last_tx_append
    assert seen == set(parsed)

    # The producer only sends a label once that transaction is acknowledged by Kafka.
    acked_at = {Transaction.parse(v).tx_id: i for i, (what, topic, v) in enumerate(log)
                if what == "ack" and topic == tx_topic}
    assert len(acked_at) == n
    for i, (what, topic, value) in enumerate(log):
        if what == "produce" and topic == label_topic:
            label = Label.parse(value)
            first = int(np.searchsorted(times, label.known_at, side="left"))
            assert i > (acked_at[int(dataset.tx_id[first])] if first < n
                        else max(acked_at.values()))
    assert any(np.searchsorted(times, Label.parse(v).known_at) < n for *_, v in labels)


@pytest.mark.integration
def test_resume_after_a_limit(live_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path))
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    path = tmp_path / "data.parquet"
    simulate(n_customers=100, n_terminals=200, nb_days=12).to_parquet(path)
    dataset = Dataset.from_frame(pd.read_parquet(path), default_delay_days=2)
    n, k = len(dataset), len(dataset) // 2
    start = {t: topic_end_offsets(kafka, settings, t) for t in (TRANSACTIONS, LABELS)}
    argv = ["--parquet", str(path), "--bootstrap", kafka, "--quiet", "--label-delay-days", "2"]
    assert replay_cli.main([*argv, "--limit", str(k)]) == 0
    checkpoint = Checkpoint(tmp_path, dataset.fingerprint())
    next_row, label_position = checkpoint.load()  # type: ignore[misc]
    assert next_row == k
    first_labels = _read(kafka, LABELS, start[LABELS], label_position)
    assert len(first_labels) == label_position > 0
    clock = dataset.event_time[k - 1]
    assert all(Label.parse(v).known_at <= clock for *_, v in first_labels)

    assert replay_cli.main([*argv, "--resume"]) == 0
    assert checkpoint.load() == (n, n)
    txs = _read(kafka, TRANSACTIONS, start[TRANSACTIONS], n)
    labels = _read(kafka, LABELS, start[LABELS], n)
    assert sorted(Transaction.parse(v).tx_id for *_, v in txs) == dataset.tx_id.tolist()
    assert sorted(Label.parse(v).tx_id for *_, v in labels) == dataset.tx_id.tolist()
    # Nothing is left to do: a third run produces nothing.
    assert replay_cli.main([*argv, "--resume"]) == 0
    end = topic_end_offsets(kafka, settings, TRANSACTIONS)
    assert sum(end.values()) - sum(start[TRANSACTIONS].values()) == n


@pytest.mark.integration
def test_paced_replay_follows_event_time(live_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001,E501
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path))
    frame = simulate(n_customers=20, n_terminals=40, nb_days=2)
    dataset = Dataset.from_frame(frame)
    span = int(dataset.event_time[-1] - dataset.event_time[0])
    options = producer.ReplayOptions(speed=span / 1.5, progress=False,
                                     transactions_topic=f"paced-{uuid.uuid4().hex[:8]}",
                                     labels_topic=f"paced-{uuid.uuid4().hex[:8]}")
    producer.ensure_replay_topics(live_stack.settings, live_stack.endpoints.kafka,
                                  [options.transactions_topic, options.labels_topic])
    report = producer.replay(dataset, live_stack.endpoints.kafka, live_stack.settings, options)
    assert report.finished and report.sent == len(frame)
    assert 1.4 <= report.wall_s <= 4.0


@pytest.mark.integration
def test_stop_then_resume_is_exact(live_stack, tmp_path: Path) -> None:  # noqa: ANN001
    import dataclasses

    kafka = live_stack.endpoints.kafka
    settings = dataclasses.replace(live_stack.settings, state_dir=tmp_path)
    dataset = Dataset.from_frame(simulate(n_customers=60, n_terminals=120, nb_days=9),
                                 default_delay_days=1)
    tx_topic, label_topic = _append_time_topics(kafka)
    options = producer.ReplayOptions(chunk_rows=100, progress=False,
                                     transactions_topic=tx_topic, labels_topic=label_topic)
    asked = iter(range(10**6))
    first = producer.replay(dataset, kafka, settings, options, stop=lambda: next(asked) >= 4)
    assert first.next_row == 400 and not first.finished
    second = producer.replay(dataset, kafka, settings,
                             dataclasses.replace(options, resume=True))
    assert second.start_row == 400 and second.finished
    assert first.labels_sent + second.labels_sent == len(dataset)
    start = {p: 0 for p in range(4)}
    txs = _read(kafka, tx_topic, start, len(dataset))
    labels = _read(kafka, label_topic, start, len(dataset))
    assert sorted(Transaction.parse(v).tx_id for *_, v in txs) == dataset.tx_id.tolist()
    assert sorted(Label.parse(v).tx_id for *_, v in labels) == dataset.tx_id.tolist()

"""Streamed features equal the batch reference, on event time, across a kill -9."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES, add_model_features
from models.feature_log import ID_COLUMNS, OUTPUT_COLUMNS, wait_for_feature_log
from models.simulator import simulate
from streams.clients.feast_client import OnlineFeatures, model_feature_order, open_store
from streams.clients.kafka_io import Received, consume, pin_new_group, topic_end_offsets
from streams.clients.offline_store import export_offline, training_set
from streams.dataplane.features import DAY, TERMINAL_RETENTION_S, terminal_window_features
from streams.replay.dataset import Dataset
from streams.replay.producer import ReplayOptions, replay
from streams.topics import LABELS, SCORES, TRANSACTIONS
from tests.streams.feeds import HeldReplay
from tests.streams.sink_checks import assert_scored_once, read_to_end, redelivered, tx_ids

pytestmark = pytest.mark.integration

DAYS = 30


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    """30 simulated days of 400 cards and 800 terminals, with every model feature."""
    return add_model_features(simulate(n_customers=400, n_terminals=800, nb_days=DAYS))


@pytest.fixture(scope="module")
def simulated_backlog() -> pd.DataFrame:
    """60 simulated days of 400 cards and 800 terminals (about 46,000 transactions): a
    backlog that takes the workers seconds at their maximum rate. With every label in
    Kafka from the start, the labels worker runs up to 67 days ahead of the scorer; the
    terminal state keeps 88 days of labels, so none the scorer needs has expired."""
    return add_model_features(simulate(n_customers=400, n_terminals=800, nb_days=60))


def shifted(frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    """The same data under ids no other test uses (Feast state is shared by the session)."""
    frame = frame.copy()
    for column in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        frame[column] = frame[column] + offset
    return frame


def start_pair(worker_factory: Callable[..., object], log_dir: Path, app_id: str,
               log_level: str = "warn", extra: list[str] | None = None
               ) -> tuple[object, object]:
    logging = ["--log-level", log_level, *(extra or [])]
    labels = worker_factory(role="labels", app_id=f"{app_id}-labels",
                            extra_args=["--batch-wait", "0.5", "--batch-max", "4096", *logging])
    scorer = worker_factory(role="score", mode="strict", app_id=app_id,
                            labels_group=f"{app_id}-labels", feature_log=str(log_dir),
                            extra_args=logging)
    return labels, scorer


def missing_report(missing: set[int], workers: tuple[object, ...], live_stack=None,  # noqa: ANN001
                   tx_start: dict[int, int] | None = None) -> str:
    """What a failed restart left: the missing ids (and where they are in the
    transactions topic), and what each worker says."""
    ids = sorted(missing)
    runs = sum(1 for a, b in zip(ids, ids[1:], strict=False) if b != a + 1) + 1 if ids else 0
    lines = [f"{len(ids)} transactions never scored, ids {ids[:1]}..{ids[-1:]} in {runs} runs"]
    if live_stack is not None and tx_start is not None and ids:
        found: dict[int, list[int]] = {}
        for message in consume(live_stack.endpoints.kafka, live_stack.settings, TRANSACTIONS,
                               start=tx_start, until=lambda got: False, timeout_s=10):
            if json.loads(message.value)["tx_id"] in missing:
                found.setdefault(message.partition, []).append(message.offset)
        lines.append("their (partition: offsets) in transactions: "
                     + str({p: (min(o), max(o), len(o)) for p, o in sorted(found.items())}))
    for worker in workers:
        samples = worker.metrics() if worker.alive() else {}
        wanted = {k: v for k, v in samples.items() if k.startswith((
            "factory_events_in_total", "factory_events_scored_total",
            "factory_events_dead_lettered_total", "factory_labels_in_total",
            "factory_label_watermark_seconds", "factory_label_staleness_seconds",
            "factory_consumer_lag"))}
        lines.append(f"{worker.role} worker alive={worker.alive()} {wanted} "
                     f"log {worker.log_path}")
    return "; ".join(lines)


def wait_for_scores(live_stack, start: dict[int, int], wanted: set[int],  # noqa: ANN001
                    until_fraction: float = 1.0, timeout_s: float = 300) -> list[Received]:
    target = int(len(wanted) * until_fraction)
    seen: set[int] = set()
    checked = 0

    def done(received: list[Received]) -> bool:
        nonlocal checked
        for message in received[checked:]:
            seen.add(json.loads(message.value)["tx_id"])
        checked = len(received)
        return len(seen & wanted) >= target

    return consume(live_stack.endpoints.kafka, live_stack.settings, SCORES, until=done,
                   start=start, timeout_s=timeout_s)


def wait_for_commits(live_stack, group: str, topic: str, start: dict[int, int],  # noqa: ANN001
                     timeout_s: float = 120) -> None:
    """Wait until ``group`` committed an offset past ``start`` on every partition."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(live_stack.settings.kafka.client_config(live_stack.endpoints.kafka))
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in start])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = admin.list_consumer_group_offsets([request])[group].result(timeout=10)
        committed = {tp.partition: tp.offset for tp in result.topic_partitions}
        if all(committed.get(p, -1) > offset for p, offset in start.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{group} did not commit on every {topic} partition")


def assert_parity(frame: pd.DataFrame, log_dir: Path) -> pd.DataFrame:
    # Rows are written at the worker's checkpoint, up to a second after their scores.
    logged = wait_for_feature_log(log_dir, set(frame["TRANSACTION_ID"].tolist()))
    assert len(logged) == len(frame), "every transaction is in the feature log"
    reference = frame.sort_values("TRANSACTION_ID").reset_index(drop=True)
    assert np.array_equal(logged["tx_id"].to_numpy(), reference["TRANSACTION_ID"].to_numpy())
    names = [c for c in logged.columns if c not in (*ID_COLUMNS, *OUTPUT_COLUMNS)]
    assert names == [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
    got = logged[names].to_numpy(np.float64)
    want = reference[MODEL_FEATURE_COLUMNS].to_numpy(np.float64)
    bad = ~np.isclose(got, want, rtol=0, atol=1e-6).all(axis=1)
    assert not bad.any(), (
        f"{bad.sum()} of {len(bad)} rows differ; first: tx {logged['tx_id'][bad].iloc[0]}, "
        f"got {got[bad][0]}, want {want[bad][0]}"
    )
    return logged


def test_streamed_features_equal_the_batch_reference(
    live_stack, worker_factory: Callable[..., object], simulated: pd.DataFrame,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    frame = shifted(simulated, 50_000_000)
    app_id = f"parity-{uuid.uuid4().hex[:8]}"
    labels, scorer = start_pair(worker_factory, tmp_path / "log", app_id)
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, SCORES)
    report = replay(Dataset.from_frame(frame), live_stack.endpoints.kafka, live_stack.settings,
                    ReplayOptions(progress=False))
    assert report.finished and report.rows == len(frame)
    wanted = set(frame["TRANSACTION_ID"].tolist())
    wait_for_scores(live_stack, start, wanted)
    for worker in (scorer, labels):
        worker.stop()  # everything they wrote is on the topics now
    assert_scored_once(read_to_end(live_stack.endpoints.kafka, live_stack.settings, SCORES,
                                   start), wanted)
    logged = assert_parity(frame, tmp_path / "log")
    assert_online_state(live_stack, frame, logged)
    assert_point_in_time_training_set(live_stack, logged, tmp_path / "log")


def assert_online_state(live_stack, frame: pd.DataFrame, logged: pd.DataFrame) -> None:  # noqa: ANN001
    """What Feast returns online is the last streamed state of cards and terminals."""
    online = OnlineFeatures(open_store(live_stack.endpoints.redis))
    last = logged.sort_values(["event_time", "tx_id"]).groupby("card_id").tail(1)
    sample = last.sample(60, random_state=1)
    card_names = [c for c in logged.columns if c.startswith("card_activity__")]
    assert np.allclose(online.read("card_activity", "card_id", sample["card_id"].to_numpy()),
                       sample[card_names].to_numpy(np.float64), atol=1e-9)
    terminals = np.sort(frame["TERMINAL_ID"].drop_duplicates().sample(40, random_state=2))
    arrays = online.read_terminal_labels(terminals)
    values = online.read("terminal_risk", "terminal_id", terminals)
    seconds = frame["TX_DATETIME"].astype("int64") // 10**9
    for i, terminal in enumerate(terminals.tolist()):
        mine = frame[frame["TERMINAL_ID"] == terminal]
        known = (seconds[mine.index] + 7 * DAY).to_numpy()
        keep = known > known.max() - TERMINAL_RETENTION_S
        times, known_at, frauds = arrays[terminal]
        assert np.array_equal(np.sort(times), np.sort(seconds[mine.index].to_numpy()[keep]))
        assert frauds.sum() == mine["TX_FRAUD"].to_numpy()[keep].sum()
        assert np.allclose(values[i], terminal_window_features(times, known_at, frauds,
                                                                known_at.max()))


def assert_point_in_time_training_set(live_stack, logged: pd.DataFrame,  # noqa: ANN001
                                      log_dir: Path) -> None:
    """Feast's offline store, filled from the feature log, gives the served features."""
    store = open_store(live_stack.endpoints.redis)
    written = export_offline(log_dir)
    assert written["card_activity"] > 0 and written["terminal_risk"] > 0
    seconds = logged["event_time"].astype("int64")
    unique = ~logged.assign(s=seconds).duplicated(["card_id", "s"], keep=False) & \
        ~logged.assign(s=seconds).duplicated(["terminal_id", "s"], keep=False)
    sample = logged[unique].sample(1500, random_state=3)
    entities = pd.DataFrame({
        "card_id": sample["card_id"].to_numpy(), "terminal_id": sample["terminal_id"].to_numpy(),
        "event_timestamp": pd.to_datetime(sample["event_time"], unit="s", utc=True).to_numpy(),
        "tx_id": sample["tx_id"].to_numpy(),
    })
    historical = training_set(store, entities).merge(sample, on="tx_id",
                                                     suffixes=("", "_served"))
    names = model_feature_order(store)[3:]
    assert len(historical) == len(sample)
    assert np.allclose(historical[names].to_numpy(np.float64),
                       historical[[f"{n}_served" for n in names]].to_numpy(np.float64),
                       atol=1e-9)


@pytest.mark.parametrize("pace", ["paced", "max-rate"])
def test_parity_holds_across_a_kill_9_of_both_workers(
    live_stack, worker_factory: Callable[..., object], simulated: pd.DataFrame,  # noqa: ANN001
    simulated_backlog: pd.DataFrame, tmp_path: Path, pace: str,
) -> None:
    """Both workers killed with kill -9 mid-stream: while events arrive at a steady pace,
    or while they work through a backlog at their maximum rate."""
    frame = (shifted(simulated, 60_000_000) if pace == "paced"
             else shifted(simulated_backlog, 70_000_000))
    log_dir = tmp_path / "log"
    app_id = f"restart-{uuid.uuid4().hex[:8]}"
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, SCORES)
    wanted = set(frame["TRANSACTION_ID"].tolist())
    tx_start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, TRANSACTIONS)
    labels_start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, LABELS)
    # Paced so that the 30 days take about 40 s: the kill lands in the middle of the
    # stream. The feed is held at 60% until the kill, so that on a slow machine too events
    # still arrive after it. At the maximum rate the whole stream is in Kafka before the
    # workers start.
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    feed = HeldReplay(frame, kafka, settings,
                      speed=DAYS * 86400 / 40 if pace == "paced" else None,
                      hold_at=int(0.6 * len(frame)))
    if pace == "max-rate":
        # The groups start where the backlog starts ("latest" pins a new group's offsets
        # when its worker starts; pinned now, they stay).
        for group, topic in ((app_id, TRANSACTIONS), (f"{app_id}-labels", LABELS)):
            pin_new_group(kafka, settings, group, topic)
        feed.start()
        feed.finish()
    # Checkpoints every 0.2 s: at the maximum rate the kill must find committed progress
    # on every partition and a backlog still to score.
    labels, scorer = start_pair(worker_factory, log_dir, app_id, log_level="info",
                                extra=["--commit-interval", "0.2"] if pace != "paced" else [])
    if pace == "paced":
        feed.start()
        wait_for_scores(live_stack, start, wanted, until_fraction=0.3)
        # Kill only once both groups committed progress on every partition, so that the
        # restart resumes from commits (not from the reset policy) and repeats what came
        # after.
        wait_for_commits(live_stack, app_id, TRANSACTIONS, tx_start)
        wait_for_commits(live_stack, f"{app_id}-labels", LABELS, labels_start)
        feed.release.set()
        if feed.held.is_set():  # a slow machine: kill once events arrive again
            deadline = time.monotonic() + 60
            while sum(topic_end_offsets(kafka, settings, TRANSACTIONS).values()) <= (
                    sum(tx_start.values()) + feed.hold_at):
                assert not feed.finished.is_set(), f"the feed failed: {feed.error!r}"
                assert time.monotonic() < deadline, "the feed did not go on once released"
                time.sleep(0.05)
    else:
        # The backlog goes by in seconds: kill once a fifth of it is scored, by the
        # worker's own count (the groups' offsets were pinned before the backlog).
        deadline = time.monotonic() + 120
        while scorer.metrics().get("factory_events_scored_total", 0.0) < 0.2 * len(wanted):
            assert time.monotonic() < deadline, "the scorer never reached a fifth"
            time.sleep(0.02)
    for worker in (scorer, labels):
        worker.stop(kill=True)  # kill -9: no clean shutdown, no final commit
    if pace == "paced":
        assert not feed.finished.is_set(), "the kill happened while events were still arriving"
    # Nothing writes scores until the restart: the topic read to its end is what was
    # scored before the kill.
    scored_at_kill = set(tx_ids(read_to_end(kafka, settings, SCORES, start))) & wanted
    if pace == "max-rate":
        assert len(scored_at_kill) < len(wanted), "the kill happened with a backlog left"
    for worker in (labels, scorer):
        worker.start(kafka)
    feed.finish()
    missing = wanted - set(tx_ids(wait_for_scores(live_stack, start, wanted)))
    assert not missing, missing_report(missing, (labels, scorer), live_stack, tx_start)
    for worker in (scorer, labels):
        worker.stop()  # everything they wrote is on the topics now
    received = read_to_end(kafka, settings, SCORES, start)
    # A kill -9 may score twice what was scored before it and not committed: counted,
    # allowed, and nothing else.
    repeats = redelivered(received, wanted)
    assert set(repeats) <= scored_at_kill and set(repeats.values()) <= {2}, (
        f"{len(repeats)} transactions scored more than once (allowed after kill -9 only "
        f"for those scored before the kill, once more); "
        f"{len(set(repeats) - scored_at_kill)} of them had no score before the kill, "
        f"counts {sorted(set(repeats.values()))}")
    print(f"\nkill -9 ({pace}): {len(received)} scores for {len(wanted)} transactions, "
          f"{len(repeats)} redelivered of the {len(scored_at_kill)} scored before the kill")
    # Redelivered events carry exactly the features they had the first time.
    raw = pd.concat([pq.read_table(f).to_pandas() for f in log_dir.glob("*/*.parquet")])
    repeated = raw[raw.duplicated("tx_id", keep=False)]
    if len(repeated):
        features = repeated.drop(columns=["score", "shadow_score"]).groupby("tx_id").nunique()
        assert (features <= 1).all().all()
    assert_parity(frame, log_dir)

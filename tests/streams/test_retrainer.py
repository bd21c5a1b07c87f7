"""The retrainer against real Kafka, Redis and Triton: broken and worse challengers are
rejected and never loaded, and a swap under steady load scores every transaction once,
with no failed Triton call, N before the promotion and N+1 after it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import tritonclient.grpc as grpcclient

from models.feature_log import read_feature_log
from models.gate import GateConfig
from models.model_version import ModelVersion
from models.recipe import Recipe
from models.registry import Registry
from models.trainer import frame_from_simulator, train_version
from models.triton_config import MODEL_NAME
from streams.clients.kafka_io import Received, consume, producer, topic_end_offsets
from streams.clients.router import ModelRouter
from streams.clients.triton_models import load_model
from streams.lifecycle.retrain_policy import GateSplit, TriggerPolicy
from streams.lifecycle.retrainer import Retrainer, connect
from streams.lifecycle.retrainer_config import RetrainerConfig
from streams.lifecycle.swap import SwapConfig, triton_ready_versions
from streams.records import Score
from streams.topics import MODEL_EVENTS, SCORES, TRANSACTIONS
from tests.streams.feeds import HeldReplay
from tests.streams.sink_checks import assert_scored_once, read_to_end

pytestmark = pytest.mark.integration

FAST = Recipe(train_weeks=2, hidden=(16,), n_bins=4, n_members=1, max_epochs=3, patience=2)
DAY = 86400
OFFSET = 70_000_000


@dataclasses.dataclass
class World:
    frame: pd.DataFrame
    registry: Registry
    champion: int
    challenger: int
    split: GateSplit


@pytest.fixture(scope="module")
def world(live_stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # noqa: ANN001
    """A small simulated world, a champion trained on it and a warm-started challenger,
    published into the session's Triton repository; Triton and the route are put back
    to version 1 alone afterwards (the other tests score with it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    frame = frame_from_simulator(customers=150, terminals=300, days=42, seed=3)
    for column in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        frame[column] = frame[column] + OFFSET
    registry = Registry(tmp_path_factory.mktemp("registry"), repo_dir=live_stack.triton_repo)
    repo = live_stack.triton_repo
    champion = train_version(frame, registry=registry, repo_dir=repo, trigger="initial",
                             recipe=FAST, end="2018-05-06", device="cpu").version
    registry.set_champion(champion, "test champion")
    challenger = train_version(frame, registry=registry, repo_dir=repo, trigger="manual",
                               parent=champion, warm_start=True, recipe=FAST,
                               end="2018-05-06", seed=1, device="cpu").version
    start = pd.Timestamp("2018-05-06").timestamp()
    yield World(frame, registry, champion, challenger, GateSplit(start, start + 7 * DAY))
    torch.set_num_threads(threads)
    load_model(live_stack.endpoints.triton, [1], repo=repo)
    router = ModelRouter(live_stack.endpoints.redis)
    router.reset()
    router.close()


@pytest.fixture
def make_retrainer(live_stack, world: World) -> Iterator[Callable[..., Retrainer]]:  # noqa: ANN001
    """Retrainers on the session's services whose champion is the world's; closed after."""
    made: list[Retrainer] = []

    def make(log_dir: Path, config_changes: dict | None = None, **swap: float) -> Retrainer:
        config = RetrainerConfig(
            feature_log=log_dir, repo_dir=live_stack.triton_repo, recipe=FAST,
            gate=dataclasses.replace(GateConfig(), latency_repeats=20, ece_max=None,
                                     ratio_bounds=None),
            swap=dataclasses.replace(SwapConfig(), **swap))
        config = dataclasses.replace(config, **(config_changes or {}))
        settings = dataclasses.replace(live_stack.settings, registry_dir=world.registry.root)
        e = live_stack.endpoints
        retrainer = connect(config, settings, kafka=e.kafka, redis_url=e.redis,
                            triton_url=e.triton,
                            labels_start=topic_end_offsets(e.kafka, settings, "labels"),
                            labels_group=f"retrainer-{uuid.uuid4().hex[:8]}")
        made.append(retrainer)
        retrainer.swapper.router.reset()
        assert retrainer.start() == world.champion
        return retrainer

    yield make
    for retrainer in made:
        retrainer.close()


def model_events(live_stack, start: dict[int, int], wanted: set[str]) -> list[dict]:  # noqa: ANN001
    def done(received: list[Received]) -> bool:
        return wanted <= {json.loads(m.value)["event"] for m in received}

    received = consume(live_stack.endpoints.kafka, live_stack.settings, MODEL_EVENTS,
                       until=done, start=start, timeout_s=30)
    return [json.loads(m.value) for m in received]


def assert_never_loaded(live_stack, version: int) -> None:  # noqa: ANN001
    """Triton never tried to load ``version``: its repository index lists a version only
    once a load of it was requested (a failed load stays there as ``UNAVAILABLE``, with
    the error as its reason; an unloaded one as ``UNAVAILABLE`` or ``UNLOADING``)."""
    with grpcclient.InferenceServerClient(url=live_stack.endpoints.triton) as client:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        assert not client.is_model_ready(MODEL_NAME, str(version))
    tried = [(m.get("state"), m.get("reason", "")[:200]) for m in index
             if m.get("name") == MODEL_NAME and m.get("version") == str(version)]
    assert not tried, f"a load of version {version} was attempted: {tried}"


def publish_broken(repo: Path, registry: Registry, kind: str, parent: int) -> int:
    """A version whose model.onnx is not a graph, or takes rows of 19 features."""
    version = registry.reserve(repo)
    target = repo / MODEL_NAME / str(version)
    shutil.copytree(repo / MODEL_NAME / str(parent), target)
    if kind == "corrupt":
        (target / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx graph")
    else:
        net = torch.nn.Sequential(torch.nn.Linear(19, 1), torch.nn.Sigmoid())
        torch.onnx.export(net, (torch.zeros(2, 19),), str(target / "model.onnx"),
                          input_names=["features"], output_names=["score"], dynamo=False,
                          dynamic_axes={"features": {0: "batch"}, "score": {0: "batch"}})
    registry.record(ModelVersion(version, parent=parent, trigger="manual"))
    return version


@pytest.mark.parametrize("kind", ["corrupt", "wrong_width"])
def test_a_broken_challenger_is_rejected_and_never_loaded(
    live_stack, world: World, make_retrainer: Callable[..., Retrainer],  # noqa: ANN001
    tmp_path: Path, kind: str,
) -> None:
    retrainer = make_retrainer(tmp_path / "log")
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, MODEL_EVENTS)
    version = publish_broken(live_stack.triton_repo, world.registry, kind, world.champion)
    try:
        outcome = retrainer.challenge(version, retrainer.gate_window(world.frame, world.split))
        assert outcome.status == "rejected"
        assert outcome.reasons and all(r.startswith("structure: ") for r in outcome.reasons)
        assert world.registry.get(version).status == "rejected"
        assert world.registry.champion() == world.champion
        assert_never_loaded(live_stack, version)
        assert triton_ready_versions(live_stack.endpoints.triton) == sorted({1, world.champion})
        events = model_events(live_stack, start, {"challenger_rejected"})
        rejected = [e for e in events if e["event"] == "challenger_rejected"]
        assert rejected[0]["version"] == version and not rejected[0]["passed"]
    finally:
        shutil.rmtree(live_stack.triton_repo / MODEL_NAME / str(version))


def test_a_worse_challenger_is_rejected_on_quality(
    live_stack, world: World, make_retrainer: Callable[..., Retrainer],  # noqa: ANN001
    tmp_path: Path,
) -> None:
    retrainer = make_retrainer(tmp_path / "log")
    worse = worse_version(live_stack, world)
    try:
        outcome = retrainer.challenge(worse, retrainer.gate_window(world.frame, world.split))
        assert outcome.status == "rejected", outcome
        assert any(r.startswith("quality: average precision") for r in outcome.reasons)
        assert outcome.gate is not None and outcome.gate.checks["structure"]
        assert world.registry.get(worse).status == "rejected"
        assert world.registry.get(worse).gate["champion_average_precision"] > 0
        assert_never_loaded(live_stack, worse)
    finally:
        shutil.rmtree(live_stack.triton_repo / MODEL_NAME / str(worse))


def worse_version(live_stack, world: World) -> int:  # noqa: ANN001
    """A version trained on the world with its fraud labels shuffled."""
    shuffled = world.frame.copy()
    shuffled["TX_FRAUD"] = np.random.default_rng(0).permutation(shuffled["TX_FRAUD"].to_numpy())
    return train_version(shuffled, registry=world.registry, repo_dir=live_stack.triton_repo,
                         trigger="manual", parent=world.champion, recipe=FAST,
                         end="2018-05-06", device="cpu").version


def test_a_promoted_model_worse_on_live_labels_is_rolled_back(
    live_stack, world: World, make_retrainer: Callable[..., Retrainer],  # noqa: ANN001
    worker_factory: Callable[..., object], tmp_path: Path,
) -> None:
    """Promoted by hand past the gate, a worse model serves live traffic; once its
    matured labels show it below its predecessor, the retrainer serves N again. Every
    transaction of the stream, before, between and after the two swaps, is scored once."""
    n = world.champion
    log_dir = tmp_path / "feature_log"
    # No retraining in this test: the cooldown never ends.
    retrainer = make_retrainer(
        log_dir, {"trigger": TriggerPolicy(schedule_days=None, cooldown_seconds=float("inf"),
                                           follow_up_days=None),
                  "rollback_min_rows": 1000, "rollback_min_positives": 10},
        shadow_rows=200, shadow_timeout_s=60, drain_timeout_s=60)
    retrainer.state.last_started = 0.0
    worse = worse_version(live_stack, world)
    frame = world.frame.copy()
    for column in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"):
        frame[column] = frame[column] + 5_000_000
    app_id = f"rollback-{uuid.uuid4().hex[:8]}"
    labels = worker_factory(role="labels", app_id=f"{app_id}-labels")
    scorer = worker_factory(role="score", mode="live", app_id=app_id,
                            labels_group=f"{app_id}-labels", feature_log=str(log_dir))
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    scores_start = topic_end_offsets(kafka, settings, SCORES)
    events_start = topic_end_offsets(kafka, settings, MODEL_EVENTS)
    days = (frame["TX_DATETIME"].max() - frame["TX_DATETIME"].min()).days + 1
    # 90 s for the whole world, held at 80% until the rollback: its last fifth is
    # always scored after it, however slow the machine.
    feed = HeldReplay(frame, kafka, settings, speed=days * DAY / 90,
                      hold_at=int(0.8 * len(frame)))
    feed.start()
    try:
        deadline = time.monotonic() + 300
        while len(read_feature_log(log_dir)) < len(frame) // 4:
            assert not feed.finished.is_set(), f"the feed ended early: {feed.error!r}"
            assert time.monotonic() < deadline, "the worker scored too little"
            time.sleep(0.5)
        assert retrainer.swap_to(worse, reason="test: a worse model promoted by hand")
        assert world.registry.champion() == worse
        verdict = None
        deadline = time.monotonic() + 300
        while world.registry.champion() == worse:
            assert time.monotonic() < deadline, f"no rollback; last verdict {verdict}"
            verdict = retrainer.step().rollback or verdict
            time.sleep(1.0)
        after_rollback = topic_end_offsets(kafka, settings, SCORES)
        assert not feed.finished.is_set(), f"the feed stopped before the rollback: {feed.error!r}"
    finally:
        feed.release.set()
    feed.finish()
    assert verdict is not None and verdict.roll_back is True, verdict
    assert verdict.new is not None and verdict.old is not None
    assert verdict.new.average_precision < verdict.old.average_precision - 0.01
    assert world.registry.champion() == n
    assert world.registry.get(worse).status == "rolled_back"
    assert triton_ready_versions(live_stack.endpoints.triton) == [n]
    events = model_events(live_stack, events_start, {"promoted", "rollback_check", "rollback"})
    names = [e["event"] for e in events]
    assert names.index("promoted") < names.index("rollback_check") < names.index("rollback")
    rollback = events[names.index("rollback")]
    assert (rollback["version"], rollback["previous"]) == (n, worse)

    # Every transaction scored once, read to the end once the workers stopped.
    wanted = set(frame["TRANSACTION_ID"].tolist())
    wait_for_ids(live_stack, scores_start, wanted)
    scorer.stop()
    labels.stop()
    received = read_to_end(kafka, settings, SCORES, scores_start)
    assert_scored_once(received, wanted)
    # Every partition served N, then the worse model, then N again, never mixed.
    mine = sorted((r.partition, r.offset, Score.parse(r.value).model_version)
                  for r in received)
    assert {v for *_, v in mine} == {n, worse}
    for partition in {p for p, _, _ in mine}:
        runs = [v for p, _, v in mine if p == partition]
        changes = [v for i, v in enumerate(runs) if i == 0 or runs[i - 1] != v]
        assert changes in ([n, worse, n], [n, worse], [n]), (partition, changes)
    after = [v for p, o, v in mine if o >= after_rollback[p]]
    assert after and set(after) == {n}, "the stream went on, scored by N again"


def wait_for_ids(live_stack, start: dict[int, int], wanted: set[int],  # noqa: ANN001
                 timeout_s: float = 300) -> None:
    """Wait until every one of ``wanted`` has a score on ``scores`` after ``start``."""
    seen: set[int] = set()
    checked = 0

    def done(received: list[Received]) -> bool:
        nonlocal checked
        seen.update(json.loads(r.value)["tx_id"] for r in received[checked:])
        checked = len(received)
        return wanted <= seen

    consume(live_stack.endpoints.kafka, live_stack.settings, SCORES, until=done, start=start,
            timeout_s=timeout_s)
    assert wanted <= seen, f"{len(wanted - seen)} transactions not scored in {timeout_s} s"


class SteadyProducer(threading.Thread):
    """Sends the world's transactions, in event-time order, at ``rate`` a second; what
    it raised is kept in :attr:`error`."""

    def __init__(self, live_stack, frame: pd.DataFrame, rate: int) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.kafka, self.settings = live_stack.endpoints.kafka, live_stack.settings
        seconds = frame["TX_DATETIME"].astype("int64") // 10**9
        self.rows = list(zip(frame["TRANSACTION_ID"], seconds, frame["CUSTOMER_ID"],
                             frame["TERMINAL_ID"], frame["TX_AMOUNT"], strict=True))
        self.rate, self.sent, self.stop = rate, [], threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._send()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc

    def _send(self) -> None:
        client = producer(self.kafka, self.settings, **{"linger.ms": 5})
        began = time.monotonic()
        for tx, t, card, terminal, amount in self.rows:
            if self.stop.is_set():
                break
            due = began + len(self.sent) / self.rate
            wait = due - time.monotonic()  # read once: a busy machine can pass `due`
            if wait > 0:
                time.sleep(wait)
            value = (f'{{"v":1,"tx_id":{tx},"event_time":{t},"card_id":{card},'
                     f'"terminal_id":{terminal},"amount":{amount!r}}}')
            client.produce(TRANSACTIONS, value=value.encode(), key=str(card).encode())
            client.poll(0)
            self.sent.append(int(tx))
        assert client.flush(30) == 0, "Kafka did not acknowledge every transaction"


def test_swap_under_steady_load_scores_every_transaction_once(
    live_stack, world: World, make_retrainer: Callable[..., Retrainer],  # noqa: ANN001
    worker_factory: Callable[..., object], tmp_path: Path,
) -> None:
    n, m = world.champion, world.challenger
    log_dir = tmp_path / "feature_log"
    retrainer = make_retrainer(log_dir, shadow_rows=600, shadow_timeout_s=60,
                               drain_timeout_s=60)
    app_id = f"retrainer-{uuid.uuid4().hex[:8]}"
    worker_factory(role="labels", app_id=f"{app_id}-labels")
    scorer = worker_factory(role="score", mode="live", app_id=app_id,
                            labels_group=f"{app_id}-labels", feature_log=str(log_dir))
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    scores_start = topic_end_offsets(kafka, settings, SCORES)
    events_start = topic_end_offsets(kafka, settings, MODEL_EVENTS)
    errors_before = scorer.metrics().get("factory_triton_errors_total", 0.0)
    load = SteadyProducer(live_stack, world.frame, rate=300)
    load.start()
    try:
        deadline = time.monotonic() + 120
        while len(read_feature_log(log_dir)) < 600:
            assert load.is_alive(), f"the load ended before 600 rows: {load.error!r}"
            assert time.monotonic() < deadline, "the worker scored too little"
            time.sleep(0.5)
        report = retrainer.swap_to(m, reason="test swap")
        after_promotion = topic_end_offsets(kafka, settings, SCORES)
        # The load goes on until 300 transactions were scored after the promotion.
        deadline = time.monotonic() + 120
        while sum(topic_end_offsets(kafka, settings, SCORES).values()) < (
                sum(after_promotion.values()) + 300):
            assert load.is_alive(), f"the load ended before the promotion: {load.error!r}"
            assert time.monotonic() < deadline, "too few scores after the promotion"
            time.sleep(0.5)
    finally:
        load.stop.set()
        load.join(60)
    assert load.error is None and not load.is_alive(), f"the load failed: {load.error!r}"
    print(f"\nswap timings: {json.dumps(report.to_record() if report else None)}")
    assert report is not None and report.promoted and report.drained and report.unloaded
    assert report.shadow["rows"] >= 600 and report.shadow["failed"] == 0

    sent = set(load.sent)
    assert len(sent) == len(load.sent) > 2000
    wait_for_ids(live_stack, scores_start, sent)
    assert scorer.metrics().get("factory_triton_errors_total", 0.0) == errors_before
    scorer.stop()  # everything it wrote is on the topic now
    received = read_to_end(kafka, settings, SCORES, scores_start)
    # No duplicate on the topic itself, whatever the feature log says.
    assert_scored_once(received, sent)
    mine = [(r.partition, r.offset, Score.parse(r.value)) for r in received]
    logged = read_feature_log(log_dir)

    versions = {s.model_version for *_, s in mine}
    assert versions == {n, m}
    for partition in {p for p, _, _ in mine}:
        sequence = [s.model_version for p, o, s in sorted(mine) if p == partition]
        first_new = sequence.index(m) if m in sequence else len(sequence)
        assert set(sequence[:first_new]) <= {n} and set(sequence[first_new:]) <= {m}, (
            f"partition {partition} mixes versions after the promotion")
    assert all(s.model_version == m for p, o, s in mine if o >= after_promotion[p])
    shadowed = logged[logged["shadow_version"] == m]
    assert len(shadowed) >= 600 and (shadowed["model_version"] == n).all()
    assert shadowed["shadow_score"].notna().all()

    assert triton_ready_versions(live_stack.endpoints.triton) == [m]
    assert world.registry.champion() == m
    assert world.registry.get(n).status == "retired"
    assert (live_stack.triton_repo / MODEL_NAME / str(n) / "model.onnx").exists()
    events = model_events(live_stack, events_start, {"shadow_started", "promoted", "unloaded"})
    names = [e["event"] for e in events]
    assert names.index("shadow_started") < names.index("promoted") < names.index("unloaded")
    promoted = events[names.index("promoted")]
    assert promoted["version"] == m and promoted["cycle_seconds"] > 0
    assert promoted["shadow"]["correlation"] is not None


def test_cli_runs_one_step_and_serves_its_metrics(
    live_stack, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    import urllib.request

    from infra.local.base import free_port
    from streams.jobs.cli import main

    monkeypatch.setenv("FACTORY_STATE_DIR", str(live_stack.settings.state_dir))
    monkeypatch.setenv("FACTORY_REGISTRY_DIR", str(world.registry.root))
    port = free_port()
    champion = world.registry.champion()
    assert main(["retrainer", "--feature-log", str(tmp_path / "log"), "--once",
                 "--repo", str(live_stack.triton_repo), "--metrics-port", str(port)]) == 0
    assert f"champion {champion}" in capsys.readouterr().out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f"factory_model_version {float(champion)}" in text
    assert 'factory_model_events_total{event="rollback"} 0.0' in text
    assert 'factory_drift_detected{monitor="score_psi"} 0.0' in text

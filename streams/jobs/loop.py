"""The main job with the loop closed: drift, retraining, the gate, the swap, on simulated data.

A world is simulated with a drift scenario (card testing from day 42 by default), and a
first model is trained on its first five weeks and registered as champion. A labels
worker, a scoring worker (strict mode) and the retrainer run while every transaction
and its label are replayed on event time, paced so that the retrainer has wall time to
act while the stream moves on. The retrainer watches the stream, detects the drift,
trains challengers from the feature log with matured labels, gates them and swaps the
passing ones in without stopping the scorer. At the end the run folder holds the
report, its figures as JSON, the plot and the model-events; the same logged features
scored by the first model give the frozen counterfactual.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from infra.local.manager import Stack
from streams.clients.kafka_io import consume, topic_end_offsets
from streams.clients.router import ModelRouter
from streams.dataplane.worker import WorkerProcess, replay_workers
from streams.jobs.job import TRITON_REPO, load_model, log, reset_online_store, stage_seconds
from streams.lifecycle.retrain_policy import TriggerPolicy
from streams.records import Score
from streams.settings import Settings
from streams.topics import FEEDBACK, LABELS, MODEL_EVENTS, SCORES

DAY = 86400.0


@dataclass(frozen=True)
class LoopSize:
    """The simulated world, its drift, and how fast event time runs."""

    customers: int = 1000
    terminals: int = 2000
    days: int = 84
    drift: str = "card_testing:start=42,days=42,intensity=10"
    first_model_end_day: int = 35
    seconds_per_day: float = 4.0
    gate_days: int = 2
    valid_days: int = 2
    retrain_epochs: int = 10
    retrain_weeks: int = 3
    # While a drift persists, a retraining every this many event days (TriggerPolicy).
    follow_up_days: float = 2.0
    seed: int = 0
    # A team's own transactions instead of the simulator (the replay's columns), and the
    # day from which served and frozen scores are compared (default: the first model's end).
    parquet: str | None = None
    compare_from_day: int | None = None
    # "wall": the replay runs at seconds_per_day and the retrainer acts when its wall
    # time allows; "event": the loop's clock is event time (streams/replay/step_replay.py): a
    # day is replayed, scored and acted on before the next, the same figures on any
    # machine for a seed.
    clock: str = "wall"
    # Investigators (streams/lifecycle/investigators.py, event clock only): the cards reviewed a
    # day, whose labels come back that day on the feedback topic (0: no feedback), and
    # the share of them spent exploring.
    reviews_per_day: int = 0
    explore_share: float = 0.1


def simulate_world(size: LoopSize) -> pd.DataFrame:
    """The drifted world (or the ``parquet`` file's transactions) with every model
    feature (the batch reference)."""
    from models.drift import DriftSpec, apply_drift
    from models.extra_features import add_model_features
    from models.simulator import simulate

    if size.parquet is not None:
        from streams.jobs.bootstrap import load_history

        history = load_history(Path(size.parquet), None, 7.0)
        days = int(history["TX_TIME_DAYS"].max()) + 1
        if days < size.first_model_end_day + 14:
            raise ValueError(f"{size.parquet} holds {days} days: the loop needs the first "
                             f"model's {size.first_model_end_day} and two weeks after them")
        return add_model_features(history)

    # The seed picks the world: the customers' and the terminals' profiles (seed 0 is
    # the handbook's world, profiles 0 and 1) and the drift's draws.
    raw = simulate(n_customers=size.customers, n_terminals=size.terminals,
                   nb_days=size.days, seed_customers=size.seed, seed_terminals=size.seed + 1)
    specs = [DriftSpec.parse(size.drift)] if size.drift != "none" else []
    return add_model_features(apply_drift(raw, specs, seed=size.seed))


def drift_start_day(size: LoopSize) -> int:
    """The day from which served and frozen scores are compared."""
    if size.compare_from_day is not None:
        return size.compare_from_day
    if size.parquet is not None or size.drift == "none":
        # No drift to start from (a team's data, or a control run without drift): from
        # the day the first model went live.
        return size.first_model_end_day
    from models.drift import DriftSpec

    return int(DriftSpec.parse(size.drift).start_day)


def run_loop(size: LoopSize | None = None, *, settings: Settings | None = None,
             triton_repo: Path = TRITON_REPO, keep_up: bool = False) -> dict:
    """Run the closed loop once; returns the figures (also written to the run folder)."""
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES
    from models.recipe import DEFAULT_RECIPE
    from models.registry import Registry
    from models.trainer import train_version
    from streams.dataplane.feature_log import wait_for_feature_log
    from streams.jobs.loop_report import (
        evaluation_frame,
        loop_figures,
        plot_loop,
        report_markdown,
    )
    from streams.lifecycle.retrainer import RetrainerConfig, connect
    from streams.lifecycle.swap import SwapConfig, score_onnx
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay

    size = size or LoopSize()
    if size.clock not in ("wall", "event"):
        raise ValueError(f"the loop's clock is 'wall' or 'event', not {size.clock!r}")
    if size.clock == "event":
        import torch

        torch.set_num_threads(1)  # the same arithmetic on any machine
    run_id = uuid.uuid4().hex[:8]
    settings = settings or Settings.from_env()
    run_dir = settings.state_dir / "runs" / f"loop-{run_id}"
    run_dir.mkdir(parents=True)
    _log_retrainer(run_dir / "retrainer.log")
    settings = dataclasses.replace(settings, registry_dir=run_dir / "registry")
    stack = Stack(settings, triton_repo=triton_repo)
    already = {name for name, state in stack.status().items() if state == "up"}
    log("starting services")
    endpoints = stack.up()
    workers: list[WorkerProcess] = []
    stop = threading.Event()
    retrainer = None
    thread = None
    try:
        log("resetting the Feast online store and the model route")
        reset_online_store(endpoints.redis)
        log(f"reading {size.parquet}" if size.parquet else
            f"simulating {size.days} days of {size.customers:,} cards and "
            f"{size.terminals:,} terminals with drift {size.drift}")
        frame = simulate_world(size)
        frame["TRANSACTION_ID"] = (int(time.time()) % 10**8) * 10**7 + np.arange(len(frame))
        registry = Registry(settings.model_registry_dir, repo_dir=triton_repo)
        end = pd.Timestamp(frame["TX_DATETIME"].min().normalize()) + pd.Timedelta(
            days=size.first_model_end_day)
        first = frame[frame["TX_DATETIME"] < end]
        log(f"training the first model on the days before day {size.first_model_end_day} "
            f"({len(first):,} transactions)")
        entry = train_version(first, registry=registry, repo_dir=triton_repo,
                              trigger="initial", end=end, device="cpu")
        registry.set_champion(entry.version, "first model of the run")
        load_model(endpoints.triton, [entry.version], repo=triton_repo)
        router = ModelRouter(endpoints.redis)
        router.reset()
        router.promote(entry.version)
        router.close()
        log(f"version {entry.version} serves (validation AP "
            f"{entry.metrics['average_precision']:.3f})")

        workers = replay_workers(settings, f"loop-{run_id}", run_dir,
                                 steps=size.clock == "event")
        log("starting a labels worker, a scoring worker and the retrainer")
        for worker in workers:
            worker.start(endpoints.kafka)
        scores_start = topic_end_offsets(endpoints.kafka, settings, SCORES)
        events_start = topic_end_offsets(endpoints.kafka, settings, MODEL_EVENTS)
        labels_start = topic_end_offsets(endpoints.kafka, settings, LABELS)
        # Labels arrive a week late: short gate and validation windows let the first
        # days after a drift reach training a few days sooner. Warm starts need fewer
        # epochs than a first model, and fewer weeks: the parent's weights carry the
        # older ones, the recent weeks weigh more, and a cycle takes less wall time.
        swap = SwapConfig()
        if size.clock == "event":
            # Nothing is scored while the retrainer acts: no shadow traffic to wait for,
            # and a scorer waiting for the next day acknowledges no route.
            swap = dataclasses.replace(swap, shadow_rows=0, drain_timeout_s=1.0)
        config = RetrainerConfig(
            feature_log=run_dir / "feature_log", repo_dir=triton_repo,
            gate_days=size.gate_days, valid_days=size.valid_days, swap=swap,
            trigger=TriggerPolicy(follow_up_days=size.follow_up_days),
            recipe=dataclasses.replace(DEFAULT_RECIPE, max_epochs=size.retrain_epochs,
                                       patience=2, train_weeks=size.retrain_weeks))
        retrainer = connect(config, settings, kafka=endpoints.kafka,
                            redis_url=endpoints.redis, triton_url=endpoints.triton,
                            labels_group=f"loop-{run_id}-retrainer",
                            labels_start=labels_start,
                            feedback_start=topic_end_offsets(endpoints.kafka, settings,
                                                             FEEDBACK))
        live_from = frame["TX_DATETIME"].min().normalize() + pd.Timedelta(
            days=size.first_model_end_day)
        wanted = set(frame["TRANSACTION_ID"].tolist())
        reviews: list[dict] = []
        began = time.monotonic()
        if size.clock == "event":
            log(f"replaying {len(frame):,} transactions and their labels a day at a time: "
                "each day scored and acted on by the retrainer before the next")
            received, reviews = _run_on_event_clock(
                frame, endpoints.kafka, settings, scores_start, workers, retrainer,
                run_dir / "feature_log", live_from, size)
        else:
            if size.reviews_per_day:
                raise ValueError("investigator feedback runs on the event clock only")
            thread = threading.Thread(target=_retrain_when_live, daemon=True, args=(
                retrainer, run_dir / "feature_log", live_from, stop))
            thread.start()
            speed = DAY / size.seconds_per_day
            log(f"replaying {len(frame):,} transactions and their labels, one event day "
                f"every {size.seconds_per_day:g} s")
            replay(Dataset.from_frame(frame), endpoints.kafka, settings,
                   ReplayOptions(speed=speed))
            received = _wait_for(endpoints.kafka, settings, scores_start, wanted, workers)
        wall = time.monotonic() - began
        stop.set()
        if thread is not None:
            thread.join(timeout=120)
        events = [json.loads(m.value) for m in consume(
            endpoints.kafka, settings, MODEL_EVENTS, start=events_start,
            until=lambda got: False, timeout_s=5)]

        log("writing the report")
        scores = [s for s in (Score.parse(m.value) for m in received) if s.tx_id in wanted]
        logged = wait_for_feature_log(run_dir / "feature_log", wanted)
        labels = frame.set_index("TRANSACTION_ID")["TX_FRAUD"]
        evaluation = evaluation_frame(logged, labels)
        names = [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
        reference = frame.set_index("TRANSACTION_ID").loc[logged["tx_id"]]
        skew = ~np.isclose(logged[names].to_numpy(np.float64),
                           reference[MODEL_FEATURE_COLUMNS].to_numpy(np.float64),
                           rtol=0, atol=1e-6).all(axis=1)
        frozen = score_onnx(triton_repo / "fraud_detector" / str(entry.version) / "model.onnx",
                            logged[names].to_numpy(np.float32))
        start_day = drift_start_day(size)
        log("the label-delay oracle: a model retrained every day on the labels known then")
        oracle = label_delay_oracle_scores(evaluation, frame, size, config.recipe, registry,
                                           entry.version)
        known = (size.parquet is None and size.drift != "none") or (
            size.compare_from_day is not None)
        figures = loop_figures(evaluation, frozen, start_day, events, oracle, known)
        plot_loop(evaluation, frozen, start_day, events, run_dir / "loop.png", oracle, reviews)
        summary = {
            "run": run_id, "size": dataclasses.asdict(size), "first_version": entry.version,
            "transactions": len(frame), "scored": len({s.tx_id for s in scores}),
            "duplicates": len(scores) - len({s.tx_id for s in scores}),
            "skew_rows": int(skew.sum()), "wall_s": round(wall, 1),
            "events_per_s": round(len(frame) / wall, 1),
            "figures": figures.to_dict(),
            "stage_seconds": stage_seconds(workers),
            "feedback": {"reviews_per_day": size.reviews_per_day,
                         "explore_share": size.explore_share,
                         "labels": sum(r["labels"] for r in reviews),
                         "fraud_cards_found": sum(r["fraud_cards"] for r in reviews),
                         "explored_fraud_cards": sum(r["explored_fraud_cards"]
                                                     for r in reviews),
                         "days": reviews},
            "registry": [dataclasses.asdict(v) for v in registry.list()],
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (run_dir / "model-events.jsonl").write_text(
            "".join(json.dumps(e, default=str) + "\n" for e in events))
        text = report_markdown(figures, known_drift=known)
        text += (f"\nscored {summary['scored']:,} of {len(frame):,} transactions "
                 f"({summary['duplicates']} duplicates, {summary['skew_rows']} rows whose "
                 f"features differ from the batch reference) in {wall:.0f} s")
        (run_dir / "report.md").write_text(text + "\n")
        print("\n" + text)
        log(f"run folder: {run_dir} (report.md, loop.png, summary.json, model-events.jsonl)")
        return summary
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=60)
        if retrainer is not None:
            retrainer.close()
        for worker in workers:
            worker.stop()
        if not keep_up:
            stack.down([n for n in stack.services if n not in already])


def label_delay_oracle_scores(evaluation: pd.DataFrame, world: pd.DataFrame, size: LoopSize,
                              recipe, registry, first_version: int) -> np.ndarray:  # noqa: ANN001
    """The oracle's scores (:mod:`models.oracle`) of the logged rows from the day the
    first model went live: retrained every day, warm-started from the first model, with
    the retrainer's recipe and the world's label delays."""
    from models.drift import LABEL_DELAY_COLUMN
    from models.extra_features import SERVING_NAMES
    from models.oracle import label_delay_oracle
    from models.trainer import load_weights, weights_path

    rows = evaluation.rename(columns={v: k for k, v in SERVING_NAMES.items()})
    if LABEL_DELAY_COLUMN in world.columns:
        delays = world.set_index("TRANSACTION_ID")[LABEL_DELAY_COLUMN]
        rows[LABEL_DELAY_COLUMN] = delays.reindex(rows["tx_id"]).to_numpy()
    rows = rows.drop(columns=[c for c in ("TX_DATETIME",) if c in rows.columns])
    first, _ = load_weights(weights_path(registry, first_version))
    last_day = int(rows["TX_TIME_DAYS"].max())
    return label_delay_oracle(rows, size.first_model_end_day, last_day + 1, recipe=recipe,
                              valid_days=size.valid_days, init=first, daily_epochs=3)


def run_seeds(size: LoopSize, seeds: list[int], *, settings: Settings | None = None,
              triton_repo: Path = TRITON_REPO, keep_up: bool = False) -> dict[int, dict]:
    """The loop once a seed (one world each), then a table of the figures with their
    mean and spread; returns each seed's summary."""
    from streams.jobs.loop_report import seeds_markdown

    settings = settings or Settings.from_env()
    summaries = {}
    for n, seed in enumerate(seeds):
        log(f"seed {seed} ({n + 1} of {len(seeds)})")
        summaries[seed] = run_loop(dataclasses.replace(size, seed=seed), settings=settings,
                                   triton_repo=triton_repo,
                                   keep_up=keep_up or n < len(seeds) - 1)
    table = seeds_markdown({seed: s["figures"] for seed, s in summaries.items()})
    path = settings.state_dir / "runs" / f"seeds-{'-'.join(map(str, seeds))}.md"
    path.write_text(f"clock {size.clock}, drift {size.drift}\n\n{table}\n")
    print(f"\n{table}\n")
    log(f"figures by seed: {path} (each run's folder is named above)")
    return summaries


def _retrain_when_live(retrainer, feature_log: Path, live_from: pd.Timestamp,  # noqa: ANN001
                       stop: threading.Event) -> None:
    """Start the retrainer once the stream reaches the day the first model went live.

    The days before are the history the first model was trained on, replayed so that
    the stream's state is the batch reference's; their terminal features warm up from
    nothing, which drift monitors would rightly call a shift.
    """
    wanted = f"event_date={live_from.date().isoformat()}"
    while not stop.is_set():
        if any(p.name >= wanted for p in feature_log.glob("event_date=*")):
            break
        stop.wait(1.0)
    if stop.is_set():
        return
    log(f"the stream reached {live_from.date()}: the retrainer starts watching it")
    retrainer.start()
    retrainer.run(stop)


class _ScoreReader:
    """The scores topic read on from given offsets, a little at a time."""

    def __init__(self, kafka: str, settings: Settings, start: dict[int, int]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({**settings.kafka.client_config(kafka),
                                  "group.id": f"reader-{uuid.uuid4().hex[:12]}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(SCORES, p, o) for p, o in start.items()])
        self.values: list[bytes] = []
        self.score: dict[int, float] = {}

    def read(self, timeout_s: float = 0.2) -> list[int]:
        """The transaction ids of the scores that arrived."""
        ids = []
        for message in self.consumer.consume(num_messages=20_000, timeout=timeout_s):
            value = message.value()
            if message.error() or value is None:
                continue
            self.values.append(value)
            score = Score.parse(value)
            self.score[score.tx_id] = score.score
            ids.append(score.tx_id)
        return ids

    def scores_of(self, tx_ids: np.ndarray) -> np.ndarray:
        """The scores read of ``tx_ids`` (each must have arrived)."""
        return np.array([self.score[int(t)] for t in tx_ids], np.float64)

    def close(self) -> None:
        self.consumer.close()


def _run_on_event_clock(frame: pd.DataFrame, kafka: str, settings: Settings,
                        scores_start: dict[int, int], workers: list[WorkerProcess],
                        retrainer, feature_log: Path,  # noqa: ANN001
                        live_from: pd.Timestamp, size: LoopSize, stall_s: float = 0.3,
                        timeout_s: float = 600.0) -> tuple[list, list[dict]]:
    """Replay ``frame`` a day at a time (:mod:`streams.replay.step_replay`): each day is scored
    and in the feature log, investigators have reviewed its cards (with
    ``size.reviews_per_day``), the retrainer has read every label sent and taken its
    step (drift decisions, retraining, the gate, the swap) before the next day is sent.
    Returns the scores and each day's review (day, cards, explored, frauds found)."""
    from streams.clients.kafka_io import Received
    from streams.dataplane.feature_log import wait_for_feature_log
    from streams.lifecycle.investigators import review_cards
    from streams.replay.dataset import Dataset
    from streams.replay.step_replay import StepReplay

    dataset = Dataset.from_frame(frame)
    stepper = StepReplay(dataset, kafka, settings)
    reader = _ScoreReader(kafka, settings, scores_start)
    ids = frame["TRANSACTION_ID"].to_numpy()
    first = frame["TX_DATETIME"].min().normalize()
    days = int((frame["TX_DATETIME"].max() - first) / pd.Timedelta(days=1)) + 1
    origin = first.timestamp()
    live = live_from.timestamp()
    # The history before the first model went live goes in one step: nothing acts on it,
    # and strict scoring gives its features whatever the step size.
    live_day = max(1, min(days, int(round((live - origin) / DAY))))
    started = False
    reviews: list[dict] = []
    fraud = frame["TX_FRAUD"].to_numpy()
    review_rng = np.random.default_rng([size.seed, 7])
    try:
        for day in range(live_day, days + 1):
            clock = origin + day * DAY
            rows = stepper.send_before(clock, lookahead_s=6 * 3600) if day < days else np.arange(
                stepper.next_row, len(dataset))
            if day == days:
                stepper.finish()
            missing = set(ids[rows].tolist())
            quiet_since = changed = time.monotonic()
            while missing:
                got = reader.read()
                missing.difference_update(got)
                now = time.monotonic()
                if got:
                    changed = quiet_since = now
                if not all(w.alive() for w in workers):
                    raise RuntimeError("a worker stopped; see its log in the run folder")
                if missing and now - quiet_since > stall_s:
                    # The newest events wait for a label known after them on every
                    # labels partition (strict scoring): send the next ones.
                    stepper.send_more_labels(500)
                    quiet_since = now
                if now - changed > timeout_s:
                    raise RuntimeError(f"{len(missing):,} transactions of day {day} not "
                                       f"scored in {timeout_s:.0f} s")
            if clock <= live:
                continue
            if len(rows):
                wait_for_feature_log(feature_log, set(ids[rows].tolist()), timeout_s=120,
                                     poll_s=0.1, since_date=str(frame["TX_DATETIME"].iloc[
                                         rows[0]].date()))
            if not started:
                log(f"the stream reached {live_from.date()}: the retrainer starts watching it")
                retrainer.start()
                started = True
            if size.reviews_per_day and len(rows):
                reviews.append(_review_day(reader, stepper, rows, fraud, clock, day, size,
                                           review_rng, review_cards))
                ends = topic_end_offsets(kafka, settings, FEEDBACK)
                while not retrainer.feedback.reached(ends):
                    retrainer.book.add(retrainer.feedback.poll(), feedback=True)
            ends = topic_end_offsets(kafka, settings, LABELS)
            while not retrainer.labels.reached(ends):
                retrainer.book.add(retrainer.labels.poll())
            report = retrainer.step()
            if report.trigger is not None or day % 7 == 0:
                outcome = report.outcome.status if report.outcome else "-"
                log(f"day {day}: {len(reader.values):,} scored; retrainer: "
                    f"{report.decisions} drift decisions, trigger "
                    f"{report.trigger.kind if report.trigger else '-'}, outcome {outcome}")
    finally:
        reader.close()
        stepper.client.flush(10)
    return [Received(None, value, [], 0, 0) for value in reader.values], reviews


def _review_day(reader: _ScoreReader, stepper, rows: np.ndarray,  # noqa: ANN001
                fraud: np.ndarray, clock: float, day: int, size: LoopSize,
                rng: np.random.Generator, review_cards) -> dict:  # noqa: ANN001
    """The investigators' day: the cards to review among the day's scored rows, and
    their transactions' true labels of the day sent as feedback, known at its end."""
    ids = stepper.dataset.tx_id[rows]
    by_id = reader.scores_of(ids)
    cards = stepper.dataset.card_id[rows]
    review = review_cards(cards, by_id, size.reviews_per_day, size.explore_share, rng)
    reviewed = rows[np.isin(cards, review.cards)]
    stepper.send_feedback(reviewed, clock)
    fraud_cards = set(cards[np.isin(cards, review.cards) & (fraud[rows] == 1)].tolist())
    explored = set(review.cards[review.explored].tolist())
    return {"day": day - 1, "cards": len(review), "labels": len(reviewed),
            "fraud_cards": len(fraud_cards), "explored": len(explored),
            "explored_fraud_cards": len(fraud_cards & explored)}


def _log_retrainer(path: Path) -> None:
    """The retrainer's log to the run folder; its decisions on the console too."""
    import logging

    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                  "%H:%M:%S")
    to_file = logging.FileHandler(path)
    to_file.setFormatter(formatter)
    to_console = logging.StreamHandler()
    to_console.setFormatter(formatter)
    to_console.setLevel(logging.INFO)
    for name in ("streams.lifecycle.retrainer", "streams.lifecycle.swap",
                 "streams.lifecycle.champion", "streams.lifecycle.model_events"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(to_file)
        logger.addHandler(to_console)


def _wait_for(kafka: str, settings: Settings, start: dict[int, int], wanted: set[int],
              workers: list[WorkerProcess], timeout_s: float | None = None) -> list:
    seen: set[int] = set()
    checked = 0

    def done(received: list) -> bool:
        nonlocal checked
        for message in received[checked:]:
            seen.add(Score.parse(message.value).tx_id)
        checked = len(received)
        if not all(w.alive() for w in workers):
            raise RuntimeError("a worker stopped; see its log in the run folder")
        return seen >= wanted

    received = consume(kafka, settings, SCORES, until=done, start=start,
                       timeout_s=timeout_s or max(1800.0, 0.01 * len(wanted)),
                       progress="scores")
    if not seen >= wanted:
        raise RuntimeError(f"{len(wanted - seen):,} transactions were not scored in time")
    return received

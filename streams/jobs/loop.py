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
from pathlib import Path

import numpy as np
import pandas as pd

from infra.local.manager import Stack
from streams.clients.kafka_io import consume, topic_end_offsets
from streams.clients.router import ModelRouter
from streams.clients.triton_models import TRITON_REPO, load_model
from streams.dataplane.worker import WorkerProcess, replay_workers
from streams.jobs.job import log, reset_online_store, stage_seconds
from streams.jobs.loop_event_clock import run_on_event_clock
from streams.jobs.loop_world import (
    DAY,
    LoopSize,
    drift_start_day,
    label_delay_oracle_scores,
    simulate_world,
)
from streams.lifecycle.retrain_policy import TriggerPolicy
from streams.records import Score
from streams.settings import Settings
from streams.topics import FEEDBACK, LABELS, MODEL_EVENTS, SCORES, kafka_layout


def run_loop(size: LoopSize | None = None, *, settings: Settings | None = None,
             triton_repo: Path = TRITON_REPO, keep_up: bool = False) -> dict:
    """Run the closed loop once; returns the figures (also written to the run folder)."""
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES
    from models.feature_log import wait_for_feature_log
    from models.recipe import DEFAULT_RECIPE
    from models.registry import Registry
    from models.trainer import train_version
    from streams.jobs.loop_report import (
        evaluation_frame,
        loop_figures,
        plot_loop,
        report_markdown,
    )
    from streams.lifecycle.retrainer import connect
    from streams.lifecycle.retrainer_config import RetrainerConfig
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
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=triton_repo)
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
            received, reviews = run_on_event_clock(
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

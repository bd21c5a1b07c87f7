"""The closed loop on the event clock: a day replayed, scored and acted on before the next.

:func:`run_on_event_clock` steps the replay a day at a time
(:mod:`streams.replay.step_replay`), waits until the day is scored and in the feature log,
lets the simulated investigators review its cards (with feedback) and the retrainer read
every label and take its step; the figures are then the same on any machine for a seed.
:class:`ScoreReader` reads the scores topic on as the days go.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from streams.clients.kafka_io import topic_end_offsets
from streams.dataplane.worker import WorkerProcess
from streams.jobs.job import log
from streams.jobs.loop_world import DAY, LoopSize
from streams.records import Score
from streams.settings import Settings
from streams.topics import FEEDBACK, LABELS, SCORES


class ScoreReader:
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


def run_on_event_clock(frame: pd.DataFrame, kafka: str, settings: Settings,
                        scores_start: dict[int, int], workers: list[WorkerProcess],
                        retrainer, feature_log: Path,  # noqa: ANN001
                        live_from: pd.Timestamp, size: LoopSize, stall_s: float = 0.3,
                        timeout_s: float = 600.0) -> tuple[list, list[dict]]:
    """Replay ``frame`` a day at a time (:mod:`streams.replay.step_replay`): each day is scored
    and in the feature log, investigators have reviewed its cards (with
    ``size.reviews_per_day``), the retrainer has read every label sent and taken its
    step (drift decisions, retraining, the gate, the swap) before the next day is sent.
    Returns the scores and each day's review (day, cards, explored, frauds found)."""
    from models.feature_log import wait_for_feature_log
    from streams.clients.kafka_io import Received
    from streams.lifecycle.investigators import review_cards
    from streams.replay.dataset import Dataset
    from streams.replay.step_replay import StepReplay

    dataset = Dataset.from_frame(frame)
    stepper = StepReplay(dataset, kafka, settings)
    reader = ScoreReader(kafka, settings, scores_start)
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


def _review_day(reader: ScoreReader, stepper, rows: np.ndarray,  # noqa: ANN001
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

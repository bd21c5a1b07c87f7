"""What the retrainer reads: the scoring worker's feature log, part by part, and the
``labels`` topic, joined on ``tx_id`` once a label is known in event time.

:class:`FeatureLogTail` reads each parquet part once (parts are renamed into place
whole, so a part seen is complete) and keeps a small index of every logged row: ids,
event time, card, the served score and version, the shadow's score and version.
:class:`LabelBook` keeps the labels read so far and hands out, once each, the labels
that have matured by "now" and whose transaction is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.feature_log import read_feature_log
from streams.records import Label, ValidationError
from streams.settings import Settings

INDEX_COLUMNS = ("tx_id", "event_time", "card_id", "score", "model_version", "shadow_score",
                 "shadow_version")
_DEFAULTS = {"shadow_score": np.nan, "shadow_version": 0}


def _with_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """A part written before the log had shadow columns reads as "no shadow"."""
    for column, value in _DEFAULTS.items():
        if column not in frame.columns:
            frame[column] = value
    return frame


class FeatureLogTail:
    """New rows of a feature log since the previous :meth:`poll`, and an index of all."""

    def __init__(self, root: Path | str, feature_names: Sequence[str]) -> None:
        self.root = Path(root)
        self.feature_names = list(feature_names)
        self._seen_files: set[str] = set()
        self.index = pd.DataFrame({c: pd.Series(dtype=np.float64 if c in (
            "event_time", "score", "shadow_score") else np.int64) for c in INDEX_COLUMNS})

    @property
    def now(self) -> float | None:
        """The latest logged event time: the stream's "now"."""
        return float(self.index["event_time"].max()) if len(self.index) else None

    def poll(self) -> pd.DataFrame:
        """Rows of the parts written since the last call, redelivered repeats dropped.

        The frame has :data:`INDEX_COLUMNS` and the feature columns.
        """
        files = sorted(str(p) for p in self.root.glob("event_date=*/part-*.parquet"))
        new = [f for f in files if f not in self._seen_files]
        if not new:
            return pd.DataFrame(columns=[*INDEX_COLUMNS, *self.feature_names])
        frame = pd.concat([_with_defaults(pq.read_table(f).to_pandas()) for f in new],
                          ignore_index=True)
        self._seen_files.update(new)
        frame = frame.drop_duplicates("tx_id")
        frame = frame[~frame["tx_id"].isin(self.index["tx_id"])]
        frame = frame.sort_values(["event_time", "tx_id"], kind="stable").reset_index(drop=True)
        if len(frame):
            rows = frame[list(INDEX_COLUMNS)]
            self.index = (rows.copy() if self.index.empty
                          else pd.concat([self.index, rows], ignore_index=True))
        return frame

    def prune(self, before: float) -> None:
        """Forget index rows older than ``before`` (event time)."""
        self.index = self.index[self.index["event_time"] >= before].reset_index(drop=True)

    def rows(self, tx_ids: np.ndarray) -> pd.DataFrame:
        """The logged rows (features included) of ``tx_ids``, read again from the parts."""
        log = _with_defaults(read_feature_log(self.root))
        return log[log["tx_id"].isin(tx_ids)].reset_index(drop=True)


class LabelBook:
    """Labels read so far; each matured label joins its logged row once.

    A transaction can hold two labels: the one that arrives after the label delay, and
    an investigator's verdict (``feedback``) the day its card was reviewed. Training
    takes the earlier one known; the drift monitors only the delayed ones, an unbiased
    sample (reviewed cards are the ones the model already ranked first).
    """

    def __init__(self) -> None:
        self.frame = pd.DataFrame({
            "tx_id": pd.Series(dtype=np.int64), "is_fraud": pd.Series(dtype=np.int64),
            "known_at": pd.Series(dtype=np.float64), "fed": pd.Series(dtype=bool),
            "feedback": pd.Series(dtype=bool),
        })

    def __len__(self) -> int:
        return len(self.frame)

    def add(self, labels: Sequence[Label], feedback: bool = False) -> int:
        """Keep new labels (a repeated ``tx_id`` keeps its first label of that source);
        returns how many."""
        if not labels:
            return 0
        new = pd.DataFrame({
            "tx_id": np.array([label.tx_id for label in labels], np.int64),
            "is_fraud": np.array([label.is_fraud for label in labels], np.int64),
            "known_at": np.array([label.known_at for label in labels], np.float64),
            "fed": np.full(len(labels), feedback),  # the monitors never take feedback
            "feedback": np.full(len(labels), feedback),
        }).drop_duplicates("tx_id")
        same = self.frame[self.frame["feedback"] == feedback]
        new = new[~new["tx_id"].isin(same["tx_id"])]
        self.frame = (new.reset_index(drop=True) if self.frame.empty
                      else pd.concat([self.frame, new], ignore_index=True))
        return len(new)

    def take_matured(self, index: pd.DataFrame, now: float) -> pd.DataFrame:
        """Labels known by ``now`` whose row is in ``index``, not handed out before.

        Returns the index rows with ``is_fraud`` and ``known_at``.
        """
        waiting = self.frame[~self.frame["fed"] & (self.frame["known_at"] <= now)]
        joined = index.merge(waiting[["tx_id", "is_fraud", "known_at"]], on="tx_id",
                             how="inner")
        self.frame.loc[self.frame["tx_id"].isin(joined["tx_id"]), "fed"] = True
        return joined

    def records(self) -> pd.DataFrame:
        """``tx_id``, ``is_fraud``, ``known_at``, ``feedback`` of every label (the
        trainer's input), the delayed labels first: where both are known, the delayed
        one counts (:func:`models.feature_log.with_matured_labels` keeps the first)."""
        return self.frame.sort_values("feedback", kind="stable")[
            ["tx_id", "is_fraud", "known_at", "feedback"]]

    def prune(self, before: float) -> None:
        """Forget labels known before ``before`` (event time)."""
        self.frame = self.frame[self.frame["known_at"] >= before].reset_index(drop=True)


class LabelFeed:
    """Reads ``labels`` with confluent-kafka, from given offsets or the beginning.

    The retrainer rebuilds its labels from the topic at every start (its training
    window is weeks long), so offsets are never committed; the group only names the
    reader.
    """

    def __init__(self, bootstrap: str, settings: Settings, group: str,
                 start: dict[int, int] | None = None, topic: str | None = None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from streams.topics import LABELS

        self.topic = topic or LABELS
        self.invalid = 0
        self.consumer = Consumer({**settings.kafka.client_config(bootstrap), "group.id": group,
                                  "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
        if start is None:
            metadata = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            start = dict.fromkeys(metadata.partitions, OFFSET_BEGINNING)
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in start.items()])

    def poll(self, max_messages: int = 200_000, timeout_s: float = 0.2) -> list[Label]:
        """The labels that arrived since the last call (at most ``max_messages``)."""
        labels: list[Label] = []
        chunk = 10_000
        while len(labels) < max_messages:
            batch = self.consumer.consume(num_messages=chunk, timeout=timeout_s)
            for message in batch:
                if message.error():
                    continue
                try:
                    labels.append(Label.parse(message.value()))
                except ValidationError:
                    self.invalid += 1
            # A short batch means the backlog is read: return rather than follow a
            # stream that keeps arriving, or the step would never end.
            if len(batch) < chunk:
                break
        return labels

    def reached(self, ends: dict[int, int]) -> bool:
        """Whether every label before ``ends`` (partition -> offset) has been read."""
        from confluent_kafka import TopicPartition

        positions = self.consumer.position([TopicPartition(self.topic, p) for p in ends])
        for tp in positions:
            offset = tp.offset
            if offset < 0:  # nothing fetched yet: the partition's first offset
                offset = self.consumer.get_watermark_offsets(tp, timeout=10)[0]
            if offset < ends[tp.partition]:
                return False
        return True

    def close(self) -> None:
        self.consumer.close()

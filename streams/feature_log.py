"""The offline feature log: every scored transaction's features exactly as served.

One parquet file a micro-batch and event date, under
``<root>/event_date=YYYY-MM-DD/``, with the transaction's ids and times, each feature in
the model's order, the score and the model version, and the shadow version's score while
a challenger shadows the serving model (``shadow_version`` 0 and ``shadow_score`` NaN
otherwise). Files are written to a temporary
name and renamed, so a reader never sees half a file; delivery is at least once, so a
reader drops repeated ``tx_id`` (they carry identical features).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ID_COLUMNS = ("tx_id", "event_time", "card_id", "terminal_id")
OUTPUT_COLUMNS = ("score", "model_version", "shadow_score", "shadow_version")


class FeatureLog:
    """Writes feature-log parts for one worker."""

    def __init__(self, root: Path, feature_names: list[str]) -> None:
        self.root = Path(root)
        self.feature_names = list(feature_names)
        self.writer_id = uuid.uuid4().hex[:12]
        self.sequence = 0

    def write(self, ids: dict[str, np.ndarray], features: np.ndarray, scores: np.ndarray,
              model_version: int, shadow_scores: np.ndarray | None = None,
              shadow_version: int = 0) -> int:
        """Write one micro-batch; returns the number of files written."""
        if shadow_scores is None:
            shadow_scores = np.full(len(scores), np.nan)
        days = (ids["event_time"] // 86400).astype(np.int64)
        written = 0
        for day in np.unique(days):
            rows = days == day
            columns = {name: ids[name][rows] for name in ID_COLUMNS}
            for j, name in enumerate(self.feature_names):
                columns[name] = features[rows, j].astype(np.float64)
            columns["score"] = scores[rows].astype(np.float64)
            columns["model_version"] = np.full(int(rows.sum()), model_version, np.int64)
            columns["shadow_score"] = shadow_scores[rows].astype(np.float64)
            columns["shadow_version"] = np.full(int(rows.sum()), shadow_version, np.int64)
            date = np.datetime64(int(day), "D").astype(str)
            folder = self.root / f"event_date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            self.sequence += 1
            name = f"part-{self.writer_id}-{self.sequence:08d}.parquet"
            tmp = folder / f".{name}.tmp"
            pq.write_table(pa.table(columns), tmp)
            os.replace(tmp, folder / name)
            written += 1
        return written


def read_feature_log(root: Path) -> pd.DataFrame:
    """Every logged row, one a ``tx_id`` (repeats from redelivery dropped), by ``tx_id``."""
    files = sorted(Path(root).glob("event_date=*/part-*.parquet"))
    if not files:
        return pd.DataFrame()
    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return frame.drop_duplicates("tx_id").sort_values("tx_id").reset_index(drop=True)


def with_matured_labels(log: pd.DataFrame, labels: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """The logged rows whose label is known by ``as_of`` (event time), with the label.

    ``labels`` has the label record's fields (``tx_id``, ``is_fraud``, ``known_at``); a
    row whose label is not known yet is left out, so training and live quality only ever
    see labels that existed at ``as_of``.
    """
    matured = labels.loc[labels["known_at"] <= as_of, ["tx_id", "is_fraud", "known_at"]]
    matured = matured.drop_duplicates("tx_id")
    return log.merge(matured, on="tx_id", how="inner", validate="one_to_one")

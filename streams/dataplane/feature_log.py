"""The offline feature log: every scored transaction's features exactly as served.

One parquet file a checkpoint (or a write) and event date, under
``<root>/event_date=YYYY-MM-DD/``, with the transaction's ids and times, each feature in
the model's order, the score and the model version, and the shadow version's score while
a challenger shadows the serving model (``shadow_version`` 0 and ``shadow_score`` NaN
otherwise). Files are written to a temporary
name and renamed, so a reader never sees half a file; delivery is at least once, so a
reader drops repeated ``tx_id`` (they carry identical features).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

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
        self._pending: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int,
                                  np.ndarray | None, int]] = []
        self.pending_rows = 0

    def append(self, ids: dict[str, np.ndarray], features: np.ndarray, scores: np.ndarray,
               model_version: int, shadow_scores: np.ndarray | None = None,
               shadow_version: int = 0) -> None:
        """Keep a micro-batch's rows for the next :meth:`write_pending` (the worker's
        checkpoint), so that a part holds many batches' rows, not one."""
        self._pending.append((ids, features, scores, model_version, shadow_scores,
                              shadow_version))
        self.pending_rows += len(scores)

    def discard_pending(self) -> None:
        """Forget rows not written yet (their batches are handled again)."""
        self._pending, self.pending_rows = [], 0

    def take_pending(self) -> list[Any]:
        """The rows kept so far, no longer kept here (for :meth:`write_pending`)."""
        pending, self._pending, self.pending_rows = self._pending, [], 0
        return pending

    def write_pending(self, pending: list[Any] | None = None) -> int:
        """Write ``pending`` (by default the rows kept since the last call); returns the
        number of files written."""
        if pending is None:
            pending = self.take_pending()
        if not pending:
            return 0
        ids = {name: np.concatenate([p[0][name] for p in pending]) for name in ID_COLUMNS}
        features = np.concatenate([p[1] for p in pending])
        scores = np.concatenate([p[2] for p in pending])
        versions = np.concatenate([np.full(len(p[2]), p[3], np.int64) for p in pending])
        shadow_scores = np.concatenate([
            p[4] if p[4] is not None else np.full(len(p[2]), np.nan) for p in pending])
        shadow_versions = np.concatenate([np.full(len(p[2]), p[5], np.int64)
                                          for p in pending])
        return self.write(ids, features, scores, versions, shadow_scores, shadow_versions)

    def write(self, ids: dict[str, np.ndarray], features: np.ndarray, scores: np.ndarray,
              model_version: int | np.ndarray, shadow_scores: np.ndarray | None = None,
              shadow_version: int | np.ndarray = 0) -> int:
        """Write rows now (one file an event date); returns the number of files written."""
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
            columns["model_version"] = np.broadcast_to(
                np.asarray(model_version, np.int64), len(scores))[rows].copy()
            columns["shadow_score"] = shadow_scores[rows].astype(np.float64)
            columns["shadow_version"] = np.broadcast_to(
                np.asarray(shadow_version, np.int64), len(scores))[rows].copy()
            date = np.datetime64(int(day), "D").astype(str)
            folder = self.root / f"event_date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            self.sequence += 1
            name = f"part-{self.writer_id}-{self.sequence:08d}.parquet"
            tmp = folder / f".{name}.tmp"
            try:
                pq.write_table(pa.table(columns), tmp)
                os.replace(tmp, folder / name)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a full disk keeps no partial file
                raise
            written += 1
        return written


def read_feature_log(root: Path, since_date: str | None = None) -> pd.DataFrame:
    """Every logged row, one a ``tx_id`` (repeats from redelivery dropped), by ``tx_id``;
    with ``since_date`` (``YYYY-MM-DD``), only the event dates from it on."""
    files = sorted(f for f in Path(root).glob("event_date=*/part-*.parquet")
                   if since_date is None or f.parent.name >= f"event_date={since_date}")
    if not files:
        return pd.DataFrame()
    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return frame.drop_duplicates("tx_id").sort_values("tx_id").reset_index(drop=True)


def wait_for_feature_log(root: Path, tx_ids: set[int], timeout_s: float = 60.0,
                         poll_s: float = 0.5, since_date: str | None = None) -> pd.DataFrame:
    """:func:`read_feature_log` once it holds every id of ``tx_ids``.

    A worker writes its feature-log rows at its checkpoint (every second by default), so
    the rows of the latest scores appear up to a checkpoint interval after them. Raises
    ``TimeoutError`` with the count still missing.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        frame = read_feature_log(root, since_date)
        held = set(frame["tx_id"].tolist()) if len(frame) else set()
        missing = len(tx_ids - held)
        if not missing:
            return frame
        if time.monotonic() > deadline:
            raise TimeoutError(f"{missing:,} of {len(tx_ids):,} transactions not in the "
                               f"feature log at {root} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def with_matured_labels(log: pd.DataFrame, labels: pd.DataFrame, as_of: float) -> pd.DataFrame:
    """The logged rows whose label is known by ``as_of`` (event time), with the label.

    ``labels`` has the label record's fields (``tx_id``, ``is_fraud``, ``known_at``); a
    row whose label is not known yet is left out, so training and live quality only ever
    see labels that existed at ``as_of``.
    """
    columns = ["tx_id", "is_fraud", "known_at", *(["feedback"] if "feedback" in labels else [])]
    matured = labels.loc[labels["known_at"] <= as_of, columns]
    matured = matured.drop_duplicates("tx_id")
    return log.merge(matured, on="tx_id", how="inner", validate="one_to_one")

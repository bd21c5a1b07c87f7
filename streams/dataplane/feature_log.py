"""The writer of the offline feature log: every scored transaction's features exactly as
served.

One parquet file a checkpoint (or a write) and event date, in the format
:mod:`models.feature_log` describes and reads (the contract between the workers that write
the log and the trainer and retrainer that read it). Files are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.feature_log import ID_COLUMNS


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

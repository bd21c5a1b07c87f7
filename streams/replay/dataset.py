"""What a replay sends and when: a validated dataset, its records, the label schedule, pacing.

Nothing here talks to Kafka, so that the replay producer (:mod:`streams.replay.producer`) is a
thin loop around it; the checkpoint file and the progress line live here too. A dataset
is validated completely before anything is produced; a bad column gives one
:class:`DatasetError` that names it. Records are encoded a chunk at a time with Arrow's
string kernels, about three times faster than formatting each row in Python; numbers
are written in their shortest round-trip form, so ``json.loads`` gives back the exact
values. Event times are whole seconds since the epoch (UTC); a fraction of a second in
the data is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

REQUIRED_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
LABEL_COLUMN = "TX_FRAUD"
DELAY_COLUMN = "LABEL_DELAY_DAYS"
SECONDS_PER_DAY = 86400


class DatasetError(ValueError):
    """A dataset that cannot be replayed; the message names the column at fault."""


def validate_frame(df: pd.DataFrame, labels: bool = True) -> None:
    """Check every column the replay reads, before anything is produced.

    Raises
    ------
    DatasetError
        Naming the first column that is missing, has missing values, has the wrong
        type or invalid values, or (TX_DATETIME) is not sorted.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"column {missing[0]!r} is missing (required: "
                           f"{', '.join(REQUIRED_COLUMNS)}, and {LABEL_COLUMN} for labels)")
    if labels and LABEL_COLUMN not in df.columns:
        raise DatasetError(f"column {LABEL_COLUMN!r} is missing: labels need it "
                           "(replay without labels with --no-labels)")
    wanted = [*REQUIRED_COLUMNS, *([LABEL_COLUMN] if labels else []),
              *([DELAY_COLUMN] if DELAY_COLUMN in df.columns else [])]
    for name in wanted:
        column = df[name]
        if column.isna().any():
            row = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DatasetError(f"column {name!r} has {int(column.isna().sum())} missing "
                               f"values (first at row {row})")
        kind = column.dtype.kind
        if name == "TX_DATETIME":
            if not pd.api.types.is_datetime64_any_dtype(column.dtype):
                raise DatasetError(f"column {name!r} must be a timestamp, got {column.dtype}")
        elif name in ("TX_AMOUNT", DELAY_COLUMN):
            if kind not in "iuf":
                raise DatasetError(f"column {name!r} must be numeric, got {column.dtype}")
            values = column.to_numpy(np.float64)
            if not np.isfinite(values).all() or (values < 0).any():
                raise DatasetError(f"column {name!r} must be finite and >= 0")
        elif name == LABEL_COLUMN:
            if kind not in "iub" or not column.isin([0, 1]).all():
                raise DatasetError(f"column {name!r} must hold 0 or 1, got {column.dtype}")
        elif kind not in "iu":
            raise DatasetError(f"column {name!r} must be integers, got {column.dtype}")
        elif (column.to_numpy() < 0).any():
            raise DatasetError(f"column {name!r} must be >= 0")
    if df["TRANSACTION_ID"].duplicated().any():
        value = df["TRANSACTION_ID"][df["TRANSACTION_ID"].duplicated()].iloc[0]
        raise DatasetError(f"column 'TRANSACTION_ID' has duplicates (e.g. {value})")
    times = _epoch_ns(df["TX_DATETIME"])
    unsorted = np.flatnonzero(np.diff(times) < 0)
    if len(unsorted):
        row = int(unsorted[0]) + 1
        raise DatasetError(f"column 'TX_DATETIME' is not sorted: row {row} is earlier than "
                           f"row {row - 1}; sort the file by TX_DATETIME first")


def _epoch_ns(column: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch; naive timestamps are taken as UTC."""
    if getattr(column.dtype, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return column.to_numpy("datetime64[ns]").view(np.int64)


@dataclass(frozen=True)
class Dataset:
    """Columns of a validated table, as the replay reads them (event time in seconds)."""

    tx_id: np.ndarray
    event_time: np.ndarray
    card_id: np.ndarray
    terminal_id: np.ndarray
    amount: np.ndarray
    is_fraud: np.ndarray | None
    delay_s: np.ndarray

    @classmethod
    def from_frame(cls, df: pd.DataFrame, labels: bool = True,
                   default_delay_days: float = 7.0) -> Dataset:
        """Validate ``df`` and take its columns; ``LABEL_DELAY_DAYS`` overrides the default."""
        validate_frame(df, labels)
        delays = (df[DELAY_COLUMN].to_numpy(np.float64) if DELAY_COLUMN in df.columns
                  else np.full(len(df), float(default_delay_days)))
        return cls(
            tx_id=df["TRANSACTION_ID"].to_numpy(np.int64),
            event_time=_epoch_ns(df["TX_DATETIME"]) // 10**9,
            card_id=df["CUSTOMER_ID"].to_numpy(np.int64),
            terminal_id=df["TERMINAL_ID"].to_numpy(np.int64),
            amount=df["TX_AMOUNT"].to_numpy(np.float64),
            is_fraud=df[LABEL_COLUMN].to_numpy(np.int64) if labels else None,
            delay_s=np.rint(delays * SECONDS_PER_DAY).astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.tx_id)

    def fingerprint(self) -> str:
        """A digest of the replayed content, the key of the checkpoint."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.tx_id, self.event_time, self.card_id, self.terminal_id,
                      self.amount, self.delay_s,
                      self.is_fraud if self.is_fraud is not None else np.zeros(0)):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def encode_transactions(self, start: int, end: int) -> tuple[list[bytes], list[bytes]]:
        """Keys (card id) and JSON values of rows ``start..end-1``."""
        cards = _text(self.card_id[start:end])
        values = _join('{"v":1,"tx_id":', self.tx_id[start:end],
                       ',"event_time":', self.event_time[start:end],
                       ',"card_id":', cards, ',"terminal_id":', self.terminal_id[start:end],
                       ',"amount":', self.amount[start:end], "}")
        return _binary(cards), values

    def encode_labels(self, rows: np.ndarray, known_at: np.ndarray | None = None
                      ) -> tuple[list[bytes], list[bytes]]:
        """Keys (terminal id) and JSON label values of ``rows``, known after their delay
        (or at ``known_at``: an investigator's verdict)."""
        if self.is_fraud is None:
            raise DatasetError(f"column {LABEL_COLUMN!r} is missing: labels need it")
        terminals = _text(self.terminal_id[rows])
        times = self.event_time[rows]
        values = _join('{"v":1,"tx_id":', self.tx_id[rows], ',"card_id":', self.card_id[rows],
                       ',"terminal_id":', terminals, ',"event_time":', times,
                       ',"is_fraud":', self.is_fraud[rows],
                       ',"known_at":',
                       times + self.delay_s[rows] if known_at is None else known_at, "}")
        return _binary(terminals), values


def _text(values: np.ndarray | pa.Array) -> pa.Array:
    """Numbers as their shortest round-trip decimal text."""
    return values if isinstance(values, pa.Array) else pc.cast(pa.array(values), pa.string())


def _binary(text: pa.Array) -> list[bytes]:
    return pc.cast(text, pa.binary()).to_pylist()


def _join(*parts: str | np.ndarray | pa.Array) -> list[bytes]:
    """Concatenate literals and columns row by row into one bytes object a row."""
    columns = [part if isinstance(part, str) else _text(part) for part in parts]
    return _binary(pc.binary_join_element_wise(*columns, ""))


@dataclass(frozen=True)
class LabelSchedule:
    """Labels in the order they become known: ``rows[j]`` is known at ``due[j]``."""

    rows: np.ndarray
    due: np.ndarray

    @classmethod
    def build(cls, event_time: np.ndarray, delay_s: np.ndarray) -> LabelSchedule:
        known_at = event_time + delay_s
        rows = np.argsort(known_at, kind="stable")
        return cls(rows=rows, due=known_at[rows])

    def due_end(self, position: int, clock: int, sent_rows: int) -> int:
        """End of the labels due when the replay clock is ``clock``.

        Labels ``position..end-1`` are due: known at or before ``clock``, and of a
        transaction among the first ``sent_rows`` (a zero delay would otherwise let a
        label overtake its own transaction within one second).
        """
        end = int(np.searchsorted(self.due, clock, side="right"))
        if end <= position:
            return position
        unsent = np.flatnonzero(self.rows[position:end] >= sent_rows)
        return position + int(unsent[0]) if len(unsent) else end


def paced_end(event_time: np.ndarray, next_row: int, stop_row: int, origin: int,
              elapsed_s: float, speed: float | None) -> tuple[int, float]:
    """Which rows are due at ``speed`` times real time, and how long to wait otherwise.

    The replay started at event time ``origin``; after ``elapsed_s`` wall seconds the
    event clock is ``origin + elapsed_s * speed``. Returns the end of the due rows
    (``next_row`` when none is due) and the wall seconds until the next row is due
    (0 when some are). ``speed`` None means as fast as possible: every row is due.
    """
    if speed is None or next_row >= stop_row:
        return stop_row, 0.0
    clock = origin + elapsed_s * speed
    end = next_row + int(np.searchsorted(event_time[next_row:stop_row], clock, side="right"))
    if end > next_row:
        return end, 0.0
    return next_row, float(event_time[next_row] - clock) / speed


class Checkpoint:
    """Where a replay of one dataset stands, in ``<state_dir>/producer/<fingerprint>.json``."""

    def __init__(self, state_dir: Path, fingerprint: str) -> None:
        self.path = state_dir / "producer" / f"{fingerprint}.json"
        self.fingerprint = fingerprint

    def load(self) -> tuple[int, int] | None:
        """``(next_row, label_position)``, or None without a checkpoint."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") != self.fingerprint:
            return None
        return int(data["next_row"]), int(data["label_position"])

    def save(self, next_row: int, label_position: int, **info: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"fingerprint": self.fingerprint, "next_row": next_row,
                                       "label_position": label_position, **info}, indent=2))
        os.replace(partial, self.path)


class Progress:
    """One updating line on stderr: events, events/s, the event-time clock."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.began = self.shown = time.monotonic()

    def show(self, sent: int, labels: int, clock: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < (0.5 if self.tty else 10)):
            return
        self.shown = now
        rate = sent / max(now - self.began, 1e-9)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock)) if clock else "-"
        line = (f"replay {sent:,}/{self.total:,} tx  {rate:,.0f} tx/s  "
                f"{labels:,} labels  event time {stamp}")
        end = "\n" if final or not self.tty else ""
        print(f"\r{line}\x1b[K" if self.tty else line, end=end, file=sys.stderr, flush=True)

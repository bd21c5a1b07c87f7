"""The offline feature log: its format, and the readers that train and retrain on it.

The scoring workers log every scored transaction's features exactly as served
(:class:`streams.dataplane.feature_log.FeatureLog` writes it); the trainer and the
retrainer read it. One parquet file a checkpoint (or a write) and event date, under
``<root>/event_date=YYYY-MM-DD/``, with the transaction's ids and times
(:data:`ID_COLUMNS`), each feature in the model's order, the score and the model version,
and the shadow version's score while a challenger shadows the serving model
(:data:`OUTPUT_COLUMNS`; ``shadow_version`` 0 and ``shadow_score`` NaN otherwise). Files
are written to a temporary name and renamed, so a reader never sees half a file; delivery
is at least once, so a reader drops repeated ``tx_id`` (they carry identical features).

Feature columns are named as the feature service names them, ``<view>__<field>``
(``streams.clients.feast_client.model_feature_order``); :func:`log_feature_names` maps
them to the model's feature names, and :func:`frame_from_feature_log` turns the log and
the labels known so far into a training frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.reference_features import TARGET_COLUMN

if TYPE_CHECKING:
    from models.recipe import Recipe

ID_COLUMNS = ("tx_id", "event_time", "card_id", "terminal_id")
OUTPUT_COLUMNS = ("score", "model_version", "shadow_score", "shadow_version")

FEEDBACK_COLUMN = "FEEDBACK"
"""True on a row of :func:`frame_from_feature_log` whose label came from feedback."""

# The batch columns prefix the entity where the feature service prefixes the view.
_VIEW_PREFIXES = {"card_activity": "CUSTOMER_ID_", "terminal_risk": "TERMINAL_ID_"}


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


def log_feature_names(columns: list[str], features: tuple[str, ...]) -> dict[str, str]:
    """Map feature-log column names to the model's feature names.

    ``tx_amount`` is ``TX_AMOUNT``; ``card_activity__nb_tx_1day`` is
    ``CUSTOMER_ID_NB_TX_1DAY_WINDOW`` and ``terminal_risk__known_fraud_run`` is
    ``TERMINAL_ID_KNOWN_FRAUD_RUN``; a column already named as a feature is kept.
    """
    wanted = set(features)
    mapping: dict[str, str] = {}
    for column in columns:
        view, sep, name = column.partition("__")
        if sep and view in _VIEW_PREFIXES:
            base = _VIEW_PREFIXES[view] + name.upper()
            candidates = [base, f"{base}_WINDOW"]
        else:
            candidates = [column, column.upper()]
        for candidate in candidates:
            if candidate in wanted:
                mapping[column] = candidate
                break
    return mapping


def read_labels(path: Path | str) -> pd.DataFrame:
    """Label records (``tx_id``, ``is_fraud``, ``known_at``) from parquet or CSV."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _recipe_or_default(recipe: Recipe | None) -> Recipe:
    """``recipe``, or :data:`models.recipe.DEFAULT_RECIPE` (imported only here: the
    workers that write the log import this module and need no torch)."""
    if recipe is not None:
        return recipe
    from models.recipe import DEFAULT_RECIPE

    return DEFAULT_RECIPE


def recent_rows(path: Path | str, since: float, recipe: Recipe | None = None
                ) -> pd.DataFrame:
    """The logged rows from event time ``since`` on, labelled or not, with
    ``recipe.features`` (by default :data:`models.recipe.DEFAULT_RECIPE`'s): after a gate
    window, the traffic whose labels have not matured, which no challenger has trained on
    (the score's reference)."""
    recipe = _recipe_or_default(recipe)
    day = pd.Timestamp(since, unit="s").strftime("%Y-%m-%d")
    log = read_feature_log(Path(path), since_date=day)
    if log.empty:
        return pd.DataFrame(columns=list(recipe.features))
    log = log[log["event_time"].to_numpy(np.float64) >= since]
    mapping = log_feature_names(list(log.columns), recipe.features)
    return log.rename(columns=mapping)[list(recipe.features)].reset_index(drop=True)


def frame_from_feature_log(
    path: Path | str,
    labels: pd.DataFrame | Path | str,
    *,
    as_of: float | None = None,
    recipe: Recipe | None = None,
) -> pd.DataFrame:
    """The stream's served features of the transactions whose labels are known.

    Parameters
    ----------
    path
        The feature log folder (``<run>/feature_log``).
    labels
        Label records (``tx_id``, ``is_fraud``, ``known_at``), or a parquet/CSV file of
        them.
    as_of
        Event time (Unix seconds) at which labels count as known; defaults to the
        latest logged event time, the stream's "now".
    recipe
        Whose features the frame must hold; by default
        :data:`models.recipe.DEFAULT_RECIPE`.

    Returns
    -------
    pandas.DataFrame
        One row a labelled transaction, with ``recipe.features`` and
        :data:`models.trainer.FRAME_COLUMNS` (and TRANSACTION_ID, TERMINAL_ID,
        :data:`FEEDBACK_COLUMN`), ready for :func:`models.trainer.train_version`.

    Raises
    ------
    ValueError
        When the log is empty or lacks some of the recipe's features.
    """
    recipe = _recipe_or_default(recipe)
    log = read_feature_log(Path(path))
    if log.empty:
        raise ValueError(f"no feature log parts under {path}")
    mapping = log_feature_names(list(log.columns), recipe.features)
    missing = [f for f in recipe.features if f not in mapping.values()]
    if missing:
        raise ValueError(
            f"the feature log at {path} lacks the recipe's features {missing}; "
            f"it holds {[c for c in log.columns if c not in ('score', 'model_version')]}"
        )
    if not isinstance(labels, pd.DataFrame):
        labels = read_labels(labels)
    cut = float(log["event_time"].max()) if as_of is None else float(as_of)
    joined = with_matured_labels(log, labels, cut)
    event_time = joined["event_time"].to_numpy(dtype=np.float64)
    frame = joined.rename(columns=mapping)[list(recipe.features)].copy()
    frame["TRANSACTION_ID"] = joined["tx_id"].to_numpy()
    frame["TX_DATETIME"] = pd.to_datetime(event_time, unit="s")
    frame["TX_TIME_DAYS"] = (event_time // 86400).astype(np.int64)
    frame["CUSTOMER_ID"] = joined["card_id"].to_numpy()
    frame["TERMINAL_ID"] = joined["terminal_id"].to_numpy()
    frame[TARGET_COLUMN] = joined["is_fraud"].to_numpy(dtype=np.int64)
    # Known only through an investigator's verdict so far (the delayed label is not).
    frame[FEEDBACK_COLUMN] = (joined["feedback"].to_numpy(dtype=bool) if "feedback" in joined
                              else np.zeros(len(joined), bool))
    frame = frame.sort_values("TX_DATETIME", kind="stable").reset_index(drop=True)
    # The stream's windows began with the log's first event: rows less than a window
    # after it are in the warm-up, whatever their label (see
    # models.trainer.save_training_profile).
    frame.attrs["history_start"] = float(log["event_time"].min())
    return frame

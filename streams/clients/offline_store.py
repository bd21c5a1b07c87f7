"""Feast's offline store, filled from the offline feature log.

The feature log holds every scored transaction's features exactly as served. Exporting
it as the batch sources of the feature views (``feature_repo/data/*.parquet``) makes
``get_historical_features`` build point-in-time training sets from the very numbers the
model was served: the card view's values at each card transaction, and the terminal
view's window values as seen by each transaction on the terminal.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.feature_log import read_feature_log
from streams.clients.feast_client import CARD_VIEW, FEATURE_REPO, TERMINAL_VIEW


def export_offline(feature_log: Path, data_dir: Path = FEATURE_REPO / "data") -> dict[str, int]:
    """Write the card and terminal batch sources from the feature log; rows a view."""
    log = read_feature_log(feature_log)
    if log.empty:
        raise ValueError(f"the feature log at {feature_log} is empty")
    timestamp = pd.to_datetime(log["event_time"], unit="s", utc=True)
    written = {}
    for view, key in ((CARD_VIEW, "card_id"), (TERMINAL_VIEW, "terminal_id")):
        prefix = f"{view}__"
        columns = {c: c[len(prefix):] for c in log.columns if c.startswith(prefix)}
        frame = log[[key, *columns]].rename(columns=columns)
        for name in frame.columns:
            if name.startswith("nb_tx"):
                frame[name] = frame[name].astype("int64")
        frame.insert(1, "event_timestamp", timestamp)
        frame["created"] = pd.Timestamp.now(tz="UTC")
        # One row a key and second: the last served value of that second wins.
        frame = frame.drop_duplicates([key, "event_timestamp"], keep="last")
        data_dir.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(data_dir / f"{view}.parquet", index=False)
        written[view] = len(frame)
    return written


def training_set(store, entities: pd.DataFrame,  # noqa: ANN001 - feast type
                 service: str = "fraud_detector_v1") -> pd.DataFrame:
    """Point-in-time features of the service for ``entities``.

    ``entities`` has ``card_id``, ``terminal_id`` and ``event_timestamp`` (UTC), one row
    a transaction, plus any label columns to carry along.
    """
    feature_service = store.get_feature_service(service)
    return store.get_historical_features(
        entity_df=entities, features=feature_service, full_feature_names=True
    ).to_df()

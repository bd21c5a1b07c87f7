"""The stream's view of Feast: the feature order, pushes, and online reads.

The feature service of a model version (``fraud_detector_v1``) is the contract between
training and serving; :func:`model_feature_order` reads it from the Feast registry so the
order is written down once, in ``feature_repo/features.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from streams.clients.label_versions import mark_changed, versions_key
from streams.settings import REPO_ROOT

if TYPE_CHECKING:
    from streams.clients.redis_conn import Client

FEATURE_REPO = REPO_ROOT / "feature_repo"
TRANSACTION_FEATURES = ("tx_amount", "tx_during_weekend", "tx_during_night")
CARD_VIEW = "card_activity"
TERMINAL_VIEW = "terminal_risk"
LabelArrays = tuple[np.ndarray | Sequence[float], np.ndarray | Sequence[float],
                    np.ndarray | Sequence[int]]
"""A terminal's label arrays as pushed: event times, known times, frauds (arrays or lists)."""


def feast_redis_connection(redis_url: str) -> str:
    """Turn ``redis[+cluster]://[[user]:password@]host:port/db`` into Feast's
    ``host:port,username=..,password=..`` form (a cluster's node to start from)."""
    from streams.clients.redis_conn import server_url

    parsed = urlparse(server_url(redis_url))
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError("REDIS_URL must start with redis://, rediss://, redis+cluster:// or "
                         f"rediss+cluster://, got {urlparse(redis_url).scheme!r}")
    parts = [f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"]
    credentials = {"username": parsed.username, "password": parsed.password}
    for name, value in credentials.items():
        if value and "," in unquote(value):
            # Feast splits its connection string on commas.
            raise ValueError(f"the Redis {name} must not contain ',' (Feast's connection "
                             "string cannot hold it)")
    if parsed.username:
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    db = parsed.path.lstrip("/")
    if db and db != "0":
        parts.append(f"db={db}")
    return ",".join(parts)


def open_store(redis_url: str, repo: Path = FEATURE_REPO):  # noqa: ANN201 - feast type
    """A Feast ``FeatureStore`` on ``repo`` whose online store is ``redis_url``: a Redis
    Cluster when it says ``redis+cluster://`` (whatever ``redis_type`` the file has)."""
    from feast import FeatureStore
    from feast.infra.online_stores.redis import RedisType

    from streams.clients.redis_conn import is_cluster

    os.environ["FEAST_REDIS_CONNECTION"] = feast_redis_connection(redis_url)
    store = FeatureStore(repo_path=str(repo))
    online = store.config.online_store
    wanted = RedisType.redis_cluster if is_cluster(redis_url) else RedisType.redis
    if getattr(online, "redis_type", RedisType.redis) not in (RedisType.redis, wanted):
        raise ValueError(f"{repo / 'feature_store.yaml'} says redis_type "
                         f"{online.redis_type.value!r} but REDIS_URL names one server: "
                         "give a Redis Cluster as redis+cluster://host:port")
    if wanted == RedisType.redis_cluster:
        online.redis_type = wanted
    return store


def apply_repo(redis_url: str, repo: Path = FEATURE_REPO) -> None:
    """The equivalent of ``feast -c feature_repo apply``, done in-process."""
    from feast.repo_operations import apply_total, cli_check_repo

    os.environ["FEAST_REDIS_CONNECTION"] = feast_redis_connection(redis_url)
    (repo / "data").mkdir(exist_ok=True)
    store = open_store(redis_url, repo)
    cli_check_repo(repo, repo / "feature_store.yaml")
    apply_total(store.config, repo, skip_source_validation=True)


def ensure_applied(redis_url: str, repo: Path = FEATURE_REPO) -> bool:
    """Apply the repository when its registry file is missing (a fresh clone or a new
    container, whose file system has none); True when it was applied now."""
    if (repo / "data" / "registry.db").exists():
        return False
    apply_repo(redis_url, repo)
    return True


def model_feature_order(store, service: str = "fraud_detector_v1") -> list[str]:  # noqa: ANN001
    """Model input names in order: the transaction's own, then the service's features."""
    feature_service = store.get_feature_service(service)
    names = list(TRANSACTION_FEATURES)
    for projection in feature_service.feature_view_projections:
        names += [f"{projection.name}__{field.name}" for field in projection.features]
    return names


class OnlineFeatures:
    """Batched pushes of card features and reads of terminal features through Feast."""

    def __init__(self, store, service: str = "fraud_detector_v1") -> None:  # noqa: ANN001
        from feast.types import Int64

        self.store = store
        feature_service = store.get_feature_service(service)
        self.views = {p.name: [f.name for f in p.features]
                      for p in feature_service.feature_view_projections}
        self.integers = {p.name: {f.name for f in p.features if f.dtype == Int64}
                         for p in feature_service.feature_view_projections}
        self.order = model_feature_order(store, service)
        self._redis: Client | None = None

    def push_card_activity(self, card_ids: np.ndarray, event_times: np.ndarray,
                           values: np.ndarray) -> None:
        """Push one row per card (the latest state) to the card view, online."""
        from feast.data_source import PushMode

        frame = pd.DataFrame(values, columns=self.views[CARD_VIEW])
        for name in self.integers[CARD_VIEW]:
            frame[name] = frame[name].astype("int64")
        frame.insert(0, "card_id", card_ids.astype("int64"))
        frame["event_timestamp"] = pd.to_datetime(event_times, unit="s", utc=True)
        self.store.push("card_activity_push", frame, to=PushMode.ONLINE)

    def push_terminal_risk(self, terminal_ids: np.ndarray, event_times: np.ndarray,
                           values: np.ndarray,
                           arrays: Sequence[LabelArrays] | None = None,
                           ) -> None:
        """Push one row per terminal: its window values and the label arrays behind them."""
        from feast.data_source import PushMode

        frame = pd.DataFrame(values, columns=self.views[TERMINAL_VIEW])
        for name in self.integers[TERMINAL_VIEW]:
            frame[name] = frame[name].astype("int64")
        frame.insert(0, "terminal_id", terminal_ids.astype("int64"))
        arrays = arrays if arrays is not None else [([], [], [])] * len(frame)
        frame["label_event_times"] = [list(map(float, a[0])) for a in arrays]
        frame["label_known_at"] = [list(map(float, a[1])) for a in arrays]
        frame["label_frauds"] = [list(map(int, a[2])) for a in arrays]
        frame["event_timestamp"] = pd.to_datetime(event_times, unit="s", utc=True)
        self.store.push("terminal_risk_push", frame, to=PushMode.ONLINE)
        # The change tokens that tell the fast path's scorers to read these arrays again.
        from streams.clients.redis_conn import redis_client

        if self._redis is None:
            self._redis = redis_client(self.store)
        if len(terminal_ids):
            self._redis.execute_command(*mark_changed(
                versions_key(self.store.project, TERMINAL_VIEW), terminal_ids))

    def read_terminal_labels(self, terminal_ids: np.ndarray
                             ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each terminal's label arrays (event times, known times, frauds); empty if none."""
        unique = np.unique(terminal_ids.astype("int64"))
        names = ("label_event_times", "label_known_at", "label_frauds")
        response = self.store.get_online_features(
            features=[f"{TERMINAL_VIEW}:{name}" for name in names],
            entity_rows=[{"terminal_id": int(i)} for i in unique],
        ).to_dict()
        result = {}
        for row, terminal in enumerate(unique.tolist()):
            times, known, frauds = (response[name][row] or [] for name in names)
            result[terminal] = (np.asarray(times, dtype=np.float64),
                                np.asarray(known, dtype=np.float64),
                                np.asarray(frauds, dtype=np.int64))
        return result

    def read(self, view: str, key: str, ids: np.ndarray) -> np.ndarray:
        """Online values of ``view`` for ``ids`` in the service's field order; missing -> 0."""
        names = self.views[view]
        unique, inverse = np.unique(ids.astype("int64"), return_inverse=True)
        response = self.store.get_online_features(
            features=[f"{view}:{name}" for name in names],
            entity_rows=[{key: int(i)} for i in unique],
        ).to_dict()
        table = np.zeros((len(unique), len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            column = response[name]
            table[:, j] = [0.0 if v is None else float(v) for v in column]
        return table[inverse]

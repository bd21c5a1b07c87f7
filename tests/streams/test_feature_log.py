"""The offline feature log: atomic parts by event date, repeats dropped, label joins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.feature_log import read_feature_log, with_matured_labels
from streams.dataplane.feature_log import FeatureLog

NAMES = ["tx_amount", "card_activity__nb_tx_1day"]


def write(log: FeatureLog, tx_ids: list[int], times: list[float]) -> None:
    n = len(tx_ids)
    ids = {"tx_id": np.array(tx_ids), "event_time": np.array(times),
           "card_id": np.arange(n), "terminal_id": np.arange(n) + 100}
    features = np.column_stack([np.array(tx_ids) * 1.5, np.ones(n)])
    log.write(ids, features, np.array(tx_ids) / 10, model_version=2)


def test_parts_by_event_date_and_repeats_dropped(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path, NAMES)
    write(log, [1, 2, 3], [86400 * 10 + 5, 86400 * 10 + 6, 86400 * 11])
    write(log, [3, 4], [86400 * 11, 86400 * 12])  # tx 3 redelivered
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["event_date=1970-01-11", "event_date=1970-01-12", "event_date=1970-01-13"]
    assert not list(tmp_path.glob("*/.*.tmp"))
    frame = read_feature_log(tmp_path)
    assert frame["tx_id"].tolist() == [1, 2, 3, 4]
    assert frame["tx_amount"].tolist() == [1.5, 3.0, 4.5, 6.0]
    assert set(frame["model_version"]) == {2}


def test_join_keeps_only_labels_known_by_the_cut(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path, NAMES)
    write(log, [1, 2, 3], [100.0, 200.0, 300.0])
    labels = pd.DataFrame({"tx_id": [1, 2, 3], "is_fraud": [0, 1, 0],
                           "known_at": [700.0, 800.0, 900.0]})
    joined = with_matured_labels(read_feature_log(tmp_path), labels, as_of=800.0)
    assert joined["tx_id"].tolist() == [1, 2]
    assert joined["is_fraud"].tolist() == [0, 1]

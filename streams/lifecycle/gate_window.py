"""The gate's rows: the labelled rows of a feature-log frame in a gate window.

:func:`gate_window` turns the window :func:`streams.lifecycle.retrain_policy.gate_split`
chose into the :class:`models.gate.GateWindow` the gate judges a challenger and the
champion on (the retrainer's gate and ``factory model promote``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.gate import GateWindow
from models.reference_features import TARGET_COLUMN
from streams.lifecycle.retrain_policy import GateSplit


def gate_window(frame: pd.DataFrame, split: GateSplit, features: Sequence[str]) -> GateWindow:
    """The labelled rows of ``frame`` (:func:`models.feature_log.frame_from_feature_log`) in
    the gate window ``split``."""
    times = frame["TX_DATETIME"].to_numpy("datetime64[s]").astype(np.int64)
    rows = frame[(times >= split.start) & (times < split.end)]
    return GateWindow(features=rows[list(features)].to_numpy(np.float32),
                      labels=rows[TARGET_COLUMN].to_numpy(np.int64),
                      cards=rows["CUSTOMER_ID"].to_numpy(),
                      days=rows["TX_TIME_DAYS"].to_numpy())

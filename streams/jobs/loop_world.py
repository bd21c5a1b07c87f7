"""The closed loop's world: its size and drift, its transactions, and the yardsticks.

:class:`LoopSize` says what ``factory run`` simulates (or reads with ``--parquet``) and how
fast event time runs; :func:`simulate_world` makes the transactions with every model
feature (the batch reference), :func:`drift_start_day` the day from which served and
frozen scores are compared, and :func:`label_delay_oracle_scores` the label-delay oracle
the report measures the loop against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86400.0


@dataclass(frozen=True)
class LoopSize:
    """The simulated world, its drift, and how fast event time runs."""

    customers: int = 1000
    terminals: int = 2000
    days: int = 84
    drift: str = "card_testing:start=42,days=42,intensity=10"
    first_model_end_day: int = 35
    seconds_per_day: float = 4.0
    gate_days: int = 2
    valid_days: int = 2
    retrain_epochs: int = 10
    retrain_weeks: int = 3
    # While a drift persists, a retraining every this many event days (TriggerPolicy).
    follow_up_days: float = 2.0
    seed: int = 0
    # A team's own transactions instead of the simulator (the replay's columns), and the
    # day from which served and frozen scores are compared (default: the first model's end).
    parquet: str | None = None
    compare_from_day: int | None = None
    # "wall": the replay runs at seconds_per_day and the retrainer acts when its wall
    # time allows; "event": the loop's clock is event time (streams/replay/step_replay.py): a
    # day is replayed, scored and acted on before the next, the same figures on any
    # machine for a seed.
    clock: str = "wall"
    # Investigators (streams/lifecycle/investigators.py, event clock only): the cards reviewed a
    # day, whose labels come back that day on the feedback topic (0: no feedback), and
    # the share of them spent exploring.
    reviews_per_day: int = 0
    explore_share: float = 0.1


def simulate_world(size: LoopSize) -> pd.DataFrame:
    """The drifted world (or the ``parquet`` file's transactions) with every model
    feature (the batch reference)."""
    from models.drift import apply_drift
    from models.drift_spec import DriftSpec
    from models.extra_features import add_model_features
    from models.simulator import simulate

    if size.parquet is not None:
        from streams.jobs.bootstrap import load_history

        history = load_history(Path(size.parquet), None, 7.0)
        days = int(history["TX_TIME_DAYS"].max()) + 1
        if days < size.first_model_end_day + 14:
            raise ValueError(f"{size.parquet} holds {days} days: the loop needs the first "
                             f"model's {size.first_model_end_day} and two weeks after them")
        return add_model_features(history)

    # The seed picks the world: the customers' and the terminals' profiles (seed 0 is
    # the handbook's world, profiles 0 and 1) and the drift's draws.
    raw = simulate(n_customers=size.customers, n_terminals=size.terminals,
                   nb_days=size.days, seed_customers=size.seed, seed_terminals=size.seed + 1)
    specs = [DriftSpec.parse(size.drift)] if size.drift != "none" else []
    return add_model_features(apply_drift(raw, specs, seed=size.seed))


def drift_start_day(size: LoopSize) -> int:
    """The day from which served and frozen scores are compared."""
    if size.compare_from_day is not None:
        return size.compare_from_day
    if size.parquet is not None or size.drift == "none":
        # No drift to start from (a team's data, or a control run without drift): from
        # the day the first model went live.
        return size.first_model_end_day
    from models.drift_spec import DriftSpec

    return int(DriftSpec.parse(size.drift).start_day)


def label_delay_oracle_scores(evaluation: pd.DataFrame, world: pd.DataFrame, size: LoopSize,
                              recipe, registry, first_version: int) -> np.ndarray:  # noqa: ANN001
    """The oracle's scores (:mod:`models.oracle`) of the logged rows from the day the
    first model went live: retrained every day, warm-started from the first model, with
    the retrainer's recipe and the world's label delays."""
    from models.extra_features import LABEL_DELAY_COLUMN, SERVING_NAMES
    from models.oracle import label_delay_oracle
    from models.trainer import load_weights, weights_path

    rows = evaluation.rename(columns={v: k for k, v in SERVING_NAMES.items()})
    if LABEL_DELAY_COLUMN in world.columns:
        delays = world.set_index("TRANSACTION_ID")[LABEL_DELAY_COLUMN]
        rows[LABEL_DELAY_COLUMN] = delays.reindex(rows["tx_id"]).to_numpy()
    rows = rows.drop(columns=[c for c in ("TX_DATETIME",) if c in rows.columns])
    first, _ = load_weights(weights_path(registry, first_version))
    last_day = int(rows["TX_TIME_DAYS"].max())
    return label_delay_oracle(rows, size.first_model_end_day, last_day + 1, recipe=recipe,
                              valid_days=size.valid_days, init=first, daily_epochs=3)

"""Drift scenarios beyond the handbook, applied to a simulated transaction table.

Each scenario is switched on by a :class:`DriftSpec` (start day, duration in days,
intensity) and runs as an extra step after the handbook's scenario 3, on the finished
table: :func:`apply_drift` ``(df, specs, seed) -> df``. Steps are deterministic given the
seed, and never change a row before their start day, so the handbook data stays bit for
bit the same when no drift is asked for and before any drift starts.

The spec is in :mod:`models.drift_spec`, the scenarios and what a model trained before
the drift experiences under each in :mod:`models.drift_scenarios`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from models.drift_scenarios import card_testing, label_delay, night_spree, spending_shift
from models.drift_spec import KIND_CODES, DriftSpec


def apply_drift(df: pd.DataFrame, specs: Sequence[DriftSpec], seed: int = 0) -> pd.DataFrame:
    """Apply drift scenarios to a simulator-shaped table.

    Parameters
    ----------
    df
        Raw transactions (columns of :data:`models.simulator.RAW_COLUMNS`, optionally
        ``LABEL_DELAY_DAYS``), chronological in TRANSACTION_ID order.
    specs
        Scenarios to apply. Row-changing scenarios run in the given order; label
        delays are set last so that added rows get theirs.
    seed
        Seed of every random draw; each scenario and day draws from its own stream.

    Returns
    -------
    pandas.DataFrame
        A new table; with no spec, an unchanged copy.
    """
    out = df.copy()
    if not specs:
        return out
    if not out["TRANSACTION_ID"].is_monotonic_increasing:
        out = out.sort_values("TRANSACTION_ID", kind="stable")
    out = out.reset_index(drop=True)
    ordered = [s for s in specs if s.kind != "label_delay"]
    ordered += [s for s in specs if s.kind == "label_delay"]
    for index, spec in enumerate(ordered):
        step = {"card_testing": card_testing, "spending_shift": spending_shift,
                "label_delay": label_delay, "night_spree": night_spree}[spec.kind]
        out = step(out, spec, _stream_seed(seed, index, spec))
    return out


def _stream_seed(seed: int, index: int, spec: DriftSpec) -> list[int]:
    return [seed, KIND_CODES[spec.kind], index, spec.start_day]


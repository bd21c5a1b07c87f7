"""What the retrainer watches of the serving model: its drift monitor, fed with the rows
it scored and their matured labels.

The monitor needs the champion's :class:`~models.reference_profile.ReferenceProfile`, kept
beside its registry entry as ``<registry>/profiles/<n>.json``. A version the retrainer
trained has one from its training rows; for any other (a first model, a hand-published
one) the profile is built from the first day of rows it scored in the feature log, and
monitoring starts after that day. The concept monitors compare live quality with the
figures the gate measured for the version, when it went through the gate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.drift_decisions import DriftDecision, DriftThresholds
from models.drift_monitor import DriftMonitor
from models.label_quality import QualityBaseline
from models.model_version import ModelVersion
from models.reference_profile import ReferenceProfile
from models.registry import Registry, UnknownVersionError, published_dirs, write_text_atomic
from models.simulator import SECONDS_PER_DAY
from models.triton_config import MODEL_NAME


def profile_path(registry: Registry, version: int) -> Path:
    """Where the reference profile of ``version`` is kept."""
    return registry.profile_path(version)


def save_profile(registry: Registry, version: int, profile: ReferenceProfile) -> Path:
    """Write the profile of ``version`` (atomically)."""
    return write_text_atomic(profile_path(registry, version), profile.to_json())


def choose_champion(registry: Registry, repo_dir: Path) -> int:
    """The registry's champion; on a first start, the newest published version becomes
    it (recorded with trigger ``initial`` when it has no entry yet)."""
    champion = registry.champion()
    if champion is None:
        published = [v for v in published_dirs(repo_dir)
                     if (repo_dir / MODEL_NAME / str(v) / "model.onnx").exists()]
        if not published:
            raise RuntimeError(f"no published version of {MODEL_NAME} in {repo_dir}")
        champion = published[-1]
        try:
            registry.get(champion)
        except UnknownVersionError:
            registry.record(ModelVersion(
                champion, trigger="initial",
                reason="newest published version at the retrainer's first start"))
    registry.sync(repo_dir)
    registry.set_champion(champion, "initial: the retrainer's first start")
    return champion


def _timestamp(value: str | None) -> float | None:
    return None if value is None else pd.Timestamp(value).timestamp()


class ChampionMonitor:
    """The drift monitor of one serving version, and where its data ended.

    Attributes
    ----------
    schedule_anchor
        Event time the version's data ended: the "now" it was trained at (recorded with
        its gate figures), else the end of its validation or training window, else
        ``None`` (the caller uses the first logged row).
    """

    def __init__(self, registry: Registry, version: int, thresholds: DriftThresholds,
                 log_features: list[str]) -> None:
        self.registry, self.version = registry, version
        self.thresholds, self.log_features = thresholds, log_features
        entry = registry.get(version)
        gate = entry.gate or {}
        self.baseline = None
        if gate.get("average_precision") is not None:
            self.baseline = QualityBaseline(gate["average_precision"],
                                            gate["card_precision_at_100"])
        self.monitor: DriftMonitor | None = None
        path = profile_path(registry, version)
        if path.exists():
            self.monitor = self._monitor(ReferenceProfile.from_json(path.read_text()))
        self._first_day: list[pd.DataFrame] = []
        window_end = (entry.metrics.get("window") or {}).get("end")
        self.schedule_anchor: float | None = gate.get("as_of") or _timestamp(
            window_end or (entry.window.end if entry.window else None))

    def _monitor(self, profile: ReferenceProfile) -> DriftMonitor:
        return DriftMonitor(profile, self.thresholds, self.baseline, self.version)

    def _out_of_sample(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Rows this version scored after its data ended (other rows are skipped).

        Rows of its own training period (a history replayed through a first model) are
        in-sample: neither their distribution nor their loss says anything about drift.
        """
        mine = rows[rows["model_version"] == self.version]
        if self.schedule_anchor is not None:
            mine = mine[mine["event_time"] >= self.schedule_anchor]
        return mine

    def observe(self, rows: pd.DataFrame) -> None:
        """Feed the rows this version scored out of sample (see :meth:`_out_of_sample`)."""
        mine = self._out_of_sample(rows)
        if len(mine) and self.monitor is None:
            mine = self._profile_from_first_day(mine)
        if len(mine) and self.monitor is not None:
            self.monitor.observe(mine[self.log_features].to_numpy(np.float32),
                                 mine["score"].to_numpy(), mine["event_time"].to_numpy(),
                                 *(mine[c].to_numpy() if c in mine else None
                                   for c in ("card_id", "terminal_id")))

    def _profile_from_first_day(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Collect rows until a day is logged; then profile it and return the rest."""
        self._first_day.append(rows)
        rows = pd.concat(self._first_day, ignore_index=True)
        cut = float(rows["event_time"].min()) + SECONDS_PER_DAY
        if float(rows["event_time"].max()) < cut:
            return rows.iloc[:0]
        day = rows[rows["event_time"] < cut]
        profile = ReferenceProfile.from_frame(day[self.log_features].to_numpy(),
                                              self.log_features, day["score"].to_numpy())
        save_profile(self.registry, self.version, profile)
        self.monitor, self._first_day = self._monitor(profile), []
        return rows[rows["event_time"] >= cut]

    def observe_labels(self, matured: pd.DataFrame) -> None:
        """Feed matured labels (index rows with ``is_fraud``) of rows this version scored
        out of sample."""
        mine = self._out_of_sample(matured)
        if len(mine) and self.monitor is not None:
            self.monitor.observe_labels(mine["score"].to_numpy(), mine["is_fraud"].to_numpy(),
                                        mine["event_time"].to_numpy(),
                                        mine["card_id"].to_numpy())

    def evaluate(self, now: float) -> list[DriftDecision]:
        """The monitors' decisions at ``now`` (none before a profile exists)."""
        return self.monitor.evaluate(now) if self.monitor is not None else []

"""What one worker is given: how it reaches its services, its role, and how it batches.

The app (:mod:`streams.dataplane.app`) and the pipelines it runs
(:mod:`streams.dataplane.pipeline`, :mod:`streams.dataplane.labels`) all read it; it
imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streams.dataplane.scoring import DecisionPolicy, ReviewBudget
from streams.settings import Settings

Role = Literal["score", "labels", "all"]
Mode = Literal["live", "strict"]


@dataclass
class WorkerConfig:
    """How one worker reaches its services, what it does, and how it batches."""

    kafka: str
    redis_url: str
    triton_url: str
    settings: Settings
    app_id: str = "fraud-factory"
    role: Role = "all"
    mode: Mode = "live"
    labels_group: str | None = None
    batch_max: int = 1024
    batch_wait_s: float = 0.005
    commit_interval_s: float = 1.0
    policy: DecisionPolicy | ReviewBudget = field(default_factory=DecisionPolicy)
    request_rows: int = 1024
    in_flight: int = 4
    version_refresh_s: float = 2.0
    offset_reset: str = "earliest"
    feature_log_dir: Path | None = None
    feast_path: Literal["fast", "sdk"] = "fast"
    session_timeout_s: float = 10.0
    group_instance_id: str | None = None
    """Kafka static group membership (KIP-345): a worker restarted under the same id
    within the session timeout gets its partitions back without a rebalance of the
    group; a stopped one keeps them until the timeout."""

    def __post_init__(self) -> None:
        if self.role == "all" and self.mode == "strict":
            raise ValueError("strict mode needs separate 'score' and 'labels' workers")

    @property
    def watermark_group(self) -> str:
        """The labels consumer group whose watermark the scorer follows."""
        if self.labels_group:
            return self.labels_group
        return self.app_id if self.role != "score" else f"{self.app_id}-labels"

    @property
    def log_dir(self) -> Path:
        return self.feature_log_dir or self.settings.state_dir / "feature_log"

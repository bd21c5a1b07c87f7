"""What a registry entry says about a model version: :class:`ModelVersion` (its lineage,
trigger, training :class:`Window`, recipe, metrics and status), as kept in
``<registry>/versions/<n>.json`` by :class:`models.registry.Registry`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

Trigger = Literal["initial", "schedule", "drift", "manual"]
Status = Literal["candidate", "shadow", "champion", "rejected", "retired", "rolled_back"]

TRIGGERS: tuple[str, ...] = get_args(Trigger)
STATUSES: tuple[str, ...] = get_args(Status)


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Window:
    """A span of event time ``[start, end)`` and the labelled rows in it."""

    start: str
    end: str
    rows: int
    frauds: int


@dataclass
class ModelVersion:
    """One published model version and where it came from.

    Attributes
    ----------
    version
        The Triton version number.
    parent
        The version this one was meant to replace (and warm-started from, when
        ``warm_start``); ``None`` for a first model or an unknown lineage.
    created_at
        When it was recorded, ISO 8601 UTC.
    trigger
        Why it was trained.
    window
        Its training rows (event time); ``None`` when unknown.
    recipe
        The training recipe's hyper-parameters.
    metrics
        ``auc_roc``, ``average_precision``, ``card_precision_at_k`` on its evaluation
        window, and that ``window`` (a :class:`Window` as a dict).
    status
        Where it stands; only :meth:`models.registry.Registry.set_champion` makes a
        champion.
    reason
        Why it has that status (a gate's rejection reason, a rollback's cause).
    gate
        The promotion gate's verdict and figures, once it has run.
    warm_start
        Whether training started from the parent's weights.
    train_seconds
        Wall time of training.
    features
        The model's input columns, in input order.
    """

    version: int
    parent: int | None = None
    created_at: str = field(default_factory=utc_now)
    trigger: Trigger = "manual"
    window: Window | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: Status = "candidate"
    reason: str = ""
    gate: dict[str, Any] | None = None
    warm_start: bool = False
    train_seconds: float = 0.0
    features: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"version must be a positive integer, got {self.version}")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger {self.trigger!r} is not one of {TRIGGERS}")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        """The inverse of :meth:`to_dict`; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("window") is not None:
            values["window"] = Window(**values["window"])
        return cls(**values)

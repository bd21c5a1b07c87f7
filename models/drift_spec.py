"""What a drift scenario is: its kind and parameters (:class:`DriftSpec`), as written on
the command line (``kind:key=value,...``, :meth:`DriftSpec.parse`).

The scenarios themselves are in :mod:`models.drift_scenarios`;
:func:`models.drift.apply_drift` applies a list of specs to a table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

DriftKind = Literal["card_testing", "spending_shift", "label_delay", "night_spree"]

KIND_CODES: dict[str, int] = {
    "card_testing": 4, "spending_shift": 5, "label_delay": 6, "night_spree": 7,
}
"""Each kind's number; it keys the kind's random streams in :func:`models.drift.apply_drift`."""

_DEFAULT_INTENSITY: dict[str, float] = {
    "card_testing": 10.0,
    "spending_shift": 0.5,
    "label_delay": 1.0,
    "night_spree": 5.0,
}
_CARDS_A_DAY_KINDS = ("card_testing", "night_spree")


@dataclass(frozen=True)
class DriftSpec:
    """One drift scenario and its parameters.

    Parameters
    ----------
    kind
        ``card_testing``, ``spending_shift``, ``label_delay`` or ``night_spree``.
    start_day
        First day index (TX_TIME_DAYS) the drift touches.
    duration_days
        Length of the drift window in days; ``None`` runs to the end of the data.
    intensity
        Strength of the drift, in the scenario's unit: cards stolen a day
        (``card_testing``), share of customers affected (``spending_shift``), share
        of transactions whose label delay changes (``label_delay``) or cards taken
        over a day (``night_spree``). ``None`` takes 10 cards a day, half the
        customers, every transaction, or 5 cards a day.
    factor, frequency
        ``spending_shift``: multiplier of genuine amounts and of the number of
        genuine transactions.
    delay_days, delay_spread_days
        ``label_delay``: the new delay is ``delay_days + U(0, delay_spread_days)``.
    burst_size, burst_hours, amount_range
        ``card_testing``: transactions per burst (inclusive range), the span of a burst
        in hours, and the range of the tiny amounts.
    spree_size
        ``night_spree``: transactions per spree (inclusive range).
    """

    kind: DriftKind
    start_day: int
    duration_days: int | None = None
    intensity: float | None = None
    factor: float = 1.5
    frequency: float = 1.25
    delay_days: float = 14.0
    delay_spread_days: float = 0.0
    burst_size: tuple[int, int] = (10, 30)
    burst_hours: tuple[float, float] = (1.0, 4.0)
    amount_range: tuple[float, float] = (1.0, 5.0)
    spree_size: tuple[int, int] = (3, 8)

    def __post_init__(self) -> None:
        if self.kind not in KIND_CODES:
            raise ValueError(f"unknown drift kind {self.kind!r}; one of {get_args(DriftKind)}")
        if self.start_day < 0:
            raise ValueError(f"start_day must be >= 0, got {self.start_day}")
        if self.duration_days is not None and self.duration_days < 1:
            raise ValueError(f"duration_days must be >= 1, got {self.duration_days}")
        if self.level < 0 or (self.kind not in _CARDS_A_DAY_KINDS and self.level > 1):
            raise ValueError(f"{self.kind}: intensity {self.level} out of range")
        if self.factor <= 0 or self.frequency < 0:
            raise ValueError("factor must be > 0 and frequency >= 0")
        if self.delay_days < 0 or self.delay_spread_days < 0:
            raise ValueError("delay_days and delay_spread_days must be >= 0")
        if not 1 <= self.burst_size[0] <= self.burst_size[1]:
            raise ValueError(f"burst_size must be 1 <= low <= high, got {self.burst_size}")
        if not 0 < self.burst_hours[0] <= self.burst_hours[1] < 24:
            raise ValueError(f"burst_hours must be 0 < low <= high < 24, got {self.burst_hours}")
        if not 0 < self.amount_range[0] <= self.amount_range[1]:
            raise ValueError(f"amount_range must be 0 < low <= high, got {self.amount_range}")
        if not 1 <= self.spree_size[0] <= self.spree_size[1]:
            raise ValueError(f"spree_size must be 1 <= low <= high, got {self.spree_size}")

    @property
    def level(self) -> float:
        """The intensity, or the scenario's default when none was given."""
        return _DEFAULT_INTENSITY[self.kind] if self.intensity is None else self.intensity

    def end_day(self, last_day: int) -> int:
        """First day index after the window (exclusive bound)."""
        return last_day + 1 if self.duration_days is None else self.start_day + self.duration_days

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """Read ``kind:key=value,...``, e.g. ``card_testing:start=60,days=30,intensity=5``.

        ``start`` and ``days`` stand for ``start_day`` and ``duration_days``; range
        parameters take ``low-high`` (``burst_size=5-20``).
        """
        kind, _, rest = text.partition(":")
        aliases = {"start": "start_day", "days": "duration_days"}
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, rest.split(",")):
            key, sep, raw = item.partition("=")
            name = aliases.get(key.strip(), key.strip())
            if not sep or name not in types or name == "kind":
                raise ValueError(f"drift {text!r}: unknown or malformed parameter {item!r}")
            if "tuple" in str(types[name]):
                low, _, high = raw.partition("-")
                cast = int if "int" in str(types[name]) else float
                values[name] = (cast(low), cast(high or low))
            elif name in ("start_day", "duration_days"):
                values[name] = int(raw)
            else:
                values[name] = float(raw)
        if "start_day" not in values:
            raise ValueError(f"drift {text!r}: start=<day> is required")
        return cls(kind=kind.strip(), **values)  # type: ignore[arg-type]

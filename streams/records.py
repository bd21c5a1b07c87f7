"""The records that flow on the factory's topics, and their validation.

Every value is a JSON object with a schema version field ``v``. Validation is a pure
function: it either returns the record or raises a :class:`ValidationError` whose
``kind`` and message say precisely what is wrong, so that the dead-letter topic can carry
the reason.

Examples (one per topic)::

    transactions  {"v": 1, "tx_id": 42, "event_time": 1522540800.0, "card_id": 7,
                   "terminal_id": 311, "amount": 57.16}
    labels        {"v": 1, "tx_id": 42, "card_id": 7, "terminal_id": 311,
                   "event_time": 1522540800.0, "is_fraud": 0, "known_at": 1523145600.0}
    scores        {"v": 1, "tx_id": 42, "card_id": 7, "event_time": 1522540800.0,
                   "score": 0.0132, "decision": "approve", "model_version": 1,
                   "latency_ms": 4.2}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024

Decision = Literal["approve", "review", "block"]


class ValidationError(ValueError):
    """An event that does not satisfy its record type.

    ``kind`` is a stable machine-readable class of the error (``payload_too_large``,
    ``not_json``, ``not_an_object``, ``unknown_schema_version``, ``missing_field``,
    ``wrong_type``, ``invalid_value``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _decode(raw: bytes | bytearray | memoryview | None) -> dict[str, Any]:
    if raw is None:
        raise ValidationError("not_json", "empty message (no value)")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            "payload_too_large", f"payload is {len(raw)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        value = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError("not_json", f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError(
            "not_an_object", f"expected a JSON object, got {type(value).__name__}"
        )
    version = value.get("v")
    if "v" not in value:
        raise ValidationError("missing_field", "missing field 'v' (schema version)")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValidationError(
            "unknown_schema_version",
            f"unknown schema version {version!r}, this worker reads version {SCHEMA_VERSION}",
        )
    return value


def _field(value: dict[str, Any], name: str) -> Any:
    if name not in value:
        raise ValidationError("missing_field", f"missing field '{name}'")
    return value[name]


def _int(value: dict[str, Any], name: str, minimum: int = 0) -> int:
    item = _field(value, name)
    if isinstance(item, bool) or not isinstance(item, int):
        raise ValidationError(
            "wrong_type", f"field '{name}' must be an integer, got {type(item).__name__}"
        )
    if item < minimum:
        raise ValidationError("invalid_value", f"field '{name}' must be >= {minimum}, got {item}")
    return item


def _number(value: dict[str, Any], name: str, minimum: float = 0.0) -> float:
    item = _field(value, name)
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise ValidationError(
            "wrong_type", f"field '{name}' must be a number, got {type(item).__name__}"
        )
    number = float(item)
    if not math.isfinite(number):
        raise ValidationError("invalid_value", f"field '{name}' must be finite, got {item}")
    if number < minimum:
        raise ValidationError(
            "invalid_value", f"field '{name}' must be >= {minimum:g}, got {item}"
        )
    return number


@dataclass(frozen=True, slots=True)
class Transaction:
    """A card transaction; ``event_time`` is Unix epoch seconds (UTC)."""

    tx_id: int
    event_time: float
    card_id: int
    terminal_id: int
    amount: float

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview | None) -> Transaction:
        """Decode and validate a ``transactions`` value; raises :class:`ValidationError`."""
        value = _decode(raw)
        return cls(
            tx_id=_int(value, "tx_id"),
            event_time=_number(value, "event_time"),
            card_id=_int(value, "card_id"),
            terminal_id=_int(value, "terminal_id"),
            amount=_number(value, "amount"),
        )

    def to_json(self) -> bytes:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)}).encode()


@dataclass(frozen=True, slots=True)
class Label:
    """The ground truth of one transaction, known at ``known_at`` (event time)."""

    tx_id: int
    card_id: int
    terminal_id: int
    event_time: float
    is_fraud: int
    known_at: float

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview | None) -> Label:
        value = _decode(raw)
        label = cls(
            tx_id=_int(value, "tx_id"),
            card_id=_int(value, "card_id"),
            terminal_id=_int(value, "terminal_id"),
            event_time=_number(value, "event_time"),
            is_fraud=_int(value, "is_fraud"),
            known_at=_number(value, "known_at"),
        )
        if label.is_fraud not in (0, 1):
            raise ValidationError(
                "invalid_value", f"field 'is_fraud' must be 0 or 1, got {label.is_fraud}"
            )
        return label

    def to_json(self) -> bytes:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)}).encode()


@dataclass(frozen=True, slots=True)
class Score:
    """The model's verdict on one transaction."""

    tx_id: int
    card_id: int
    event_time: float
    score: float
    decision: Decision
    model_version: int
    latency_ms: float

    def to_json(self) -> bytes:
        return json.dumps({"v": SCHEMA_VERSION, **asdict(self)}).encode()

    @classmethod
    def parse(cls, raw: bytes) -> Score:
        value = _decode(raw)
        return cls(
            tx_id=_int(value, "tx_id"),
            card_id=_int(value, "card_id"),
            event_time=_number(value, "event_time"),
            score=_number(value, "score"),
            decision=value["decision"],
            model_version=_int(value, "model_version", minimum=1),
            latency_ms=_number(value, "latency_ms"),
        )

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_INT = 2**63 - 1
"""Ids are 64-bit signed integers: anything larger is an invalid value."""
MAX_NUMBER = {"event_time": 4102444800.0, "known_at": 4102444800.0, "amount": 1e12}
"""Upper bounds of numeric fields (times before 2100-01-01 UTC, amounts under 10**12):
a larger value is an invalid value, never a feature computed on infinity."""

Decision = Literal["approve", "review", "block"]


class ValidationError(ValueError):
    """An event that does not satisfy its record type.

    ``kind`` is a stable machine-readable class of the error (``payload_too_large``,
    ``not_json``, ``not_an_object``, ``unknown_schema_version``, ``missing_field``,
    ``wrong_type``, ``invalid_value``, and ``key_mismatch`` for a transaction whose
    message key is not its card id).
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
    if item > MAX_INT:
        raise ValidationError("invalid_value", f"field '{name}' must be < 2**63, got {item}")
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
    if number > MAX_NUMBER.get(name, math.inf):
        raise ValidationError(
            "invalid_value", f"field '{name}' must be <= {MAX_NUMBER[name]:g}, got {item}"
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


@dataclass
class ParsedBatch:
    """The valid records of a batch as columns, and the invalid ones with their error.

    ``rows`` are the positions of the valid records in the batch, ascending; ``columns``
    hold one array a field, aligned with ``rows``.
    """

    rows: np.ndarray
    columns: dict[str, np.ndarray]
    errors: list[tuple[int, Exception]]


def _decode_many(values: list[bytes | None]) -> list[Any]:
    """Each value's JSON, decoded in one call where the whole batch is valid JSON.

    The values joined into one JSON array parse to exactly one element a value when
    each value is one JSON text (a value that is not, or is empty, breaks the array or
    its length), so one parse stands for all of them. Otherwise, and for a value over
    the size limit, the value's entry is ``None`` and the record is parsed alone.
    """
    if all(v is not None and len(v) <= MAX_PAYLOAD_BYTES for v in values):
        try:
            decoded = json.loads(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            decoded = None
        if decoded is not None and len(decoded) == len(values):
            return decoded
    return [None] * len(values)


def _columns_if_all_valid(decoded: list[Any], fields: tuple[str, ...],
                          kinds: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The batch's columns when every record is valid, checked a column at a time;
    ``None`` when any record needs the full parse."""
    if not decoded or set(map(type, decoded)) != {dict}:
        return None
    versions = [value.get("v") for value in decoded]
    if set(map(type, versions)) != {int} or set(versions) != {SCHEMA_VERSION}:
        return None
    columns: dict[str, np.ndarray] = {}
    for name, kind in zip(fields, kinds, strict=True):
        items = [value.get(name) for value in decoded]
        types = set(map(type, items))
        if kind == "number":
            if not types <= {int, float}:
                return None
            if int in types and any(type(x) is int and not 0 <= x < 2**53 for x in items):
                return None
            column = np.array(items, dtype=np.float64)
            if not (np.isfinite(column).all() and (column >= 0).all()
                    and (column <= MAX_NUMBER.get(name, math.inf)).all()):
                return None
        else:
            if types != {int}:
                return None
            if any(not 0 <= x < 2**63 for x in items):
                return None
            column = np.array(items, dtype=np.int64)
            if kind == "flag" and not np.isin(column, (0, 1)).all():
                return None
        columns[name] = column.astype(np.int8) if kind == "flag" else column
    return columns


def _parse_batch(values: list[bytes | None], record: Any, fields: tuple[str, ...],
                 kinds: tuple[str, ...]) -> ParsedBatch:
    """Validate a batch: column checks over the whole batch when every record passes
    them, else the full parse a record (and its precise error)."""
    decoded = _decode_many(values)
    columns = _columns_if_all_valid(decoded, fields, kinds)
    if columns is not None:
        return ParsedBatch(np.arange(len(values), dtype=np.int64), columns, [])
    rows: list[int] = []
    out: list[list[Any]] = [[] for _ in fields]
    errors: list[tuple[int, Exception]] = []
    for i, raw in enumerate(values):
        try:
            item = record.parse(raw)
        except Exception as exc:  # noqa: BLE001 - any failure is a dead letter
            errors.append((i, exc))
            continue
        rows.append(i)
        for column, name in zip(out, fields, strict=True):
            column.append(getattr(item, name))
    dtypes = {"int": np.int64, "number": np.float64, "flag": np.int8}
    columns = {name: np.array(column, dtype=dtypes[kind])
               for name, kind, column in zip(fields, kinds, out, strict=True)}
    return ParsedBatch(np.array(rows, dtype=np.int64), columns, errors)


def parse_transactions(values: list[bytes | None]) -> ParsedBatch:
    """:meth:`Transaction.parse` of a whole batch: the same records accepted, the same
    errors for the others."""
    return _parse_batch(values, Transaction,
                        ("tx_id", "event_time", "card_id", "terminal_id", "amount"),
                        ("int", "number", "int", "int", "number"))


def parse_labels(values: list[bytes | None]) -> ParsedBatch:
    """:meth:`Label.parse` of a whole batch."""
    return _parse_batch(values, Label,
                        ("tx_id", "card_id", "terminal_id", "event_time", "is_fraud",
                         "known_at"),
                        ("int", "int", "int", "number", "flag", "number"))


_SCORE = ('{"v": %d, "tx_id": %d, "card_id": %d, "event_time": %r, "score": %r, '
          '"decision": "%s", "model_version": %d, "latency_ms": %r}')


def encode_scores(tx_id: np.ndarray, card_id: np.ndarray, event_time: np.ndarray,
                  score: np.ndarray, decision: Sequence[str], model_version: int,
                  latency_ms: np.ndarray) -> list[bytes]:
    """``Score(...).to_json()`` of each row, without building the records."""
    template = _SCORE
    return [
        (template % (SCHEMA_VERSION, t, c, e, s, d, model_version, lat)).encode()
        for t, c, e, s, d, lat in zip(tx_id.tolist(), card_id.tolist(),
                                      event_time.tolist(), score.tolist(), decision,
                                      latency_ms.tolist(), strict=True)
    ]

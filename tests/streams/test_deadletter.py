"""The dead-letter envelope keeps the original bytes and says why."""

from __future__ import annotations

from streams.dataplane.deadletter import dead_letter_headers, read_headers
from streams.records import Transaction, ValidationError


def test_headers_carry_source_stage_and_reason() -> None:
    raw = b'{"v": 1, "tx_id": "oops"}'
    try:
        Transaction.parse(raw)
    except ValidationError as exc:
        headers = dead_letter_headers("transactions", 3, 1234, "validate", exc)
    else:  # pragma: no cover - the record is invalid
        raise AssertionError("expected a validation error")
    fields = read_headers(headers)
    assert fields == {
        "topic": "transactions",
        "partition": "3",
        "offset": "1234",
        "stage": "validate",
        "exception.class.name": "ValidationError",
        "exception.message": "field 'tx_id' must be an integer, got str",
        "reason": "wrong_type",
    }
    assert all(isinstance(value, bytes) for _, value in headers)


def test_long_messages_are_truncated_and_foreign_headers_ignored() -> None:
    headers = dead_letter_headers("t", 0, 0, "features", RuntimeError("x" * 10000))
    fields = read_headers([("trace-id", b"abc"), *headers])
    assert "trace-id" not in fields
    assert len(fields["exception.message"]) == 4096
    assert "reason" not in fields

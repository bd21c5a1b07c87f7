"""Validation of transaction records: the valid pass, each malformed kind says why."""

from __future__ import annotations

import json

import pytest

from streams.records import (
    MAX_PAYLOAD_BYTES,
    Label,
    Score,
    Transaction,
    ValidationError,
    parse_transactions,
)

VALID = {"v": 1, "tx_id": 42, "event_time": 1522540800, "card_id": 7,
         "terminal_id": 311, "amount": 57.16}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_valid_transaction_is_accepted() -> None:
    tx = Transaction.parse(encode(VALID))
    assert tx == Transaction(42, 1522540800.0, 7, 311, 57.16)
    assert Transaction.parse(tx.to_json()) == tx


def test_zero_amount_and_extra_fields_are_accepted() -> None:
    tx = Transaction.parse(encode({**VALID, "amount": 0, "currency": "EUR"}))
    assert tx.amount == 0.0


@pytest.mark.parametrize(
    ("raw", "kind", "words"),
    [
        (b"{not json", "not_json", "not valid JSON"),
        (b"\xff\xfe\x00", "not_json", "not valid JSON"),
        (None, "not_json", "empty message"),
        (b"[1, 2]", "not_an_object", "got list"),
        (encode({k: v for k, v in VALID.items() if k != "v"}), "missing_field", "'v'"),
        (encode({**VALID, "v": 2}), "unknown_schema_version", "unknown schema version 2"),
        (encode({**VALID, "v": "1"}), "unknown_schema_version", "'1'"),
        (encode({k: v for k, v in VALID.items() if k != "amount"}), "missing_field",
         "missing field 'amount'"),
        (encode({k: v for k, v in VALID.items() if k != "card_id"}), "missing_field",
         "missing field 'card_id'"),
        (encode({**VALID, "amount": "12.5"}), "wrong_type",
         "field 'amount' must be a number, got str"),
        (encode({**VALID, "card_id": 7.5}), "wrong_type",
         "field 'card_id' must be an integer, got float"),
        (encode({**VALID, "tx_id": True}), "wrong_type",
         "field 'tx_id' must be an integer, got bool"),
        (encode({**VALID, "amount": -0.01}), "invalid_value", "field 'amount' must be >= 0"),
        (b'{"v":1,"tx_id":1,"event_time":1,"card_id":1,"terminal_id":1,"amount":NaN}',
         "invalid_value", "field 'amount' must be finite"),
        (b'{"v":1,"tx_id":1,"event_time":1,"card_id":1,"terminal_id":1,"amount":Infinity}',
         "invalid_value", "field 'amount' must be finite"),
        (encode({**VALID, "terminal_id": -3}), "invalid_value",
         "field 'terminal_id' must be >= 0"),
        (encode({**VALID, "pad": "x" * MAX_PAYLOAD_BYTES}), "payload_too_large",
         f"the limit is {MAX_PAYLOAD_BYTES}"),
        (encode({**VALID, "tx_id": 10**30}), "invalid_value",
         "field 'tx_id' must be < 2**63"),
        (encode({**VALID, "amount": 1e300}), "invalid_value",
         "field 'amount' must be <= 1e+12"),
        (encode({**VALID, "event_time": 1e14}), "invalid_value",
         "field 'event_time' must be <= 4.10244e+09"),
    ],
)
def test_malformed_transaction_is_rejected_with_reason(
    raw: bytes | None, kind: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Transaction.parse(raw)
    assert caught.value.kind == kind
    assert words in str(caught.value)


def test_label_round_trip_and_fraud_flag_range() -> None:
    label = Label(42, 7, 311, 1522540800.0, 1, 1523145600.0)
    assert Label.parse(label.to_json()) == label
    bad = json.loads(label.to_json())
    bad["is_fraud"] = 2
    with pytest.raises(ValidationError, match="'is_fraud' must be 0 or 1"):
        Label.parse(encode(bad))


def test_score_round_trip() -> None:
    score = Score(42, 7, 1522540800.0, 0.25, "approve", 3, 4.5)
    assert Score.parse(score.to_json()) == score


@pytest.mark.parametrize("change", [{"tx_id": 10**30}, {"card_id": 2**63},
                                    {"amount": 1e300}, {"event_time": 1e14}])
def test_a_huge_number_in_a_batch_is_one_dead_letter_and_the_rest_is_accepted(
    change: dict,
) -> None:
    """A value beyond the columns' types used to fail the whole batch (an int64
    overflow), which its worker then retried for ever."""
    values = [encode({**VALID, "tx_id": i}) for i in range(5)]
    values[2] = encode({**VALID, **change})
    parsed = parse_transactions(values)
    assert parsed.rows.tolist() == [0, 1, 3, 4]
    assert [(row, error.kind) for row, error in parsed.errors] == [(2, "invalid_value")]

"""The topics' JSON Schemas (``streams/schemas``) agree with what the factory writes and
with what its parsers accept: the schemas are the contract users code against."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pandas as pd
import pytest

from streams.records import Label, Score, Transaction, ValidationError, encode_scores
from streams.replay.dataset import Dataset
from streams.schemas import TOPIC_SCHEMAS, load

VALID = {
    "transaction": {"v": 1, "tx_id": 42, "event_time": 1522540800, "card_id": 7,
                    "terminal_id": 311, "amount": 57.16},
    "label": {"v": 1, "tx_id": 42, "card_id": 7, "terminal_id": 311,
              "event_time": 1522540800.0, "is_fraud": 1, "known_at": 1523145600.0},
    "score": {"v": 1, "tx_id": 42, "card_id": 7, "event_time": 1522540800.0, "score": 0.93,
              "decision": "block", "model_version": 3, "latency_ms": 12.5},
}
PARSERS = {"transaction": Transaction.parse, "label": Label.parse, "score": Score.parse}


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_topic_has_a_valid_schema() -> None:
    assert set(TOPIC_SCHEMAS.values()) == set(PARSERS)
    for name in PARSERS:
        assert validator(name).is_valid(VALID[name]), name


def test_records_the_replay_and_the_worker_write_follow_the_schemas() -> None:
    rng = np.random.default_rng(3)
    n = 200
    frame = pd.DataFrame({
        "TRANSACTION_ID": np.arange(n), "TX_DATETIME": pd.Timestamp("2018-04-01")
        + pd.to_timedelta(np.sort(rng.uniform(0, 30 * 86400, n)), unit="s"),
        "CUSTOMER_ID": rng.integers(0, 50, n), "TERMINAL_ID": rng.integers(0, 80, n),
        "TX_AMOUNT": rng.uniform(0, 500, n).round(2), "TX_FRAUD": rng.integers(0, 2, n),
    })
    dataset = Dataset.from_frame(frame)
    _, transactions = dataset.encode_transactions(0, n)
    _, labels = dataset.encode_labels(np.arange(n))
    scores = encode_scores(np.arange(n), rng.integers(0, 50, n), rng.uniform(1.5e9, 1.6e9, n),
                           rng.uniform(0, 1, n), ["approve", "review", "block"] * 66
                           + ["approve", "review"], 4, rng.uniform(0, 80, n))
    scores.append(Score(1, 2, 3.0, 0.5, "review", 1, 0.0).to_json())
    for name, records in (("transaction", transactions), ("label", labels),
                          ("score", scores)):
        check = validator(name)
        for raw in records:
            value = json.loads(bytes(raw))
            check.validate(value)
            PARSERS[name](bytes(raw))


def wrong(name: str) -> list[dict]:
    """Records of ``name`` that break the contract one field at a time."""
    valid = VALID[name]
    cases = [{k: v for k, v in valid.items() if k != field} for field in valid]
    cases += [{**valid, "v": 2}, {**valid, "v": "1"}]
    for field, value in valid.items():
        if field == "v":
            continue
        if isinstance(value, (int, float)):
            cases += [{**valid, field: -1}, {**valid, field: str(value)},
                      {**valid, field: True}]
        if load(name)["properties"][field].get("type") == "integer":
            cases.append({**valid, field: value + 0.5})
    if name == "label":
        cases.append({**valid, "is_fraud": 2})
    if name == "score":
        cases += [{**valid, "decision": "allow"}, {**valid, "score": 1.5},
                  {**valid, "model_version": 0}]
    return cases


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_what_the_schema_refuses_the_parser_refuses_too(name: str) -> None:
    check = validator(name)
    cases = wrong(name)
    assert len(cases) > 10
    for case in cases:
        assert not check.is_valid(case), case
        if name == "score" and (case.get("score") == 1.5 or case.get("decision") == "allow"):
            # The schema's promises about the model and the policy; the consumer-side
            # parser takes both as they come.
            continue
        with pytest.raises((ValidationError, KeyError)):
            PARSERS[name](json.dumps(case).encode())


def test_inputs_may_carry_fields_of_their_own_scores_do_not() -> None:
    assert validator("transaction").is_valid({**VALID["transaction"], "currency": "EUR"})
    assert validator("label").is_valid({**VALID["label"], "source": "chargeback"})
    assert not validator("score").is_valid({**VALID["score"], "extra": 1})
    assert Transaction.parse(json.dumps({**VALID["transaction"], "currency": "EUR"}).encode())


def test_the_limits_a_schema_cannot_say_are_in_its_description() -> None:
    """Non-finite numbers and the payload limit are refused by the parser; JSON Schema
    cannot express them, so each input schema says so in words."""
    for name in ("transaction", "label"):
        text = load(name)["description"]
        assert "64 KiB" in text and "finite" in text, name
        with pytest.raises(ValidationError, match="finite"):
            PARSERS[name](json.dumps({**VALID[name], "event_time": math.inf}).encode())

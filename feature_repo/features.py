"""Feature definitions of the fraud factory.

The stream computes these features on event time and pushes them here; the feature
service of each model version fixes which features the model reads, and in which order.
The transaction's own fields (amount, weekend, night) come first and are not stored.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64

DATA = Path(__file__).resolve().parent / "data"

card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64,
              description="A payment card (the handbook's CUSTOMER_ID).")
terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.INT64,
                  description="A payment terminal.")

card_activity_source = FileSource(
    name="card_activity_log",
    path=str(DATA / "card_activity.parquet"),
    timestamp_field="event_timestamp",
)
card_activity_push = PushSource(name="card_activity_push", batch_source=card_activity_source)

terminal_risk_source = FileSource(
    name="terminal_risk_log",
    path=str(DATA / "terminal_risk.parquet"),
    timestamp_field="event_timestamp",
)
terminal_risk_push = PushSource(name="terminal_risk_push", batch_source=terminal_risk_source)

card_activity = FeatureView(
    name="card_activity",
    entities=[card],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="card_id", dtype=Int64),
        Field(name="nb_tx_1day", dtype=Int64),
        Field(name="avg_amount_1day", dtype=Float64),
        Field(name="nb_tx_7day", dtype=Int64),
        Field(name="avg_amount_7day", dtype=Float64),
        Field(name="nb_tx_30day", dtype=Int64),
        Field(name="avg_amount_30day", dtype=Float64),
        Field(name="amount_ratio_90day", dtype=Float64),
        Field(name="max_prev_amount_ratio_14day", dtype=Float64),
    ],
    source=card_activity_push,
    online=True,
    description="Card spending windows over (t - w, t], the current transaction included; "
                "the amount against the card's 90-day mean, and the card's largest earlier "
                "amount of the last 14 days against the same mean.",
)

terminal_risk = FeatureView(
    name="terminal_risk",
    entities=[terminal],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="terminal_id", dtype=Int64),
        Field(name="nb_tx_1day", dtype=Int64),
        Field(name="risk_1day", dtype=Float64),
        Field(name="nb_tx_7day", dtype=Int64),
        Field(name="risk_7day", dtype=Float64),
        Field(name="nb_tx_30day", dtype=Int64),
        Field(name="risk_30day", dtype=Float64),
        Field(name="known_fraud_run", dtype=Int64),
        Field(name="known_fraud_run_days", dtype=Int64),
        Field(name="days_since_known_genuine", dtype=Int64),
        # The labels behind those windows, so that a transaction at any time t gets its
        # own exact windows: event times, known times and fraud flags, by event time.
        Field(name="label_event_times", dtype=Array(Float64)),
        Field(name="label_known_at", dtype=Array(Float64)),
        Field(name="label_frauds", dtype=Array(Int64)),
    ],
    source=terminal_risk_push,
    online=True,
    description="Terminal counts and fraud rates over (t - 7 - w, t - 7] days, from labels; "
                "the run of frauds at the end of the known labels, its age in days, and the "
                "days since the latest known genuine one; the values are those of a "
                "transaction at the latest label's time.",
)

fraud_detector_v1 = FeatureService(
    name="fraud_detector_v1",
    features=[
        card_activity,
        terminal_risk[["nb_tx_1day", "risk_1day", "nb_tx_7day", "risk_7day",
                       "nb_tx_30day", "risk_30day", "known_fraud_run",
                       "known_fraud_run_days", "days_since_known_genuine"]],
    ],
    description="Inputs of the fraud_detector model (interface 1: every version served "
                "from triton_repo/fraud_detector reads these), after amount, weekend "
                "and night.",
)

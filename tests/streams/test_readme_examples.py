"""The README's examples for users of the factory's outputs run as written, against the
real services: the scores consumer and the Feast lookup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.clients.feast_client import (
    CARD_VIEW,
    TERMINAL_VIEW,
    OnlineFeatures,
    feast_redis_connection,
    open_store,
)
from streams.clients.kafka_io import produce, topic_end_offsets
from streams.records import Score
from streams.settings import REPO_ROOT
from streams.topics import SCORES

pytestmark = pytest.mark.integration


def example(name: str) -> str:
    """The code block that follows ``<!-- example: name -->`` in the README."""
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)```", text,
                      re.DOTALL)
    assert found, f"no example {name!r} in the README"
    return found.group(1)


def run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_scores_consumer_example_prints_each_flagged_transaction_once(
        live_stack: Any) -> None:
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    # The example's consumer group starts where the topic ends now.
    group = Consumer({**settings.kafka.client_config(kafka), "group.id": "fraud-alerts"})
    end = topic_end_offsets(kafka, settings, SCORES)
    group.commit(offsets=[TopicPartition(SCORES, p, o) for p, o in end.items()],
                 asynchronous=False)
    group.close()
    scores = [Score(9_100_001, 7, 1.7e9, 0.97, "block", 2, 3.5),
              Score(9_100_002, 8, 1.7e9, 0.02, "approve", 2, 4.0),
              Score(9_100_003, 9, 1.7e9, 0.61, "review", 2, 4.2)]
    records = [(str(s.card_id).encode(), s.to_json()) for s in scores]
    produce(kafka, settings, [*records, records[0]], topic=SCORES)  # one duplicate

    printed = run(example("consume-scores"), KAFKA_BOOTSTRAP_SERVERS=kafka).splitlines()
    # Order holds within a card's partition only.
    assert sorted(printed) == ["9100001 7 block 0.97", "9100003 9 review 0.61"]


def test_the_feast_lookup_example_reads_what_the_workers_pushed(live_stack: Any) -> None:
    store = open_store(live_stack.endpoints.redis)
    online = OnlineFeatures(store)
    card = np.zeros((1, len(online.views[CARD_VIEW])))
    card[0, online.views[CARD_VIEW].index("nb_tx_7day")] = 12
    terminal = np.zeros((1, len(online.views[TERMINAL_VIEW])))
    terminal[0, online.views[TERMINAL_VIEW].index("risk_7day")] = 0.25
    online.push_card_activity(np.array([7]), np.array([1.9e9]), card)
    online.push_terminal_risk(np.array([311]), np.array([1.9e9]), terminal)

    printed = run(example("feast-lookup"),
                  FEAST_REDIS_CONNECTION=feast_redis_connection(live_stack.endpoints.redis))
    assert printed.split() == ["[12]", "[0.25]"]

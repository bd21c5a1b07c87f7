"""A strict scorer stopped while its batch waits for labels that have not come yet (the end
of a replay, a quiet labels stream) exits at once and loses nothing: its successor scores
that batch, once, when the labels arrive."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from streams.clients.kafka_io import consume, produce, topic_end_offsets
from streams.records import Label, Transaction
from streams.topics import LABELS, SCORES

pytestmark = pytest.mark.integration

DAY = 86400


def labels_known_at(known_at: int, first_id: int, terminals: range) -> list[tuple[bytes, bytes]]:
    """One label a terminal (40 terminals: every labels partition gets one), known at
    ``known_at``."""
    return [(str(t).encode(), Label(first_id + i, 1, t, known_at - 8 * DAY, 0,
                                    known_at).to_json())
            for i, t in enumerate(terminals)]


def test_a_strict_scorer_waiting_for_labels_stops_at_once_and_its_successor_scores_the_batch(
    live_stack: Any, worker_factory: Callable[..., Any],
) -> None:
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    app_id = f"strict-stop-{uuid.uuid4().hex[:8]}"
    base = 7_300_000_000 + int(time.time() * 1000) % 10**8 * 10
    terminals = range(base, base + 40)
    t0 = 1_560_000_000
    worker_factory(role="labels", app_id=f"{app_id}-labels")
    scorer = worker_factory(role="score", mode="strict", app_id=app_id,
                            labels_group=f"{app_id}-labels")
    start = topic_end_offsets(kafka, settings, SCORES)
    produce(kafka, settings, labels_known_at(t0, base, terminals), topic=LABELS)
    tx = Transaction(base + 100, t0 + 100, base + 7, base, 12.5)
    produce(kafka, settings, [(str(tx.card_id).encode(), tx.to_json())])

    deadline = time.monotonic() + 60
    while scorer.metrics().get("factory_waiting_for_labels") != 1.0:
        assert time.monotonic() < deadline, "the scorer never waited for labels"
        time.sleep(0.2)
    proc = scorer.proc
    began = time.monotonic()
    scorer.stop(timeout_s=30)
    assert proc.returncode != -9, "the scorer had to be killed: it waited for ever"
    stopped_in = time.monotonic() - began

    successor = worker_factory(role="score", mode="strict", app_id=app_id,
                               labels_group=f"{app_id}-labels")
    produce(kafka, settings, labels_known_at(t0 + 200, base + 1000, terminals), topic=LABELS)
    scores: list[int] = []

    def scored(received: list) -> bool:
        scores[:] = [r for r in (json.loads(m.value)["tx_id"] for m in received)
                     if r == tx.tx_id]
        return bool(scores)

    consume(kafka, settings, SCORES, start=start, until=scored, timeout_s=60)
    time.sleep(3)  # long enough for a second score of it to show
    consume(kafka, settings, SCORES, start=start, until=lambda got: scored(got) and False,
            timeout_s=5)
    assert scores == [tx.tx_id], f"scored {len(scores)} times (stopped in {stopped_in:.1f} s)"
    assert successor.alive()

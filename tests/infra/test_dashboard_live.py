"""The dashboard's queries against live scrapes: every worker metric it queries is on a
running worker's ``/metrics`` after it scored and dead-lettered events, and every Triton
metric on Triton's metrics endpoint. The retrainer's are checked against a live
retrainer's scrape in ``tests/streams/test_bootstrap.py`` (``factory serve`` after it
scored a continuation and read its labels)."""

from __future__ import annotations

import random
import urllib.request
from collections.abc import Callable

import pytest

from streams.clients.kafka_io import produce, topic_end_offsets
from streams.topics import SCORES
from tests.infra.test_dashboard import NAME, TRITON_METRICS, queries, retrainer_names
from tests.streams.test_worker import BAD_EVENTS, make_transactions, wait_for_scores

pytestmark = pytest.mark.integration


def scraped(address: str) -> set[str]:
    """The sample names on ``http://address/metrics``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_metric_the_dashboard_queries_is_on_a_live_worker_or_triton(
    live_stack, worker_factory: Callable[..., object]  # noqa: ANN001
) -> None:
    kafka, settings = live_stack.endpoints.kafka, live_stack.settings
    worker = worker_factory()
    txs = make_transactions(300, seed=31)
    scores_start = topic_end_offsets(kafka, settings, SCORES)
    messages = [(str(tx.card_id).encode(), tx.to_json()) for tx in txs]
    marker = f"bad-{random.random()}".encode()
    messages += [(marker, raw) for raw, _ in BAD_EVENTS]
    produce(kafka, settings, messages)
    wait_for_scores(live_stack, scores_start, {tx.tx_id for tx in txs})

    on_worker = scraped(f"127.0.0.1:{worker.metrics_port}")  # type: ignore[attr-defined]
    on_triton = set().union(*(scraped(address) for address in
                              live_stack.endpoints.triton_metrics.split(",")))
    retrainer_only = retrainer_names()
    missing = []
    for where, expr in queries():
        for name in NAME.findall(expr):
            if name in TRITON_METRICS:
                if name not in on_triton:
                    missing.append((where, name, "Triton"))
            elif name not in retrainer_only and name not in on_worker:
                missing.append((where, name, "worker"))
    assert missing == [], f"queried but not on the live scrape: {missing}"

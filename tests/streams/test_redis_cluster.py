"""The factory on a Redis Cluster (``REDIS_URL=redis+cluster://...``): a worker whose
online store, route, label watermark and marks live on three primaries scores every event
once, on exactly the features computed independently, and Feast's own SDK reads back what
it pushed. (The fast path against Feast's SDK on a cluster: ``test_feast_fast.py``; the
route: ``test_router.py``.)"""

from __future__ import annotations

import subprocess
import uuid

import numpy as np
import onnxruntime as ort
import pytest

from infra.local.base import free_port
from streams.clients.feast_client import CARD_VIEW, OnlineFeatures, open_store
from streams.clients.kafka_io import produce, topic_end_offsets
from streams.dataplane.worker import WorkerProcess
from streams.topics import SCORES
from tests.streams.test_worker import (
    expected_features,
    label_terminals,
    make_transactions,
    read_scores,
    wait_for_scores,
)

pytestmark = pytest.mark.integration


def keys_per_node(url: str) -> list[int]:
    """How many keys each primary of the cluster holds."""
    from urllib.parse import urlparse

    port = urlparse(url).port
    nodes = subprocess.run(["redis-cli", "-p", str(port), "cluster", "nodes"],
                           capture_output=True, text=True, timeout=10).stdout.splitlines()
    counts = []
    for line in nodes:
        address = line.split()[1].split("@")[0]
        count = subprocess.run(["redis-cli", "-p", address.rsplit(":", 1)[1], "dbsize"],
                               capture_output=True, text=True, timeout=10).stdout
        counts.append(int(count))
    return counts


def test_a_worker_on_a_redis_cluster_scores_every_event_once_on_its_exact_features(
    live_stack, redis_cluster_url: str, tmp_path,  # noqa: ANN001
) -> None:
    txs = make_transactions(800, seed=23)
    online = OnlineFeatures(open_store(redis_cluster_url))
    labels = label_terminals(online, txs, count=8, labels_each=40, seed=9)

    app_id = f"test-cluster-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        live_stack.settings, app_id, offset_reset="latest", metrics_port=free_port(),
        log_path=str(tmp_path / "worker.log"),
        env={"FACTORY_STATE_DIR": str(live_stack.settings.state_dir),
             "REDIS_URL": redis_cluster_url})
    start = topic_end_offsets(live_stack.endpoints.kafka, live_stack.settings, SCORES)
    try:
        worker.start(live_stack.endpoints.kafka)
        produce(live_stack.endpoints.kafka, live_stack.settings,
                ((str(tx.card_id).encode(), tx.to_json()) for tx in txs))
        wanted = {tx.tx_id for tx in txs}
        wait_for_scores(live_stack, start, wanted)
        assert worker.alive()
    finally:
        worker.stop()
    scores = read_scores(live_stack, start, wanted)
    assert {s.model_version for s in scores} == {1}

    vectors = expected_features(txs, labels)
    session = ort.InferenceSession(
        str(live_stack.triton_repo / "fraud_detector" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"])
    X = np.stack([vectors[s.tx_id] for s in scores]).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: X})[0].reshape(-1)
    assert np.abs(np.array([s.score for s in scores]) - expected).max() <= 1e-5
    # What the stream pushed is on the cluster, where Feast's SDK reads it back.
    last = {}
    for tx in txs:
        last[tx.card_id] = vectors[tx.tx_id][3:3 + len(online.views[CARD_VIEW])]
    cards = np.array(sorted(last))
    assert np.allclose(online.read(CARD_VIEW, "card_id", cards),
                       np.stack([last[c] for c in cards]))
    # And it is spread over the primaries: a cluster, not one node.
    counts = keys_per_node(redis_cluster_url)
    assert len(counts) == 3 and sum(c > 0 for c in counts) == 3, counts

"""An operator's first day, with the ``factory`` commands as they are typed in a shell.

A stack of its own (``factory up`` in a fresh state folder, on free ports), a first model
trained and promoted, a labels worker and a scoring worker started with no options,
20,000 replayed transactions; then a second version promoted through the gate, shadow
and swap while the replay goes on, and the first one rolled back in, still under load.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.streams.factory_shell import Shell, metrics, read_scores, shell, wait_ready
from tests.streams.sink_checks import assert_scored_once, read_to_end

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

WORLD = ["--simulate", "--customers", "400", "--terminals", "800", "--days", "60", "--quiet"]
TRAIN = ["model", "train", "--customers", "200", "--terminals", "400", "--days", "45"]


def test_workers_started_without_options_score_with_the_promoted_version_and_promote_and_rollback_serve_under_load(  # noqa: E501
    shell: Shell, tmp_path: Path,
) -> None:
    shell("up")
    kafka = json.loads((tmp_path / "state" / "endpoints.json").read_text())["kafka"]
    out = shell(*TRAIN, "--promote")
    assert "version 1 is the champion and serves" in out, out

    port = int(shell.env["FACTORY_WORKER_METRICS_PORT"])
    labels = shell.start("labels-worker", "worker", "--role", "labels")
    scorer = shell.start("score-worker", "worker", "--role", "score")
    wait_ready(port + 1, labels, tmp_path / "labels-worker.log")
    wait_ready(port, scorer, tmp_path / "score-worker.log")

    shell("replay", *WORLD, "--limit", "20000")
    first = read_scores(kafka, 20_000, timeout_s=300)
    assert len({r["tx_id"] for r in first}) == 20_000
    assert {r["model_version"] for r in first} == {1}

    # The same training again: version 2 is as good as 1 on any window, so the gate
    # passes on its merits (a worse challenger's refusal is test_retrainer's).
    out = shell(*TRAIN)
    assert re.search(r"^version 2 \(parent 1\)", out, re.M), out
    load = shell.start("replay-rest", "replay", *WORLD, "--resume", "--speed", "28800")
    deadline = time.monotonic() + 120
    while metrics(port).get("factory_events_scored_total", 0.0) < 20_500:
        assert load.poll() is None, (tmp_path / "replay-rest.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the load did not reach the scorer in 120 s"
        time.sleep(0.5)
    out = shell("model", "promote", "2", "--shadow-rows", "300", "--shadow-timeout", "60")
    assert re.search(r"version 2 serves \(was 1; route generation \d+\).*shadow "
                     r"[\d.]+ s \((\d+) rows\).*version 1 unloaded", out), out
    shadow_rows = int(re.search(r"\((\d+) rows\)", out).group(1))  # type: ignore[union-attr]
    assert shadow_rows >= 300, "promoted before the shadow had its rows"
    assert load.poll() is None, "the load ended before the promotion: make it longer"
    out = shell("model", "rollback")
    assert re.search(r"version 1 serves \(was 2;.*version 2 unloaded", out), out
    assert load.poll() is None, "the load ended before the rollback: make it longer"
    assert load.wait(300) == 0, (tmp_path / "replay-rest.log").read_text()[-2000:]

    total = 20_000 + int(re.search(r"\(([\d,]+) transactions", (
        tmp_path / "replay-rest.log").read_text()).group(1).replace(",", ""))  # type: ignore[union-attr]
    wanted = {r["tx_id"] for r in read_scores(kafka, total, timeout_s=300)}
    assert len(wanted) == total
    samples = metrics(port)
    shell.stop_all()  # the workers stopped: everything they wrote is on the topic now
    received = read_to_end(kafka, Settings(), "scores")
    assert_scored_once(received, wanted)
    records = [{**json.loads(m.value), "_partition": m.partition} for m in received]
    # A partition's scores are in the order they were produced: 1, then 2, then 1 again
    # (a batch never mixes versions, and no worker goes back to an older route).
    by_partition: dict[int, list[int]] = {}
    for r in records:
        runs = by_partition.setdefault(r["_partition"], [])
        if not runs or runs[-1] != r["model_version"]:
            runs.append(r["model_version"])
    assert all(runs == [1, 2, 1] for runs in by_partition.values()), by_partition
    assert samples.get("factory_triton_errors_total", 0.0) == 0.0, "a Triton call failed"
    assert not any(k.startswith("factory_events_dead_lettered_total") and v
                   for k, v in samples.items()), "an event was dead-lettered"

    listing = shell("model", "list")
    assert re.search(r"^1\s+champion", listing, re.M), listing
    assert re.search(r"^2\s+rolled_back", listing, re.M), listing
    assert "fraud_detector versions READY: 1\n" in listing, listing

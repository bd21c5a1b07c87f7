"""`factory worker --role score` and `--role labels`, started side by side with no
options, take different consumer groups and metrics ports, and the scorer follows the
labels worker's watermark."""

from __future__ import annotations

import dataclasses

from streams.dataplane.config import WorkerConfig
from streams.dataplane.worker import role_defaults
from streams.settings import Settings


def test_a_scoring_and_a_labels_worker_do_not_collide_by_default() -> None:
    settings = dataclasses.replace(Settings(), worker_metrics_port=8100)
    score_group, score_port = role_defaults("score", settings)
    labels_group, labels_port = role_defaults("labels", settings)
    assert score_group != labels_group
    assert {score_port, labels_port} == {8100, 8101}
    assert role_defaults("all", settings) == (score_group, score_port)
    scorer = WorkerConfig(kafka="k", redis_url="redis://r", triton_url="t", settings=settings,
                          app_id=score_group, role="score")
    labels = WorkerConfig(kafka="k", redis_url="redis://r", triton_url="t", settings=settings,
                          app_id=labels_group, role="labels")
    assert scorer.watermark_group == labels.watermark_group == labels_group

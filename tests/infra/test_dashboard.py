"""The Grafana dashboard: well formed, every query valid PromQL (``promtool``), and every
factory metric it queries one that the workers or the retrainer export.

Unit tests: the metric names come from the factory's own metric registries, no service is
started. (Triton's ``nv_*`` names are Triton's documented metrics.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streams.settings import REPO_ROOT
from tests.infra.test_alert_rules import run, tool

DASHBOARD = REPO_ROOT / "infra" / "grafana" / "dashboards" / "fraud-factory.json"
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure",
                  "nv_inference_request_duration_us"}
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
                   "histogram": ("_bucket", "_sum", "_count")}
NAME = re.compile(r"\b((?:factory|nv)_[a-z0-9_]+)\b")


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect()
            for suffix in SAMPLE_SUFFIXES[family.type]}


def worker_names() -> set[str]:
    """Every sample name a stream worker exports."""
    from streams.dataplane.metrics import WorkerMetrics

    return sample_names(WorkerMetrics().registry)


def retrainer_names() -> set[str]:
    """Every sample name the retrainer (its drift monitors too) and the serving guard
    export."""
    from streams.lifecycle.model_events import RetrainerMetrics
    from streams.lifecycle.serving_guard import GuardMetrics

    retrainer = CollectorRegistry()
    RetrainerMetrics(retrainer)
    GuardMetrics(retrainer)
    return sample_names(retrainer)


def exported() -> set[str]:
    return worker_names() | retrainer_names()


def queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = [(f"panel {p['title']!r}", t["expr"]) for p in board["panels"]
             for t in p["targets"]]
    found += [(f"annotation {a['name']!r}", a["expr"])
              for a in board["annotations"]["list"] if "expr" in a]
    return found


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in board["panels"]:
        assert p["targets"] and p["gridPos"]["w"] > 0 and p["gridPos"]["h"] > 0, p["title"]
        for target in [p, *p["targets"]]:
            assert target["datasource"]["uid"] == "${datasource}", p["title"]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run(tool("promtool"), "check", "rules", path)
    assert f"SUCCESS: {len(queries())} rules found" in out


def test_every_metric_queried_is_exported() -> None:
    names = exported()
    missing = [(where, name) for where, expr in queries() for name in NAME.findall(expr)
               if name not in names and name not in TRITON_METRICS]
    assert missing == [], f"queried but exported by nothing: {missing}"


@pytest.mark.parametrize("panel", ["Events in and scored per second",
                                   "Consumer lag by partition", "End-to-end latency",
                                   "Dead letters by reason", "Triton latency (worker side)",
                                   "Triton errors and endpoints", "Drift statistics",
                                   "Serving model version"])
def test_the_dashboard_has_the_panel(panel: str) -> None:
    assert panel in {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}

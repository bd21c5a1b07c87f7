"""`feast -c feature_repo apply` works on the repository as it is committed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.clients.feast_client import feast_redis_connection, model_feature_order, open_store
from streams.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def test_feast_cli_applies_the_repository(live_stack) -> None:  # noqa: ANN001
    feast = Path(sys.executable).parent / "feast"
    env = {**os.environ,
           "FEAST_REDIS_CONNECTION": feast_redis_connection(live_stack.endpoints.redis)}
    result = subprocess.run([str(feast), "-c", "feature_repo", "apply"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    store = open_store(live_stack.endpoints.redis)
    assert {v.name for v in store.list_feature_views()} == {"card_activity", "terminal_risk"}
    assert {e.name for e in store.list_entities()} >= {"card", "terminal"}
    order = model_feature_order(store)
    assert len(order) == 20 and order[:3] == ["tx_amount", "tx_during_weekend",
                                              "tx_during_night"]

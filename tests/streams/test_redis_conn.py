"""REDIS_URL's two forms: one server (``redis://``), a Redis Cluster (``redis+cluster://``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.clients.feast_client import FEATURE_REPO, feast_redis_connection, open_store
from streams.clients.redis_conn import is_cluster, server_url


@pytest.mark.parametrize(("url", "cluster", "plain"), [
    ("redis://127.0.0.1:6379/0", False, "redis://127.0.0.1:6379/0"),
    ("rediss://:pw@host:6380/0", False, "rediss://:pw@host:6380/0"),
    ("redis+cluster://:pw@redis-cluster:6379/0", True, "redis://:pw@redis-cluster:6379/0"),
    ("rediss+cluster://u:pw@node:7000", True, "rediss://u:pw@node:7000"),
])
def test_the_scheme_says_whether_redis_is_a_cluster(url: str, cluster: bool,
                                                    plain: str) -> None:
    assert is_cluster(url) is cluster
    assert server_url(url) == plain


def test_feast_gets_the_clusters_start_node_and_credentials() -> None:
    assert feast_redis_connection("redis+cluster://:s3cret@redis-cluster:6379/0") == \
        "redis-cluster:6379,password=s3cret"
    assert feast_redis_connection("rediss+cluster://u:p@node:7000") == \
        "node:7000,username=u,password=p,ssl=true"
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        feast_redis_connection("memcached://host:1")


def test_a_cluster_url_makes_the_store_a_cluster_and_a_cluster_file_needs_one(
        tmp_path: Path) -> None:
    from feast.infra.online_stores.redis import RedisType

    store = open_store("redis+cluster://127.0.0.1:7000/0")
    assert store.config.online_store.redis_type == RedisType.redis_cluster
    assert open_store("redis://127.0.0.1:6379/0").config.online_store.redis_type == \
        RedisType.redis
    repo = tmp_path / "repo"
    repo.mkdir()
    text = (FEATURE_REPO / "feature_store.yaml").read_text()
    (repo / "feature_store.yaml").write_text(
        text.replace("  type: redis\n", "  type: redis\n  redis_type: redis_cluster\n"))
    with pytest.raises(ValueError, match="REDIS_URL names one server"):
        open_store("redis://127.0.0.1:6379/0", repo)
    assert open_store("redis+cluster://127.0.0.1:7000/0", repo).config.online_store.redis_type \
        == RedisType.redis_cluster

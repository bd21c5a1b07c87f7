"""Redis clients from ``REDIS_URL``: one server, or a Redis Cluster.

``redis://`` and ``rediss://`` name one server (a primary, with replicas or not);
``redis+cluster://`` and ``rediss+cluster://`` name any node of a Redis Cluster, whose
keys are spread over its primaries by hash slot. Everything the factory keeps in Redis
(Feast's online store, the model route, the label watermark, the store marks) works on
both: no command it sends names two keys, or it names keys of one hash slot.
:func:`redis_client` opens a client on a Feast store's Redis, from its connection string.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = redis.Redis | RedisCluster


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlparse(url).scheme in CLUSTER_SCHEMES


def server_url(url: str) -> str:
    """``url`` with the scheme redis-py and Feast know (``+cluster`` dropped)."""
    scheme = urlparse(url).scheme
    if scheme in CLUSTER_SCHEMES:
        return CLUSTER_SCHEMES[scheme] + url[len(scheme):]
    return url


def connect(url: str, **options: Any) -> Client:  # noqa: ANN401
    """A client for ``url``: :class:`redis.Redis`, or :class:`RedisCluster` (which follows
    the cluster's slots from any node it is given)."""
    if is_cluster(url):
        return RedisCluster.from_url(server_url(url), **options)
    return redis.Redis.from_url(url, **options)


def redis_client(store: Any) -> Client:  # noqa: ANN401
    """A client on a Feast store's Redis, from its connection string, as Feast builds its
    own: a :class:`RedisCluster` when the store's ``redis_type`` is ``redis_cluster``."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType

    config = store.config.online_store
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    if config.redis_type == RedisType.redis_cluster:
        return RedisCluster(startup_nodes=[ClusterNode(n["host"], int(n["port"]))
                                           for n in nodes], **params)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)

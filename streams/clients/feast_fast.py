"""A thin fast path on Feast's Redis layout: the worker's batched reads and pushes.

Feast's Python SDK spends about 0.8 ms on a one-row lookup and about 100 us a row on a
push, mostly in Python around the Redis calls. :class:`FastOnlineFeatures` has the same
methods as :class:`streams.clients.feast_client.OnlineFeatures` and talks to Redis directly, one
pipeline a batch, reading and writing exactly the bytes Feast does; the integration test
``tests/streams/test_feast_fast.py`` proves both directions equal to Feast's own calls.

The layout (Feast 0.67, ``entity_key_serialization_version: 3``, one Int64 join key):

- key: ``<u32 1><u32 STRING><u32 len(join_key)> join_key <u32 INT64><u32 8><i64 id>``
  followed by the project name, all integers little-endian;
- one hash per entity, shared by every view of that entity; a feature's field is the
  4-byte little-endian murmur3 hash of ``"<view>:<feature>"``, its value a serialized
  ``feast.types.Value``; the field ``_ts:<view>`` holds the row's event time as a
  serialized ``google.protobuf.Timestamp``.

Unless the online store sets ``skip_dedup``, a Feast push skips a row whose event time is
not later than the one stored; the fast path makes the same decision inside Redis (a Lua
script a row), so it needs one round trip where Feast needs two, and two writers cannot
interleave between the read and the write. With ``skip_dedup`` both write every row.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from streams.clients.feast_client import (
    CARD_VIEW,
    TERMINAL_VIEW,
    LabelArrays,
    OnlineFeatures,
    model_feature_order,
)
from streams.clients.feast_values import (
    INT64,
    SERIALIZATION_VERSION,
    VALUE_TAGS,
    decode_labels,
    decode_scalar,
    encode_value,
    event_timestamps,
    timestamp_bytes,
)
from streams.clients.label_versions import mark_changed, versions_key
from streams.clients.redis_conn import redis_client

LABEL_FIELDS = ("label_event_times", "label_known_at", "label_frauds")

_CHECK_AND_SET = """
local function varint(raw, i)
  local value, scale, start, b = 0, 1, i, 128
  while b >= 128 do
    b = string.byte(raw, i)
    value = value + (b % 128) * scale
    scale = scale * 128
    i = i + 1
  end
  if i - start == 10 then value = -1 end
  return value, i
end
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local seconds, nanos, i = 0, 0, 1
  while i <= #stored do
    local tag, value = string.byte(stored, i)
    value, i = varint(stored, i + 1)
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  if seconds > 0 or (seconds == 0 and nanos > 0) then
    local new_seconds, new_nanos = tonumber(ARGV[2]), tonumber(ARGV[3])
    if new_seconds < seconds or (new_seconds == seconds and new_nanos <= nanos) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], unpack(ARGV, 6))
local ttl = tonumber(ARGV[5])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""
# Feast counts a stored time at or before the epoch as no time at all (a 10-byte varint
# is a negative int64), which the script copies; pushes of such times are refused below.
_CHECK_AND_SET_SHA = hashlib.sha1(_CHECK_AND_SET.encode()).hexdigest()

# KEYS: the change-token hash, then each terminal's key; ARGV: the three label fields, then
# each terminal's id and the token its cached arrays were read under ("" for none). A
# terminal whose token is unchanged gets {token}; any other gets {token, arrays...}.
_READ_CHANGED = """
local out = {}
for j = 1, #KEYS - 1 do
  local token = redis.call('HGET', KEYS[1], ARGV[2 + 2 * j])
  if token and token == ARGV[3 + 2 * j] then
    out[j] = {token}
  else
    local values = redis.call('HMGET', KEYS[j + 1], ARGV[1], ARGV[2], ARGV[3])
    out[j] = {token or false, values[1], values[2], values[3]}
  end
end
return out
"""
_READ_CHANGED_SHA = hashlib.sha1(_READ_CHANGED.encode()).hexdigest()
LABEL_CACHE_MAX = 100_000
"""Terminals whose label arrays a scorer keeps at most (cleared when passed)."""


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view lives in Redis, and how each of its fields is encoded."""

    name: str
    join_key: str
    key_prefix: bytes
    key_suffix: bytes
    fields: dict[str, bytes]
    kinds: dict[str, str]
    ts_field: bytes

    def keys(self, ids: np.ndarray) -> list[bytes]:
        """Redis keys of entity ``ids``, in order."""
        raw = np.ascontiguousarray(ids, dtype="<i8").tobytes()
        prefix, suffix = self.key_prefix, self.key_suffix
        return [prefix + raw[i:i + 8] + suffix for i in range(0, len(raw), 8)]


def view_layout(store: Any, name: str) -> ViewLayout:
    """The layout of feature view ``name``; raises if the fast path cannot serve it."""
    from feast.infra.online_stores.helpers import _mmh3
    from feast.value_type import ValueType

    view = store.get_feature_view(name)
    if len(view.entity_columns) != 1 or view.entity_columns[0].dtype.to_value_type() \
            != ValueType.INT64:
        raise ValueError(f"feature view {name!r} must have one Int64 join key for the fast "
                         f"path, has {[(c.name, str(c.dtype)) for c in view.entity_columns]}")
    join_key = view.entity_columns[0].name.encode()
    kinds = {}
    for field in view.features:
        kind = field.dtype.to_value_type().name
        if kind not in VALUE_TAGS:
            raise ValueError(f"feature {name}:{field.name} is {kind}; the fast path encodes "
                             f"only {sorted(VALUE_TAGS)}")
        kinds[field.name] = kind
    prefix = struct.pack("<III", 1, ValueType.STRING.value, len(join_key)) + join_key \
        + struct.pack("<II", ValueType.INT64.value, 8)
    return ViewLayout(name, join_key.decode(), prefix, store.project.encode(),
                      {f: _mmh3(f"{name}:{f}") for f in kinds}, kinds,
                      f"_ts:{name}".encode())


def _check_store(store: Any) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    config = store.config
    online = config.online_store
    if not isinstance(online, RedisOnlineStoreConfig):
        raise ValueError(f"the fast path reads Feast's redis online store; this repository's "
                         f"online store is {getattr(online, 'type', online)!r}")
    if online.redis_type not in (RedisType.redis, RedisType.redis_cluster):
        raise ValueError(f"the fast path supports redis_type 'redis' and 'redis_cluster', "
                         f"not {online.redis_type.value!r}")
    if config.entity_key_serialization_version != SERIALIZATION_VERSION:
        raise ValueError(f"the fast path writes entity_key_serialization_version "
                         f"{SERIALIZATION_VERSION}; feature_store.yaml sets "
                         f"{config.entity_key_serialization_version}")
    if config.registry.enable_online_feature_view_versioning:
        raise ValueError("the fast path does not follow versioned online feature view names "
                         "(registry.enable_online_feature_view_versioning)")
    for other in store.list_feature_services():
        if other.precompute_online and any(
                p.name in (CARD_VIEW, TERMINAL_VIEW) for p in other.feature_view_projections):
            raise ValueError(f"feature service {other.name!r} precomputes online vectors, "
                             "which a push refreshes and the fast path does not")


class FastOnlineFeatures:
    """:class:`streams.clients.feast_client.OnlineFeatures` on Feast's Redis layout, without
    the SDK."""

    def __init__(self, store: Any, service: str = "fraud_detector_v1") -> None:
        _check_store(store)
        self.store = store
        feature_service = store.get_feature_service(service)
        self.views = {p.name: [f.name for f in p.features]
                      for p in feature_service.feature_view_projections}
        self.order = model_feature_order(store, service)
        self.layouts = {name: view_layout(store, name) for name in (CARD_VIEW, TERMINAL_VIEW)}
        for name, extra in ((CARD_VIEW, ()), (TERMINAL_VIEW, LABEL_FIELDS)):
            pushed, stored = [*self.views.get(name, []), *extra], list(self.layouts[name].kinds)
            if sorted(pushed) != sorted(stored):
                raise ValueError(f"a push of {name!r} writes {pushed}, but the view stores "
                                 f"{stored}")
            source = store.get_feature_view(name).stream_source.name
            fed = [v.name for v in store.list_feature_views()
                   if v.stream_source is not None and v.stream_source.name == source]
            if fed != [name]:
                raise ValueError(f"push source {source!r} feeds {fed}; a Feast push writes "
                                 f"all of them, the fast path only {name!r}")
        self.dedup = not store.config.online_store.skip_dedup
        self.key_ttl = int(store.config.online_store.key_ttl_seconds or 0)
        self.redis = redis_client(store)
        self.cluster = isinstance(self.redis, RedisCluster)
        self.label_versions = versions_key(store.project, TERMINAL_VIEW)
        # Label arrays by terminal with their change token; not kept when Feast's keys
        # expire (an expired key leaves its token behind), nor in a Redis Cluster (the
        # script that reads the tokens and the changed arrays names keys of many slots).
        self.cache_labels = self.key_ttl == 0 and not self.cluster
        self._labels: dict[int, tuple[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def close(self) -> None:
        """Release the Redis connections."""
        self.redis.close()

    def push_card_activity(self, card_ids: np.ndarray, event_times: np.ndarray,
                           values: np.ndarray) -> None:
        """Push one row per card (the latest state) to the card view, online."""
        self._push(CARD_VIEW, card_ids, event_times, values, None)

    def push_terminal_risk(self, terminal_ids: np.ndarray, event_times: np.ndarray,
                           values: np.ndarray,
                           arrays: Sequence[LabelArrays] | None = None,
                           ) -> None:
        """Push one row per terminal: its window values and the label arrays behind them."""
        arrays = arrays if arrays is not None else [([], [], [])] * len(terminal_ids)
        self._push(TERMINAL_VIEW, terminal_ids, event_times, values, arrays,
                   [mark_changed(self.label_versions, terminal_ids)] if len(terminal_ids)
                   else [])

    def read_terminal_labels(self, terminal_ids: np.ndarray
                             ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each terminal's label arrays (event times, known times, frauds); empty if none."""
        layout = self.layouts[TERMINAL_VIEW]
        unique = np.unique(np.asarray(terminal_ids, dtype=np.int64))
        replies = self._hmget(layout, unique, [layout.fields[n] for n in LABEL_FIELDS])
        return {terminal: decode_labels(*reply)
                for terminal, reply in zip(unique.tolist(), replies, strict=True)}

    def read(self, view: str, key: str, ids: np.ndarray) -> np.ndarray:
        """Online values of ``view`` for ``ids`` in the service's field order; missing -> 0."""
        layout = self.layouts[view]
        if key != layout.join_key:
            raise ValueError(f"{view!r} is keyed by {layout.join_key!r}, not {key!r}")
        names = self.views[view]
        unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        replies = self._hmget(layout, unique, [layout.fields[n] for n in names])
        table = np.array([[decode_scalar(raw) for raw in reply] for reply in replies],
                         dtype=np.float64).reshape(len(unique), len(names))
        return table[inverse]

    def _hmget(self, layout: ViewLayout, ids: np.ndarray,
               fields: list[bytes]) -> list[list[bytes | None]]:
        return self._round_trip([(b"HMGET", key, *fields) for key in layout.keys(ids)])

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies, in order.

        A pipeline without redis-py's bookkeeping for each command, which costs more than
        the command itself here. The connection is dropped on any error, as a reply left
        unread would be taken for the answer to the next command sent on it; a broken
        connection is retried once on a fresh one, as redis-py does (every command sent
        here may run twice: reads, and writes of a key's whole state).
        """
        if not commands:
            return []
        if isinstance(self.redis, RedisCluster):  # self.cluster; this narrows self.redis
            return self._cluster_round_trip(commands)
        pool = self.redis.connection_pool
        for attempt in (0, 1):
            connection = pool.get_connection()
            try:
                connection.send_packed_command(connection.pack_commands(commands))
                return [connection.read_response() for _ in commands]
            except redis.exceptions.ConnectionError:
                connection.disconnect()
                if attempt:
                    raise
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")

    def _cluster_round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """:meth:`_round_trip` on a Redis Cluster: redis-py's cluster pipeline sends each
        command to the primary of its key's slot, the commands of one primary in one
        write, and follows a moved slot; the replies come back in order."""
        pipe = self.redis.pipeline(transaction=False)
        for name, *args in commands:
            # By its name as text, which the cluster client's routing tables are keyed by.
            pipe.execute_command(name.decode() if isinstance(name, bytes) else name, *args)
        return pipe.execute()

    def serves(self, client: redis.Redis | RedisCluster) -> bool:
        """Whether ``client`` talks to this store's Redis (same host, port and database),
        so commands for both can share one round trip (never in a Redis Cluster: each
        client routes its own)."""
        if isinstance(self.redis, RedisCluster) or isinstance(client, RedisCluster):
            return False
        mine, theirs = (c.connection_pool.connection_kwargs for c in (self.redis, client))
        return all(mine.get(k) == theirs.get(k) for k in ("host", "port", "db", "path"))

    def scoring_round_trip(self, commands: list[tuple[Any, ...]], card_ids: np.ndarray,
                           event_times: np.ndarray, values: np.ndarray,
                           terminal_ids: np.ndarray
                           ) -> tuple[list[Any], dict[int, tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]]]:
        """What a scoring batch needs from Redis, in one round trip: ``commands`` (the
        caller's reads on the same server; their raw replies are returned), the push of the
        card view (one row a card) and the label arrays of ``terminal_ids``."""
        layout = self.layouts[TERMINAL_VIEW]
        unique = np.unique(np.asarray(terminal_ids, dtype=np.int64))
        fields = [layout.fields[n] for n in LABEL_FIELDS]
        ids = unique.tolist()
        if self.cache_labels:
            # Only the terminals whose arrays changed since this scorer read them.
            cache = self._labels
            if len(cache) > LABEL_CACHE_MAX:
                cache.clear()
            args: list[Any] = []
            for terminal in ids:
                kept = cache.get(terminal)
                args += (str(terminal), kept[0] if kept is not None else b"")
            reads = [(b"EVALSHA", _READ_CHANGED_SHA, 1 + len(ids), self.label_versions,
                      *layout.keys(unique), *fields, *args)] if ids else []
        else:
            reads = [(b"HMGET", key, *fields) for key in layout.keys(unique)]
        push = self._write_commands(self.layouts[CARD_VIEW],
                                    self._push_rows(CARD_VIEW, card_ids, event_times, values,
                                                    None))
        replies = self._scripted_round_trip([*commands, *reads, *push])
        found = replies[len(commands):len(commands) + len(reads)]
        if self.cache_labels:
            return replies[:len(commands)], self._cached_labels(ids, found[0] if ids else [])
        return replies[:len(commands)], {terminal: decode_labels(*reply)
                                         for terminal, reply in zip(ids, found, strict=True)}

    def _cached_labels(self, ids: list[int], replies: list[list[Any]]
                       ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        cache = self._labels
        labels = {}
        for terminal, reply in zip(ids, replies, strict=True):
            if len(reply) == 1:
                labels[terminal] = cache[terminal][1]
                continue
            token, *fields = reply
            arrays = decode_labels(*fields)
            for array in arrays:
                array.flags.writeable = False  # shared by every batch that reads it
            labels[terminal] = arrays
            if token is not None:
                cache[terminal] = (token, arrays)
            else:
                cache.pop(terminal, None)
        return labels

    def _push(self, view: str, ids: np.ndarray, event_times: np.ndarray, values: np.ndarray,
              arrays: Sequence[tuple[Any, Any, Any]] | None,
              after: Sequence[tuple[Any, ...]] = ()) -> None:
        layout = self.layouts[view]
        self._scripted_round_trip(
            [*self._write_commands(layout, self._push_rows(view, ids, event_times, values,
                                                           arrays)), *after])

    def _push_rows(self, view: str, ids: np.ndarray, event_times: np.ndarray,
                   values: np.ndarray, arrays: Sequence[tuple[Any, Any, Any]] | None
                   ) -> list[tuple[bytes, tuple[int, int], list[bytes]]]:
        layout = self.layouts[view]
        names = self.views[view]
        table = np.asarray(values, dtype=np.float64).reshape(len(ids), len(names))
        columns: list[list[bytes]] = []
        for name, column in zip(names, table.T, strict=True):
            kind = layout.kinds[name]
            if kind == INT64:
                if not np.isfinite(column).all():
                    raise ValueError(f"{view}:{name} is Int64 and got a non-finite value")
                column = column.astype(np.int64)
            columns.append([encode_value(kind, v) for v in column.tolist()])
        fields = [layout.fields[n] for n in names]
        if arrays is not None:
            for j, name in enumerate(LABEL_FIELDS):
                kind = layout.kinds[name]
                columns.append([encode_value(kind, row[j]) for row in arrays])
                fields.append(layout.fields[name])
        return [(key, stamp, [item for pair in zip(fields, encoded, strict=True)
                              for item in pair])
                for key, stamp, *encoded in zip(layout.keys(ids), event_timestamps(event_times),
                                                *columns, strict=True)]

    def _write_commands(self, layout: ViewLayout,
                        rows: list[tuple[bytes, tuple[int, int], list[bytes]]]
                        ) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for key, (seconds, nanos), pairs in rows:
            stamp = timestamp_bytes(seconds, nanos)
            if self.dedup:
                commands.append((b"EVALSHA", _CHECK_AND_SET_SHA, 1, key, layout.ts_field,
                                 seconds, nanos, stamp, self.key_ttl, *pairs))
            else:
                commands.append((b"HSET", key, layout.ts_field, stamp, *pairs))
                if self.key_ttl:
                    commands.append((b"EXPIRE", key, self.key_ttl))
        return commands

    def _scripted_round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            return self._round_trip(commands)
        except redis.exceptions.NoScriptError:
            # A restarted or flushed Redis forgets scripts; each row is a check-and-set,
            # and every other command here a read or a new change token, so sending them
            # again is safe.
            self.redis.script_load(_CHECK_AND_SET)
            self.redis.script_load(_READ_CHANGED)
            return self._round_trip(commands)


def online_features(store, path: str = "fast"):  # noqa: ANN001, ANN201
    """The worker's Feast online access: ``fast`` (Feast's Redis layout, proven equal to
    the SDK by the tests) or ``sdk`` (Feast's Python SDK)."""
    if path == "sdk":
        return OnlineFeatures(store)
    return FastOnlineFeatures(store)

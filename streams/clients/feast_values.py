"""Feast's value and timestamp encoding on Redis, byte for byte, without protobuf.

A feature's field in Feast's Redis hash holds a serialized ``feast.types.Value`` (a double,
an int64, or a packed list of either) and the ``_ts:<view>`` field a serialized
``google.protobuf.Timestamp``. These functions write and read exactly those bytes for the
fast path (:mod:`streams.clients.feast_fast`); ``tests/streams/test_feast_fast.py`` checks
them against Feast's own calls.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

SERIALIZATION_VERSION = 3

_MASK64 = (1 << 64) - 1
DOUBLE, INT64, DOUBLE_LIST, INT64_LIST = "DOUBLE", "INT64", "DOUBLE_LIST", "INT64_LIST"
# Value proto tags: double_val = 5 (fixed64), int64_val = 4 (varint), double_list_val = 15
# and int64_list_val = 14 (length-delimited); inside a list, packed ``val = 1``.
VALUE_TAGS = {DOUBLE: 0x29, INT64: 0x20, DOUBLE_LIST: 0x7A, INT64_LIST: 0x72}
_SMALL_INTS = [bytes((0x20, v)) for v in range(128)]
_BYTES = [bytes((v,)) for v in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _BYTES[value]
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def encode_value(kind: str, value: Any) -> bytes:
    """A serialized ``feast.types.Value`` equal to what Feast's push stores for ``value``."""
    if kind == DOUBLE:
        return b"" if math.isnan(value) else b"\x29" + struct.pack("<d", value)
    if kind == INT64:
        value = int(value)
        return _SMALL_INTS[value] if 0 <= value < 128 else b"\x20" + _varint(value)
    if isinstance(value, np.ndarray):
        packed = _packed_array(kind, value)
        if packed is not None:
            inner = b"\x0a" + _varint(len(packed)) + packed if packed else b""
            return bytes((VALUE_TAGS[kind],)) + _varint(len(inner)) + inner
        value = value.tolist()
    if kind == DOUBLE_LIST:
        packed = struct.pack(f"<{len(value)}d", *value)
    else:
        try:
            packed = bytes(value)  # every value in 0..127 is its own one-byte varint
            small = packed.isascii()
        except (TypeError, ValueError):
            small = False
        if not small:
            packed = b"".join(_varint(int(v)) for v in value)
    inner = b"\x0a" + _varint(len(packed)) + packed if packed else b""
    return bytes((VALUE_TAGS[kind],)) + _varint(len(inner)) + inner


def _packed_array(kind: str, value: np.ndarray) -> bytes | None:
    """The packed payload of a list straight from its array (the bytes ``struct.pack``
    and one-byte varints give), or ``None`` when it needs the general encoding."""
    if kind == DOUBLE_LIST:
        return np.ascontiguousarray(value, dtype="<f8").tobytes()
    if value.dtype.kind in "iub" and (not value.size or (value.min() >= 0 and value.max() < 128)):
        return value.astype(np.uint8).tobytes()
    return None


def _parse(raw: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


def decode_scalar(raw: bytes | None) -> float:
    """A stored scalar as a float; absent or null is 0, like ``OnlineFeatures.read``."""
    if not raw:
        return 0.0
    if raw[0] == 0x29 and len(raw) == 9:
        return struct.unpack_from("<d", raw, 1)[0]
    if raw[0] == 0x20:
        return float(_signed(_read_varint(raw, 1)[0]))
    value = _parse(raw)
    return 0.0 if value is None else float(value)


def decode_array(raw: bytes | None, dtype: type) -> np.ndarray:
    """A stored list as a numpy array; absent or null is an empty array."""
    if not raw:
        return np.empty(0, dtype=dtype)
    length, pos = _read_varint(raw, 1)
    if length == 0 and pos == len(raw):
        return np.empty(0, dtype=dtype)
    if raw[pos] == 0x0A:
        size, start = _read_varint(raw, pos + 1)
        if start + size == len(raw):
            if raw[0] == 0x7A and size % 8 == 0:
                return np.frombuffer(raw, dtype="<f8", offset=start).astype(dtype)
            if raw[0] == 0x72 and raw[start:].isascii():  # every varint one byte
                return np.frombuffer(raw, dtype=np.uint8, offset=start).astype(dtype)
    value = _parse(raw)
    return np.asarray([] if value is None else list(value.val), dtype=dtype)


def decode_labels(times: bytes | None, known: bytes | None, frauds: bytes | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A terminal's stored label arrays (event times, known times, frauds)."""
    return (decode_array(times, np.float64), decode_array(known, np.float64),
            decode_array(frauds, np.int64))


def event_timestamps(event_times: np.ndarray) -> list[tuple[int, int]]:
    """Epoch seconds as ``(seconds, nanos)``, rounded as Feast's push rounds them.

    Pandas turns float seconds into nanoseconds (whole seconds and the fraction rounded to
    nine digits apart) and Feast drops what is below the microsecond.
    """
    times = np.asarray(event_times, dtype=np.float64)
    if times.size and not (times > 0).all():
        raise ValueError("event times must be after the Unix epoch: Feast reads a stored "
                         "time at or before it as no time, so its pushes would not dedupe")
    whole = times.astype(np.int64)
    nanos = whole * 1_000_000_000 + (np.round(times - whole, 9) * 1e9).astype(np.int64)
    micros = nanos // 1000
    return list(zip((micros // 1_000_000).tolist(),
                    ((micros % 1_000_000) * 1000).tolist(), strict=True))


def timestamp_bytes(seconds: int, nanos: int) -> bytes:
    """A serialized ``google.protobuf.Timestamp``."""
    return ((b"\x08" + _varint(seconds) if seconds else b"")
            + (b"\x10" + _varint(nanos) if nanos else b""))

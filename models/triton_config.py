"""Read the tensor contract of a Triton model from its ``config.pbtxt``.

``triton_repo/fraud_detector/config.pbtxt`` is the single source of truth for tensor
names, data types and shapes. The exporter, the python backend and the scoring client
all read it instead of repeating the names. The parser below understands the protobuf
text format generically (messages, lists, scalars, comments); it does not know Triton's
schema, so every field comes back as a list of the values seen for it.

Example
-------
>>> config = read_model_config()
>>> config.input.name, config.input.dims, config.output.name
('features', (20,), 'score')
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "fraud_detector"
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "triton_repo"
DEFAULT_CONFIG_PATH = DEFAULT_REPOSITORY / MODEL_NAME / "config.pbtxt"

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<punct>[{}\[\]<>:,;])
    | (?P<word>[^\s{}\[\]<>:,;"'\#]+)
    """,
    re.VERBOSE,
)
_CLOSING = {"{": "}", "<": ">"}

Message = dict[str, list[Any]]


class ConfigError(ValueError):
    """The model configuration is malformed or breaks the tensor contract."""


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(f"cannot parse config text at offset {pos}: {text[pos : pos + 20]!r}")
        if match.lastgroup != "space":
            tokens.append(match.group())
        pos = match.end()
    return tokens


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        return ast.literal_eval(token)
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    for convert in (int, float):
        try:
            return convert(token)
        except ValueError:
            pass
    return token  # an enum name such as TYPE_FP32


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ConfigError(f"expected {expected or 'a token'!r}, found {token!r}")
        self.pos += 1
        return token

    def message(self, closing: str | None) -> Message:
        fields: Message = {}
        while self.peek() != closing:
            name = self.take()
            if self.peek() == ":":
                self.take()
            fields.setdefault(name, []).extend(self.values())
            if self.peek() in (",", ";"):
                self.take()
        if closing is not None:
            self.take(closing)
        return fields

    def values(self) -> list[Any]:
        token = self.take()
        if token in _CLOSING:
            return [self.message(_CLOSING[token])]
        if token != "[":
            return [_scalar(token)]
        items: list[Any] = []
        while self.peek() != "]":
            items.extend(self.values())
            if self.peek() == ",":
                self.take()
        self.take("]")
        return items


def parse_pbtxt(text: str) -> Message:
    """Parse protobuf text format into ``{field: [values...]}``, nested for messages."""
    return _Parser(text).message(None)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: name, Triton data type, per-item dims."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @property
    def triton_dtype(self) -> str:
        """The data type as the client API spells it (``FP32`` for ``TYPE_FP32``)."""
        return self.data_type.removeprefix("TYPE_")

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The matching numpy dtype (``float32`` for ``TYPE_FP32``)."""
        names = {"FP16": "float16", "FP32": "float32", "FP64": "float64", "STRING": "object"}
        kind = self.triton_dtype
        return np.dtype(names.get(kind, kind.lower()))


@dataclass(frozen=True)
class ModelConfig:
    """The part of a Triton model configuration the factory relies on."""

    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    path: Path

    @property
    def input(self) -> TensorSpec:
        """The single input tensor."""
        return _only(self.inputs, "input", self.path)

    @property
    def output(self) -> TensorSpec:
        """The single output tensor."""
        return _only(self.outputs, "output", self.path)

    @property
    def n_features(self) -> int:
        """How many features one row carries."""
        return self.input.dims[0]


def _only(specs: tuple[TensorSpec, ...], kind: str, path: Path) -> TensorSpec:
    if len(specs) != 1:
        raise ConfigError(f"{path}: expected exactly one {kind} tensor, found {len(specs)}")
    return specs[0]


def _tensor(fields: Message, path: Path) -> TensorSpec:
    try:
        (name,) = fields["name"]
        (data_type,) = fields["data_type"]
        dims = tuple(int(d) for d in fields["dims"])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: tensor needs one name, one data_type and dims") from exc
    return TensorSpec(name=str(name), data_type=str(data_type), dims=dims)


def read_model_config(path: Path | str = DEFAULT_CONFIG_PATH) -> ModelConfig:
    """Read name, backend, batch limit and tensors from a ``config.pbtxt``.

    Parameters
    ----------
    path
        The ``config.pbtxt`` file; by default the repository's ``fraud_detector`` one.

    Raises
    ------
    ConfigError
        When the file does not parse or a tensor lacks a name, type or dims.
    """
    path = Path(path)
    fields = parse_pbtxt(path.read_text())
    name = fields.get("name", [path.parent.name])[0]
    return ModelConfig(
        name=str(name),
        backend=str(fields.get("backend", [""])[0]),
        max_batch_size=int(fields.get("max_batch_size", [0])[0]),
        inputs=tuple(_tensor(t, path) for t in fields.get("input", [])),
        outputs=tuple(_tensor(t, path) for t in fields.get("output", [])),
        path=path,
    )


def load_request_config(path: Path | str, versions: list[int]) -> str:
    """The JSON model configuration for a load request that serves exactly ``versions``.

    Triton's explicit model control loads whatever version policy the request carries,
    so a swap loads ``[N, N + 1]`` and later ``[N + 1]`` without editing the file on disk.
    Conversion goes through Triton's own ``ModelConfig`` message so that every field keeps
    its exact meaning.

    Parameters
    ----------
    path
        The model's ``config.pbtxt``.
    versions
        The version numbers to keep loaded.
    """
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    if not versions:
        raise ConfigError("a load request needs at least one version")
    message = text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    message.version_policy.specific.versions[:] = sorted(set(versions))
    return json_format.MessageToJson(message, preserving_proto_field_name=True)

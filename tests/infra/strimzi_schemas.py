"""Strimzi custom resources checked against Strimzi's real CRD OpenAPI schemas.

The CRD YAMLs are generated offline by ``infra/k8s/schemas/pom.xml`` (Strimzi's own
``CrdGenerator`` run over the model classes of the ``io.strimzi:api`` jar from Maven Central)
into ``.factory/k8s-schemas/strimzi/``. :func:`strimzi_schema` runs that Maven build once when
the files are missing or were made by another version of the pom.

:func:`validate_strimzi` validates a whole object (``apiVersion``, ``kind``, ``metadata``,
``spec``) with a JSON Schema Draft 7 validator. The OpenAPI keywords that JSON Schema lacks are
handled as the Kubernetes API server does: ``nullable: true`` admits ``null``; the
``x-kubernetes-*`` keys are ignored (``x-kubernetes-int-or-string`` nodes already carry an
``anyOf`` of integer and string); an ``object`` without ``properties`` takes any content.

Strict mode (the default) rejects a property that the schema does not list wherever it lists
``properties`` and has neither ``additionalProperties`` nor
``x-kubernetes-preserve-unknown-fields``: there the API server silently prunes the field and
Strimzi only logs a warning, so a misspelled field name would otherwise go unnoticed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "infra" / "k8s" / "schemas" / "pom.xml"
SCHEMA_DIR = REPO_ROOT / ".factory" / "k8s-schemas" / "strimzi"
GROUP = "kafka.strimzi.io"
MAVEN_TIMEOUT_S = 900

# Kind -> the file name Strimzi gives its CRD (packaging/install/cluster-operator), as the pom does.
CRD_FILES = {
    "Kafka": "040-Crd-kafka.yaml",
    "KafkaNodePool": "04A-Crd-kafkanodepool.yaml",
    "KafkaTopic": "043-Crd-kafkatopic.yaml",
    "KafkaUser": "044-Crd-kafkauser.yaml",
}

# The CRDs say only ``metadata: {type: object}`` (the API server validates ObjectMeta itself).
# The fields a manifest of ours sets are typed here; any other ObjectMeta field is let through.
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "generateName": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "minLength": 1},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
    "x-kubernetes-preserve-unknown-fields": True,
}

_STAMP = SCHEMA_DIR / ".pom.sha256"
_build_lock = threading.Lock()


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _schemas_current() -> bool:
    if not all((SCHEMA_DIR / name).is_file() for name in CRD_FILES.values()):
        return False
    return _STAMP.is_file() and _STAMP.read_text().strip() == _pom_digest()


def ensure_schemas() -> Path:
    """Generate the CRD YAMLs with Maven unless they are there for the current pom."""
    with _build_lock:
        if _schemas_current():
            return SCHEMA_DIR
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                "Strimzi CRD schemas are missing and Maven (mvn) is not on PATH: install Maven "
                f"and Java 17, or run `mvn -q -B -f {POM.relative_to(REPO_ROOT)} package` "
                "where they are."
            )
        cmd = [mvn, "-q", "-B", "-f", str(POM.relative_to(REPO_ROOT)), "package"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=MAVEN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"`{' '.join(cmd)}` took more than {MAVEN_TIMEOUT_S} s generating Strimzi's CRDs"
            ) from exc
        missing = [n for n in CRD_FILES.values() if not (SCHEMA_DIR / n).is_file()]
        if proc.returncode != 0 or missing:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise RuntimeError(
                f"`{' '.join(cmd)}` (in {REPO_ROOT}) could not generate Strimzi's CRDs "
                f"(exit {proc.returncode}; missing: {missing or 'none'}):\n{tail}"
            )
        _STAMP.write_text(_pom_digest() + "\n")
        return SCHEMA_DIR


@functools.cache
def _crd(kind: str) -> dict[str, Any]:
    if kind not in CRD_FILES:
        raise ValueError(f"no Strimzi CRD for kind {kind!r}; known kinds: {sorted(CRD_FILES)}")
    path = ensure_schemas() / CRD_FILES[kind]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as f:
        crd = yaml.load(f, Loader=loader)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != kind:
        raise RuntimeError(f"{path} is not the CustomResourceDefinition of {kind}")
    return crd


def served_versions(kind: str) -> list[str]:
    """The API versions the CRD of ``kind`` serves, e.g. ``["v1beta2"]``."""
    return [v["name"] for v in _crd(kind)["spec"]["versions"] if v.get("served", True)]


def _raw_schema(kind: str, version: str) -> dict[str, Any]:
    for v in _crd(kind)["spec"]["versions"]:
        if v["name"] == version and v.get("served", True):
            return v["schema"]["openAPIV3Schema"]
    raise ValueError(f"{kind} CRD serves no version {version!r}; it serves {served_versions(kind)}")


def strimzi_schema(kind: str, version: str = "v1beta2") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of Strimzi's CRD for ``kind`` at ``version`` (a fresh copy)."""
    return copy.deepcopy(_raw_schema(kind, version))


_COMBINATORS = ("oneOf", "anyOf", "allOf", "not")


def _to_json_schema(node: Any, strict: bool) -> Any:
    """OpenAPI v3 (structural) schema node -> JSON Schema node, recursively."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k not in _COMBINATORS}
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if "properties" in node:
        out["properties"] = {k: _to_json_schema(v, strict) for k, v in node["properties"].items()}
        if (
            strict
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _to_json_schema(node["additionalProperties"], strict)
    if isinstance(node.get("items"), dict):
        out["items"] = _to_json_schema(node["items"], strict)
    # Structural schemas keep types and property lists out of oneOf/anyOf/allOf/not: those only
    # add value checks (e.g. "one of certificate or pattern"), so they are taken as they are;
    # closing them with additionalProperties: false would reject every valid object.
    for key in _COMBINATORS:
        if key in node:
            out[key] = node[key]
    return out


@functools.cache
def _validator(kind: str, version: str, strict: bool) -> jsonschema.Draft7Validator:
    schema = _to_json_schema(_raw_schema(kind, version), strict)
    schema["properties"]["apiVersion"] = {"const": f"{GROUP}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = _METADATA_SCHEMA
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _sortable(key: str | int) -> str:
    return f"{key:012d}" if isinstance(key, int) else key


def _where(error: jsonschema.ValidationError) -> str:
    return error.json_path if error.path else "$"


def validate_strimzi(obj: dict[str, Any], *, strict: bool = True) -> None:
    """Validate a whole Strimzi custom resource against its CRD's schema.

    The schema is chosen by ``obj["kind"]`` and the version in ``obj["apiVersion"]``
    (``kafka.strimzi.io/<version>``). Raises :class:`jsonschema.ValidationError` naming every
    problem with its JSON path; ``strict`` (default) also rejects fields the schema does not list.
    """
    if not isinstance(obj, dict):
        raise jsonschema.ValidationError(f"a Strimzi resource is a mapping, not {type(obj)}")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind not in CRD_FILES:
        raise jsonschema.ValidationError(
            f"kind {kind!r} is not one of the Strimzi kinds checked here: {sorted(CRD_FILES)}"
        )
    group, _, version = str(api_version).partition("/")
    if group != GROUP or version not in served_versions(kind):
        raise jsonschema.ValidationError(
            f"{kind}: apiVersion {api_version!r} is not served; use one of "
            f"{[f'{GROUP}/{v}' for v in served_versions(kind)]}"
        )
    found = _validator(kind, version, strict).iter_errors(obj)
    errors = sorted(found, key=lambda e: ([_sortable(p) for p in e.path], e.message))
    if not errors:
        return
    name = (obj.get("metadata") or {}).get("name", "<unnamed>")
    best = jsonschema.exceptions.best_match(errors)
    lines = "\n".join(f"  {_where(e)}: {e.message}" for e in errors)
    # A fresh error: the validator's own would print the (large) failing schema node. The
    # individual errors stay available as ``context``; ``path`` is the most relevant one's.
    raise jsonschema.ValidationError(
        f"{kind} {name!r} does not match Strimzi's {api_version} schema "
        f"({len(errors)} error(s)):\n{lines}",
        path=best.path,
        context=errors,
    )

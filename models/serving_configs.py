"""The model configuration for NVIDIA's Triton image, made from the one source.

``triton_repo/fraud_detector/config.pbtxt`` is the model's contract and the local
Triton's configuration: the python backend (``models/triton_backend.py``), which runs
ONNX Runtime itself and picks CUDA at run time. A cluster runs NVIDIA's Triton image,
whose ONNX Runtime backend serves the same version directories (``N/model.onnx``)
directly. Its configuration is this one with the backend, the model file and the
instance kind changed; tensors, batch limit, version policy and dynamic batching come
from the source unchanged. The variants are committed under ``infra/triton/`` (what a
deployment mounts beside the versions) and a test fails when they drift from the source:

    python -m models.serving_configs            # write them again after editing the source
    python -m models.serving_configs --check    # exit 1 when a committed one differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.triton_config import DEFAULT_CONFIG_PATH, MODEL_NAME

VARIANTS_DIR = Path(__file__).resolve().parents[1] / "infra" / "triton"
VARIANTS = {"onnxruntime-gpu": "KIND_GPU", "onnxruntime-cpu": "KIND_CPU"}
"""Variant name -> Triton instance kind."""
MODEL_FILE = "model.onnx"
"""The file of a version directory the ONNX Runtime backend loads."""


def onnxruntime_config(kind: str, source: Path = DEFAULT_CONFIG_PATH) -> str:
    """The ``config.pbtxt`` text of the ONNX Runtime backend on ``kind`` instances
    (``KIND_GPU`` or ``KIND_CPU``), from the source configuration."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(source.read_text(), model_config_pb2.ModelConfig())
    message.backend = "onnxruntime"
    message.default_model_filename = MODEL_FILE
    del message.instance_group[:]
    group = message.instance_group.add()
    group.count = 1
    group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(kind)
    header = (f"# Made by `python -m models.serving_configs` from "
              f"triton_repo/{MODEL_NAME}/config.pbtxt (the model's contract): do not edit.\n"
              f"# The ONNX Runtime backend of NVIDIA's Triton image, {kind} instances; the\n"
              f"# version directories are the same as the local Triton's.\n")
    return header + text_format.MessageToString(message)


def variant_path(variant: str, root: Path = VARIANTS_DIR) -> Path:
    """Where a variant's ``config.pbtxt`` lives: ``infra/triton/<variant>/<model>/``."""
    return root / variant / MODEL_NAME / "config.pbtxt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.serving_configs",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a committed variant differs")
    parser.add_argument("--source", type=Path, default=DEFAULT_CONFIG_PATH,
                        help="the model's configuration (default: the repository's)")
    args = parser.parse_args(argv)
    stale = []
    for variant, kind in VARIANTS.items():
        path, text = variant_path(variant), onnxruntime_config(kind, args.source)
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(VARIANTS_DIR.parents[1])))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(VARIANTS_DIR.parents[1])}")
    if stale:
        print(f"out of date with {args.source.name}: {', '.join(stale)}; "
              "run python -m models.serving_configs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

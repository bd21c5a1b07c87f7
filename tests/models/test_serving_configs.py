"""The ONNX Runtime configurations for NVIDIA's Triton image: made from the model's one
``config.pbtxt``, committed, and the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.serving_configs import (
    MODEL_FILE,
    VARIANTS,
    main,
    onnxruntime_config,
    variant_path,
)
from models.triton_config import DEFAULT_CONFIG_PATH, read_model_config


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_committed_variants_are_the_ones_the_source_makes() -> None:
    for variant, kind in VARIANTS.items():
        assert variant_path(variant).read_text() == onnxruntime_config(kind), (
            f"{variant} drifted from the source: run python -m models.serving_configs")
    assert main(["--check"]) == 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_variant_keeps_the_contract_and_changes_only_backend_file_and_kind(
    variant: str,
) -> None:
    source, made = parse(DEFAULT_CONFIG_PATH), parse(variant_path(variant))
    assert made.backend == "onnxruntime" and made.default_model_filename == MODEL_FILE
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)
            for g in made.instance_group] == [VARIANTS[variant]]
    for name in ("name", "max_batch_size", "input", "output", "version_policy",
                 "dynamic_batching"):
        assert getattr(made, name) == getattr(source, name), name
    # The factory's own readers of the contract see the same tensors in it.
    ours, theirs = read_model_config(variant_path(variant)), read_model_config()
    assert (ours.inputs, ours.outputs, ours.max_batch_size) == (
        theirs.inputs, theirs.outputs, theirs.max_batch_size)


def test_an_edited_source_makes_the_check_fail(tmp_path: Path) -> None:
    edited = tmp_path / "config.pbtxt"
    edited.write_text(DEFAULT_CONFIG_PATH.read_text().replace("4096", "2048"))
    assert main(["--check", "--source", str(edited)]) == 1
    assert "max_batch_size: 2048" in onnxruntime_config("KIND_GPU", edited)

"""Export a trained model to ONNX and publish it as a Triton model version.

Tensor names and the row width come from the model's ``config.pbtxt``; the exported
graph has a dynamic batch dimension so that Triton's dynamic batching and client-side
micro-batches of any size reach the same graph. A published version directory holds
``model.onnx`` and the python backend ``model.py``; it is written under a temporary name
and renamed into place, so Triton never sees half a version.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from models.triton_config import (
    DEFAULT_CONFIG_PATH,
    MODEL_NAME,
    ConfigError,
    ModelConfig,
    read_model_config,
)

BACKEND_SOURCE = Path(__file__).with_name("triton_backend.py")
OPSET = 17


def export_onnx(
    model: nn.Module, path: Path | str, *, config_path: Path | str = DEFAULT_CONFIG_PATH
) -> Path:
    """Write ``model`` as an ONNX graph that honours the tensor contract.

    Parameters
    ----------
    model
        Maps ``[batch, n_features]`` float32 rows to ``[batch, 1]`` scores.
    path
        Where to write the ``.onnx`` file.
    config_path
        The ``config.pbtxt`` that names the input and output tensors.

    Returns
    -------
    Path
        ``path``, after the graph was checked against the configuration.
    """
    config = read_model_config(config_path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A CPU copy in eval mode: the caller's model keeps its device and training mode.
    model = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(2, *config.input.dims, dtype=torch.float32)
    names = (config.input.name, config.output.name)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which
        # needs onnxscript (not a dependency); this net only uses operators it covers.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    check_onnx(path, config)
    return path


def check_onnx(path: Path | str, config: ModelConfig) -> None:
    """Raise :class:`ConfigError` unless the graph's tensors match the configuration."""
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(str(path))
    for kind, tensors, spec in (
        ("input", graph.input, config.input),
        ("output", graph.output, config.output),
    ):
        if [t.name for t in tensors] != [spec.name]:
            raise ConfigError(
                f"{path}: {kind}s {[t.name for t in tensors]}, config wants [{spec.name!r}]"
            )
        dims = tensors[0].type.tensor_type.shape.dim
        batch, rest = dims[0], tuple(d.dim_value for d in dims[1:])
        if batch.dim_value or rest != spec.dims:
            shape = [batch.dim_param or batch.dim_value, *rest]
            raise ConfigError(
                f"{path}: {kind} {spec.name!r} has shape {shape}, "
                f"config wants ['batch', {', '.join(map(str, spec.dims))}]"
            )


def publish_version(
    model: nn.Module, repo_dir: Path | str, version: int, *, model_name: str = MODEL_NAME
) -> Path:
    """Write ``<repo_dir>/<model_name>/<version>/`` with ``model.onnx`` and ``model.py``.

    Parameters
    ----------
    model
        The trained model.
    repo_dir
        The Triton model repository (``triton_repo``).
    version
        A positive version number that is not yet in the repository.
    model_name
        The model directory, which holds the ``config.pbtxt`` the export follows.

    Returns
    -------
    Path
        The new version directory.

    Raises
    ------
    FileExistsError
        When the version already exists; published versions are never overwritten.
    """
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    model_dir = Path(repo_dir) / model_name
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; publish a new version instead")
    staging = Path(tempfile.mkdtemp(prefix=f".publish-{version}-", dir=model_dir))
    try:
        export_onnx(model, staging / "model.onnx", config_path=model_dir / "config.pbtxt")
        shutil.copyfile(BACKEND_SOURCE, staging / "model.py")
        staging.chmod(0o755)
        # rename() would quietly replace an empty directory created meanwhile.
        if target.exists():
            raise FileExistsError(f"{target} appeared while publishing; not overwriting it")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

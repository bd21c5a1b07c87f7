"""Triton Inference Server as a local service, on the CPU, without a container.

The ``nvidia-pytriton`` wheel carries a complete ``tritonserver`` binary, its shared
libraries and the python backend. It pins numpy<2, so it lives in its own small
environment (``.venv-triton``) and serves only as the carrier of those files; the
models run with the packages of the factory's own environment. Three things make that
work, all set up by :meth:`TritonService.prepare` and :meth:`TritonService.command`:

* A backend directory under the service's state folder holds ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the python stub built for the factory
  environment's Python version (the wheel ships one stub per version beside the
  backend, not in it). The copies lose the ``$ORIGIN``-relative library path of the
  originals, so the wheel's ``nvidia_pytriton.libs`` goes on ``LD_LIBRARY_PATH``.
* The stub embeds ``libpython3.X.so``. The library folder of the factory environment's
  base interpreter goes first on ``LD_LIBRARY_PATH``, so the stub runs the very
  interpreter that built that environment rather than whichever one the system has.
* The embedded interpreter is configured as isolated: ``PYTHONPATH`` and every other
  ``PYTHON*`` variable are ignored. It still searches ``PATH`` for ``python3`` to find
  its prefix, as a plain interpreter does, and honours the ``pyvenv.cfg`` beside the
  executable it found. With the factory environment's ``bin`` first on ``PATH`` the
  stub therefore starts as that environment's interpreter, with its site-packages,
  and ``model.py`` imports numpy and onnxruntime from there.

The stub was compiled for numpy 1's binary layout; ``models/triton_backend.py`` explains
how the model exchanges tensors so that numpy 2 works as well.

Models are not loaded at start (explicit model control); clients load and unload
versions through the model repository API, which is how versions are swapped live.
Several local Tritons (``FACTORY_TRITON_REPLICAS``) are several services over the same
model repository, each with a state folder and ports of its own
(:func:`replica_ports`).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.base import LocalService, PrerequisiteError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
INSTALL_HINT = (
    "python3.11 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0"
)

# Asked of the factory environment's interpreter: its version, where its libpython is,
# and whether the model's imports work there.
_PROBE = """
import json, sys, sysconfig
missing = []
for name in ("numpy", "onnxruntime"):
    try:
        __import__(name)
    except Exception as exc:
        missing.append(f"{name} ({exc.__class__.__name__})")
print(json.dumps({
    "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    "libdir": sysconfig.get_config_var("LIBDIR") or "",
    "soname": sysconfig.get_config_var("INSTSONAME") or "",
    "missing": missing,
}))
"""


@dataclass
class PythonEnv:
    """What the python stub needs to know about the environment models import from."""

    version: str
    libdir: str
    soname: str


@dataclass
class TritonService(LocalService):
    """``tritonserver`` over a model repository, bound to 127.0.0.1.

    Parameters
    ----------
    model_repository
        The Triton model repository (``triton_repo``).
    triton_env
        The environment with ``nvidia-pytriton`` installed.
    python_env
        The environment whose numpy and onnxruntime ``model.py`` imports; by default the
        one running this code.
    load_models
        Models to load at start; normally empty, and clients load versions explicitly.
    log_verbose
        Triton's ``--log-verbose`` level.
    """

    name: str = "triton"
    model_repository: Path = field(default_factory=lambda: REPO_ROOT / "triton_repo")
    triton_env: Path = field(default_factory=lambda: REPO_ROOT / ".venv-triton")
    python_env: Path = field(default_factory=lambda: Path(sys.prefix))
    load_models: list[str] = field(default_factory=list)
    log_verbose: int = 0
    _python: PythonEnv | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ports = {**DEFAULT_PORTS, **self.ports}

    @property
    def backend_dir(self) -> Path:
        return self.home / "backends"

    def url(self) -> str:
        """The gRPC address clients use."""
        return f"127.0.0.1:{self.ports['grpc']}"

    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    def metrics_url(self) -> str:
        """Where Prometheus scrapes Triton's metrics."""
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def server_dir(self) -> Path:
        """``pytriton/tritonserver`` inside the Triton environment."""
        found = sorted(self.triton_env.glob("lib/python3*/site-packages/pytriton/tritonserver"))
        if not found or not (found[-1] / "bin" / "tritonserver").is_file():
            raise PrerequisiteError(
                f"triton: no tritonserver in {self.triton_env}; install it with: {INSTALL_HINT}"
            )
        return found[-1]

    def python_info(self) -> PythonEnv:
        """Ask the models' environment for its Python version, packages and libpython."""
        if self._python is not None:
            return self._python
        # The stub looks for exactly this name on PATH.
        python = self.python_env / "bin" / "python3"
        if not python.exists():
            raise PrerequisiteError(f"triton: no Python environment at {self.python_env}")
        try:
            probe = subprocess.run(
                [str(python), "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
            )
            info = json.loads(probe.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise PrerequisiteError(
                f"triton: cannot run {python} to inspect the model environment ({exc})"
            ) from exc
        if info["missing"]:
            raise PrerequisiteError(
                f"triton: model.py cannot import {', '.join(info['missing'])} from "
                f"{self.python_env}; install the project's dependencies there"
            )
        self._python = PythonEnv(info["version"], info["libdir"], info["soname"])
        return self._python

    def prepare(self) -> None:
        """Check prerequisites and assemble the python backend for this environment."""
        server = self.server_dir()
        env = self.python_info()
        stub = server / "python_backend_stubs" / env.version / "triton_python_backend_stub"
        if not stub.is_file():
            raise PrerequisiteError(
                f"triton: nvidia-pytriton has no python backend stub for Python {env.version}; "
                f"run the factory with a Python it supports (3.8 to 3.13)"
            )
        if not (Path(env.libdir) / env.soname).exists() and not _system_has(env.soname):
            raise PrerequisiteError(
                f"triton: the python backend needs {env.soname or 'libpython'}; "
                f"install libpython{env.version} (apt-get install libpython{env.version})"
            )
        if not self.model_repository.is_dir():
            raise PrerequisiteError(f"triton: no model repository at {self.model_repository}")
        python_backend = server / "backends" / "python"
        target = self.backend_dir / "python"
        target.mkdir(parents=True, exist_ok=True)
        for source in (
            python_backend / "libtriton_python.so",
            python_backend / "triton_python_backend_utils.py",
            stub,
        ):
            _copy_if_changed(source, target / source.name)

    def command(self) -> tuple[list[str], dict[str, str]]:
        server = self.server_dir()
        env = self.python_info()
        libs = [str(server.parent.parent / "nvidia_pytriton.libs")]
        if env.libdir:
            libs.insert(0, env.libdir)
        if os.environ.get("LD_LIBRARY_PATH"):
            libs.append(os.environ["LD_LIBRARY_PATH"])
        argv = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository.resolve()}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in self.load_models),
            f"--backend-directory={self.backend_dir.resolve()}",
            "--http-address=127.0.0.1",
            f"--http-port={self.ports['http']}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports['grpc']}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-gpu-metrics=false",
            # The model runs in a CPU instance (ONNX Runtime moves data to a GPU itself),
            # so Triton's pinned host pool would only cost memory, or a warning without CUDA.
            "--pinned-memory-pool-byte-size=0",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
        ]
        path = [str(self.python_env / "bin"), os.environ.get("PATH", os.defpath)]
        extra_env = {"LD_LIBRARY_PATH": os.pathsep.join(libs), "PATH": os.pathsep.join(path)}
        return argv, extra_env

    def healthy(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 on the HTTP port."""
        # An empty ProxyHandler keeps a configured HTTP proxy out of a loopback check.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.http_url()}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False


def replica_name(index: int) -> str:
    """The service name of local Triton ``index`` (from 0): ``triton``, ``triton-2``, ..."""
    return "triton" if index == 0 else f"triton-{index + 1}"


def replica_ports(ports: dict[str, int], index: int) -> dict[str, int]:
    """The ports of local Triton ``index`` (from 0): the first one's ports shifted by
    ``index`` times their span, so that replicas never share a port (with the default
    8000-8002: 8003-8005, 8006-8008, ...)."""
    ports = {**DEFAULT_PORTS, **ports}
    span = max(ports.values()) - min(ports.values()) + 1
    shifted = {label: port + index * span for label, port in ports.items()}
    if max(shifted.values()) > 65535:
        raise PrerequisiteError(
            f"{replica_name(index)}: its ports {sorted(shifted.values())} run past 65535; "
            "choose lower or consecutive FACTORY_TRITON_*_PORT values (see README, "
            "'Settings')")
    return shifted


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.exists() and filecmp.cmp(source, target, shallow=False):
        return
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def _system_has(soname: str) -> bool:
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return bool(soname) and soname in listing.stdout

"""A swap checks the new graph against ``config.pbtxt`` before anything is loaded: a
graph that does not fit the contract never reaches Triton, whether or not it went
through the gate. No service: the loads are recorded, the route is in memory."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.registry import Registry
from models.triton_config import DEFAULT_CONFIG_PATH, MODEL_NAME, read_model_config
from streams.clients.router import Route
from streams.lifecycle.model_events import ModelEvents
from streams.lifecycle.swap import ModelSwapper, SwapConfig, SwapError

WIDTH = read_model_config(DEFAULT_CONFIG_PATH).input.dims[0]


def publish(repo: Path, version: int, kind: str) -> None:
    """Version ``version`` of the model in ``repo``: a graph that fits the contract, one
    that is not a graph, one that takes rows of another width, or one whose output has
    another name."""
    target = repo / MODEL_NAME / str(version)
    target.mkdir(parents=True)
    if kind == "corrupt":
        (target / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx graph")
        return
    width = WIDTH - 1 if kind == "wrong_width" else WIDTH
    output = "probability" if kind == "wrong_output" else "score"
    net = torch.nn.Sequential(torch.nn.Linear(width, 1), torch.nn.Sigmoid())
    torch.onnx.export(net, (torch.zeros(2, width),), str(target / "model.onnx"),
                      input_names=["features"], output_names=[output], dynamo=False,
                      dynamic_axes={"features": {0: "batch"}, output: {0: "batch"}})


class ServingRoute:
    """A route that serves ``serving`` and records every change asked of it."""

    def __init__(self, serving: int) -> None:
        self.current = Route(serving, 0, 1)
        self.changes: list[tuple[str, int]] = []

    def route(self) -> Route:
        return self.current

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        yield

    def set_shadow(self, version: int) -> Route:
        self.changes.append(("shadow", version))
        return self.current

    def promote(self, version: int) -> Route:
        self.changes.append(("promote", version))
        return self.current


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "triton_repo"
    (repo / MODEL_NAME).mkdir(parents=True)
    shutil.copyfile(DEFAULT_CONFIG_PATH, repo / MODEL_NAME / "config.pbtxt")
    publish(repo, 1, "fits")
    return repo


def swapper_of(repo: Path, loads: list[list[int]],
               router: ServingRoute) -> tuple[ModelSwapper, ModelEvents]:
    def load(versions: list[int]) -> None:
        loads.append(sorted(versions))
        if len(loads) == 1:
            raise RuntimeError("the recorded Triton refuses every first load")

    events = ModelEvents(None)
    swapper = ModelSwapper(load=load, ready=lambda: [1], router=router,  # type: ignore[arg-type]
                           registry=Registry(repo.parent / "registry", repo_dir=repo),
                           events=events, shadow_stats=None,
                           config=SwapConfig(poll_s=0.01), repo_dir=repo)
    return swapper, events


@pytest.mark.parametrize("kind", ["corrupt", "wrong_width", "wrong_output"])
def test_a_graph_that_does_not_fit_the_contract_is_refused_before_any_load(
    repo: Path, kind: str,
) -> None:
    publish(repo, 2, kind)
    loads: list[list[int]] = []
    router = ServingRoute(1)
    swapper, events = swapper_of(repo, loads, router)
    with pytest.raises(SwapError, match="version 2 does not fit the model contract"):
        swapper.swap(1, 2, reason="test: straight to the swapper, past the gate")
    assert loads == [], "no load of any version was attempted"
    assert router.changes == [] and events.sent == []


def test_a_graph_that_fits_the_contract_goes_on_to_its_load(repo: Path) -> None:
    """The same swap with a graph that fits: the check lets it through to the load (which
    fails here, and the swap stops there with the serving version loaded again)."""
    publish(repo, 2, "fits")
    loads: list[list[int]] = []
    router = ServingRoute(1)
    swapper, events = swapper_of(repo, loads, router)
    with pytest.raises(SwapError, match="could not load version 2 beside 1"):
        swapper.swap(1, 2, reason="test: straight to the swapper, past the gate")
    assert loads == [[1, 2], [1]]
    assert router.changes == [] and events.sent == []

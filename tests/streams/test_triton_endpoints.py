"""Several Tritons as one, without a service: which endpoint takes a request, a failed
endpoint skipped and probed again after its pause, a request retried on another
endpoint at once, and every endpoint down behaving as one Triton down always did. The
clients are fakes that answer or raise as each test says; the clock is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streams.clients.triton_fleet import EndpointPool, endpoint_label, triton_urls
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.scoring import TritonScorer
from streams.lifecycle.serving_guard import ServingGuard
from streams.lifecycle.swap import ModelSwapper, SwapError, triton_loader, triton_ready_versions
from tests.streams.test_swap_contract import ServingRoute

A, B, C = "10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Down(ConnectionError):
    """What a fake Triton that is down raises."""


class FakeTriton:
    """An aio client of one Triton: answers with its own mark, or raises while ``down``
    (``fail_next`` failures first, then answers)."""

    def __init__(self, mark: float, down: bool = False, fail_next: int = 0,
                 hang: bool = False) -> None:
        self.mark, self.down, self.fail_next, self.hang = mark, down, fail_next, hang
        self.calls = 0
        self.ready_versions: set[int] = {1}

    async def infer(self, model: str, inputs: list, model_version: str = "",
                    outputs: list | None = None) -> SimpleNamespace:
        self.calls += 1
        if self.hang:  # accepts the request and never answers
            await asyncio.Event().wait()
        if self.down or self.fail_next > 0:
            self.fail_next -= 1
            raise Down(f"triton {self.mark} is down")
        rows = inputs[0].shape()[0]
        return SimpleNamespace(as_numpy=lambda name: np.full((rows, 1), self.mark))

    async def is_server_live(self, client_timeout: float | None = None) -> bool:
        if self.down:
            raise Down("no answer")
        return True

    async def is_model_ready(self, model: str, version: str,
                             client_timeout: float | None = None) -> bool:
        return int(version) in self.ready_versions

    async def close(self) -> None:
        pass


def scorer_of(fakes: dict[str, FakeTriton], clock: Clock | None = None,
              errors: list[Exception] | None = None) -> TritonScorer:
    errors = [] if errors is None else errors
    scorer = TritonScorer(",".join(fakes), on_error=errors.append, metrics=WorkerMetrics(),
                          clients=dict(fakes))
    if clock is not None:
        scorer.pool.clock = clock
    scorer.input_name, scorer.output_name, scorer.n_features = "features", "score", 3
    return scorer


def sample(scorer: TritonScorer, name: str, endpoint: str | None = None) -> float:
    labels = {"endpoint": endpoint_label(endpoint)} if endpoint else {}
    value = scorer.metrics.registry.get_sample_value(name, labels)  # type: ignore[union-attr]
    return 0.0 if value is None else value


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The backoff waits of the scorer, recorded and not slept."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr("streams.dataplane.scoring.asyncio.sleep", sleep)
    yield waited


def rows(n: int = 2) -> np.ndarray:
    return np.zeros((n, 3))


def test_endpoints_from_a_triton_url() -> None:
    assert triton_urls("127.0.0.1:8001") == ["127.0.0.1:8001"]
    assert triton_urls(" 127.0.0.1:8001, 127.0.0.1:9001 ,") == ["127.0.0.1:8001",
                                                                "127.0.0.1:9001"]
    for bad in ("", " , ", "a:1,a:1"):
        with pytest.raises(ValueError):
            triton_urls(bad)
    assert endpoint_label("127.0.0.1:8001") == "127.0.0.1:8001"
    assert endpoint_label("grpc://user:secret@triton.example:8001/v2") == "triton.example:8001"


def test_requests_take_turns_over_the_endpoints_that_are_up() -> None:
    pool = EndpointPool([A, B, C], clock=Clock())
    assert [pool.pick().url for _ in range(6)] == [A, B, C, A, B, C]  # type: ignore[union-attr]


def test_a_failed_endpoint_is_skipped_until_its_pause_then_probed_with_growing_pauses(
) -> None:
    clock = Clock()
    pool = EndpointPool([A, B, C], first_pause_s=0.25, max_pause_s=1.0, clock=clock)
    b = pool.endpoints[1]
    assert pool.failed(b) is True
    assert [pool.pick().url for _ in range(4)] == [A, C, A, C]  # type: ignore[union-attr]
    assert pool.due() == []
    clock.now += 0.25
    assert pool.due() == [b]
    pauses = []
    for _ in range(4):  # each failed probe doubles the pause, up to max_pause_s
        clock.now = b.next_probe
        pool.failed(b)
        pauses.append(round(b.next_probe - clock.now, 3))
    assert pauses == [0.5, 1.0, 1.0, 1.0]
    assert pool.succeeded(b) is True
    assert [pool.pick().url for _ in range(3)] == [A, B, C]  # type: ignore[union-attr]
    pool.failed(b)
    assert b.next_probe - clock.now == 0.25, "a success starts the pauses over"


def test_an_answer_to_a_request_sent_before_the_failure_does_not_bring_it_back() -> None:
    clock = Clock()
    pool = EndpointPool([A, B], clock=clock)
    a = pool.endpoints[0]
    sent_at = clock.now
    clock.now += 0.01
    pool.failed(a)  # a later request failed while this one was on its way
    assert pool.succeeded(a, sent_at) is False and not a.up
    assert pool.succeeded(a, clock.now) is True and a.up


def test_concurrent_failures_of_one_endpoint_do_not_lengthen_its_pause() -> None:
    clock = Clock()
    pool = EndpointPool([A, B], first_pause_s=0.25, clock=clock)
    a = pool.endpoints[0]
    pool.failed(a)
    pool.failed(a)  # a second request in flight on it fails too
    assert a.next_probe - clock.now == 0.25


def test_a_request_that_fails_on_one_endpoint_is_answered_by_another_at_once(
    sleeps: list[float],
) -> None:
    fakes = {A: FakeTriton(0.1, down=True), B: FakeTriton(0.2)}
    errors: list[Exception] = []
    scorer = scorer_of(fakes, errors=errors)
    scores = asyncio.run(scorer.score(rows(), version=1))
    assert scores.tolist() == pytest.approx([0.2, 0.2])
    assert sleeps == [], "no backoff: the other endpoint answered at once"
    assert [type(e) for e in errors] == [Down]
    assert sample(scorer, "factory_triton_endpoint_failures_total", A) == 1
    assert sample(scorer, "factory_triton_endpoint_requests_total", B) == 1
    assert sample(scorer, "factory_triton_failed_requests_total") == 0
    assert sample(scorer, "factory_triton_endpoint_up", A) == 0
    assert sample(scorer, "factory_triton_endpoint_up", B) == 1
    # A rests: the next requests all go to B, none to A.
    calls = fakes[A].calls
    for _ in range(4):
        asyncio.run(scorer.score(rows(), version=1))
    assert fakes[A].calls == calls and fakes[B].calls == 5


def test_a_request_to_an_endpoint_that_hangs_times_out_and_goes_to_another() -> None:
    fakes = {A: FakeTriton(0.1, hang=True), B: FakeTriton(0.2)}
    errors: list[Exception] = []
    scorer = scorer_of(fakes, errors=errors)
    scorer.request_timeout_s = 0.05
    # Without the request timeout the call would wait for ever: fail after 5 s instead.
    scores = asyncio.run(asyncio.wait_for(scorer.score(rows(), version=1), 5))
    assert scores.tolist() == pytest.approx([0.2, 0.2])
    assert [type(e) for e in errors] == [TimeoutError]
    assert sample(scorer, "factory_triton_endpoint_up", A) == 0


def test_a_resting_endpoint_comes_back_once_its_probe_finds_the_asked_version_ready(
    sleeps: list[float],
) -> None:
    clock = Clock()
    fakes = {A: FakeTriton(0.1, down=True), B: FakeTriton(0.2)}
    scorer = scorer_of(fakes, clock)
    asyncio.run(scorer.score(rows(), version=1))
    a = scorer.pool.endpoints[0]
    assert not a.up
    # Back, but bare (a restarted Triton): the server answers, version 1 is not loaded.
    fakes[A].down, fakes[A].ready_versions = False, set()
    asyncio.run(scorer.check_endpoints())
    assert not a.up, "probed before its pause ran out"
    clock.now = a.next_probe
    asyncio.run(scorer.check_endpoints())
    assert not a.up, "the version the traffic asks for is not READY there"
    fakes[A].ready_versions = {1}
    clock.now = a.next_probe
    asyncio.run(scorer.check_endpoints())
    assert a.up
    assert sample(scorer, "factory_triton_endpoint_up", A) == 1
    before = fakes[A].calls
    for _ in range(4):
        asyncio.run(scorer.score(rows(), version=1))
    assert fakes[A].calls == before + 2, "A takes its turns again"


def test_an_up_endpoint_that_stops_answering_its_probe_is_skipped() -> None:
    fakes = {A: FakeTriton(0.1), B: FakeTriton(0.2)}
    scorer = scorer_of(fakes, Clock())
    fakes[B].down = True
    asyncio.run(scorer.check_endpoints(every=True))
    assert [e.up for e in scorer.pool.endpoints] == [True, False]
    assert sample(scorer, "factory_triton_endpoint_up", B) == 0


def test_an_endpoint_loading_a_version_keeps_taking_requests() -> None:
    """With strict readiness a Triton says it is not ready while any model loads, as in
    every swap; the versions it has loaded still serve, so it is not skipped."""

    class Loading(FakeTriton):
        async def is_server_ready(self, client_timeout: float | None = None) -> bool:
            return False

    fakes = {A: Loading(0.1), B: Loading(0.2)}
    scorer = scorer_of(fakes, Clock())
    asyncio.run(scorer.check_endpoints(every=True))
    assert [e.up for e in scorer.pool.endpoints] == [True, True]


def test_a_batch_is_spread_over_the_endpoints() -> None:
    fakes = {A: FakeTriton(0.1), B: FakeTriton(0.2)}
    scorer = scorer_of(fakes)
    scorer.request_rows = 2
    scores = asyncio.run(scorer.score(rows(8), version=1))
    assert sorted(scores.tolist()) == pytest.approx([0.1] * 4 + [0.2] * 4)
    assert fakes[A].calls == fakes[B].calls == 2


@pytest.mark.parametrize("urls", [[A], [A, B]], ids=["one endpoint", "two endpoints"])
def test_every_endpoint_down_waits_with_the_backoff_of_one_triton_until_one_answers(
    urls: list[str], sleeps: list[float],
) -> None:
    rounds = 4
    fakes = {url: FakeTriton(0.3, fail_next=rounds) for url in urls}
    errors: list[Exception] = []
    scorer = scorer_of(fakes, errors=errors)
    scores = asyncio.run(scorer.score(rows(), version=1))
    assert scores.tolist() == pytest.approx([0.3, 0.3])
    # The first round tries every endpoint, each later one the endpoint due first (the
    # clock stands still here); between rounds the request waits as one Triton's did.
    assert sleeps == [0.05, 0.1, 0.2, 0.4]
    assert len(errors) == sum(f.calls for f in fakes.values()) - 1 == rounds + len(urls) - 1
    assert sample(scorer, "factory_triton_failed_requests_total") == 1


@pytest.mark.parametrize("urls", [[A], [A, B]], ids=["one endpoint", "two endpoints"])
def test_every_endpoint_down_raises_the_last_error_after_the_attempts_given(
    urls: list[str], sleeps: list[float],
) -> None:
    fakes = {url: FakeTriton(0.3, down=True) for url in urls}
    errors: list[Exception] = []
    scorer = scorer_of(fakes, errors=errors)
    with pytest.raises(Down):
        asyncio.run(scorer.score(rows(), version=2, attempts=2))
    assert len(errors) == 2
    assert sum(f.calls for f in fakes.values()) == 2


def test_ready_versions_are_those_every_serving_endpoint_has() -> None:
    class Index(FakeTriton):
        def __init__(self, versions: list[int] | None) -> None:
            super().__init__(0.0, down=versions is None)
            self.versions = versions or []

        async def get_model_repository_index(self, as_json: bool = False,
                                             client_timeout: float | None = None) -> dict:
            if self.down:
                raise Down("no answer")
            return {"models": [{"name": "fraud_detector", "version": str(v),
                                "state": "READY"} for v in self.versions]}

    scorer = scorer_of({A: Index([1, 2]), B: Index([1]), C: Index(None)})
    assert asyncio.run(scorer.ready_versions()) == [1], "C is down: left out"
    scorer.clients[B] = Index([])  # type: ignore[assignment]
    assert asyncio.run(scorer.ready_versions()) == [1, 2], "a bare Triton serves nothing"
    scorer.clients = {A: Index(None)}  # type: ignore[assignment]
    scorer.pool = EndpointPool([A])
    with pytest.raises(Down):
        asyncio.run(scorer.ready_versions())


# ------------------------------------------------------------------ swap and guard


def test_the_loader_asks_every_endpoint_even_when_one_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, list[int]]] = []

    def load_model(url: str, versions: list[int], repo: Path) -> None:
        asked.append((url, versions))
        if url == A:
            raise RuntimeError("connection refused")

    monkeypatch.setattr("streams.clients.triton_models.load_model", load_model)
    load = triton_loader(f"{A},{B}", Path("repo"))
    with pytest.raises(RuntimeError, match=r"not loaded on 1 of 2 .*10\.0\.0\.1:8001"):
        load([2, 1])
    assert asked == [(A, [1, 2]), (B, [1, 2])]


def test_ready_versions_of_a_list_are_those_ready_on_every_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ready = {A: [1, 2], B: [1]}

    class Client:
        def __init__(self, url: str) -> None:
            self.url = url

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def get_model_repository_index(self, as_json: bool, client_timeout: float) -> dict:
            return {"models": [{"name": "fraud_detector", "version": str(v), "state": "READY"}
                               for v in ready[self.url]]}

    monkeypatch.setattr("tritonclient.grpc.InferenceServerClient", Client)
    assert triton_ready_versions(A) == [1, 2]
    assert triton_ready_versions(f"{A},{B}") == [1]


def test_the_swap_routes_nothing_to_a_version_not_ready_on_every_endpoint() -> None:
    """One endpoint took the load but reports version 2 not READY: the swap stops
    before the route changes, with 1 loaded again."""
    loads: list[list[int]] = []
    router = ServingRoute(1)
    swapper = ModelSwapper(load=lambda versions: loads.append(sorted(versions)),
                           ready=lambda: [1],  # version 2 READY on one endpoint only
                           router=router, registry=None, events=None,  # type: ignore[arg-type]
                           shadow_stats=None)
    with pytest.raises(SwapError, match="not READY on every endpoint"):
        swapper.swap(1, 2, reason="test")
    assert loads == [[1, 2], [1]]
    assert router.changes == []


def test_the_guard_loads_the_routed_version_on_the_bare_endpoint_only() -> None:
    ready = {A: [1], B: []}
    loaded: list[tuple[str, list[int]]] = []

    def load(url: str, versions: list[int]) -> None:
        loaded.append((url, versions))
        ready[url] = versions

    guard = ServingGuard(router=ServingRoute(1), registry=None,  # type: ignore[arg-type]
                         triton_urls=triton_urls(f"{A},{B}"), load=load,
                         ready=lambda url: ready[url])
    report = guard.check()
    assert report.ready and report.loaded == {B: [1]}
    assert loaded == [(B, [1])]
    assert guard.check().loaded == {}

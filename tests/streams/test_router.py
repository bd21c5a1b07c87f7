"""The model route in Redis: generations, shadows, and when a swap has drained."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from streams.clients.router import ModelRouter

pytestmark = pytest.mark.integration


@pytest.fixture(params=["server", "cluster"])
def router(live_stack, request: pytest.FixtureRequest) -> Iterator[ModelRouter]:  # noqa: ANN001
    """On the session's Redis server and on a Redis Cluster."""
    url = (live_stack.endpoints.redis if request.param == "server"
           else request.getfixturevalue("redis_cluster_url"))
    # A model name of its own: other tests' workers follow the real model's route.
    router = ModelRouter(url, model=f"router-test-{uuid.uuid4().hex[:8]}", ack_ttl_s=0.5)
    yield router
    router.reset()
    router.close()


def test_every_change_moves_the_generation_forward(router: ModelRouter) -> None:
    assert router.route() is None
    with pytest.raises(RuntimeError, match="no serving version"):
        router.set_shadow(2)
    first = router.promote(1)
    shadowed = router.set_shadow(2)
    promoted = router.promote(2)
    assert (first.serving, first.shadow) == (1, 0)
    assert (shadowed.serving, shadowed.shadow) == (1, 2)
    assert (promoted.serving, promoted.shadow) == (2, 0)
    assert [first.generation, shadowed.generation, promoted.generation] == [
        first.generation, first.generation + 1, first.generation + 2]
    assert router.route() == promoted


def test_drained_waits_for_every_live_worker_and_forgets_silent_ones(
    router: ModelRouter,
) -> None:
    route = router.promote(3)
    assert router.drained(route.generation), "no worker: nothing in flight"
    router.acknowledge("a", route.generation - 1)
    router.acknowledge("b", route.generation)
    assert not router.drained(route.generation)
    router.acknowledge("a", route.generation)
    assert router.drained(route.generation)
    router.acknowledge("a", route.generation - 1)
    assert not router.drained(route.generation)
    time.sleep(0.6)  # "a" went silent past the TTL: it stopped, with its batches
    router.acknowledge("b", route.generation)
    assert router.drained(route.generation)


def test_one_swap_holds_the_route_at_a_time_and_a_dead_holders_lock_expires(
    router: ModelRouter,
) -> None:
    from streams.clients.router import RouteBusy

    with router.lock("swap 1 -> 2"):
        with pytest.raises(RouteBusy, match=r"swap 1 -> 2 \(pid"):
            with router.lock("factory model promote 3"):
                pass
    with router.lock("factory model promote 3"):  # released on leaving the block
        pass
    # A holder killed mid-swap never releases; its lock expires after its TTL.
    router.client.set(router.lock_key, "a dead process", px=300)
    with pytest.raises(RouteBusy, match="a dead process"):
        with router.lock("after"):
            pass
    time.sleep(0.4)
    with router.lock("after"):
        pass

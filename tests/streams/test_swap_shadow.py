"""How long a swap shadows: until it has its rows, the traffic stops, or the timeout.
No service: the feature log's shadow counts are a list."""

from __future__ import annotations

from streams.lifecycle.retrain_policy import ShadowStats
from streams.lifecycle.swap import ModelSwapper, SwapConfig


def _swapper(counts: list[int], config: SwapConfig) -> tuple[ModelSwapper, list[int]]:
    calls: list[int] = []

    def stats(version: int) -> ShadowStats:
        calls.append(version)
        rows = counts[min(len(calls), len(counts)) - 1]
        return ShadowStats(rows, None, None, None)

    swapper = ModelSwapper(load=lambda versions: None, ready=list, router=None,  # type: ignore[arg-type]
                           registry=None, events=None, shadow_stats=stats,  # type: ignore[arg-type]
                           config=config)
    return swapper, calls


def test_shadow_promotes_once_it_has_its_rows() -> None:
    swapper, calls = _swapper([0, 50, 120, 250], SwapConfig(
        shadow_rows=200, shadow_timeout_s=60, shadow_idle_s=60, poll_s=0.01))
    assert swapper._wait_for_shadow(2).rows == 250
    assert len(calls) == 4


def test_shadow_without_traffic_promotes_after_the_idle_time_not_the_timeout() -> None:
    # rows grow, then the traffic stops at 30 rows: promoted after ~0.1 s of no growth
    swapper, calls = _swapper([0, 10, 30], SwapConfig(
        shadow_rows=200, shadow_timeout_s=60, shadow_idle_s=0.1, poll_s=0.01))
    assert swapper._wait_for_shadow(2).rows == 30
    assert 8 <= len(calls) <= 60  # ~0.1 s of 0.01 s polls after the last growth
    # while rows keep growing the idle time never runs out: the timeout does
    growing = list(range(0, 10_000))
    swapper, calls = _swapper(growing, SwapConfig(
        shadow_rows=10**9, shadow_timeout_s=0.2, shadow_idle_s=0.05, poll_s=0.01))
    assert swapper._wait_for_shadow(2).rows >= 10

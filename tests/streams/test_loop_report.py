"""The loop's report on a synthetic run: served against frozen, versions, the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from streams.jobs.loop_report import (
    evaluation_frame,
    loop_figures,
    plot_loop,
    report_markdown,
    version_spans,
)

DAY = 86400.0


def synthetic_run(seed: int = 0) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """30 days, 400 cards; after day 15 a new fraud kind the frozen model misses."""
    rng = np.random.default_rng(seed)
    n = 30 * 600
    times = 1_600_000_000 - 1_600_000_000 % 86400 + np.sort(rng.uniform(0, 30 * DAY, n))
    day = ((times - times[0]) // DAY).astype(int)
    fraud = rng.random(n) < 0.02
    new_kind = fraud & (day >= 15) & (rng.random(n) < 0.6)
    frozen = np.where(fraud & ~new_kind, rng.uniform(0.5, 1, n), rng.uniform(0, 0.6, n))
    served = frozen.copy()
    retrained = day >= 20  # version 2 serves from day 20 and sees the new kind
    served[retrained & new_kind] = rng.uniform(0.6, 1, int((retrained & new_kind).sum()))
    logged = pd.DataFrame({
        "tx_id": np.arange(n) + 10**9, "event_time": times,
        "card_id": rng.integers(0, 400, n), "terminal_id": rng.integers(0, 800, n),
        "score": served, "model_version": np.where(retrained, 2, 1),
    })
    labels = pd.Series(fraud.astype(int), index=logged["tx_id"])
    return logged, labels, frozen


def test_served_beats_frozen_after_the_drift_and_the_report_says_so(tmp_path: Path) -> None:
    logged, labels, frozen = synthetic_run()
    frame = evaluation_frame(logged, labels)
    assert frame["TX_TIME_DAYS"].min() == 0 and frame["TX_FRAUD"].sum() == labels.sum()
    events = [{"event": "drift_detected", "window_end": logged["event_time"].iloc[9000],
               "monitor": "feature_psi", "statistic": 0.4, "threshold": 0.2},
              {"event": "promoted", "version": 2, "cycle_seconds": 31.5,
               "event_time": logged["event_time"].iloc[12000]}]
    figures = loop_figures(frame, frozen, drift_start_day=15, events=events)
    assert figures.ap_gain > 1.1
    assert figures.adaptive_average_precision > figures.frozen_average_precision
    assert figures.serving_versions == [1, 2] and figures.cycle_seconds == [31.5]
    assert 14 <= figures.first_drift_day <= 16
    # Before the drift both are the same model: no gain can come from there.
    same = loop_figures(frame, frame["score"].to_numpy(), drift_start_day=15, events=[])
    assert same.ap_gain == 1.0
    assert [v for v, _, _ in version_spans(frame)] == [1, 2]
    text = report_markdown(figures)
    assert f"{figures.ap_gain:.2f}x" in text and "31.5 s" in text
    plot_loop(frame, frozen, 15, events, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").stat().st_size > 10_000


def test_the_seed_table_gives_each_world_and_the_mean_and_spread() -> None:
    from streams.jobs.loop_report import seeds_markdown

    def figures(served: float, frozen: float, promotions: int) -> dict:
        return {"adaptive_average_precision": served, "frozen_average_precision": frozen,
                "ap_gain": served / frozen, "adaptive_card_precision_at_100": 0.2,
                "frozen_card_precision_at_100": 0.1, "promotions": [{}] * promotions,
                "rejections": [{}]}

    table = seeds_markdown({2: figures(0.6, 0.3, 4), 0: figures(0.8, 0.4, 2)})
    rows = table.splitlines()
    assert rows[2].startswith("| 0 | 0.800 | 0.400 | 2.00 |") and rows[2].endswith("| 2 | 1 |")
    assert rows[3].startswith("| 2 | 0.600 | 0.300 | 2.00 |")
    assert rows[4].startswith("| mean | 0.700 | 0.350 | 2.00 |") and rows[4].endswith(
        "| 3.0 | 1.0 |")
    assert rows[5].startswith("| sd | 0.141 | 0.071 | 0.00 |")
    assert len(seeds_markdown({0: figures(0.8, 0.4, 2)}).splitlines()) == 3


def test_the_comparison_starts_at_the_drift_or_where_the_first_model_went_live() -> None:
    """A control run without drift (and a team's own data) is compared from the first
    model's last day, not from after the run's end (which left nothing to compare)."""
    from streams.jobs.loop_world import LoopSize, drift_start_day

    assert drift_start_day(LoopSize(drift="card_testing:start=42,days=42,intensity=10")) == 42
    assert drift_start_day(LoopSize(drift="none", first_model_end_day=35)) == 35
    assert drift_start_day(LoopSize(parquet="history.parquet", first_model_end_day=30)) == 30
    assert drift_start_day(LoopSize(drift="none", compare_from_day=50)) == 50


def test_detections_before_the_drift_are_false_alarms_and_the_first_after_is_timed() -> None:
    logged, labels, frozen = synthetic_run()
    frame = evaluation_frame(logged, labels)
    day0 = float(logged["event_time"].min() // DAY) * DAY

    def detected(day: float, monitor: str = "feature_tail") -> dict:
        return {"event": "drift_detected", "monitor": monitor, "feature": "f",
                "evaluated_at": day0 + day * DAY, "window_end": day0 + (day - 7) * DAY}

    events = [detected(12.0), detected(13.5), detected(17.25, "page_hinkley"), detected(18)]
    figures = loop_figures(frame, frozen, drift_start_day=15, events=events)
    assert figures.false_alarms == 2
    assert figures.first_detection_days == 2.25
    assert figures.first_detection_monitor == "page_hinkley:f"
    assert "2.2 days after the drift started" in report_markdown(figures)
    # Without a drift every detection is a false alarm, and none is "first".
    control = loop_figures(frame, frozen, drift_start_day=15, events=events, drift_known=False)
    assert control.false_alarms == 4 and control.first_detection_days is None


def test_the_time_to_recover_is_measured_against_the_oracle() -> None:
    """Served catches up with the oracle when version 2 starts serving on day 20."""
    logged, labels, frozen = synthetic_run()
    frame = evaluation_frame(logged, labels)
    rng = np.random.default_rng(5)
    fraud = frame["TX_FRAUD"].to_numpy() == 1
    oracle = np.where(fraud, rng.uniform(0.6, 1, len(frame)), rng.uniform(0, 0.6, len(frame)))
    oracle[frame["TX_TIME_DAYS"].to_numpy() < 10] = np.nan
    figures = loop_figures(frame, frozen, 15, [], oracle_scores=oracle)
    assert figures.oracle_average_precision > figures.frozen_average_precision
    # The 3-day windows hold a frozen day until day 22.
    assert figures.days_to_recover is not None and 5 <= figures.days_to_recover <= 8
    frozen_only = frame.assign(score=frozen)
    assert loop_figures(frozen_only, frozen, 15, [], oracle_scores=oracle).days_to_recover is None

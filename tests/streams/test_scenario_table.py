"""The scenario table: each scenario's mean and spread over seeds, and its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.jobs.scenario_table import SCENARIOS, plot_table, scenario_names, table_markdown


def _figures(ap: float, recover: int | None, detection: float | None, alarms: int) -> dict:
    return {"adaptive_average_precision": ap, "frozen_average_precision": 0.3,
            "oracle_average_precision": 0.8, "ap_gain": ap / 0.3,
            "days_to_recover": recover, "first_detection_days": detection,
            "false_alarms": alarms, "promotions": [{}] * 3, "rejections": [{}]}


def test_the_table_gives_mean_and_spread_and_counts_runs_without_a_figure(
        tmp_path: Path) -> None:
    rows = {"card_testing": [_figures(0.6, 10, 1.0, 0), _figures(0.8, None, 3.0, 1)],
            "control": [_figures(0.7, None, None, 0), _figures(0.7, None, None, 2)]}
    table = table_markdown(rows)
    card, control = table.splitlines()[2:]
    assert card.startswith("| card_testing | 2 | 0.700 ± 0.141 |")
    assert "| 10.0 (1/2) |" in card and "| 2.0 ± 1.4 |" in card
    assert "| 0.5 ± 0.7 |" in card and "| 3.0 ± 0.0 | 1.0 ± 0.0 |" in card
    assert control.split(" | ").count("-") == 2 and "| 1.0 ± 1.4 |" in control
    plot_table(rows, tmp_path / "scenarios.png")
    assert (tmp_path / "scenarios.png").stat().st_size > 10_000


def test_scenarios_are_named_or_all() -> None:
    assert scenario_names("all") == list(SCENARIOS)
    assert scenario_names("control, night_spree") == ["control", "night_spree"]
    assert SCENARIOS["control"] == "none"
    with pytest.raises(ValueError, match="unknown scenarios"):
        scenario_names("card_testing,bogus")

"""The loop judged on every drift scenario and a control without drift, a few seeds each.

``factory run --clock event --scenarios all --seeds 0,1,2`` runs the closed loop once per
scenario and seed on the event clock (the same figures on any machine), keeping the
services up in between, and writes one table: AP after the drift (served, first model
frozen, label-delay oracle), the gain, the days to recover to the oracle, the first true
detection, the false alarms, the promotions and the rejections, as the mean and spread
over the seeds, with a plot of the same. Each run's own folder (report, plot, events) is
named in the log and in ``scenarios.json``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from streams.clients.triton_models import TRITON_REPO
from streams.jobs.job import log
from streams.settings import Settings

SCENARIOS: dict[str, str] = {
    "card_testing": "card_testing:start=42,days=42,intensity=10",
    "spending_shift": "spending_shift:start=42,days=42",
    "label_delay": "label_delay:start=42,days=42",
    "night_spree": "night_spree:start=42,days=42,intensity=5",
    "control": "none",
}
"""The scenarios ``--scenarios all`` runs: the three the project started with, a fraud
pattern the first model never saw (cards taken over at night), and no drift at all."""

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("AP served", "adaptive_average_precision", ".3f"),
    ("AP frozen", "frozen_average_precision", ".3f"),
    ("AP oracle", "oracle_average_precision", ".3f"),
    ("gain", "ap_gain", ".2f"),
    ("days to recover", "days_to_recover", ".1f"),
    ("first detection (days)", "first_detection_days", ".1f"),
    ("false alarms", "false_alarms", ".1f"),
    ("promotions", "promotions", ".1f"),
    ("rejections", "rejections", ".1f"),
)


def scenario_names(text: str) -> list[str]:
    """``all`` or a comma list of :data:`SCENARIOS` names."""
    names = list(SCENARIOS) if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)} or all")
    return names


def line_name(scenario: str, reviews: int) -> str:
    """A table line: the scenario, and the feedback when investigators review cards."""
    return f"{scenario} + feedback" if reviews else scenario


def _value(figures: dict[str, Any], key: str) -> float | None:
    value = figures.get(key)
    if isinstance(value, list):
        return float(len(value))
    return None if value is None else float(value)


def summarise(figures: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Each column's mean, standard deviation and count over the runs that show it (a
    run that never recovered or never detected shows no figure for it)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for _, key, _ in COLUMNS:
        values = [v for v in (_value(f, key) for f in figures) if v is not None]
        out[key] = {"mean": statistics.fmean(values) if values else None,
                    "sd": statistics.stdev(values) if len(values) > 1 else None,
                    "runs": len(values)}
    return out


def table_markdown(rows: dict[str, list[dict[str, Any]]]) -> str:
    """One line a scenario: mean ± sd over its seeds; ``(k/n)`` where only k of the n
    runs show the figure (the others never recovered, or never detected)."""
    head = ["scenario", "seeds", *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, figures in rows.items():
        cells = []
        for key, stats in summarise(figures).items():
            spec = next(s for _, k, s in COLUMNS if k == key)
            if stats["mean"] is None:
                cells.append("-")
                continue
            cell = format(stats["mean"], spec)
            if stats["sd"] is not None:
                cell += f" ± {format(stats['sd'], spec)}"
            if stats["runs"] != len(figures):
                cell += f" ({stats['runs']}/{len(figures)})"
            cells.append(cell)
        lines.append(f"| {name} | {len(figures)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_table(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """AP served, frozen and oracle by scenario (the seeds as dots), and the days to
    recover and to the first detection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    x = np.arange(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for offset, (label, key, color) in zip((-0.25, 0.0, 0.25), (
            ("served (loop)", "adaptive_average_precision", "C0"),
            ("first model frozen", "frozen_average_precision", "0.6"),
            ("label-delay oracle", "oracle_average_precision", "C2")), strict=True):
        means = [summarise(rows[n])[key]["mean"] or 0.0 for n in names]
        left.bar(x + offset, means, width=0.25, color=color, label=label)
        for i, n in enumerate(names):
            values = [v for v in (_value(f, key) for f in rows[n]) if v is not None]
            left.scatter([i + offset] * len(values), values, color="k", s=6, zorder=3)
    left.set_xticks(x, names, rotation=30, ha="right")
    left.set_ylabel("AP after the drift (mean, seeds as dots)")
    left.legend(fontsize=8)
    for offset, (label, key, color) in zip((-0.2, 0.2), (
            ("days to recover (to within 10 % of the oracle)", "days_to_recover", "C0"),
            ("first true detection (days after the drift)", "first_detection_days", "C3")),
            strict=True):
        for i, n in enumerate(names):
            values = [v for v in (_value(f, key) for f in rows[n]) if v is not None]
            if values:
                right.bar(i + offset, statistics.fmean(values), width=0.4, color=color,
                          label=label if i == 0 or not right.get_legend_handles_labels()[1]
                          else None)
                right.scatter([i + offset] * len(values), values, color="k", s=6, zorder=3)
    right.set_xticks(x, names, rotation=30, ha="right")
    right.set_ylabel("days")
    right.legend(fontsize=8)
    figure.suptitle("The closed loop on every scenario (event clock)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_scenarios(size: Any, names: list[str], seeds: list[int], *,  # noqa: ANN401
                  settings: Settings | None = None, triton_repo: Path = TRITON_REPO,
                  keep_up: bool = False, reviews: list[int] | None = None,
                  ) -> dict[str, list[dict[str, Any]]]:
    """The loop once a scenario, seed and feedback mode (``reviews``: cards reviewed a
    day, 0 for no feedback; ``size`` gives the world and the clock); returns each
    line's figures by seed, and writes the table and its plot."""
    from streams.jobs.loop import run_loop

    settings = settings or Settings.from_env()
    out_dir = settings.state_dir / "runs" / f"scenarios-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True)
    modes = reviews or [size.reviews_per_day]
    lines = [(name, r) for name in names for r in modes]
    rows: dict[str, list[dict[str, Any]]] = {line_name(n, r): [] for n, r in lines}
    runs: list[dict[str, Any]] = []
    total, done = len(lines) * len(seeds), 0
    for name, review in lines:
        for seed in seeds:
            done += 1
            log(f"{line_name(name, review)}, seed {seed} (run {done} of {total})")
            summary = run_loop(dataclasses.replace(size, drift=SCENARIOS[name], seed=seed,
                                                   reviews_per_day=review),
                               settings=settings, triton_repo=triton_repo,
                               keep_up=keep_up or done < total)
            rows[line_name(name, review)].append(summary["figures"])
            runs.append({"scenario": name, "reviews_per_day": review, "seed": seed,
                         "run": summary["run"], "wall_s": summary["wall_s"],
                         "figures": summary["figures"], "feedback": {
                             k: v for k, v in summary["feedback"].items() if k != "days"}})
            (out_dir / "scenarios.json").write_text(json.dumps(
                {"size": dataclasses.asdict(size), "runs": runs}, indent=2, default=str))
    table = table_markdown(rows)
    (out_dir / "table.md").write_text(
        f"clock {size.clock}; {size.customers} cards, {size.terminals} terminals, "
        f"{size.days} days; seeds {seeds}\n\n{table}\n")
    plot_table(rows, out_dir / "scenarios.png")
    print(f"\n{table}\n")
    log(f"table, plot and every run's figures: {out_dir}")
    return rows

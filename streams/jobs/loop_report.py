"""The closed loop's report: quality over event time, adaptive against frozen, plots.

Everything here works on what a run leaves behind: the feature log (served features,
score, serving version), the labels, and the ``model-events`` records. The frozen
counterfactual needs no second run: features do not depend on the model, so scoring
the logged features with the first model is exactly what the same stream would have
served with that model frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.evaluation import assess, card_precision_at_k

DAY = 86400.0


@dataclass
class LoopFigures:
    """The loop's headline figures (each ``None`` when the run could not show it)."""

    drift_start_day: int
    post_drift_rows: int
    post_drift_frauds: int
    adaptive_average_precision: float
    frozen_average_precision: float
    adaptive_card_precision_at_100: float
    frozen_card_precision_at_100: float
    ap_gain: float
    cp_gain: float
    serving_versions: list[int]
    promotions: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    drift_decisions: int = 0
    first_drift_day: float | None = None
    cycle_seconds: list[float] = field(default_factory=list)
    # The label-delay oracle (models/oracle.py) on the same rows, and the first day from
    # which the served AP stays within 10 % of it (days after the drift starts).
    oracle_average_precision: float | None = None
    days_to_recover: int | None = None
    # Detections raised at or after the drift's start (the first, in days after it, and
    # its monitor) and before it (false alarms; on a run without drift, every one).
    first_detection_days: float | None = None
    first_detection_monitor: str | None = None
    false_alarms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_frame(logged: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """The logged rows with the columns :func:`models.evaluation.assess` reads.

    ``labels`` maps ``tx_id`` to the true label (0/1); day numbers count from the
    first logged day.
    """
    frame = logged.copy()
    frame["TX_FRAUD"] = labels.reindex(frame["tx_id"]).to_numpy(dtype=np.int64)
    days = (frame["event_time"] // DAY).astype(np.int64)
    frame["TX_TIME_DAYS"] = days - days.min()
    frame["CUSTOMER_ID"] = frame["card_id"]
    return frame


def daily_quality(frame: pd.DataFrame, scores: np.ndarray, window_days: int = 7,
                  k: int = 100) -> pd.DataFrame:
    """AP and CP@k of ``scores`` over the trailing ``window_days`` days, for each day."""
    from sklearn.metrics import average_precision_score

    days = frame["TX_TIME_DAYS"].to_numpy()
    y = frame["TX_FRAUD"].to_numpy()
    daily_cp = dict(zip(np.unique(days).tolist(), card_precision_at_k(frame, scores, k).per_day,
                        strict=True))
    rows = []
    for day in range(int(days.min()) + window_days - 1, int(days.max()) + 1):
        mask = (days > day - window_days) & (days <= day)
        if y[mask].sum() == 0:
            continue
        cps = [daily_cp[d] for d in range(day - window_days + 1, day + 1) if d in daily_cp]
        rows.append({"day": day, "average_precision": average_precision_score(y[mask],
                                                                              scores[mask]),
                     "card_precision_at_k": float(np.mean(cps)) if cps else np.nan})
    return pd.DataFrame(rows)


def detection_day(event: dict[str, Any], origin: float) -> float:
    """The event day a ``drift_detected`` record was raised on (its evaluation time;
    older records only carry their window's end)."""
    at = event.get("evaluated_at") or event.get("window_end") or 0.0
    return float(at) / DAY - origin


def loop_figures(frame: pd.DataFrame, frozen_scores: np.ndarray, drift_start_day: int,
                 events: list[dict[str, Any]], oracle_scores: np.ndarray | None = None,
                 drift_known: bool = True) -> LoopFigures:
    """Adaptive (served) against frozen quality after the drift, the oracle and the time
    to recover to it, and the loop's events; without ``drift_known`` (a control run, a
    team's data) every detection counts as a false alarm."""
    after = frame["TX_TIME_DAYS"].to_numpy() >= drift_start_day
    post = frame[after]
    served = assess(post, post["score"].to_numpy())
    frozen = assess(post, frozen_scores[after])
    drifts = [e for e in events if e.get("event") == "drift_detected"]
    promotions = [e for e in events if e.get("event") == "promoted"]
    origin = float(frame["event_time"].min() // DAY)
    first_drift = None
    if drifts:
        first_drift = min(float(e.get("window_end") or e.get("now") or 0) for e in drifts)
        first_drift = first_drift / DAY - origin if first_drift else None
    raised = sorted(((detection_day(e, origin), e) for e in drifts), key=lambda p: p[0])
    true = [(day, e) for day, e in raised if drift_known and day >= drift_start_day]
    oracle_ap = recovered = None
    if oracle_scores is not None:
        from models.oracle import time_to_recover

        scored = after & np.isfinite(oracle_scores)
        if scored.any():
            oracle_ap = assess(frame[scored], oracle_scores[scored]).average_precision
        recovered = time_to_recover(frame["score"].to_numpy(), oracle_scores,
                                    frame["TX_FRAUD"].to_numpy(),
                                    frame["TX_TIME_DAYS"].to_numpy(), drift_start_day).days_after
    return LoopFigures(
        drift_start_day=drift_start_day,
        post_drift_rows=int(after.sum()),
        post_drift_frauds=int(post["TX_FRAUD"].sum()),
        adaptive_average_precision=served.average_precision,
        frozen_average_precision=frozen.average_precision,
        adaptive_card_precision_at_100=served.card_precision_at_k,
        frozen_card_precision_at_100=frozen.card_precision_at_k,
        ap_gain=served.average_precision / frozen.average_precision,
        cp_gain=(served.card_precision_at_k / frozen.card_precision_at_k
                 if frozen.card_precision_at_k else float("nan")),
        serving_versions=sorted(int(v) for v in frame["model_version"].unique()),
        promotions=promotions,
        rejections=[e for e in events if e.get("event") == "challenger_rejected"],
        rollbacks=[e for e in events if e.get("event") == "rollback"],
        drift_decisions=len(drifts),
        first_drift_day=first_drift,
        cycle_seconds=[float(e["cycle_seconds"]) for e in promotions
                       if e.get("cycle_seconds") is not None],
        oracle_average_precision=oracle_ap,
        days_to_recover=recovered,
        first_detection_days=true[0][0] - drift_start_day if true else None,
        first_detection_monitor=_monitor_name(true[0][1]) if true else None,
        false_alarms=len(raised) - len(true),
    )


def _monitor_name(event: dict[str, Any]) -> str:
    feature = event.get("feature")
    return f"{event.get('monitor')}:{feature}" if feature else str(event.get("monitor"))


def version_spans(frame: pd.DataFrame) -> list[tuple[int, float, float]]:
    """``(version, first day, last day)`` each serving version scored, by first day.

    Around a swap the partitions switch within a batch or two of each other, so the
    versions overlap by moments; each version is one span from its first to its last
    scored transaction.
    """
    days = frame["TX_TIME_DAYS"].to_numpy() + (frame["event_time"].to_numpy() % DAY) / DAY
    spans = pd.DataFrame({"version": frame["model_version"].to_numpy(), "day": days}) \
        .groupby("version")["day"].agg(["min", "max"]).sort_values("min")
    return [(int(v), float(row["min"]), float(row["max"])) for v, row in spans.iterrows()]


def plot_loop(frame: pd.DataFrame, frozen_scores: np.ndarray, drift_start_day: int,
              events: list[dict[str, Any]], path: Path,
              oracle_scores: np.ndarray | None = None,
              reviews: list[dict[str, Any]] | None = None) -> None:
    """AP and CP@100 over event time, served against frozen (and the label-delay
    oracle), with versions and drift detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = daily_quality(frame, frame["score"].to_numpy())
    frozen = daily_quality(frame, frozen_scores)
    origin = float(frame["event_time"].min() // DAY)
    oracle = None
    if oracle_scores is not None and np.isfinite(oracle_scores).any():
        rows = np.isfinite(oracle_scores)
        oracle = daily_quality(frame[rows], oracle_scores[rows])
    # Orange: a drift detection (the day it was raised).
    detected = sorted({round(detection_day(e, origin), 2) for e in events
                       if e.get("event") == "drift_detected"})
    figure, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True,
                                gridspec_kw={"height_ratios": [3, 3, 2]})
    for axis, metric, name in ((axes[0], "average_precision", "AP (7-day window)"),
                               (axes[1], "card_precision_at_k", "CP@100 (7-day mean)")):
        axis.plot(served["day"], served[metric], color="C0", label="served (loop running)")
        axis.plot(frozen["day"], frozen[metric], color="0.5", linestyle="--",
                  label="first model frozen")
        if oracle is not None:
            axis.plot(oracle["day"], oracle[metric], color="C2", linewidth=1,
                      label="label-delay oracle (retrained daily)")
        for day in detected:
            axis.axvline(day, color="orange", linewidth=0.6, alpha=0.6)
        axis.set_ylabel(name)
        axis.axvline(drift_start_day, color="crimson", linewidth=1, label="drift starts")
        for _, first, _ in version_spans(frame)[1:]:
            axis.axvline(first, color="green", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    if reviews:
        # Investigator feedback: the fraudulent cards found by review, each day.
        twin = axes[1].twinx()
        days = [r["day"] for r in reviews]
        twin.bar(days, [r["fraud_cards"] for r in reviews], width=0.8, color="purple",
                 alpha=0.25, label="fraud cards found by review (feedback)")
        twin.bar(days, [r["explored_fraud_cards"] for r in reviews], width=0.8,
                 color="purple", alpha=0.6, label="... of them found by exploring")
        twin.set_ylabel("cards a day")
        twin.legend(fontsize=7, loc="upper right")
    axes[0].legend(fontsize=8, loc="lower left")
    for version, first, last in version_spans(frame):
        axes[2].barh(0, last - first, left=first, height=0.4)
        axes[2].text((first + last) / 2, 0, f"v{version}", ha="center", va="center",
                     fontsize=8)
    checks = [e for e in events if e.get("event") in ("drift_check", "drift_detected")
              and e.get("window_end")]
    if checks:
        statistics = pd.DataFrame([{
            "day": float(e["window_end"]) / DAY - origin,
            "monitor": e.get("monitor", "?") + (f":{e['feature']}" if e.get("feature") else ""),
            "ratio": float(e["statistic"]) / float(e["threshold"]) if e.get("threshold") else 0,
            "detected": e.get("event") == "drift_detected",
        } for e in checks])
        strongest = statistics.groupby("monitor")["ratio"].max().nlargest(4).index
        twin = axes[2].twinx()
        for monitor in strongest:
            rows = statistics[statistics["monitor"] == monitor].sort_values("day")
            twin.plot(rows["day"], rows["ratio"], marker=".", linewidth=1, label=monitor)
        hits = statistics[statistics["detected"]]
        twin.scatter(hits["day"], hits["ratio"], color="crimson", zorder=3, s=18,
                     label="drift detected")
        twin.axhline(1.0, color="crimson", linewidth=0.5)
        twin.set_ylabel("statistic / threshold")
        twin.legend(fontsize=7, loc="upper left")
    axes[2].set_yticks([])
    axes[2].set_xlabel("event day of the run")
    axes[2].set_title("serving version, and the strongest drift statistics", fontsize=9)
    figure.suptitle("The closed loop: quality over event time")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report_markdown(figures: LoopFigures, known_drift: bool = True) -> str:
    """The short report printed at the end of a run and kept in its folder; without a
    ``known_drift`` (a team's own data) the comparison starts where the first model ended."""
    since = "drift from" if known_drift else "compared from"
    after = "after the drift" if known_drift else f"from day {figures.drift_start_day}"
    lines = [
        f"{since} event day {figures.drift_start_day}: "
        f"{figures.post_drift_rows:,} transactions, {figures.post_drift_frauds:,} frauds after it",
        "",
        f"| {after} | served (loop) | first model frozen | gain |",
        "|---|---|---|---|",
        f"| average precision | {figures.adaptive_average_precision:.3f} | "
        f"{figures.frozen_average_precision:.3f} | {figures.ap_gain:.2f}x |",
        f"| CP@100 | {figures.adaptive_card_precision_at_100:.3f} | "
        f"{figures.frozen_card_precision_at_100:.3f} | {figures.cp_gain:.2f}x |",
        "",
        *_oracle_lines(figures, known_drift),
        f"serving versions: {figures.serving_versions}; drift decisions: "
        f"{figures.drift_decisions}; promotions: {len(figures.promotions)}; rejected "
        f"challengers: {len(figures.rejections)}; rollbacks: {len(figures.rollbacks)}",
    ]
    if figures.cycle_seconds:
        lines.append("drift decision to new version serving: "
                     + ", ".join(f"{s:.1f} s" for s in figures.cycle_seconds))
    return "\n".join(lines)


def _oracle_lines(figures: LoopFigures, known_drift: bool) -> list[str]:
    lines = []
    if figures.oracle_average_precision is not None:
        recover = ("not within the run" if figures.days_to_recover is None
                   else f"{figures.days_to_recover} days after day {figures.drift_start_day}")
        lines.append(f"label-delay oracle AP {figures.oracle_average_precision:.3f}; served "
                     f"AP within 10 % of it (3-day windows) from then on: {recover}")
    if known_drift:
        first = ("none" if figures.first_detection_days is None else
                 f"{figures.first_detection_days:.1f} days after the drift started "
                 f"({figures.first_detection_monitor})")
        lines.append(f"first detection: {first}; false alarms before the drift: "
                     f"{figures.false_alarms}")
    else:
        lines.append(f"drift detections (none expected without drift): {figures.false_alarms}")
    return [*lines, ""]


SEED_FIGURES = (("AP served", "adaptive_average_precision", ".3f"),
                ("AP frozen", "frozen_average_precision", ".3f"),
                ("AP gain", "ap_gain", ".2f"),
                ("CP@100 served", "adaptive_card_precision_at_100", ".3f"),
                ("CP@100 frozen", "frozen_card_precision_at_100", ".3f"),
                ("AP oracle", "oracle_average_precision", ".3f"),
                ("days to recover", "days_to_recover", ".0f"),
                ("first detection (days)", "first_detection_days", ".1f"),
                ("false alarms", "false_alarms", ".0f"))


def seeds_markdown(figures: dict[int, dict]) -> str:
    """A table of the loop's figures by seed (the world), with their mean and standard
    deviation over the seeds; ``figures`` maps a seed to its ``LoopFigures.to_dict()``.
    A figure a run could not show (no recovery, no detection) is ``-``, and the mean and
    spread are over the seeds that show it."""
    import statistics

    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def column(key: str) -> list[float]:
        return [float(f[key]) for f in figures.values() if f.get(key) is not None]

    head = ["seed", *(name for name, _, _ in SEED_FIGURES), "promotions", "rejected"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, f in sorted(figures.items()):
        cells = [cell(f.get(key), spec) for _, key, spec in SEED_FIGURES]
        lines.append(f"| {seed} | " + " | ".join(cells)
                     + f" | {len(f['promotions'])} | {len(f['rejections'])} |")
    if len(figures) > 1:
        for label, how, least in (("mean", statistics.fmean, 1), ("sd", statistics.stdev, 2)):
            cells = [cell(how(column(key)) if len(column(key)) >= least else None,
                          ".1f" if spec == ".0f" else spec)
                     for _, key, spec in SEED_FIGURES]
            counts = [how([float(len(f["promotions"])) for f in figures.values()]),
                      how([float(len(f["rejections"])) for f in figures.values()])]
            lines.append(f"| {label} | " + " | ".join(cells)
                         + "".join(f" | {c:.1f}" for c in counts) + " |")
    return "\n".join(lines)

"""The end-to-end benchmark's outputs: the latency plot and the table it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot(phases: list[tuple[float, np.ndarray, np.ndarray, list[float]]],
         path: Path) -> None:
    """Latency CDF of each steady-rate phase (both measures), and the median by second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (axis, over_time) = plt.subplots(1, 2, figsize=(12, 4))
    for rate, e2e_ms, record_ms, p50_by_second in phases:
        over_time.plot(np.arange(len(p50_by_second)), p50_by_second,
                       label=f"{rate:,.0f} events/s")
        for values, label in ((e2e_ms, "score append - transaction append"),
                              (record_ms, "Score.latency_ms (worker clock)")):
            ordered = np.sort(values)
            axis.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered),
                      label=f"{rate:,.0f}/s: {label}")
    over_time.set_xlabel("second of the latency phase (transaction timestamp)")
    over_time.set_ylabel("median latency, ms (Kafka timestamps)")
    over_time.set_yscale("log")
    over_time.grid(True, which="both", alpha=0.3)
    over_time.legend(fontsize=8)
    over_time.set_title("Median by second: flat when the worker keeps up", fontsize=10)
    axis.axvline(50, color="grey", linestyle=":", label="goal: p99 50 ms")
    axis.set_xscale("log")
    axis.set_xlabel("latency, ms")
    axis.set_ylabel("share of transactions")
    axis.set_title("End-to-end latency at steady rates (live mode)", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def print_table(report: dict[str, Any], output: Path) -> None:
    a = report["max_rate"]
    phases = [p for p in (report["latency"], report.get("latency_steady")) if p]
    print("\n| figure | value |\n|---|---|")
    print(f"| max rate: transactions pre-filled (labels) | {a['events']:,} "
          f"({a['labels_prefilled']:,}) |")
    print(f"| max rate: scored events/s, first to last score | {a['events_per_s']:,.0f} |")
    print(f"| max rate: worker start to last score, s | {a['worker_start_to_last_score_s']} |")
    for b in phases:
        k, r = b["kafka_timestamps_ms"], b["score_record_latency_ms"]
        name = f"at {b['target_rate']:,.0f}/s"
        print(f"| {name}: rate achieved, events/s | {b['achieved_rate']:,.0f} |")
        print(f"| {name}: transactions scored / sent | {b['matched']:,} / {b['events']:,} |")
        print(f"| {name}: latency, Kafka timestamps: p50 / p99 / max ms | {k['p50']} / "
              f"{k['p99']} / {k['max']} |")
        print(f"| {name}: latency, Score.latency_ms: p50 / p99 / max ms | {r['p50']} / "
              f"{r['p99']} / {r['max']} |")
        by_second = b["kafka_timestamps_p50_ms_by_second"]
        tenth = max(1, len(by_second) // 10)
        print(f"| {name}: median latency, first / last tenth of the phase, ms | "
              f"{np.median(by_second[:tenth]):.1f} / {np.median(by_second[-tenth:]):.1f} |")
    heads = ["max rate", *(f"{b['target_rate']:,.0f}/s" for b in phases)]
    print("\n| CPU µs an event | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
    for name in a["cpu_us_per_event"]:
        print(f"| {name} | {a['cpu_us_per_event'][name]} | "
              + " | ".join(str(b["cpu_us_per_event"].get(name, "")) for b in phases) + " |")
    print("\n| stage seconds (worker:stage) | " + " | ".join(heads) + " |\n|---|"
          + "---|" * len(heads))
    for name in sorted(a["stage_seconds"], key=lambda n: -a["stage_seconds"][n]):
        print(f"| {name} | {a['stage_seconds'][name]:.2f} | "
              + " | ".join(f"{b['stage_seconds'].get(name, 0.0):.2f}" for b in phases) + " |")
    print(f"| score: micro-batches (mean events) | {a['micro_batches']:,} ({a['mean_batch']}) | "
          + " | ".join(f"{b['micro_batches']:,} ({b['mean_batch']})" for b in phases) + " |")
    profile = a.get("scoring_worker_profile") or {}
    if profile.get("samples"):
        print(f"\nscoring worker on a second backlog of {profile.get('events', 0):,}: "
              f"py-spy {profile['samples']:,} samples, "
              f"Python busy {profile['busy_python_fraction']:.0%} of the phase")
        for key, title in (("by_area", "area of the leaf frame"),
                           ("by_stage", "innermost project function on the stack")):
            print(f"\n| {title} | share of samples |\n|---|---|")
            for row in profile[key][:10]:
                print(f"| {row['name']} | {row['share']:.1%} |")
    info = report["machine"]
    print(f"\n{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}); "
          f"results in {output} and {output.with_suffix('.png')}")

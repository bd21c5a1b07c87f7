"""The serving benchmarks side by side, in one run: pass-through, end to end, Triton.

    python -m bench.serving [--events N] [--e2e-events N] [--seconds S] [--quick]

Runs, one after the other on the same machine and each with its own services on free
ports:

1. :mod:`bench.passthrough`: a plain confluent-kafka consume-then-produce loop doing no
   work, the ceiling of a Python worker on this broker (``--events`` events, both modes,
   three runs each);
2. :mod:`bench.e2e`: end-to-end scored events a second (one labels worker, one scoring
   worker, live mode), then p50 / p99 latency from transaction append to score append
   at half that rate and at 1,000/s, with a py-spy profile of the scoring worker on a
   second backlog (after the maximum was measured without the sampler);
3. :mod:`bench.triton_vs_ort`: Triton against in-process ONNX Runtime, rows a second at
   equal batch sizes.

Each writes its own report under ``bench/results/serving/``; this command adds
``bench/results/serving.json`` with the headline figures against the goals (10,000
scored events/s, a quarter of the pass-through rate, p99 at most 50 ms at half load and
at a steady 1,000 events/s, at most 200 µs of CPU an event over every process) and prints
them as a table. Services are stopped between the parts, so no part pays for
another's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import command_line, log, machine_info, utc_date, write_report
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
GOALS = {"scored_events_per_s": 10_000, "fraction_of_passthrough": 0.25, "p99_ms": 50.0,
         "steady_p99_ms": 50.0, "cpu_us_per_event": 200.0}


def headline(passthrough: dict[str, Any], e2e: dict[str, Any],
             triton: dict[str, Any]) -> dict[str, Any]:
    """The figures the goals are about, from the three reports."""
    rates = {mode: statistics.median(r["events_per_s"] for r in passthrough["runs"]
                                     if r["mode"] == mode)
             for mode in {r["mode"] for r in passthrough["runs"]}}
    baseline = rates.get("flush-per-batch", max(rates.values()))
    scored = e2e["max_rate"]["events_per_s"]
    latency = e2e["latency"]["kafka_timestamps_ms"]
    by_batch: dict[int, dict[str, float]] = {}
    for run in triton["runs"]:
        by_batch.setdefault(run["batch"], {})[run["method"]] = run["rows_per_s"]
    figures = {
        "passthrough_events_per_s": rates,
        "passthrough_baseline": "flush-per-batch" if "flush-per-batch" in rates else "free",
        "scored_events_per_s": scored,
        "fraction_of_passthrough": round(scored / baseline, 4) if baseline else None,
        "half_load_rate": e2e["latency"]["target_rate"],
        "half_load_achieved_rate": e2e["latency"]["achieved_rate"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "rows_per_s_by_batch": {str(k): v for k, v in sorted(by_batch.items())},
    }
    steady = e2e.get("latency_steady") or {}
    figures["steady_rate"] = steady.get("target_rate")
    figures["steady_p99_ms"] = (steady.get("kafka_timestamps_ms") or {}).get("p99")
    # CPU of every process at half load, labels flowing at the same rate.
    figures["cpu_us_per_event"] = (e2e["latency"].get("cpu_us_per_event") or {}).get(
        "all processes")
    figures["goals"] = {
        "scored_events_per_s": {"goal": GOALS["scored_events_per_s"],
                                "met": scored >= GOALS["scored_events_per_s"]},
        "fraction_of_passthrough": {
            "goal": GOALS["fraction_of_passthrough"],
            "met": figures["fraction_of_passthrough"] is not None
            and figures["fraction_of_passthrough"] >= GOALS["fraction_of_passthrough"]},
        "p99_ms": {"goal": GOALS["p99_ms"], "met": latency["p99"] <= GOALS["p99_ms"]},
        "steady_p99_ms": {"goal": GOALS["steady_p99_ms"],
                          "met": figures["steady_p99_ms"] is not None
                          and figures["steady_p99_ms"] <= GOALS["steady_p99_ms"]},
        "cpu_us_per_event": {"goal": GOALS["cpu_us_per_event"],
                             "met": figures["cpu_us_per_event"] is not None
                             and figures["cpu_us_per_event"] <= GOALS["cpu_us_per_event"]},
    }
    return figures


def run_part(name: str, module: Any, argv: list[str]) -> tuple[dict[str, Any], int, float]:
    """Run one benchmark's ``main``; its report, exit code and wall seconds."""
    log(f"{name}: python -m bench.{name} {' '.join(argv)}")
    began = time.monotonic()
    code = module.main(argv)
    output = Path(argv[argv.index("--output") + 1])
    return json.loads(output.read_text()), code, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000,
                        help="events of each pass-through run")
    parser.add_argument("--e2e-events", type=int, default=200_000,
                        help="transactions of the end-to-end max-rate phase")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="duration of the end-to-end latency phase")
    parser.add_argument("--batches", default="1,64,1024,4096",
                        help="batch sizes of the Triton against ONNX Runtime part")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, to check the command works")
    parser.add_argument("--output", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args(argv)
    folder = args.output.with_suffix("")
    from bench import e2e, passthrough, triton_vs_ort

    quick = ["--quick"] if args.quick else []
    began = time.monotonic()
    parts = {
        "passthrough": (passthrough, ["--events", str(args.events), *quick,
                                      "--output", str(folder / "passthrough.json")]),
        "e2e": (e2e, ["--events", str(args.e2e_events), "--seconds", str(args.seconds),
                      *quick, "--output", str(folder / "e2e.json")]),
        "triton_vs_ort": (triton_vs_ort, ["--batches", args.batches, *quick,
                                          "--output", str(folder / "triton_vs_ort.json")]),
    }
    reports: dict[str, dict[str, Any]] = {}
    codes: dict[str, int] = {}
    walls: dict[str, float] = {}
    for name, (module, part_argv) in parts.items():
        reports[name], codes[name], walls[name] = run_part(name, module, part_argv)
    figures = headline(reports["passthrough"], reports["e2e"], reports["triton_vs_ort"])
    profile = reports["e2e"]["max_rate"].get("scoring_worker_profile") or {}
    report = {
        "benchmark": "serving: pass-through, end to end and Triton against ONNX Runtime, "
                     "one after the other in one run",
        "command": command_line("bench.serving", argv),
        "date": utc_date(),
        "quick": args.quick,
        "figures": figures,
        "limits": {
            "scoring_worker_cpu_s": reports["e2e"]["max_rate"]["worker_cpu_s"],
            "services_cpu_s": reports["e2e"]["max_rate"].get("services_cpu_s"),
            "max_rate_wall_s": reports["e2e"]["max_rate"]["worker_start_to_last_score_s"],
            "stage_seconds": reports["e2e"]["max_rate"]["stage_seconds"],
            "profile_by_area": profile.get("by_area"),
            "profile_by_stage": profile.get("by_stage"),
            "busy_python_fraction": profile.get("busy_python_fraction"),
        },
        "parts": {name: {"report": str(folder.name + "/" + name + ".json"),
                         "exit_code": codes[name], "wall_s": round(walls[name], 1)}
                  for name in parts},
        "total_wall_s": round(time.monotonic() - began, 1),
        "machine": machine_info(),
    }
    write_report(args.output, report)
    print_table(report, args.output)
    return 0 if not any(codes.values()) else 1


def print_table(report: dict[str, Any], output: Path) -> None:
    f = report["figures"]
    goals = f["goals"]

    def mark(key: str) -> str:
        return "met" if goals[key]["met"] else "not met"

    rates = f["passthrough_events_per_s"]
    print("\n| figure | measured | goal |\n|---|---|---|")
    for mode, rate in sorted(rates.items()):
        print(f"| pass-through, {mode} (median of runs), events/s | {rate:,.0f} | |")
    print(f"| scored events/s, end to end | {f['scored_events_per_s']:,.0f} | "
          f"{GOALS['scored_events_per_s']:,} ({mark('scored_events_per_s')}) |")
    print(f"| scored / pass-through ({f['passthrough_baseline']}) | "
          f"{f['fraction_of_passthrough']:.3f} | {GOALS['fraction_of_passthrough']} "
          f"({mark('fraction_of_passthrough')}) |")
    print(f"| latency at half load ({f['half_load_achieved_rate']:,.0f} events/s): p50 ms | "
          f"{f['p50_ms']} | |")
    print(f"| latency at half load: p99 ms | {f['p99_ms']} | {GOALS['p99_ms']:g} "
          f"({mark('p99_ms')}) |")
    if f.get("steady_p99_ms") is not None:
        print(f"| latency at a steady {f['steady_rate']:,.0f} events/s: p99 ms | "
              f"{f['steady_p99_ms']} | {GOALS['steady_p99_ms']:g} ({mark('steady_p99_ms')}) |")
    if f.get("cpu_us_per_event") is not None:
        print(f"| CPU µs an event, all processes, at half load | {f['cpu_us_per_event']} | "
              f"{GOALS['cpu_us_per_event']:g} ({mark('cpu_us_per_event')}) |")
    print("\n| batch | " + " | ".join(next(iter(f["rows_per_s_by_batch"].values()))) + " |")
    print("|---|" + "---|" * len(next(iter(f["rows_per_s_by_batch"].values()))))
    for batch, methods in f["rows_per_s_by_batch"].items():
        print(f"| {int(batch):,} | " + " | ".join(f"{v:,.0f}" for v in methods.values()) + " |")
    limits = report["limits"]
    print(f"\nmax-rate phase: {limits['max_rate_wall_s']} s; CPU s: workers "
          f"{limits['scoring_worker_cpu_s']}, services {limits['services_cpu_s']}")
    for row in (limits.get("profile_by_stage") or [])[:8]:
        print(f"  scoring worker profile: {row['share']:6.1%}  {row['name']}")
    print(f"\nresults in {output} and {output.with_suffix('')}/")


if __name__ == "__main__":
    sys.exit(main())

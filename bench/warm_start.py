"""Benchmark: warm start against full retrain, time to a model that passes the gate.

    python -m bench.warm_start [--seeds 3] [--customers N] [--terminals N] [--quick]

A simulated world (the handbook's simulator) gets a ``card_testing`` drift (a new fraud
pattern, :mod:`models.drift`) from day ``--drift-start``; every model sees the model
features (:func:`models.extra_features.add_model_features`). Days, with ``D`` the drift
start:

* **champion**: the recipe (:func:`models.recipe.fit_fraud_model`) on the five weeks
  before ``D - 7``, stopped early on ``[D - 7, D)``: it never saw the new pattern;
* **validation week** of both challengers: ``[D + 14, D + 21)``; **gate window**, the
  latest week neither trained on: ``[D + 21, D + 28)``;
* **warm start**: fine-tunes the champion's members (``init=champion``) on the
  ``--warm-weeks`` post-drift weeks before the validation week, with the retrainer's
  fine-tuning budget (at most ``--warm-epochs`` epochs, patience ``--warm-patience``);
* **full retrain**: the default recipe from scratch on its five weeks before the
  validation week (pre- and post-drift).

Each challenger is exported to ONNX and judged by :func:`models.gate.evaluate_gate`
against the champion's ONNX on the gate window. Its **time to a passing model** is
training + export + gate seconds when it passes; the policy "warm start first, full
retrain when it fails" is reported too. Repeated for ``--seeds`` seeds (the drift draws
and every model's seed). Writes ``bench/results/warm_start.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.common import (
    command_line,
    log,
    machine_info,
    simulated_world,
    utc_date,
    write_report,
)
from models.binned_mlp import FraudEnsemble
from models.drift import apply_drift
from models.drift_spec import DriftSpec
from models.evaluation import assess
from models.export import export_onnx
from models.extra_features import MODEL_FEATURE_COLUMNS, add_model_features
from models.gate import GateReport, GateWindow, evaluate_gate
from models.recipe import DEFAULT_RECIPE, Recipe, fit_fraud_model, predict
from models.reference_features import TARGET_COLUMN
from models.train import pick_device
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "warm_start.json"
STRATEGIES = ("warm_start", "full_retrain")


def machine(device: str) -> dict[str, object]:
    """The host, the device the models train on, and torch's version and threads."""
    return machine_info(device=str(pick_device(device)), torch=torch.__version__,
                        torch_threads=torch.get_num_threads())


def days_between(frame: pd.DataFrame, start: int, end: int) -> pd.DataFrame:
    days = frame["TX_TIME_DAYS"].to_numpy()
    return frame[(days >= start) & (days < end)]


def gate_window(frame: pd.DataFrame) -> GateWindow:
    return GateWindow(
        features=frame[MODEL_FEATURE_COLUMNS].to_numpy(np.float32),
        labels=frame[TARGET_COLUMN].to_numpy(np.int64),
        cards=frame["CUSTOMER_ID"].to_numpy(np.int64),
        days=frame["TX_TIME_DAYS"].to_numpy(np.int64),
    )


def challenge(name: str, train: pd.DataFrame, valid: pd.DataFrame, gate: pd.DataFrame,
              champion_onnx: Path, folder: Path, seed: int, device: str,
              init: FraudEnsemble | None = None,
              recipe: Recipe = DEFAULT_RECIPE) -> dict[str, Any]:
    """Train one challenger, export it and put it through the gate; its figures."""
    started = time.perf_counter()
    model = fit_fraud_model(train, valid, seed=seed, device=device, init=init, recipe=recipe)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    path = export_onnx(model, folder / f"{name}.onnx")
    export_s = time.perf_counter() - started
    report: GateReport = evaluate_gate(path, gate_window(gate), challenger_torch=model,
                                       champion=champion_onnx)
    quality = assess(gate, predict(model, gate))
    total = train_s + export_s + report.seconds
    log(f"  {name}: trained in {train_s:.1f} s on {len(train):,} rows; gate "
        f"{'passed' if report.passed else 'failed: ' + '; '.join(report.reasons)}")
    return {
        "train_rows": len(train), "train_frauds": int(train[TARGET_COLUMN].sum()),
        "train_s": round(train_s, 2), "export_s": round(export_s, 2),
        "gate_s": round(report.seconds, 2), "total_s": round(total, 2),
        "passed": report.passed, "reasons": report.reasons,
        "time_to_passing_model_s": round(total, 2) if report.passed else None,
        "gate_window": {
            "average_precision": report.average_precision,
            "card_precision_at_100": report.card_precision_at_100,
            "auc_roc": quality.auc_roc,
            "ece": report.ece, "latency_p99_ms": report.latency_p99_ms,
        },
        "champion_on_gate_window": {
            "average_precision": report.champion_average_precision,
            "card_precision_at_100": report.champion_card_precision_at_100,
        },
    }


def run_seed(raw: pd.DataFrame, args: argparse.Namespace, seed: int,
             folder: Path) -> dict[str, Any]:
    d = args.drift_start
    spec = DriftSpec("card_testing", start_day=d, intensity=args.intensity)
    started = time.perf_counter()
    frame = add_model_features(apply_drift(raw, [spec], seed=seed))
    prepare_s = time.perf_counter() - started
    weeks = DEFAULT_RECIPE.train_weeks
    gate = days_between(frame, d + 21, d + 28)
    valid = days_between(frame, d + 14, d + 21)
    log(f"seed {seed}: {len(frame):,} transactions, "
        f"{int((frame['TX_FRAUD_SCENARIO'] == 4).sum()):,} card-testing frauds; "
        "training the champion")
    started = time.perf_counter()
    champion = fit_fraud_model(days_between(frame, d - 7 - 7 * weeks, d - 7),
                               days_between(frame, d - 7, d), seed=seed, device=args.device)
    champion_s = time.perf_counter() - started
    champion_onnx = export_onnx(champion, folder / f"champion-{seed}.onnx")
    results = {
        "warm_start": challenge(
            f"warm-{seed}", days_between(frame, d + 14 - 7 * args.warm_weeks, d + 14), valid,
            gate, champion_onnx, folder, seed, args.device, init=champion,
            recipe=dataclasses.replace(DEFAULT_RECIPE, max_epochs=args.warm_epochs,
                                       patience=args.warm_patience)),
        "full_retrain": challenge(
            f"full-{seed}", days_between(frame, d + 14 - 7 * weeks, d + 14), valid, gate,
            champion_onnx, folder, seed, args.device),
    }
    warm, full = results["warm_start"], results["full_retrain"]
    policy = (warm["total_s"] if warm["passed"]
              else warm["total_s"] + full["total_s"] if full["passed"] else None)
    return {
        "seed": seed, "rows": len(frame), "prepare_s": round(prepare_s, 2),
        "champion_train_s": round(champion_s, 2),
        "gate_rows": len(gate), "gate_frauds": int(gate[TARGET_COLUMN].sum()),
        "gate_card_testing_frauds": int((gate["TX_FRAUD_SCENARIO"] == 4).sum()),
        **results,
        "warm_then_full_time_to_passing_s": round(policy, 2) if policy is not None else None,
        "speedup_train": round(full["train_s"] / warm["train_s"], 2),
        "speedup_to_passing": (round(full["total_s"] / warm["total_s"], 2)
                               if warm["passed"] and full["passed"] else None),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds, and how many seeds each challenger passed."""
    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return round(float(np.mean(kept)), 4) if kept else None

    out: dict[str, Any] = {}
    for name in STRATEGIES:
        out[name] = {
            "passed": f"{sum(r[name]['passed'] for r in runs)} of {len(runs)}",
            "train_s": mean([r[name]["train_s"] for r in runs]),
            "time_to_passing_model_s": mean([r[name]["time_to_passing_model_s"]
                                             for r in runs]),
            "average_precision": mean([r[name]["gate_window"]["average_precision"]
                                       for r in runs]),
            "card_precision_at_100": mean([r[name]["gate_window"]["card_precision_at_100"]
                                           for r in runs]),
        }
    out["champion"] = {
        "average_precision": mean([r["warm_start"]["champion_on_gate_window"]
                                   ["average_precision"] for r in runs]),
        "card_precision_at_100": mean([r["warm_start"]["champion_on_gate_window"]
                                       ["card_precision_at_100"] for r in runs]),
    }
    out["speedup_train"] = mean([r["speedup_train"] for r in runs])
    out["speedup_to_passing"] = mean([r["speedup_to_passing"] for r in runs])
    out["warm_then_full_time_to_passing_s"] = mean(
        [r["warm_then_full_time_to_passing_s"] for r in runs])
    return out


def print_table(report: dict[str, Any], output: Path) -> None:
    def cell(value: float | None, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    print("\n| seed | model | train s | time to passing model s | gate | AP (gate week) "
          "| CP@100 (gate week) |\n|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        champion = r["warm_start"]["champion_on_gate_window"]
        print(f"| {r['seed']} | champion (pre-drift) | {r['champion_train_s']:.1f} | - | - | "
              f"{cell(champion['average_precision'])} | "
              f"{cell(champion['card_precision_at_100'])} |")
        for name in STRATEGIES:
            x = r[name]
            verdict = "pass" if x["passed"] else "fail: " + "; ".join(
                reason.split(":")[0] for reason in x["reasons"])
            print(f"| {r['seed']} | {name.replace('_', ' ')} | {x['train_s']:.1f} | "
                  f"{cell(x['time_to_passing_model_s'], '.1f')} | {verdict} | "
                  f"{cell(x['gate_window']['average_precision'])} | "
                  f"{cell(x['gate_window']['card_precision_at_100'])} |")
    s = report["summary"]
    print(f"\nmean over {len(report['runs'])} seed(s): warm start passed "
          f"{s['warm_start']['passed']}, full retrain {s['full_retrain']['passed']}; "
          f"training speed-up {cell(s['speedup_train'], '.2f')}x, time-to-passing speed-up "
          f"{cell(s['speedup_to_passing'], '.2f')}x; warm-then-full policy "
          f"{cell(s['warm_then_full_time_to_passing_s'], '.1f')} s")
    info = report["machine"]
    print(f"{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}), "
          f"{info['device']}; results in {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--terminals", type=int, default=4000)
    parser.add_argument("--drift-start", type=int, default=70,
                        help="first day of the card_testing drift (>= 49: the champion "
                             "needs five weeks and a validation week before it)")
    parser.add_argument("--intensity", type=float, default=None,
                        help="cards stolen a day (default: 10 per 5,000 cards, at least 1)")
    parser.add_argument("--warm-weeks", type=int, default=2,
                        help="post-drift weeks the warm start trains on")
    parser.add_argument("--warm-epochs", type=int, default=10,
                        help="most epochs of the fine-tuning (the loop's retrainer: 10)")
    parser.add_argument("--warm-patience", type=int, default=2,
                        help="early-stopping patience of the fine-tuning (the loop's: 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: 300 cards, 600 terminals, one seed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.customers, args.terminals = 1, min(args.customers, 300), \
            min(args.terminals, 600)
    if args.drift_start < 7 * (DEFAULT_RECIPE.train_weeks + 2):
        parser.error(f"--drift-start must be >= {7 * (DEFAULT_RECIPE.train_weeks + 2)}")
    if not 1 <= args.warm_weeks <= 2:
        parser.error("--warm-weeks must be 1 or 2 (the post-drift weeks before validation)")
    if args.intensity is None:
        args.intensity = float(max(1, round(10 * args.customers / 5000)))
    days = args.drift_start + 28

    began = time.perf_counter()
    log(f"simulating {days} days of {args.customers:,} cards and {args.terminals:,} terminals")
    raw = simulated_world(args.customers, args.terminals, days)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-start-") as folder:
        for seed in range(args.seeds):
            runs.append(run_seed(raw, args, seed, Path(folder)))
    report = {
        "benchmark": "warm start vs full retrain after a card_testing drift",
        "command": command_line("bench.warm_start", argv),
        "date": utc_date(),
        "quick": args.quick,
        "world": {"customers": args.customers, "terminals": args.terminals, "days": days},
        "drift": dataclasses.asdict(DriftSpec("card_testing", start_day=args.drift_start,
                                              intensity=args.intensity)),
        "windows": {
            "champion_train_days": [args.drift_start - 7 * (DEFAULT_RECIPE.train_weeks + 1),
                                    args.drift_start - 7],
            "champion_valid_days": [args.drift_start - 7, args.drift_start],
            "warm_start_train_days": [args.drift_start + 14 - 7 * args.warm_weeks,
                                      args.drift_start + 14],
            "full_retrain_train_days": [args.drift_start + 14 - 7 * DEFAULT_RECIPE.train_weeks,
                                        args.drift_start + 14],
            "valid_days": [args.drift_start + 14, args.drift_start + 21],
            "gate_days": [args.drift_start + 21, args.drift_start + 28],
        },
        "recipe": dataclasses.asdict(DEFAULT_RECIPE),
        "runs": runs,
        "summary": summary(runs),
        "total_s": round(time.perf_counter() - began, 1),
        "machine": machine(args.device),
    }
    write_report(args.output, report)
    print_table(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the feature stage alone, per event, outside Kafka and Faust.

    python -m bench.feature_stage [--cards 500] [--terminals 1000] [--skip-before]

On the handbook's full dataset (183 days, 5,000 cards, 10,000 terminals; simulated once
and cached under ``.factory/cache/``), every transaction of a sample of cards goes
through the scoring worker's card stage, and every label of a sample of terminals
through the labels worker's terminal stage, in event-time order with each card's and
terminal's full history (a sample of keys keeps each key's state as large as in the
full stream). Measured per event, in microseconds:

* card stage: ``update_card_history`` (windows of 1, 7, 30 days, the 90-day mean ratio,
  the 14-day largest amount) and the encoding of the new state by the table's codec,
  which is what a changelog-backed table write serialises (``raw``: the state's bytes);
* terminal stage: ``update_terminal_history`` and the encoding of its state;
* terminal features at scoring time: ``terminal_window_features`` on the label arrays.

"before" runs the same events through the previous design, kept here as the reference:
states as lists of ``[event_time, amount, tx_id]`` (``[event_time, known_at, is_fraud,
tx_id]``) scanned in Python and encoded as JSON. Every feature of both designs is
compared: they must be identical.

The stream's own figure (features and scoring together, strict replay) comes from
``bench/results/stream_parity.json`` when it exists. Writes
``bench/results/feature_stage.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from faust.serializers import codecs

from bench.model_quality import handbook_frame
from streams.dataplane.features import (
    CARD_RETENTION_S,
    DAY,
    HORIZON_DAYS,
    LABEL_DELAY_DAYS,
    TERMINAL_RETENTION_S,
    terminal_arrays,
    terminal_window_features,
    update_card_history,
    update_terminal_history,
)
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


class Design:
    """One way of keeping state: its update functions, arrays and table encoding."""

    def __init__(self, name: str, empty: Any, card: Callable, terminal: Callable,
                 arrays: Callable, features: Callable, encode: Callable[[Any], bytes]) -> None:
        self.name, self.empty, self.card, self.terminal = name, empty, card, terminal
        self.arrays, self.features, self.encode = arrays, features, encode


def card_stage(frame, cards: np.ndarray, design: Design) -> tuple[dict, list]:  # noqa: ANN001
    rows = frame[frame["CUSTOMER_ID"].isin(cards)]
    seconds = (rows["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    states: dict[int, Any] = {}
    compute = encode = 0.0
    sizes, outputs = [], []
    clocks = time.perf_counter(), time.process_time()
    for t, tx, card, amount in zip(seconds, rows["TRANSACTION_ID"].to_numpy(),
                                   rows["CUSTOMER_ID"].to_numpy(),
                                   rows["TX_AMOUNT"].to_numpy(), strict=True):
        started = time.perf_counter()
        state, features = design.card(states.get(card, design.empty), float(t), float(amount),
                                      int(tx))
        middle = time.perf_counter()
        value = design.encode(state)
        encode += time.perf_counter() - middle
        compute += middle - started
        states[card] = state
        sizes.append(len(value))
        outputs.append(features)
    n = len(rows)
    return {"events": n, "compute_us": compute / n * 1e6, "encode_us": encode / n * 1e6,
            "state_bytes_mean": float(np.mean(sizes)),
            "state_bytes_p99": float(np.percentile(sizes, 99)),
            "cpu_share": cpu_share(*clocks)}, outputs


def terminal_stage(frame, terminals: np.ndarray, design: Design  # noqa: ANN001
                   ) -> tuple[dict, list]:
    rows = frame[frame["TERMINAL_ID"].isin(terminals)]
    seconds = (rows["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    states: dict[int, Any] = {}
    apply = encode = read = 0.0
    sizes, outputs = [], []
    clocks = time.perf_counter(), time.process_time()
    delay = LABEL_DELAY_DAYS * DAY
    ids, keys, frauds = (rows["TRANSACTION_ID"].to_numpy(), rows["TERMINAL_ID"].to_numpy(),
                         rows["TX_FRAUD"].to_numpy())
    for t, tx, terminal, fraud in zip(seconds, ids, keys, frauds, strict=True):
        # Scoring time: features of this transaction from the labels known by t, on the
        # arrays as the scoring worker reads them from Feast.
        arrays = [np.asarray(a, dtype=dtype) for a, dtype in zip(
            design.arrays(states.get(terminal, design.empty)),
            (np.float64, np.float64, np.int64), strict=True)]
        started = time.perf_counter()
        outputs.append(design.features(*arrays, float(t)))
        read += time.perf_counter() - started
        # Its label arrives a week later; applying labels in transaction order keeps
        # each terminal's state as large as the stream's.
        started = time.perf_counter()
        state = design.terminal(states.get(terminal, design.empty), int(tx), float(t),
                                int(fraud), float(t) + delay)
        middle = time.perf_counter()
        value = design.encode(state)
        encode += time.perf_counter() - middle
        apply += middle - started
        states[terminal] = state
        sizes.append(len(value))
    n = len(rows)
    return {"events": n, "apply_us": apply / n * 1e6, "encode_us": encode / n * 1e6,
            "features_us": read / n * 1e6, "state_bytes_mean": float(np.mean(sizes)),
            "state_bytes_p99": float(np.percentile(sizes, 99)),
            "cpu_share": cpu_share(*clocks)}, outputs


def cpu_share(wall: float, cpu: float) -> float:
    """The share of one core this process had since ``(wall, cpu)``: the timings are wall
    clock, so on a loaded machine they grow as this share falls."""
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def measure(frame, cards: np.ndarray, terminals: np.ndarray,  # noqa: ANN001
            design: Design) -> tuple[dict, list, list]:
    print(f"{design.name}: card stage on {len(cards)} cards ...", flush=True)
    card, card_outputs = card_stage(frame, cards, design)
    print(f"{design.name}: terminal stage on {len(terminals)} terminals ...", flush=True)
    terminal, terminal_outputs = terminal_stage(frame, terminals, design)
    card_us = card["compute_us"] + card["encode_us"]
    per_event = card_us + terminal["features_us"]
    summary = {
        "card_stage": card, "terminal_stage": terminal,
        "scoring_worker_feature_us_per_event": per_event,
        "feature_stage_events_per_s_one_core": 1e6 / per_event,
        "labels_worker_us_per_label": terminal["apply_us"] + terminal["encode_us"],
        # The same on a core of its own: the wall-clock figures times the share it had.
        "scoring_worker_feature_cpu_us_per_event": card_us * card["cpu_share"]
        + terminal["features_us"] * terminal["cpu_share"],
        "labels_worker_cpu_us_per_label": (terminal["apply_us"] + terminal["encode_us"])
        * terminal["cpu_share"],
    }
    return summary, card_outputs, terminal_outputs


def differences(got: list, want: list) -> dict[str, float]:
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return {"rows_differing": int((a != b).any(axis=1).sum()),
            "max_abs_difference": float(np.abs(a - b).max()) if a.size else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=500, help="cards sampled (of 5,000)")
    parser.add_argument("--terminals", type=int, default=1000,
                        help="terminals sampled (of 10,000)")
    parser.add_argument("--skip-before", action="store_true",
                        help="do not measure the previous design (lists and JSON)")
    args = parser.parse_args(argv)
    frame = handbook_frame().sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    rng = np.random.default_rng(0)
    cards = rng.choice(frame["CUSTOMER_ID"].unique(), args.cards, replace=False)
    terminals = rng.choice(frame["TERMINAL_ID"].unique(), args.terminals, replace=False)
    after, card_out, terminal_out = measure(frame, cards, terminals, BYTES)
    before = comparison = None
    if not args.skip_before:
        before, card_before, terminal_before = measure(frame, cards, terminals, LISTS)
        comparison = {"card_features": differences(card_out, card_before),
                      "terminal_features": differences(terminal_out, terminal_before)}
    stream = None
    parity = RESULTS / "stream_parity.json"
    if parity.exists():
        summary = json.loads(parity.read_text())["summary"]
        stream = {"events_per_s": summary["events_per_s"],
                  "stage_seconds": summary.get("stage_seconds")}
    report = {
        "benchmark": "feature_stage",
        "command": " ".join(["python -m bench.feature_stage",
                             *(argv if argv is not None else sys.argv[1:])]),
        **after,
        "before": before,
        "before_design": "lists scanned in Python, states encoded as JSON",
        "features_after_vs_before": comparison,
        "stream": stream,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load": os.getloadavg()[0]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_stage.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(after, before)
    if comparison:
        print(f"\nfeatures, new against previous design: {comparison}")
    if stream:
        print(f"the stream end to end (strict replay, features + scoring): "
              f"{stream['events_per_s']:,.0f} events/s")
    mismatched = comparison and any(c["rows_differing"] for c in comparison.values())
    return 1 if mismatched else 0


def print_table(after: dict, before: dict | None) -> None:
    def cell(key: str, stage: str, fmt: str = "{:.1f}") -> str:
        now = fmt.format(after[stage][key])
        return f"{fmt.format(before[stage][key])} | {now}" if before else now

    card, terminal = after["card_stage"], after["terminal_stage"]
    head = "before | after" if before else "after"
    print(f"\n| stage | us / event ({head}) | state bytes, mean ({head}) |\n|---|---|---|")
    print(f"| card windows and ratios ({card['events']:,} tx) | "
          f"{cell('compute_us', 'card_stage')} | "
          f"{cell('state_bytes_mean', 'card_stage', '{:,.0f}')} |")
    print(f"| card state encoding | {cell('encode_us', 'card_stage')} | |")
    print(f"| terminal features at scoring ({terminal['events']:,} tx) | "
          f"{cell('features_us', 'terminal_stage')} | |")
    print(f"| apply a label | {cell('apply_us', 'terminal_stage')} | "
          f"{cell('state_bytes_mean', 'terminal_stage', '{:,.0f}')} |")
    print(f"| terminal state encoding | {cell('encode_us', 'terminal_stage')} | |")
    for name, result in (("before", before), ("after", after)):
        if result:
            shares = (result["card_stage"]["cpu_share"], result["terminal_stage"]["cpu_share"])
            print(f"\nfeature stage alone, {name}: "
                  f"{result['feature_stage_events_per_s_one_core']:,.0f} events/s on one core "
                  f"({result['scoring_worker_feature_us_per_event']:.0f} us/event); "
                  f"labels: {result['labels_worker_us_per_label']:.0f} us/label "
                  f"(share of a core: {shares[0]:.0%} card stage, {shares[1]:.0%} terminal; "
                  f"on a core of its own about "
                  f"{result['scoring_worker_feature_cpu_us_per_event']:.0f} us/event and "
                  f"{result['labels_worker_cpu_us_per_label']:.0f} us/label)")


# The previous design, kept as the reference "before": lists scanned in Python.

def _list_card(history: list, event_time: float, amount: float, tx_id: int = -1
               ) -> tuple[list, list[float]]:
    position = -1
    if tx_id >= 0:
        for i in range(len(history) - 1, -1, -1):
            if history[i][2] == tx_id:
                position = i
                break
    if position >= 0:
        visible, kept = history[: position + 1], history
    else:
        kept = [entry for entry in history if entry[0] > event_time - CARD_RETENTION_S]
        kept.append([event_time, amount, tx_id])
        visible = kept
    features: list[float] = []
    for window in (1, 7, 30):
        amounts = [entry[1] for entry in visible if entry[0] > event_time - window * DAY]
        features += [float(len(amounts)), sum(amounts) / len(amounts)]
    in_mean = [entry[1] for entry in visible if entry[0] > event_time - 90 * DAY]
    mean = sum(round(a * 100) for a in in_mean) / len(in_mean) / 100
    safe_mean = mean if mean > 0 else 1.0
    earlier = [entry[1] for entry in visible[:-1] if entry[0] > event_time - 14 * DAY]
    features += [amount / safe_mean if mean > 0 else 1.0,
                 (max(earlier) if earlier else 0.0) / safe_mean]
    return kept, features


def _list_terminal(history: list, tx_id: int, event_time: float, is_fraud: int,
                   known_at: float) -> list:
    if any(entry[3] == tx_id for entry in history):
        return history
    kept = [entry for entry in history if entry[1] > known_at - TERMINAL_RETENTION_S]
    kept.append([event_time, known_at, float(is_fraud), int(tx_id)])
    kept.sort(key=lambda entry: (entry[0], entry[3]))
    return kept


def _list_arrays(history: list) -> tuple[list, list, list]:
    return [e[0] for e in history], [e[1] for e in history], [int(e[2]) for e in history]


def _mask_features(event_times: np.ndarray, known_at: np.ndarray, frauds: np.ndarray,
                   t: float) -> list[float]:
    end = t - LABEL_DELAY_DAYS * DAY
    known = (known_at <= t) & (event_times <= end)
    features: list[float] = []
    for window in (1, 7, 30):
        mask = known & (event_times > end - window * DAY)
        count = int(mask.sum())
        features += [float(count), float(frauds[mask].sum()) / count if count else 0.0]
    today = int(t // DAY)
    positions = np.flatnonzero(known)
    genuine = positions[frauds[positions] == 0]
    last_genuine = int(genuine[-1]) if len(genuine) else -1
    run_rows = positions[positions > last_genuine]
    run = len(run_rows)
    run_days = (min(today - int(float(event_times[run_rows[0]]) // DAY), HORIZON_DAYS)
                if run else 0)
    since = (min(today - int(float(event_times[last_genuine]) // DAY), HORIZON_DAYS)
             if last_genuine >= 0 else HORIZON_DAYS)
    return [*features, float(run), float(run_days), float(since)]


LISTS = Design("before", [], _list_card, _list_terminal, _list_arrays, _mask_features,
               lambda state: codecs.dumps("json", state))
BYTES = Design("after", b"", update_card_history, update_terminal_history, terminal_arrays,
               terminal_window_features, lambda state: codecs.dumps("raw", state))


if __name__ == "__main__":
    raise SystemExit(main())

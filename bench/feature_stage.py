"""Benchmark: the feature stage alone, per event, outside Kafka and Faust.

    python -m bench.feature_stage [--cards 500] [--terminals 1000]

On the handbook's full dataset (183 days, 5,000 cards, 10,000 terminals; simulated once
and cached under ``.factory/cache/``), every transaction of a sample of cards goes
through the scoring worker's card stage, and every label of a sample of terminals
through the labels worker's terminal stage, in event-time order with each card's and
terminal's full history (a sample of keys keeps each key's state as large as in the
full stream). Measured per event, in microseconds:

* card stage: ``update_card_history`` (windows of 1, 7, 30 days, the 90-day mean ratio,
  the 14-day largest amount) and the JSON encoding of the new state, which is what a
  changelog-backed table write serialises;
* terminal stage: ``update_terminal_history`` and the JSON encoding of its state;
* terminal features at scoring time: ``terminal_window_features`` on the label arrays.

The stream's own figure (features and scoring together, strict replay) comes from
``bench/results/stream_parity.json`` when it exists. Writes
``bench/results/feature_stage.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from bench.model_quality import handbook_frame
from streams.features import (
    DAY,
    LABEL_DELAY_DAYS,
    terminal_arrays,
    terminal_window_features,
    update_card_history,
    update_terminal_history,
)
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def card_stage(frame, cards: np.ndarray) -> dict[str, float]:  # noqa: ANN001
    rows = frame[frame["CUSTOMER_ID"].isin(cards)]
    seconds = (rows["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    histories: dict[int, list[list[float]]] = {}
    compute = encode = 0.0
    sizes = []
    for t, tx, card, amount in zip(seconds, rows["TRANSACTION_ID"].to_numpy(),
                                   rows["CUSTOMER_ID"].to_numpy(),
                                   rows["TX_AMOUNT"].to_numpy(), strict=True):
        started = time.perf_counter()
        history, _ = update_card_history(histories.get(card, []), float(t), float(amount),
                                         int(tx))
        middle = time.perf_counter()
        value = json.dumps(history)
        encode += time.perf_counter() - middle
        compute += middle - started
        histories[card] = history
        sizes.append(len(value))
    n = len(rows)
    return {"events": n, "compute_us": compute / n * 1e6, "encode_us": encode / n * 1e6,
            "state_bytes_mean": float(np.mean(sizes)),
            "state_bytes_p99": float(np.percentile(sizes, 99))}


def terminal_stage(frame, terminals: np.ndarray) -> dict[str, float]:  # noqa: ANN001
    rows = frame[frame["TERMINAL_ID"].isin(terminals)]
    seconds = (rows["TX_DATETIME"].astype("int64") // 10**9).to_numpy(float)
    histories: dict[int, list[list[float]]] = {}
    apply = encode = read = 0.0
    sizes = []
    delay = LABEL_DELAY_DAYS * DAY
    ids, keys, frauds = (rows["TRANSACTION_ID"].to_numpy(), rows["TERMINAL_ID"].to_numpy(),
                         rows["TX_FRAUD"].to_numpy())
    for t, tx, terminal, fraud in zip(seconds, ids, keys, frauds, strict=True):
        # Scoring time: features of this transaction from the labels known by t.
        arrays = [np.asarray(a, dtype=float)
                  for a in terminal_arrays(histories.get(terminal, []))]
        started = time.perf_counter()
        terminal_window_features(*arrays, float(t))
        read += time.perf_counter() - started
        # Its label arrives a week later; applying labels in transaction order keeps
        # each terminal's state as large as the stream's.
        started = time.perf_counter()
        history = update_terminal_history(histories.get(terminal, []), int(tx), float(t),
                                          int(fraud), float(t) + delay)
        middle = time.perf_counter()
        value = json.dumps(history)
        encode += time.perf_counter() - middle
        apply += middle - started
        histories[terminal] = history
        sizes.append(len(value))
    n = len(rows)
    return {"events": n, "apply_us": apply / n * 1e6, "encode_us": encode / n * 1e6,
            "features_us": read / n * 1e6, "state_bytes_mean": float(np.mean(sizes)),
            "state_bytes_p99": float(np.percentile(sizes, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", type=int, default=500, help="cards sampled (of 5,000)")
    parser.add_argument("--terminals", type=int, default=1000,
                        help="terminals sampled (of 10,000)")
    args = parser.parse_args(argv)
    frame = handbook_frame().sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    rng = np.random.default_rng(0)
    cards = rng.choice(frame["CUSTOMER_ID"].unique(), args.cards, replace=False)
    terminals = rng.choice(frame["TERMINAL_ID"].unique(), args.terminals, replace=False)
    print(f"card stage on {args.cards} cards ...", flush=True)
    card = card_stage(frame, cards)
    print(f"terminal stage on {args.terminals} terminals ...", flush=True)
    terminal = terminal_stage(frame, terminals)
    per_event = card["compute_us"] + card["encode_us"] + terminal["features_us"]
    stream = None
    parity = RESULTS / "stream_parity.json"
    if parity.exists():
        summary = json.loads(parity.read_text())["summary"]
        stream = {"events_per_s": summary["events_per_s"],
                  "stage_seconds": summary.get("stage_seconds")}
    report = {
        "benchmark": "feature_stage",
        "command": "python -m bench.feature_stage " + " ".join(argv or []),
        "card_stage": card, "terminal_stage": terminal,
        "scoring_worker_feature_us_per_event": per_event,
        "feature_stage_events_per_s_one_core": 1e6 / per_event,
        "labels_worker_us_per_label": terminal["apply_us"] + terminal["encode_us"],
        "stream": stream,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load": os.getloadavg()[0]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_stage.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n| stage | us / event | state JSON bytes (mean / p99) |\n|---|---|---|")
    print(f"| card windows and ratios ({card['events']:,} tx) | {card['compute_us']:.1f} | "
          f"{card['state_bytes_mean']:,.0f} / {card['state_bytes_p99']:,.0f} |")
    print(f"| card state JSON encoding | {card['encode_us']:.1f} | |")
    print(f"| terminal features at scoring ({terminal['events']:,} tx) | "
          f"{terminal['features_us']:.1f} | |")
    print(f"| apply a label | {terminal['apply_us']:.1f} | "
          f"{terminal['state_bytes_mean']:,.0f} / {terminal['state_bytes_p99']:,.0f} |")
    print(f"| terminal state JSON encoding | {terminal['encode_us']:.1f} | |")
    print(f"\nfeature stage alone: {1e6 / per_event:,.0f} events/s on one core "
          f"({per_event:.0f} us/event)")
    if stream:
        print(f"the stream end to end (strict replay, features + scoring): "
              f"{stream['events_per_s']:,.0f} events/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

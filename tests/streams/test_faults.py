"""The small fault run (``python -m bench.faults --quick``): under a steady load with
malformed events mixed in, each worker killed with ``kill -9``, the broker killed and
restarted, Triton restarted bare, Redis restarted empty and Alertmanager stopped, one at
a time; every fault recovers by itself, no valid event is lost, every feature equals the
batch reference and every bad event is dead-lettered with its reason (again, counted, when a killed
worker handles its batch again)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_every_fault_recovers_by_itself_losing_nothing_and_each_bad_event_is_one_dead_letter(
    tmp_path: Path,
) -> None:
    from bench.faults import QUICK, run, table

    report = run(QUICK, tmp_path)
    print(table(report))
    assert not report["replay_errors"] and not report["injection_errors"], report
    kinds = {f["fault"].split(" (")[0] for f in report["faults"]}
    assert kinds == {"scoring worker kill -9", "labels worker kill -9",
                     "Kafka broker kill -9, restart", "Triton restart",
                     "Redis restart, empty", "Alertmanager down"}, report["faults"]
    assert all(f["recovery_s"] is not None for f in report["faults"]), table(report)
    assert report["lost"] == 0, table(report)
    assert report["feature_rows_differing_from_batch_reference"] == 0
    assert report["feature_rows_distinct"] == report["valid_events"] - report[
        "valid_events_with_unknown_fields"], "a replayed transaction is not in the feature log"
    assert report["valid_events_with_unknown_fields"] > 0
    assert report["bad_events"] > 100
    assert set(report["bad_by_reason"]) == {
        "not_json", "wrong_type", "invalid_value", "unknown_schema_version",
        "payload_too_large", "key_mismatch"}
    assert report["bad_events_missing_from_dlq"] == 0
    # Dead-lettered again when a killed worker handles its batch again: counted.
    print(f"{report['bad_events_dead_lettered_more_than_once']} bad events dead-lettered "
          f"twice, {report['duplicates']} duplicate scores")
    assert report["dead_letters_with_a_wrong_reason"] == 0
    assert report["dead_letters_not_injected"] == 0

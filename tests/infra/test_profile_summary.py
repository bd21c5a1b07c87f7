"""The benchmark profile summary attributes samples to areas and project stages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.profile import module_of, read_stacks, summarise

SITE = "/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


def test_module_of_names_project_modules_libraries_and_the_standard_library() -> None:
    assert module_of("/src/models/checkout/streams/dataplane/pipeline.py") == \
        "streams.dataplane.pipeline"
    assert module_of(f"{SITE}/aiokafka/producer/producer.py") == "aiokafka"
    assert module_of(f"{STDLIB}/asyncio/base_events.py") == "asyncio"


def test_summarise_shares_by_leaf_area_and_innermost_project_frame(tmp_path: Path) -> None:
    worker = "main (/src/streams/dataplane/worker.py:10)"
    process = "ScoringPipeline.process (/src/streams/dataplane/pipeline.py:120)"
    features = "update_card_history (/src/streams/dataplane/features.py:50)"
    send = f"AIOKafkaProducer.send ({SITE}/aiokafka/producer/producer.py:300)"
    loop = f"BaseEventLoop._run_once ({STDLIB}/asyncio/base_events.py:1900)"
    raw = tmp_path / "stacks.txt"
    raw.write_text("\n".join([
        f"{worker};{process};{features} 6",
        f"{worker};{process};{send} 3",
        f"{worker};{loop} 1",
        "garbage line without a count",
    ]) + "\n")
    stacks = read_stacks(raw)
    assert sum(stacks.values()) == 10
    summary = summarise(stacks)
    areas = {row["name"]: row["share"] for row in summary["by_area"]}
    stages = {row["name"]: row["share"] for row in summary["by_stage"]}
    assert areas == {"streams.dataplane.features": 0.6, "aiokafka": 0.3, "asyncio": 0.1}
    assert stages == {"streams.dataplane.features:update_card_history": 0.6,
                      "streams.dataplane.pipeline:ScoringPipeline.process": 0.3,
                      "streams.dataplane.worker:main": 0.1}
    assert summary["top_functions"][0] == {"name": "streams.dataplane.features:update_card_history",
                                           "share": 0.6, "samples": 6}
    assert summarise(Counter())["samples"] == 0

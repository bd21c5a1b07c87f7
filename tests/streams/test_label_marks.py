"""A labels worker's watermark marks when several share the group: a worker forgets the
marks of the partitions it is assigned (before it advances any of them again) and never
those of the partitions another worker owns. No service: the watermark is recorded."""

from __future__ import annotations

import numpy as np

from streams.dataplane.features import TERMINAL_DTYPE
from streams.dataplane.labels import LabelPipeline
from streams.dataplane.metrics import WorkerMetrics


class RecordedWatermark:
    """The calls a labels pipeline makes on the group's Redis hash of marks."""

    def __init__(self, marks: dict[int, float]) -> None:
        self.marks = dict(marks)
        self.calls: list[str] = []

    def reset(self) -> None:
        self.calls.append("reset")
        self.marks.clear()

    def forget(self, partitions: list[int]) -> None:
        self.calls.append(f"forget {partitions}")
        for p in partitions:
            self.marks.pop(p, None)

    def advance(self, partition: int, known_at: float) -> None:
        self.calls.append(f"advance {partition}")
        self.marks[partition] = max(self.marks.get(partition, -np.inf), known_at)


def terminal_state(known_at: float) -> bytes:
    state = np.zeros(1, dtype=TERMINAL_DTYPE)
    state["known_at"] = known_at
    return state.tobytes()


def pipeline_with(watermark: RecordedWatermark | None) -> LabelPipeline:
    pipeline = LabelPipeline(None, WorkerMetrics(), None, None)  # type: ignore[arg-type]
    pipeline.watermark = watermark  # type: ignore[assignment]
    return pipeline


def test_an_assigned_partition_s_mark_is_forgotten_before_it_is_advanced_and_no_other() -> None:
    # Another worker of the group owns 2 and 3: their marks stay.
    watermark = RecordedWatermark({0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0})
    pipeline = pipeline_with(watermark)
    pipeline.assigned([0, 1])
    assert watermark.marks == {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0}, \
        "nothing is written in the rebalance callback itself"
    pipeline.caught_up(0, {7: terminal_state(50.0)})
    assert watermark.calls == ["forget [0, 1]", "advance 0"]
    # 0 is marked at what its state holds now (50, not the old 100); 1 waits for its
    # owner to catch up; the other worker's partitions keep their marks.
    assert watermark.marks == {0: 50.0, 2: 100.0, 3: 100.0}
    pipeline.caught_up(1, {8: terminal_state(60.0)})
    assert watermark.calls == ["forget [0, 1]", "advance 0", "advance 1"], \
        "forgotten once an assignment"


def test_partitions_assigned_before_the_worker_started_are_forgotten_at_its_start() -> None:
    pipeline = pipeline_with(None)
    pipeline.assigned([3])
    watermark = RecordedWatermark({3: 10.0, 4: 10.0})
    pipeline.watermark = watermark  # type: ignore[assignment]
    pipeline._forget_marks()
    assert watermark.marks == {4: 10.0}
    assert watermark.calls == ["forget [3]"]

"""The model registry: entries, lineage, champion history, allocation under concurrency."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.model_version import ModelVersion, Window
from models.registry import Registry, UnknownVersionError


def entry(version: int, parent: int | None = None, **changes: object) -> ModelVersion:
    window = Window("2018-05-01T00:00:00", "2018-06-05T00:00:00", 1000, 40)
    return ModelVersion(version=version, parent=parent, trigger="schedule", window=window,
                        metrics={"auc_roc": 0.9, "average_precision": 0.7,
                                 "card_precision_at_k": 0.25}, **changes)  # type: ignore[arg-type]


def test_record_get_list_round_trip(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.list() == [] and registry.champion() is None
    registry.record(entry(1, features=["TX_AMOUNT"]))
    registry.record(entry(2, parent=1))
    assert [v.version for v in registry.list()] == [1, 2]
    got = registry.get(1)
    assert got == entry(1, features=["TX_AMOUNT"], created_at=got.created_at)
    assert got.window == Window("2018-05-01T00:00:00", "2018-06-05T00:00:00", 1000, 40)
    assert json.loads((tmp_path / "versions" / "2.json").read_text())["parent"] == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_version_is_never_recorded_twice(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.record(entry(1))
    with pytest.raises(FileExistsError, match="already recorded"):
        registry.record(entry(1))


def test_unknown_versions_fail_with_a_clear_message(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.record(entry(1))
    with pytest.raises(UnknownVersionError) as caught:
        registry.get(7)
    assert str(caught.value).startswith("model version 7 is not in the registry")
    assert "known: [1]" in str(caught.value)
    assert isinstance(caught.value, KeyError)
    for call in (lambda: registry.update_status(7, "rejected"),
                 lambda: registry.set_champion(7, "why"), lambda: registry.lineage(7)):
        with pytest.raises(KeyError, match="model version 7"):
            call()


def test_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trigger"):
        ModelVersion(version=1, trigger="whim")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        ModelVersion(version=0)
    registry = Registry(tmp_path)
    registry.record(entry(1))
    with pytest.raises(ValueError, match="status"):
        registry.update_status(1, "great")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set_champion"):
        registry.update_status(1, "champion")
    with pytest.raises(ValueError, match="set_champion"):
        registry.record(entry(2, status="champion"))


def test_lineage_follows_parents(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.record(entry(1))
    registry.record(entry(2, parent=1))
    registry.record(entry(3, parent=2))
    registry.record(entry(4, parent=9))  # a parent never recorded ends the chain
    assert [v.version for v in registry.lineage(3)] == [3, 2, 1]
    assert [v.version for v in registry.lineage(1)] == [1]
    assert [v.version for v in registry.lineage(4)] == [4]


def test_champion_changes_keep_their_history(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for n in (1, 2, 3):
        registry.record(entry(n, parent=n - 1 or None))
    registry.set_champion(1, "first model")
    registry.set_champion(2, "passed the gate")
    assert registry.champion() == 2
    assert registry.get(1).status == "retired"
    assert registry.get(1).reason == "replaced by 2: passed the gate"
    registry.set_champion(1, "v2 degraded live", previous_status="rolled_back")
    assert registry.get(2).status == "rolled_back" and registry.get(1).status == "champion"
    registry.set_champion(1, "again")  # no change, no history entry
    history = registry.champion_history()
    assert [(h["version"], h["reason"]) for h in history] == [
        (1, "first model"), (2, "passed the gate"), (1, "v2 degraded live")]
    assert all(h["since"].endswith("+00:00") for h in history)
    registry.update_status(3, "rejected", "AP below the champion's")
    assert (registry.get(3).status, registry.get(3).reason) == (
        "rejected", "AP below the champion's")
    with pytest.raises(ValueError, match="is the champion"):
        registry.update_status(1, "retired")


def fake_triton(root: Path, versions: list[str]) -> Path:
    model_dir = root / "triton" / "fraud_detector"
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text('name: "fraud_detector"\n')
    for name in versions:
        (model_dir / name).mkdir()
    return root / "triton"


def test_next_version_counts_triton_dirs_and_sync_records_them(tmp_path: Path) -> None:
    repo = fake_triton(tmp_path, ["1", "3", ".publish-4-x", "notes"])
    registry = Registry(tmp_path / "registry", repo_dir=repo)
    registry.record(entry(2))
    assert registry.next_version() == 4
    assert Registry(tmp_path / "registry").next_version() == 3  # without the repository
    assert registry.sync() == [1, 3]
    assert registry.sync() == []
    found = registry.get(3)
    assert (found.trigger, found.parent, found.window) == ("manual", None, None)
    assert found.reason.startswith("unknown lineage")
    assert registry.get(2).trigger == "schedule"  # existing entries untouched


def test_sync_leaves_reserved_versions_to_their_trainer(tmp_path: Path) -> None:
    repo = fake_triton(tmp_path, ["1"])
    registry = Registry(tmp_path / "registry", repo_dir=repo)
    version = registry.reserve()
    assert version == 2 and registry.next_version() == 3
    (repo / "fraud_detector" / "2").mkdir()  # published, not yet recorded
    assert registry.sync() == [1]
    registry.record(entry(2))
    assert registry.next_version() == 3
    registry.release(registry.reserve())
    assert registry.next_version() == 3


def test_threads_reserve_distinct_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda _: Registry(tmp_path).reserve(), range(40)))
    assert sorted(versions) == list(range(1, 41))
    assert registry.next_version() == 41


def _reserve_many(root: str, count: int, queue: multiprocessing.Queue) -> None:
    registry = Registry(Path(root))
    queue.put([registry.reserve() for _ in range(count)])


def test_processes_reserve_distinct_versions(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_reserve_many, args=(str(tmp_path), 15, queue))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    versions = [v for _ in workers for v in queue.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(versions) == list(range(1, 46))


def test_gate_records_with_numpy_values_are_written_as_plain_json(tmp_path: Path) -> None:
    import numpy as np

    registry = Registry(tmp_path)
    registry.record(ModelVersion(1, trigger="initial"))
    registry.record_gate(1, {"passed": np.bool_(True), "checks": {"calibration": np.bool_(False)},
                             "ece": np.float32(0.25), "rows": np.int64(7)})
    gate = json.loads((tmp_path / "versions" / "1.json").read_text())["gate"]
    assert gate == {"passed": True, "checks": {"calibration": False}, "ece": 0.25, "rows": 7}
    assert registry.get(1).gate == gate

"""Training a version end to end: windows, publishing, registry entry, lineage, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.extra_features import EXTRA_FEATURE_COLUMNS, SERVING_NAMES
from models.feature_log import frame_from_feature_log, recent_rows
from models.recipe import DEFAULT_RECIPE, Recipe, predict
from models.reference_features import FEATURE_COLUMNS
from models.reference_profile import Histogram, ReferenceProfile
from models.registry import Registry, UnknownVersionError
from models.trainer import (
    frame_from_simulator,
    load_weights,
    split_windows,
    train_version,
    weights_path,
)
from models.triton_config import ConfigError
from streams.dataplane.feature_log import FeatureLog
from streams.jobs.cli import main

FAST = Recipe(train_weeks=3, hidden=(16,), n_bins=4, n_members=1, max_epochs=3, patience=2)
END = "2018-05-31"

CONFIG = """name: "fraud_detector"
backend: "python"
max_batch_size: 4096
input [ {{ name: "features" data_type: TYPE_FP32 dims: [ {n} ] }} ]
output [ {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }} ]
version_policy: {{ all {{ }} }}
"""


def triton_repo(root: Path, n_features: int) -> Path:
    """A Triton repository whose config takes rows of ``n_features``."""
    model_dir = root / "fraud_detector"
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG.format(n=n_features))
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return frame_from_simulator(customers=200, terminals=400, days=60)


def test_windows_end_where_asked(frame: pd.DataFrame) -> None:
    train, valid, train_window, valid_window = split_windows(frame, recipe=FAST, end=END)
    assert (train_window.start, train_window.end) == ("2018-05-03T00:00:00", "2018-05-24T00:00:00")
    assert (valid_window.start, valid_window.end) == ("2018-05-24T00:00:00", "2018-05-31T00:00:00")
    assert train["TX_DATETIME"].min() >= pd.Timestamp("2018-05-03")
    assert valid["TX_DATETIME"].max() < pd.Timestamp("2018-05-31")
    assert (train_window.rows, train_window.frauds) == (len(train), train["TX_FRAUD"].sum())
    _, _, _, default = split_windows(frame, recipe=FAST)
    assert default.end == "2018-05-31T00:00:00"  # midnight after the last day (day 59)
    with pytest.raises(ValueError, match="needs both frauds and genuine"):
        split_windows(frame, recipe=FAST, end="2019-01-01")
    with pytest.raises(ValueError, match="lacks the columns"):
        split_windows(frame.drop(columns=["CUSTOMER_ID"]), recipe=FAST)


def test_train_publish_record_and_warm_start(frame: pd.DataFrame, tmp_path: Path) -> None:
    repo = triton_repo(tmp_path / "triton", len(FAST.features))
    registry = Registry(tmp_path / "registry")
    first = train_version(frame, registry=registry, repo_dir=repo, trigger="initial",
                          recipe=FAST, end=END, device="cpu")
    assert first.version == 1 and first.parent is None and first.status == "candidate"
    assert sorted(p.name for p in (repo / "fraud_detector" / "1").iterdir()) == [
        "model.onnx", "model.py"]
    assert registry.get(1) == first
    assert first.window is not None and first.window.end == "2018-05-24T00:00:00"
    assert first.metrics["window"]["end"] == "2018-05-31T00:00:00"
    for name in ("auc_roc", "average_precision", "card_precision_at_k"):
        assert 0.0 <= first.metrics[name] <= 1.0
    assert first.features == list(FAST.features) and first.recipe["n_members"] == 1
    assert first.train_seconds > 0 and not first.warm_start
    # The drift monitors' reference: the training rows' histograms, under log names.
    profile = ReferenceProfile.from_json(registry.profile_path(1).read_text())
    assert list(profile.feature_names) == [SERVING_NAMES[c] for c in FAST.features]
    assert len(profile.features) == len(FAST.features)
    assert abs(float(np.sum(profile.score.proportions)) - 1.0) < 1e-6

    # The score's reference is the validation rows unless other unseen rows are given:
    # here the week after the validation window.
    unseen = frame[frame["TX_DATETIME"] >= pd.Timestamp(END) - pd.Timedelta(days=7)]
    second = train_version(frame, registry=registry, repo_dir=repo, trigger="drift", parent=1,
                           recipe=FAST, end="2018-05-24", device="cpu", warm_start=True,
                           score_reference=unseen)
    assert (second.version, second.parent, second.trigger) == (2, 1, "drift")
    assert second.warm_start
    assert [v.version for v in registry.lineage(2)] == [2, 1]
    assert (tmp_path / "registry" / "weights" / "2.pt").exists()
    model = load_weights(weights_path(registry, 2))[0]
    score = ReferenceProfile.from_json(registry.profile_path(2).read_text()).score
    assert score is not None
    expected = Histogram.from_values(predict(model, unseen, FAST))
    np.testing.assert_allclose(score.inner_edges, expected.inner_edges, rtol=1e-6)
    np.testing.assert_allclose(score.proportions, expected.proportions)


def test_failures_come_before_training_and_leave_nothing(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    repo = triton_repo(tmp_path / "triton", 15)
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ConfigError, match=f"takes rows of \\[15\\] features but the recipe "
                                          f"has {len(FAST.features)}"):
        train_version(frame, registry=registry, repo_dir=repo, trigger="manual", recipe=FAST)
    good = triton_repo(tmp_path / "good", len(FAST.features))
    with pytest.raises(UnknownVersionError, match="model version 4"):
        train_version(frame, registry=registry, repo_dir=good, trigger="manual", parent=4,
                      recipe=FAST)
    with pytest.raises(ValueError, match="warm_start needs a parent"):
        train_version(frame, registry=registry, repo_dir=good, trigger="manual",
                      warm_start=True, recipe=FAST)
    assert registry.list() == [] and registry.next_version(good) == 1
    assert sorted(p.name for p in (good / "fraud_detector").iterdir()) == ["config.pbtxt"]


def log_name(column: str) -> str:
    """The stream's name of a model column: view-prefixed, or lowercase for the extras."""
    if column in EXTRA_FEATURE_COLUMNS:
        return column.lower()
    if column.startswith("TX_"):
        return column.lower()
    view, rest = (("card_activity", column[len("CUSTOMER_ID_"):])
                  if column.startswith("CUSTOMER_ID_")
                  else ("terminal_risk", column[len("TERMINAL_ID_"):]))
    return f"{view}__{rest.removesuffix('_WINDOW').lower()}"


def write_log(frame: pd.DataFrame, root: Path, columns: list[str]) -> pd.DataFrame:
    event_time = (frame["TX_DATETIME"].astype("int64") // 10**9).to_numpy()
    ids = {"tx_id": frame["TRANSACTION_ID"].to_numpy(), "event_time": event_time,
           "card_id": frame["CUSTOMER_ID"].to_numpy(),
           "terminal_id": frame["TERMINAL_ID"].to_numpy()}
    log = FeatureLog(root, [log_name(c) for c in columns])
    log.write(ids, frame[columns].to_numpy(np.float64), np.zeros(len(frame)), model_version=1)
    return pd.DataFrame({"tx_id": ids["tx_id"], "is_fraud": frame["TX_FRAUD"].to_numpy(),
                         "known_at": event_time + 7 * 86400})


def test_frame_from_feature_log(frame: pd.DataFrame, tmp_path: Path) -> None:
    features = list(DEFAULT_RECIPE.features)
    labels = write_log(frame, tmp_path / "log", features)
    labels.to_parquet(tmp_path / "labels.parquet")
    logged = frame_from_feature_log(tmp_path / "log", tmp_path / "labels.parquet")
    last = frame["TX_DATETIME"].max()
    expected = frame[frame["TX_DATETIME"] <= last - pd.Timedelta(days=7)]
    assert logged["TRANSACTION_ID"].tolist() == expected["TRANSACTION_ID"].tolist()
    np.testing.assert_array_equal(logged[features].to_numpy(), expected[features].to_numpy())
    np.testing.assert_array_equal(logged["TX_FRAUD"], expected["TX_FRAUD"])
    assert (logged["TX_DATETIME"].to_numpy() == expected["TX_DATETIME"].to_numpy()).all()
    split_windows(logged)  # every column train_version needs

    # The score's reference rows: every logged row from a time on, labelled or not.
    since = (last - pd.Timedelta(days=5)).timestamp()
    recent = recent_rows(tmp_path / "log", since)
    later = frame[frame["TX_DATETIME"] >= last - pd.Timedelta(days=5)]
    assert len(recent) == len(later) and list(recent.columns) == features
    np.testing.assert_array_equal(recent.to_numpy(), later[features].to_numpy())
    assert recent_rows(tmp_path / "log", last.timestamp() + 86400).empty

    write_log(frame, tmp_path / "old", list(FEATURE_COLUMNS))
    with pytest.raises(ValueError, match="lacks the recipe's features") as caught:
        frame_from_feature_log(tmp_path / "old", labels)
    assert str(EXTRA_FEATURE_COLUMNS) in str(caught.value)
    with pytest.raises(ValueError, match="no feature log parts"):
        frame_from_feature_log(tmp_path / "none", labels)


def test_cli_train_list_show_promote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = triton_repo(tmp_path / "triton", len(DEFAULT_RECIPE.features))
    (repo / "fraud_detector" / "1").mkdir()  # published before the registry existed
    monkeypatch.setenv("FACTORY_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("FACTORY_STATE_DIR", str(tmp_path / "state"))  # no services
    small = ["--customers", "100", "--terminals", "200", "--days", "45", "--device", "cpu"]
    assert main(["model", "train", "--repo", str(repo), *small, "--promote"]) == 0
    out, err = capsys.readouterr()
    assert "recorded version 1 found in" in err
    assert "version 2 (parent None)" in out and "version 2 is the champion" in out
    assert (repo / "fraud_detector" / "2" / "model.onnx").exists()

    assert main(["model", "list", "--repo", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "status", "parent", "trigger", "window", "AP",
                                "CP@100", "created"]
    assert lines[1].split()[:5] == ["1", "candidate", "-", "manual", "-"]
    row = lines[2].split()
    assert row[:4] == ["2", "champion", "-", "manual"] and row[4].endswith("..2018-05-09")
    assert 0 <= float(row[5]) <= 1 and 0 <= float(row[6]) <= 1

    assert main(["model", "promote", "1", "--repo", str(repo), "--registry-only",
                 "--reason", "roll back"]) == 0
    assert "version 1 is the champion (was 2)" in capsys.readouterr().out
    assert main(["model", "show", "2", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out[: out.rindex("}") + 1])
    assert (shown["version"], shown["status"]) == (2, "retired")
    assert out.rstrip().endswith("lineage: 2")
    assert main(["model", "show", "9", "--repo", str(repo)]) == 2
    assert "model version 9 is not in the registry" in capsys.readouterr().err

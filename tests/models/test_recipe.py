from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from models.binned_mlp import BinnedMLP, FraudEnsemble
from models.export import export_onnx
from models.extra_features import MODEL_FEATURE_COLUMNS, add_model_features
from models.recipe import WEIGHT_COLUMN, Recipe, fit_fraud_model, match_prior, predict
from models.recipe_quality import training_window
from models.simulator import simulate

FAST = Recipe(
    train_weeks=2, hidden=(32, 16), n_members=2, batch_size=256, max_epochs=20, patience=3
)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """400 customers, 3000 terminals, 60 days, with every model feature."""
    torch.set_num_threads(2)
    return add_model_features(simulate(n_customers=400, n_terminals=3000, nb_days=60))


@pytest.fixture(scope="module")
def split(small: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train weeks 4-5, validation week 6, test days 49-55 after a one-week delay."""
    train, valid = training_window(small, 35, FAST)
    days = small["TX_TIME_DAYS"]
    return train, valid, small[(days >= 49) & (days < 56)]


def test_training_window_precedes_the_validation_week(small: pd.DataFrame) -> None:
    train, valid = training_window(small, 35, FAST)
    assert train["TX_TIME_DAYS"].between(21, 34).all()
    assert valid["TX_TIME_DAYS"].between(35, 41).all()
    assert len(train) and len(valid)


@pytest.fixture(scope="module")
def model(split: tuple[pd.DataFrame, ...]) -> FraudEnsemble:
    train, valid, _ = split
    return fit_fraud_model(train, valid, seed=7, device="cpu", recipe=FAST)


def test_same_seed_same_model(split: tuple[pd.DataFrame, ...], model: FraudEnsemble) -> None:
    train, valid, test = split
    again = fit_fraud_model(train, valid, seed=7, device="cpu", recipe=FAST)
    np.testing.assert_array_equal(predict(again, test, FAST), predict(model, test, FAST))
    for old, new in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(old, new)


def test_learns_far_above_prevalence(split: tuple[pd.DataFrame, ...], model: FraudEnsemble) -> None:
    train, _, test = split
    scores = predict(model, test, FAST)
    y = test["TX_FRAUD"].to_numpy()
    assert 0 < y.mean() < 0.1
    assert average_precision_score(y, scores) > max(0.4, 8 * y.mean())
    # The undersampling offset is undone: the mean score is near the fraud rate,
    # where without it it would be several times higher.
    assert scores.mean() < 1.6 * max(y.mean(), train["TX_FRAUD"].mean())


def test_warm_start_keeps_the_encoding_and_leaves_init_alone(
    split: tuple[pd.DataFrame, ...], model: FraudEnsemble
) -> None:
    train, valid, test = split
    champion = model
    before = predict(champion, test, FAST)
    quick = Recipe(train_weeks=2, hidden=(32, 16), n_members=2, max_epochs=1)
    challenger = fit_fraud_model(valid, train, seed=1, device="cpu", init=champion, recipe=quick)
    np.testing.assert_array_equal(predict(champion, test, FAST), before)
    assert isinstance(challenger, FraudEnsemble)
    for old, new in zip(champion.members, challenger.members, strict=True):
        assert torch.equal(old.lower, new.lower) and torch.equal(old.mean, new.mean)


def test_exports_to_onnx_with_the_same_scores(
    split: tuple[pd.DataFrame, ...], model: FraudEnsemble, tmp_path: Path
) -> None:
    _, _, test = split
    n = len(MODEL_FEATURE_COLUMNS)
    config = tmp_path / "config.pbtxt"
    config.write_text(
        'name: "fraud_detector"\nbackend: "python"\nmax_batch_size: 64\n'
        f'input [ {{ name: "features" data_type: TYPE_FP32 dims: [ {n} ] }} ]\n'
        'output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    path = export_onnx(model, tmp_path / "model.onnx", config_path=config)
    x = test[MODEL_FEATURE_COLUMNS].to_numpy(dtype=np.float32)[:500]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run(["score"], {"features": x})
    with torch.no_grad():
        torch_scores = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4, atol=1e-6)


def test_binned_mlp_rejects_a_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected features"):
        BinnedMLP(4).fit_encoding(np.zeros((10, 3)))


def test_row_weights_decide_what_the_model_learns(split: tuple[pd.DataFrame, ...]) -> None:
    """Half the training rows get their label flipped; weighted to nothing, the flips
    cost no quality, weighted alike they do: the weights reach the loss."""
    train, valid, test = split
    noisy = train.copy()
    flipped = np.random.default_rng(3).random(len(noisy)) < 0.5
    noisy.loc[flipped, "TX_FRAUD"] = 1 - noisy.loc[flipped, "TX_FRAUD"]
    y = test["TX_FRAUD"]
    alike = fit_fraud_model(noisy, valid, seed=7, device="cpu", recipe=FAST)
    weighted = fit_fraud_model(noisy.assign(**{WEIGHT_COLUMN: np.where(flipped, 0.0, 1.0)}),
                               valid, seed=7, device="cpu", recipe=FAST)
    assert (average_precision_score(y, predict(weighted, test, FAST))
            > average_precision_score(y, predict(alike, test, FAST)) + 0.1)


def test_matching_the_prior_moves_the_mean_score_not_the_ranking(
        split: tuple[pd.DataFrame, ...], model: FraudEnsemble) -> None:
    import copy

    _, valid, test = split
    richer = copy.deepcopy(model)
    for member in richer.members:
        member.offset.add_(2.0)  # as if trained on rows far richer in frauds
    before = predict(richer, valid, FAST)
    assert before.mean() > 2 * valid["TX_FRAUD"].mean()
    match_prior(richer, valid, FAST)
    after = predict(richer, valid, FAST)
    assert abs(after.mean() - valid["TX_FRAUD"].mean()) < 1e-4
    ap = average_precision_score(test["TX_FRAUD"], predict(model, test, FAST))
    assert abs(average_precision_score(test["TX_FRAUD"], predict(richer, test, FAST)) - ap) < 0.01

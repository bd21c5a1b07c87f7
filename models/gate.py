"""The promotion gate: a challenger ONNX graph replaces the champion only when it is
well-formed, faithful to its torch source, no worse on the same window, fast enough and
calibrated.

Checks run in this order:

1. **structure** - the file exists, ``onnx.checker`` accepts it, its tensors match
   ``config.pbtxt`` (names, dynamic batch, per-row dims, data types), an onnxruntime CPU
   session opens and a probe batch gives finite scores in [0, 1] of the served shape. A
   failure here ends the gate before any scoring.
2. **parity** - torch and onnxruntime scores agree within ``parity_atol`` (when the torch
   model is given).
3. **quality** - average precision and CP@100 on the gate window do not fall more than
   the tolerances below the champion's on the same window (when a champion is given).
4. **latency** - p99 of one ``latency_rows`` batch through onnxruntime on the CPU.
5. **calibration** - expected calibration error and predicted-mean / observed-rate ratio
   within absolute bounds, or, with a champion, no worse than the champion's on the same
   rows (after a drift no model trained on the past is calibrated on the new fraud rate).

Checks 2-5 all run, so the report lists every failure at once.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import nn

from models.export import check_onnx
from models.label_quality import QualityBaseline, window_quality
from models.triton_config import DEFAULT_CONFIG_PATH, ConfigError, ModelConfig, read_model_config

Champion = Path | str | np.ndarray | QualityBaseline | None
"""The champion's ONNX file, its scores on the window, or its figures on the window."""


@dataclass(frozen=True)
class GateConfig:
    """Tolerances and budgets of the gate.

    Attributes
    ----------
    ap_tolerance, cp100_tolerance
        Largest absolute drop below the champion allowed (0.01 each): smaller than the
        week-to-week spread of the handbook's folds, so only a real regression fails.
    parity_atol
        Largest absolute difference between torch and onnxruntime scores (float32 noise
        of the exporter is ~1e-7).
    latency_rows, latency_p99_ms, latency_repeats, latency_threads
        p99 over 200 runs of a 1,024-row batch on one onnxruntime thread must stay under
        50 ms. On a shared two-core machine the recipe-sized bag of three binned MLPs
        measured p50 5-9 ms and p99 10-22 ms, the walking-skeleton MLP p50 0.1 ms and p99
        up to 7 ms (scheduler noise); a net ten times the recipe's size measured p99 82 ms.
    ece_max, ratio_bounds
        At a ~1 % fraud rate a calibrated scorer has ECE ~0.005 (10 equal-width bins) and
        predicted mean within a few percent of the fraud rate; ECE 0.02 and a ratio in
        [0.5, 2] reject scores that are not probabilities (a class-weighted net trained
        without correction measured ECE 0.19 and ratio 20). ``None`` disables either.
    ece_tolerance
        After a drift the window's fraud rate can be ten times the rate any model trained
        on (the loop's card-testing scenario measured 14-40 %), and no model trained on
        the past is calibrated on it: the champion is not either. A challenger with a
        champion to compare passes the calibration check when it is no worse calibrated
        than the champion on the same rows: ECE at most the champion's plus this, and a
        mean-score-to-rate ratio no further from 1 (in log terms) than the champion's.
        ``None`` keeps only the absolute bounds.
    ratio_tolerance
        How much further from 1 than the champion's, in log terms, the ratio may be
        (0.1: about 10 %). Exactly no further rejected, in the loop's card testing,
        three challengers at 0.29-0.32 times the rate against a champion's 0.30-0.32,
        and kept the adapted model out of service for four days.
    probe_rows
        Rows of the window sent through the fresh session by the structural check.
    config_path
        The ``config.pbtxt`` whose tensor contract the graph must honour.
    """

    ap_tolerance: float = 0.01
    cp100_tolerance: float = 0.01
    parity_atol: float = 1e-5
    latency_rows: int = 1024
    latency_p99_ms: float = 50.0
    latency_repeats: int = 200
    latency_threads: int = 1
    latency_ratio: float | None = 1.5
    ece_max: float | None = 0.02
    ratio_bounds: tuple[float, float] | None = (0.5, 2.0)
    ece_tolerance: float | None = 0.005
    ratio_tolerance: float = 0.1
    calibration_bins: int = 10
    probe_rows: int = 64
    config_path: Path = DEFAULT_CONFIG_PATH


@dataclass(frozen=True)
class GateWindow:
    """The matured rows the gate scores: features ``[n, f]``, labels, cards, day indices."""

    features: np.ndarray
    labels: np.ndarray
    cards: np.ndarray
    days: np.ndarray

    def validate(self, n_features: int) -> None:
        n = len(self.labels)
        if self.features.ndim != 2 or self.features.shape[1] != n_features:
            raise ValueError(f"window features {self.features.shape}, want [n, {n_features}]")
        if not n or {len(self.features), len(self.cards), len(self.days)} != {n}:
            raise ValueError("window features, labels, cards and days need one non-zero length")
        if not np.any(self.labels):
            raise ValueError("the gate window holds no fraud; quality cannot be judged")


@dataclass
class GateReport:
    """Every figure the gate measured (``None`` when its check did not run) and its verdict."""

    challenger: str
    n_rows: int
    n_positives: int
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    parity_max_abs_diff: float | None = None
    average_precision: float | None = None
    card_precision_at_100: float | None = None
    champion_average_precision: float | None = None
    champion_card_precision_at_100: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    champion_latency_p99_ms: float | None = None
    ece: float | None = None
    champion_ece: float | None = None
    predicted_mean: float | None = None
    champion_predicted_mean: float | None = None
    observed_rate: float | None = None
    seconds: float = 0.0

    def check(self, name: str, ok: bool, reason: str = "") -> bool:
        """Record one check; a failure adds ``name: reason`` to the reasons."""
        self.checks[name] = self.checks.get(name, True) and ok
        if not ok:
            self.reasons.append(f"{name}: {reason}")
        return ok

    def baseline(self) -> QualityBaseline | None:
        """The challenger's figures on the gate window, the baseline of its concept monitors."""
        if self.average_precision is None or self.card_precision_at_100 is None:
            return None
        return QualityBaseline(self.average_precision, self.card_precision_at_100)

    def to_record(self, **extra: Any) -> dict[str, Any]:
        """The ``model-events`` message; ``extra`` adds fields such as the version."""
        event = "challenger_accepted" if self.passed else "challenger_rejected"
        return {"event": event, "v": 1, **dataclasses.asdict(self), **extra}


def evaluate_gate(
    challenger_onnx: Path | str,
    window: GateWindow,
    *,
    challenger_torch: nn.Module | None = None,
    champion: Champion = None,
    config: GateConfig | None = None,
) -> GateReport:
    """Run the gate on one challenger.

    Parameters
    ----------
    challenger_onnx
        The exported graph.
    window
        Matured labelled rows, the same for challenger and champion.
    challenger_torch
        The torch model the graph was exported from; enables the parity check.
    champion
        The served model as an ONNX path, its scores on ``window`` or its figures on it;
        ``None`` (no model served yet) skips the quality comparison.
    config
        Tolerances and budgets; defaults to :class:`GateConfig`.

    Raises
    ------
    ValueError
        When the window is malformed or holds no fraud (a caller error, not a verdict).
    """
    started = time.perf_counter()
    config = config or GateConfig()
    model = read_model_config(config.config_path)
    window.validate(model.n_features)
    features = np.asarray(window.features, model.input.numpy_dtype)
    positives = int(np.count_nonzero(window.labels))
    report = GateReport(str(challenger_onnx), len(window.labels), positives)
    session = _open_checked(Path(challenger_onnx), model, features[: config.probe_rows], report)
    if session is not None:
        scores = _score(session, model, features)
        if challenger_torch is not None:
            _parity(challenger_torch, features, scores, config, report)
        champion_scores = _quality(scores, window, model, champion, config, report)
        _latency(Path(challenger_onnx), model, features, config, report,
                 champion if isinstance(champion, (str, Path)) else None)
        _calibration(scores, window.labels, config, report, champion_scores)
        report.passed = not report.reasons
    report.seconds = time.perf_counter() - started
    return report


def _open_checked(
    path: Path, model: ModelConfig, probe: np.ndarray, report: GateReport
) -> ort.InferenceSession | None:
    if not report.check("structure", path.is_file(), f"{path} does not exist"):
        return None
    try:
        check_onnx(path, model)
        _check_dtypes(path, model)
        session = _session(path)
        out = session.run([model.output.name], {model.input.name: probe})[0]
    except Exception as exc:  # whatever breaks loading a graph is a reason to reject it
        report.check("structure", False, f"{type(exc).__name__}: {exc}".strip()[:500])
        return None
    want = (len(probe), *model.output.dims)
    if not report.check("structure", out.shape == want,
                        f"probe output shape {out.shape}, config wants {want}"):
        return None
    bad = int(np.count_nonzero(~(np.isfinite(out) & (out >= 0) & (out <= 1))))
    if not report.check("structure", bad == 0,
                        f"{bad} of {out.size} probe scores are not finite values in [0, 1]"):
        return None
    return session


def _check_dtypes(path: Path, model: ModelConfig) -> None:
    graph = onnx.load(str(path)).graph
    for kind, tensor, spec in (("input", graph.input[0], model.input),
                               ("output", graph.output[0], model.output)):
        dtype = helper.tensor_dtype_to_np_dtype(tensor.type.tensor_type.elem_type)
        if dtype != spec.numpy_dtype:
            raise ConfigError(f"{kind} {spec.name!r} is {dtype}, config wants {spec.numpy_dtype}")


def _session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = max(threads, 1)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _score(session: ort.InferenceSession, model: ModelConfig, features: np.ndarray) -> np.ndarray:
    """Scores of every row, in micro-batches no larger than Triton's ``max_batch_size``."""
    step = model.max_batch_size or len(features)
    parts = [
        session.run([model.output.name], {model.input.name: features[i : i + step]})[0]
        for i in range(0, len(features), step)
    ]
    return np.concatenate(parts).reshape(len(features)).astype(np.float64)


def _parity(
    torch_model: nn.Module,
    features: np.ndarray,
    scores: np.ndarray,
    config: GateConfig,
    report: GateReport,
) -> None:
    net = copy.deepcopy(torch_model).cpu().eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(features)).numpy().reshape(len(features))
    diff = float(np.max(np.abs(expected.astype(np.float64) - scores)))
    report.parity_max_abs_diff = diff
    report.check("parity", diff <= config.parity_atol,
                 f"torch and onnxruntime scores differ by up to {diff:.3g} "
                 f"(tolerance {config.parity_atol:g})")


def _quality(
    scores: np.ndarray,
    window: GateWindow,
    model: ModelConfig,
    champion: Champion,
    config: GateConfig,
    report: GateReport,
) -> np.ndarray | None:
    """Compare AP and CP@100 with the champion's; return the champion's scores if known."""
    mine = window_quality(scores, window.labels, window.cards, window.days)
    report.average_precision = mine.average_precision
    report.card_precision_at_100 = mine.card_precision_at_100
    champion_scores = None
    if champion is None:
        return None
    if isinstance(champion, QualityBaseline):
        theirs = champion
    else:
        if isinstance(champion, Path | str):
            features = np.asarray(window.features, model.input.numpy_dtype)
            champion = _score(_session(Path(champion)), model, features)
        if len(champion) != len(scores):
            raise ValueError(f"{len(champion)} champion scores for {len(scores)} window rows")
        champion_scores = np.asarray(champion, np.float64).reshape(len(scores))
        theirs = window_quality(champion_scores, window.labels, window.cards, window.days)
    report.champion_average_precision = theirs.average_precision
    report.champion_card_precision_at_100 = theirs.card_precision_at_100
    for label, ours, best, tolerance in (
        ("average precision", mine.average_precision, theirs.average_precision,
         config.ap_tolerance),
        ("CP@100", mine.card_precision_at_100, theirs.card_precision_at_100,
         config.cp100_tolerance),
    ):
        report.check("quality", ours >= best - tolerance,
                     f"{label} {ours:.4f} is {best - ours:.4f} below the champion's {best:.4f} "
                     f"(tolerance {tolerance:g})")
    return champion_scores


def _latency(
    path: Path, model: ModelConfig, features: np.ndarray, config: GateConfig, report: GateReport,
    champion: str | Path | None = None,
) -> None:
    """p99 of the challenger; with a champion graph, measured alternately with it.

    On a shared machine the absolute budget alone judges the load as much as the model;
    a challenger at most ``latency_ratio`` times the champion's p99, measured in the same
    moments, passes too.
    """
    batch = {model.input.name: np.resize(features, (config.latency_rows, features.shape[1]))}
    sessions = [_session(path, config.latency_threads)]
    if champion is not None and config.latency_ratio is not None:
        sessions.append(_session(Path(champion), config.latency_threads))
    for session in sessions:
        for _ in range(10):
            session.run([model.output.name], batch)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(config.latency_repeats):
        for session, taken in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run([model.output.name], batch)
            taken.append((time.perf_counter() - start) * 1000.0)
    p50, p99 = np.percentile(times[0], [50, 99])
    report.latency_p50_ms, report.latency_p99_ms = float(p50), float(p99)
    budget = config.latency_p99_ms
    if len(times) > 1:
        champion_p99 = float(np.percentile(times[1], 99))
        report.champion_latency_p99_ms = champion_p99
        budget = max(budget, champion_p99 * float(config.latency_ratio or 1.0))
    report.check("latency", report.latency_p99_ms <= budget,
                 f"p99 {report.latency_p99_ms:.2f} ms for {config.latency_rows} rows on "
                 f"{config.latency_threads} thread(s), budget {budget:.3g} ms")


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean ``|mean score - fraud rate|`` over equal-width score bins, weighted by rows."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.bincount(index, scores, bins) - np.bincount(index, labels, bins)
    return float(np.abs(gap).sum() / max(counts.sum(), 1))


def _calibration(
    scores: np.ndarray, labels: np.ndarray, config: GateConfig, report: GateReport,
    champion: np.ndarray | None = None,
) -> None:
    """Absolute bounds, or, with the champion's scores, no worse calibrated than it."""
    ece = expected_calibration_error(scores, labels, config.calibration_bins)
    mean, rate = float(scores.mean()), float(np.mean(labels))
    report.ece, report.predicted_mean, report.observed_rate = ece, mean, rate
    tolerance = config.ece_tolerance
    theirs: tuple[float, float] | None = None  # the champion's ECE and mean score
    if champion is not None and tolerance is not None:
        theirs = (expected_calibration_error(champion, labels, config.calibration_bins),
                  float(np.mean(champion)))
        report.champion_ece, report.champion_predicted_mean = theirs
    if config.ece_max is not None:
        ok = ece <= config.ece_max
        reason = f"expected calibration error {ece:.4f} above {config.ece_max:g}"
        if theirs is not None and tolerance is not None and not ok:
            ok = ece <= theirs[0] + tolerance
            reason += f" and above the champion's {theirs[0]:.4f} + {tolerance:g}"
        report.check("calibration", ok, reason)
    if config.ratio_bounds is not None:
        low, high = config.ratio_bounds
        ratio = mean / rate
        ok = low <= ratio <= high
        reason = (f"mean score {mean:.4f} is {ratio:.2f} x the fraud rate {rate:.4f}, "
                  f"outside [{low:g}, {high:g}]")
        if theirs is not None and not ok:
            their_ratio = max(theirs[1], 1e-12) / rate
            ok = (abs(np.log(max(ratio, 1e-12)))
                  <= abs(np.log(their_ratio)) + config.ratio_tolerance + 1e-9)
            reason += (f" and further from 1 than the champion's {their_ratio:.2f} "
                       f"(tolerance {config.ratio_tolerance:g} in log terms)")
        report.check("calibration", ok, reason)

"""Training the three detectors: split, fit, calibrate, export, check parity, register.

Split: by stream order, after `warmup_events` leading events that only carry window state and
sequence history (never fitted or calibrated on), the first `1 - holdout_fraction` of the
rest fit the models and the remainder is held out. Why a warm-up: the features of a young
stream are not those of a running deployment (one-hour windows still filling, entity
baselines built on a few events), and models fitted and calibrated on them meet a mature
stream as shifted; measured with XGBoost alone on one generated stream at 5,000/s, the same
1.6M fit events at stream age 0, 2M and 5.8M gave TPR 79.6%, 82.7% and 83.5% at FPR 0.3%
on the 600k events after them (an older stream also gives each entity more history).
Holding out the *end* of the stream (not random rows) keeps the held-out events' feature
windows unseen in training, as a future stream's are. The held-out normal
events build each model's calibration table; the held-out anomalies give the metrics
recorded in the metadata. A separately generated stream (`anomaly evaluate`) is the real
test.

Every model is exported to ONNX and compared with the native model on `parity_rows`
held-out rows (raw outputs, absolute tolerance `parity_tolerance`); a larger difference is a
bug in an exporter and fails the training rather than registering a model that serves
differently depending on the runtime.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import QuantileCalibrator
from models.dataset import LabelledFeatures
from models.detector import F32, InputKind
from models.errors import ModelsError, TrainingDataError
from models.isolation_forest import IsolationForestSettings, fit_isolation_forest
from models.metadata import feature_contract, library_versions, utc_now
from models.metrics import detection_metrics
from models.progress import Progress, Stopwatch, silent
from models.registry import KINDS, METADATA_FILE, ONNX_FILE, Registry
from models.sequences import gather_sequences, history_index
from models.transformer import TransformerSettings, fit_transformer
from models.xgb_classifier import XGBoostSettings, check_labels, fit_xgboost
from services.common.anomaly_types import ALL_LABELS
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName

_SCORE_BATCH = 65_536


class ExportParityError(ModelsError):
    """The ONNX export does not reproduce the native model's output."""


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """Everything that decides a training run (besides the data)."""

    seed: int = 42
    models: tuple[ModelName, ...] = tuple(ModelName)
    holdout_fraction: float = 0.2
    warmup_events: int = 0
    """Leading events of the data that only warm state and sequence history up."""
    isolation_forest: IsolationForestSettings = field(default_factory=IsolationForestSettings)
    xgboost: XGBoostSettings = field(default_factory=XGBoostSettings)
    transformer: TransformerSettings = field(default_factory=TransformerSettings)
    parity_rows: int = 1_000
    parity_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise ValueError(
                f"holdout_fraction must be within [0.05, 0.5], got {self.holdout_fraction}"
            )
        if self.warmup_events < 0:
            raise ValueError(f"warmup_events must be >= 0, got {self.warmup_events}")


def small_settings(seed: int = 1) -> TrainSettings:
    """Models that train in seconds on ~20k events (small forest, few boosting rounds, one
    Transformer epoch): what tests and benchmarks need to exercise serving and routing for
    real without waiting minutes. Not for detection figures."""
    return TrainSettings(
        seed=seed,
        isolation_forest=IsolationForestSettings(n_estimators=30, max_samples=256),
        xgboost=XGBoostSettings(n_rounds=20, max_depth=4, threads=1),
        transformer=TransformerSettings(epochs=1, max_sequences=3_000, device="cpu"),
    )


@dataclass(slots=True, eq=False)
class TrainedModel:
    """A fitted, calibrated, exported model, ready to publish."""

    name: ModelName
    detector: Any
    calibrator: QuantileCalibrator
    onnx: bytes
    metadata: dict[str, Any]
    version: str | None = None
    """Set once published."""


@dataclass(frozen=True, slots=True)
class _Split:
    fit: np.ndarray[Any, np.dtype[np.int64]]
    holdout: np.ndarray[Any, np.dtype[np.int64]]


def _split(n: int, holdout_fraction: float, warmup: int = 0) -> _Split:
    if warmup >= n:
        raise TrainingDataError(
            f"the warm-up ({warmup:,} events) leaves nothing of the {n:,} events to train on"
        )
    cut = warmup + round((n - warmup) * (1.0 - holdout_fraction))
    if cut <= warmup or cut >= n:
        raise TrainingDataError(
            f"{n - warmup} events are too few to split into fit and hold-out parts"
        )
    return _Split(np.arange(warmup, cut, dtype=np.int64), np.arange(cut, n, dtype=np.int64))


class _Inputs:
    """Model inputs for row subsets: feature rows, or sequences gathered on demand."""

    def __init__(self, data: LabelledFeatures, sequence_length: int) -> None:
        self.data = data
        self._index: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._length = sequence_length

    @property
    def index(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        if self._index is None:
            self._index = history_index(self.data.entity, self._length)
        return self._index

    def get(self, kind: InputKind, rows: np.ndarray[Any, np.dtype[np.int64]]) -> F32:
        if kind is InputKind.ROWS:
            out: F32 = self.data.matrix[rows]
            return out
        return gather_sequences(self.data.matrix, self.index[rows])


def _raw_in_batches(detector: Any, inputs: _Inputs, kind: InputKind, rows: Any) -> F32:
    parts = [
        detector.raw_output(inputs.get(kind, rows[start : start + _SCORE_BATCH]))
        for start in range(0, len(rows), _SCORE_BATCH)
    ]
    out: F32 = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return out


def _parity(name: ModelName, detector: Any, onnx_bytes: bytes, x: F32, tolerance: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    output = KINDS[name].onnx_output
    onnx_out = np.asarray(session.run([output], {"features": x})[0], np.float64)
    native = np.asarray(detector.raw_output(x), np.float64)
    diff = float(np.max(np.abs(onnx_out.reshape(native.shape) - native))) if len(x) else 0.0
    if not diff <= tolerance:
        raise ExportParityError(
            f"{name.value}: ONNX output differs from the native model by {diff:.3g} "
            f"(tolerance {tolerance:g}) on {len(x)} rows"
        )
    return diff


def _fit(
    name: ModelName,
    data: LabelledFeatures,
    split: _Split,
    inputs: _Inputs,
    settings: TrainSettings,
    progress: Progress,
) -> Any:
    fit_rows = split.fit
    normal_fit = fit_rows[data.labels[fit_rows] == 0]
    if name is ModelName.ISOLATION_FOREST:
        return fit_isolation_forest(
            data.matrix[normal_fit], settings.isolation_forest, settings.seed
        )
    if name is ModelName.XGBOOST:
        if not data.labelled:
            raise TrainingDataError("XGBoost is supervised: give a labels file (--labels)")
        return fit_xgboost(
            data.matrix[fit_rows], data.labels[fit_rows], settings.xgboost, settings.seed, progress
        )
    return fit_transformer(
        data.matrix, inputs.index, normal_fit, settings.transformer, settings.seed, progress
    )


def train_model(
    name: ModelName,
    data: LabelledFeatures,
    settings: TrainSettings,
    progress: Progress = silent,
    source: str = "",
) -> TrainedModel:
    """Fit, calibrate and export one model (not yet registered)."""
    name = ModelName(name)
    data.validate()
    if name is ModelName.XGBOOST:
        if not data.labelled:
            raise TrainingDataError("XGBoost is supervised: give a labels file (--labels)")
        check_labels(data.labels[settings.warmup_events :])
    split = _split(len(data), settings.holdout_fraction, settings.warmup_events)
    kind = KINDS[name]
    inputs = _Inputs(data, settings.transformer.sequence_length)
    clock = Stopwatch()
    progress(f"[{name.value}] fitting on {len(split.fit):,} events")
    detector = _fit(name, data, split, inputs, settings, progress)
    fit_seconds = clock.seconds

    holdout = split.holdout
    raw_out = _raw_in_batches(detector, inputs, kind.input_kind, holdout)
    raw = kind.anomaly_raw(raw_out)
    holdout_labels = data.labels[holdout]
    calibrator = QuantileCalibrator.fit(raw[holdout_labels == 0])
    metrics = detection_metrics(holdout_labels, calibrator(raw)) if data.labelled else {}
    types = kind.predicted_type(raw_out)
    if types is not None and data.labelled:
        anomalous = holdout_labels > 0
        if anomalous.any():
            metrics["type_accuracy"] = float(
                (types[anomalous] + 1 == holdout_labels[anomalous]).mean()
            )

    progress(f"[{name.value}] exporting to ONNX")
    onnx_bytes = detector.to_onnx()
    parity_rows = holdout[: settings.parity_rows]
    diff = _parity(
        name, detector, onnx_bytes, inputs.get(kind.input_kind, parity_rows),
        settings.parity_tolerance,
    )  # fmt: skip
    described = detector.describe()
    shape = (
        [-1, len(FEATURE_NAMES)]
        if kind.input_kind is InputKind.ROWS
        else [-1, settings.transformer.sequence_length, len(FEATURE_NAMES)]
    )
    metadata: dict[str, Any] = {
        "name": name.value,
        "created_at": utc_now(),
        "seed": settings.seed,
        **feature_contract(),
        "input": {
            "name": "features",
            "kind": kind.input_kind.value,
            "shape": shape,
            "dtype": "float32",
            **(
                {"sequence_length": settings.transformer.sequence_length}
                if kind.input_kind is InputKind.SEQUENCES
                else {}
            ),
        },
        "output": {
            "onnx_output": kind.onnx_output,
            "anomaly_score": _OUTPUT_DOCS[name],
            "calibrated": "fraction of held-out normal raw scores <= the raw score",
            **({"classes": list(ALL_LABELS)} if name is ModelName.XGBOOST else {}),
        },
        "training_data": {
            "hash": data.data_hash(),
            "source": source,
            "events": len(data),
            "events_per_s": data.events_per_s(),
            "warmup_events": settings.warmup_events,
            "fit_events": len(split.fit),
            "holdout_events": len(holdout),
            "label_counts": data.label_counts(),
            "labelled": data.labelled,
        },
        **described,
        "calibration": calibrator.to_dict(),
        "metrics": {"holdout": metrics},
        "onnx": {
            "file": ONNX_FILE,
            "parity_max_abs_diff": diff,
            "parity_rows": len(parity_rows),
            "onnx_max_rows": detector.onnx_max_rows,
        },
        "artifacts": {"native": kind.native_file, "onnx": ONNX_FILE},
        "library_versions": library_versions(),
        "fit_seconds": round(fit_seconds, 2),
    }
    progress(f"[{name.value}] done in {clock.seconds:.1f} s")
    return TrainedModel(name, detector, calibrator, onnx_bytes, metadata)


_OUTPUT_DOCS = {
    ModelName.ISOLATION_FOREST: "-scores (negated decision_function)",
    ModelName.XGBOOST: "log(1 - P(normal)) - log(P(normal)) from `probabilities`",
    ModelName.TRANSFORMER: "score (normalised next-row prediction error)",
}


def publish(registry: Registry, trained: TrainedModel, version: str | None = None) -> str:
    """Write a trained model as a new immutable registry version; returns the version."""

    def stage(folder: Path, new_version: str) -> None:
        trained.detector.save_native(folder)
        (folder / ONNX_FILE).write_bytes(trained.onnx)
        metadata = {"version": new_version, **trained.metadata}
        (folder / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )

    trained.version = registry.publish(trained.name, stage, version)
    return trained.version


def train_all(
    data: LabelledFeatures,
    settings: TrainSettings | None = None,
    registry: Registry | None = None,
    progress: Progress = silent,
    source: str = "",
) -> dict[ModelName, TrainedModel]:
    """Train the selected models on one data set; publish each to `registry` if given.

    Data problems are reported before any model is fitted, so a bad file does not cost the
    minutes of training the first models.
    """
    settings = settings or TrainSettings()
    data.validate()
    _split(len(data), settings.holdout_fraction, settings.warmup_events)  # before any fit
    if ModelName.XGBOOST in settings.models:
        if not data.labelled:
            raise TrainingDataError("XGBoost is supervised: give a labels file (--labels)")
        check_labels(data.labels[settings.warmup_events :])
    out: dict[ModelName, TrainedModel] = {}
    for name in _ordered(settings.models):
        trained = train_model(name, data, settings, progress, source)
        if registry is not None:
            version = publish(registry, trained)
            progress(f"[{name.value}] registered as version {version} in {registry.root}")
        out[name] = trained
    return out


def _ordered(names: Sequence[ModelName]) -> list[ModelName]:
    wanted = {ModelName(n) for n in names}
    return [n for n in ModelName if n in wanted]


def with_overrides(settings: TrainSettings, **changes: Any) -> TrainSettings:
    """A copy of the settings with top-level fields replaced (CLI convenience)."""
    return dataclasses.replace(settings, **changes)

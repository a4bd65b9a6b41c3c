"""The model pipeline end to end on a small generated stream: train, export, register, load,
score, evaluate; ONNX parity, determinism, native artifact layouts, metric series, ADBench.

Small on purpose (30k events, tiny models): the whole module runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from models.adbench import check_dataset, default_adbench_dir
from models.dataset import FeatureBuilder, LabelledFeatures, parse_raw_events
from models.errors import TrainingDataError
from models.evaluation import EvaluationSettings, evaluate_stream
from models.isolation_forest import IsolationForestSettings
from models.metric_series import read_metric_series, score_metric_series, write_scores_csv
from models.metrics import detection_metrics
from models.registry import CHECKSUMS_FILE, LoadedModel, Registry
from models.report import write_report
from models.scoring import ModelScorer, score_stream
from models.sequences import gather_sequences, history_index
from models.training import TrainedModel, TrainSettings, train_all, train_model
from models.transformer import TransformerSettings, fit_transformer
from models.xgb_classifier import XGBoostSettings
from services.common.anomaly_types import AnomalyType
from services.common.config.model import EnsembleConfig
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.generator import EventStream, StreamSpec

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SETTINGS = TrainSettings(
    seed=7,
    isolation_forest=IsolationForestSettings(n_estimators=25, max_samples=256),
    xgboost=XGBoostSettings(n_rounds=25, max_depth=4, threads=2),
    transformer=TransformerSettings(epochs=1, max_sequences=4_000, batch_size=256),
)


def stream(seed: int, events: int) -> LabelledFeatures:
    builder = FeatureBuilder()
    labels: dict[str, str] = {}
    spec = StreamSpec(seed=seed, entities=300, anomaly_rate=0.03)
    for chunk in EventStream(spec).chunks(events):
        builder.add(parse_raw_events(chunk.values()))
        labels.update((r["event_id"], r["label"]) for r in chunk.labels())
    return builder.build(labels)


@pytest.fixture(scope="module")
def data() -> LabelledFeatures:
    return stream(seed=1, events=30_000)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_store")


@pytest.fixture(scope="module")
def trained(data: LabelledFeatures, store: Path) -> dict[ModelName, TrainedModel]:
    return train_all(data, SETTINGS, Registry(store), source="test stream")


@pytest.fixture(scope="module")
def loaded(trained: dict[ModelName, TrainedModel], store: Path) -> dict[ModelName, LoadedModel]:
    registry = Registry(store)
    return {name: registry.load(name) for name in ModelName}


def inputs(model: LoadedModel, data: LabelledFeatures, rows: slice) -> npt.NDArray[np.float32]:
    if model.sequence_length:
        index = history_index(data.entity, model.sequence_length)[rows]
        return gather_sequences(data.matrix, index)
    return data.matrix[rows]


@pytest.mark.parametrize("name", list(ModelName))
def test_onnx_matches_native_on_1000_rows(
    name: ModelName, loaded: dict[ModelName, LoadedModel], data: LabelledFeatures
) -> None:
    model = loaded[name]
    x = inputs(model, data, slice(10_000, 11_000))
    assert len(x) == 1_000
    native = model.predict_raw(x, "native")
    onnx = model.predict_raw(x, "onnx").reshape(native.shape)
    np.testing.assert_allclose(onnx, native, rtol=0, atol=1e-4)
    scores = model.score(x)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert model.metadata["onnx"]["parity_max_abs_diff"] <= 1e-4


def test_registry_holds_the_documented_layouts(
    loaded: dict[ModelName, LoadedModel], store: Path
) -> None:
    import joblib
    import xgboost as xgb

    forest = loaded[ModelName.ISOLATION_FOREST]
    assert type(joblib.load(forest.native_path)).__name__ == "IsolationForest"
    booster = xgb.Booster()
    booster.load_model(str(loaded[ModelName.XGBOOST].native_path))
    assert loaded[ModelName.TRANSFORMER].native_path.name == "model.pt"
    for name, model in loaded.items():
        assert model.path == store / name.value / "1"
        assert (store / name.value / "1" / "model.onnx").exists()
        config = (store / name.value / "config.pbtxt").read_text()
        assert f'name: "{name.value}"' in config and "versions: [ 1 ]" in config
        meta = model.metadata
        for key in (
            "feature_names", "feature_schema_hash", "training_data", "metrics", "calibration",
            "preprocessing", "created_at", "library_versions", "seed",
        ):  # fmt: skip
            assert key in meta, key
        assert meta["seed"] == 7 and meta["training_data"]["events"] == 30_000
    transformer = loaded[ModelName.TRANSFORMER].metadata
    assert transformer["input"]["shape"] == [-1, 16, len(FEATURE_NAMES)]
    assert len(transformer["preprocessing"]["standardize"]["center"]) == len(FEATURE_NAMES)


def test_xgboost_predicts_types_and_separates_anomalies(
    loaded: dict[ModelName, LoadedModel], data: LabelledFeatures
) -> None:
    model = loaded[ModelName.XGBOOST]
    holdout = slice(24_000, 30_000)
    batch = model.score_batch(data.matrix[holdout])
    assert batch.anomaly_type is not None
    assert batch.anomaly_type.min() >= 0 and batch.anomaly_type.max() < 6
    labels = data.labels[holdout]
    assert batch.score[labels > 0].mean() > batch.score[labels == 0].mean() + 0.2


def test_same_seed_same_models(
    data: LabelledFeatures, trained: dict[ModelName, TrainedModel], store: Path
) -> None:
    registry = Registry(store)
    for name in (ModelName.ISOLATION_FOREST, ModelName.XGBOOST):
        again = train_model(name, data, SETTINGS)
        first = trained[name]
        assert again.metadata["training_data"]["hash"] == first.metadata["training_data"]["hash"]
        assert again.calibrator == first.calibrator
        assert hashlib.sha256(again.onnx).hexdigest() == hashlib.sha256(first.onnx).hexdigest()
        sums = (registry.version_dir(name, "1") / CHECKSUMS_FILE).read_text()
        folder = store.parent / f"again-{name.value}"
        folder.mkdir()
        native = again.detector.save_native(folder)
        assert hashlib.sha256((folder / native).read_bytes()).hexdigest() in sums
    # Transformer: same seed, same weights and scores (fit only; export checked above).
    index = history_index(data.entity)
    rows = np.flatnonzero(data.labels[:24_000] == 0)
    small = TransformerSettings(epochs=1, max_sequences=1_000)
    a = fit_transformer(data.matrix, index, rows, small, seed=3)
    b = fit_transformer(data.matrix, index, rows, small, seed=3)
    x = gather_sequences(data.matrix, index[:500])
    assert np.array_equal(a.raw_output(x), b.raw_output(x))


def test_scoring_from_a_start_keeps_the_history(loaded: dict[ModelName, LoadedModel]) -> None:
    """Events before `start` are not scored, yet the Transformer's sequences still reach
    into them: the scores are those of scoring everything, from `start` on."""
    held_out = stream(seed=2, events=6_000)
    for name in (ModelName.TRANSFORMER, ModelName.XGBOOST):
        scorer = ModelScorer.from_loaded(loaded[name])
        everything = score_stream(scorer, held_out)
        tail = score_stream(scorer, held_out, start=4_000)
        assert len(tail.score) == 2_000
        np.testing.assert_array_equal(tail.raw, everything.raw[4_000:])
    with pytest.raises(ValueError, match="start must be within"):
        score_stream(ModelScorer.from_loaded(loaded[ModelName.XGBOOST]), held_out, start=6_001)


def test_training_warm_up_is_neither_fitted_nor_calibrated_on(data: LabelledFeatures) -> None:
    """With a warm-up, the fit part starts after it: the forest fitted on a stream whose
    warm-up rows are garbage equals the forest fitted on the same stream with clean ones."""
    settings = dataclasses.replace(SETTINGS, warmup_events=10_000)
    clean = train_model(ModelName.ISOLATION_FOREST, data, settings)
    spoiled_matrix = data.matrix.copy()
    spoiled_matrix[:10_000] = 1e6  # would dominate the forest and its calibration
    spoiled = dataclasses.replace(data, matrix=spoiled_matrix)
    other = train_model(ModelName.ISOLATION_FOREST, spoiled, settings)
    assert clean.metadata["training_data"]["fit_events"] == 16_000
    assert clean.metadata["training_data"]["warmup_events"] == 10_000
    assert clean.calibrator.to_dict() == other.calibrator.to_dict()
    with pytest.raises(TrainingDataError, match="leaves nothing"):
        train_model(
            ModelName.ISOLATION_FOREST, data, dataclasses.replace(settings, warmup_events=30_000)
        )


def test_evaluation_report(loaded: dict[ModelName, LoadedModel], tmp_path: Path) -> None:
    held_out = stream(seed=2, events=20_000)
    scorers = {name: ModelScorer.from_loaded(model) for name, model in loaded.items()}
    result = evaluate_stream(
        held_out, scorers, EnsembleConfig(), settings=EvaluationSettings(tune_fraction=0.5)
    )
    report = result.report
    assert set(report["models"]) == {m.value for m in ModelName}
    assert set(report["ensemble"]["strategies"]) == {"weighted", "k_of_n", "any", "all", "cascade"}
    assert {"zscore_raw", "iqr_asinh"} <= set(report["baselines"])
    for entry in report["models"].values():
        assert 0.0 <= entry["roc_auc"] <= 1.0
        assert set(entry["tpr_at_fpr"]) == {"0.1%", "0.3%", "1%"}
        assert "price_spike" in entry["recall_per_type_at_fpr"]["0.3%"]
    suggested = report["ensemble"]["suggested"]
    assert suggested["weights"]
    # Thresholds per type share the target's false-positive budget on the tuning part, and
    # the report carries them as a config section the platform loads.
    assert set(suggested["thresholds_per_type"]) == {t.value for t in AnomalyType}
    spent = sum(suggested["tune_false_positives_per_type"].values())
    assert spent <= 0.003 * report["stream"]["tune_events"]  # at most 0.3% of its normals
    assert 0.0 <= suggested["test_per_type_thresholds"]["fpr"] <= 1.0
    comparison = report["comparison"]
    assert comparison["ensemble_at_target"]["fpr"] <= 0.003
    paths = write_report(result, tmp_path / "eval")
    assert {p.name for p in paths} == {"report.json", "report.md", "roc.png", "pr.png"}
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["comparison"]
    assert (tmp_path / "eval" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| xgboost |" in markdown
    section = yaml.safe_load(markdown.split("```yaml\n")[1].split("```")[0])["ensemble"]
    shipped = EnsembleConfig.model_validate(section)
    assert {t.value: v for t, v in shipped.thresholds.items()} == suggested["thresholds_per_type"]
    # Recalibrated on the tuning part, a calibrated threshold t flags about 1 - t of its normals.
    recalibrated = evaluate_stream(
        held_out,
        scorers,
        EnsembleConfig(),
        settings=EvaluationSettings(tune_fraction=0.5, warmup_events=2_000, recalibrate=True),
    ).report
    assert recalibrated["stream"]["warmup_events"] == 2_000
    # Figures are on the test part after the warm-up, whose scores are those of the full stream.
    warmed = evaluate_stream(
        held_out, scorers, EnsembleConfig(), settings=EvaluationSettings(warmup_events=8_000)
    )
    full = score_stream(scorers[ModelName.TRANSFORMER], held_out).score
    np.testing.assert_array_equal(warmed.test_scores["transformer"], full[14_000:])
    assert warmed.report["models"]["transformer"]["roc_auc"] == pytest.approx(
        detection_metrics(held_out.labels[14_000:], full[14_000:])["roc_auc"]
    )
    assert recalibrated["protocol"]["recalibrated_on_tuning_part"] is True


def test_metric_series_scores_the_spike_highest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3_000
    ts = 1_767_571_200_000 + np.arange(n) * 60_000
    values = 100 + 10 * np.sin(np.arange(n) / 60) + rng.normal(0, 1, n)
    values[2_500] = 400.0
    csv_path = tmp_path / "cpu.csv"
    csv_path.write_text(
        "timestamp,value\n" + "".join(f"{t},{v:.3f}\n" for t, v in zip(ts, values, strict=True))
    )
    events = read_metric_series([csv_path])
    assert events[0]["kind"] == "metric" and events[0]["entity_id"] == "cpu"
    settings = TrainSettings(
        seed=1,
        isolation_forest=IsolationForestSettings(n_estimators=25, max_samples=256),
        transformer=TransformerSettings(epochs=1, max_sequences=1_000),
    )
    columns = score_metric_series(events, fit_fraction=0.5, settings=settings)
    assert set(columns) == {"entity_id", "ts", "value", "isolation_forest", "transformer", "score"}
    score = np.asarray(columns["score"])
    # Calibrated scores saturate at 1 above every normal score seen; the spike is up there
    # (so may be the series' first samples, with a cold window state, and the samples whose
    # one-hour windows contain the spike), and hardly any ordinary sample before it is.
    assert score[2_500] == score.max()
    assert (score[1_600:2_500] >= score[2_500]).mean() < 0.02
    out = tmp_path / "scores.csv"
    assert write_scores_csv(columns, out) == n
    assert (
        out.read_text().splitlines()[0] == "entity_id,ts,value,isolation_forest,transformer,score"
    )


def adbench_file() -> Iterator[Path]:
    folder = default_adbench_dir(REPO)
    path = folder / "38_thyroid.npz"
    if not path.exists():
        pytest.skip(f"ADBench data not found at {folder} (a user's clone does not have it)")
    yield path


def test_adbench_thyroid_check() -> None:
    path = next(adbench_file())
    with np.load(path) as npz:
        result = check_dataset(npz["X"], npz["y"], seed=0)
    assert result["isolation_forest"]["roc_auc"] > 0.9
    assert result["xgboost"]["roc_auc"] > 0.95

"""Training data: the shared FeatureEngine computes features; bad data fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.dataset import (
    FeatureBuilder,
    LabelledFeatures,
    load_dataset,
    parse_raw_events,
    read_labels,
)
from models.errors import TrainingDataError
from models.training import TrainSettings, train_all
from services.common.anomaly_types import ALL_LABELS
from services.common.events import parse_event
from services.common.features.columns import columns_from_events
from services.common.features.definition import FEATURE_NAMES
from services.common.features.engine import FeatureEngine
from services.common.model_names import ModelName
from services.generator import StreamSpec, generate_batch

SPEC = StreamSpec(seed=5, entities=50, anomaly_rate=0.05)


@pytest.fixture(scope="module")
def stream() -> tuple[list[bytes], dict[str, str]]:
    batch = generate_batch(SPEC, 3_000)
    return batch.values, {r["event_id"]: r["label"] for r in batch.labels}


def test_features_are_those_of_the_shared_engine(
    stream: tuple[list[bytes], dict[str, str]],
) -> None:
    values, labels = stream
    builder = FeatureBuilder()
    builder.add(parse_raw_events(values))
    data = builder.build(labels)
    events = [parse_event(v) for v in values]
    engine = FeatureEngine()
    expected = np.concatenate(
        [
            engine.process(columns_from_events(events[i : i + 1000])).matrix
            for i in range(0, 3000, 1000)
        ]
    )
    assert np.array_equal(data.matrix, expected)
    assert data.label_counts()["normal"] == 3_000 - len(labels)
    assert sum(data.labels > 0) == len(labels)
    assert len(data.entity_names) == len(set(e["entity_id"] for e in events))


def test_jsonl_and_parquet_files_give_the_same_features(
    tmp_path: Path, stream: tuple[list[bytes], dict[str, str]]
) -> None:
    values, labels = stream
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(values) + b"\n")
    label_file = tmp_path / "labels.jsonl"
    label_file.write_text(
        "\n".join(json.dumps({"event_id": k, "label": v}) for k, v in labels.items()) + "\n"
    )
    events = [json.loads(v) for v in values]
    columns = sorted({k for e in events for k in e})
    table = pa.Table.from_pylist([{c: e.get(c) for c in columns} for e in events])
    parquet = tmp_path / "events.parquet"
    pq.write_table(table, parquet)
    csv_labels = tmp_path / "labels.csv"
    csv_labels.write_text("event_id,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    a = load_dataset(jsonl, label_file)
    b = load_dataset(parquet, csv_labels)
    assert np.array_equal(a.matrix, b.matrix)
    assert np.array_equal(a.labels, b.labels)
    assert a.data_hash() == b.data_hash()


def test_empty_data_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "events.jsonl"
    empty.write_text("")
    data = load_dataset(empty)
    with pytest.raises(TrainingDataError, match="empty"):
        train_all(data, TrainSettings(models=(ModelName.ISOLATION_FOREST,)))


def test_nan_features_are_refused_naming_the_feature() -> None:
    matrix = np.zeros((10, len(FEATURE_NAMES)), np.float32)
    matrix[3, FEATURE_NAMES.index("amount_zscore")] = np.nan
    data = LabelledFeatures(matrix, np.zeros(10, np.int8), np.zeros(10, np.int64))
    with pytest.raises(TrainingDataError, match=r"amount_zscore \(1 rows\)"):
        data.validate()


def test_nan_amount_in_an_events_table_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,entity_id,ts,kind,amount\n"
        "e1,a,1767571200000,payment,10.5\n"
        "e2,a,1767571201000,payment,inf\n"
    )
    with pytest.raises(TrainingDataError, match=r"row 2: field 'amount' must be finite"):
        load_dataset(path)


def test_missing_and_extra_event_columns_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("event_id,ts,kind,amount\ne1,1767571200000,payment,1\n")
    with pytest.raises(TrainingDataError, match=r"lacks column.*entity_id"):
        load_dataset(missing)
    extra = tmp_path / "extra.csv"
    extra.write_text("event_id,entity_id,ts,kind,amount,colour\ne1,a,1767571200000,payment,1,red\n")
    with pytest.raises(TrainingDataError, match=r"unknown column.*colour"):
        load_dataset(extra)


def test_bad_jsonl_line_is_located(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"event_id":"e1","entity_id":"a","ts":1767571200000,"kind":"payment","amount":1}\n'
        '{"event_id":"e2","entity_id":"a","ts":1767571200000,"kind":"payment"}\n'
    )
    with pytest.raises(TrainingDataError, match="line 2: missing required field 'amount'"):
        load_dataset(path)


def test_feature_table_columns_are_checked() -> None:
    columns: dict[str, object] = {name: np.zeros(4) for name in FEATURE_NAMES}
    columns["entity_id"] = ["a", "b", "a", "b"]
    columns["label"] = ["normal", None, "price_spike", "normal"]
    data = LabelledFeatures.from_columns(columns)
    assert data.labels.tolist() == [0, 0, 1, 0] and data.entity.tolist() == [0, 1, 0, 1]
    del columns["log_amount"]
    with pytest.raises(TrainingDataError, match=r"lacks column.*log_amount"):
        LabelledFeatures.from_columns(columns)
    columns["log_amount"] = np.zeros(4)
    columns["surprise"] = np.zeros(4)
    with pytest.raises(TrainingDataError, match=r"unknown column.*surprise"):
        LabelledFeatures.from_columns(columns)


def test_label_problems_are_named(
    tmp_path: Path, stream: tuple[list[bytes], dict[str, str]]
) -> None:
    bad_value = tmp_path / "bad.csv"
    bad_value.write_text("event_id,label\ne1,fraud\n")
    with pytest.raises(TrainingDataError, match="unknown label 'fraud'"):
        read_labels(bad_value)
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("event_id,kind\ne1,x\n")
    with pytest.raises(TrainingDataError, match=r"lacks column.*label"):
        read_labels(no_label)
    values, _ = stream
    builder = FeatureBuilder()
    builder.add(parse_raw_events(values[:10]))
    with pytest.raises(TrainingDataError, match="absent from the events"):
        builder.build({"nope": ALL_LABELS[1]})


def test_one_class_only_is_refused_for_xgboost(stream: tuple[list[bytes], dict[str, str]]) -> None:
    values, _ = stream
    builder = FeatureBuilder()
    builder.add(parse_raw_events(values))
    all_normal = builder.build({})
    with pytest.raises(TrainingDataError, match="one class only"):
        train_all(all_normal, TrainSettings(models=(ModelName.XGBOOST,)))
    builder = FeatureBuilder()
    builder.add(parse_raw_events(values))
    unlabelled = builder.build(None)
    with pytest.raises(TrainingDataError, match="supervised"):
        train_all(unlabelled, TrainSettings(models=(ModelName.XGBOOST,)))


def test_a_byte_order_mark_before_a_training_jsonl_file_is_read_as_such(tmp_path: Path) -> None:
    from models.dataset import iter_event_file

    path = tmp_path / "events.jsonl"
    line = b'{"event_id":"e1","entity_id":"a","ts":1767571200000,"kind":"payment","amount":1.0}'
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\n")
    assert [e["event_id"] for batch in iter_event_file(path) for e in batch] == ["e1"]

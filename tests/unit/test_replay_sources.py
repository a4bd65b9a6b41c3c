"""Reading recorded streams for `anomaly replay`: formats, validation, rejects, labels.

Every bad row must come back as a reject with its line or row number and the ingest
validator's own reason; a file whose columns are wrong must fail before anything is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.events import EventError, parse_event, validate_event
from services.replay import EventSource, ReplayError
from services.replay.sources import SourceBatch, detect_format
from services.replay.writers import flat_schema, flatten, open_decisions, rejects_path

TS = 1_767_571_200_000


def _payment(i: int, **extra: object) -> dict[str, object]:
    return {"event_id": f"p{i}", "entity_id": "acct-1", "ts": TS + i, "kind": "payment",
            "amount": 10.0 + i, **extra}  # fmt: skip


def _read(source: EventSource) -> SourceBatch:
    out = SourceBatch(labels=[] if source.has_labels else None)
    for batch in source.batches():
        out.events += batch.events
        out.rejects += batch.rejects
        out.rows += batch.rows
        if out.labels is not None and batch.labels is not None:
            out.labels += batch.labels
    return out


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [("a.jsonl", "auto", "jsonl"), ("a.NDJSON", "auto", "jsonl"), ("a.pq", "auto", "parquet"),
     ("a.csv", "auto", "csv"), ("a.txt", "jsonl", "jsonl")],
)  # fmt: skip
def test_format_from_the_extension_or_the_option(name: str, fmt: str, expected: str) -> None:
    assert detect_format(Path(name), fmt) == expected


def test_unknown_extension_or_format_is_refused() -> None:
    with pytest.raises(ReplayError, match="--format"):
        detect_format(Path("a.txt"))
    with pytest.raises(ReplayError, match="--format must be"):
        detect_format(Path("a.jsonl"), "avro")


def test_jsonl_bad_lines_are_rejects_with_the_validator_reason(tmp_path: Path) -> None:
    lines = [json.dumps(_payment(0)), "{", "", json.dumps(_payment(1, amount=0)),
             json.dumps(_payment(2, colour="red")), json.dumps(_payment(3))]  # fmt: skip
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = _read(EventSource(path, batch_rows=2))
    assert got.rows == 6
    assert [e["event_id"] for e in got.events] == ["p0", "p3"]
    assert [r.line for r in got.rejects] == [2, 3, 4, 5]
    for r in got.rejects:
        with pytest.raises(EventError) as exc:
            parse_event(lines[r.line - 1].encode())
        assert r.reason == exc.value.reason and r.raw == lines[r.line - 1]
    assert got.rejects[2].field == "amount" and got.rejects[3].field == "colour"


def test_a_byte_order_mark_before_the_first_jsonl_line_is_not_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + f"{json.dumps(_payment(0))}\n{json.dumps(_payment(1))}\n".encode()
    )
    got = _read(EventSource(path))
    assert [e["event_id"] for e in got.events] == ["p0", "p1"] and got.rejects == []


def test_parquet_rows_validated_with_nulls_as_absent_and_a_label_column(tmp_path: Path) -> None:
    rows = [
        {**_payment(0), "quantity": None, "label": None},
        {**_payment(1), "quantity": 2.0, "label": "price_spike"},
        {**_payment(2), "quantity": None, "label": "no_such_label"},
        {**_payment(3), "quantity": -1.0, "label": "normal"},
    ]
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    source = EventSource(path)
    assert source.has_labels
    got = _read(source)
    assert got.events == [validate_event(_payment(0)), validate_event(_payment(1, quantity=2.0))]
    assert got.events[0]["quantity"] == 1.0  # the contract's default, as ingest fills it
    assert got.labels == ["normal", "price_spike"]
    assert [(r.line, r.field) for r in got.rejects] == [(3, "label"), (4, "quantity")]
    assert json.loads(got.rejects[1].raw)["quantity"] == -1.0


def test_table_with_wrong_columns_fails_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist([{**_payment(0), "colour": "red"}]), path)
    with pytest.raises(ReplayError, match=r"unknown column.*colour"):
        EventSource(path)
    pq.write_table(pa.Table.from_pylist([{"entity_id": "a", "ts": TS}]), path)
    with pytest.raises(ReplayError, match=r"lacks column.*kind"):
        EventSource(path)
    stamped = pa.Table.from_pylist([_payment(0)])
    stamped = stamped.set_column(2, "ts", pa.array([TS], pa.timestamp("ms")))
    pq.write_table(stamped, path)
    with pytest.raises(ReplayError, match="column ts is timestamp"):
        EventSource(path)


def test_csv_events_table_parses_numbers_and_rejects_bad_cells(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "event_id,entity_id,ts,kind,amount,country\n"
        f"a,acct-1,{TS},payment,12.5,DE\n"
        f"b,acct-1,{TS + 1},payment,lots,DE\n"
        f"c,acct-1,{TS + 2},payment,3,\n"
        f"d,acct-1,{TS + 3},payment\n"
        f"e,acct-1,{TS // 1000},payment,1,FR\n"
    )
    got = _read(EventSource(path))
    assert [e["event_id"] for e in got.events] == ["a", "c"]
    assert got.events[1]["amount"] == 3.0 and "country" not in got.events[1]
    assert [(r.line, r.field) for r in got.rejects] == [(3, "amount"), (5, None), (6, "ts")]
    assert "not a number" in got.rejects[0].reason
    assert "header has 6" in got.rejects[1].reason
    assert "was it sent in seconds" in got.rejects[2].reason


@pytest.mark.parametrize("shape", ["events", "metric series"])
def test_csv_rows_that_are_not_utf8_or_too_long_are_rejects_and_the_file_goes_on(
    tmp_path: Path, shape: str
) -> None:
    """One bad byte or a 140,000-character field used to end the replay with a traceback
    (UnicodeDecodeError, csv.Error) instead of a reject."""
    path = tmp_path / "s.csv"
    if shape == "events":
        head, good = b"event_id,entity_id,ts,kind,amount\n", f"a,acct-1,{TS},payment,1\n"
        bad_byte = f"b,acct-\xff,{TS + 1},payment,1\n".encode("latin-1")
        long = f"c,acct-1,{TS + 2},payment,{'9' * 140_000}\n".encode()
        after = f"d,acct-1,{TS + 3},payment,2\n"
    else:
        head, good = b"timestamp,value\n", f"{TS},1\n"
        bad_byte = f"{TS + 1},\xff\n".encode("latin-1")
        long = f"{TS + 2},{'9' * 140_000}\n".encode()
        after = f"{TS + 3},2\n"
    path.write_bytes(head + good.encode() + bad_byte + long + after.encode())
    got = _read(EventSource(path))
    assert len(got.events) == 2
    assert [r.line for r in got.rejects] == [3, 4]
    assert got.rejects[0].reason == "row is not valid UTF-8" and "\ufffd" in got.rejects[0].raw
    assert "field larger than field limit" in got.rejects[1].reason
    json.dumps([r.record(path) for r in got.rejects])  # the rejects file can hold them


def test_csv_metric_series_named_after_the_file_and_merged_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "disk_io.csv"
    path.write_text(
        "\ufefftimestamp,value\n"  # a byte-order mark, as spreadsheet exports write
        f"{TS + 2000},3\n"
        "2026-01-05T00:00:00Z,1\n"
        f"{TS + 1000},2\n"
        "yesterday,4\n"
        f"{TS + 3000},nan\n"
    )
    source = EventSource(path)
    assert source.shape == "metric series"
    got = _read(source)
    assert [(e["entity_id"], e["ts"], e["value"]) for e in got.events] == [
        ("disk_io", TS, 1.0), ("disk_io", TS + 1000, 2.0), ("disk_io", TS + 2000, 3.0)
    ]  # fmt: skip
    assert got.events[0]["event_id"] == f"disk_io:{TS}"
    assert [(r.line, r.field) for r in got.rejects] == [(5, "timestamp"), (6, "value")]
    assert "must be finite" in got.rejects[1].reason
    assert got.rows == 5


def test_csv_that_is_neither_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("time,reading\n1,2\n")
    with pytest.raises(ReplayError, match=r"metric series.*events table"):
        EventSource(path)
    path.write_text("timestamp,value,host\n1,2,a\n")
    with pytest.raises(ReplayError, match=r"unknown column.*host"):
        EventSource(path)


def _record(i: int) -> dict[str, object]:
    return {
        "event_id": f"e{i}", "entity_id": "a", "ts": TS, "decided_at": TS, "anomalous": False,
        "alert": False, "score": 0.5, "threshold": 0.9, "anomaly_type": None,
        "strategy": "weighted", "degraded": i == 1,
        "model_scores": {"xgboost": 0.5, "transformer": None},
        "model_versions": {"xgboost": "2"}, "explanation": "x",
        "top_features": [{"feature": "log_amount", "z": 4.0}], "new_field": {"k": i},
    }  # fmt: skip


def test_flattened_decisions_keep_every_field(tmp_path: Path) -> None:
    records = [_record(0), _record(1)]
    table = flatten(records, flat_schema(records[0]))
    row = table.to_pylist()[1]
    assert row["model_scores.xgboost"] == 0.5 and row["model_scores.transformer"] is None
    assert row["model_scores.isolation_forest"] is None
    assert row["model_versions.xgboost"] == "2" and row["degraded"] is True
    assert json.loads(row["top_features"]) == [{"feature": "log_amount", "z": 4.0}]
    assert json.loads(row["new_field"]) == {"k": 1}  # a field the writer does not know


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_decision_file_appears_only_when_committed(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"d{suffix}"
    writer = open_decisions(out)
    writer.write([_record(0)])
    assert not out.exists()
    writer.commit()
    assert out.exists() and not out.with_name(out.name + ".partial").exists()
    empty = open_decisions(tmp_path / f"empty{suffix}")
    empty.commit()
    assert (tmp_path / f"empty{suffix}").exists()
    assert rejects_path(out) == tmp_path / "d.rejects.jsonl"

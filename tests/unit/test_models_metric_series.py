"""Reading user metric tables: what a spreadsheet export or a broken file gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import TrainingDataError
from models.metric_series import read_metric_series, score_metric_series


def _table(path: Path, rows: int = 5) -> bytes:
    return b"timestamp,value\n" + b"".join(
        f"{1_767_571_200_000 + i * 60_000},{i}.5\n".encode() for i in range(rows)
    )


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "cpu.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _table(path))
    events = read_metric_series([path])
    assert [e["value"] for e in events] == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert events[0]["entity_id"] == "cpu"


def test_a_row_that_is_not_utf8_is_named_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "cpu.csv"
    lines = _table(path, rows=4000).splitlines(keepends=True)
    lines[3000] = b"1767751200000,\xff\xfe\n"  # line 3001, far past the first decoded block
    path.write_bytes(b"".join(lines))
    with pytest.raises(TrainingDataError, match=r"cpu\.csv, line 3001: not valid UTF-8"):
        read_metric_series([path])


def test_a_field_over_the_csv_limit_is_a_training_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cpu.csv"
    path.write_bytes(_table(path) + b'1767572000000,"' + b"9" * 200_000 + b'"\n')
    with pytest.raises(TrainingDataError, match=r"line 7: not a CSV row \(field larger"):
        read_metric_series([path])


def test_a_fit_fraction_out_of_range_is_a_training_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cpu.csv"
    path.write_bytes(_table(path))
    with pytest.raises(TrainingDataError, match="fit_fraction"):
        score_metric_series(read_metric_series([path]), fit_fraction=0.05)

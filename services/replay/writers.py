"""Where a replay's decisions and rejects go: JSONL, Parquet or CSV, chosen by extension.

JSONL lines are the `scores` topic's records (`ScoredBatch.record`) unchanged, plus `label`
when ground truth was given. Parquet and CSV are tables, so the two maps of a record are
flattened into one column per model in pandas' `json_normalize` style
(`model_scores.xgboost`, `model_versions.xgboost`) and `top_features` is kept as JSON text.

A file is written under `<name>.partial` and renamed into place only once it is complete and
flushed to disk, so a replay that stops half-way never leaves a file that looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson
import pyarrow as pa

from services.common.model_names import ModelName
from services.replay.errors import ReplayError
from services.replay.sources import Format, detect_format

PARQUET_ROWS_PER_GROUP: Final = 65_536


_SCALARS: Final[dict[str, pa.DataType]] = {
    "event_id": pa.string(),
    "entity_id": pa.string(),
    "ts": pa.int64(),
    "decided_at": pa.int64(),
    "anomalous": pa.bool_(),
    "alert": pa.bool_(),
    "score": pa.float64(),
    "threshold": pa.float64(),
    "anomaly_type": pa.string(),
    "strategy": pa.string(),
    "degraded": pa.bool_(),
    "explanation": pa.string(),
    "label": pa.string(),
}
_PER_MODEL: Final[dict[str, pa.DataType]] = {
    "model_scores": pa.float64(),
    "model_versions": pa.string(),
}

_EMPTY_RECORD: Final[dict[str, Any]] = {
    **dict.fromkeys(list(_SCALARS)[:11]),
    "model_scores": {},
    "model_versions": {},
    "explanation": None,
    "top_features": None,
}
"""The keys of a decision record, in its order: the columns of a file with no decisions."""


def flat_schema(record: Mapping[str, Any]) -> pa.Schema:
    """Columns of a decisions table (Parquet, CSV), in the order of the record's keys.

    Fields this module does not know (the record may grow) become JSON text columns rather
    than being left out.
    """
    fields: list[tuple[str, pa.DataType]] = []
    for key in record:
        if key in _PER_MODEL:
            fields.extend((f"{key}.{m.value}", _PER_MODEL[key]) for m in ModelName)
        else:
            fields.append((key, _SCALARS.get(key, pa.string())))
    return pa.schema(fields)


def flatten(records: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Records of `ScoredBatch.record` as a table of `schema` (from `flat_schema`)."""
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for record in records:
        for key, value in record.items():
            if key in _PER_MODEL:
                for m in ModelName:
                    columns[f"{key}.{m.value}"].append(value.get(m.value))
            elif key in _SCALARS:
                columns[key].append(value)
            else:
                columns[key].append(orjson.dumps(value).decode())
    return pa.Table.from_pydict(columns, schema=schema)


class DecisionWriter(Protocol):
    """Takes decisions batch by batch; `commit` makes the file appear."""

    path: Path

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append decisions."""

    def commit(self) -> None:
        """Flush, sync and move the finished file into place."""

    def abort(self) -> None:
        """Close without moving the file into place (it stays as `.partial`)."""


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _sync_and_rename(tmp: Path, path: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _open(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _partial(path).open("wb", buffering=1 << 20)
    except OSError as exc:
        raise ReplayError(f"cannot write {path}: {exc.strerror}") from None


class JsonlWriter:
    """Decisions (or rejects) as JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = _open(path)
        self.rows = 0

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records, one JSON object per line."""
        self._file.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        self.rows += len(records)

    def commit(self) -> None:
        """Flush, sync and rename into place."""
        self._file.close()
        _sync_and_rename(_partial(self.path), self.path)

    def abort(self) -> None:
        """Close, leaving the `.partial` file."""
        self._file.close()


class ParquetWriter:
    """Decisions as a Parquet table (zstd, row groups of PARQUET_ROWS_PER_GROUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _open(path).close()
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Buffer records; a row group is written once enough have arrived."""
        if not records:
            return
        if self._schema is None:
            import pyarrow.parquet as pq

            self._schema = flat_schema(records[0])
            self._writer = pq.ParquetWriter(
                str(_partial(self.path)), self._schema, compression="zstd"
            )
        self._pending.append(flatten(records, self._schema))
        self._pending_rows += len(records)
        if self._pending_rows >= PARQUET_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0

    def commit(self) -> None:
        """Write the last row group and the footer, sync and rename into place."""
        if self._writer is None:  # no decisions at all: an empty table of the known columns
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(str(_partial(self.path)), flat_schema(_EMPTY_RECORD))
        self._flush()
        self._writer.close()
        _sync_and_rename(_partial(self.path), self.path)

    def abort(self) -> None:
        """Close, leaving the `.partial` file."""
        if self._writer is not None:
            self._writer.close()


class CsvWriter:
    """Decisions as CSV with a header row (empty cell = null)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = _open(path)
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records (the header comes with the first ones)."""
        if not records:
            return
        if self._schema is None:
            import pyarrow.csv as pacsv

            self._schema = flat_schema(records[0])
            self._writer = pacsv.CSVWriter(self._file, self._schema)
        self._writer.write_table(flatten(records, self._schema))

    def commit(self) -> None:
        """Flush, sync and rename into place."""
        if self._writer is None:  # no decisions at all: the header alone
            import pyarrow.csv as pacsv

            pacsv.CSVWriter(self._file, flat_schema(_EMPTY_RECORD)).close()
        else:
            self._writer.close()
        self._file.close()
        _sync_and_rename(_partial(self.path), self.path)

    def abort(self) -> None:
        """Close, leaving the `.partial` file."""
        if self._writer is not None:
            self._writer.close()
        self._file.close()


def output_format(path: Path) -> Format:
    """The decisions format the output's extension names."""
    try:
        return detect_format(path)
    except ReplayError:
        raise ReplayError(
            f"--out {path}: name the decisions file .jsonl, .parquet or .csv (it picks the format)"
        ) from None


def open_decisions(path: Path) -> DecisionWriter:
    """A writer for the format `path`'s extension names."""
    fmt = output_format(path)
    if fmt == "parquet":
        return ParquetWriter(path)
    if fmt == "csv":
        return CsvWriter(path)
    return JsonlWriter(path)


def rejects_path(out: Path) -> Path:
    """`decisions.parquet` -> `decisions.rejects.jsonl`, next to the decisions."""
    return out.with_name(f"{out.stem}.rejects.jsonl")

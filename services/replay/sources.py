"""Recorded streams read back as validated events, with every bad row kept as a reject.

Three shapes of file, each validated by the ingest service's own validator
(`services.common.events`), so an event the replay accepts is one ingest would accept:

* **JSONL**: one event of the contract per line (`anomaly generate --to jsonl` writes it).
  Every line goes through `parse_event`, as a Kafka message value would: a blank line is an
  empty payload and is rejected like one.
* **Parquet** or **CSV events table**: one column per event field (the columns
  `anomaly generate --to parquet` writes); an empty cell is an absent field.
* **CSV metric series**: `timestamp,value` with an optional `entity_id` column (otherwise the
  series is named after the file), exactly what `models.metric_series` reads; samples become
  `metric` events merged in time order (stable), so the file is read whole first.

Parquet and CSV may carry a `label` column (one of `ALL_LABELS`, empty = normal) as the
ground truth. An invalid row never stops the replay and is never dropped: it comes back as a
`Reject` with its line (JSONL, CSV; the CSV header is line 1) or row number (Parquet, from 1)
and the validator's reason. A file whose *columns* are wrong is a `ReplayError`: every row
would be rejected for the same reason.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from models.dataset import LABEL_CODE, events_table_problem
from models.errors import TrainingDataError
from models.metric_series import timestamp_ms as metric_timestamp_ms
from services.common.anomaly_types import ALL_LABELS, NORMAL_LABEL
from services.common.events import Event, EventError, parse_event, validate_event
from services.replay.errors import ReplayError

Format = Literal["jsonl", "parquet", "csv"]
FORMATS: Final[tuple[Format, ...]] = ("jsonl", "parquet", "csv")
_SUFFIXES: Final[dict[str, Format]] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
}  # fmt: skip
LABEL_COLUMN: Final = "label"
SERIES_COLUMNS: Final = frozenset({"timestamp", "value", "entity_id", LABEL_COLUMN})
_INTEGER_COLUMNS: Final = frozenset({"ts"})
_NUMBER_COLUMNS: Final = frozenset({"amount", "value", "quantity", "spread_bps"})


@dataclass(frozen=True, slots=True)
class Reject:
    """A row the validator refused, kept with where it was and why."""

    line: int
    """JSONL/CSV: line of the file (CSV header = 1); Parquet: row number from 1."""
    reason: str
    field: str | None
    raw: str
    """The line as text, or the row as JSON."""

    def record(self, source: Path) -> dict[str, Any]:
        """One line of the rejects file."""
        return {
            "source": str(source),
            "line": self.line,
            "reason": self.reason,
            "field": self.field,
            "raw": self.raw,
        }


_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")
"""What `errors="surrogateescape"` makes of bytes that are not UTF-8."""


def _csv_rows(reader: Any) -> Iterator[tuple[int, list[str] | Reject]]:
    """(line, cells) per CSV row after the header; a row the csv module cannot split (a
    field over its size limit, a NUL byte) is a Reject of its own, and the file goes on."""
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, Reject(0, f"not a CSV row: {exc}", None, "")
            continue
        yield reader.line_num, cells


@dataclass(slots=True)
class SourceBatch:
    """The next rows of a file: valid events in file order, and the rejected rows."""

    events: list[Event] = field(default_factory=list)
    labels: list[str] | None = None
    """Per event, its label from the file's `label` column; None when there is no column."""
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0
    """Lines or rows read, valid or not."""


def detect_format(path: Path, fmt: str = "auto") -> Format:
    """`fmt`, or the format the extension names when `fmt` is auto."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ReplayError(f"--format must be auto, {', '.join(FORMATS)}; got {fmt!r}")
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ReplayError(
            f"{path}: cannot tell the format from {path.suffix or 'no extension'!r}; name the "
            "file .jsonl, .parquet or .csv, or pass --format"
        )
    return found


class EventSource:
    """A recorded stream, opened and checked; `batches()` reads it once, in file order."""

    def __init__(self, path: Path, fmt: str = "auto", batch_rows: int = 10_000) -> None:
        if not path.is_file():
            raise ReplayError(f"{path}: no such file")
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        self.path = path
        self.format: Format = detect_format(path, fmt)
        self.batch_rows = batch_rows
        self.shape = "events"
        """`events` or `metric series` (CSV with timestamp,value)."""
        self.has_labels = False
        """Whether the file carries a `label` column."""
        self._columns: list[str] = []
        if self.format == "parquet":
            self._open_parquet()
        elif self.format == "csv":
            self._open_csv()

    # ------------------------------------------------------------------ opening

    def _open_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.ParquetFile(str(self.path)).schema_arrow
        except (OSError, ValueError) as exc:
            raise ReplayError(f"{self.path}: cannot read as Parquet: {exc}") from None
        self._check_event_columns(schema.names)
        ts = schema.field("ts").type
        if not (pa.types.is_integer(ts) or pa.types.is_floating(ts)):
            raise ReplayError(
                f"{self.path}: column ts is {ts}; the contract wants ms since the epoch as an "
                "integer (cast it, e.g. `table['ts'].cast('int64')` of a ms timestamp)"
            )

    def _open_csv(self) -> None:
        with self.path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            try:
                header = next(csv.reader(fh), None)
            except csv.Error as exc:
                raise ReplayError(f"{self.path}: cannot read the CSV header: {exc}") from None
        if not header:
            raise ReplayError(f"{self.path}: empty CSV file (expected a header row)")
        names = [h.strip() for h in header]
        if "kind" not in names and {"timestamp", "value"} <= set(names):
            extra = sorted(set(names) - SERIES_COLUMNS)
            if extra:
                raise ReplayError(
                    f"{self.path}: metric series has unknown column(s): {', '.join(extra)} "
                    "(expected timestamp, value, optional entity_id and label)"
                )
            self.shape = "metric series"
            self.has_labels = LABEL_COLUMN in names
            self._columns = names
            return
        if "kind" not in names:
            raise ReplayError(
                f"{self.path}: a CSV file is either a metric series (timestamp,value"
                "[,entity_id]) or an events table with a kind column; its header is "
                f"{','.join(names)}"
            )
        self._check_event_columns(names)
        self._columns = names

    def _check_event_columns(self, names: Sequence[str]) -> None:
        problem = events_table_problem(names, also_allowed=frozenset({LABEL_COLUMN}))
        if problem is not None:
            raise ReplayError(f"{self.path}: {problem}")
        self.has_labels = LABEL_COLUMN in names

    # ------------------------------------------------------------------ reading

    def batches(self) -> Iterator[SourceBatch]:
        """Batches of at most `batch_rows` rows (valid or rejected), in file order."""
        if self.format == "jsonl":
            return self._jsonl()
        if self.format == "parquet":
            return self._parquet()
        if self.shape == "metric series":
            return self._metric_series()
        return self._csv_events()

    def _new_batch(self) -> SourceBatch:
        return SourceBatch(labels=[] if self.has_labels else None)

    def _jsonl(self) -> Iterator[SourceBatch]:
        batch = self._new_batch()
        with self.path.open("rb") as fh:
            for line_no, line in enumerate(fh, start=1):
                raw = line.strip()
                if line_no == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)  # an editor's byte-order mark
                batch.rows += 1
                try:
                    batch.events.append(parse_event(raw))
                except EventError as exc:
                    text = raw.decode("utf-8", errors="replace")
                    batch.rejects.append(Reject(line_no, exc.reason, exc.field, text))
                if batch.rows >= self.batch_rows:
                    yield batch
                    batch = self._new_batch()
        if batch.rows:
            yield batch

    def _parquet(self) -> Iterator[SourceBatch]:
        import pyarrow.parquet as pq

        row_no = 0
        for table in pq.ParquetFile(str(self.path)).iter_batches(batch_size=self.batch_rows):
            batch = self._new_batch()
            for row in table.to_pylist():
                row_no += 1
                self._add_row(batch, row_no, row, _absent_cells_dropped(row))
            yield batch

    def _csv_events(self) -> Iterator[SourceBatch]:
        with self.path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            next(reader)  # the header, checked when the file was opened
            batch = self._new_batch()
            for line_no, cells in _csv_rows(reader):
                row = self._cells(cells)
                if isinstance(row, Reject):
                    batch.rows += 1
                    batch.rejects.append(Reject(line_no, row.reason, row.field, row.raw))
                else:
                    self._add_row(batch, line_no, row, _typed_cells(row))
                if batch.rows >= self.batch_rows:
                    yield batch
                    batch = self._new_batch()
            if batch.rows:
                yield batch

    def _metric_series(self) -> Iterator[SourceBatch]:
        samples: list[tuple[Event, str]] = []
        rejects: list[Reject] = []
        rows = 0
        with self.path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            next(reader)
            for line_no, cells in _csv_rows(reader):
                rows += 1
                row = self._cells(cells)
                if isinstance(row, Reject):
                    rejects.append(Reject(line_no, row.reason, row.field, row.raw))
                    continue
                sample = self._sample(row)
                if isinstance(sample, Reject):
                    rejects.append(Reject(line_no, sample.reason, sample.field, sample.raw))
                else:
                    samples.append(sample)
        samples.sort(key=lambda s: int(s[0]["ts"]))  # stable: as models.metric_series merges
        if not samples:
            yield SourceBatch(labels=[] if self.has_labels else None, rejects=rejects, rows=rows)
            return
        for start in range(0, len(samples), self.batch_rows):
            part = samples[start : start + self.batch_rows]
            batch = SourceBatch(
                events=[s[0] for s in part],
                labels=[s[1] for s in part] if self.has_labels else None,
                rejects=rejects if start == 0 else [],
                rows=len(part) + (len(rejects) if start == 0 else 0),
            )
            yield batch

    # ------------------------------------------------------------------ rows

    def _cells(self, cells: list[str] | Reject) -> dict[str, str] | Reject:
        if isinstance(cells, Reject):
            return cells
        raw = ",".join(cells)
        if _UNDECODABLE.search(raw):  # bytes that were not UTF-8 (read with surrogateescape)
            shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return Reject(0, "row is not valid UTF-8", None, shown)
        if len(cells) != len(self._columns):
            return Reject(
                0,
                f"row has {len(cells)} cells, the header has {len(self._columns)}",
                None,
                raw,
            )
        return dict(zip(self._columns, cells, strict=True))

    def _sample(self, row: Mapping[str, str]) -> tuple[Event, str] | Reject:
        raw = orjson.dumps(row).decode()
        label = _label(row.get(LABEL_COLUMN))
        if isinstance(label, Reject):
            return Reject(0, label.reason, label.field, raw)
        try:
            ts = metric_timestamp_ms(row["timestamp"], "field 'timestamp'")
        except TrainingDataError as exc:
            return Reject(0, str(exc), "timestamp", raw)
        try:
            value: Any = float(row["value"])
        except ValueError:
            return Reject(0, f"field 'value' is {row['value']!r}, not a number", "value", raw)
        obj = {
            "entity_id": row.get("entity_id") or self.path.stem,
            "ts": ts,
            "kind": "metric",
            "value": value,
        }
        try:
            return validate_event(obj), label
        except EventError as exc:
            return Reject(0, exc.reason, exc.field, raw)

    def _add_row(
        self, batch: SourceBatch, where: int, row: Mapping[str, Any], cells: dict[str, Any] | Reject
    ) -> None:
        """Validate one table row into `batch` (event and label, or a reject)."""
        batch.rows += 1
        raw = orjson.dumps(row, default=str).decode()
        if isinstance(cells, Reject):
            batch.rejects.append(Reject(where, cells.reason, cells.field, raw))
            return
        label = NORMAL_LABEL
        if self.has_labels:
            given = _label(cells.pop(LABEL_COLUMN, None))
            if isinstance(given, Reject):
                batch.rejects.append(Reject(where, given.reason, given.field, raw))
                return
            label = given
        try:
            event = validate_event(cells)
        except EventError as exc:
            batch.rejects.append(Reject(where, exc.reason, exc.field, raw))
            return
        batch.events.append(event)
        if batch.labels is not None:
            batch.labels.append(label)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _absent_cells_dropped(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Parquet row as an event object: empty cells (null, NaN) are absent fields."""
    return {k: v for k, v in row.items() if not _is_empty(v)}


def _typed_cells(row: Mapping[str, str]) -> dict[str, Any] | Reject:
    """A CSV row as an event object: numbers parsed, empty cells absent."""
    out: dict[str, Any] = {}
    for name, cell in row.items():
        text = cell.strip()
        if not text:
            continue
        if name in _INTEGER_COLUMNS or name in _NUMBER_COLUMNS:
            try:
                out[name] = (
                    int(text) if name in _INTEGER_COLUMNS and _is_integer(text) else float(text)
                )
            except ValueError:
                return Reject(0, f"field '{name}' is {text!r}, not a number", name, "")
        else:
            out[name] = text
    return out


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _label(value: Any) -> str | Reject:
    """A `label` cell: empty is normal; anything outside ALL_LABELS is refused."""
    if _is_empty(value):
        return NORMAL_LABEL
    text = str(value).strip()
    if text not in LABEL_CODE:
        return Reject(
            0, f"field 'label' is {text!r}, expected one of: {', '.join(ALL_LABELS)}", "label", ""
        )
    return text

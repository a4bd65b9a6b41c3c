"""Labelled feature matrices from recorded event streams: the input of training and evaluation.

Features are computed by the shared `FeatureEngine` (the one the ingest service runs), fed in
stream order in micro-batches, so a model is trained on exactly the vectors it will be
served; nothing here recomputes a feature another way.

Accepted inputs (documented for users bringing their own data):

* **events**: JSONL (one event per line, the contract of `anomaly schema show`), Parquet or
  CSV. Table formats carry one column per event field: required `entity_id`, `ts`
  (ms since the epoch), `kind` (`trade`, `payment` or `metric`) and `amount` (transactions)
  or `value` (metric samples); optional `event_id` (required for labelled transactions),
  `quantity`, `spread_bps`, `instrument`, `counterparty`, `country`, `channel`, `currency`.
  Empty cells (null/NaN) mean "field absent". Rows must be in stream (arrival) order.
* **labels** (optional): JSONL, Parquet or CSV with `event_id` and `label` (one of
  `ALL_LABELS`; optional `entity_id` and `ts` are ignored). Events without a label are
  normal, as in the generator's side file.

Every problem is raised as `TrainingDataError` naming the file, the row and the field.
"""

from __future__ import annotations

import codecs
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from models.errors import TrainingDataError
from models.progress import Progress, Throttle, silent
from services.common.anomaly_types import ALL_LABELS, NORMAL_LABEL
from services.common.events import Event, EventError, parse_event, validate_event
from services.common.events.schema import METRIC_FIELDS, TRANSACTION_FIELDS
from services.common.features.columns import EventColumns, columns_from_events
from services.common.features.definition import FEATURE_NAMES
from services.common.features.engine import BatchFeatures, EngineSettings, FeatureEngine

if TYPE_CHECKING:
    from services.generator import StreamSpec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

FEATURE_BATCH_EVENTS: Final = 1_000
"""Events per engine call. Only `global_rate_1m` depends on batch boundaries (it is
batch-granular); 1,000 events lies between the ingest service's micro-batches at low and at
full rate (100 ms of a 1,000 to 50,000 events/s stream), so the feature is computed the way
it will be served, give or take a batch."""

FILE_BATCH_ROWS: Final = 10_000
LABEL_CODE: Final[dict[str, int]] = {label: i for i, label in enumerate(ALL_LABELS)}
EVENT_FIELDS: Final = frozenset(f.name for f in (*TRANSACTION_FIELDS, *METRIC_FIELDS))
REQUIRED_EVENT_COLUMNS: Final = ("entity_id", "ts", "kind")
LABEL_COLUMNS: Final = frozenset({"event_id", "label", "entity_id", "ts"})


@dataclass(frozen=True, slots=True, eq=False)
class LabelledFeatures:
    """A stream's feature rows in stream order, with ground truth where known."""

    matrix: F32
    """(n, len(FEATURE_NAMES)) float32, columns in FEATURE_NAMES order."""
    labels: I8
    """Index into ALL_LABELS per row (0 = normal, also for unlabelled data)."""
    entity: I64
    """Dense entity code per row (index into `entity_names`): sequences group by it."""
    entity_names: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    ts: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    labelled: bool = True
    """False when no ground truth was given: supervised training is then refused."""

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def validate(self) -> None:
        """Raise TrainingDataError unless the rows can be trained on."""
        if self.matrix.ndim != 2 or self.matrix.shape[1] != len(FEATURE_NAMES):
            shape = tuple(self.matrix.shape)
            raise TrainingDataError(
                f"feature matrix must have {len(FEATURE_NAMES)} columns (FEATURE_NAMES), "
                f"got shape {shape}"
            )
        if len(self) == 0:
            raise TrainingDataError("the data set is empty: no events to train on")
        n = len(self)
        if self.labels.shape != (n,) or self.entity.shape != (n,):
            raise TrainingDataError(
                f"labels {self.labels.shape} and entity codes {self.entity.shape} "
                f"must have one value per row ({n})"
            )
        bad = ~np.isfinite(self.matrix)
        if bad.any():
            counts = bad.sum(axis=0)
            named = ", ".join(
                f"{FEATURE_NAMES[i]} ({int(counts[i])} rows)" for i in np.flatnonzero(counts)[:5]
            )
            raise TrainingDataError(f"features contain NaN or infinite values: {named}")
        if self.labels.min() < 0 or self.labels.max() >= len(ALL_LABELS):
            raise TrainingDataError(f"label codes must index ALL_LABELS (0..{len(ALL_LABELS) - 1})")

    def data_hash(self) -> str:
        """SHA-256 of features, labels and entity grouping: identifies the training data."""
        digest = hashlib.sha256()
        for arr in (self.matrix, self.labels, self.entity):
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()

    def events_per_s(self) -> float | None:
        """Events per second of event time over the whole data set (None: no timestamps).

        Recorded with every model because the count and rate features scale with it: a
        model serves traffic of about this rate best (see `anomaly train --event-rate`).
        """
        if self.ts.size < 2:
            return None
        span_ms = int(self.ts.max()) - int(self.ts.min())
        if span_ms <= 0:
            return None
        return round((self.ts.size - 1) * 1000.0 / span_ms, 1)

    def label_counts(self) -> dict[str, int]:
        """Rows per label, ALL_LABELS order, zero counts included."""
        counts = np.bincount(self.labels.astype(np.int64), minlength=len(ALL_LABELS))
        return {label: int(c) for label, c in zip(ALL_LABELS, counts, strict=True)}

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, Any],
        label_column: str | None = "label",
        entity_column: str = "entity_id",
    ) -> LabelledFeatures:
        """Rows of precomputed features (e.g. read back from the `features` topic).

        `columns` maps column names to equal-length columns (a dict of arrays, or a pandas
        DataFrame): one per feature, the entity id column, optionally the label column
        (empty = normal), `event_id` and `ts`. Missing or unknown columns are refused.
        """
        names = {str(c) for c in columns.keys()}  # noqa: SIM118 - DataFrames are not dicts
        missing = [name for name in FEATURE_NAMES if name not in names]
        if entity_column not in names:
            missing.append(entity_column)
        if missing:
            raise TrainingDataError(f"feature table lacks column(s): {', '.join(missing)}")
        known = {*FEATURE_NAMES, entity_column, "event_id", "ts"}
        if label_column:
            known.add(label_column)
        extra = sorted(names - known)
        if extra:
            raise TrainingDataError(
                f"feature table has unknown column(s): {', '.join(extra)} "
                f"(expected the {len(FEATURE_NAMES)} FEATURE_NAMES, {entity_column!r}"
                + (f", {label_column!r}" if label_column else "")
                + ", optional 'event_id' and 'ts')"
            )
        matrix = np.column_stack(
            [np.asarray(columns[name], dtype=np.float32) for name in FEATURE_NAMES]
        )
        entity_codes: dict[str, int] = {}
        entity = np.asarray(
            [entity_codes.setdefault(str(e), len(entity_codes)) for e in columns[entity_column]],
            dtype=np.int64,
        )
        labelled = label_column is not None and label_column in names
        if labelled and label_column is not None:
            raw_labels = [_text_or(v, NORMAL_LABEL) for v in columns[label_column]]
            labels = _label_codes(raw_labels, "feature table")
        else:
            labels = np.zeros(len(entity), dtype=np.int8)
        return cls(
            matrix=np.ascontiguousarray(matrix, dtype=np.float32),
            labels=labels,
            entity=entity,
            entity_names=tuple(entity_codes),
            event_ids=tuple(str(e) for e in columns["event_id"]) if "event_id" in names else (),
            ts=np.asarray(columns["ts"], np.int64) if "ts" in names else np.empty(0, np.int64),
            labelled=labelled,
        )


def _text_or(value: Any, default: str) -> str:
    """A cell as text, `default` when empty (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return str(value)


def _label_codes(values: Iterable[str], where: str) -> I8:
    out = []
    for value in values:
        code = LABEL_CODE.get(value)
        if code is None:
            raise TrainingDataError(
                f"{where}: unknown label {value!r} (expected one of: {', '.join(ALL_LABELS)})"
            )
        out.append(code)
    return np.asarray(out, dtype=np.int8)


# --------------------------------------------------------------------------- reading files


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise TrainingDataError(f"{path}: unknown file type {suffix!r} (use .jsonl, .parquet or .csv)")


def _row_to_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row as an event object: empty cells (None, NaN) are absent fields."""
    return {
        k: v
        for k, v in row.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    }


def events_table_problem(
    columns: Sequence[str], also_allowed: frozenset[str] = frozenset()
) -> str | None:
    """Why a table with these columns is not an events table, or None.

    One statement of the table contract for every reader of user files (training here, the
    replay with its optional label column), so they accept and refuse the same headers.
    """
    names = set(columns)
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in names]
    if "amount" not in names and "value" not in names:
        missing.append("amount (transactions) or value (metrics)")
    if missing:
        return f"events table lacks column(s): {', '.join(missing)}"
    extra = sorted(names - EVENT_FIELDS - also_allowed)
    if extra:
        allowed = ", ".join(sorted(EVENT_FIELDS))
        if also_allowed:
            allowed += " and " + ", ".join(sorted(also_allowed))
        return f"events table has unknown column(s): {', '.join(extra)} (allowed: {allowed})"
    return None


def _check_event_columns(path: Path, columns: Sequence[str]) -> None:
    problem = events_table_problem(columns)
    if problem is not None:
        raise TrainingDataError(f"{path}: {problem}")


def _table_batches(path: Path, fmt: str, batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        pf = pq.ParquetFile(str(path))
        _check_event_columns(path, pf.schema_arrow.names)
        for batch in pf.iter_batches(batch_size=batch_rows):
            yield batch.to_pylist()
        return
    convert = pacsv.ConvertOptions(
        column_types={"ts": "int64", "amount": "float64", "value": "float64",
                      "quantity": "float64", "spread_bps": "float64"},
        strings_can_be_null=True,
    )  # fmt: skip
    with pacsv.open_csv(str(path), convert_options=convert) as reader:
        _check_event_columns(path, reader.schema.names)
        for batch in reader:
            yield batch.to_pylist()


def iter_event_file(path: Path, batch_rows: int = FILE_BATCH_ROWS) -> Iterator[list[Event]]:
    """Validated events of a JSONL, Parquet or CSV file, in file order, in batches."""
    fmt = _format(path)
    if not path.exists():
        raise TrainingDataError(f"{path}: no such events file")
    if fmt == "jsonl":
        with path.open("rb") as fh:
            batch: list[Event] = []
            for line_no, line in enumerate(fh, start=1):
                raw = line.strip()
                if line_no == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)  # an editor's byte-order mark
                if not raw:
                    continue
                try:
                    batch.append(parse_event(raw))
                except EventError as exc:
                    raise TrainingDataError(f"{path}, line {line_no}: {exc.reason}") from None
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
            if batch:
                yield batch
        return
    row_no = 0
    try:
        for rows in _table_batches(path, fmt, batch_rows):
            events: list[Event] = []
            for row in rows:
                row_no += 1
                try:
                    events.append(validate_event(_row_to_event(row)))
                except EventError as exc:
                    raise TrainingDataError(f"{path}, row {row_no}: {exc.reason}") from None
            yield events
    except (OSError, ValueError) as exc:
        if isinstance(exc, TrainingDataError):
            raise
        raise TrainingDataError(f"{path}: cannot read as {fmt}: {exc}") from None


def _read_table(path: Path, fmt: str) -> dict[str, list[Any]]:
    """A small table (labels) as columns of Python values."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if fmt == "jsonl":
        table = pajson.read_json(str(path))
    elif fmt == "parquet":
        table = pq.read_table(str(path))
    else:
        table = pacsv.read_csv(
            str(path),
            convert_options=pacsv.ConvertOptions(
                column_types={"event_id": "string", "label": "string"}
            ),
        )
    columns: dict[str, list[Any]] = table.to_pydict()
    return columns


def check_table_columns(
    table: str, names: Iterable[str], required: set[str], allowed: frozenset[str], expected: str
) -> None:
    """TrainingDataError naming the missing or unknown columns of `table` (a file's table,
    as the message should call it): a misspelt column must not pass as an absent one."""
    present = set(names)
    missing = sorted(required - present)
    if missing:
        raise TrainingDataError(f"{table} lacks column(s): {', '.join(missing)}")
    extra = sorted(present - allowed)
    if extra:
        raise TrainingDataError(
            f"{table} has unknown column(s): {', '.join(extra)} (expected {expected})"
        )


def read_labels(path: Path) -> dict[str, str]:
    """event_id -> label of a labels file (JSONL, Parquet or CSV)."""
    fmt = _format(path)
    if not path.exists():
        raise TrainingDataError(f"{path}: no such labels file")
    if path.stat().st_size == 0:
        return {}
    try:
        columns = _read_table(path, fmt)
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"{path}: cannot read labels: {exc}") from None
    check_table_columns(
        f"{path}: labels table", columns, {"event_id", "label"}, LABEL_COLUMNS,
        "event_id, label, optional entity_id and ts",
    )  # fmt: skip
    event_ids, values = columns["event_id"], columns["label"]
    if any(v is None for v in event_ids) or any(v is None for v in values):
        raise TrainingDataError(f"{path}: labels table has empty event_id or label cells")
    labels = {str(e): str(v) for e, v in zip(event_ids, values, strict=True)}
    _label_codes(set(labels.values()), str(path))
    return labels


def parse_raw_events(raws: Sequence[bytes], where: str = "events") -> list[Event]:
    """Validate JSON event payloads (e.g. generator output held in memory)."""
    out: list[Event] = []
    for i, raw in enumerate(raws):
        try:
            out.append(parse_event(raw))
        except EventError as exc:
            raise TrainingDataError(f"{where}, event {i}: {exc.reason}") from None
    return out


# --------------------------------------------------------------------------- features


def feature_batches(
    engine: FeatureEngine, events: Sequence[Event]
) -> Iterator[tuple[EventColumns, BatchFeatures]]:
    """Events through `engine` in stream order, FEATURE_BATCH_EVENTS at a time.

    The one way a recorded stream is featurized (training, evaluation and the replay), so the
    batch-granular `global_rate_1m` comes out the same wherever a model meets it.
    """
    for start in range(0, len(events), FEATURE_BATCH_EVENTS):
        cols = columns_from_events(events[start : start + FEATURE_BATCH_EVENTS])
        yield cols, engine.process(cols)


class FeatureBuilder:
    """Feeds events, in stream order, through one FeatureEngine and collects the rows."""

    def __init__(self, settings: EngineSettings | None = None, progress: Progress = silent):
        self._engine = FeatureEngine(settings)
        self._matrices: list[F32] = []
        self._event_ids: list[str] = []
        self._entity_ids: list[str] = []
        self._ts: list[I64] = []
        self._progress = Throttle(progress)
        self.events = 0

    def add(self, events: Sequence[Event]) -> None:
        """Compute the features of the next events of the stream."""
        for cols, out in feature_batches(self._engine, events):
            self._matrices.append(out.matrix)
            self._event_ids.extend(cols.event_ids)
            self._entity_ids.extend(cols.entity_ids)
            self._ts.append(cols.ts)
        self.events += len(events)
        self._progress(f"[features] {self.events:,} events")

    def build(self, labels: Mapping[str, str] | None) -> LabelledFeatures:
        """The collected rows with their labels (None = unlabelled data, all normal)."""
        self._progress(f"[features] {self.events:,} events done", force=True)
        n = len(self._event_ids)
        matrix = (
            np.concatenate(self._matrices)
            if self._matrices
            else np.empty((0, len(FEATURE_NAMES)), np.float32)
        )
        codes: dict[str, int] = {}
        entity = np.fromiter(
            (codes.setdefault(e, len(codes)) for e in self._entity_ids), dtype=np.int64, count=n
        )
        label_codes = np.zeros(n, dtype=np.int8)
        if labels:
            unused = dict(labels)
            for i, event_id in enumerate(self._event_ids):
                label = unused.pop(event_id, None)
                if label is not None:
                    label_codes[i] = LABEL_CODE[label]
            if unused:
                example = next(iter(unused))
                raise TrainingDataError(
                    f"labels name {len(unused)} event id(s) absent from the events "
                    f"(e.g. {example!r}): do the labels belong to this events file?"
                )
        return LabelledFeatures(
            matrix=matrix,
            labels=label_codes,
            entity=entity,
            entity_names=tuple(codes),
            event_ids=tuple(self._event_ids),
            ts=np.concatenate(self._ts) if self._ts else np.empty(0, np.int64),
            labelled=labels is not None,
        )


def features_from_events(
    batches: Iterable[Sequence[Event]],
    labels: Mapping[str, str] | None = None,
    progress: Progress = silent,
    settings: EngineSettings | None = None,
) -> LabelledFeatures:
    """Features of validated event batches (stream order) with their labels."""
    builder = FeatureBuilder(settings, progress)
    for batch in batches:
        builder.add(batch)
    return builder.build(labels)


def generated_features(
    spec: StreamSpec, events: int, progress: Progress = silent
) -> LabelledFeatures:
    """Features and labels of the first `events` events of a generated stream, chunk by
    chunk (never written to disk, never held as one batch of raw events): what training,
    evaluation and the benchmarks score when no data file is given."""
    from services.generator import EventStream

    builder = FeatureBuilder(progress=progress)
    labels: dict[str, str] = {}
    for chunk in EventStream(spec).chunks(events):
        builder.add(parse_raw_events(chunk.values(), "generated stream"))
        labels.update((r["event_id"], r["label"]) for r in chunk.labels())
    return builder.build(labels)


def load_dataset(
    events: Path, labels: Path | None = None, progress: Progress = silent
) -> LabelledFeatures:
    """Features of an events file (JSONL/Parquet/CSV) with an optional labels file."""
    label_map = read_labels(labels) if labels is not None else None
    return features_from_events(iter_event_file(events), label_map, progress)

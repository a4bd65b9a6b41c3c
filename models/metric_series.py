"""Univariate metric series (CSV) through the same features and unsupervised models.

Input: CSV files with `timestamp,value` (one series per file, the series named after the
file) or `timestamp,value,entity_id` (several series in one file). `timestamp` is ms since
the epoch or ISO-8601 (naive = UTC). Every sample becomes an event of kind `metric`
(`services.common.events.schema`), all series are merged in time order and go through the
shared FeatureEngine, exactly as metric events on the `events` topic would.

Scoring: metric series look nothing like payments and trades, so by default the
unsupervised models (Isolation Forest, Transformer) are fitted on the series themselves,
on the first `fit_fraction` of the samples, with calibration on the rest of that part, and
then score every sample; no labels needed. Registered models can be used instead.
Output: one row per sample: entity_id, ts, value, one calibrated score per model and
`score` (their maximum).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from models.dataset import LabelledFeatures, check_table_columns, features_from_events
from models.errors import TrainingDataError
from models.progress import Progress, silent
from models.scoring import ModelScorer, score_stream
from models.training import TrainSettings, train_model
from services.common.events import Event, EventError, validate_event
from services.common.model_names import ModelName

UNSUPERVISED: Final = (ModelName.ISOLATION_FOREST, ModelName.TRANSFORMER)
_ALLOWED = frozenset({"timestamp", "value", "entity_id"})


def timestamp_ms(value: Any, where: str) -> int:
    """A sample's timestamp as ms since the epoch, from ms or ISO-8601 (naive = UTC).

    Public because the replay reads metric samples from its own sources and must accept
    exactly the timestamps this module does; `where` names the sample in the error.
    """
    if isinstance(value, int | np.integer):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TrainingDataError(
            f"{where}: timestamp {text!r} is neither ms since the epoch nor ISO-8601"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def read_metric_series(paths: Sequence[Path]) -> list[Event]:
    """Metric events of the CSV files, validated, merged in time order (stable)."""
    events: list[Event] = []
    for path in paths:
        if not path.exists():
            raise TrainingDataError(f"{path}: no such metrics file")
        # utf-8-sig: spreadsheet exports start with a byte-order mark, which would otherwise
        # become part of the first column's name ("\ufefftimestamp" is not "timestamp").
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            try:
                events.extend(_metric_events(path, reader))
            except UnicodeDecodeError:
                raise TrainingDataError(
                    f"{path}, line {_first_line_not_utf8(path)}: not valid UTF-8"
                ) from None
            except csv.Error as exc:
                raise TrainingDataError(
                    f"{path}, line {reader.line_num + 1}: not a CSV row ({exc})"
                ) from None
    events.sort(key=lambda e: int(e["ts"]))
    return events


def _metric_events(path: Path, reader: csv.DictReader[str]) -> Iterator[Event]:
    """The validated events of one metrics table, or TrainingDataError naming the row."""
    check_table_columns(
        f"{path}: metrics table", reader.fieldnames or (), {"timestamp", "value"}, _ALLOWED,
        "timestamp, value and optionally entity_id",
    )  # fmt: skip
    for line, row in enumerate(reader, start=2):
        where = f"{path}, line {line}"
        try:
            value = float(row["value"])
        except (TypeError, ValueError):
            raise TrainingDataError(f"{where}: value {row['value']!r} is not a number") from None
        obj = {
            "entity_id": row.get("entity_id") or path.stem,
            "ts": timestamp_ms(row["timestamp"], where),
            "kind": "metric",
            "value": value,
        }
        try:
            yield validate_event(obj)
        except EventError as exc:
            raise TrainingDataError(f"{where}: {exc.reason}") from None


def _first_line_not_utf8(path: Path) -> int:
    """Number of the first line that does not decode (text files decode in blocks, so the
    error itself does not say which line it was in)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def score_metric_series(
    events: Sequence[Event],
    models: Mapping[ModelName, ModelScorer] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 42,
    settings: TrainSettings | None = None,
    progress: Progress = silent,
) -> dict[str, list[Any]]:
    """Per-sample scores as columns (entity_id, ts, value, one per model, score = max);
    fits the unsupervised models on the series unless `models` is given."""
    data = features_from_events([list(events)], None, progress)
    if len(data) == 0:
        raise TrainingDataError("no metric samples to score")
    scorers = (
        dict(models) if models else _fit_on_series(data, fit_fraction, seed, settings, progress)
    )
    out: dict[str, list[Any]] = {
        "entity_id": [data.entity_names[c] for c in data.entity.tolist()],
        "ts": data.ts.tolist(),
        "value": [float(e["value"]) for e in events],
    }
    per_model = []
    for name, scorer in scorers.items():
        score = score_stream(scorer, data, progress).score
        out[name.value] = score.tolist()
        per_model.append(score)
    out["score"] = np.max(np.vstack(per_model), axis=0).tolist()
    return out


def write_scores_csv(columns: Mapping[str, Sequence[Any]], path: Path) -> int:
    """Write the columns of `score_metric_series` as CSV; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    rows = len(columns[names[0]]) if names else 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        writer.writerows(zip(*(columns[n] for n in names), strict=True))
    return rows


def _fit_on_series(
    data: LabelledFeatures,
    fit_fraction: float,
    seed: int,
    settings: TrainSettings | None,
    progress: Progress,
) -> dict[ModelName, ModelScorer]:
    if not 0.1 <= fit_fraction <= 1.0:
        raise TrainingDataError(f"fit_fraction must be within [0.1, 1], got {fit_fraction}")
    cut = max(2, int(len(data) * fit_fraction))
    part = LabelledFeatures(
        matrix=data.matrix[:cut],
        labels=data.labels[:cut],
        entity=data.entity[:cut],
        entity_names=data.entity_names,
        labelled=False,
    )
    base = settings or TrainSettings(seed=seed)
    out = {}
    for name in UNSUPERVISED:
        trained = train_model(name, part, base, progress, source="metric series")
        out[name] = ModelScorer.from_trained(trained)
    return out

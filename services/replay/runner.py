"""Running a recorded stream through the pipeline: read, featurize, score, write, count.

The stages are the production ones, in stream order: the ingest validator (sources), the
ingest window-feature engine (features), and the router's `ScoringCore` with the vote,
thresholds and flags of the given configuration. A threshold backtest is therefore: copy
`config/platform.yaml`, edit `ensemble.thresholds`, replay with `-c` on the copy, compare.

Models are reached one of two ways, both behind the core's model-client interface:
`served` calls the V2 endpoints of `serving.endpoints` with the router's own clients
(`services.router.runner.make_core`); `registry` loads the versions the flags (else the
registry's promotion) select into this process and runs them through the model server's own
code (`services.router.model_clients_local`), for a laptop backtest with no servers.
Decisions are scored `batch_size` events at a time, as the stream door scores a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from prometheus_client import CollectorRegistry

from models.dataset import read_labels
from models.errors import RegistryError, TrainingDataError
from services.common.anomaly_types import NORMAL_LABEL
from services.common.config import PlatformConfig
from services.common.events import Event
from services.common.model_names import ModelName
from services.replay.errors import ReplayError
from services.replay.features import StreamFeatures
from services.replay.sources import EventSource
from services.replay.summary import ReplaySummary, Tally
from services.replay.writers import DecisionWriter, JsonlWriter, open_decisions, rejects_path
from services.router.core import LiveConfig, ScoringCore, models_to_call
from services.router.decision_json import encode_decisions
from services.router.metrics import RouterMetrics

ModelsMode = Literal["served", "registry"]
MODES: Final[tuple[ModelsMode, ...]] = ("served", "registry")
DEFAULT_BATCH: Final = 4_096
Progress = Callable[[str], None]


def _silent(_line: str) -> None:
    """No progress output."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What to replay, where the decisions go, and how the models are reached."""

    source: Path
    out: Path
    format: str = "auto"
    """auto (from the extension), jsonl, parquet or csv."""
    labels: Path | None = None
    """Ground truth side file (event_id, label), as `anomaly generate --labels` writes."""
    models: ModelsMode = "served"
    batch_size: int = DEFAULT_BATCH
    timeout_ms: int | None = None
    """Overrides every endpoint's deadline (served): a replay is not latency-bound."""
    progress_every_s: float = 2.0


def run_replay(
    request: ReplayRequest, config: PlatformConfig, progress: Progress = _silent
) -> ReplaySummary:
    """Replay the stream; raises ReplayError for anything the user has to change."""
    if request.models not in MODES:
        raise ReplayError(f"--models must be served or registry, got {request.models!r}")
    if request.batch_size < 1:
        raise ReplayError(f"--batch-size must be at least 1, got {request.batch_size}")
    source = EventSource(request.source, request.format, batch_rows=request.batch_size)
    label_map: dict[str, str] | None = None
    if request.labels is not None:
        if source.has_labels:
            raise ReplayError(
                f"{request.source} has a label column and --labels was given too; use one"
            )
        try:
            label_map = read_labels(request.labels)
        except TrainingDataError as exc:
            raise ReplayError(str(exc)) from None
    if request.timeout_ms is not None:
        config = _with_timeout(config, request.timeout_ms)
    core = _core(config, request.models)
    writer = open_decisions(request.out)
    rejects = JsonlWriter(rejects_path(request.out))
    run = _Run(request, source, config, core, writer, rejects, label_map, progress)
    try:
        asyncio.run(run.all())
    except BaseException:
        writer.abort()
        rejects.abort()
        raise
    writer.commit()
    rejects.commit()
    return run.summary()


def _with_timeout(config: PlatformConfig, timeout_ms: int) -> PlatformConfig:
    endpoints = {
        name: endpoint.model_copy(update={"timeout_ms": timeout_ms})
        for name, endpoint in config.serving.endpoints.items()
    }
    serving = config.serving.model_copy(update={"endpoints": endpoints})
    return config.model_copy(update={"serving": serving})


def _core(config: PlatformConfig, mode: ModelsMode) -> ScoringCore:
    live = LiveConfig(config)
    metrics = RouterMetrics(CollectorRegistry())
    if mode == "served":
        from services.router.runner import make_core

        return make_core(live, metrics)
    from services.router.model_clients_local import load_in_process_clients

    try:
        called = models_to_call(config)
        clients = load_in_process_clients(config, [m for m in ModelName if m in called])
    except RegistryError as exc:
        raise ReplayError(
            f"{exc} (registry {config.model_store.path}; a model you do not have can be "
            "switched off with flags.models.<model>.enabled: false)"
        ) from None
    return ScoringCore(live, clients, metrics=metrics)


class _Run:
    """The state of one replay while it runs."""

    def __init__(
        self,
        request: ReplayRequest,
        source: EventSource,
        config: PlatformConfig,
        core: ScoringCore,
        writer: DecisionWriter,
        rejects: JsonlWriter,
        label_map: dict[str, str] | None,
        progress: Progress,
    ) -> None:
        self.request = request
        self.source = source
        self.core = core
        self.writer = writer
        self.rejects = rejects
        self.label_map = label_map
        self.matched_labels: set[str] = set()
        self.features = StreamFeatures(
            config.ingest.allowed_lateness_ms, round(config.ingest.idle_state_ttl_s * 1000)
        )
        self.tally = Tally()
        self.progress = progress
        self.started = time.perf_counter()
        self._last_progress = self.started

    async def all(self) -> None:
        """Every row of the source, then the models' clients closed."""
        size = self.request.batch_size
        events: list[Event] = []
        labels: list[str] | None = [] if self.source.has_labels else None
        try:
            for batch in self.source.batches():
                self.tally.rows += batch.rows
                if batch.rejects:
                    self.tally.rejected += len(batch.rejects)
                    self.rejects.write([r.record(self.source.path) for r in batch.rejects])
                events.extend(batch.events)
                if labels is not None and batch.labels is not None:
                    labels.extend(batch.labels)
                while len(events) >= size:
                    await self._score(events[:size], labels[:size] if labels is not None else None)
                    del events[:size]
                    if labels is not None:
                        del labels[:size]
                self._report()
            if events:
                await self._score(events, labels)
        finally:
            for client in self.core.clients.values():
                await client.close()
        self._report(force=True)

    async def _score(self, events: list[Event], labels: list[str] | None) -> None:
        rows = self.features.rows(events)
        self.tally.late += int(rows.late.sum())
        scored = await self.core.score(rows.event_ids, rows.entity_ids, rows.matrix, rows.ts)
        if scored.errors and not scored.versions and not self.tally.model_versions:
            problems = "; ".join(scored.errors.values())
            hint = (
                "are the model servers of serving.endpoints up? (--models registry scores "
                "with the registry in this process)"
                if self.request.models == "served"
                else "see the model errors"
            )
            raise ReplayError(f"no model answered the first batch ({problems}): {hint}")
        if labels is None and self.label_map is not None:
            labels = [self.label_map.get(e, NORMAL_LABEL) for e in rows.event_ids]
            self.matched_labels.update(e for e in rows.event_ids if e in self.label_map)
        # The stream door's batch encoder, parsed back: the same dicts as `record(i)` (a test
        # holds the two equal) at a fraction of the cost of building them one by one.
        records: list[dict[str, Any]] = [orjson.loads(v) for v in encode_decisions(scored)]
        if labels is not None:
            for record, label in zip(records, labels, strict=True):
                record["label"] = label
        self.writer.write(records)
        self.tally.add(scored, labels)

    def _report(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_progress < self.request.progress_every_s:
            return
        self._last_progress = now
        elapsed = now - self.started
        t = self.tally
        self.progress(
            f"replay: {elapsed:6.1f} s  {t.rows:>12,} events  "
            f"{t.rows / max(elapsed, 1e-9):>10,.0f} events/s  rejected {t.rejected:,}  "
            f"alerts {t.alerts:,}  degraded {t.degraded:,}"
        )

    def summary(self) -> ReplaySummary:
        """The outcome, once every output is in place."""
        t = self.tally
        labels_source: str | None = None
        if self.request.labels is not None:
            labels_source = str(self.request.labels)
        elif self.source.has_labels:
            labels_source = f"{self.source.path} (label column)"
        return ReplaySummary(
            source=self.source.path,
            format=self.source.format,
            shape=self.source.shape,
            models=self.request.models,
            output=self.writer.path,
            rejects=self.rejects.path,
            events_read=t.rows,
            rejected=t.rejected,
            decisions=t.decisions,
            anomalous=t.anomalous,
            alerts=t.alerts,
            alerts_by_type=dict(t.alerts_by_type),
            degraded=t.degraded,
            late=t.late,
            model_versions=dict(t.model_versions),
            model_errors=dict(t.model_errors),
            first_model_error=dict(t.first_model_error),
            elapsed_s=time.perf_counter() - self.started,
            labels_source=labels_source,
            unmatched_labels=(
                len(self.label_map) - len(self.matched_labels) if self.label_map else 0
            ),
            detection=t.detection(),
        )

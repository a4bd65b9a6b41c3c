"""The scoring core: a batch of feature vectors in, decisions (and alerts) out.

One core behind every door (Kafka stream, REST, gRPC); it knows no HTTP, gRPC or Kafka.
Per batch it reads the configuration that is current *now* (feature flags are hot-reloaded),
calls the enabled models concurrently over V2 (the Transformer, under the `cascade` strategy,
only for the events the cheap models are unsure about), and hands the scores to the ensemble
vote shared with the evaluation (`models.ensemble`). A model that fails or times out is left
out of the vote and the decisions say so (`degraded`); the batch never fails because of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.ensemble import BatchDecision, decide_batch, idle_voters, needs_transformer
from models.sequences import EntitySequences
from services.common.anomaly_types import AnomalyType
from services.common.config import PlatformConfig
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.router.alerts import Alert, severity_for
from services.router.decision_json import explanations
from services.router.feature_baseline import FeatureBaseline
from services.router.metrics import RouterMetrics
from services.router.model_clients import ModelCallError, ModelClient, ModelOutput

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
TYPES = tuple(AnomalyType)


@dataclass(slots=True)
class ScoredBatch:
    """Decisions of one batch, with what the models said and which ones failed."""

    event_ids: list[str]
    entity_ids: list[str]
    ts: npt.NDArray[np.int64]
    decision: BatchDecision
    alert: npt.NDArray[np.bool_]
    """Decisions that become alerts (after kill switch, suppression and forcing)."""
    versions: dict[ModelName, str]
    errors: dict[ModelName, str]
    decided_at_ms: int
    top_features: list[list[tuple[str, float]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)

    def record(self, i: int) -> dict[str, Any]:
        """One decision as plain data (the `scores` topic, REST and gRPC answers)."""
        d = self.decision
        code = int(d.anomaly_type[i])
        scores = {
            m.value: None if np.isnan(v[i]) else round(float(v[i]), 6) for m, v in d.scores.items()
        }
        score = float(d.score[i])
        return {
            "event_id": self.event_ids[i],
            "entity_id": self.entity_ids[i],
            "ts": int(self.ts[i]),
            "decided_at": self.decided_at_ms,
            "anomalous": bool(d.anomalous[i]),
            "alert": bool(self.alert[i]),
            "score": None if np.isnan(score) else round(score, 6),
            "threshold": round(float(d.threshold[i]), 6),
            "anomaly_type": TYPES[code].value if code >= 0 else None,
            "strategy": d.strategy,
            "degraded": bool(d.degraded[i]),
            "model_scores": scores,
            "model_versions": {m.value: v for m, v in self.versions.items()},
            "explanation": d.decision(i).explanation,
            "top_features": [
                {"feature": name, "z": round(z, 3)} for name, z in self.top_features[i]
            ]
            if self.top_features
            else [],
        }

    def alerts(self, config: PlatformConfig) -> list[Alert]:
        """Alert objects for the decisions flagged `alert` (columns read once, not per alert:
        a burst of anomalies must not stall the stream)."""
        d = self.decision
        rows = np.flatnonzero(self.alert)
        if rows.size == 0:
            return []
        codes = d.anomaly_type[rows].tolist()
        raw = d.score[rows]
        scores = np.nan_to_num(raw, nan=0.0).tolist()
        thresholds = d.threshold[rows].tolist()
        degraded = d.degraded[rows].tolist()
        ts = self.ts[rows].tolist()
        model_scores = {m.value: v[rows].tolist() for m, v in d.scores.items()}
        texts = explanations(d, rows)
        out = []
        for j, i in enumerate(rows.tolist()):
            code = codes[j]
            kind = TYPES[code] if code >= 0 else None
            score = scores[j]
            out.append(
                Alert(
                    event_id=self.event_ids[i],
                    entity_id=self.entity_ids[i],
                    anomaly_type=kind,
                    score=min(max(score, 0.0), 1.0),
                    threshold=thresholds[j],
                    model_scores={
                        m: values[j] for m, values in model_scores.items() if values[j] == values[j]
                    },
                    severity=severity_for(score, kind, config.alerts),
                    event_ts=ts[j],
                    decided_at=self.decided_at_ms,
                    explanation={
                        "summary": texts[j],
                        "type_known": code >= 0,
                        "top_features": [
                            {"feature": n, "z": round(z, 3)} for n, z in self.top_features[i]
                        ]
                        if self.top_features
                        else [],
                    },
                    degraded=degraded[j],
                )
            )
        return out


def models_to_call(config: PlatformConfig) -> set[ModelName]:
    """The models a batch is scored with: enabled ones (voting or shadow), less the idle
    voters whose scores cannot change a decision. The replay loads exactly these."""
    flags = config.flags
    enabled = {m for m in ModelName if flags.models.get(m) is None or flags.models[m].enabled}
    return enabled - idle_voters(config.ensemble, flags)


class LiveConfig:
    """The configuration in force; swapped atomically by the hot-reloader (flags.py)."""

    def __init__(self, config: PlatformConfig) -> None:
        self._config = config

    def get(self) -> PlatformConfig:
        """The current configuration (read once per batch)."""
        return self._config

    def set(self, config: PlatformConfig) -> None:
        """Replace the configuration (a validated one)."""
        self._config = config


class ScoringCore:
    """Scores batches of feature vectors with the model ensemble."""

    def __init__(
        self,
        live: LiveConfig,
        clients: Mapping[ModelName, ModelClient],
        *,
        metrics: RouterMetrics,
        feature_baseline: FeatureBaseline | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.live = live
        self.clients = clients
        self.metrics = metrics
        self.sequences = EntitySequences()
        self.baseline = (
            FeatureBaseline(len(FEATURE_NAMES)) if feature_baseline is None else feature_baseline
        )
        self._clock_ms = clock_ms

    async def _call(
        self, name: ModelName, x: F32, version: str | None
    ) -> tuple[ModelName, ModelOutput | None, str | None]:
        started = time.perf_counter()
        try:
            out = await self.clients[name].infer(x, version)
        except ModelCallError as exc:
            self.metrics.model_failures.labels(model_name=name.value).inc()
            return name, None, str(exc)
        except Exception as exc:  # any client bug must not fail the whole batch
            log.exception("model call failed unexpectedly", extra={"model": name.value})
            self.metrics.model_failures.labels(model_name=name.value).inc()
            return name, None, f"{type(exc).__name__}: {exc}"
        self.metrics.model_seconds.labels(model_name=name.value).observe(
            time.perf_counter() - started
        )
        return name, out, None

    async def score(
        self,
        event_ids: Sequence[str],
        entity_ids: Sequence[str],
        matrix: F32,
        ts: npt.NDArray[np.int64] | None = None,
        *,
        track_sequences: bool = True,
    ) -> ScoredBatch:
        """Decide on a batch of finite feature vectors (rows in FEATURE_NAMES order).

        `track_sequences`: append the rows to each entity's history (the stream door does;
        a REST request about an entity must not rewrite that entity's history).
        """
        cfg = self.live.get()
        flags, ensemble = cfg.flags, cfg.ensemble
        n = len(event_ids)
        if matrix.shape != (n, len(FEATURE_NAMES)):
            raise ValueError(f"expected features of shape ({n}, {len(FEATURE_NAMES)})")
        enabled = models_to_call(cfg) & set(self.clients)
        version = {m: flags.models[m].version if m in flags.models else None for m in enabled}
        if track_sequences:
            sequences = self.sequences.push(list(entity_ids), matrix)
        else:
            sequences = self._peek_sequences(entity_ids, matrix)

        scores: dict[ModelName, npt.NDArray[np.float64]] = {}
        types: npt.NDArray[np.int64] | None = None
        versions: dict[ModelName, str] = {}
        errors: dict[ModelName, str] = {}

        def collect(results: list[tuple[ModelName, ModelOutput | None, str | None]]) -> None:
            nonlocal types
            for name, out, error in results:
                if out is None:
                    errors[name] = error or "failed"
                    continue
                versions[name] = out.version
                scores[name] = out.score
                if out.anomaly_type is not None:
                    types = out.anomaly_type

        cheap = [m for m in enabled if m is not ModelName.TRANSFORMER]
        transformer = ModelName.TRANSFORMER in enabled
        if ensemble.strategy == "cascade" and transformer:
            collect(await asyncio.gather(*(self._call(m, matrix, version[m]) for m in cheap)))
            for cheap_model in cheap:  # a cheap model that failed is missing on every row
                scores.setdefault(cheap_model, np.full(n, np.nan))
            band = needs_transformer(scores, ensemble, flags)
            scores[ModelName.TRANSFORMER] = np.full(n, np.nan)
            if band.any():
                idx = np.flatnonzero(band)
                name, out, error = await self._call(
                    ModelName.TRANSFORMER, sequences[idx], version[ModelName.TRANSFORMER]
                )
                if out is None:
                    errors[name] = error or "failed"
                else:
                    scores[name][idx] = out.score
                    versions[name] = out.version
            self.metrics.cascade_fraction.observe(float(band.mean()))
        else:
            calls = [self._call(m, matrix, version[m]) for m in cheap]
            if transformer:
                calls.append(
                    self._call(ModelName.TRANSFORMER, sequences, version[ModelName.TRANSFORMER])
                )
            collect(await asyncio.gather(*calls))

        for model in ModelName:  # every column sized n, even when no model answered at all
            scores.setdefault(model, np.full(n, np.nan))
        decision = decide_batch(scores, types, ensemble, flags)
        alert = decision.anomalous & flags.alerts_enabled
        if flags.suppressed_entities or flags.forced_entities:
            ids = list(entity_ids)
            suppressed = np.fromiter((e in flags.suppressed_entities for e in ids), bool, n)
            forced = np.fromiter((e in flags.forced_entities for e in ids), bool, n)
            alert = (alert & ~suppressed) | (forced & flags.alerts_enabled)
        for name, error in errors.items():
            log.warning("model left out of the vote", extra={"model": name.value, "error": error})
        self.metrics.decisions.inc(n)
        self.metrics.anomalies.inc(int(decision.anomalous.sum()))
        self.metrics.degraded.inc(int(decision.degraded.sum()))
        scored = ScoredBatch(
            event_ids=list(event_ids),
            entity_ids=list(entity_ids),
            ts=ts if ts is not None else np.full(n, self._clock_ms(), dtype=np.int64),
            decision=decision,
            alert=alert,
            versions=versions,
            errors=errors,
            decided_at_ms=self._clock_ms(),
            top_features=self._top_features(matrix, alert | decision.anomalous),
        )
        self.baseline.observe(matrix)  # after: an event is not compared with itself
        return scored

    def _peek_sequences(self, entity_ids: Sequence[str], matrix: F32) -> F32:
        """Sequences as if the rows were appended, without changing the stored history."""
        length = self.sequences.length
        out = np.full((len(entity_ids), length, matrix.shape[1]), np.nan, dtype=np.float32)
        out[:, -1, :] = matrix
        return out

    def _top_features(
        self, matrix: F32, which: npt.NDArray[np.bool_]
    ) -> list[list[tuple[str, float]]]:
        """Cheap explanation for flagged events: their three features furthest from the
        traffic's normal (`feature_baseline`); none while the baseline is still empty."""
        rows = np.flatnonzero(which)
        z = self.baseline.z(matrix[rows]) if rows.size else None
        if z is None:
            return []
        top = np.argsort(-np.abs(z), axis=1)[:, :3]
        out: list[list[tuple[str, float]]] = [[] for _ in range(len(matrix))]
        for k, i in enumerate(rows.tolist()):
            out[i] = [(FEATURE_NAMES[j], float(z[k, j])) for j in top[k].tolist()]
        return out

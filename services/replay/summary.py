"""What a replay decided, counted as it goes, and printed as a table and as JSON.

Detection figures (TPR, FPR, precision, recall per type) are those of the evaluation
(`models.metrics.decision_metrics`), computed on the decisions that *alert*: the threshold,
the vote and the alert flags (kill switch, suppressed and forced entities) of the replayed
configuration together, which is what a threshold change in production would page on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.dataset import LABEL_CODE
from models.metrics import decision_metrics
from services.common.anomaly_types import AnomalyType
from services.router.core import ScoredBatch

TYPES = tuple(AnomalyType)
UNKNOWN_TYPE = "unknown"


@dataclass(slots=True)
class Tally:
    """Running counts of one replay."""

    rows: int = 0
    rejected: int = 0
    decisions: int = 0
    anomalous: int = 0
    alerts: int = 0
    degraded: int = 0
    late: int = 0
    alerts_by_type: Counter[str] = field(default_factory=Counter)
    model_versions: dict[str, str] = field(default_factory=dict)
    model_errors: dict[str, int] = field(default_factory=dict)
    """Batches each model failed (left out of the vote), by model."""
    first_model_error: dict[str, str] = field(default_factory=dict)
    _labels: list[npt.NDArray[np.int8]] = field(default_factory=list)
    _alerted: list[npt.NDArray[np.bool_]] = field(default_factory=list)

    def add(self, scored: ScoredBatch, labels: list[str] | None) -> None:
        """Count a scored batch; `labels` (one per decision) when ground truth is known."""
        d = scored.decision
        self.decisions += len(scored)
        self.anomalous += int(d.anomalous.sum())
        self.alerts += int(scored.alert.sum())
        self.degraded += int(d.degraded.sum())
        for code in d.anomaly_type[scored.alert].tolist():
            self.alerts_by_type[TYPES[code].value if code >= 0 else UNKNOWN_TYPE] += 1
        self.model_versions.update({m.value: v for m, v in scored.versions.items()})
        for m, error in scored.errors.items():
            self.model_errors[m.value] = self.model_errors.get(m.value, 0) + 1
            self.first_model_error.setdefault(m.value, error)
        if labels is not None:
            self._labels.append(np.fromiter((LABEL_CODE[x] for x in labels), np.int8, len(labels)))
            self._alerted.append(scored.alert.copy())

    def detection(self) -> dict[str, Any] | None:
        """TPR, FPR, precision and recall per type of the alerts; None without labels."""
        if not self._labels:
            return None
        labels = np.concatenate(self._labels)
        out = decision_metrics(labels, np.concatenate(self._alerted))
        out["anomalies"] = int((labels > 0).sum())
        out["normals"] = int((labels == 0).sum())
        return out


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """The outcome of a replay."""

    source: Path
    format: str
    shape: str
    models: str
    output: Path
    rejects: Path
    events_read: int
    rejected: int
    decisions: int
    anomalous: int
    alerts: int
    alerts_by_type: dict[str, int]
    degraded: int
    late: int
    model_versions: dict[str, str]
    model_errors: dict[str, int]
    first_model_error: dict[str, str]
    elapsed_s: float
    labels_source: str | None = None
    unmatched_labels: int = 0
    """Labels (from a labels file) whose event id got no decision."""
    detection: dict[str, Any] | None = None

    @property
    def events_per_s(self) -> float:
        """Rows read per second, rejects included."""
        return self.events_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--summary-json`."""
        return {
            "source": str(self.source),
            "format": self.format,
            "shape": self.shape,
            "models": self.models,
            "output": str(self.output),
            "rejects_file": str(self.rejects),
            "events_read": self.events_read,
            "rejected": self.rejected,
            "decisions": self.decisions,
            "anomalous": self.anomalous,
            "alerts": self.alerts,
            "alerts_by_type": dict(self.alerts_by_type),
            "degraded": self.degraded,
            "late": self.late,
            "model_versions": dict(self.model_versions),
            "model_errors": dict(self.model_errors),
            "first_model_error": dict(self.first_model_error),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "labels": None
            if self.labels_source is None
            else {
                "source": self.labels_source,
                "unmatched_labels": self.unmatched_labels,
                **(self.detection or {}),
            },
        }

    def write_json(self, path: Path) -> None:
        """`--summary-json`: the summary as one JSON document."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")

    def format_table(self) -> str:
        """The human summary printed at the end of `anomaly replay`."""
        rows = [
            ("source", f"{self.source} ({self.format}, {self.shape})"),
            ("models", f"{self.models}: " + (", ".join(
                f"{m} v{v}" for m, v in sorted(self.model_versions.items())) or "none answered")),
            ("events read", f"{self.events_read:,}"),
            ("rejected", f"{self.rejected:,}" + (f" -> {self.rejects}" if self.rejected else "")),
            ("decisions", f"{self.decisions:,} -> {self.output}"),
            ("anomalous", f"{self.anomalous:,}"),
            ("alerts", f"{self.alerts:,}"),
        ]  # fmt: skip
        rows += [(f"  {kind}", f"{n:,}") for kind, n in sorted(self.alerts_by_type.items())]
        rows.append(("degraded", f"{self.degraded:,}"))
        for m, batches in sorted(self.model_errors.items()):
            rows.append((f"  {m} failed", f"{batches:,} batch(es): {self.first_model_error[m]}"))
        if self.late:
            rows.append(("late (not windowed)", f"{self.late:,}"))
        rows.append(
            ("throughput", f"{self.events_per_s:,.0f} events/s over {self.elapsed_s:.2f} s")
        )
        if self.labels_source is not None:
            rows.append(("labels", self.labels_source))
            if self.unmatched_labels:
                rows.append(("  unmatched labels", f"{self.unmatched_labels:,}"))
            det = self.detection or {}
            for key, name in (("tpr", "TPR"), ("fpr", "FPR"), ("precision", "precision")):
                value = det.get(key)
                rows.append((f"  {name}", "n/a" if value is None else f"{value:.2%}"))
            for kind, recall in (det.get("recall_per_type") or {}).items():
                shown = "n/a (none labelled)" if recall is None else f"{recall:.2%}"
                rows.append((f"  recall {kind}", shown))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

"""The alert: a decision that crossed a threshold, as every sink receives it.

One immutable model with a JSON form, because the same alert is stored in the outbox,
posted to webhooks, written to Kafka and summarised for PagerDuty; a field added here
reaches all of them. Severity is decided once, when the alert is made, so that every
sink agrees on it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.anomaly_types import AnomalyType
from services.common.config.model import AlertsConfig, AlertSeverity

SEVERITY_ORDER: tuple[AlertSeverity, ...] = ("info", "warning", "error", "critical")
"""Severities from least to most severe."""
UNKNOWN_TYPE_NAME = "unknown"
"""`Alert.type_name` of an alert whose type no voting model predicted."""


class Alert(BaseModel):
    """One anomalous decision of the router, ready for the outbox."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1)
    """Id of the scored event; with `anomaly_type` it identifies the alert (replays dedupe)."""
    entity_id: str = Field(min_length=1)
    """Account or instrument the event belongs to; the Kafka key and PagerDuty source."""
    anomaly_type: AnomalyType | None
    """Kind of anomaly the ensemble decided on; None (JSON null) when no voting model said
    (XGBoost down, disabled or in shadow mode): such alerts are neither filed under a type
    they may not be (that type's incident, its severity floor) nor dropped."""
    score: float = Field(ge=0.0, le=1.0)
    """Ensemble score, calibrated to [0, 1]."""
    threshold: float = Field(ge=0.0, le=1.0)
    """Threshold of this anomaly type that the score crossed."""
    model_scores: dict[str, float] = Field(default_factory=dict)
    """Calibrated score of each model that voted (model name -> score)."""
    severity: AlertSeverity
    """PagerDuty severity, from `severity_for`."""
    event_ts: int
    """Event time in epoch milliseconds."""
    decided_at: int
    """When the router decided, in epoch milliseconds."""
    explanation: dict[str, Any] = Field(default_factory=dict)
    """Why the ensemble decided so (top features, votes); passed through as JSON."""
    degraded: bool = False
    """True when a model did not answer in time and the vote went on without it."""

    @property
    def type_name(self) -> str:
        """The type's name, `unknown` for none: part of PagerDuty dedup keys and outbox keys."""
        return self.anomaly_type.value if self.anomaly_type is not None else UNKNOWN_TYPE_NAME

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the form stored in the outbox and sent to sinks."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Alert:
        """Parse `to_json` output (raises pydantic.ValidationError on anything else)."""
        return cls.model_validate_json(data)


def severity_for(
    score: float, anomaly_type: AnomalyType | None, cfg: AlertsConfig
) -> AlertSeverity:
    """The highest severity whose minimum score `score` reaches, raised to the type's floor
    (an unknown type has none).

    Scores below every minimum are `info` (forced entities alert on normal decisions too).
    """
    by_score: AlertSeverity = "info"
    for severity in SEVERITY_ORDER:
        minimum = cfg.severity_min_score.get(severity)
        if minimum is not None and score >= minimum:
            by_score = severity
    floor = cfg.severity_floor.get(anomaly_type, "info") if anomaly_type is not None else "info"
    return max(by_score, floor, key=SEVERITY_ORDER.index)


def most_severe(severities: list[AlertSeverity]) -> AlertSeverity:
    """The most severe of several (info for none)."""
    return max(severities, key=SEVERITY_ORDER.index, default="info")

"""What an alert sink is: one method, `write(batch)`, in the shape of Quix's BatchingSink.

The dispatcher owns batching, retries, backoff and bookkeeping; a sink only delivers a
batch or raises. Raising `DeliveryError` fails the whole batch (the dispatcher retries or
marks it dead by the error's status); `PartialDelivery` fails only the alerts it names,
each by its own error; raising `HeldForGrouping` defers it without counting an attempt.
Sinks that need a finer batch than "everything due" (PagerDuty: one incident at a time)
say so with `batch_key`, and time-driven work (PagerDuty resolves) goes in `tick`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.config.model import AlertsConfig, KafkaConfig
from services.router.alerts.alert import Alert
from services.router.alerts.clock import Clock
from services.router.alerts.metrics import AlertMetrics


class KeyValueStore(Protocol):
    """Small durable state of a sink (the outbox's `SinkStateStore`)."""

    def load(self) -> dict[str, str]: ...
    def put(self, key: str, value: str) -> None: ...
    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class SinkContext:
    """What sinks may need besides their own section: shared settings and services."""

    alerts: AlertsConfig
    """The whole alerts section (shared routing key, retry policy)."""
    kafka: KafkaConfig
    """Broker settings and the `alerts` topic."""
    metrics: AlertMetrics
    """Where sinks count what only they can see (PagerDuty actions)."""
    state: Callable[[str], KeyValueStore]
    """Durable state store of a sink, by sink name."""
    clock: Clock
    """Time source (grouping windows, resolve timers)."""


class AlertSink(ABC):
    """A destination of alerts, known in the outbox and metrics by `name`."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def write(self, batch: Sequence[Alert]) -> None:
        """Deliver every alert of `batch`, or raise DeliveryError / PartialDelivery /
        HeldForGrouping."""

    def batch_key(self, alert: Alert) -> str:
        """Alerts with equal keys are written together; by default one batch for all."""
        return ""

    def given_up(self, batch: Sequence[Alert]) -> None:  # noqa: B027 (optional hook)
        """The dispatcher stopped retrying `batch` (all of one batch key): they are dead in
        the outbox. A sink that keeps state about waiting alerts lets go of it here."""

    def tick(self) -> None:  # noqa: B027 (optional hook: most sinks have no timed work)
        """Time-driven work between batches; may raise a retryable DeliveryError to pause."""

    def close(self) -> None:  # noqa: B027 (optional hook: not every sink holds connections)
        """Release connections; pending work stays in the outbox."""

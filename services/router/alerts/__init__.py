"""Alerts: the model, the durable outbox, the dispatcher and the sinks (PagerDuty v2,
webhook, Kafka), plus a local PagerDuty-compatible receiver for tests and demos.

The router builds an `AlertDelivery` from `AlertsConfig` in `main()`, calls `enqueue`
for each batch of anomalous decisions and commits its offsets after it returns.
"""

from services.router.alerts.alert import SEVERITY_ORDER, Alert, most_severe, severity_for
from services.router.alerts.delivery import AlertDelivery
from services.router.alerts.dispatcher import Dispatcher, DispatchReport
from services.router.alerts.errors import (
    AlertError,
    DeliveryError,
    HeldForGrouping,
    PartialDelivery,
    SinkConfigurationError,
)
from services.router.alerts.metrics import AlertMetrics
from services.router.alerts.outbox import Outbox, SinkStats

__all__ = [
    "SEVERITY_ORDER",
    "Alert",
    "AlertDelivery",
    "AlertError",
    "AlertMetrics",
    "DeliveryError",
    "DispatchReport",
    "Dispatcher",
    "HeldForGrouping",
    "Outbox",
    "PartialDelivery",
    "SinkConfigurationError",
    "SinkStats",
    "most_severe",
    "severity_for",
]

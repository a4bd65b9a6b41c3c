"""Alert sinks (PagerDuty, webhook, Kafka), each implementing `write(batch)`."""

from services.router.alerts.sinks.base import AlertSink, KeyValueStore, SinkContext
from services.router.alerts.sinks.registry import SINK_FACTORY_FOR_TYPE, build_sinks

__all__ = ["SINK_FACTORY_FOR_TYPE", "AlertSink", "KeyValueStore", "SinkContext", "build_sinks"]

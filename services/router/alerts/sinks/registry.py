"""Which class handles which `type:` of alert sink: one alias table, no `if` chains.

Adding a sink type means a config section in `services/common/config/model.py`, a class
with `from_config`, and one line in `SINK_FACTORY_FOR_TYPE`.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.config.model import AlertSinkConfig
from services.router.alerts.sinks.base import AlertSink, SinkContext
from services.router.alerts.sinks.kafka import KafkaAlertWriter
from services.router.alerts.sinks.pagerduty import PagerDutyAlertSink
from services.router.alerts.sinks.webhook import WebhookAlertSink

SinkFactory = Callable[[str, AlertSinkConfig, SinkContext], AlertSink]

SINK_FACTORY_FOR_TYPE: dict[str, SinkFactory] = {
    "pagerduty": PagerDutyAlertSink.from_config,
    "webhook": WebhookAlertSink.from_config,
    "kafka": KafkaAlertWriter.from_config,
}


def build_sinks(ctx: SinkContext) -> list[AlertSink]:
    """Every configured sink, named as `AlertsConfig.named_sinks` names them.

    Raises SinkConfigurationError (a ConfigError) for unusable sections, e.g. a pagerduty
    sink without a routing key; sinks built before the failing one are closed again.
    """
    sinks: list[AlertSink] = []
    try:
        for name, cfg in ctx.alerts.named_sinks():
            sinks.append(SINK_FACTORY_FOR_TYPE[cfg.type](name, cfg, ctx))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks

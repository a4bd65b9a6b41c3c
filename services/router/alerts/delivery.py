"""Alert delivery assembled from configuration: the one object the router holds.

The router calls `enqueue(alerts)` and commits its Kafka offsets after it returns; the
dispatcher thread does the rest. Built in `main()` from `AlertsConfig` (sinks picked by
`type:`), so a pagerduty sink without a routing key stops the service at start with a
clear message instead of failing on the first alert.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.common.config.model import AlertsConfig, KafkaConfig
from services.router.alerts.alert import Alert
from services.router.alerts.clock import Clock, system_clock
from services.router.alerts.dispatcher import Dispatcher, DispatchReport, FlagsSource
from services.router.alerts.metrics import AlertMetrics
from services.router.alerts.outbox import Outbox
from services.router.alerts.sinks import AlertSink, SinkContext, build_sinks

log = logging.getLogger(__name__)


def warn_of_orphans(outbox: Outbox, configured: Sequence[str]) -> None:
    """Say which sink names the outbox still holds alerts for but no sink has any more.

    Nothing delivers those alerts (a sink removed or renamed, or named `<type>-1` by a
    version before names were stable); they are kept, not dropped, so that giving a sink
    that `name:` again delivers them (or `anomaly alerts reassign` hands them to another
    sink). The `anomaly_alerts_outbox_orphaned` gauge keeps
    showing them after this one line at start.
    """
    for name, counts in sorted(outbox.stats(delivered=False).items()):
        if name in configured or not (counts.pending or counts.dead):
            continue
        log.warning(
            "the outbox holds %d pending and %d dead alert(s) for sink %r, which is not "
            "configured: nothing delivers them until a sink is named %r again, or "
            "`anomaly alerts reassign %s <sink>` hands them to a configured one",
            counts.pending,
            counts.dead,
            name,
            name,
            name,
            extra={"sink": name, "pending": counts.pending, "dead": counts.dead},
        )


class AlertDelivery:
    """Outbox + sinks + dispatcher, with one lifecycle: `start`, `stop`, `close`."""

    def __init__(self, outbox: Outbox, sinks: Sequence[AlertSink], dispatcher: Dispatcher) -> None:
        self.outbox = outbox
        self.sinks = list(sinks)
        self.dispatcher = dispatcher

    @classmethod
    def from_config(
        cls,
        alerts: AlertsConfig,
        kafka: KafkaConfig,
        *,
        metrics: AlertMetrics | None = None,
        clock: Clock = system_clock,
        flags: FlagsSource | None = None,
    ) -> AlertDelivery:
        """Open the outbox at `alerts.outbox_path` and build every configured sink.

        `flags` gives the flags in force (e.g. `lambda: live.get().flags`), so that the kill
        switch and entity suppression also hold alerts already queued; without it every
        queued alert is delivered.

        Raises SinkConfigurationError (a ConfigError) for unusable sink sections.
        """
        metrics = metrics or AlertMetrics.bound_to()
        names = [name for name, _ in alerts.named_sinks()]
        outbox = Outbox(alerts.outbox_path, names, clock=clock, metrics=metrics)
        try:
            sinks = build_sinks(
                SinkContext(
                    alerts=alerts,
                    kafka=kafka,
                    metrics=metrics,
                    state=outbox.state_for,
                    clock=clock,
                )
            )
        except BaseException:
            outbox.close()
            raise
        warn_of_orphans(outbox, names)
        dispatcher = Dispatcher(outbox, sinks, alerts, metrics=metrics, clock=clock, flags=flags)
        return cls(outbox, sinks, dispatcher)

    def enqueue(self, alerts: Sequence[Alert]) -> int:
        """Make alerts durable for every sink; returns once committed (then commit offsets)."""
        return self.outbox.enqueue(alerts)

    def dispatch_once(self) -> DispatchReport:
        """One delivery pass on the caller's thread (tests, tools)."""
        return self.dispatcher.dispatch_once()

    def start(self) -> AlertDelivery:
        """Start delivering in the background."""
        self.dispatcher.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop delivering; pending alerts stay in the outbox."""
        self.dispatcher.stop(timeout_s)

    def close(self) -> None:
        """Stop, close the sinks' connections and the outbox."""
        self.stop()
        for sink in self.sinks:
            sink.close()
        self.outbox.close()

    def __enter__(self) -> AlertDelivery:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

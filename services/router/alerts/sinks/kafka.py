"""Alerts to the `alerts` topic: key = entity id, value = the alert's JSON.

An alert counts as delivered only when its record is acknowledged by all in-sync
replicas (acks=all, idempotent producer, `flush`), because the outbox forgets a delivered
alert. Records succeed or fail one by one (`PartialDelivery`); one that was written but
not acknowledged in time is retried, so consumers of `alerts` see duplicates now and then
and deduplicate by (`event_id`, `anomaly_type`), like every consumer in this
at-least-once pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.common.config.model import AlertSinkConfig, KafkaAlertSink, KafkaConfig
from services.common.kafka.clients import make_producer
from services.router.alerts.alert import Alert
from services.router.alerts.errors import DeliveryError, PartialDelivery
from services.router.alerts.sinks.base import AlertSink, SinkContext

log = logging.getLogger(__name__)

PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
    }
)
"""Errors that a retry of the same record cannot fix; everything else (broker down, leader
moving, topic not there yet) is retried with backoff."""

ProducerFactory = Callable[[KafkaConfig, float], Producer]


def alert_producer(kafka: KafkaConfig, flush_timeout_s: float) -> Producer:
    """A producer that makes each record durable or reports why within `flush_timeout_s`."""
    overrides = {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,  # alerts are few; do not wait 20 ms to fill batches
        "message.timeout.ms": int(flush_timeout_s * 1000),
    }
    return make_producer(kafka, "alerts", **overrides)


def _delivery_error(errors: Sequence[KafkaError], topic: str) -> DeliveryError:
    first = errors[0]
    permanent = all(err.code() in PERMANENT_ERRORS for err in errors)
    return DeliveryError(
        f"{len(errors)} alert(s) not written to {topic}: {first.name()}: {first.str()}",
        status=None,
        retryable=not permanent,
    )


class KafkaAlertWriter(AlertSink):
    """Writes alerts to the configured `alerts` topic and waits for acknowledgement."""

    def __init__(
        self,
        name: str,
        cfg: KafkaAlertSink,
        kafka: KafkaConfig,
        producer_factory: ProducerFactory = alert_producer,
    ) -> None:
        super().__init__(name)
        self._cfg = cfg
        self._kafka = kafka
        self._topic = kafka.topics.alerts.name
        self._factory = producer_factory
        self._producer: Producer | None = None

    @classmethod
    def from_config(cls, name: str, cfg: AlertSinkConfig, ctx: SinkContext) -> KafkaAlertWriter:
        """Build from a `type: kafka` section; the topic is `kafka.topics.alerts`."""
        if not isinstance(cfg, KafkaAlertSink):
            raise TypeError(f"expected a kafka sink section, got {cfg.type}")
        return cls(name, cfg, ctx.kafka)

    def _ready_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._factory(self._kafka, self._cfg.flush_timeout_s)
        return self._producer

    def write(self, batch: Sequence[Alert]) -> None:
        """Produce every alert, flush, and raise PartialDelivery for those not acknowledged.

        Each record stands alone: one too large for the broker is dead by itself, and the
        others are delivered rather than failed (or sent again) with it. A full local
        queue (BufferError) is drained once and the record tried again; if it still does
        not fit it is retried later, never dead, since the queue empties by itself.
        """
        producer = self._ready_producer()
        acked: set[int] = set()
        errors: dict[int, KafkaError] = {}
        queue_full: list[int] = []
        produced: list[int] = []

        def produce(index: int, alert: Alert) -> None:
            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                if err is None:
                    acked.add(index)
                else:
                    errors[index] = err

            producer.produce(
                self._topic,
                key=alert.entity_id.encode(),
                value=alert.to_json(),
                headers=[
                    ("event-id", alert.event_id.encode()),
                    ("anomaly-type", alert.type_name.encode()),
                ],
                on_delivery=on_delivery,
            )

        stuck = False  # draining did not make room: do not wait again for every record
        for index, alert in enumerate(batch):
            try:
                try:
                    produce(index, alert)
                except BufferError:
                    if stuck:
                        raise
                    producer.flush(self._cfg.flush_timeout_s)  # drain it, then once more
                    stuck = len(producer) > 0
                    produce(index, alert)
            except BufferError:
                queue_full.append(index)
                continue
            except KafkaException as exc:  # refused before sending (e.g. record too large)
                errors[index] = exc.args[0]
                continue
            produced.append(index)
            producer.poll(0)
        producer.flush(self._cfg.flush_timeout_s)
        if any(err.fatal() for err in errors.values()):
            log.error("alert producer hit a fatal error; a new one will be made")
            self._close_producer()
        unacked = [i for i in produced if i not in acked and i not in errors]
        failures = self._failures(errors, queue_full, unacked)
        if failures:
            raise PartialDelivery(failures)

    def _failures(
        self, errors: dict[int, KafkaError], queue_full: list[int], unacked: list[int]
    ) -> dict[int, DeliveryError]:
        """One DeliveryError per cause, for the records it covers."""
        failures: dict[int, DeliveryError] = {}
        by_code: dict[int, list[int]] = {}
        for index, err in errors.items():
            by_code.setdefault(err.code(), []).append(index)
        for indices in by_code.values():
            exc = _delivery_error([errors[i] for i in indices], self._topic)
            failures.update(dict.fromkeys(indices, exc))
        if queue_full:
            exc = DeliveryError(
                f"{len(queue_full)} alert(s) not queued for {self._topic}: the producer's "
                f"local queue was still full after {self._cfg.flush_timeout_s} s "
                "(queue.buffering.max.messages / .kbytes)",
                status=None,
                retryable=True,
            )
            failures.update(dict.fromkeys(queue_full, exc))
        if unacked:
            exc = DeliveryError(
                f"{len(unacked)} alert(s) not acknowledged by {self._topic} within "
                f"{self._cfg.flush_timeout_s} s",
                status=None,
                retryable=True,
            )
            failures.update(dict.fromkeys(unacked, exc))
        return failures

    def _close_producer(self) -> None:
        if self._producer is not None:
            self._producer.flush(0)
            self._producer = None

    def close(self) -> None:
        """Flush what is in flight (at most 5 s: shutdown must not hang) and drop the producer.

        Records still unacknowledged were never marked delivered, so the next process
        sends them again.
        """
        if self._producer is not None:
            self._producer.flush(min(self._cfg.flush_timeout_s, 5.0))
        self._producer = None

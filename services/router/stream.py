"""The stream door: `features` micro-batches in, every decision to `scores`, alerts to the outbox.

Per batch (at-least-once, like ingest): consume up to `stream_batch_max` feature vectors, score
them with batched model calls, produce one decision per event to `scores` (key = entity id,
JSON), hand the alerts to the durable outbox (`AlertDelivery.enqueue` returns once they are on
disk), and commit the offsets once every `scores` message of the batch is acknowledged.
Consumers of `scores` and `alerts` tolerate duplicates: decisions carry the event id and the
outbox drops an alert it already holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from services.common.config import PlatformConfig
from services.common.features.messages import FeatureMessageError, decode_feature_messages
from services.common.kafka.clients import make_consumer, make_producer, split_consumed
from services.router.alerts import AlertDelivery
from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class StreamScorer:
    """A member of the router's consumer group on `features`."""

    def __init__(
        self,
        config: PlatformConfig,
        live: LiveConfig,
        core_factory: Any,
        delivery: AlertDelivery | None,
        metrics: RouterMetrics,
        *,
        group_id: str,
        batch_max: int,
        batch_timeout_s: float,
    ) -> None:
        self.config = config
        self.live = live
        self.delivery = delivery
        self.metrics = metrics
        self._core_factory = core_factory
        self._group_id = group_id
        self._batch_max = batch_max
        self._batch_timeout_s = batch_timeout_s
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: str | None = None
        self.batches = 0
        self.decisions = 0

    def stop(self) -> None:
        """Finish the current batch, commit and leave the group."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Subscribed and consuming."""
        return (self._ready.is_set(), "consuming" if self._ready.is_set() else "starting")

    def run(self) -> None:
        """Consume until stop(); an output that cannot be made durable raises (no commit)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        core: ScoringCore = self._core_factory()
        topics = self.config.kafka.topics
        producer = make_producer(self.config.kafka, "router")
        consumer: Consumer = make_consumer(self.config.kafka, "router", self._group_id)
        consumer.subscribe([topics.features.name])
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(self._batch_max, timeout=self._batch_timeout_s)
                self._ready.set()
                if msgs:
                    loop.run_until_complete(self._process(core, consumer, producer, msgs))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            consumer.close()
            producer.flush(30)
            for client in core.clients.values():
                loop.run_until_complete(client.close())
            loop.close()

    async def _process(
        self, core: ScoringCore, consumer: Consumer, producer: Any, msgs: list[Message]
    ) -> None:
        started = time.perf_counter()
        topics = self.config.kafka.topics
        consumed = split_consumed(msgs, log)
        values, commit_to = consumed.values, consumed.commit_to
        keys = [(k or b"").decode() for k in consumed.keys]
        if not values:
            return
        try:
            batch = decode_feature_messages(values, keys)
        except FeatureMessageError:
            batch = self._decode_each(values, keys)
        if len(batch):
            scored = await core.score(batch.event_ids, batch.entity_ids, batch.matrix, batch.ts)
            failures: list[str] = []

            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                if err is not None:
                    failures.append(err.str())

            for i in range(len(scored)):
                record = scored.record(i)
                while True:
                    try:
                        producer.produce(
                            topics.scores.name,
                            key=scored.entity_ids[i].encode(),
                            value=orjson.dumps(record),
                            on_delivery=on_delivery,
                        )
                        break
                    except BufferError:
                        producer.poll(0.01)
            alerts = scored.alerts(self.live.get())
            if alerts and self.delivery is not None:
                self.delivery.enqueue(alerts)  # durable before the commit below
                for alert in alerts:
                    self.metrics.alerts.labels(anomaly_type=alert.anomaly_type.value).inc()
            remaining = producer.flush(60)
            if remaining or failures:
                raise RuntimeError(
                    f"{remaining} decisions unacknowledged, {len(failures)} failed; not committing"
                )
            now_ms = time.time() * 1000.0
            for lag_ms in (now_ms - batch.ts.astype(np.float64)).tolist():
                self.metrics.event_to_decision_seconds.observe(lag_ms / 1000.0)
            self.decisions += len(scored)
        consumer.commit(
            offsets=[TopicPartition(topics.features.name, p, o) for p, o in commit_to.items()],
            asynchronous=False,
        )
        self.batches += 1
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _decode_each(self, values: list[bytes], keys: list[str]) -> Any:
        """Skip (and log) the unusable messages of a batch instead of stalling on them."""
        good_values, good_keys = [], []
        for value, key in zip(values, keys, strict=True):
            try:
                decode_feature_messages([value], [key])
            except FeatureMessageError as exc:
                log.error("unusable features message skipped", extra={"error": str(exc)})
                continue
            good_values.append(value)
            good_keys.append(key)
        return decode_feature_messages(good_values, good_keys)

"""The stream door: `features` micro-batches in, every decision to `scores`, alerts to the outbox.

At-least-once, like ingest: a batch's offsets are committed only once every `scores` message
of it is acknowledged by the broker and its alerts are in the durable outbox
(`AlertDelivery.enqueue` returns once they are on disk), and only together with every batch
consumed before it (`inflight.InFlightBatches`). Consumers of `scores` and `alerts` tolerate
duplicates: decisions carry the event id and the outbox drops an alert it already holds.
A `features` message the door cannot decode (malformed, or another feature schema) goes to
the dead-letter topic with its reason, and its batch is committed once that is acknowledged.

Batches are pipelined, because one batch at a time leaves both processes idle half the time
(the model server while the router encodes and waits for acks, the router while the models
score): batch n+1 is consumed and its model calls are sent before batch n's decisions are
encoded and produced, so the model server scores n+1 while the router works on n; batch n's
acknowledgements arrive while later batches are scored. `router.stream_scoring_depth`
batches may be scored at once: where the model server shares starved cores with the rest of
the pipeline, one batch's calls take longer than the door's work on the previous one. At
most `max_in_flight` batches wait for acknowledgements; past that the door waits for the
broker. Decisions are encoded for the whole batch at once (`decision_json`) and handed to
librdkafka in one `produce_batch` call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from services.common.config import PlatformConfig
from services.common.events import Rejected
from services.common.features.messages import (
    FeatureBatch,
    FeatureMessageError,
    decode_feature_messages,
    entity_id_of,
    entity_ids_of,
)
from services.common.kafka.clients import (
    ConsumedColumns,
    consumed_columns,
    make_consumer,
    make_producer,
)
from services.common.kafka.dead_letters import send_dead_letter
from services.router.alerts import AlertDelivery
from services.router.core import LiveConfig, ScoredBatch, ScoringCore
from services.router.decision_json import encode_decisions
from services.router.inflight import DeliveryError, InFlightBatch, InFlightBatches
from services.router.metrics import RouterMetrics, observe_many

log = logging.getLogger(__name__)

_QUEUE_FULL_WAIT_S = 0.01
_FLUSH_TIMEOUT_S = 60.0


@dataclass(slots=True)
class _Consumed:
    """A consumed batch on its way through the pipeline."""

    features: FeatureBatch
    inflight: InFlightBatch
    started: float
    keys: list[bytes] | None
    """The decisions' message keys: the consumed ones (entity ids as bytes) when every
    message decoded, so that they are not encoded again."""
    scoring: asyncio.Task[ScoredBatch] | None = None


def _scored(item: _Consumed) -> bool:
    """Its model calls have answered (or it had none to make)."""
    return item.scoring is None or item.scoring.done()


class StreamScorer:
    """A member of the router's consumer group on `features`."""

    def __init__(
        self,
        config: PlatformConfig,
        live: LiveConfig,
        core_factory: Callable[[], ScoringCore],
        delivery: AlertDelivery | None,
        metrics: RouterMetrics,
        *,
        group_id: str,
        batch_max: int,
        batch_timeout_s: float,
        max_in_flight: int = 4,
        scoring_depth: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if scoring_depth < 1:
            raise ValueError(f"scoring_depth must be >= 1, got {scoring_depth}")
        self.config = config
        self.live = live
        self.delivery = delivery
        self.metrics = metrics
        self._core_factory = core_factory
        self._group_id = group_id
        self._batch_max = batch_max
        self._batch_timeout_s = batch_timeout_s
        self._max_in_flight = max_in_flight
        self._scoring_depth = scoring_depth
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._inflight = InFlightBatches()
        self._topic = config.kafka.topics.features.name
        self._scores = config.kafka.topics.scores.name
        self._dlq = config.kafka.topics.dlq.name
        self.error: str | None = None
        self.batches = 0
        self.decisions = 0
        self.commits = 0

    def stop(self) -> None:
        """Finish the batches in hand, commit and leave the group."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Subscribed and consuming."""
        return (self._ready.is_set(), "consuming" if self._ready.is_set() else "starting")

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Consume until stop(); an output that cannot be made durable raises (no commit)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        core = self._core_factory()
        producer = make_producer(self.config.kafka, "router")
        consumer: Consumer = make_consumer(
            self.config.kafka,
            "router",
            self._group_id,
            instance_id=self.config.router.group_instance_id,
        )

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            # Decisions handed to the producer are made durable and committed while the
            # partitions are still ours; the batch being scored cannot be (it is not
            # produced yet): its partitions are dropped and the next owner re-reads it.
            try:
                self._commit(producer, c, wait=True, drain=True)
            except Exception:
                log.exception("commit before revoke failed; the next owner re-scores more")
            self._inflight.drop_partitions(tp.partition for tp in partitions)

        def on_lost(_c: Consumer, partitions: list[TopicPartition]) -> None:
            self._inflight.drop_partitions(tp.partition for tp in partitions)

        consumer.subscribe([self._topic], on_revoke=on_revoke, on_lost=on_lost)
        failed = False
        try:
            loop.run_until_complete(self._pipeline(core, consumer, producer))
        except Exception as exc:
            failed = True
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                if not failed:
                    self._commit(producer, consumer, wait=True, drain=True)
            finally:
                consumer.close()
                producer.flush(30)
                for client in core.clients.values():
                    loop.run_until_complete(client.close())
                loop.close()

    # ------------------------------------------------------------------ the pipeline

    async def _pipeline(self, core: ScoringCore, consumer: Consumer, producer: Producer) -> None:
        scoring: deque[_Consumed] = deque()  # model calls in flight, oldest first
        while not self._stop.is_set():
            # With batches being scored, take only what is already fetched: waiting here
            # would hold back their decisions.
            timeout = 0.0 if scoring else self._batch_timeout_s
            msgs = consumer.consume(self._batch_max, timeout=timeout)
            self._ready.set()
            following = self._start(core, msgs, producer) if msgs else None
            if following is not None:
                if following.scoring is not None:
                    await asyncio.sleep(0)  # let its requests leave before this loop is busy
                scoring.append(following)
            # Beyond the depth (one batch added per turn), or with nothing new to start,
            # the oldest is waited for; any batch already scored is finished now, in order.
            if len(scoring) > self._scoring_depth or (following is None and scoring):
                await self._finish(scoring.popleft(), producer)
            while scoring and _scored(scoring[0]):
                await self._finish(scoring.popleft(), producer)
            producer.poll(0)
            self._commit(producer, consumer)
            await self._bound_in_flight(producer, consumer)
        while scoring:
            await self._finish(scoring.popleft(), producer)

    def _start(
        self, core: ScoringCore, msgs: list[Message], producer: Producer
    ) -> _Consumed | None:
        """Decode a consumed batch, register it for commit, and start scoring it."""
        started = time.perf_counter()
        consumed = consumed_columns(msgs, log)
        if not consumed.commit_to:
            return None
        inflight = self._inflight.add(consumed.commit_to)
        keys = consumed.keys()
        good_keys: list[bytes] | None = None
        try:
            features = decode_feature_messages(consumed.values, entity_ids_of(keys))
            good_keys = cast(list[bytes], keys)  # entity_ids_of refuses None
        except FeatureMessageError:
            features = self._decode_each(consumed, keys, producer, inflight)
        item = _Consumed(features, inflight, started, good_keys)
        if len(features):
            item.scoring = asyncio.ensure_future(
                core.score(features.event_ids, features.entity_ids, features.matrix, features.ts)
            )
        else:
            item.inflight.emitted = True  # nothing usable in it: committing it loses nothing
        return item

    async def _finish(self, item: _Consumed, producer: Producer) -> None:
        """Produce the batch's decisions and put its alerts in the outbox."""
        if item.scoring is None:
            return
        scored = await item.scoring
        inflight = item.inflight
        values = encode_decisions(scored)
        keys = item.keys if item.keys is not None else [e.encode() for e in scored.entity_ids]
        self._produce(producer, [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)],
                      inflight)  # fmt: skip
        alerts = scored.alerts(self.live.get())
        if alerts and self.delivery is not None:
            self.delivery.enqueue(alerts)  # durable before this batch can be committed
            for alert in alerts:
                self.metrics.alerts.labels(anomaly_type=alert.type_name).inc()
        inflight.emitted = True
        lag_s = time.time() - item.features.ts.astype(np.float64) / 1000.0
        observe_many(self.metrics.event_to_decision_seconds, lag_s)
        self.metrics.batch_seconds.observe(time.perf_counter() - item.started)
        self.decisions += len(scored)
        self.batches += 1

    def _produce(
        self, producer: Producer, messages: list[dict[str, Any]], inflight: InFlightBatch
    ) -> None:
        """All messages queued in librdkafka (waiting for room when its queue is full)."""
        while messages:
            inflight.pending += len(messages)
            try:
                queued = producer.produce_batch(
                    self._scores, messages, on_delivery=inflight.on_delivery
                )
            except BufferError:
                queued = 0
                for m in messages:
                    m["_error"] = "queue full"
            if queued == len(messages):
                return
            refused = [m for m in messages if "_error" in m]
            inflight.pending -= len(refused)  # those get no delivery report
            errors = {str(m.pop("_error")) for m in refused}
            if any("QUEUE_FULL" not in e and "queue full" not in e.lower() for e in errors):
                raise DeliveryError(f"decisions not accepted by the producer: {sorted(errors)}")
            producer.poll(_QUEUE_FULL_WAIT_S)
            messages = refused

    def _commit(
        self, producer: Producer, consumer: Consumer, *, wait: bool = False, drain: bool = False
    ) -> None:
        """Commit the durable prefix; `drain` first waits for every acknowledgement."""
        if drain:
            remaining = producer.flush(_FLUSH_TIMEOUT_S)
            if remaining:
                raise DeliveryError(f"{remaining} decisions unacknowledged; not committing")
        offsets = self._inflight.take_durable()
        if not offsets:
            return
        tps = [TopicPartition(self._topic, p, o) for p, o in offsets.items()]
        try:
            if wait:
                consumer.commit(offsets=tps, asynchronous=False)
            else:
                consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            # A commit that fails only means re-delivery, which at-least-once allows.
            log.warning("offset commit failed", extra={"error": str(exc)})
            return
        self.commits += 1

    async def _bound_in_flight(self, producer: Producer, consumer: Consumer) -> None:
        """At most `max_in_flight` batches wait for acknowledgements."""
        while len(self._inflight) > self._max_in_flight:
            producer.poll(_QUEUE_FULL_WAIT_S)
            self._commit(producer, consumer)
            await asyncio.sleep(0)

    def _decode_each(
        self,
        consumed: ConsumedColumns,
        keys: list[bytes | None],
        producer: Producer,
        inflight: InFlightBatch,
    ) -> FeatureBatch:
        """The usable messages of a batch; each unusable one goes to the dead-letter topic
        with its reason (the batch is committed only once the broker has those too)."""
        good_values, good_keys = [], []
        for i, value in enumerate(consumed.values):
            try:
                key = entity_id_of(keys[i])
                decode_feature_messages([value], [key])
            except FeatureMessageError as exc:
                inflight.pending += 1
                send_dead_letter(
                    producer,
                    self._dlq,
                    Rejected(i, value, str(exc), None),
                    key=keys[i],
                    source_topic=self._topic,
                    partition=int(consumed.partitions[i]),
                    offset=int(consumed.offsets[i]),
                    on_delivery=inflight.on_delivery,
                )
                self.metrics.dead_letters.inc()
                log.warning(
                    "features message sent to the dead-letter topic",
                    extra={
                        "reason": str(exc),
                        "partition": int(consumed.partitions[i]),
                        "offset": int(consumed.offsets[i]),
                    },
                )
                continue
            good_values.append(value)
            good_keys.append(key)
        return decode_feature_messages(good_values, good_keys)

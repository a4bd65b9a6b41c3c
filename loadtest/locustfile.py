"""Locust load tests: events into Kafka at a target rate, and the router's REST and gRPC doors.

User classes (pick them by name on the command line, or with `--tags kafka|rest|grpc`):

* `KafkaProducerUser` produces the labelled synthetic stream (services.generator, its own
  seed per user so event ids never collide) to `events` (and its ground truth to
  `events.labels`) at `--events-per-user` events/s, in batches of `--batch-size`. Each
  batch is one Locust request named `events (batch of B)`: its response time runs from
  the first `produce()` to the broker's last acknowledgement, a failed delivery fails it.
  Events per second = requests/s x B. Events carry `ts` = their due time, and a batch
  leaves when its last event is due, as the generator does, so latency measured downstream
  from `ts` is never negative.
* `RestScoringUser` posts `--items-per-request` feature vectors to `POST /v1/score`.
* `GrpcScoringUser` sends the same to `anomaly.v1.Scoring/Score`.
  Both score real feature vectors, computed once per process with the one window-feature
  definition from a generated stream; `--score-by entity` sends entity ids only, so the
  router reads the online store (the entities of a running pipeline).

Headless, 50,000 events/s for 60 s (10 users x 5,000/s over 2 processes), CSV stats:

    locust -f loadtest/locustfile.py KafkaProducerUser --headless -u 10 -r 10 -t 60s \
        --processes 2 --events-per-user 5000 --bootstrap 127.0.0.1:9092 --csv var/locust/kafka

gevent runs every user of a process on one OS thread, so nothing here may block it: Kafka
delivery reports are served by a polling greenlet per user, and gRPC is made cooperative
with `grpc.experimental.gevent` before any channel exists.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
import numpy.typing as npt
from confluent_kafka import KafkaError, Message
from locust import User, between, events, tag, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.scoring_rows import scoring_rows  # noqa: E402
from services.common.config.model import KafkaConfig  # noqa: E402
from services.common.features.definition import FEATURE_NAMES  # noqa: E402
from services.common.kafka.clients import make_producer  # noqa: E402
from services.generator import Chunk, EventStream, StreamSpec  # noqa: E402
from services.generator.columns import Columns  # noqa: E402

grpc_gevent.init_gevent()

_user_numbers = itertools.count()
"""Users of this process, numbered so that each gets its own generator seed."""


def _arguments(parser: Any) -> None:
    """Custom arguments (also settable as LOCUST_* environment variables)."""
    parser.add_argument(
        "--bootstrap",
        env_var="LOCUST_BOOTSTRAP",
        default="127.0.0.1:9092",
        help="Kafka bootstrap servers",
    )
    parser.add_argument("--events-topic", env_var="LOCUST_EVENTS_TOPIC", default="events")
    parser.add_argument(
        "--labels-topic",
        env_var="LOCUST_LABELS_TOPIC",
        default="events.labels",
        help="ground truth of the injected anomalies ('' = not sent)",
    )
    parser.add_argument(
        "--events-per-user",
        env_var="LOCUST_EVENTS_PER_USER",
        type=float,
        default=5_000.0,
        help="events/s each KafkaProducerUser produces",
    )
    parser.add_argument(
        "--batch-size",
        env_var="LOCUST_BATCH_SIZE",
        type=int,
        default=500,
        help="events per batch (one Locust request)",
    )
    parser.add_argument("--entities", env_var="LOCUST_ENTITIES", type=int, default=5_000)
    parser.add_argument(
        "--seed",
        env_var="LOCUST_SEED",
        type=int,
        default=1_000,
        help="seed of the first user; each user adds its number",
    )
    parser.add_argument(
        "--router-url",
        env_var="LOCUST_ROUTER_URL",
        default="http://127.0.0.1:8200",
        help="REST door (when -H is not given)",
    )
    parser.add_argument(
        "--router-grpc",
        env_var="LOCUST_ROUTER_GRPC",
        default="127.0.0.1:8201",
        help="gRPC door, host:port",
    )
    parser.add_argument(
        "--api-key",
        env_var="LOCUST_API_KEY",
        default="",
        is_secret=True,
        help="sent as X-API-Key / x-api-key metadata ('' = none)",
    )
    parser.add_argument(
        "--items-per-request", env_var="LOCUST_ITEMS_PER_REQUEST", type=int, default=10
    )
    parser.add_argument(
        "--score-by",
        env_var="LOCUST_SCORE_BY",
        choices=["features", "entity"],
        default="features",
        help="feature vectors, or entity ids for the online store",
    )


def _setup(environment: Environment, **_kwargs: Any) -> None:
    """The REST users' host is `-H` if given, else `--router-url`; the scoring rows are
    computed now, before the run time starts counting, not in the first users' `on_start`."""
    options = environment.parsed_options
    if options is not None and not getattr(options, "host", None):
        RestScoringUser.host = options.router_url
    if any(issubclass(cls, _Scoring) for cls in environment.user_classes):
        scoring_rows()


def _final_csv_rows(environment: Environment, **_kwargs: Any) -> None:
    """Locust's `--csv` writer rewrites its files once a second and not at exit, so the last
    batches (acknowledged while the users stopped: their `on_stop` flushes the producer)
    would be missing from the files; waiting one interval before the exit lets it write them.

    A worker of `--processes` has nothing to wait for: its final report goes to the master
    as soon as its users stopped (and the master waits only 0.5 s for it).
    """
    from locust.runners import WorkerRunner
    from locust.stats import CSV_STATS_INTERVAL_SEC

    if not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)


_hooks: Any = events
"""Locust's event hooks are untyped; listeners are registered through this name."""
_hooks.init_command_line_parser.add_listener(_arguments)
_hooks.init.add_listener(_setup)
_hooks.quitting.add_listener(_final_csv_rows)


def report(environment: Environment, **request: Any) -> None:
    """One request into Locust's statistics (what its CSV and summary show)."""
    hook: Any = environment.events.request
    hook.fire(**request)


# --------------------------------------------------------------------------- Kafka


class _Batch:
    """Acknowledgements of one batch; reports it to Locust once all of them are in."""

    __slots__ = ("environment", "error", "events", "name", "nbytes", "started", "waiting")

    def __init__(self, environment: Environment, name: str, events: int, messages: int,
                 nbytes: int) -> None:  # fmt: skip
        self.environment = environment
        self.name = name
        self.events = events
        self.waiting = messages
        self.nbytes = nbytes
        self.error: str | None = None
        self.started = time.perf_counter()

    def ack(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err.str()
        self.waiting -= 1
        if self.waiting == 0:
            report(
                self.environment,
                request_type="kafka",
                name=self.name,
                response_time=(time.perf_counter() - self.started) * 1000.0,
                response_length=self.nbytes,
                exception=RuntimeError(self.error) if self.error else None,
                context={"events": self.events},
            )


class KafkaProducerUser(User):
    """Generated events to Kafka at `--events-per-user` events/s, batch by batch."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        assert opts is not None
        worker = getattr(self.environment.runner, "worker_index", 0)
        seed = opts.seed + worker * 10_000 + next(_user_numbers)
        self.rate = float(opts.events_per_user)
        self.batch_size = int(opts.batch_size)
        self.events_topic = opts.events_topic
        self.labels_topic = opts.labels_topic
        self.name = f"events (batch of {self.batch_size})"
        spec = StreamSpec(seed=seed, entities=opts.entities, rate=self.rate,
                          start_ts_ms=round(time.time() * 1000))  # fmt: skip
        self._parts = self._slices(EventStream(spec))
        self.producer = make_producer(KafkaConfig(bootstrap_servers=opts.bootstrap), "locust")
        self.sent = 0
        self.anchor = time.perf_counter() - (time.time() - spec.start_ts_ms / 1000.0)
        self._running = True
        self._poller = gevent.spawn(self._serve_delivery_reports)

    def _slices(self, stream: EventStream) -> Iterator[Chunk]:
        """The endless stream cut into batches of exactly `batch_size` events."""
        chunks = stream.chunks()
        chunk, at = next(chunks), 0
        while True:
            if len(chunk) - at >= self.batch_size:
                yield chunk.slice(at, at + self.batch_size)
                at += self.batch_size
                continue
            head = chunk.slice(at, len(chunk))
            chunk, at = next(chunks), 0
            yield _joined(head, chunk, self.batch_size - len(head))
            at = self.batch_size - len(head)

    def _serve_delivery_reports(self) -> None:
        while self._running:
            self.producer.poll(0)
            gevent.sleep(0.005)

    @tag("kafka")
    @task
    def produce_batch(self) -> None:
        part = next(self._parts)
        wait = self.anchor + (self.sent + len(part)) / self.rate - time.perf_counter()
        if wait > 0:
            gevent.sleep(wait)
        values, keys = part.values(), part.keys()
        labels = part.labels() if self.labels_topic else []
        batch = _Batch(self.environment, self.name, len(values), len(values) + len(labels),
                       sum(map(len, values)))  # fmt: skip
        for value, key in zip(values, keys, strict=True):
            self._produce(self.events_topic, value, key, batch)
        for label in labels:
            self._produce(self.labels_topic, _label_json(label), label["event_id"].encode(), batch)
        self.sent += len(values)

    def _produce(self, topic: str, value: bytes, key: bytes, batch: _Batch) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=batch.ack)
                return
            except BufferError:  # local queue full: let librdkafka drain it, cooperatively
                self.producer.poll(0)
                gevent.sleep(0.005)

    def on_stop(self) -> None:
        """Deliver (and report) what is still queued before the user goes."""
        deadline = time.monotonic() + 30
        while len(self.producer) > 0 and time.monotonic() < deadline:
            self.producer.poll(0)
            gevent.sleep(0.01)
        self.producer.flush(1)
        self._running = False


def _joined(head: Chunk, chunk: Chunk, take: int) -> Chunk:
    """A batch that spans two generator chunks: `head` plus the first `take` of `chunk`."""
    tail = chunk.slice(0, take).columns
    columns = Columns(
        *(np.concatenate([getattr(head.columns, f.name), getattr(tail, f.name)])
          for f in dataclasses.fields(Columns))
    )  # fmt: skip
    return Chunk(columns, chunk.encoder)


def _label_json(label: Any) -> bytes:
    import orjson

    return orjson.dumps(label)


# --------------------------------------------------------------------------- router doors


class _Scoring:
    """What both door users send: random rows of the feature matrix."""

    def setup_rows(self, environment: Environment) -> None:
        opts = environment.parsed_options
        assert opts is not None
        rows = scoring_rows()
        self.entities, self.matrix = rows.entity_ids, rows.matrix
        self.items = int(opts.items_per_request)
        self.by_entity = opts.score_by == "entity"
        self.api_key = opts.api_key
        self.rng = np.random.default_rng(os.getpid() + next(_user_numbers))

    def pick(self) -> npt.NDArray[np.int64]:
        return self.rng.integers(0, len(self.entities), self.items)


class RestScoringUser(FastHttpUser, _Scoring):
    """`POST /v1/score` with a batch of items; a reply without one decision per item fails."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.setup_rows(self.environment)
        self.headers = {"X-API-Key": self.api_key} if self.api_key else {}

    @tag("rest")
    @task
    def score(self) -> None:
        rows = self.pick()
        if self.by_entity:
            items: list[dict[str, Any]] = [{"entity_id": self.entities[i]} for i in rows]
        else:
            items = [
                {"entity_id": self.entities[i],
                 "features": dict(zip(FEATURE_NAMES, self.matrix[i].tolist(), strict=True))}
                for i in rows
            ]  # fmt: skip
        with self.client.post("/v1/score", json={"items": items}, headers=self.headers,
                              name="POST /v1/score", catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
            elif len(response.json()["decisions"]) != len(items):
                response.failure("not one decision per item")


class GrpcScoringUser(User, _Scoring):
    """`anomaly.v1.Scoring/Score` with a batch of items, reported as Locust requests."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        from services.router import proto

        opts = self.environment.parsed_options
        assert opts is not None
        self.setup_rows(self.environment)
        self.pb2 = proto.load().pb2
        self.channel = grpc.insecure_channel(opts.router_grpc)
        self.stub = proto.load().grpc.ScoringStub(self.channel)
        self.metadata = (("x-api-key", self.api_key),) if self.api_key else ()
        self.target = opts.router_grpc

    def on_stop(self) -> None:
        self.channel.close()

    @tag("grpc")
    @task
    def score(self) -> None:
        pb2 = self.pb2
        rows = self.pick()
        if self.by_entity:
            items = [pb2.ScoreItem(entity_id=self.entities[i]) for i in rows]
        else:
            items = [
                pb2.ScoreItem(entity_id=self.entities[i],
                              vector=pb2.FeatureVector(values=self.matrix[i].tolist()))
                for i in rows
            ]  # fmt: skip
        request = pb2.ScoreRequest(items=items)
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self.stub.Score(request, metadata=self.metadata, timeout=30)
            length = response.ByteSize()
            if len(response.decisions) != len(items):
                exception = RuntimeError("not one decision per item")
        except grpc.RpcError as exc:
            exception = exc
        report(
            self.environment,
            request_type="grpc",
            name="anomaly.v1.Scoring/Score",
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context={},
            url=self.target,
        )

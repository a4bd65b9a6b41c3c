"""The platform's one typed configuration.

Every component reads its settings from this model; nothing reads environment variables
or files on its own. Each section forbids unknown keys so that a typo such as
`treshold:` fails at load time instead of silently falling back to a default.
Pluggable parts (online store, alert sinks) are picked by a `type:` discriminator.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.anomaly_types import AnomalyType
from services.common.features.definition import IDLE_TTL_MS_DEFAULT
from services.common.model_names import ModelName


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are immutable, and
    numbers finite (a NaN weight would silently make every weighted score NaN)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


# --------------------------------------------------------------------------- Kafka


class TopicSpec(Section):
    """One Kafka topic and the settings `anomaly topics create` gives it."""

    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """Topic name as seen by the broker."""
    partitions: int = Field(default=32, ge=1, le=10_000)
    """Partition count; bounds how many consumers of a group can work in parallel."""
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    """How long records are kept (-1 = forever)."""
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    """`compact` keeps the latest record per key (changelogs); `delete` expires by time."""
    extra: dict[str, str] = Field(default_factory=dict)
    """Further broker topic configs, passed through verbatim (e.g. `max.message.bytes`)."""


def _topic(name: str, partitions: int, days: float, policy: str = "delete") -> TopicSpec:
    return TopicSpec.model_validate(
        {
            "name": name,
            "partitions": partitions,
            "retention_ms": -1 if days < 0 else int(days * 24 * 3600 * 1000),
            "cleanup_policy": policy,
        }
    )


class TopicsConfig(Section):
    """The topics the pipeline reads and writes."""

    events: TopicSpec = _topic("events", 32, 7)
    """Raw events, key = entity id. 32 partitions bound the ingest consumer group's width."""
    features: TopicSpec = _topic("features", 32, 1)
    """One feature vector per event, for the scoring stream."""
    scores: TopicSpec = _topic("scores", 32, 3)
    """Every decision of the router, anomalous or not."""
    alerts: TopicSpec = _topic("alerts", 8, 30)
    """Decisions that crossed a threshold."""
    dlq: TopicSpec = _topic("events.dlq", 4, 30)
    """Malformed events with the reason and their source coordinates."""
    labels: TopicSpec = _topic("events.labels", 4, 30)
    """Ground truth of generated streams (event id -> anomaly type), kept out of the payload."""
    changelog: TopicSpec = _topic("features.changelog", 32, -1, "compact")
    """Window state per entity (compacted), partitioned like `events`: state moves with its
    partition on a rebalance and survives restarts. Must have as many partitions as `events`."""
    replication_factor: int = Field(default=1, ge=1, le=32)
    """Replicas per partition; 1 for the local single-node broker, 3 in production."""

    @model_validator(mode="after")
    def _changelog_mirrors_events(self) -> TopicsConfig:
        if self.changelog.partitions != self.events.partitions:
            raise ValueError(
                f"changelog.partitions ({self.changelog.partitions}) must equal "
                f"events.partitions ({self.events.partitions}): state is kept per events partition"
            )
        return self


class ProducerTuning(Section):
    """librdkafka producer settings that decide throughput.

    The defaults favour throughput (linger 20 ms, lz4, 1 MB batches) because librdkafka's
    own defaults (linger 5 ms, no compression) are meant for latency.
    """

    linger_ms: int = Field(default=20, ge=0, le=10_000)
    """How long the producer waits to fill a batch."""
    batch_size: int = Field(default=1_000_000, ge=1)
    """Maximum bytes per partition batch."""
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    """Batch compression; lz4 is cheap on CPU."""
    acks: Literal["all", "1", "0"] = "all"
    """Durability of a produce; `all` is what 'durable' means for offset commits."""
    enable_idempotence: bool = True
    """Avoid duplicates on producer retries."""
    queue_buffering_max_messages: int = Field(default=1_000_000, ge=1)
    """Local queue bound; produce() blocks (polls) when it is full."""


class KafkaConfig(Section):
    """How to reach the broker and shape the clients."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    """Comma-separated host:port list."""
    client_id: str = "anomaly-platform"
    """Prefix of client ids, visible in broker logs and metrics."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Transport security."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when a SASL protocol is used."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; set it through ANOMALY_KAFKA__SASL_PASSWORD, not in the file."""
    producer: ProducerTuning = ProducerTuning()
    """Producer throughput settings."""
    topics: TopicsConfig = TopicsConfig()
    """Topic names and layouts."""
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Further librdkafka settings applied to every client (escape hatch)."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self


# --------------------------------------------------------------------------- Feast


class SqliteOnlineStore(Section):
    """Embedded online store: a file, no server. The default for local runs."""

    type: Literal["sqlite"] = "sqlite"
    path: str = "var/feast/online_store.db"
    """SQLite file, relative to the working directory."""


class RedisOnlineStore(Section):
    """Production-style online store."""

    type: Literal["redis"]
    connection_string: str = "127.0.0.1:6379"
    """Feast's Redis connection string (`host:port,db=0,password=...`)."""
    key_ttl_seconds: int | None = Field(default=None, ge=1)
    """Expire entities that stopped sending events."""


OnlineStoreConfig = Annotated[SqliteOnlineStore | RedisOnlineStore, Field(discriminator="type")]


class FeastConfig(Section):
    """Where the Feast repository and its online store are."""

    repo_path: str = "feature_repo"
    """Directory holding `feature_store.yaml` and the feature definitions."""
    project: str = Field(default="anomaly", pattern=r"^[a-z][a-z0-9_]*$")
    """Feast project name."""
    registry_path: str = "var/feast/registry.db"
    """Feast registry file."""
    online_store: OnlineStoreConfig = SqliteOnlineStore()
    """Online store backend, selected by `type:` (sqlite or redis)."""


# --------------------------------------------------------------------------- models and serving


class ModelStoreConfig(Section):
    """The versioned model registry on disk: `<path>/<model>/<version>/`."""

    path: str = "model_store"
    """Root directory of the registry."""


class EndpointConfig(Section):
    """One model-serving endpoint speaking the Open Inference Protocol v2."""

    rest_url: str = Field(pattern=r"^https?://")
    """Base URL of the V2 REST API (`/v2/models/<name>/infer` is appended)."""
    grpc_target: str | None = None
    """host:port of the V2 gRPC API; used when `protocol` is grpc."""
    protocol: Literal["grpc", "rest"] = "grpc"
    """Which door the router uses."""
    timeout_ms: int = Field(default=200, ge=1, le=60_000)
    """Per-call deadline; past it the vote goes on without this model (degraded)."""
    retries: int = Field(default=1, ge=0, le=10)
    """Retries with jitter before the model counts as failed for this batch."""

    @model_validator(mode="after")
    def _grpc_needs_target(self) -> EndpointConfig:
        if self.protocol == "grpc" and not self.grpc_target:
            raise ValueError("protocol grpc needs grpc_target (host:port)")
        return self


def _default_endpoints() -> dict[ModelName, EndpointConfig]:
    ports = {ModelName.ISOLATION_FOREST: 8100, ModelName.XGBOOST: 8110, ModelName.TRANSFORMER: 8120}
    return {
        name: EndpointConfig(
            rest_url=f"http://127.0.0.1:{port}", grpc_target=f"127.0.0.1:{port + 1}"
        )
        for name, port in ports.items()
    }


class ServingConfig(Section):
    """Model servers and their dynamic batching."""

    endpoints: dict[ModelName, EndpointConfig] = Field(default_factory=_default_endpoints)
    """Endpoint of each model kind."""
    max_batch_size: int = Field(default=1024, ge=1, le=65_536)
    """Dynamic batching: most rows coalesced into one model call."""
    max_batch_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    """Dynamic batching: longest a request waits for company."""
    max_request_rows: int = Field(default=65_536, ge=1)
    """Larger requests are refused with a 4xx instead of stalling the server."""
    runtime: Literal["auto", "native", "onnx"] = "auto"
    """Which runtime scores a batch. `auto` follows measurement: ONNX Runtime for batches up
    to the model's `onnx_max_rows` (its per-call cost is lowest), the native library
    (scikit-learn, XGBoost `inplace_predict`) above, where it is faster. The Transformer always
    runs its ONNX export (serving never needs torch)."""
    onnx_max_rows: int | None = Field(default=None, ge=0)
    """`auto` uses ONNX Runtime for batches up to this many rows. Unset: what the served
    version's metadata records for its exporter (XGBoost 256; the Isolation Forest's
    single-node export every batch; 256 for versions that record nothing)."""
    intra_op_threads: int = Field(default=1, ge=1, le=256)
    """Threads per ONNX Runtime / XGBoost call; 1 leaves cores to the other services."""
    gpu: Literal["auto", "never"] = "auto"
    """`auto`: run ONNX models on CUDA when onnxruntime-gpu sees a GPU (all batch sizes)."""


# --------------------------------------------------------------------------- ensemble and flags


class CascadeConfig(Section):
    """Cascade strategy: the Transformer only scores events the cheap models are unsure of."""

    uncertain_low: float = Field(default=0.5, ge=0, le=1)
    """Below this combined cheap-model score an event is normal without the Transformer."""
    uncertain_high: float = Field(default=0.98, ge=0, le=1)
    """Above this the event is anomalous without the Transformer."""

    @model_validator(mode="after")
    def _ordered(self) -> CascadeConfig:
        if self.uncertain_low >= self.uncertain_high:
            raise ValueError(
                f"uncertain_low ({self.uncertain_low}) must be below "
                f"uncertain_high ({self.uncertain_high})"
            )
        return self


def _default_thresholds() -> dict[AnomalyType, float]:
    return dict.fromkeys(AnomalyType, 0.9)


class EnsembleConfig(Section):
    """How model scores become one decision."""

    strategy: Literal["weighted", "k_of_n", "any", "all", "cascade"] = "weighted"
    """Vote rule; `cascade` is `weighted` with the Transformer only in the uncertain band."""
    weights: dict[ModelName, float] = Field(
        default_factory=lambda: {
            ModelName.ISOLATION_FOREST: 1.0,
            ModelName.XGBOOST: 2.0,
            ModelName.TRANSFORMER: 1.0,
        }
    )
    """Relative weight of each model in the weighted vote."""

    def weight(self, model: ModelName) -> float:
        """The model's weight in the weighted vote (1 when it has none configured)."""
        return float(self.weights.get(model, 1.0))

    k: int = Field(default=2, ge=1, le=len(ModelName))
    """Votes needed under `k_of_n`."""
    default_threshold: float = Field(default=0.9, ge=0, le=1)
    """Calibrated score above which a model votes 'anomalous' when its type has no threshold."""
    thresholds: dict[AnomalyType, float] = Field(default_factory=_default_thresholds)
    """Threshold per anomaly type, on calibrated scores in [0, 1]."""
    cascade: CascadeConfig = CascadeConfig()
    """Band settings for the cascade strategy."""

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_unit_interval(cls, v: dict[AnomalyType, float]) -> dict[AnomalyType, float]:
        for kind, value in v.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold for {kind.value} must be within [0, 1], got {value}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights_non_negative(cls, v: dict[ModelName, float]) -> dict[ModelName, float]:
        for name, value in v.items():
            if value < 0:
                raise ValueError(f"weight of {name.value} must be >= 0, got {value}")
        if v and sum(v.values()) == 0:
            raise ValueError("at least one model weight must be positive")
        return v


class ModelFlag(Section):
    """Per-model feature flags: the rollback and experiment switches."""

    enabled: bool = True
    """A disabled model is not called at all."""
    version: str | None = None
    """Pinned registry version; None serves the version promoted in the registry."""
    shadow: bool = False
    """Score and log, but do not vote."""


class FeatureFlags(Section):
    """Switches meant to be flipped at run time by editing the file (hot-reloaded)."""

    models: dict[ModelName, ModelFlag] = Field(
        default_factory=lambda: {name: ModelFlag() for name in ModelName}
    )
    """Flags of each model."""
    alerts_enabled: bool = True
    """Global kill switch for outgoing alerts; decisions are still produced."""
    suppressed_entities: frozenset[str] = frozenset()
    """Entities that never alert (known noisy, under maintenance)."""
    forced_entities: frozenset[str] = frozenset()
    """Entities whose every anomalous-or-not decision alerts (investigation mode)."""

    def roles(self) -> tuple[tuple[ModelName, ...], tuple[ModelName, ...]]:
        """(voters, shadows): enabled models that vote, and those that only report (shadow
        mode), in ModelName order; a model without a flag votes."""
        voters: list[ModelName] = []
        shadows: list[ModelName] = []
        for name in ModelName:
            flag = self.models.get(name)
            if flag is not None and not flag.enabled:
                continue
            (shadows if flag is not None and flag.shadow else voters).append(name)
        return tuple(voters), tuple(shadows)

    @model_validator(mode="after")
    def _no_entity_both_ways(self) -> FeatureFlags:
        both = self.suppressed_entities & self.forced_entities
        if both:
            raise ValueError(f"entities both suppressed and forced: {sorted(both)}")
        return self


# --------------------------------------------------------------------------- alerts


AlertSeverity = Literal["critical", "error", "warning", "info"]
"""PagerDuty's four severities, used by every sink so that all of them agree on an alert's."""

_SINK_NAME = r"^[A-Za-z0-9._-]+$"


class PagerDutySink(Section):
    """PagerDuty Events API v2, with grouping so that a burst pages once.

    Alerts share an incident by `dedup_key = anomaly:<entity>:<type>`. The first alert of a
    key triggers; alerts arriving within `group_window_s` of the last accepted trigger are
    held in the outbox and folded into one follow-up trigger (an update of the same incident,
    which PagerDuty does not page again) when the window ends. A key that gets no alert for
    `resolve_after_s` is resolved.
    """

    type: Literal["pagerduty"]
    name: str | None = Field(default=None, max_length=64, pattern=_SINK_NAME)
    """Stable name of this sink in the outbox and metrics (default: `pagerduty`)."""
    url: str = Field(default="https://events.pagerduty.com/v2/enqueue", pattern=r"^https?://")
    """Events API endpoint; point it at `anomaly pagerduty-receiver` for local runs."""
    routing_key: SecretStr | None = None
    """Integration key; set it through ANOMALY_ALERTS__ROUTING_KEY or a Kubernetes Secret."""
    group_window_s: float = Field(default=60, ge=0, le=86_400)
    """Alerts of one entity and type within this window share one trigger (0: no grouping)."""
    resolve_after_s: float = Field(default=900, ge=0, le=30 * 86_400)
    """Resolve an incident after this long without alerts for its key (0: never resolve)."""
    timeout_s: float = Field(default=10, gt=0, le=120)
    """HTTP deadline per request; a timeout is retried like a 5xx."""

    @model_validator(mode="after")
    def _resolve_not_before_window(self) -> PagerDutySink:
        if 0 < self.resolve_after_s < self.group_window_s:
            raise ValueError(
                f"resolve_after_s ({self.resolve_after_s}) must be 0 (never) or at least "
                f"group_window_s ({self.group_window_s}): an incident would be resolved while "
                "alerts are still held for its next update"
            )
        return self


class WebhookSink(Section):
    """Generic JSON POST of a batch of alerts: `{"alerts": [<alert>, ...]}`."""

    type: Literal["webhook"]
    name: str | None = Field(default=None, max_length=64, pattern=_SINK_NAME)
    """Stable name of this sink in the outbox and metrics (default: `webhook`)."""
    url: str = Field(pattern=r"^https?://")
    """Target URL."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Extra headers (e.g. an authorization token); masked when the configuration is shown."""
    timeout_s: float = Field(default=10, gt=0, le=120)
    """HTTP deadline per request; a timeout is retried like a 5xx."""


class KafkaAlertSink(Section):
    """Alerts to the `alerts` topic (key = entity id), acks=all, for downstream consumers."""

    type: Literal["kafka"]
    name: str | None = Field(default=None, max_length=64, pattern=_SINK_NAME)
    """Stable name of this sink in the outbox and metrics (default: `kafka`)."""
    flush_timeout_s: float = Field(default=30, gt=0, le=600)
    """Longest wait for the broker to acknowledge a batch before it is retried."""


AlertSinkConfig = Annotated[
    PagerDutySink | WebhookSink | KafkaAlertSink, Field(discriminator="type")
]


def _default_sinks() -> list[AlertSinkConfig]:
    return [KafkaAlertSink(type="kafka")]


def _default_severity_scores() -> dict[AlertSeverity, float]:
    return {"critical": 0.99, "error": 0.95, "warning": 0.9}


class AlertsConfig(Section):
    """Where alerts go, how severe they are, and how undeliverable ones wait."""

    sinks: list[AlertSinkConfig] = Field(default_factory=_default_sinks)
    """Destinations, each picked by `type:` (pagerduty, webhook, kafka)."""
    outbox_path: str = "var/alerts/outbox.db"
    """Durable outbox (SQLite): alerts wait here until every sink has taken them."""
    routing_key: SecretStr | None = None
    """PagerDuty routing key shared by pagerduty sinks that set none (from env/secret)."""
    severity_min_score: dict[AlertSeverity, float] = Field(default_factory=_default_severity_scores)
    """An alert gets the highest severity whose minimum ensemble score it reaches, else info."""
    severity_floor: dict[AnomalyType, AlertSeverity] = Field(default_factory=dict)
    """Lowest severity per anomaly type, whatever the score (e.g. `price_spike: error`)."""
    retry_initial_s: float = Field(default=1.0, gt=0, le=3600)
    """First retry delay; doubled per failed attempt, with jitter, up to `retry_max_s`."""
    retry_max_s: float = Field(default=300.0, gt=0, le=86_400)
    """Longest delay between two attempts (a longer Retry-After is still honoured)."""
    give_up_after_s: float = Field(default=86_400, gt=0)
    """An alert still failing this long after its first failure is marked dead (kept)."""
    dispatch_batch_size: int = Field(default=500, ge=1, le=10_000)
    """Most alerts handed to one sink at once; bounds the dispatcher's memory."""
    dispatch_interval_s: float = Field(default=1.0, gt=0, le=60)
    """Longest the dispatcher sleeps when nothing wakes it (enqueue wakes it at once)."""
    retention_s: float = Field(default=7 * 86_400, ge=0)
    """Delivered alerts are pruned from the outbox after this long."""

    @field_validator("severity_min_score")
    @classmethod
    def _scores_in_unit_interval(cls, v: dict[str, float]) -> dict[str, float]:
        for severity, score in v.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"minimum score of {severity} must be within [0, 1], got {score}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AlertsConfig:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"retry_max_s ({self.retry_max_s}) must be >= retry_initial_s "
                f"({self.retry_initial_s})"
            )
        names = [name for name, _ in self.named_sinks()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"alert sink names must be unique, repeated: {duplicates}")
        return self

    def named_sinks(self) -> list[tuple[str, AlertSinkConfig]]:
        """Each sink with its stable name: `name:` if set, else its type for the first
        unnamed sink of that type and `<type>-2`, `<type>-3`, ... for later ones.

        The outbox keys delivery state by this name, so adding a sink must not rename one
        already there (the first was `pagerduty-1` once a second pagerduty sink was added,
        and the alerts queued for `pagerduty` were left behind): append new sinks, or name
        them."""
        seen: dict[str, int] = {}
        out: list[tuple[str, AlertSinkConfig]] = []
        for sink in self.sinks:
            if sink.name:
                out.append((sink.name, sink))
                continue
            seen[sink.type] = nth = seen.get(sink.type, 0) + 1
            out.append((sink.type if nth == 1 else f"{sink.type}-{nth}", sink))
        return out


# --------------------------------------------------------------------------- router doors


GroupInstanceId = (
    Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")] | None
)
"""Kafka static group membership (`group.instance.id`, KIP-345): a restarted process with the
same id takes its partitions back at once, where a new member waits until the group drops
the dead one (the session timeout, 45 s) after a crash or a SIGKILL. One id per process (a
StatefulSet pod name; the main job sets one); two live processes with the same id fence each
other. A static member does not leave the group when it stops, so a process that will not
come back should be given no id. Kafka's rule for the characters and length."""


class RouterConfig(Section):
    """The router's doors (stream, REST, gRPC) and its configuration watcher (read once at
    start).

    Not hot-reloaded: ports and limits are bound when the doors start, and API keys come
    from the environment (a Kubernetes Secret), which a running process cannot see change.
    The stream settings can also be given as `anomaly router` options, which win.
    """

    host: str = "127.0.0.1"
    """Address the REST and gRPC doors bind (0.0.0.0 in a pod)."""
    http_port: int = Field(default=8200, ge=0, le=65_535)
    """Port of the REST door (`/v1/score`, `/healthz`, `/readyz`, `/metrics`, `/docs`)."""
    grpc_port: int = Field(default=8201, ge=0, le=65_535)
    """Port of the gRPC door (`anomaly.v1.Scoring`, `grpc.health.v1.Health`)."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Keys accepted on `/v1/*` and the Score RPC, sent as `X-API-Key: <key>` or
    `Authorization: Bearer <key>`; empty leaves the doors open. Set them through
    `ANOMALY_ROUTER__API_KEYS='["key1","key2"]'` (from a Secret), not in the file; two keys
    allow a rotation without downtime."""
    max_body_bytes: int = Field(default=1_048_576, ge=1_024, le=64 * 1_048_576)
    """Largest request body (REST) or message (gRPC); larger ones are refused (413)."""
    max_batch_items: int = Field(default=1_000, ge=1, le=100_000)
    """Most items in one scoring request; larger batches are refused (413)."""
    reload_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the configuration file is checked for changes (hot-reloaded sections)."""
    stream_batch_max: int = Field(default=5_000, ge=1, le=100_000)
    """Most feature vectors the stream door scores as one batch (one call per model): larger
    batches spread each model call's fixed cost, smaller ones bound a batch's latency."""
    stream_batch_timeout_ms: int = Field(default=50, ge=1, le=60_000)
    """Longest wait to fill a stream batch; bounds the latency batching adds at low traffic."""
    stream_scoring_depth: int = Field(default=2, ge=1, le=16)
    """Stream batches whose model calls may be in flight at once while the door encodes and
    produces an earlier one (decisions still leave in order). 1 overlaps one batch's scoring
    with the previous batch's output; 2 also covers a model server that answers a batch
    slower than the door finishes one (measured: 54-55k -> 58-62k decisions/s on the 2-core
    machine, `loadtest/bench_router.py --parts stream`); more help remote model servers,
    at the cost of more batches scored again after a rebalance."""
    stream_max_in_flight: int = Field(default=4, ge=1, le=1_000)
    """Stream batches produced but not yet acknowledged (and committed) before the door waits
    for the broker; bounds producer memory and the batches scored again after a crash."""
    group_instance_id: GroupInstanceId = None
    """Static group membership for this process (see `GroupInstanceId`); none by default."""

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, v: list[SecretStr]) -> list[SecretStr]:
        # Checked on the list so that a refused key is never echoed into an error message.
        short = [i for i, key in enumerate(v) if len(key.get_secret_value()) < 16]
        if short:
            raise ValueError(f"API keys must have at least 16 characters; too short: {short}")
        return v


# --------------------------------------------------------------------------- generator


class IngestConfig(Section):
    """The feature-ingestion service."""

    group_id: str = "anomaly-ingest"
    """Consumer group; replicas of the service share the `events` partitions."""
    group_instance_id: GroupInstanceId = None
    """Static group membership for this process (see `GroupInstanceId`); none by default."""
    batch_max_events: int = Field(default=20_000, ge=1, le=1_000_000)
    """Most events consumed into one micro-batch."""
    batch_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    """Longest wait to fill a micro-batch; bounds the latency the batch adds."""
    allowed_lateness_ms: int = Field(default=60_000, ge=0)
    """Events further behind their entity's newest event are late: scored, not windowed."""
    max_future_ms: int = Field(default=600_000, ge=0)
    """Events timestamped further ahead of this service's clock go to the dead-letter topic
    (0: no bound). Windows end at the newest time seen, so one event stamped next year would
    make every later event of its entity late (and empty the stream's `global_rate_1m`
    panes) until then; producers' clocks drift by seconds, not by ten minutes."""
    checkpoint_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """How often changed window state goes to the changelog; bounds replay after a crash."""
    idle_state_ttl_s: float = Field(default=IDLE_TTL_MS_DEFAULT / 1000, ge=0)
    """Window state of an entity silent this long (event time) is dropped: its next event
    starts it over, and the checkpoint after it expires frees its memory and writes a
    tombstone, so the compacted changelog forgets it too (0: keep every entity for good).
    It shapes features (a restart resets an entity's history), so `anomaly replay` applies
    it too; training uses the default."""
    session_timeout_ms: int = Field(default=45_000, ge=1_000, le=300_000)
    """How long a silent (crashed) member keeps its partitions before the group moves them."""
    write_online_store: bool = True
    """Write the latest features of touched entities to the Feast online store."""
    max_in_flight_batches: int = Field(default=8, ge=1, le=1_000)
    """Batches produced but not yet acknowledged by the broker before the loop waits; bounds
    producer memory. Batches acknowledged but still waiting for their online-store write are
    not counted (the writer paces itself), so a crash may re-deliver up to one write cycle."""
    online_write_interval_s: float = Field(default=0.5, ge=0, le=60)
    """Least time between two online-store writes. Rows of entities touched meanwhile are
    merged (latest wins), so the store is written per distinct entity, not per event; offsets
    are committed when the write that covers their batch returned."""
    online_write_retry_s: float = Field(default=30.0, ge=0, le=3600)
    """How long a failing online store is retried (rows kept, nothing committed past them)
    before the service stops: long enough for a Redis failover or restart."""
    ops_host: str = "127.0.0.1"
    """Address of the health/metrics HTTP server (0.0.0.0 in a pod)."""
    ops_port: int = Field(default=9100, ge=0, le=65_535)
    """Port of `/healthz`, `/readyz` and `/metrics` (0 picks a free port)."""


class GeneratorConfig(Section):
    """Defaults of `anomaly generate`, the labelled synthetic stream."""

    seed: int = 42
    """Same seed, same stream, byte for byte."""
    entities: int = Field(default=5_000, ge=1, le=10_000_000)
    """Number of distinct entities."""
    anomaly_rate: float = Field(default=0.01, ge=0, le=0.5)
    """Fraction of events that are injected anomalies."""
    payment_share: float = Field(default=0.5, ge=0, le=1)
    """Fraction of entities that are payment accounts (the rest trade instruments)."""


# --------------------------------------------------------------------------- root


class PlatformConfig(BaseSettings):
    """Root of the configuration: `config/platform.yaml`, overridden by `ANOMALY_*` variables.

    Environment variables use `__` between levels, e.g.
    `ANOMALY_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
    `ANOMALY_FEAST__ONLINE_STORE__TYPE=redis`.
    """

    model_config = SettingsConfigDict(
        env_prefix="ANOMALY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )

    kafka: KafkaConfig = KafkaConfig()
    """Broker, clients and topics."""
    feast: FeastConfig = FeastConfig()
    """Feature store."""
    model_store: ModelStoreConfig = ModelStoreConfig()
    """Model registry."""
    serving: ServingConfig = ServingConfig()
    """Model-serving endpoints."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """Vote rules and thresholds."""
    flags: FeatureFlags = FeatureFlags()
    """Hot-reloadable switches."""
    alerts: AlertsConfig = AlertsConfig()
    """Alert sinks and outbox."""
    router: RouterConfig = RouterConfig()
    """REST and gRPC doors of the router."""
    ingest: IngestConfig = IngestConfig()
    """Feature-ingestion service."""
    generator: GeneratorConfig = GeneratorConfig()
    """Synthetic stream defaults."""

    @model_validator(mode="after")
    def _someone_can_flag(self) -> PlatformConfig:
        """Under the weighted vote (and the cascade) a model of weight 0 adds nothing and is
        not even called, so when every voting model weighs 0 no event could ever be flagged,
        silently (the evaluation's metrics fail on the all-NaN scores instead)."""
        if self.ensemble.strategy not in ("weighted", "cascade"):
            return self
        voters, _ = self.flags.roles()
        if voters and not any(self.ensemble.weight(m) > 0 for m in voters):
            raise ValueError(
                "ensemble.weights: every voting model ("
                + ", ".join(m.value for m in voters)
                + f") has weight 0 under the {self.ensemble.strategy} vote, so no event could "
                "ever be flagged; give one of them a weight > 0 or enable another model "
                "(flags.models)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment beats the file: the file arrives as init kwargs, so env goes first."""
        return env_settings, init_settings, file_secret_settings

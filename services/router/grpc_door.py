"""The gRPC door: `anomaly.v1.Scoring/Score` over the scoring core, plus gRPC health.

As thin as the REST door: protobuf items are turned into the same plain data the REST door
receives and validated by the same models (`schemas.parse_batch`), so an invalid item gets
the same message under INVALID_ARGUMENT; `RouterError` statuses map to gRPC codes in one
table. The standard health service (`grpc.health.v1.Health`, what Kubernetes' gRPC probes
and `grpc_health_probe` call) answers from the same readiness check as `/readyz`, and
server reflection lets `grpcurl` list and call the service without the .proto at hand.
Health and reflection stay open; only Score needs a key when keys are configured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.features.definition import FEATURE_NAMES
from services.router import proto
from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics
from services.router.schemas import (
    Decision,
    RequestScorer,
    RouterError,
    invalid_request,
    parse_batch,
)
from services.router.security import ApiKeys

if TYPE_CHECKING:
    from services.common.feast_store.reader import OnlineFeatureReader

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,  # as the model servers answer an oversized batch
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
HEALTH_POLL_S = 1.0
"""How often a Watch stream re-reads readiness (the protocol pushes changes only)."""


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (INTERNAL for anything unexpected)."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


def _plain_items(request: Any) -> list[dict[str, Any]]:
    """Protobuf items as the plain data the REST door gets; the vector form becomes a map,
    so both forms are checked by the same validator."""
    items: list[dict[str, Any]] = []
    for i, item in enumerate(request.items):
        plain: dict[str, Any] = {"entity_id": item.entity_id}
        if item.event_id:
            plain["event_id"] = item.event_id
        form = item.WhichOneof("features")
        if form == "by_name":
            plain["features"] = dict(item.by_name.values)
        elif form == "vector":
            values = list(item.vector.values)
            if len(values) != len(FEATURE_NAMES):
                raise invalid_request(
                    [
                        f"items.{i}.features: expected {len(FEATURE_NAMES)} values in "
                        f"FEATURE_NAMES order, got {len(values)}"
                    ]
                )
            plain["features"] = dict(zip(FEATURE_NAMES, values, strict=True))
        items.append(plain)
    return items


def _decision_message(pb2: Any, d: Decision) -> Any:
    message = pb2.Decision(
        event_id=d.event_id,
        entity_id=d.entity_id,
        ts=d.ts,
        decided_at=d.decided_at,
        anomalous=d.anomalous,
        alert=d.alert,
        threshold=d.threshold,
        strategy=d.strategy,
        degraded=d.degraded,
        model_scores={m: s for m, s in d.model_scores.items() if s is not None},
        model_versions=d.model_versions,
        explanation=d.explanation,
        top_features=[pb2.TopFeature(feature=t.feature, z=t.z) for t in d.top_features],
    )
    if d.score is not None:
        message.score = d.score
    if d.anomaly_type is not None:
        message.anomaly_type = d.anomaly_type.value
    return message


class ScoringService:
    """`anomaly.v1.Scoring`: registered by method name, so it needs no generated base."""

    def __init__(self, scorer: RequestScorer, keys: ApiKeys) -> None:
        self._scorer = scorer
        self._keys = keys
        self._pb2 = proto.load().pb2

    async def Score(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """One decision per item, in order."""
        try:
            self._keys.check_metadata(context.invocation_metadata())
            batch = parse_batch({"items": _plain_items(request)})
            decisions = await self._scorer.score(batch.items)
        except RouterError as exc:
            if exc.status >= 500:
                log.warning("score request failed", extra={"error": exc.message})
            await context.abort(grpc_code(exc.status), exc.message)
            raise AssertionError("abort returns only by raising") from exc
        pb2 = self._pb2
        return pb2.ScoreResponse(decisions=[_decision_message(pb2, d) for d in decisions])


class HealthService:
    """`grpc.health.v1.Health` answering from the readiness check, for the whole server
    ("") and for `anomaly.v1.Scoring`."""

    def __init__(self, ready: Check | None, service_name: str) -> None:
        self._ready = ready
        self._services = {"", service_name}

    def _status(self, service: str) -> Any:
        status = health_pb2.HealthCheckResponse
        if service not in self._services:
            return status.SERVICE_UNKNOWN
        ok = self._ready is None or self._ready()[0]
        return status.SERVING if ok else status.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """The current status (NOT_FOUND for a service this server does not have)."""
        status = self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The status now, then each change, until the client leaves."""
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(HEALTH_POLL_S)


def create_grpc_server(
    core: ScoringCore,
    reader: OnlineFeatureReader | None,
    live: LiveConfig,
    metrics: RouterMetrics,
    port: int,
    *,
    ready: Check | None = None,
) -> grpc.aio.Server:
    """The gRPC door bound to `router.host:port`, not started (`await server.start()` in the
    loop that also runs the REST door: the core's model channels belong to that loop).

    `ready` drives the health service (SERVING when it says ok; always SERVING without it).
    `metrics` are the core's; the door adds none of its own.
    """
    del metrics  # counted by the core
    settings = live.get().router
    keys = ApiKeys(settings.api_keys)
    if not keys.enabled:
        log.warning("router gRPC door is open: no router.api_keys configured")
    protos = proto.load()
    service_name = protos.pb2.DESCRIPTOR.services_by_name["Scoring"].full_name
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    scorer = RequestScorer(core, reader, max_items=settings.max_batch_items)
    protos.grpc.add_ScoringServicer_to_server(ScoringService(scorer, keys), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(ready, service_name), server)
    reflection.enable_server_reflection(
        (service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    bound = server.add_insecure_port(f"{settings.host}:{port}")
    log.info("router gRPC door bound", extra={"host": settings.host, "port": bound})
    return server

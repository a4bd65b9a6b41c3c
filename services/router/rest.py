"""The REST door: FastAPI over the scoring core.

Thin by design (ARCHITECTURE.md, "one core, several doors"): requests are validated by the
shared models in `schemas.py`, scored through `RequestScorer` (the path the gRPC door takes
too), and every error a client can cause leaves through one handler that maps a
`RouterError` to its status and an `ErrorBody`. Client input never produces a 500: the
validation handler never echoes raw input into JSON (a NaN would make the error answer
itself unserialisable), and bodies over `router.max_body_bytes` are cut off while they
stream in, before any parsing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics
from services.router.schemas import (
    ID_MAX_LENGTH,
    EntityFeatures,
    ErrorBody,
    RequestScorer,
    RouterError,
    ScoreRequest,
    ScoreResponse,
    describe_errors,
    invalid_request,
    items_of,
)
from services.router.security import ApiKeys

if TYPE_CHECKING:
    from services.common.feast_store.reader import OnlineFeatureReader

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""Returns (ok, detail), as for `services.common.ops_server`."""

_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of router.api_keys.")
_BEARER = HTTPBearer(auto_error=False, description="One of router.api_keys, as a bearer token.")

_EXAMPLE_FEATURES = {
    "count_1m": 3.0, "count_5m": 9.0, "count_1h": 41.0, "rate_ratio_1m_1h": 4.4,
    "amount_sum_1m": 812.5, "amount_sum_1h": 9_120.0, "amount_mean_5m": 240.1,
    "amount_mean_1h": 222.4, "log_amount_std_1h": 0.61, "log_amount": 6.2,
    "amount_zscore": 1.3, "price_dev_ma": 0.12, "volume_ratio_median": 1.8,
    "spread_ratio": 1.0, "level_shift": 0.2, "time_since_prev_s": 14.0,
    "log_gap_recent": 2.6, "gap_shift": 0.3,
    "distinct_counterparties_1h": 5.0, "distinct_countries_1h": 1.0,
    "counterparty_novel": 0.0, "counterparty_streak": 0.69, "country_novel": 0.0,
    "entity_events_seen": 5.3,
    "global_rate_1m": 480.0,
}  # fmt: skip
_SCORE_EXAMPLES: dict[str, Any] = {
    "by_entity": {
        "summary": "One entity, features read from the online store",
        "value": {"entity_id": "acct-000042"},
    },
    "explicit": {
        "summary": "One event with its features",
        "value": {"entity_id": "acct-000042", "event_id": "evt-1", "features": _EXAMPLE_FEATURES},
    },
    "batch": {
        "summary": "A batch",
        "value": {"items": [{"entity_id": "acct-000042"}, {"entity_id": "acct-000043"}]},
    },
}


def _error(status: int, message: str, problems: list[str] | None = None) -> JSONResponse:
    body = ErrorBody(error=message, problems=problems or [])
    return JSONResponse(body.model_dump(), status_code=status)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody} for s in statuses}


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413: at once when Content-Length says so, and
    while streaming otherwise (chunked uploads declare no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes (router.max_body_bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, self._too_large())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched (others become
                    # a generic 400), and the handler below shapes it like every error.
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)


def _install_error_handlers(app: FastAPI) -> None:
    async def router_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RouterError)
        response = _error(exc.status, exc.message, exc.problems)
        response.headers.update(exc.headers)
        return response

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = describe_errors(exc.errors())
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return _error(400, problems[0])  # not JSON at all: 400; JSON but invalid: 422
        error = invalid_request(problems)
        return _error(error.status, error.message, error.problems)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        detail = str(exc.detail)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            detail = f"body is not valid JSON: it must be UTF-8 ({exc.__cause__.reason})"
        response = _error(exc.status_code, detail)
        response.headers.update(exc.headers or {})
        return response

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return _error(500, "internal error (logged by the router)")

    app.add_exception_handler(RouterError, router_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _v1(scorer: RequestScorer, keys: ApiKeys) -> APIRouter:
    async def authenticate(
        api_key: Annotated[str | None, Security(_API_KEY)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    ) -> None:
        keys.check(api_key=api_key, bearer=bearer.credentials if bearer else None)

    guarded = keys.enabled
    v1 = APIRouter(
        prefix="/v1",
        dependencies=[Depends(authenticate)] if guarded else [],
        responses=_errors(401) if guarded else {},
    )

    @v1.post(
        "/score",
        response_model=ScoreResponse,
        responses=_errors(400, 404, 409, 413, 422, 503),
        summary="Score one event or a batch",
        description="A body with `items` is a batch; any other body is one item. Items "
        "without `features` are scored on the entity's latest features in the online store. "
        f"At most {scorer.max_items} items per request. A model outage does not fail the "
        "request: its decisions come back with `degraded: true`.",
    )
    async def score(
        request: Annotated[ScoreRequest, Body(openapi_examples=_SCORE_EXAMPLES)],
    ) -> Response:
        # Already JSON (`ScoredRows.json`): a Response skips FastAPI's validation and
        # serialisation of the return value; `response_model` still documents it.
        rows = await scorer.score_rows(items_of(request))
        return Response(rows.json(), media_type="application/json")

    @v1.get(
        "/entities/{entity_id}/features",
        response_model=EntityFeatures,
        responses=_errors(404, 422, 503),
        summary="The latest online features of an entity",
    )
    async def entity_features(
        entity_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH)],
    ) -> EntityFeatures:
        return await scorer.features(entity_id)

    return v1


def _ops(ready: Check, registry: CollectorRegistry) -> APIRouter:
    ops = APIRouter(tags=["operations"])
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    @ops.get("/healthz", response_class=PlainTextResponse, summary="Liveness")
    async def healthz() -> str:
        return "ok\n"

    @ops.get(
        "/readyz",
        response_class=PlainTextResponse,
        responses={503: {"description": "Not ready", **text}},
        summary="Readiness: the doors may take traffic",
    )
    async def readyz() -> PlainTextResponse:
        ok, detail = ready()
        return PlainTextResponse(detail + "\n", status_code=200 if ok else 503)

    @ops.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return ops


def create_app(
    core: ScoringCore,
    reader: OnlineFeatureReader | None,
    live: LiveConfig,
    metrics: RouterMetrics,
    ready: Check,
    *,
    registry: CollectorRegistry = REGISTRY,
) -> FastAPI:
    """The REST door. `router.*` settings are read now (ports and limits need a restart);
    flags and ensemble settings are read by the core per request, so hot reloads apply.

    `metrics` are the core's (it counts decisions, model latency and failures); they are
    scraped from `registry` at `/metrics`.
    """
    del metrics  # counted by the core; the door adds no series of its own
    settings = live.get().router
    keys = ApiKeys(settings.api_keys)
    scorer = RequestScorer(core, reader, max_items=settings.max_batch_items)
    if not keys.enabled:
        log.warning("router REST door is open: no router.api_keys configured")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        scorer.close()

    app = FastAPI(
        title="Anomaly router",
        version="1",
        summary="Scores events with the anomaly-detection ensemble.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    app.include_router(_v1(scorer, keys))
    app.include_router(_ops(ready, registry))
    return app

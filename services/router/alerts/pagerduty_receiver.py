"""A local stand-in for PagerDuty's Events API v2, for tests, demos and local runs.

It answers like the real endpoint (202 on success; 400 with `errors` for events PagerDuty
would refuse, from the shared `pagerduty_events.validate_event`), keeps incidents by
dedup_key (trigger opens or updates, acknowledge acknowledges, resolve closes, with
counts), and can be told to fail: faults queued on `/control/faults` answer the next
requests with 429 (with Retry-After) or 5xx, so retries are tested against real HTTP.

Endpoints:
    POST /v2/enqueue        the Events API
    GET  /v2/events         every accepted event, oldest first
    GET  /v2/incidents      incidents by dedup_key
    GET  /healthz, /metrics
    POST /control/faults    {"status": 429, "count": 3, "retry_after": 1}  (queued in order)
    DELETE /control/faults  drop queued faults
    GET  /control/requests  every request to /v2/enqueue with its answer and arrival time
    POST /control/reset     forget events, incidents, requests and faults
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from services.router.alerts.pagerduty_events import EVENT_ACTIONS, validate_event

MAX_KEPT = 100_000
"""Events and requests kept for inspection; older ones are dropped (bounded memory)."""


class FaultSpec(BaseModel):
    """Body of POST /control/faults: answer the next `count` requests with `status`."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(ge=400, le=599)
    count: int = Field(default=1, ge=1, le=1_000_000)
    retry_after: float | None = Field(default=None, ge=0)
    """Retry-After header in seconds; fractions are sent as given, to keep tests fast."""


@dataclass
class Fault:
    """A queued fault: the next `remaining` requests are answered with `status`."""

    status: int
    remaining: int
    retry_after: float | None


@dataclass
class Incident:
    """One dedup_key's incident as the receiver sees it."""

    dedup_key: str
    status: str
    summary: str
    severity: str
    source: str
    created_at: float
    updated_at: float
    trigger_count: int = 0
    acknowledge_count: int = 0
    resolve_count: int = 0
    times_opened: int = 1
    custom_details: Any = None


@dataclass
class ReceiverState:
    """Everything the receiver remembers; shared by its request handlers (one event loop)."""

    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_KEPT))
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_KEPT))
    incidents: dict[str, Incident] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    """Faults answer requests in the order they were queued."""

    def take_fault(self) -> Fault | None:
        """The fault that answers this request, if one is queued."""
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self.faults.popleft()
        return fault

    def apply(self, event: dict[str, Any], now: float) -> str:
        """Record an accepted event and update its incident; returns its dedup_key."""
        action = event["event_action"]
        key = event.get("dedup_key") or uuid.uuid4().hex
        self.events.append({"received_at": now, "event": event})
        incident = self.incidents.get(key)
        if action == "trigger":
            payload = event["payload"]
            if incident is None:
                incident = Incident(
                    dedup_key=key,
                    status="triggered",
                    summary=payload["summary"],
                    severity=payload["severity"],
                    source=payload["source"],
                    created_at=now,
                    updated_at=now,
                )
                self.incidents[key] = incident
            elif incident.status == "resolved":
                incident.status = "triggered"
                incident.times_opened += 1
            incident.summary = payload["summary"]
            incident.severity = payload["severity"]
            incident.custom_details = payload.get("custom_details")
            incident.trigger_count += 1
        elif incident is not None and action == "acknowledge":
            incident.status = "acknowledged"
            incident.acknowledge_count += 1
        elif incident is not None and action == "resolve":
            incident.status = "resolved"
            incident.resolve_count += 1
        if incident is not None:
            incident.updated_at = now
        return key


def _metrics(registry: CollectorRegistry, state: ReceiverState) -> Counter:
    requests = Counter(
        "pagerduty_receiver_requests_total",
        "Requests to /v2/enqueue by answered status and event action.",
        ["status", "action"],
        registry=registry,
    )
    open_incidents = Gauge(
        "pagerduty_receiver_open_incidents",
        "Incidents not resolved.",
        registry=registry,
    )
    open_incidents.set_function(
        lambda: sum(1 for i in state.incidents.values() if i.status != "resolved")
    )
    return requests


def create_receiver_app(state: ReceiverState | None = None) -> FastAPI:
    """The receiver as a FastAPI app (its own state and metrics registry)."""
    state = state or ReceiverState()
    registry = CollectorRegistry()
    requests_total = _metrics(registry, state)
    app = FastAPI(title="PagerDuty Events API v2 (local receiver)", docs_url=None, redoc_url=None)
    app.state.receiver = state

    @app.post("/v2/enqueue")
    async def enqueue(request: Request) -> Response:
        now = time.time()
        try:
            raw = await request.body()
        except ClientDisconnect:
            # The sender gave up (it was stopping); it will retry from its outbox.
            return Response(status_code=499)
        event: Any = None
        errors: list[str] = []
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors = ["Request body is not valid JSON"]
        action = event.get("event_action") if isinstance(event, dict) else None
        action_label = action if action in EVENT_ACTIONS else "invalid"  # bounded labels
        dedup_key = event.get("dedup_key") if isinstance(event, dict) else None

        def answer(
            status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> Response:
            state.requests.append(
                {"at": now, "status": status, "event_action": action, "dedup_key": dedup_key}
            )
            requests_total.labels(str(status), action_label).inc()
            return JSONResponse(body, status_code=status, headers=headers)

        fault = state.take_fault()
        if fault is not None:
            headers = None
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"}
            message = "Rate limit reached" if fault.status == 429 else "Injected fault"
            return answer(fault.status, {"status": "error", "message": message}, headers)
        errors = errors or validate_event(event)
        if errors:
            return answer(
                400,
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
            )
        key = state.apply(event, now)
        return answer(202, {"status": "success", "message": "Event processed", "dedup_key": key})

    @app.get("/v2/events")
    async def events() -> dict[str, Any]:
        return {"events": list(state.events)}

    @app.get("/v2/incidents")
    async def incidents() -> dict[str, Any]:
        return {"incidents": [asdict(i) for i in state.incidents.values()]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/control/faults", status_code=201)
    async def add_fault(spec: FaultSpec) -> dict[str, int]:
        state.faults.append(Fault(spec.status, spec.count, spec.retry_after))
        return {"queued": sum(f.remaining for f in state.faults)}

    @app.delete("/control/faults")
    async def clear_faults() -> dict[str, int]:
        state.faults.clear()
        return {"queued": 0}

    @app.get("/control/requests")
    async def requests() -> dict[str, Any]:
        return {"requests": list(state.requests)}

    @app.post("/control/reset")
    async def reset() -> dict[str, str]:
        state.events.clear()
        state.requests.clear()
        state.incidents.clear()
        state.faults.clear()
        return {"status": "reset"}

    return app


class ReceiverServer:
    """The receiver served by uvicorn on a background thread (port 0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = ReceiverState()
        self.host = host
        config = uvicorn.Config(
            create_receiver_app(self.state),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="pagerduty-receiver", daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> ReceiverServer:
        """Serve and wait until the socket is bound."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"PagerDuty receiver did not start on {self.host}")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        """The bound port."""
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8300."""
        return f"http://{self.host}:{self.port}"

    @property
    def enqueue_url(self) -> str:
        """The Events API URL to configure as a pagerduty sink's `url`."""
        return f"{self.url}/v2/enqueue"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_receiver(host: str = "127.0.0.1", port: int = 8300) -> None:
    """Serve in the foreground until interrupted (the `anomaly pagerduty-receiver` command)."""
    # log_config=None: keep the logging that `main()` set up instead of uvicorn's own.
    uvicorn.run(create_receiver_app(), host=host, port=port, log_config=None, access_log=False)


__all__ = ["ReceiverServer", "ReceiverState", "create_receiver_app", "serve_receiver"]

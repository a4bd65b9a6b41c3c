"""The V2 model servers as a Ray Serve application: the same models, requests and answers.

Why a second door onto the same models: KServe's ModelServer is one process per model kind,
scaled by Kubernetes (an HPA or Knative). Ray Serve scales replicas inside one Ray cluster
(KubeRay's `RayService`), places them by `num_cpus` / `num_gpus`, and autoscales them on
queue length, which suits GPU pools shared by several model kinds. Everything that decides a
score is shared with the KServe server: versions come from `Registry.load` via
`server.load_versions`, batches are scored by `ModelRunner` (the same per-batch choice of
ONNX Runtime or the native library, CUDA when present), and requests are validated by
`VersionedModel.decode`, so both servers accept, refuse and score exactly alike.

Shape of the application: one deployment per model kind (`ModelDeployment`, named after the
kind, with its own replicas and resources). When an application serves one model (KubeRay:
one application per model under `/<model>`) that deployment is also the HTTP ingress, so a
request costs no extra hop. When it serves several, a thin `Gateway` ingress forwards the raw
request to the deployment of the named model through a deployment handle.

REST only, V2 JSON as KServe's: POST `/v2/models/<name>/infer` (or
`/v2/models/<name>/versions/<v>/infer`) with one FP32 tensor `features`; the answer carries
`score`, `raw` and, for XGBoost, `anomaly_type`. A client mistake is 400 `{"error": ...}`
with KServe's message; an unknown model or version is 404.

Dynamic batching is Ray's `@serve.batch`, bounded in rows (not requests) by a batch-size
function so that `serving.max_batch_size` means what it means for the KServe server; a request
that alone fills a batch skips the queue. Scoring runs in one worker thread per replica so
that the replica's event loop keeps answering (and the model never runs two batches at once
on the cores Ray reserved for it).

    serve run services.serving.ray_app:build_app config_path=config/platform.yaml \
        models=isolation_forest,xgboost
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.registry import LoadedModel, Registry, ScoreBatch
from services.common.config import PlatformConfig, load_config
from services.common.model_names import ModelName

log = logging.getLogger(__name__)

Rows = npt.NDArray[np.float32]
Scored = tuple[ScoreBatch, str]
"""A request's scores and the runtime (onnx / native) that computed them."""
Answer = tuple[int, bytes]
"""HTTP status and JSON body: what the core answers, whichever door asked."""
Item = tuple[str, Rows]
"""One request waiting for a batch: the version it asked for and its rows."""
BatchFn = Callable[[list[Item]], Coroutine[Any, Any, list[Scored]]]
ItemFn = Callable[[Item], Awaitable[Scored]]


class RayAppArgs(BaseModel):
    """Arguments of `build_app` (`serve run ... key=value`, or `args:` in a Serve config).

    `models` is what `serve run` users pass; `model` + `model_dir` is what the Helm chart's
    RayService passes (one application per model, the store mounted at `model_dir`'s parent).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_path: str | None = None
    """Platform configuration file; default: $ANOMALY_CONFIG, else config/platform.yaml,
    else built-in defaults."""
    models: list[ModelName] = Field(default_factory=list)
    """Model kinds to serve: a list, a comma list, or `all`."""
    model: ModelName | None = None
    """One model kind (the chart's form); joins `models`."""
    model_dir: str | None = None
    """`<store>/<model>` (the chart's form): overrides `model_store.path` with its parent."""
    versions: str = "default"
    """`default` (pinned, else promoted, else latest), `all`, or a comma list such as `1,2`."""
    num_replicas: int | Literal["auto"] = 1
    """Replicas per model deployment; `auto` lets Serve autoscale on ongoing requests."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs Ray reserves per model replica (scoring is single-threaded per replica)."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per model replica; > 0 puts ONNX models on CUDA (needs onnxruntime-gpu)."""
    gateway_num_cpus: float = Field(default=0.25, ge=0)
    """CPUs per gateway replica (multi-model applications only: it only forwards bytes)."""
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests in flight per replica; default `serving.max_batch_size`, so that one-row
    requests can fill a whole batch."""
    access_log: bool = False
    """Ray Serve logs a line per request by default; like the KServe server, we do not."""

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip() == "all":
                return list(ModelName)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def model_names(self) -> list[ModelName]:
        """The kinds to serve, each once, in the order given."""
        names = list(self.models) + ([self.model] if self.model is not None else [])
        unique = list(dict.fromkeys(names))
        if not unique:
            raise ValueError("name the models to serve: models=isolation_forest,xgboost (or all)")
        return unique

    def store(self, config: PlatformConfig) -> Path:
        """The registry root."""
        if self.model_dir is None:
            return Path(config.model_store.path)
        folder = Path(self.model_dir)
        if self.model is not None and folder.name != self.model.value:
            raise ValueError(f"model_dir {folder} must end with the model name {self.model}")
        return folder.parent


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one model deployment loads (pickled to every replica)."""

    name: ModelName
    store: str
    versions: str
    config: PlatformConfig


@dataclass(slots=True)
class BatchStats:
    """Model calls made by one replica: `requests > calls` means batching happened."""

    calls: int = 0
    requests: int = 0
    rows: int = 0
    largest_batch_requests: int = 0
    largest_batch_rows: int = 0

    def add(self, requests: int, rows: int) -> None:
        """One model call that scored `requests` requests holding `rows` rows."""
        self.calls += 1
        self.requests += requests
        self.rows += rows
        self.largest_batch_requests = max(self.largest_batch_requests, requests)
        self.largest_batch_rows = max(self.largest_batch_rows, rows)


# --------------------------------------------------------------------------- the model core


class ModelCore:
    """Validation, batching and scoring of one model kind: the part both doors share.

    No Ray in it, so the deployment classes stay thin and the core can be exercised with a
    deterministic stand-in for the batcher. `batcher` turns a per-batch coroutine into a
    per-request one (Ray's `serve.batch` in a replica); `on_batch(version, requests, rows,
    seconds)` observes every model call.
    """

    def __init__(
        self,
        spec: ModelSpec,
        batcher: Callable[[BatchFn], ItemFn],
        on_batch: Callable[[str, int, int, float], None] | None = None,
    ) -> None:
        from services.serving.metrics import ServingMetrics
        from services.serving.runtime import ModelRunner, RuntimePolicy
        from services.serving.server import load_versions
        from services.serving.v2_model import VersionedModel

        serving = spec.config.serving
        registry = Registry(spec.store)
        loaded, default = load_versions(registry, spec.name, spec.config, spec.versions)
        policy = RuntimePolicy.from_config(serving)
        self.name = spec.name
        self.default_version = default
        self.max_batch_rows = serving.max_batch_size
        self._versions = {m.version: m for m in loaded}
        self._runners = {m.version: ModelRunner(m, policy) for m in loaded}
        # The KServe model is used only for its request validation (`decode`): it is never
        # loaded, so it opens no runtime; its metrics go to a private registry.
        from prometheus_client import CollectorRegistry

        self._codec = VersionedModel(
            spec.name,
            loaded,
            default,
            policy,
            max_batch_rows=serving.max_batch_size,
            max_batch_delay_s=serving.max_batch_delay_ms / 1000.0,
            max_request_rows=serving.max_request_rows,
            metrics=ServingMetrics(CollectorRegistry()),
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"score-{spec.name}")
        self._lock = threading.Lock()
        self.stats = BatchStats()
        self._on_batch = on_batch
        self._batched = batcher(self._score_batch)
        self.use_cuda = policy.use_cuda
        log.info(
            "ray model replica loaded",
            extra={"model": spec.name.value, "versions": self.versions, "default": default},
        )

    @property
    def versions(self) -> list[str]:
        """Loaded versions, oldest first."""
        return sorted(self._versions, key=int)

    # ------------------------------------------------------------------ requests

    async def infer_json(self, model_name: str, version: str | None, body: bytes) -> Answer:
        """One V2 REST inference: status and JSON body (the answer, or the error)."""
        try:
            return HTTPStatus.OK, await self._infer(model_name, version, body)
        except Exception as exc:
            return error_answer(exc)

    async def _infer(self, model_name: str, version: str | None, body: bytes) -> bytes:
        from kserve.errors import InvalidInput, ModelNotFound
        from kserve.protocol.infer_type import InferRequest
        from kserve.protocol.rest.v2_datamodels import InferenceRequest

        if model_name != self.name.value:
            raise ModelNotFound(model_name)
        model = self._model_for(version)
        try:
            parsed = InferenceRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidInput(f"not a V2 inference request: {exc}") from None
        request = InferRequest.from_inference_request(parsed, model_name)
        x = self._codec.decode(request, model)
        batch, _runtime = await self.score(model.version, x)
        outputs = [_json_output("score", "FP32", batch.score.astype(np.float32))]
        outputs.append(_json_output("raw", "FP32", batch.raw.astype(np.float32)))
        if batch.anomaly_type is not None:
            outputs.append(_json_output("anomaly_type", "INT32", batch.anomaly_type))
        answer = {
            "id": request.id or str(uuid.uuid4()),
            "model_name": self.name.value,
            "model_version": model.version,
            "outputs": outputs,
        }
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    def _model_for(self, version: str | None) -> LoadedModel:
        from kserve.errors import ModelNotFound

        chosen = version or self.default_version
        model = self._versions.get(chosen)
        if model is None:
            raise ModelNotFound(
                f"{self.name.value} version {chosen} (loaded: {', '.join(self.versions)})"
            )
        return model

    # ------------------------------------------------------------------ scoring

    async def score(self, version: str, x: Rows) -> Scored:
        """Score a validated batch, coalesced with concurrent requests unless it fills one."""
        if len(x) >= self.max_batch_rows:
            loop = asyncio.get_running_loop()
            (result,) = await loop.run_in_executor(self._executor, self._run, [(version, x)])
            return result
        return await self._batched((version, x))

    async def _score_batch(self, items: list[Item]) -> list[Scored]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, items)

    def _run(self, items: list[Item]) -> list[Scored]:
        """Score a batch of requests, one model call per version among them."""
        out: list[Scored | None] = [None] * len(items)
        by_version: dict[str, list[int]] = {}
        for i, (version, _) in enumerate(items):
            by_version.setdefault(version, []).append(i)
        for version, members in by_version.items():
            parts = [items[i][1] for i in members]
            x = parts[0] if len(parts) == 1 else np.concatenate(parts)
            started = time.perf_counter()
            batch, runtime = self._runners[version].score(x)
            if len(batch.score) != len(x):
                raise RuntimeError(f"model returned {len(batch.score)} scores for {len(x)} rows")
            with self._lock:
                self.stats.add(len(members), len(x))
            if self._on_batch is not None:
                self._on_batch(version, len(members), len(x), time.perf_counter() - started)
            start = 0
            for i, part in zip(members, parts, strict=True):
                stop = start + len(part)
                types = batch.anomaly_type[start:stop] if batch.anomaly_type is not None else None
                out[i] = (
                    ScoreBatch(batch.score[start:stop], batch.raw[start:stop], types),
                    runtime,
                )
                start = stop
        return [r for r in out if r is not None]


def _json_output(name: str, datatype: str, values: npt.NDArray[Any]) -> dict[str, Any]:
    return {"name": name, "shape": [len(values)], "datatype": datatype, "data": values}


def error_answer(exc: BaseException) -> Answer:
    """KServe's status and `{"error": message}` body for an exception."""
    from kserve.errors import InvalidInput, ModelNotFound

    if isinstance(exc, InvalidInput):
        status = HTTPStatus.BAD_REQUEST
    elif isinstance(exc, ModelNotFound):
        status = HTTPStatus.NOT_FOUND
    else:
        log.exception("inference failed", exc_info=exc)
        status = HTTPStatus.INTERNAL_SERVER_ERROR
    return status, orjson.dumps({"error": str(exc)})


def _http(answer: Answer) -> Response:
    status, body = answer
    return Response(body, status_code=status, media_type="application/json")


def _not_found(name: str) -> Response:
    from kserve.errors import ModelNotFound

    return _http(error_answer(ModelNotFound(name)))


def _ready(name: str, version: str | None = None) -> Response:
    body: dict[str, Any] = {"name": name, "ready": True}
    if version is not None:
        body["version"] = version
    return _http((HTTPStatus.OK, orjson.dumps(body)))


_LIVE = orjson.dumps({"live": True, "ready": True})


# --------------------------------------------------------------------------- Ray doors


def _serve_batcher(max_rows: int, delay_s: float) -> Callable[[BatchFn], ItemFn]:
    """Ray's `serve.batch`, bounded in rows: the config's batch limits are row counts."""
    from ray import serve

    def rows(items: list[Item]) -> int:
        return sum(len(x) for _, x in items)

    decorator = serve.batch(
        max_batch_size=max_rows, batch_wait_timeout_s=delay_s, batch_size_fn=rows
    )

    def wrap(fn: BatchFn) -> ItemFn:
        batched: ItemFn = decorator(fn)
        return batched

    return wrap


def _batch_metrics(name: ModelName) -> Callable[[str, int, int, float], None]:
    """Batch histograms under the KServe server's names, exported by Ray's metrics agent
    (Ray prefixes `ray_` and adds deployment, replica and application tags)."""
    from ray.serve.metrics import Histogram

    tags: Any = ("model_name", "model_version")  # Ray annotates tag_keys as a 1-tuple
    rows = Histogram(
        "anomaly_serving_batch_rows",
        "Rows per model call after dynamic batching.",
        [1, 8, 64, 256, 1024, 4096, 16384, 65536],
        tags,
    )
    requests = Histogram(
        "anomaly_serving_batch_requests",
        "Requests coalesced into one model call.",
        [1, 2, 4, 8, 16, 32, 64, 128],
        tags,
    )
    seconds = Histogram(
        "anomaly_serving_batch_seconds",
        "Model call duration.",
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
        tags,
    )

    def observe(version: str, n_requests: int, n_rows: int, took: float) -> None:
        labels = {"model_name": name.value, "model_version": version}
        rows.observe(n_rows, labels)
        requests.observe(n_requests, labels)
        seconds.observe(took, labels)

    return observe


def model_routes(core: ModelCore) -> FastAPI:
    """The V2 REST routes of one model kind (the model deployment as ingress)."""
    api = FastAPI(title=f"{core.name.value} (Ray Serve)", openapi_url=None)

    @api.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        return _http(await core.infer_json(model_name, None, await request.body()))

    @api.post("/v2/models/{model_name}/versions/{model_version}/infer")
    async def infer_version(model_name: str, model_version: str, request: Request) -> Response:
        return _http(await core.infer_json(model_name, model_version, await request.body()))

    @api.get("/v2/health/live")
    @api.get("/v2/health/ready")
    async def health() -> Response:
        # Serve routes to a replica only once its constructor (loading) has returned.
        return _http((HTTPStatus.OK, _LIVE))

    @api.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> Response:
        if model_name != core.name.value:
            return _not_found(model_name)
        return _ready(model_name)

    @api.get("/v2/models/{model_name}/versions/{model_version}/ready")
    async def version_ready(model_name: str, model_version: str) -> Response:
        if model_name != core.name.value or model_version not in core.versions:
            return _not_found(f"{model_name} version {model_version}")
        return _ready(model_name, model_version)

    return api


def gateway_routes(
    forward: Callable[[str, str | None, bytes], Awaitable[Answer]], names: list[str]
) -> FastAPI:
    """The V2 REST routes of a multi-model application, forwarding to the models."""
    api = FastAPI(title="anomaly models (Ray Serve)", openapi_url=None)

    async def answer(model_name: str, version: str | None, body: bytes) -> Response:
        if model_name not in names:
            return _not_found(model_name)
        return _http(await forward(model_name, version, body))

    @api.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        return await answer(model_name, None, await request.body())

    @api.post("/v2/models/{model_name}/versions/{model_version}/infer")
    async def infer_version(model_name: str, model_version: str, request: Request) -> Response:
        return await answer(model_name, model_version, await request.body())

    @api.get("/v2/health/live")
    @api.get("/v2/health/ready")
    async def health() -> Response:
        # `serve.run` returns once every deployment of the application is running.
        return _http((HTTPStatus.OK, _LIVE))

    @api.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> Response:
        if model_name not in names:
            return _not_found(model_name)
        return _ready(model_name)

    return api


class ModelDeployment:
    """Ray Serve replica of one model kind.

    Reached by the gateway through `infer_json`, or, when the application serves this model
    alone, directly over HTTP: Serve then calls `__serve_build_asgi_app__` after the
    constructor, and the routes close over this replica's core (no class-based-view magic,
    no FastAPI object shared at module level).
    """

    def __init__(self, spec: ModelSpec) -> None:
        serving = spec.config.serving
        self.core = ModelCore(
            spec,
            _serve_batcher(serving.max_batch_size, serving.max_batch_delay_ms / 1000.0),
            _batch_metrics(spec.name),
        )

    async def infer_json(self, model_name: str, version: str | None, body: bytes) -> Answer:
        """One V2 REST inference (status and JSON body): the gateway's door."""
        return await self.core.infer_json(model_name, version, body)

    async def describe(self) -> dict[str, Any]:
        """Name, versions, and the batches made so far (read by tests and operators)."""
        stats = self.core.stats
        return {
            "name": self.core.name.value,
            "versions": self.core.versions,
            "default_version": self.core.default_version,
            "cuda": self.core.use_cuda,
            "batches": {
                "calls": stats.calls,
                "requests": stats.requests,
                "rows": stats.rows,
                "largest_batch_requests": stats.largest_batch_requests,
                "largest_batch_rows": stats.largest_batch_rows,
            },
        }

    def __serve_build_asgi_app__(self) -> FastAPI:
        return model_routes(self.core)


class Gateway:
    """Ingress of a multi-model application: forwards raw requests to the named model."""

    def __init__(self, handles: Mapping[str, Any]) -> None:
        self._handles = dict(handles)

    async def _forward(self, model_name: str, version: str | None, body: bytes) -> Answer:
        answer: Answer = await self._handles[model_name].infer_json.remote(
            model_name, version, body
        )
        return answer

    def __serve_build_asgi_app__(self) -> FastAPI:
        return gateway_routes(self._forward, sorted(self._handles))


# --------------------------------------------------------------------------- builder


def build_app(args: Mapping[str, Any] | RayAppArgs | None = None) -> Any:
    """The Ray Serve application (`serve run services.serving.ray_app:build_app k=v ...`).

    Also callable from Python: `serve.run(build_app({"models": "xgboost"}))`. Returns a
    `ray.serve.Application`; typed `Any` so that this module imports without Ray installed.
    """
    from ray import serve
    from ray.serve.schema import LoggingConfig

    spec = args if isinstance(args, RayAppArgs) else RayAppArgs.model_validate(dict(args or {}))
    config = load_config(spec.config_path)
    names = spec.model_names()
    store = str(spec.store(config))
    logging_config = LoggingConfig(enable_access_log=spec.access_log)
    in_flight = spec.max_ongoing_requests or config.serving.max_batch_size
    # Serve allows one FastAPI ingress per application: the model deployment is the ingress
    # only when it is alone, otherwise the gateway is and reaches it through handles.
    model_cls = serve.ingress()(ModelDeployment) if len(names) == 1 else ModelDeployment
    bound = {
        name.value: serve.deployment(
            name=name.value,
            num_replicas=spec.num_replicas,
            ray_actor_options={"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus},
            max_ongoing_requests=in_flight,
            logging_config=logging_config,
        )(model_cls).bind(ModelSpec(name, store, spec.versions, config))
        for name in names
    }
    if len(bound) == 1:
        return next(iter(bound.values()))
    return serve.deployment(
        name="gateway",
        num_replicas=spec.num_replicas,
        ray_actor_options={"num_cpus": spec.gateway_num_cpus},
        max_ongoing_requests=in_flight * len(bound),
        logging_config=logging_config,
    )(serve.ingress()(Gateway)).bind(bound)


app = build_app
"""The import path the Helm chart's RayService names (`services.serving.ray_app:app`)."""

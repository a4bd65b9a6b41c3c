#!/usr/bin/env python3
"""Model serving side by side: the in-process limit, our KServe server, a stock-equivalent
KServe server and Ray Serve, on the same model files, in one run.

    .venv/bin/python loadtest/bench_serving.py                     # ~2-3 minutes
    .venv/bin/python loadtest/bench_serving.py --duration 3 --models xgboost
    .venv/bin/python loadtest/bench_serving.py --compare-gpu       # ONNX Runtime CPU vs CUDA

For each model and batch size (rows per request), interleaved so that a change in the
machine's background load hits every contender alike:

(a) in process: `ModelRunner` with the native library and with ONNX Runtime (one thread,
    as the server runs them); the faster of the two is the limit the servers are held to;
(b) ours: `anomaly serve` (KServe ModelServer + our VersionedModel, dynamic batching, per-batch
    runtime choice), over gRPC with raw binary tensors and over REST with V2 JSON;
(c) stock-equivalent: KServe's sklearn/XGBoost runtimes (sklearnserver, xgbserver) are not
    published on PyPI, so the nearest real thing runs instead: a plain `kserve.Model` doing
    what their `SKLearnModel` / `XGBoostModel` do (joblib / XGBoost JSON loaded, `predict`
    on the native model per request, inline on the event loop, no dynamic batching, KServe's
    default logging), over the same gRPC and REST;
(d) Ray Serve: `services.serving.ray_app`, one application per model as the Helm chart
    deploys it, over REST.

The load is closed-loop with `--concurrency` requests in flight (so that dynamic batching has
something to coalesce); requests are encoded once beforehand, so the client's cost is the
protocol, not building payloads. Then single-row requests, first one at a time
(`--single-requests`: the server's CPU per request, which busy neighbours disturb least),
then at a fixed `--paced-rate` per model (open loop: send times are fixed in advance, and
latency counts from the planned send time, so a stalled server cannot hide its queue), each
model alone and all of them at once: in process first (our batcher and ModelRunner on the
same schedule in this process, so the p99 that the machine's scheduling alone produces is
measured in the same run), then against our server over gRPC and REST, and against
`--compare-tree`'s server (another checkout) as `before`.

Everything shares this machine's cores: the client, the servers, Ray's processes and other
people's jobs. Each row says how many cores the servers and the client used and how many
other processes took meanwhile; the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from local_process import free_port  # noqa: E402

from loadtest.procstat import (  # noqa: E402
    descendants,
    load_average,
    machine_busy_seconds,
    process_cpu_seconds,
)
from models.registry import LoadedModel, Registry  # noqa: E402
from services.common.model_names import ModelName  # noqa: E402

F32 = npt.NDArray[np.float32]
Call = Callable[[], Awaitable[None]]

STOCK_KINDS = (ModelName.ISOLATION_FOREST, ModelName.XGBOOST)
"""Model kinds a stock KServe runtime exists for (sklearnserver, xgbserver)."""
TARGETS = {
    "grpc_vs_limit_1024": 0.8,
    "ours_vs_stock": 2.0,
    "paced_p99_ms": 5.0,
}


# --------------------------------------------------------------------------- data and models


def feature_rows(events: int, seed: int) -> Any:
    """Feature rows of a generated stream: real rows give realistic tree paths."""
    from models.dataset import generated_features
    from services.generator import StreamSpec

    return generated_features(StreamSpec(seed=seed, entities=300, anomaly_rate=0.03), events)


def train_registry(root: Path, size: str, names: Sequence[ModelName]) -> None:
    """A registry trained like the integration tests' (`fixture`) or with the platform's
    default hyperparameters (`production`: 100 trees / 300 boosting rounds of depth 8)."""
    from dataclasses import replace

    from models.training import TrainSettings, small_settings, train_all
    from models.transformer import TransformerSettings
    from models.xgb_classifier import XGBoostSettings

    data = feature_rows(20_000, seed=5)
    if size == "fixture":
        settings = replace(small_settings(seed=1), models=tuple(names))
    else:
        settings = TrainSettings(
            seed=1,
            models=tuple(names),
            xgboost=XGBoostSettings(threads=1),
            transformer=TransformerSettings(epochs=1, max_sequences=3_000, device="cpu"),
        )
    train_all(data, settings, Registry(root))


def inputs_for(model: LoadedModel, data: Any, rows: int) -> F32:
    """`rows` inputs for `model` (sequences for the Transformer) from real feature rows."""
    if model.sequence_length:
        from models.sequences import gather_sequences, history_index

        index = history_index(data.entity, model.sequence_length)[-rows:]
        x: F32 = np.nan_to_num(gather_sequences(data.matrix, index))
        return x
    matrix: F32 = np.ascontiguousarray(data.matrix[-rows:], dtype=np.float32)
    return matrix


def tile(x: F32, rows: int) -> F32:
    """Exactly `rows` inputs, repeating `x` when it is shorter."""
    reps = -(-rows // len(x))
    out: F32 = np.ascontiguousarray(np.concatenate([x] * reps)[:rows])
    return out


# --------------------------------------------------------------------------- measuring


@dataclass
class Usage:
    """CPU used during one measurement, in cores (CPU seconds per wall second)."""

    server_cores: float | None
    client_cores: float
    other_cores: float


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    return [pid, *descendants(pid)]


def _cpu(pid: int) -> float:
    """CPU seconds of one process; 0 once it is gone (sums over worker processes)."""
    return process_cpu_seconds(pid, gone=0.0)


def busy_neighbours(seconds: float = 1.0, top: int = 6) -> list[dict[str, Any]]:
    """The processes outside this benchmark that used the most CPU over `seconds`."""
    mine = set(_tree(os.getpid()))
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    before = {pid: _cpu(pid) for pid in pids if pid not in mine}
    time.sleep(seconds)
    used: list[dict[str, Any]] = []
    for pid, t0 in before.items():
        cores = (_cpu(pid) - t0) / seconds
        if cores > 0.02:
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            command = raw.replace(b"\0", b" ").decode(errors="replace").strip()[:140]
            used.append({"pid": pid, "cores": round(cores, 2), "command": command})
    return sorted(used, key=lambda u: -float(u["cores"]))[:top]


class CpuMeter:
    """CPU of the server processes, of this process and of everything else on the machine.

    The machine is shared: `other_cores` is what processes other than the servers and this
    client took during the measurement, so a bad row can be told from a busy neighbour.
    """

    def __init__(self, server_pids: Callable[[], list[int]]) -> None:
        self._server_pids = server_pids

    def _server_cpu(self, pids: list[int]) -> dict[int, float]:
        return {pid: _cpu(pid) for pid in pids}

    @contextmanager
    def measure(self) -> Iterator[list[Usage]]:
        """Yields a list that holds one Usage once the block has run."""
        out: list[Usage] = []
        pids = self._server_pids()
        t0 = time.perf_counter()
        machine0 = machine_busy_seconds()
        me0 = _cpu(os.getpid())
        server0 = self._server_cpu(pids)
        yield out
        wall = time.perf_counter() - t0
        me = _cpu(os.getpid()) - me0
        server1 = self._server_cpu(pids)
        server = sum(server1[p] - server0[p] for p in pids if server1[p] >= server0[p])
        machine = machine_busy_seconds() - machine0
        other = max(0.0, machine - me - server)
        out.append(Usage(server / wall if pids else None, me / wall, other / wall))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


@dataclass
class Run:
    """What a closed-loop or paced run observed."""

    requests: int
    seconds: float
    latencies_s: list[float]
    errors: int
    first_error: str = ""


async def closed_loop(call: Call, concurrency: int, duration: float, warmup: float) -> Run:
    """`concurrency` callers back to back for `warmup + duration` s; counts the answers that
    arrive in the last `duration` s (whenever they were sent), so slow answers are not lost."""
    latencies: list[float] = []
    errors = 0
    first_error = ""
    window = [float("inf"), float("inf")]

    async def caller() -> None:
        nonlocal errors, first_error
        while True:
            start = time.perf_counter()
            if start >= window[1]:
                return
            try:
                await call()
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            if window[0] <= end <= window[1]:  # answered inside the measured window
                latencies.append(end - start)

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    window[0] = time.perf_counter()
    window[1] = window[0] + duration
    await asyncio.gather(*tasks)
    return Run(len(latencies), duration, latencies, errors, first_error)


async def open_loop(call: Call, rate: float, duration: float) -> Run:
    """One call every 1/rate s whatever the answers; latency from the planned send time."""
    latencies: list[float] = []
    errors = 0
    first_error = ""

    async def one(planned: float) -> None:
        nonlocal errors, first_error
        try:
            await call()
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            return
        latencies.append(time.perf_counter() - planned)

    n = int(rate * duration)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        planned = start + i / rate
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(planned)))
    await asyncio.gather(*tasks)
    return Run(len(latencies), time.perf_counter() - start, latencies, errors, first_error)


# --------------------------------------------------------------------------- clients


class GrpcClient:
    """V2 gRPC over one HTTP/2 channel; tensors as raw little-endian bytes (as the router)."""

    def __init__(self, target: str) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    @staticmethod
    def request(model: str, x: F32, version: str = "") -> Any:
        """The V2 request for `x` (`version` empty: the server's default version)."""
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        return pb.ModelInferRequest(
            model_name=model,
            model_version=version,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="features", datatype="FP32", shape=list(x.shape)
                )
            ],
            raw_input_contents=[np.ascontiguousarray(x, dtype="<f4").tobytes()],
        )

    def caller(self, model: str, x: F32, version: str = "") -> Call:
        """A coroutine function sending one pre-built request for `x`."""
        request = self.request(model, x, version)

        async def call() -> None:
            await self._stub.ModelInfer(request, timeout=30)

        return call

    async def infer(self, model: str, x: F32, version: str = "") -> Any:
        """One answer (the ModelInferResponse)."""
        return await self._stub.ModelInfer(self.request(model, x, version), timeout=30)

    async def check(self, model: str, x: F32) -> int:
        """Rows in the first output of a real answer (the servers must answer every row)."""
        response = await self.infer(model, x)
        return int(response.outputs[0].shape[0])

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


class RestClient:
    """V2 JSON over keep-alive HTTP/1.1 connections (aiohttp, which KServe depends on)."""

    def __init__(self, concurrency: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency + 4),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    def caller(self, url: str, x: F32) -> Call:
        """A coroutine function posting one pre-encoded request for `x`."""
        body = v2_json(x)
        headers = {"content-type": "application/json"}

        async def call() -> None:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return call

    async def check(self, url: str, x: F32) -> int:
        """Rows in the first output of a real answer."""
        async with self._session.post(
            url, data=v2_json(x), headers={"content-type": "application/json"}
        ) as response:
            answer = orjson.loads(await response.read())
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {answer}")
            return int(answer["outputs"][0]["shape"][0])

    async def close(self) -> None:
        """Close the connections."""
        await self._session.close()


def v2_json(x: F32) -> bytes:
    """A V2 REST request body with one FP32 tensor `features`."""
    tensor = {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


# --------------------------------------------------------------------------- servers


class Subprocess:
    """A server process with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, argv: list[str], log: Path, ready_url: str, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.log = log
        self.ready_url = ready_url
        self.proc = subprocess.Popen(
            argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until the readiness URL answers 200."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def pids(self) -> list[int]:
        """This server's processes."""
        return _tree(self.proc.pid)

    def stop(self) -> None:
        """Terminate (and wait for) the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RayServe:
    """A local Ray instance serving one Ray Serve application per model (the chart's shape)."""

    def __init__(self, config: Path, names: Sequence[ModelName], cpus: int) -> None:
        import ray
        from ray import serve

        from services.serving.ray_app import build_app

        self.port = free_port()
        self._own = {os.getpid()}
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run_many(
            [
                serve.RunTarget(
                    build_app(
                        {
                            "config_path": str(config),
                            "model": n.value,
                            "num_cpus": cpus / len(names),
                        }
                    ),
                    name=n.value,
                    route_prefix=f"/{n.value}",
                )
                for n in names
            ]
        )

    def url(self, name: ModelName) -> str:
        """The V2 infer URL of a model (under its application's route prefix)."""
        return f"http://127.0.0.1:{self.port}/{name.value}/v2/models/{name.value}/infer"

    def pids(self, exclude: set[int]) -> list[int]:
        """Ray's processes: everything this process started except the other servers."""
        mine = _tree(os.getpid())
        return [p for p in mine if p not in exclude and p not in self._own]

    def stop(self) -> None:
        """Shut Serve and the Ray instance down."""
        import ray
        from ray import serve

        api: Any = serve  # untyped in Ray, absent where the extra is not installed
        api.shutdown()
        ray.shutdown()


# --------------------------------------------------------------------------- stock-equivalent


def stock_server_main(store: Path, http_port: int, grpc_port: int) -> None:
    """KServe's ModelServer with stock-equivalent sklearn/XGBoost models, defaults otherwise.

    This mirrors `kserve/python/sklearnserver/sklearnserver/model.py` and
    `kserve/python/xgbserver/xgbserver/model.py`: load the native file, then per request
    `get_predict_input` -> `model.predict` (scikit-learn) or `Booster.predict(DMatrix(...))`
    (XGBoost, `nthread` 1 as xgbserver's default) -> `get_predict_response`, synchronously.
    """
    import kserve

    models = []
    registry = Registry(store)
    for name in STOCK_KINDS:
        if registry.latest(name) is None:
            continue
        version = registry.resolve(name)
        models.append(stock_model(name, registry.version_dir(name, version)))
    for model in models:
        model.load()
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port).start(models)


def stock_model(name: ModelName, folder: Path) -> Any:
    """A plain kserve.Model doing what the stock runtime for `name` does."""
    import kserve
    from kserve.utils.utils import get_predict_input, get_predict_response

    class StockEquivalent(kserve.Model):  # type: ignore[misc]
        def load(self) -> bool:
            if name is ModelName.XGBOOST:
                import xgboost as xgb

                self._booster = xgb.Booster(
                    params={"nthread": 1}, model_file=str(folder / "model.json")
                )
            else:
                import joblib

                self._model = joblib.load(folder / "model.joblib")
            self.ready = True
            return True

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            instances = get_predict_input(payload)
            if name is ModelName.XGBOOST:
                import xgboost as xgb

                result = self._booster.predict(xgb.DMatrix(instances, nthread=1))
            else:
                result = self._model.predict(instances)
            return get_predict_response(payload, result, self.name)

    return StockEquivalent(name.value)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Row:
    """One measurement."""

    model: str
    batch: int
    contender: str
    protocol: str
    rows_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int = 0
    ratio_to_limit: float | None = None
    rows_per_cpu_s: float | None = None
    """Rows per CPU second of the server (in process: of the scoring thread): the figure
    that neighbours on a shared machine disturb least."""
    cpu_ratio_to_limit: float | None = None
    server_cores: float | None = None
    client_cores: float | None = None
    other_cores: float | None = None
    note: str = ""


@dataclass
class Paced:
    """Single-row requests at a fixed rate."""

    model: str
    """A model, or `all` for the three at once (each at `rate`; figures over every request)."""
    contender: str
    """`in-process` (our batcher and ModelRunner in the benchmark's process: no protocol, no
    server), `ours`, or
    `before` (the server of `--compare-tree`)."""
    protocol: str
    rate: float
    """Requests per second per model."""
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    p99_vs_in_process: float | None = None
    """p99 over the in-process p99 of the same model(s) in this run: what the door and the
    server add on top of what the machine's scheduling does to the same schedule."""
    server_cores: float | None = None
    client_cores: float | None = None
    other_cores: float | None = None
    note: str = ""


@dataclass
class Single:
    """One single-row request at a time (closed loop, one in flight): what a request costs the
    server in CPU, the figure a busy neighbour disturbs least, and its unloaded latency."""

    model: str
    contender: str
    protocol: str
    requests: int
    server_cpu_ms_per_request: float
    p50_ms: float
    p99_ms: float
    vs_before: float | None = None
    """CPU per request over the `before` server's, same model and door, this run."""


@dataclass
class Report:
    """Everything one run measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    single: list[Single] = field(default_factory=list)
    paced: list[Paced] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)


def measure_inproc(
    model: LoadedModel, mode: Literal["native", "onnx"], x: F32, duration: float, threads: int
) -> Run:
    """Back-to-back `ModelRunner.score` calls on one thread (the server's scoring path)."""
    from services.serving.runtime import ModelRunner, RuntimePolicy

    runner = ModelRunner(model, RuntimePolicy(mode, 0, threads, False))
    runner.score(x)
    latencies = []
    deadline = time.perf_counter() + duration
    while (start := time.perf_counter()) < deadline:
        runner.score(x)
        latencies.append(time.perf_counter() - start)
    return Run(len(latencies), sum(latencies), latencies, 0)


def _row(
    model: str, batch: int, contender: str, protocol: str, run: Run, usage: Usage | None
) -> Row:
    lat_ms = [v * 1000 for v in run.latencies_s]
    rows_per_s = run.requests * batch / run.seconds if run.seconds else 0.0
    cores = None if usage is None else usage.server_cores
    if usage is not None and contender == "in-process":
        cores = usage.client_cores
    return Row(
        model=model,
        batch=batch,
        contender=contender,
        protocol=protocol,
        rows_per_s=rows_per_s,
        rows_per_cpu_s=rows_per_s / cores if cores else None,
        requests_per_s=run.requests / run.seconds if run.seconds else 0.0,
        p50_ms=percentile(lat_ms, 0.5),
        p99_ms=percentile(lat_ms, 0.99),
        requests=run.requests,
        errors=run.errors,
        server_cores=usage.server_cores if usage else None,
        client_cores=usage.client_cores if usage else None,
        other_cores=usage.other_cores if usage else None,
        note=run.first_error,
    )


async def run_benchmark(args: argparse.Namespace, store: Path, work: Path) -> Report:
    """Start every server, measure every cell interleaved, stop everything."""
    names = [ModelName(n) for n in args.models.split(",")]
    registry = Registry(store)
    loaded = {n: registry.load(n) for n in names}
    data = feature_rows(12_000, seed=11)
    batches = [int(b) for b in args.batches.split(",")]
    samples = {n: inputs_for(loaded[n], data, max(batches)) for n in names}
    threads = 1

    config = work / "platform.yaml"
    serving = {
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "max_batch_size": args.max_batch_size,
        "gpu": "never",
    }
    config.write_text(yaml.safe_dump({"model_store": {"path": str(store)}, "serving": serving}))
    skip = set(args.skip.split(",")) if args.skip else set()

    servers: dict[str, Subprocess] = {}
    http, grpc_port = free_port(), free_port()
    servers["ours"] = Subprocess(
        "ours",
        [sys.executable, "-m", "services.cli.main", "serve", ",".join(n.value for n in names),
         "-c", str(config), "--http-port", str(http), "--grpc-port", str(grpc_port),
         "--log-level", "WARNING"],
        work / "ours.log",
        f"http://127.0.0.1:{http}/v2/health/ready",
    )  # fmt: skip
    ports = {"ours": (http, grpc_port)}
    if args.compare_tree is not None:
        http, grpc_port = free_port(), free_port()
        servers["before"] = Subprocess(
            "before",
            [sys.executable, "-m", "services.cli.main", "serve", ",".join(n.value for n in names),
             "-c", str(config), "--http-port", str(http), "--grpc-port", str(grpc_port),
             "--log-level", "WARNING"],
            work / "before.log",
            f"http://127.0.0.1:{http}/v2/health/ready",
            cwd=args.compare_tree.resolve(),
        )  # fmt: skip
        ports["before"] = (http, grpc_port)
    stock_names = [n for n in names if n in STOCK_KINDS]
    if "stock" not in skip and stock_names:
        http, grpc_port = free_port(), free_port()
        servers["stock"] = Subprocess(
            "stock",
            [sys.executable, str(Path(__file__).resolve()), "stock-server", "--model-store",
             str(store), "--http-port", str(http), "--grpc-port", str(grpc_port)],
            work / "stock.log",
            f"http://127.0.0.1:{http}/v2/health/ready",
        )  # fmt: skip
        ports["stock"] = (http, grpc_port)
    ray: RayServe | None = None
    notes: list[str] = []
    try:
        if "ray" not in skip:
            try:
                ray = RayServe(config, names, os.cpu_count() or 2)
            except ImportError:
                notes.append("ray: the ray extra is not installed (pip install -e '.[ray]')")
        for server in servers.values():
            server.wait_ready()
        report = Report(machine={}, settings={})
        report.settings["notes"] = notes
        if ray is not None:  # what an idle Ray instance costs the other contenders
            others = {p for s in servers.values() for p in s.pids()}
            with CpuMeter(functools.partial(ray.pids, others)).measure() as idle:
                await asyncio.sleep(1.0)
            report.settings["ray_idle_cores"] = idle[0].server_cores
        await _measure_all(
            args, report, names, loaded, samples, batches, threads, ports, servers, ray
        )
    finally:
        for server in servers.values():
            server.stop()
        if ray is not None:
            ray.stop()
    return report


async def _measure_all(
    args: argparse.Namespace,
    report: Report,
    names: list[ModelName],
    loaded: dict[ModelName, LoadedModel],
    samples: dict[ModelName, F32],
    batches: list[int],
    threads: int,
    ports: dict[str, tuple[int, int]],
    servers: dict[str, Subprocess],
    ray: RayServe | None,
) -> None:
    server_pids = {p for s in servers.values() for p in s.pids()}
    grpc_clients = {k: GrpcClient(f"127.0.0.1:{g}") for k, (_h, g) in ports.items()}
    rest = RestClient(args.concurrency)

    def rest_url(key: str, name: ModelName) -> str:
        return f"http://127.0.0.1:{ports[key][0]}/v2/models/{name.value}/infer"

    try:
        for name, batch in (
            [] if "closed" in args.skip.split(",") else [(n, b) for n in names for b in batches]
        ):
            x = tile(samples[name], batch)
            cells: list[tuple[str, str, Call, Callable[[], list[int]]]] = []
            for key in ("ours", "stock"):
                if key not in servers or (key == "stock" and name not in STOCK_KINDS):
                    continue
                pids = servers[key].pids
                # Every contender must answer every row before it is timed.
                _expect(await grpc_clients[key].check(name.value, x), batch, f"{key} grpc")
                _expect(await rest.check(rest_url(key, name), x), batch, f"{key} rest")
                cells.append((key, "grpc", grpc_clients[key].caller(name.value, x), pids))
                cells.append((key, "rest", rest.caller(rest_url(key, name), x), pids))
            if ray is not None:
                _expect(await rest.check(ray.url(name), x), batch, "ray rest")
                ray_pids = functools.partial(ray.pids, server_pids)
                cells.append(("ray", "rest", rest.caller(ray.url(name), x), ray_pids))
            limit = 0.0
            modes: tuple[Literal["native", "onnx"], ...] = ("native", "onnx")
            for mode in modes:
                meter = CpuMeter(list)
                with meter.measure() as usage:
                    run = measure_inproc(loaded[name], mode, x, args.inproc_duration, threads)
                row = _row(name.value, batch, "in-process", mode, run, usage[0])
                limit = max(limit, row.rows_per_s)
                report.rows.append(row)
                _progress(row)
            for contender, protocol, call, pids in cells:
                meter = CpuMeter(pids)
                with meter.measure() as usage:
                    run = await closed_loop(call, args.concurrency, args.duration, args.warmup)
                row = _row(name.value, batch, contender, protocol, run, usage[0])
                report.rows.append(row)
                _progress(row)
            group = [r for r in report.rows if r.model == name.value and r.batch == batch]
            cpu_limit = max(r.rows_per_cpu_s or 0.0 for r in group if r.contender == "in-process")
            for row in group:
                row.ratio_to_limit = row.rows_per_s / limit if limit else None
                if row.rows_per_cpu_s is not None and cpu_limit:
                    row.cpu_ratio_to_limit = row.rows_per_cpu_s / cpu_limit
        if args.paced_rate > 0:
            doors: dict[str, dict[str, Callable[[ModelName], Call]]] = {
                key: {
                    "grpc": functools.partial(_grpc_caller, grpc_clients[key], samples),
                    "rest": functools.partial(_rest_caller, rest, ports[key][0], samples),
                }
                for key in ("ours", "before")
                if key in servers
            }
            await measure_paced(args, report, names, loaded, samples, doors, servers)
    finally:
        await rest.close()
        for client in grpc_clients.values():
            await client.close()


def _grpc_caller(client: GrpcClient, samples: dict[ModelName, F32], name: ModelName) -> Call:
    return client.caller(name.value, tile(samples[name], 1))


def _rest_caller(
    client: RestClient, http_port: int, samples: dict[ModelName, F32], name: ModelName
) -> Call:
    url = f"http://127.0.0.1:{http_port}/v2/models/{name.value}/infer"
    return client.caller(url, tile(samples[name], 1))


def _inproc_caller(model: LoadedModel, x: F32, args: argparse.Namespace) -> Call:
    """The server's scoring path without the server: our DynamicBatcher over a ModelRunner
    (same settings) in this process, no protocol, no other process."""
    from models.registry import ScoreBatch
    from services.serving.batching import DynamicBatcher
    from services.serving.runtime import ModelRunner, RuntimePolicy

    runner = ModelRunner(model, RuntimePolicy("auto", None, 1, False))

    def run(rows: F32) -> ScoreBatch:
        return runner.score(rows)[0]

    def split(batch: ScoreBatch, start: int, stop: int) -> ScoreBatch:
        return ScoreBatch(batch.score[start:stop], batch.raw[start:stop], None)

    batcher = DynamicBatcher(
        run, split, max_rows=args.max_batch_size, max_delay_s=args.max_batch_delay_ms / 1000
    )

    async def call() -> None:
        await batcher.submit(x)

    return call


async def _paced_cell(
    calls: dict[ModelName, Call],
    rate: float,
    duration: float,
    pids: Callable[[], list[int]],
) -> tuple[dict[ModelName, Run], Usage]:
    """Open loops for every model in `calls` at once, each at `rate`."""
    with CpuMeter(pids).measure() as usage:
        runs = await asyncio.gather(*(open_loop(call, rate, duration) for call in calls.values()))
    return dict(zip(calls, runs, strict=True)), usage[0]


def _paced_row(
    model: str, contender: str, protocol: str, rate: float, runs: list[Run], usage: Usage, sent: int
) -> Paced:
    lat_ms = [v * 1000 for run in runs for v in run.latencies_s]
    return Paced(
        model=model,
        contender=contender,
        protocol=protocol,
        rate=rate,
        sent=sent,
        answered=sum(run.requests for run in runs),
        p50_ms=percentile(lat_ms, 0.5),
        p99_ms=percentile(lat_ms, 0.99),
        max_ms=max(lat_ms, default=float("nan")),
        errors=sum(run.errors for run in runs),
        server_cores=usage.server_cores,
        client_cores=usage.client_cores,
        other_cores=usage.other_cores,
        note=next((run.first_error for run in runs if run.first_error), ""),
    )


async def measure_paced(
    args: argparse.Namespace,
    report: Report,
    names: list[ModelName],
    loaded: dict[ModelName, LoadedModel],
    samples: dict[ModelName, F32],
    doors: dict[str, dict[str, Callable[[ModelName], Call]]],
    servers: dict[str, Subprocess],
) -> None:
    """Single rows at `--paced-rate` per model (open loop): each model alone, then all at once;
    in process first (the machine's own noise on that schedule), then each server and door."""
    await measure_single(args, report, names, doors, servers)
    rate, duration = args.paced_rate, args.paced_duration
    sent = int(rate * duration)
    groups: list[tuple[str, list[ModelName]]] = [(n.value, [n]) for n in names]
    if len(names) > 1:
        groups.append(("all", names))
    for index, (label, group) in enumerate(groups):
        inproc = {n: _inproc_caller(loaded[n], tile(samples[n], 1), args) for n in group}
        for call in inproc.values():  # runtimes warm, call times known to the batcher
            for _ in range(20):
                await call()
        runs, usage = await _paced_cell(inproc, rate, duration, list)
        base = _paced_row(
            label, "in-process", "-", rate, list(runs.values()), usage, sent * len(group)
        )
        base.server_cores = usage.client_cores
        report.paced.append(base)
        _paced_progress(base)
        # Servers take turns going first, so that a drift in background load hits both.
        order = list(doors.items()) if index % 2 == 0 else list(reversed(doors.items()))
        for key, by_protocol in order:
            for protocol, make in by_protocol.items():
                calls = {n: make(n) for n in group}
                for call in calls.values():  # connections open, first answers in
                    for _ in range(20):
                        await call()
                # Unmeasured, at the same rate: whichever cell came first otherwise paid for
                # the switch from the previous cell's load (seen as a first-cell p99 bias).
                await _paced_cell(calls, rate, args.warmup + 0.5, list)
                runs, usage = await _paced_cell(calls, rate, duration, servers[key].pids)
                row = _paced_row(
                    label, key, protocol, rate, list(runs.values()), usage, sent * len(group)
                )
                if base.p99_ms > 0:
                    row.p99_vs_in_process = row.p99_ms / base.p99_ms
                report.paced.append(row)
                _paced_progress(row)


async def measure_single(
    args: argparse.Namespace,
    report: Report,
    names: list[ModelName],
    doors: dict[str, dict[str, Callable[[ModelName], Call]]],
    servers: dict[str, Subprocess],
) -> None:
    """`--single-requests` single-row requests one after another per server, model and door,
    servers interleaved per model so that a change in background load hits them alike."""
    n = args.single_requests
    if n <= 0:
        return
    for index, name in enumerate(names):
        for protocol in ("grpc", "rest"):
            cells: dict[str, Single] = {}
            order = list(doors.items()) if index % 2 == 0 else list(reversed(doors.items()))
            for key, by_protocol in order:
                call = by_protocol[protocol](name)
                for _ in range(50):
                    await call()
                pids = servers[key].pids()
                cpu0 = sum(_cpu(p) for p in pids)
                latencies = []
                for _ in range(n):
                    start = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - start)
                cpu = sum(_cpu(p) for p in pids) - cpu0
                lat_ms = [v * 1000 for v in latencies]
                cells[key] = Single(
                    name.value,
                    key,
                    protocol,
                    n,
                    server_cpu_ms_per_request=1000 * cpu / n,
                    p50_ms=percentile(lat_ms, 0.5),
                    p99_ms=percentile(lat_ms, 0.99),
                )
            before = cells.get("before")
            for cell in cells.values():
                if before is not None and before.server_cpu_ms_per_request > 0:
                    cell.vs_before = (
                        cell.server_cpu_ms_per_request / before.server_cpu_ms_per_request
                    )
                report.single.append(cell)
                print(
                    f"  single {cell.model} {cell.contender}/{protocol}: "
                    f"{cell.server_cpu_ms_per_request:.3f} ms CPU, p50 {cell.p50_ms:.2f} ms",
                    file=sys.stderr,
                )


def _paced_progress(p: Paced) -> None:
    print(
        f"  paced {p.model} {p.contender}/{p.protocol} {p.rate:.0f}/s: "
        f"p50 {p.p50_ms:.2f} ms p99 {p.p99_ms:.2f} ms",
        file=sys.stderr,
    )


def _expect(rows: int, batch: int, who: str) -> None:
    if rows != batch:
        raise RuntimeError(f"{who} answered {rows} rows for a batch of {batch}")


def _progress(row: Row) -> None:
    print(
        f"  {row.model} b{row.batch} {row.contender}/{row.protocol}: "
        f"{row.rows_per_s:,.0f} rows/s p99 {row.p99_ms:.2f} ms",
        file=sys.stderr,
    )


def evaluate(report: Report) -> None:
    """The targets of issue 5 against this run's figures."""

    def find(model: str, batch: int, contender: str, protocol: str) -> Row | None:
        for row in report.rows:
            if (row.model, row.batch, row.contender, row.protocol) == (
                model,
                batch,
                contender,
                protocol,
            ):
                return row
        return None

    models = sorted({r.model for r in report.rows})
    batches = sorted({r.batch for r in report.rows})
    for model in models:
        ours = find(model, 1024, "ours", "grpc")
        if ours is not None and ours.ratio_to_limit is not None:
            report.targets.append(
                {
                    "target": "ours gRPC >= 80% of the in-process limit at batch 1024",
                    "model": model,
                    "value": round(ours.ratio_to_limit, 3),
                    "met": ours.ratio_to_limit >= TARGETS["grpc_vs_limit_1024"],
                    "per_cpu_second": None
                    if ours.cpu_ratio_to_limit is None
                    else round(ours.cpu_ratio_to_limit, 3),
                }
            )
        for batch in batches:
            for protocol in ("grpc", "rest"):
                a = find(model, batch, "ours", protocol)
                b = find(model, batch, "stock", protocol)
                if a is None or b is None or not b.rows_per_s:
                    continue
                ratio = a.rows_per_s / b.rows_per_s
                per_cpu = (
                    a.rows_per_cpu_s / b.rows_per_cpu_s
                    if a.rows_per_cpu_s and b.rows_per_cpu_s
                    else None
                )
                report.targets.append(
                    {
                        "target": f"ours >= 2x stock-equivalent ({protocol}, batch {batch})",
                        "model": model,
                        "value": round(ratio, 2),
                        "met": ratio >= TARGETS["ours_vs_stock"],
                        "per_cpu_second": None if per_cpu is None else round(per_cpu, 2),
                    }
                )
    for paced in report.paced:
        if paced.contender != "ours":
            continue
        report.targets.append(
            {
                "target": f"single-row p99 <= 5 ms at {paced.rate:.0f} req/s"
                + (" per model, all at once" if paced.model == "all" else "")
                + f" ({paced.protocol})",
                "model": paced.model,
                "value": round(paced.p99_ms, 2),
                "met": paced.p99_ms <= TARGETS["paced_p99_ms"] and paced.errors == 0,
                "x_in_process_p99": None
                if paced.p99_vs_in_process is None
                else round(paced.p99_vs_in_process, 1),
            }
        )


def print_report(report: Report) -> None:
    """A readable table, then the JSON document."""
    m = report.machine
    print(f"\n{m.get('cpus')} CPUs, Python {m.get('python')}, {m.get('versions')}")
    print(
        f"load average before {m.get('load_average_before')}, "
        f"after {m.get('load_average_after')}, run {m.get('seconds')} s"
    )
    for when in ("before", "after"):
        print(f"busiest other processes {when} (cores over 1 s):")
        for n in m.get(f"busy_neighbours_{when}", []):
            print(f"  {n['cores']:>5.2f}  {n['command']}")
    print(f"settings: {report.settings}")
    header = (
        f"{'model':<17} {'batch':>5} {'contender':<11} {'door':<6} {'rows/s':>11} "
        f"{'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x limit':>7} {'rows/cpu-s':>11} "
        f"{'x lim/cpu':>9} {'srv cores':>9} {'cli cores':>9} {'other':>6}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in report.rows:
        print(
            f"{r.model:<17} {r.batch:>5} {r.contender:<11} {r.protocol:<6} "
            f"{r.rows_per_s:>11,.0f} {r.requests_per_s:>9,.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {_fmt(r.ratio_to_limit, '.2f'):>7} "
            f"{_fmt(r.rows_per_cpu_s, ',.0f'):>11} {_fmt(r.cpu_ratio_to_limit, '.2f'):>9} "
            f"{_fmt(r.server_cores, '.2f'):>9} {_fmt(r.client_cores, '.2f'):>9} "
            f"{_fmt(r.other_cores, '.2f'):>6}"
            + (f"  errors={r.errors} {r.note}" if r.errors else "")
        )
    if report.single:
        print(
            "\nsingle-row requests one at a time: server CPU per request (the figure busy "
            "neighbours disturb least) and latency"
        )
        header = (
            f"{'model':<17} {'contender':<9} {'door':<5} {'requests':>8} {'CPU ms/req':>10} "
            f"{'x before':>8} {'p50 ms':>8} {'p99 ms':>8}"
        )
        print(header)
        print("-" * len(header))
        for c in report.single:
            print(
                f"{c.model:<17} {c.contender:<9} {c.protocol:<5} {c.requests:>8} "
                f"{c.server_cpu_ms_per_request:>10.3f} {_fmt(c.vs_before, '.2f'):>8} "
                f"{c.p50_ms:>8.2f} {c.p99_ms:>8.2f}"
            )
    if report.paced:
        print(
            "\nsingle-row requests at a fixed rate per model (open loop, latency from the planned "
            "send time); `all` = every model at that rate at once"
        )
        header = (
            f"{'model':<17} {'contender':<11} {'door':<5} {'rate':>6} {'answered':>12} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99 x inproc':>12} "
            f"{'srv cores':>9} {'cli cores':>9} {'other':>6}"
        )
        print(header)
        print("-" * len(header))
        for p in report.paced:
            print(
                f"{p.model:<17} {p.contender:<11} {p.protocol:<5} {p.rate:>5.0f}/s "
                f"{f'{p.answered}/{p.sent}':>12} {p.p50_ms:>8.2f} {p.p99_ms:>8.2f} "
                f"{p.max_ms:>8.2f} {_fmt(p.p99_vs_in_process, '.1f'):>12} "
                f"{_fmt(p.server_cores, '.2f'):>9} {_fmt(p.client_cores, '.2f'):>9} "
                f"{_fmt(p.other_cores, '.2f'):>6}"
                + (f"  errors={p.errors} {p.note}" if p.errors else "")
            )
    if report.targets:
        print("\ntargets")
        for t in report.targets:
            extra = (
                f" (per server CPU second: {t['per_cpu_second']})"
                if t.get("per_cpu_second") is not None
                else ""
            )
            if t.get("x_in_process_p99") is not None:
                extra += f" ({t['x_in_process_p99']}x the in-process p99)"
            status = "met" if t["met"] else "MISSED"
            print(f"  [{status}] {t['model']}: {t['target']}: {t['value']}{extra}")
    print("\nJSON")
    print(json.dumps(asdict(report), default=float))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def machine_info() -> dict[str, Any]:
    """What ran where, for the record."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("kserve", "ray", "onnxruntime", "onnxruntime-gpu", "xgboost", "scikit-learn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": load_average(),
        "versions": versions,
    }


# --------------------------------------------------------------------------- GPU comparison


def compare_gpu(
    store: Path, names: Sequence[ModelName], batches: Sequence[int], duration: float
) -> list[dict[str, Any]]:
    """ONNX Runtime on the CPU (one thread, as served) against CUDA, per model and batch.

    Needs onnxruntime-gpu (which replaces onnxruntime) and a GPU; without them it measures
    the CPU side only and says why. Tree ensembles (`ai.onnx.ml` TreeEnsemble* operators)
    have no CUDA kernels in ONNX Runtime and fall back to the CPU inside a CUDA session;
    each row records whether the whole graph could be placed on CUDA.
    """
    import onnxruntime as ort

    from services.serving.runtime import CPU, CUDA, cuda_available, runs_fully_on_cuda

    cuda = cuda_available()  # loads CUDA/cuDNN (preload_dlls) only with the GPU build
    if not cuda:
        print(
            "no CUDAExecutionProvider in this onnxruntime "
            f"({ort.__version__}, providers {ort.get_available_providers()}): "
            "measuring the CPU only (scripts/gpu_bench.sh sets up onnxruntime-gpu)",
            file=sys.stderr,
        )
    registry = Registry(store)
    data = feature_rows(12_000, seed=11)
    out: list[dict[str, Any]] = []
    for name in names:
        if registry.latest(name) is None:
            continue
        model = registry.load(name)
        sample = inputs_for(model, data, max(batches))
        devices = [("cpu", False), ("cuda", True)] if cuda else [("cpu", False)]
        for device, use_cuda in devices:
            # The session itself, not ModelRunner: the server keeps a model whose graph
            # cannot run wholly on CUDA on the CPU, and this row measures why.
            providers = (CUDA, CPU) if use_cuda else (CPU,)
            session = model.onnx_session(threads=1, providers=providers)
            whole = runs_fully_on_cuda(model) if use_cuda else None

            def score(x: F32, session: Any = session, model: LoadedModel = model) -> None:
                model.postprocess(session.run([model.onnx_output], {"features": x})[0])

            for batch in batches:
                x = tile(sample, batch)
                score(x)
                latencies = []
                deadline = time.perf_counter() + duration
                while (start := time.perf_counter()) < deadline:
                    score(x)
                    latencies.append(time.perf_counter() - start)
                lat_ms = [v * 1000 for v in latencies]
                row = {
                    "model": name.value,
                    "device": device,
                    "batch": batch,
                    "rows_per_s": len(latencies) * batch / sum(latencies),
                    "p50_ms": percentile(lat_ms, 0.5),
                    "p99_ms": percentile(lat_ms, 0.99),
                    "graph_fully_on_cuda": whole,
                }
                out.append(row)
                print(
                    f"{name.value:<17} {device:<4} batch {batch:>5}: "
                    f"{row['rows_per_s']:>12,.0f} rows/s  p50 {row['p50_ms']:.3f} ms  "
                    f"p99 {row['p99_ms']:.3f} ms"
                    + ("" if whole is None else f"  all nodes on CUDA: {whole}")
                )
    if not cuda:
        print("GPU: not measured (no CUDAExecutionProvider).")
    return out


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen mode."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stock-server"]:
        parser = argparse.ArgumentParser(prog="bench_serving.py stock-server")
        parser.add_argument("--model-store", type=Path, required=True)
        parser.add_argument("--http-port", type=int, required=True)
        parser.add_argument("--grpc-port", type=int, required=True)
        s = parser.parse_args(argv[1:])
        stock_server_main(s.model_store, s.http_port, s.grpc_port)
        return 0
    args = parse_args(argv)
    np.seterr(all="ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        store = args.model_store
        if store is None or args.train_store is not None:
            store = args.train_store or work / "model_store"
            names = [ModelName(n) for n in args.models.split(",")]
            if args.compare_gpu or args.train_store is not None:
                names = _trainable(list(ModelName))
            started = time.perf_counter()
            train_registry(store, args.model_size, names)
            print(
                f"trained {args.model_size} registry at {store} "
                f"in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            if args.train_store is not None:
                return 0
        if args.compare_gpu:
            batches = [int(b) for b in args.gpu_batches.split(",")]
            rows = compare_gpu(store, list(ModelName), batches, args.inproc_duration)
            print("\nJSON")
            print(json.dumps({"machine": machine_info(), "gpu_compare": rows}, default=float))
            return 0
        machine = machine_info()
        machine["busy_neighbours_before"] = busy_neighbours()
        started = time.perf_counter()
        report = asyncio.run(run_benchmark(args, store, work))
        machine["load_average_after"] = load_average()
        machine["busy_neighbours_after"] = busy_neighbours()
        machine["seconds"] = round(time.perf_counter() - started, 1)
        report.machine = machine
        report.settings.update(
            {
                "model_store": str(store),
                "model_size": args.model_size if args.model_store is None else "given",
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "inproc_duration_s": args.inproc_duration,
                "concurrency": args.concurrency,
                "max_batch_delay_ms": args.max_batch_delay_ms,
                "max_batch_size": args.max_batch_size,
                "compare_tree": None if args.compare_tree is None else str(args.compare_tree),
                "paced_rate": args.paced_rate,
                "paced_duration_s": args.paced_duration,
                "single_requests": args.single_requests,
            }
        )
        evaluate(report)
        print_report(report)
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(asdict(report), default=float, indent=1))
        return 0
    finally:
        _remove(work)


def _trainable(names: list[ModelName]) -> list[ModelName]:
    """The Transformer trains only where torch is installed (the `train` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return [n for n in names if n is not ModelName.TRANSFORMER]
    return names


def _remove(folder: Path) -> None:
    """Delete a scratch folder, registry versions included (they are made read-only)."""
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The benchmark's options (durations in seconds)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model-store", type=Path, help="an existing registry (default: train one)")
    p.add_argument(
        "--model-size",
        choices=("fixture", "production"),
        default="fixture",
        help="registry to train: the integration tests' small models, or the platform's "
        "default hyperparameters",
    )
    p.add_argument("--models", default="isolation_forest,xgboost")
    p.add_argument("--batches", default="1,64,1024")
    p.add_argument("--duration", type=float, default=1.5, help="seconds per server cell")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per cell")
    p.add_argument("--inproc-duration", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="our servers' setting")
    p.add_argument("--paced-rate", type=float, default=1000.0, help="0 skips the paced run")
    p.add_argument("--paced-duration", type=float, default=3.0)
    p.add_argument(
        "--single-requests",
        type=int,
        default=1000,
        help="single-row requests one at a time per server, model and door (0 skips)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma list of: stock, ray, closed (the closed-loop cells: only the paced runs)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="our servers' serving.max_batch_size (rows per coalesced model call)",
    )
    p.add_argument(
        "--compare-tree",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/before HEAD~1`): its server joins "
        "the paced runs as contender `before`, same models, settings and schedule",
    )
    p.add_argument("--json-out", type=Path, help="also write the JSON report here")
    p.add_argument(
        "--compare-gpu",
        action="store_true",
        help="ONNX Runtime CPU vs CUDA per model at --gpu-batches (no servers)",
    )
    p.add_argument("--gpu-batches", default="1,64,1024,8192")
    p.add_argument("--train-store", type=Path, help="only train a registry here and exit")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The whole platform on this machine, as one context manager: `with platform(options) as stack`.

Starts (or reuses) a real Kafka broker, creates the topics, registers the Feast definitions
(SQLite online store), trains and registers the three models if the registry has none, then
starts the model server (KServe V2, all three models), a local PagerDuty receiver (a thread
of this process), the ingest service and the router as their own processes, and tears all
of it down in reverse order. The main job (`scripts/run_local.py`) and the end-to-end
benchmark (`loadtest/bench_e2e.py`) share it, so the benchmark measures exactly the stack
the README's first command runs; they differ only in `PlatformOptions` (the benchmark uses
free ports and its own data folder, so it can run beside a main job).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_kafka import LocalKafka  # noqa: E402

from services.common.config import PlatformConfig, dump_config, load_config  # noqa: E402
from services.common.kafka.clients import make_admin  # noqa: E402
from services.common.kafka.topics import ensure_topics, pipeline_topics  # noqa: E402
from services.router.alerts.pagerduty_receiver import ReceiverServer  # noqa: E402

if TYPE_CHECKING:
    from models.registry import Registry

LOCAL_ROUTING_KEY = "local" * 6 + "ab"
"""32 characters, like a real Events API v2 integration key; only the local receiver sees it."""
STRATEGIES = ("weighted", "k_of_n", "any", "all", "cascade")


@dataclass(frozen=True)
class PlatformOptions:
    """Where the local platform listens and keeps its files.

    The defaults are the main job's (README ports); anything that must run beside it picks
    free ports and another `var_dir`.
    """

    kafka_port: int = 9092
    ops_port: int = 9100
    """Ingest health and metrics."""
    receiver_port: int = 8300
    """Local PagerDuty receiver (0 = any free port)."""
    models_http_port: int = 8100
    models_grpc_port: int = 8101
    """One model server serves all three models; every endpoint of the config points to it."""
    router_http_port: int | None = None
    router_grpc_port: int | None = None
    """None keeps the configuration's router ports."""
    var_dir: Path = ROOT / "var" / "local"
    """Configuration, online store, outbox and service logs."""
    model_store: Path = ROOT / "model_store"
    train_events: int = 1_000_000
    """Events to train on when the registry has no model (first run only). Measured with
    `scripts/run --seconds 20` on models trained at its 5,000/s: 300,000 events (a minute of
    event time, so the 1-h windows never fill) gave FPR 7.9% / TPR 80.4%, 1,000,000 gave
    0.57% / 64.6%, the operating point the thresholds are set for; ~15 s more on first use."""
    train_event_rate: float = 1_000.0
    """Events per second of event time of that training stream: set it to the rate the run
    generates, since the count features (and so the calibrated scores) scale with it."""
    strategy: str = "cascade"
    wipe_broker: bool = False
    """Delete the broker's data at the end (a broker on a throwaway port)."""
    fresh_broker: bool = False
    """Delete the broker's data before starting it, when this run starts it (a broker that is
    already answering is left alone): topics, committed offsets and the window-state
    changelog of an earlier run are gone, so the run starts from empty state."""
    log_name: str = "run-local"
    extra_env: dict[str, str] = field(default_factory=dict)
    """Set in this process's environment (and so the services') before anything starts."""


def make_logger(name: str) -> Callable[[str], None]:
    """Progress lines on stderr, so that stdout stays the report."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


class ServiceProcess:
    """A platform service (`anomaly <command>`) as a child process in its own session."""

    def __init__(self, name: str, args: list[str], log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """Process id (the leader of the service's own session)."""
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the log's tail when the service has exited."""
        code = self.proc.poll()
        if code is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {code}; log tail:\n{tail}")

    def stop(self, log: Callable[[str], None], timeout: float = 30.0) -> None:
        """SIGTERM to the session (the service drains and commits), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout:.0f} s; killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def wait_ready(url: str, service: ServiceProcess, timeout: float = 120.0) -> None:
    """Poll a readiness URL until 200, failing early (with its log) if the service exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1.0) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{service.name} not ready after {timeout:.0f} s ({url})")


def local_config(bootstrap: str, opts: PlatformOptions, receiver_url: str) -> PlatformConfig:
    """The embedded defaults (and config/platform.yaml), pointed at the local processes."""
    shipped = ROOT / "config/platform.yaml"
    base = dump_config(load_config(shipped if shipped.exists() else None))
    var = opts.var_dir
    base["kafka"]["bootstrap_servers"] = bootstrap
    base["ingest"]["ops_port"] = opts.ops_port
    # Static members: a run after one whose services died hard (SIGKILL, a closed terminal)
    # gets its partitions at once instead of waiting out the dead members' 45 s sessions.
    base["ingest"]["group_instance_id"] = "local-ingest-0"
    base["router"]["group_instance_id"] = "local-router-0"
    base["feast"]["online_store"] = {"type": "sqlite", "path": str(var / "online_store.db")}
    base["feast"]["registry_path"] = str(var / "registry.db")
    base["model_store"]["path"] = str(opts.model_store)
    endpoint = {
        "rest_url": f"http://127.0.0.1:{opts.models_http_port}",
        "grpc_target": f"127.0.0.1:{opts.models_grpc_port}",
        "timeout_ms": 2_000,
    }
    base["serving"]["endpoints"] = dict.fromkeys(
        ("isolation_forest", "xgboost", "transformer"), endpoint
    )
    if opts.router_http_port is not None:
        base["router"]["http_port"] = opts.router_http_port
    if opts.router_grpc_port is not None:
        base["router"]["grpc_port"] = opts.router_grpc_port
    base["ensemble"]["strategy"] = opts.strategy
    base["alerts"]["outbox_path"] = str(var / "outbox.db")
    # Secrets never go into files (a dump masks them): the services get the routing key from
    # the environment, as a pod gets it from its Secret.
    os.environ.setdefault("ANOMALY_ALERTS__ROUTING_KEY", LOCAL_ROUTING_KEY)
    base["alerts"]["sinks"] = [
        {"type": "pagerduty", "url": f"{receiver_url}/v2/enqueue", "group_window_s": 60},
        {"type": "kafka"},
    ]
    return PlatformConfig(**base)


def ensure_models(
    config_file: Path,
    cfg: PlatformConfig,
    events: int,
    event_rate: float,
    log: Callable[[str], None],
) -> None:
    """Train and register the three models when the registry has none (first run)."""
    from models.registry import Registry
    from services.common.model_names import ModelName

    registry = Registry(cfg.model_store.path)
    missing = [m.value for m in ModelName if registry.latest(m) is None]
    stale = [] if missing else stale_schema_models(registry, cfg)
    if not missing and not stale:
        found = ", ".join(f"{m.value} v{registry.resolve(m)}" for m in ModelName)
        log(f"models found in {registry.root}: {found}")
        for warning in rate_mismatches(registry, cfg, event_rate):
            log(f"warning: {warning}")
        return
    if missing:
        log(f"no registered {', '.join(missing)}: training on {events:,} generated events at "
            f"{event_rate:,.0f}/s (once)")  # fmt: skip
    else:
        log(f"{', '.join(stale)}: trained on an older feature schema (this code's window "
            f"features changed); training and promoting new versions on {events:,} events "
            f"at {event_rate:,.0f}/s (once; the old versions stay, for the old code)")  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "services.cli.main", "train", "-c", str(config_file),
         "--events", str(events), "--event-rate", str(event_rate),
         *(["--promote"] if stale else [])],
        cwd=ROOT, check=True,
    )  # fmt: skip


def stale_schema_models(registry: Registry, cfg: PlatformConfig) -> list[str]:
    """The serving versions (`name vN`) trained on another feature schema than this code's.

    Why: after an upgrade that changes the window features, the model servers refuse such
    versions; the main job must train new ones rather than fail at start. A version pinned
    in the flags is left to its pin (the server then says which one to retrain).
    """
    from models.metadata import on_current_features
    from services.common.model_names import ModelName

    out = []
    for name in ModelName:
        flag = cfg.flags.models.get(name)
        if flag is not None and flag.version is not None:
            continue
        version = registry.resolve_with_flags(name, cfg.flags)
        if not on_current_features(registry.metadata(name, version)):
            out.append(f"{name.value} v{version}")
    return out


RATE_TOLERANCE: Final = 2.0
"""How far (as a factor) a run's event rate may be from a model's training rate unwarned."""


def rate_mismatches(registry: Registry, cfg: PlatformConfig, event_rate: float) -> list[str]:
    """One line per serving model trained at an event rate far from this run's.

    Why: the count and rate features scale with the event rate, so a model trained at
    1,000 events/s takes ordinary traffic at 5,000/s for bursts; the summary's FPR then
    looks like a model problem when it is a set-up one (seen: 2.5% instead of ~0.4%).
    """
    from models.metadata import training_events_per_s
    from services.common.model_names import ModelName

    out = []
    for name in ModelName:
        version = registry.resolve_with_flags(name, cfg.flags)
        trained = training_events_per_s(registry.metadata(name, version))
        if trained is None:
            continue  # trained before the rate was recorded, or on data without timestamps
        ratio = event_rate / trained
        if ratio > RATE_TOLERANCE or ratio < 1 / RATE_TOLERANCE:
            out.append(
                f"{name.value} v{version} was trained on {trained:,.0f} events/s, this run "
                f"streams {event_rate:,.0f}/s: the rate features differ, expect false "
                f"positives (retrain with `anomaly train --event-rate {event_rate:g} "
                f"--promote`, or run at --rate {trained:g})"
            )
    return out


@dataclass
class RunningPlatform:
    """What `platform()` started: the configuration the services run on, and the processes."""

    config: PlatformConfig
    config_file: Path
    broker: LocalKafka
    receiver: ReceiverServer
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def router_url(self) -> str:
        """Base URL of the router's REST door."""
        return f"http://127.0.0.1:{self.config.router.http_port}"

    @property
    def router_grpc(self) -> str:
        """host:port of the router's gRPC door."""
        return f"127.0.0.1:{self.config.router.grpc_port}"

    def pids(self) -> dict[str, int]:
        """Process id of the broker and of every service (for CPU and memory accounting)."""
        out = {name: service.pid for name, service in self.services.items()}
        broker_pid = self.broker.pid()
        if broker_pid is not None:
            out = {"broker": broker_pid, **out}
        return out

    def check_alive(self) -> None:
        """Raise if any service has died (a benchmark must not report a dead stack)."""
        for service in self.services.values():
            service.check_alive()


def start_broker(broker: LocalKafka, fresh: bool, log: Callable[[str], None]) -> bool:
    """Start `broker` unless it is answering; True if this call started it.

    `fresh` wipes its data first, but only when this call starts it: a broker someone else
    runs is theirs, and its topics may be in use.
    """
    if broker.is_answering():
        return False
    if fresh and broker.is_formatted():
        log(f"starting from empty state: wiping the previous run's broker data {broker.data_dir}")
        broker.wipe()
    broker.start()
    return True


@contextlib.contextmanager
def platform(opts: PlatformOptions) -> Iterator[RunningPlatform]:
    """Broker, topics, feature store, models, receiver, model server, ingest and router;
    torn down in reverse order."""
    log = make_logger(opts.log_name)
    os.environ.update(opts.extra_env)
    broker = LocalKafka(port=opts.kafka_port)
    started_broker = start_broker(broker, opts.fresh_broker, log)
    bootstrap = broker.bootstrap_servers
    receiver = ReceiverServer(port=opts.receiver_port).start()
    stack: RunningPlatform | None = None
    try:
        cfg = local_config(bootstrap, opts, receiver.url)
        var = opts.var_dir
        config_file = var / "platform.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
        stack = RunningPlatform(cfg, config_file, broker, receiver)
        outcomes = ensure_topics(make_admin(cfg.kafka), pipeline_topics(cfg.kafka.topics))
        log("topics: " + ", ".join(f"{o.name} ({o.status})" for o in outcomes))

        from services.common.feast_store import apply

        apply(cfg.feast)
        log(f"feast definitions applied (SQLite online store {cfg.feast.online_store})")

        ensure_models(config_file, cfg, opts.train_events, opts.train_event_rate, log)
        log(f"PagerDuty receiver on {receiver.url} (GET /v2/incidents)")
        models = ServiceProcess(
            "model server",
            ["serve", "isolation_forest,xgboost,transformer", "-c", str(config_file),
             "--http-port", str(opts.models_http_port),
             "--grpc-port", str(opts.models_grpc_port)],
            var / "serve.log",
        )  # fmt: skip
        stack.services["model server"] = models
        wait_ready(f"http://127.0.0.1:{opts.models_http_port}/v2/health/ready", models)
        log(f"model server ready (V2 REST :{opts.models_http_port}, gRPC :{opts.models_grpc_port})")
        ingest = ServiceProcess("ingest", ["ingest", "-c", str(config_file)], var / "ingest.log")
        stack.services["ingest"] = ingest
        wait_ready(f"http://127.0.0.1:{opts.ops_port}/readyz", ingest)
        log(
            f"ingest ready: metrics http://127.0.0.1:{opts.ops_port}/metrics, log {ingest.log_file}"
        )
        router = ServiceProcess("router", ["router", "-c", str(config_file)], var / "router.log")
        stack.services["router"] = router
        wait_ready(f"{stack.router_url}/readyz", router)
        log(
            f"router ready: POST {stack.router_url}/v1/score, "
            f"gRPC :{cfg.router.grpc_port}, docs /docs, metrics /metrics; flags hot-reload "
            f"from {config_file}"
        )
        yield stack
    finally:
        for name, service in reversed(list(stack.services.items()) if stack else []):
            log(f"stopping {name}")
            service.stop(log)
        receiver.stop()
        if started_broker:
            log("stopping the Kafka broker")
            broker.stop()
            if opts.wipe_broker:
                broker.wipe()

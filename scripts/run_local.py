"""The main job: the whole platform on this machine, on embedded defaults, with a live summary.

Starts a real Kafka broker (assembled from Maven Central on first use), creates the topics,
registers the Feast definitions (SQLite online store), trains and registers the three models
if the registry has none, then starts the model server (KServe V2, all three models), a local
PagerDuty receiver, the ingest service and the router as their own processes, streams the
labelled generator into `events` at the chosen rate and prints, every two seconds, events and
decisions per second, consumer lag, event-to-features and event-to-decision latency, alerts by
anomaly type and TPR/FPR against the injected anomalies. Ctrl-C (or the end of `--seconds`)
stops everything it started, in order, and leaves no process behind.

    python scripts/run_local.py [--rate 5000] [--seconds 60] [--port 9092]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_kafka import LocalKafka  # noqa: E402
from pipeline_monitor import (  # noqa: E402
    DecisionMonitor,
    PipelineMonitor,
    format_decisions,
    format_snapshot,
)

from services.common.config import PlatformConfig, dump_config, load_config  # noqa: E402
from services.common.kafka.clients import make_admin  # noqa: E402
from services.common.kafka.topics import ensure_topics, pipeline_topics  # noqa: E402

VAR = ROOT / "var" / "local"


def log(message: str) -> None:
    print(f"[run-local] {message}", file=sys.stderr, flush=True)


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

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {code}; log tail:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
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
    import urllib.error
    import urllib.request

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


LOCAL_ROUTING_KEY = "local" * 6 + "ab"
"""32 characters, like a real Events API v2 integration key; only the local receiver sees it."""
MODELS_HTTP, MODELS_GRPC = 8100, 8101
"""One model server serves all three models locally; the endpoints of the config point to it."""


def local_config(bootstrap: str, args: argparse.Namespace, receiver_url: str) -> PlatformConfig:
    """The embedded defaults, pointed at the local broker; written to var/ for the services."""
    shipped = ROOT / "config/platform.yaml"
    base = dump_config(load_config(shipped if shipped.exists() else None))
    base["kafka"]["bootstrap_servers"] = bootstrap
    base["ingest"]["ops_port"] = args.ops_port
    base["feast"]["online_store"] = {"type": "sqlite", "path": str(VAR / "online_store.db")}
    base["feast"]["registry_path"] = str(VAR / "registry.db")
    base["model_store"]["path"] = str(ROOT / "model_store")
    endpoint = {
        "rest_url": f"http://127.0.0.1:{MODELS_HTTP}",
        "grpc_target": f"127.0.0.1:{MODELS_GRPC}",
        "timeout_ms": 2_000,
    }
    base["serving"]["endpoints"] = dict.fromkeys(
        ("isolation_forest", "xgboost", "transformer"), endpoint
    )
    base["ensemble"]["strategy"] = args.strategy
    base["alerts"]["outbox_path"] = str(VAR / "outbox.db")
    # Secrets never go into files (a dump masks them): the services get the routing key from
    # the environment, as a pod gets it from its Secret.
    os.environ.setdefault("ANOMALY_ALERTS__ROUTING_KEY", LOCAL_ROUTING_KEY)
    base["alerts"]["sinks"] = [
        {"type": "pagerduty", "url": f"{receiver_url}/v2/enqueue", "group_window_s": 60},
        {"type": "kafka"},
    ]
    return PlatformConfig(**base)


def ensure_models(config_file: Path, cfg: PlatformConfig, events: int) -> None:
    """Train and register the three models when the registry has none (first run)."""
    from models.registry import Registry
    from services.common.model_names import ModelName

    registry = Registry(cfg.model_store.path)
    missing = [m.value for m in ModelName if registry.latest(m) is None]
    if not missing:
        found = ", ".join(f"{m.value} v{registry.resolve(m)}" for m in ModelName)
        log(f"models found in {registry.root}: {found}")
        return
    log(f"no registered {', '.join(missing)}: training on {events:,} generated events (once)")
    subprocess.run(
        [sys.executable, "-m", "services.cli.main", "train", "-c", str(config_file),
         "--events", str(events)],
        cwd=ROOT, check=True,
    )  # fmt: skip


@contextlib.contextmanager
def platform(args: argparse.Namespace) -> Iterator[tuple[PlatformConfig, Path]]:
    """Broker, topics, feature store and ingest service; torn down in reverse order."""
    from services.router.alerts.pagerduty_receiver import ReceiverServer

    broker = LocalKafka(port=args.port)
    started_broker = not broker.is_answering()
    bootstrap = broker.start()
    services: list[ServiceProcess] = []
    receiver = ReceiverServer(port=args.receiver_port).start()
    try:
        cfg = local_config(bootstrap, args, receiver.url)
        config_file = VAR / "platform.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
        outcomes = ensure_topics(make_admin(cfg.kafka), pipeline_topics(cfg.kafka.topics))
        log("topics: " + ", ".join(f"{o.name} ({o.status})" for o in outcomes))

        from services.common.feast_store import apply

        apply(cfg.feast)
        log(f"feast definitions applied (SQLite online store {cfg.feast.online_store})")

        ensure_models(config_file, cfg, args.train_events)
        log(f"PagerDuty receiver on {receiver.url} (GET /v2/incidents)")
        models = ServiceProcess(
            "model server",
            ["serve", "isolation_forest,xgboost,transformer", "-c", str(config_file),
             "--http-port", str(MODELS_HTTP), "--grpc-port", str(MODELS_GRPC)],
            VAR / "serve.log",
        )  # fmt: skip
        services.append(models)
        wait_ready(f"http://127.0.0.1:{MODELS_HTTP}/v2/health/ready", models)
        log(f"model server ready (V2 REST :{MODELS_HTTP}, gRPC :{MODELS_GRPC})")
        ingest = ServiceProcess("ingest", ["ingest", "-c", str(config_file)], VAR / "ingest.log")
        services.append(ingest)
        wait_ready(f"http://127.0.0.1:{args.ops_port}/readyz", ingest)
        log(
            f"ingest ready: metrics http://127.0.0.1:{args.ops_port}/metrics, log {ingest.log_file}"
        )
        router = ServiceProcess(
            "router",
            ["router", "-c", str(config_file)],
            VAR / "router.log",
        )
        services.append(router)
        wait_ready(f"http://127.0.0.1:{cfg.router.http_port}/readyz", router)
        log(
            f"router ready: POST http://127.0.0.1:{cfg.router.http_port}/v1/score, "
            f"gRPC :{cfg.router.grpc_port}, docs /docs, metrics /metrics; flags hot-reload "
            f"from {config_file}"
        )
        yield cfg, config_file
    finally:
        for service in reversed(services):
            log(f"stopping {service.name}")
            service.stop()
        receiver.stop()
        if started_broker:
            log("stopping the Kafka broker")
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5_000, help="events/s to generate")
    parser.add_argument(
        "--seconds", type=float, default=60, help="how long to stream (0 = until Ctrl-C)"
    )
    parser.add_argument("--port", type=int, default=9092, help="Kafka port on 127.0.0.1")
    parser.add_argument("--ops-port", type=int, default=9100, help="ingest health/metrics port")
    parser.add_argument("--receiver-port", type=int, default=8300, help="PagerDuty receiver port")
    parser.add_argument(
        "--train-events", type=int, default=300_000,
        help="events to train on when no model is registered",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", default="cascade", choices=["weighted", "k_of_n", "any", "all", "cascade"],
        help="ensemble strategy (cascade: the Transformer only where the others are unsure)",
    )  # fmt: skip
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from services.generator import GenerateRequest, Output, Progress, StreamSpec, generate

    with platform(args) as (cfg, _config_file):
        monitor = PipelineMonitor(cfg, f"http://127.0.0.1:{args.ops_port}/metrics").start()
        decisions = DecisionMonitor(cfg).start()
        done = threading.Event()

        def report() -> None:
            while not done.wait(2.0):
                print(format_snapshot(monitor.snapshot()), flush=True)
                print(format_decisions(decisions.snapshot()), flush=True)

        def on_progress(p: Progress) -> None:
            monitor.generated = p.events
            monitor.generated_per_s = p.events_per_s
            monitor.injected = p.anomalies

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        spec = StreamSpec(seed=args.seed, entities=args.entities, rate=args.rate)
        request = GenerateRequest(
            spec=spec,
            output=Output.KAFKA,
            pace_rate=args.rate,
            max_wall_s=args.seconds or None,
            start_now=True,
        )
        result = generate(request, cfg.kafka, on_progress)
        log(
            f"generator finished: {result.events:,} events at {result.events_per_s:,.0f}/s"
            f"{' (interrupted)' if result.interrupted else ''}; draining"
        )
        deadline = time.monotonic() + 60
        while decisions.snapshot().decisions < result.events and time.monotonic() < deadline:
            time.sleep(0.5)
        done.set()
        final = monitor.snapshot()
        decided = decisions.snapshot()
        lat = monitor.overall_latency()
        decision_lat = decisions.overall_latency()
        monitor.stop()
        decisions.stop()
        print("\n== summary")
        print(
            f"events generated      {result.events:>12,}  ({result.events_per_s:,.0f}/s achieved)"
        )
        print(f"anomalies injected    {result.anomaly_total:>12,}")
        print(f"feature vectors       {final.features:>12,}")
        print(f"dead letters          {final.dead_letters:>12,}")
        print(f"decisions             {decided.decisions:>12,}  (degraded {decided.degraded:,})")
        for name, value in (("event->features", lat), ("event->decision", decision_lat)):
            if value:
                print(
                    f"{name:<22}p50 {value['p50']:,.0f} ms   p99 {value['p99']:,.0f} ms   "
                    f"max {value['max']:,.0f} ms"
                )
        if decided.tpr is not None and decided.fpr is not None:
            print(f"TPR / FPR             {decided.tpr:.1%} / {decided.fpr:.2%}")
        alerts = ", ".join(f"{k} {v:,}" for k, v in sorted(decided.alerts_by_type.items()))
        print(f"alerts by type        {alerts or 'none'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

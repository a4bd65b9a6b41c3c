#!/usr/bin/env python3
"""Run a real single-node Apache Kafka 4.x broker without Docker or a tarball.

The development and CI machines reach Maven Central but nothing else, so the
broker is assembled from Kafka's published jars (``mvn
dependency:copy-dependencies`` over the pom in ``scripts/kafka/``) into an
ignored cache folder, and started as a plain ``java kafka.Kafka`` process in
KRaft combined mode (broker and controller in one JVM).  A real broker, rather
than a mock, is what lets the integration tests catch protocol, rebalance and
transaction behaviour.

Layout under ``home`` (default ``<repo>/.cache/kafka``)::

    <version>/pom.xml, <version>/lib/*.jar   assembled once per Kafka version
    data-<port>/server.properties            regenerated on every start
    data-<port>/logs/                        KRaft metadata + topic data
    data-<port>/kafka.log, kafka.pid         broker output and process id

Data directories are keyed by port so a pytest fixture can run its own broker
on a free port next to a developer's broker on 9092.

CLI::

    python scripts/local_kafka.py {assemble,start,stop,status,wipe} \\
        [--port 9092] [--controller-port N] [--home .cache/kafka] \\
        [--kafka-version 4.4.0] [--timeout SECONDS]

``start`` prints the bootstrap servers on stdout (progress goes to stderr), so
``BOOTSTRAP=$(python scripts/local_kafka.py start)`` works in shell scripts.

Python::

    from local_kafka import LocalKafka, free_port

    with LocalKafka(port=free_port(), wipe_on_exit=True) as kafka:
        produce_to(kafka.bootstrap_servers)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from local_process import (
    LocalProcess,
    ProgressFn,
    free_port,
    lifecycle_command,
    locked,
    tail,
    tcp_open,
)

__all__ = ["DEFAULT_PORT", "LocalKafka", "LocalKafkaError", "free_port", "main"]

#: Newest Kafka 4.x release resolvable from Maven Central when this was written.
DEFAULT_KAFKA_VERSION = "4.4.0"
DEFAULT_PORT = 9092
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".cache" / "kafka"
TEMPLATE_DIR = Path(__file__).resolve().parent / "kafka"
POM_TEMPLATE = TEMPLATE_DIR / "pom.xml"
LOG4J2_CONFIG = TEMPLATE_DIR / "log4j2.xml"

#: Sized for the 2-core / 24 GiB development and CI machines: a broker that
#: shares the box with the services under test must not take a core's worth of
#: GC threads or a quarter of memory.  The G1 settings are the ones
#: kafka-run-class.sh uses.
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-XX:ParallelGCThreads=2",
    "-XX:ConcGCThreads=1",
    "-XX:CICompilerCount=2",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)

#: The JIT stops at C1 by default: on two cores, C2's compilation is most of
#: a fresh broker's CPU for its first minute, taken from the services it
#: serves.  Measured on this machine (a fresh broker, 300k messages of ~550 B
#: produced at 25k/s and consumed, four times): CPU per round 8.6 / 5.9 / 6.7
#: / 5.9 s with C1 only against 17.1 / 11.9 / 6.9 / 4.5 s with C2 (start-up
#: 5.4 vs 8.1 s; 32.8 vs 48.8 s in all); in the end-to-end benchmark at 20k
#: events/s for 20 s the broker took 19.7 / 18.6 s against 33.4 / 25.1 s.
#: C2 wins from about the third minute on, so ``LOCAL_KAFKA_JIT=full`` keeps
#: it for soak runs.
QUICK_JIT_OPTS: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)


def default_jvm_opts() -> tuple[str, ...]:
    """``DEFAULT_JVM_OPTS`` plus the JIT choice of ``LOCAL_KAFKA_JIT`` (quick|full)."""
    jit = os.environ.get("LOCAL_KAFKA_JIT", "quick")
    if jit not in ("quick", "full"):
        raise ValueError(f"LOCAL_KAFKA_JIT must be 'quick' or 'full', not {jit!r}")
    return DEFAULT_JVM_OPTS + (QUICK_JIT_OPTS if jit == "quick" else ())


#: A rolled-over log keeps a crash from a previous run readable without the
#: file growing forever across months of restarts.
_LOG_ROLL_BYTES = 20 * 1024 * 1024
_MVN_TIMEOUT_S = 30 * 60
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
_STAMP_NAME = ".assembled"


class LocalKafkaError(RuntimeError):
    """The broker could not be assembled, formatted, started or stopped."""


def _print_progress(message: str) -> None:
    # stderr, so that `start` can print only the bootstrap servers on stdout.
    print(f"[local-kafka] {message}", file=sys.stderr, flush=True)


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


_RUN_MARKER = "===== local_kafka start"


def _startup_report(path: Path) -> str:
    """The first ERROR of the latest run, then the log tail.

    A JVM that dies on startup ends its log with a long stack trace whose last
    lines are framework frames; the line that names the cause (bad config,
    port in use, unformatted dir) is usually the first ERROR of the run.
    """
    last_lines = tail(path)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return last_lines
    run = text[text.rfind(_RUN_MARKER) :] if _RUN_MARKER in text else text
    errors = [line for line in run.splitlines() if "] ERROR " in line or "Exception" in line]
    if not errors:
        return f"last lines of {path}:\n{last_lines}"
    return f"first error: {errors[0]}\nlast lines of {path}:\n{last_lines}"


def _kafka_cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, URL-safe base64, no padding.

    Generated here instead of via ``StorageTool random-uuid`` to save a JVM
    start on the first run.
    """
    while True:
        # One id in 64 starts with "-", which the storage tool's argument parser reads as an
        # option ("--cluster-id: expected one argument"); Kafka's own generator avoids those.
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _api_versions_probe(host: str, port: int, timeout: float) -> bool:
    """Send a real ApiVersions v0 request; used only without confluent-kafka.

    ApiVersions is the one request every Kafka version answers at v0 (clients
    need it to negotiate), and a broker only processes requests once it has
    caught up with the metadata log, so an answer means "ready".
    """
    correlation_id = 0x10CA1
    client_id = b"local-kafka-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 10:
                chunk = sock.recv(10 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    _size, got_correlation, error_code = struct.unpack(">iih", header)
    return bool(got_correlation == correlation_id and error_code == 0)


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every refused connection to stderr; while polling a
    # broker that is still starting up that is pure noise.
    logger = logging.getLogger("local_kafka.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def _metadata_probe(host: str, port: int, timeout: float) -> bool:
    """True if a broker on ``host:port`` answers a Metadata request.

    Prefers confluent-kafka's AdminClient (the client the services use), and
    falls back to a hand-rolled ApiVersions request when this script runs
    under an interpreter without it.
    """
    if not tcp_open(host, port, timeout=min(timeout, 0.5)):
        return False
    try:
        admin_module = importlib.import_module("confluent_kafka.admin")
    except ImportError:
        return _api_versions_probe(host, port, timeout)
    admin = admin_module.AdminClient(
        {
            "bootstrap.servers": f"{host}:{port}",
            "socket.timeout.ms": max(1000, int(timeout * 1000)),
            "logger": _quiet_logger(),
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException, or a timeout while the broker boots
        return False
    return bool(metadata.brokers)


class LocalKafka(LocalProcess):
    """One local KRaft broker+controller, identified by its client port.

    Every method is idempotent and safe to call from several processes at
    once, so fixtures can call ``start()`` unconditionally.
    """

    label = "broker"
    foreign_label = "a broker"
    file_stem = "kafka"
    run_marker = _RUN_MARKER
    log_roll_bytes = _LOG_ROLL_BYTES
    stop_timeout_s = DEFAULT_STOP_TIMEOUT_S
    ready_poll_s = 0.25
    error = LocalKafkaError

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        home: Path | str = DEFAULT_HOME,
        version: str = DEFAULT_KAFKA_VERSION,
        host: str = "127.0.0.1",
        jvm_opts: tuple[str, ...] | None = None,
        overrides: Mapping[str, str] | None = None,
        wipe_on_exit: bool = False,
        progress: ProgressFn | None = _print_progress,
    ) -> None:
        """Describe a broker; nothing is started or downloaded until asked.

        ``controller_port`` defaults to ``port + 1`` if that is free when the
        broker starts, else to any free port: the single-node quorum uses
        static ``controller.quorum.voters``, which unlike a ``--standalone``
        dynamic quorum does not record the controller endpoint in the log, so
        it may differ between restarts.  ``overrides`` are extra broker
        properties, written last so they win.  ``wipe_on_exit`` makes the
        context manager delete the data directory, for fixtures on throwaway
        ports that would otherwise leave a ``data-<port>`` behind per run.
        """
        self.port = port
        self.controller_port = controller_port
        self.home = Path(home).resolve()
        self.version = version
        self.host = host
        self.jvm_opts = jvm_opts if jvm_opts is not None else default_jvm_opts()
        self.overrides: dict[str, str] = dict(overrides or {})
        super().__init__(wipe_on_exit=wipe_on_exit, progress=progress)

    # ----------------------------------------------------------------- paths

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def version_dir(self) -> Path:
        return self.home / self.version

    @property
    def lib_dir(self) -> Path:
        return self.version_dir / "lib"

    @property
    def data_dir(self) -> Path:
        return self.home / f"data-{self.port}"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    def owns(self, command_line: str) -> bool:
        """The broker runs `kafka.Kafka` with this instance's configuration file."""
        return "kafka.Kafka" in command_line and str(self.config_file) in command_line

    # -------------------------------------------------------------- assembly

    def _assembly_stamp(self) -> str:
        # Re-assemble when the pom changes (e.g. a new logging binding), not
        # only when the Kafka version does.
        digest = hashlib.sha256(POM_TEMPLATE.read_bytes()).hexdigest()
        return f"kafka={self.version} pom-sha256={digest}\n"

    def is_assembled(self) -> bool:
        stamp = self.lib_dir / _STAMP_NAME
        try:
            return stamp.read_text() == self._assembly_stamp()
        except OSError:
            return False

    def assemble(self) -> Path:
        """Copy the broker's runtime jars from Maven Central; return the lib dir.

        The jars go to a temporary folder that is renamed into place only
        after Maven succeeds, so an interrupted first run (it takes a while)
        never leaves a half-filled lib/ that later starts would trust.
        """
        if self.is_assembled():
            return self.lib_dir
        with locked(self.version_dir / ".assemble.lock"):
            if self.is_assembled():
                return self.lib_dir
            mvn = shutil.which("mvn")
            if mvn is None:
                raise LocalKafkaError(
                    "mvn not found on PATH: install Maven (Debian: apt-get install maven) "
                    "to assemble the Kafka broker from Maven Central"
                )
            pom = self.version_dir / "pom.xml"
            shutil.copyfile(POM_TEMPLATE, pom)
            staging = self.version_dir / "lib.partial"
            shutil.rmtree(staging, ignore_errors=True)
            mvn_log = self.version_dir / "mvn.log"
            cmd = [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                f"-Dkafka.version={self.version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            self._say(
                f"assembling Kafka {self.version} from Maven Central into {self.lib_dir} "
                "(first run only; downloads ~45 MB)"
            )
            started = time.monotonic()
            with mvn_log.open("wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    cwd=self.version_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                while True:
                    try:
                        code = proc.wait(timeout=15)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = time.monotonic() - started
                        if elapsed > _MVN_TIMEOUT_S:
                            proc.kill()
                            proc.wait()
                            raise LocalKafkaError(
                                f"mvn did not finish in {_MVN_TIMEOUT_S}s; see {mvn_log}"
                            ) from None
                        jars = len(list(staging.glob("*.jar"))) if staging.is_dir() else 0
                        self._say(f"  ... still resolving ({elapsed:.0f}s, {jars} jars copied)")
            if code != 0:
                raise LocalKafkaError(
                    f"mvn failed (exit {code}) assembling Kafka {self.version}; "
                    f"is the version on Maven Central?\n{tail(mvn_log)}"
                )
            if not (staging / f"kafka_2.13-{self.version}.jar").is_file():
                raise LocalKafkaError(f"mvn succeeded but no kafka_2.13 jar in {staging}")
            (staging / _STAMP_NAME).write_text(self._assembly_stamp())
            shutil.rmtree(self.lib_dir, ignore_errors=True)
            staging.rename(self.lib_dir)
            count = len(list(self.lib_dir.glob("*.jar")))
            self._say(f"assembled {count} jars in {time.monotonic() - started:.0f}s")
            return self.lib_dir

    # ---------------------------------------------------------- configuration

    def _choose_controller_port(self) -> int:
        if self.controller_port is not None:
            return self.controller_port
        if self.port + 1 <= 65535 and _port_is_free(self.host, self.port + 1):
            return self.port + 1
        return free_port(self.host)

    def server_properties(self, controller_port: int) -> dict[str, str]:
        """The broker configuration, as a dict so tests can inspect it.

        Replication factors and ISR minimums are 1 because there is one
        broker; with the defaults (3 / 2) the consumer-offsets and transaction
        topics could never be created and consumer groups would hang.
        """
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{controller_port}",
            "listeners": (
                f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "default.replication.factor": "1",
            # Topics are declared by the platform's own setup code; a typo in
            # a topic name must fail loudly instead of creating a new topic.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests start consumers and expect assignment at once, not after
            # the default 3 s wait for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Two cores: the defaults (3 network / 8 I/O threads) only add
            # context switches on this machine.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        props.update(self.overrides)
        return props

    def _write_config(self, controller_port: int) -> None:
        lines = [
            "# Generated by scripts/local_kafka.py on every start; edits are overwritten.",
            "# Pass overrides=... (Python) to change a setting.",
        ]
        lines += [
            f"{key}={value}" for key, value in self.server_properties(controller_port).items()
        ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def is_formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").is_file()

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java not found: Kafka 4 needs a Java 17+ runtime on PATH")
        return java

    def _classpath(self) -> str:
        return f"{self.lib_dir}/*"

    def _format_storage(self) -> None:
        """Write meta.properties and the bootstrap metadata checkpoint.

        KRaft refuses to start on an unformatted log dir; formatting is done
        once per data dir, which is what makes a restart cost only seconds.
        """
        cluster_id = _kafka_cluster_id()
        self._say(f"formatting KRaft storage in {self.log_dirs} (cluster id {cluster_id})")
        result = subprocess.run(
            [
                self._java(),
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                "-cp",
                self._classpath(),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(self.config_file),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not self.is_formatted():
            raise LocalKafkaError(
                f"kafka-storage format failed (exit {result.returncode}):\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            )

    # --------------------------------------------------------------- process

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    def answers(self) -> bool:
        return self.is_answering()

    def startup_report(self) -> str:
        return _startup_report(self.log_file)

    def is_answering(self, timeout: float = 2.0) -> bool:
        """True if some broker (ours or not) answers a metadata request on the port."""
        return _metadata_probe(self.host, self.port, timeout)

    def start(self, timeout: float | None = None) -> str:
        """Start the broker if needed and return its bootstrap servers.

        Returns as soon as the broker answers a real metadata request; the
        first run includes the Maven assembly and is not bounded by
        ``timeout``, which covers only the JVM coming up.
        """
        timeout = DEFAULT_START_TIMEOUT_S if timeout is None else timeout
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / ".lock"):
            pid = self.pid()
            if self.is_answering():
                if pid is not None:
                    self._say(f"already running: pid {pid}, {self.bootstrap_servers}")
                else:
                    self._say(
                        f"a broker not started by this tool already answers on "
                        f"{self.bootstrap_servers}; using it"
                    )
                return self.bootstrap_servers
            if pid is None:
                if tcp_open(self.host, self.port):
                    raise LocalKafkaError(
                        f"port {self.port} is in use by something that is not a Kafka "
                        "broker; pick another --port"
                    )
                self.assemble()
                controller_port = self._choose_controller_port()
                self._write_config(controller_port)
                if not self.is_formatted():
                    self._format_storage()
                pid = self._spawn(controller_port)
            else:
                self._say(f"broker pid {pid} is still starting up; waiting for it")
            self._wait_ready(pid, timeout)
            return self.bootstrap_servers

    def _spawn(self, controller_port: int) -> int:
        pid = self._launch(
            [
                self._java(),
                *self.jvm_opts,
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                f"-Dkafka.logs.dir={self.data_dir}",
                "-cp",
                self._classpath(),
                "kafka.Kafka",
                str(self.config_file),
            ]
        )
        self._say(
            f"started broker pid {pid} on {self.bootstrap_servers} "
            f"(controller {self.host}:{controller_port}); log {self.log_file}"
        )
        return pid


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (3 = not running, as LSB)."""
    parser = argparse.ArgumentParser(
        description="Assemble and run a local single-node Kafka 4 broker (KRaft) from Maven "
        "Central jars."
    )
    parser.add_argument("command", choices=["assemble", "start", "stop", "status", "wipe"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="client port (9092)")
    parser.add_argument(
        "--controller-port", type=int, default=None, help="KRaft controller port (port+1)"
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="cache/data folder")
    parser.add_argument(
        "--kafka-version",
        default=os.environ.get("LOCAL_KAFKA_VERSION", DEFAULT_KAFKA_VERSION),
        help=f"Kafka release on Maven Central ({DEFAULT_KAFKA_VERSION})",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for start/stop"
    )
    args = parser.parse_args(argv)
    kafka = LocalKafka(
        port=args.port,
        controller_port=args.controller_port,
        home=args.home,
        version=args.kafka_version,
    )
    try:
        if args.command == "assemble":
            print(kafka.assemble())
            return 0
        return lifecycle_command(kafka, args.command, args.port, args.timeout)
    except LocalKafkaError as err:
        print(f"local-kafka: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

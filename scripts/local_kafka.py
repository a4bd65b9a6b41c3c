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
import contextlib
import fcntl
import hashlib
import importlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

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

#: A rolled-over log keeps a crash from a previous run readable without the
#: file growing forever across months of restarts.
_LOG_ROLL_BYTES = 20 * 1024 * 1024
_MVN_TIMEOUT_S = 30 * 60
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
_STAMP_NAME = ".assembled"

ProgressFn = Callable[[str], None]


class LocalKafkaError(RuntimeError):
    """The broker could not be assembled, formatted, started or stopped."""


def _print_progress(message: str) -> None:
    # stderr, so that `start` can print only the bootstrap servers on stdout.
    print(f"[local-kafka] {message}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago.

    The kernel picks it, so parallel test sessions do not collide the way a
    hard-coded "test port" would; the small race until the broker binds it is
    acceptable for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    A broker started by a CLI that has since exited is reaped by init, but one
    started from this very process stays a zombie until waited for; counting a
    zombie as alive would make ``stop`` wait out its whole timeout.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


_RUN_MARKER = "===== local_kafka start"


def _startup_report(path: Path) -> str:
    """The first ERROR of the latest run, then the log tail.

    A JVM that dies on startup ends its log with a long stack trace whose last
    lines are framework frames; the line that names the cause (bad config,
    port in use, unformatted dir) is usually the first ERROR of the run.
    """
    tail = _tail(path)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return tail
    run = text[text.rfind(_RUN_MARKER) :] if _RUN_MARKER in text else text
    errors = [line for line in run.splitlines() if "] ERROR " in line or "Exception" in line]
    if not errors:
        return f"last lines of {path}:\n{tail}"
    return f"first error: {errors[0]}\nlast lines of {path}:\n{tail}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise start/stop/assemble across processes.

    pytest-xdist workers, or a developer's shell and a test session, may race
    to assemble the same jars or start the same broker; an flock on a file
    next to the state makes the loser wait and then find the work done.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    if not _tcp_open(host, port, timeout=min(timeout, 0.5)):
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


class LocalKafka:
    """One local KRaft broker+controller, identified by its client port.

    Every method is idempotent and safe to call from several processes at
    once, so fixtures can call ``start()`` unconditionally.
    """

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        home: Path | str = DEFAULT_HOME,
        version: str = DEFAULT_KAFKA_VERSION,
        host: str = "127.0.0.1",
        jvm_opts: tuple[str, ...] = DEFAULT_JVM_OPTS,
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
        self.jvm_opts = jvm_opts
        self.overrides: dict[str, str] = dict(overrides or {})
        self.wipe_on_exit = wipe_on_exit
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None

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

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

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
        with _locked(self.version_dir / ".assemble.lock"):
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
                    f"is the version on Maven Central?\n{_tail(mvn_log)}"
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

    def pid(self) -> int | None:
        """The pid of the broker this tool started on this port, if it runs.

        The command line is checked too, so a stale pid file whose number the
        kernel has since reused never leads ``stop`` to kill a stranger.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _cmdline(pid)
        if cmdline is not None and (
            "kafka.Kafka" not in cmdline or str(self.config_file) not in cmdline
        ):
            return None
        return pid

    def is_running(self) -> bool:
        """True if the broker process this tool started is alive (ready or not)."""
        return self.pid() is not None

    def is_answering(self, timeout: float = 2.0) -> bool:
        """True if some broker (ours or not) answers a metadata request on the port."""
        return _metadata_probe(self.host, self.port, timeout)

    def start(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> str:
        """Start the broker if needed and return its bootstrap servers.

        Returns as soon as the broker answers a real metadata request; the
        first run includes the Maven assembly and is not bounded by
        ``timeout``, which covers only the JVM coming up.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / ".lock"):
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
                if _tcp_open(self.host, self.port):
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
        if self.log_file.exists() and self.log_file.stat().st_size > _LOG_ROLL_BYTES:
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        cmd = [
            self._java(),
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.config_file),
        ]
        with self.log_file.open("ab") as log:
            log.write(f"\n{_RUN_MARKER} {time.ctime()} =====\n".encode())
            log.flush()
            # Own session: Ctrl-C in the shell that ran `start`, or the end of a
            # pytest run, must not take the broker down mid-write; `stop` signals
            # the whole group instead.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        self._say(
            f"started broker pid {self._proc.pid} on {self.bootstrap_servers} "
            f"(controller {self.host}:{controller_port}); log {self.log_file}"
        )
        return self._proc.pid

    def _wait_ready(self, pid: int, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"Kafka broker exited during startup; {_startup_report(self.log_file)}"
                )
            if _metadata_probe(self.host, self.port, timeout=2.0):
                self._say(f"broker ready in {time.monotonic() - started:.1f}s")
                return
            time.sleep(0.25)
        report = _startup_report(self.log_file)
        self._stop_pid(pid, timeout=15.0)
        self.pid_file.unlink(missing_ok=True)
        raise LocalKafkaError(
            f"Kafka broker did not answer on {self.bootstrap_servers} within {timeout:.0f}s "
            f"(stopped it); {report}"
        )

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def _stop_pid(self, pid: int, timeout: float) -> None:
        def signal_group(sig: signal.Signals) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(pid, sig)

        # SIGTERM runs the broker's shutdown hook: a controlled shutdown that
        # flushes and closes logs cleanly, so the next start skips recovery.
        signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.1)
        if self._alive(pid):
            self._say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
            signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while time.monotonic() < kill_deadline and self._alive(pid):
                time.sleep(0.1)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """Stop the broker this tool started; True if one was running.

        A broker on the port that this tool did not start (e.g. from
        docker-compose) is left alone.
        """
        if not self.data_dir.is_dir():
            return False
        with _locked(self.data_dir / ".lock"):
            return self._stop_locked(timeout)

    def _stop_locked(self, timeout: float) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        started = time.monotonic()
        self._stop_pid(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        self._say(f"stopped broker pid {pid} in {time.monotonic() - started:.1f}s")
        return True

    def wipe(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the broker and delete its data dir; the assembled jars stay."""
        if not self.data_dir.is_dir():
            return
        with _locked(self.data_dir / ".lock"):
            self._stop_locked(timeout)
            shutil.rmtree(self.data_dir)
        self._say(f"wiped {self.data_dir}")

    # ------------------------------------------------------- context manager

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.wipe_on_exit:
            self.wipe()
        else:
            self.stop()


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
        elif args.command == "start":
            print(kafka.start(timeout=args.timeout or DEFAULT_START_TIMEOUT_S))
        elif args.command == "stop":
            if not kafka.stop(timeout=args.timeout or DEFAULT_STOP_TIMEOUT_S):
                _print_progress(f"no broker started by this tool runs on port {args.port}")
        elif args.command == "wipe":
            kafka.wipe(timeout=args.timeout or DEFAULT_STOP_TIMEOUT_S)
        else:
            pid = kafka.pid()
            answering = kafka.is_answering()
            if pid is not None:
                state = "running (ready)" if answering else "running (not answering yet)"
                print(f"{state}: pid {pid}, {kafka.bootstrap_servers}, data {kafka.data_dir}")
            elif answering:
                print(f"a broker not started by this tool answers on {kafka.bootstrap_servers}")
            else:
                print(f"not running on port {args.port}")
                return 3
    except LocalKafkaError as err:
        print(f"local-kafka: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

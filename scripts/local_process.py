#!/usr/bin/env python3
"""What `local_kafka.py` and `local_redis.py` share: one private server process per port.

Each tool runs its server as our own child in a session of its own (not daemonized), so that
we hold the real pid, keep its output in a log file and stop exactly the process we started:

    <data_dir>/<name>.pid   the pid, checked against the process's command line before use
    <data_dir>/<name>.log   output of every run, each run opened by a marker line
    <data_dir>/.lock        flock serialising start/stop/wipe across processes

Standard library only, so both tools run under any Python 3.11 (before the project's
virtualenv exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

ProgressFn = Callable[[str], None]


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the kernel's ephemeral range and above Ray's default worker ports (10002-19999).
LISTEN_PORT_FLOOR = 20000


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands out for `bind(0)` and outgoing connections."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago and that the kernel will not hand out.

    A port the kernel picked (`bind(0)`) comes from its ephemeral range, which every outgoing
    connection and every other `bind(0)` draws from too: between our check and the server's
    bind, a process that opens many local connections (Ray starting its actors, a broker
    client) can take it, and the server then fails to bind (seen in CI with Ray Serve's
    proxy). So the port is drawn at random below that range, where only an explicit bind
    lands, and checked free; random rather than sequential so that parallel test sessions
    do not race for the same one.
    """
    low, _ = ephemeral_port_range()
    draw = random.SystemRandom().randrange
    for _ in range(200 if low > LISTEN_PORT_FLOOR else 0):
        port = draw(LISTEN_PORT_FLOOR, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    # Nothing free below the range (or the range starts at the floor): the kernel's choice.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie.

    A server started by a CLI that has since exited is reaped by init, but one started from
    this very process stays a zombie until waited for; counting a zombie as alive would make
    `stop` wait out its whole timeout.
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


def cmdline(pid: int) -> str | None:
    """The command line of `pid` (NULs as spaces), or None without procfs or process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def tail(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file (reading at most its last `max_bytes`)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise start/stop/assemble across processes.

    pytest-xdist workers, or a developer's shell and a test session, may race to start the
    same server; an flock on a file next to the state makes the loser wait and then find the
    work done.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LocalProcess:
    """Lifecycle of one private server process identified by its data directory.

    Subclasses say where the data lives (`data_dir`), what the process is called in messages
    (`label`), how its command line is recognised (`owns`), and how to start and probe it.
    Every method is idempotent and safe to call from several processes at once.
    """

    label: ClassVar[str] = "server"
    """What the process is called in progress messages ("broker", "redis-server")."""
    foreign_label: ClassVar[str] = "a server"
    """What `status` calls a server on the port that this tool did not start."""
    file_stem: ClassVar[str] = "server"
    """Name of the pid and log files in the data directory."""
    run_marker: ClassVar[str] = "===== local_process start"
    """Opens each run's part of the log file."""
    log_roll_bytes: ClassVar[int] = 10 * 1024 * 1024
    """A larger log is renamed to *.log.1 before the next start."""
    poll_s: ClassVar[float] = 0.1
    """How often `stop` looks whether the process has gone."""
    kill_wait_s: ClassVar[float] = 10.0
    """How long to wait for the process to go after SIGKILL."""
    stop_timeout_s: ClassVar[float] = 30.0
    """Default time between SIGTERM and SIGKILL in `stop` and `wipe`."""
    ready_poll_s: ClassVar[float] = 0.1
    """How often a starting server is probed."""
    error: ClassVar[type[RuntimeError]] = RuntimeError
    """What start-up failures raise (the tool's own error type, which its CLI reports)."""

    def __init__(self, *, wipe_on_exit: bool, progress: ProgressFn | None) -> None:
        self.wipe_on_exit = wipe_on_exit
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------- subclass parts

    @property
    def data_dir(self) -> Path:
        """Folder holding this instance's data, pid file, log file and lock."""
        raise NotImplementedError

    def owns(self, command_line: str) -> bool:
        """True if `command_line` is the process this instance starts (not a reused pid)."""
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> str:
        """Start the server if needed (waiting up to `timeout` s, or the tool's default);
        return its address once it answers."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """What clients connect to (bootstrap servers, URL)."""
        raise NotImplementedError

    def answers(self) -> bool:
        """True if some server (ours or not) answers a real request at `address`."""
        raise NotImplementedError

    def startup_report(self) -> str:
        """What explains a failed start: by default the tail of the log."""
        return f"last lines of {self.log_file}:\n{tail(self.log_file)}"

    # ----------------------------------------------------------------- shared

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.file_stem}.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.file_stem}.pid"

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def pid(self) -> int | None:
        """The pid of the process this tool started for this instance, if it runs.

        The command line is checked too, so a stale pid file whose number the kernel has
        since reused never leads `stop` to signal a stranger.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not self._alive(pid):
            return None
        command_line = cmdline(pid)
        if command_line is not None and not self.owns(command_line):
            return None
        return pid

    def is_running(self) -> bool:
        """True if the process this tool started is alive (ready or not)."""
        return self.pid() is not None

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return pid_alive(pid)

    def _launch(self, argv: Sequence[str]) -> int:
        """Start `argv` in its own session with output appended to the log; record the pid."""
        if self.log_file.exists() and self.log_file.stat().st_size > self.log_roll_bytes:
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        with self.log_file.open("ab") as log:
            log.write(f"\n{self.run_marker} {time.ctime()} =====\n".encode())
            log.flush()
            # Own session: Ctrl-C in the shell that ran `start`, or the end of a pytest run,
            # must not take the server down mid-write; `stop` signals the whole group.
            self._proc = subprocess.Popen(
                list(argv),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _wait_ready(self, pid: int, timeout: float) -> None:
        """Return once the server answers; raise (and stop it) if it exits or stays silent."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise self.error(f"{self.label} exited during startup; {self.startup_report()}")
            if self.answers():
                self._say(f"{self.label} ready in {time.monotonic() - started:.2f}s")
                return
            time.sleep(self.ready_poll_s)
        report = self.startup_report()
        self._stop_pid(pid, min(timeout, 15.0))
        self.pid_file.unlink(missing_ok=True)
        raise self.error(
            f"{self.label} did not answer on {self.address} within {timeout:.0f}s "
            f"(stopped it); {report}"
        )

    def _stop_pid(self, pid: int, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; reap our own child."""

        def signal_group(sig: signal.Signals) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(pid, sig)

        signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(self.poll_s)
        if self._alive(pid):
            self._say(f"{self.label} pid {pid} ignored SIGTERM for {timeout:.0f}s; SIGKILL")
            signal_group(signal.SIGKILL)
            kill_deadline = time.monotonic() + self.kill_wait_s
            while time.monotonic() < kill_deadline and self._alive(pid):
                time.sleep(self.poll_s)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the process this tool started; True if one was running.

        A server on the port that this tool did not start (e.g. from docker-compose) is
        left alone.
        """
        if not self.data_dir.is_dir():
            return False
        with locked(self.data_dir / ".lock"):
            return self._stop_locked(self.stop_timeout_s if timeout is None else timeout)

    def _stop_locked(self, timeout: float) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        started = time.monotonic()
        self._stop_pid(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        self._say(f"stopped {self.label} pid {pid} in {time.monotonic() - started:.2f}s")
        return True

    def wipe(self, timeout: float | None = None) -> None:
        """Stop the process and delete its data directory."""
        if not self.data_dir.is_dir():
            return
        with locked(self.data_dir / ".lock"):
            self._stop_locked(self.stop_timeout_s if timeout is None else timeout)
            shutil.rmtree(self.data_dir)
        self._say(f"wiped {self.data_dir}")

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


def lifecycle_command(
    server: LocalProcess, command: str, port: int, timeout: float | None = None
) -> int:
    """`start`, `stop`, `wipe` or `status` for a CLI; the exit code (3 = not running, as LSB).

    `start` prints only the address on stdout (progress goes to stderr), so that
    `ADDRESS=$(python scripts/local_<x>.py start)` works in shell scripts.
    """
    if command == "start":
        print(server.start(timeout=timeout or None))
    elif command == "stop":
        if not server.stop(timeout=timeout or None):
            server._say(f"no {server.label} started by this tool runs on port {port}")
    elif command == "wipe":
        server.wipe(timeout=timeout or None)
    elif command == "status":
        pid = server.pid()
        answering = server.answers()
        if pid is not None:
            state = "running (ready)" if answering else "running (not answering yet)"
            print(f"{state}: pid {pid}, {server.address}, data {server.data_dir}")
        elif answering:
            print(f"{server.foreign_label} not started by this tool answers on {server.address}")
        else:
            print(f"not running on port {port}")
            return 3
    else:
        raise ValueError(f"unknown command {command!r}")
    return 0

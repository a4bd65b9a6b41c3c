#!/usr/bin/env python3
"""Run a private redis-server for development and tests, without Docker.

The feature store's online store is Redis.  The system service (if any) is
left alone: each instance here is our own ``redis-server`` child bound to
127.0.0.1 on a chosen port, with its data under ``.cache/redis/data-<port>``,
so a pytest fixture on a free port never touches a developer's data on 6379.

We keep the process in the foreground of its own session (not ``daemonize
yes``) so that we hold the real pid, see its output in ``redis.log``, and can
stop exactly the process we started.

If ``redis-server`` is missing it is installed from Debian's packages (the only
source these machines reach), with service start-up suppressed so the package
does not launch a system-wide Redis on 6379.

CLI::

    python scripts/local_redis.py {install,start,stop,status,wipe} \\
        [--port 6379] [--home .cache/redis] [--appendonly] [--timeout SECONDS]

``start`` prints the URL (``redis://127.0.0.1:6379/0``) on stdout; progress
goes to stderr.

Python::

    from local_redis import LocalRedis, free_port

    with LocalRedis(port=free_port(), wipe_on_exit=True) as redis_server:
        client = redis.Redis.from_url(redis_server.url)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

DEFAULT_PORT = 6379
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".cache" / "redis"
DEFAULT_START_TIMEOUT_S = 20.0
DEFAULT_STOP_TIMEOUT_S = 15.0
_LOG_ROLL_BYTES = 10 * 1024 * 1024
_RUN_MARKER = "===== local_redis start"

ProgressFn = Callable[[str], None]

# Written only while apt installs redis-server, and only if the machine has no
# policy-rc.d of its own: exit 101 tells invoke-rc.d / deb-systemd-invoke
# "do not start services", so the package's postinst leaves 6379 free.
_APT_INSTALL_SCRIPT = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created=1
fi
cleanup() { if [ "$created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server
"""


class LocalRedisError(RuntimeError):
    """redis-server could not be installed, started or stopped."""


def _print_progress(message: str) -> None:
    # stderr, so that `start` can print only the URL on stdout.
    print(f"[local-redis] {message}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (kernel-chosen, so
    parallel test sessions do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a child of this very
    process stays a zombie until waited for, and must count as gone)."""
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
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 32 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise start/stop across processes (pytest-xdist workers, a shell
    and a test session) so the loser waits and then finds the work done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _command(host: str, port: int, *args: str, timeout: float = 1.0) -> bytes | None:
    """Send one RESP command and return the raw first reply line.

    A dozen lines of protocol keep this script free of redis-py, so it runs
    under any Python 3.11 (e.g. before the project's venv exists).
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    return reply.strip()


def find_redis_server() -> str | None:
    """Path of redis-server, also looking where Debian puts it when PATH is
    minimal (cron, some CI shells)."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_redis_server(progress: ProgressFn | None = _print_progress) -> str:
    """Return the redis-server path, installing Debian's package if missing."""
    found = find_redis_server()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise LocalRedisError(
            "redis-server not found and apt-get is unavailable: install Redis 7 "
            "(e.g. `brew install redis`, `dnf install redis`) and put redis-server on PATH"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise LocalRedisError(
                "redis-server not found and not running as root (no sudo): run "
                "`apt-get update && apt-get install -y redis-server` as root"
            )
        # Without a terminal sudo cannot prompt; -n fails fast instead of hanging CI.
        prefix = ["sudo"] if sys.stdin.isatty() else ["sudo", "-n"]
    if progress is not None:
        progress("redis-server not found; installing Debian package redis-server (apt-get)")
    result = subprocess.run(
        [*prefix, "sh", "-c", _APT_INSTALL_SCRIPT],
        # An interactive sudo reads its password from the terminal.
        stdin=None if prefix == ["sudo"] else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    found = find_redis_server()
    if result.returncode != 0 or found is None:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LocalRedisError(
            f"installing redis-server failed (exit {result.returncode}); run "
            f"`apt-get update && apt-get install -y redis-server` as root.\n{output}"
        )
    return found


class LocalRedis:
    """One private redis-server, identified by its port.

    Every method is idempotent and safe to call from several processes at
    once, so fixtures can call ``start()`` unconditionally.
    """

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        home: Path | str = DEFAULT_HOME,
        host: str = "127.0.0.1",
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        wipe_on_exit: bool = False,
        progress: ProgressFn | None = _print_progress,
    ) -> None:
        """Describe an instance; nothing is installed or started until asked.

        Persistence is off by default (no RDB snapshots, no AOF): test data is
        disposable, and fork-on-save would compete with the services under
        test for the two cores.  ``appendonly=True`` keeps data across
        restarts for manual work.  ``extra_args`` go to redis-server last
        (e.g. ``("--maxmemory", "256mb")``).
        """
        self.port = port
        self.home = Path(home).resolve()
        self.host = host
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.wipe_on_exit = wipe_on_exit
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.home / f"data-{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def ping(self, timeout: float = 1.0) -> bool:
        """True if some Redis (ours or not) answers PING on the port.

        ``-LOADING`` (an AOF being replayed) is not ready: commands would fail.
        """
        return _command(self.host, self.port, "PING", timeout=timeout) == b"+PONG"

    def pid(self) -> int | None:
        """Pid of the redis-server this tool started on this port, if alive.

        Checked against the process title too, so a stale pid file whose
        number was reused never makes ``stop`` signal a stranger.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not self._alive(pid):
            return None
        cmdline = _cmdline(pid)
        if cmdline is not None and (
            "redis-server" not in cmdline or f":{self.port}" not in cmdline
        ):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def _argv(self, server: str) -> list[str]:
        return [
            server,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--logfile",
            "",  # stdout, which we redirect to redis.log
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            *self.extra_args,
        ]

    def start(self, timeout: float = DEFAULT_START_TIMEOUT_S) -> str:
        """Start redis-server if needed; return its URL once it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / ".lock"):
            pid = self.pid()
            if self.ping():
                if pid is not None:
                    self._say(f"already running: pid {pid}, {self.url}")
                else:
                    self._say(f"a Redis not started by this tool answers on {self.url}; using it")
                return self.url
            if pid is None:
                if _tcp_open(self.host, self.port):
                    raise LocalRedisError(
                        f"port {self.port} is in use by something that does not answer "
                        "PING; pick another --port"
                    )
                server = ensure_redis_server(self._progress)
                pid = self._spawn(server)
            self._wait_ready(pid, timeout)
            return self.url

    def _spawn(self, server: str) -> int:
        if self.log_file.exists() and self.log_file.stat().st_size > _LOG_ROLL_BYTES:
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        with self.log_file.open("ab") as log:
            log.write(f"\n{_RUN_MARKER} {time.ctime()} =====\n".encode())
            log.flush()
            # Own session: a Ctrl-C in the starting shell must not kill it.
            self._proc = subprocess.Popen(
                self._argv(server),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        self._say(f"started redis-server pid {self._proc.pid} on {self.url}; log {self.log_file}")
        return self._proc.pid

    def _wait_ready(self, pid: int, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise LocalRedisError(
                    f"redis-server exited during startup; last lines of {self.log_file}:\n"
                    f"{_tail(self.log_file)}"
                )
            if self.ping(timeout=0.5):
                self._say(f"redis ready in {time.monotonic() - started:.2f}s")
                return
            time.sleep(0.05)
        tail = _tail(self.log_file)
        self._stop_pid(pid, DEFAULT_STOP_TIMEOUT_S)
        self.pid_file.unlink(missing_ok=True)
        raise LocalRedisError(
            f"redis-server did not answer PING on {self.url} within {timeout:.0f}s "
            f"(stopped it); last lines of {self.log_file}:\n{tail}"
        )

    def _stop_pid(self, pid: int, timeout: float) -> None:
        # SIGTERM is Redis' SHUTDOWN: with no save points it writes no RDB,
        # and with appendonly it fsyncs the AOF first, so it is both fast and
        # safe, and works even when the server is busy or password-protected.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.05)
        if self._alive(pid):
            self._say(f"redis-server pid {pid} ignored SIGTERM for {timeout:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while time.monotonic() < kill_deadline and self._alive(pid):
                time.sleep(0.05)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """Stop the redis-server this tool started; True if one was running.

        A Redis on the port that this tool did not start is left alone.
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
        self._say(f"stopped redis-server pid {pid} in {time.monotonic() - started:.2f}s")
        return True

    def wipe(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the server and delete its data dir."""
        if not self.data_dir.is_dir():
            return
        with _locked(self.data_dir / ".lock"):
            self._stop_locked(timeout)
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


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (3 = not running, as LSB)."""
    parser = argparse.ArgumentParser(
        description="Run a private redis-server on 127.0.0.1 (installs Debian's package if "
        "missing)."
    )
    parser.add_argument("command", choices=["install", "start", "stop", "status", "wipe"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (6379)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="cache/data folder")
    parser.add_argument(
        "--appendonly", action="store_true", help="persist with an AOF across restarts"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds for start/stop")
    args = parser.parse_args(argv)
    server = LocalRedis(port=args.port, home=args.home, appendonly=args.appendonly)
    try:
        if args.command == "install":
            print(ensure_redis_server())
        elif args.command == "start":
            print(server.start(timeout=args.timeout or DEFAULT_START_TIMEOUT_S))
        elif args.command == "stop":
            if not server.stop(timeout=args.timeout or DEFAULT_STOP_TIMEOUT_S):
                _print_progress(f"no redis-server started by this tool runs on port {args.port}")
        elif args.command == "wipe":
            server.wipe(timeout=args.timeout or DEFAULT_STOP_TIMEOUT_S)
        else:
            pid = server.pid()
            answering = server.ping()
            if pid is not None:
                state = "running (ready)" if answering else "running (not answering)"
                print(f"{state}: pid {pid}, {server.url}, data {server.data_dir}")
            elif answering:
                print(f"a Redis not started by this tool answers on {server.url}")
            else:
                print(f"not running on port {args.port}")
                return 3
    except LocalRedisError as err:
        print(f"local-redis: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

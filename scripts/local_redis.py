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
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from local_process import (
    LocalProcess,
    ProgressFn,
    free_port,
    lifecycle_command,
    locked,
    tcp_open,
)

__all__ = ["DEFAULT_PORT", "LocalRedis", "LocalRedisError", "free_port", "main"]

DEFAULT_PORT = 6379
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".cache" / "redis"
DEFAULT_START_TIMEOUT_S = 20.0
DEFAULT_STOP_TIMEOUT_S = 15.0
_LOG_ROLL_BYTES = 10 * 1024 * 1024
_RUN_MARKER = "===== local_redis start"

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


class LocalRedis(LocalProcess):
    """One private redis-server, identified by its port.

    Every method is idempotent and safe to call from several processes at
    once, so fixtures can call ``start()`` unconditionally.
    """

    label = "redis-server"
    foreign_label = "a Redis"
    file_stem = "redis"
    run_marker = _RUN_MARKER
    log_roll_bytes = _LOG_ROLL_BYTES
    poll_s = 0.05
    kill_wait_s = 5.0
    stop_timeout_s = DEFAULT_STOP_TIMEOUT_S
    ready_poll_s = 0.05
    error = LocalRedisError

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
        super().__init__(wipe_on_exit=wipe_on_exit, progress=progress)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.home / f"data-{self.port}"

    def owns(self, command_line: str) -> bool:
        """Our redis-server, listening on this instance's port."""
        return "redis-server" in command_line and f":{self.port}" in command_line

    @property
    def address(self) -> str:
        return self.url

    def answers(self) -> bool:
        return self.ping()

    def ping(self, timeout: float = 1.0) -> bool:
        """True if some Redis (ours or not) answers PING on the port.

        ``-LOADING`` (an AOF being replayed) is not ready: commands would fail.
        """
        return _command(self.host, self.port, "PING", timeout=timeout) == b"+PONG"

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

    def start(self, timeout: float | None = None) -> str:
        """Start redis-server if needed; return its URL once it answers PING."""
        timeout = DEFAULT_START_TIMEOUT_S if timeout is None else timeout
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / ".lock"):
            pid = self.pid()
            if self.ping():
                if pid is not None:
                    self._say(f"already running: pid {pid}, {self.url}")
                else:
                    self._say(f"a Redis not started by this tool answers on {self.url}; using it")
                return self.url
            if pid is None:
                if tcp_open(self.host, self.port):
                    raise LocalRedisError(
                        f"port {self.port} is in use by something that does not answer "
                        "PING; pick another --port"
                    )
                server = ensure_redis_server(self._progress)
                pid = self._spawn(server)
            self._wait_ready(pid, timeout)
            return self.url

    def _spawn(self, server: str) -> int:
        pid = self._launch(self._argv(server))
        self._say(f"started redis-server pid {pid} on {self.url}; log {self.log_file}")
        return pid


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
            return 0
        return lifecycle_command(server, args.command, args.port, args.timeout)
    except LocalRedisError as err:
        print(f"local-redis: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

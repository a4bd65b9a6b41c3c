"""Test servers get ports outside the kernel's ephemeral range, and never a taken one."""

from __future__ import annotations

import socket
from pathlib import Path

import local_process
import pytest
from local_process import ephemeral_port_range, free_port


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_ports_come_from_below_the_ephemeral_range_and_bind() -> None:
    low, _ = ephemeral_port_range()
    ports = {free_port() for _ in range(20)}
    assert all(local_process.LISTEN_PORT_FLOOR <= port < low for port in ports)
    # Random, so that two test sessions starting together do not pick the same port.
    assert len(ports) > 1
    for port in ports:
        _listening(port).close()


def test_a_taken_port_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _listening(free_port())
    port = taken.getsockname()[1]
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 1))  # the one port left must be free
        # Two candidates: the taken port and the one above it.
        monkeypatch.setattr(local_process, "LISTEN_PORT_FLOOR", port)
        range_file = tmp_path / "ip_local_port_range"
        range_file.write_text(f"{port + 2}\t60999\n")
        monkeypatch.setattr(local_process, "EPHEMERAL_RANGE_FILE", range_file)
        assert {free_port() for _ in range(10)} == {port + 1}
    finally:
        taken.close()


def test_an_unreadable_range_falls_back_to_linux_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_process, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ephemeral_port_range() == (32768, 60999)
    assert local_process.LISTEN_PORT_FLOOR <= free_port() < 32768

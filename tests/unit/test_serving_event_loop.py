"""The model server's event loop: KServe's `asyncio.run` gets a uvloop loop when uvloop is
installed (it is, through kserve's uvicorn[standard]), and KServe's own start-up finds a
current loop to configure. Run in a subprocess: the policy is process-wide."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio
from services.serving.server import use_uvloop

assert use_uvloop()
asyncio.get_event_loop()  # what kserve.ModelServer.setup_event_loop() calls first

async def running() -> str:
    return type(asyncio.get_running_loop()).__module__

print(asyncio.run(running()))
"""


def test_kserve_runs_on_uvloop() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("uvloop"), out.stdout

"""scripts/ensure_env.sh: every checkout runs its own code on the shared dependency cache.

The cache used to hold an editable install of whichever checkout ran last, so a second
checkout (a CI clone) re-pointed it and the first one's `.venv/bin/anomaly` then failed with
ModuleNotFoundError, or ran the other checkout's code. These tests make a second checkout
next to this one, on the same cache (the dependencies are already there: no download of
them), and check that both keep importing their own tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _checkout(dest: Path) -> Path:
    """The parts of the project an editable install needs, from the working tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("services", "models"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    (dest / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "scripts/ensure_env.sh"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _imported_from(python: Path, cwd: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import services; print(services.__file__)"],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip()).parent.parent


@pytest.fixture(scope="module")
def own_venv() -> Path:
    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip("these tests run inside the environment of scripts/ensure_env.sh")
    return venv


def test_a_second_checkout_leaves_the_first_one_its_code(own_venv: Path, tmp_path: Path) -> None:
    other = _checkout(tmp_path / "clone")
    made = subprocess.run(
        ["bash", str(other / "scripts" / "ensure_env.sh")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.strip() == str(other / ".venv")
    neutral = tmp_path  # not either checkout: the current folder would shadow the install
    assert _imported_from(other / ".venv" / "bin" / "python", neutral) == other
    assert _imported_from(own_venv / "bin" / "python", neutral) == ROOT

    # The dependencies' commands run on the checkout's interpreter, so they see its code.
    pytest_cmd = (other / ".venv" / "bin" / "pytest").read_text().splitlines()[0]
    assert pytest_cmd == f"#!{other / '.venv' / 'bin' / 'python'}"
    anomaly = subprocess.run(
        [str(other / ".venv" / "bin" / "anomaly"), "--help"],
        cwd=neutral, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert anomaly.returncode == 0, anomaly.stderr[-2000:]
    assert "train" in anomaly.stdout

    # A second run reuses the overlay (no reinstall) and still prints it.
    again = subprocess.run(
        ["bash", str(other / "scripts" / "ensure_env.sh")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout.strip() == str(other / ".venv")
    assert "pip" not in again.stderr

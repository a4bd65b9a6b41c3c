"""Fixtures for the Kubernetes delivery checks: the pinned tools and a cached chart renderer.

`scripts/k8s_tools.sh` installs helm and kubeconform with `go install` into .cache/go-bin the
first time (a few minutes, once per machine); afterwards it returns at once. Renders are
cached per (values files, --set flags), so the many invariant checks cost one `helm
template` each.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.k8s.chart import CHART, CI_VALUES, NAMESPACE, RELEASE, ROOT, Render, Result, Tools


@pytest.fixture(scope="session")
def tools() -> Tools:
    """helm and kubeconform at the versions pinned in scripts/k8s_tools.sh."""
    if shutil.which("go") is None and not (ROOT / ".cache" / "go-bin" / "helm").exists():
        pytest.skip("Go is not installed: scripts/k8s_tools.sh cannot install helm/kubeconform")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "k8s_tools.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )
    assert proc.returncode == 0, f"scripts/k8s_tools.sh failed:\n{proc.stderr}"
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    return Tools(helm=bin_dir / "helm", kubeconform=bin_dir / "kubeconform")


@pytest.fixture(scope="session")
def render(tools: Tools) -> Render:
    """`helm template` of the chart with values files from ci/ and --set flags (cached)."""
    cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Result] = {}

    def run(values: Sequence[str | Path] = (), sets: Sequence[str] = ()) -> Result:
        files = tuple(str(v if isinstance(v, Path) else CI_VALUES / v) for v in values)
        key = (files, tuple(sets))
        if key not in cache:
            cmd = [str(tools.helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            for f in files:
                cmd += ["--values", f]
            for s in sets:
                cmd += ["--set", s]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
            cache[key] = Result(proc.returncode, proc.stdout, proc.stderr)
        return cache[key]

    return run

"""Static checks of the Dockerfiles (no daemon needed): multi-stage, slim, non-root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(p.name for p in DOCKER.glob("*Dockerfile"))


def stages(text: str) -> list[tuple[str, str, list[str]]]:
    """(base, name, instructions) of each FROM stage, ARG defaults substituted."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    lines = re.sub(r"\\\n", " ", text).splitlines()
    found: list[tuple[str, str, list[str]]] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, flags=re.I)
        if m:
            base = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a.group(1), a.group(0)), m.group(1))
            found.append((base, m.group(2) or "", []))
        elif found:
            found[-1][2].append(line)
    return found


def test_dockerfiles_exist() -> None:
    assert set(DOCKERFILES) == {"Dockerfile", "serving-cuda.Dockerfile"}


def lineage(all_stages: list[tuple[str, str, list[str]]], name: str) -> list[list[str]]:
    """Instructions of a stage and of the stages it is built FROM, nearest first."""
    by_name = {s[1]: s for s in all_stages}
    chain: list[list[str]] = []
    while name in by_name:
        base, _, instructions = by_name[name]
        chain.append(instructions)
        name = base
    return chain


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_are_multi_stage_and_run_as_non_root(name: str) -> None:
    all_stages = stages((DOCKER / name).read_text())
    names = [s[1] for s in all_stages]
    assert "builder" in names, "a builder stage installs the project"
    builder = lineage(all_stages, "builder")[0]
    assert any("pip install" in i and '".' in i for i in builder), "pip install . in the builder"
    runtime = [n for n in names if n in {"app", "serving"}]
    assert runtime
    for stage in runtime:
        chain = lineage(all_stages, stage)
        users = [i.split()[1] for instrs in chain for i in instrs if i.startswith("USER ")]
        assert users, f"{name}:{stage} sets no USER"
        uid = users[0].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name}:{stage} runs as {users[0]}"
        copies = [i for instrs in chain for i in instrs if i.startswith("COPY --from=builder")]
        assert copies == ["COPY --from=builder /opt/venv /opt/venv"], f"{name}:{stage}"


def test_app_image_is_python_slim_and_cuda_image_installs_the_gpu_extra() -> None:
    app = stages((DOCKER / "Dockerfile").read_text())
    assert all(base.startswith("python:3.11-slim") for base, _, _ in app if ":" in base)
    cuda_text = (DOCKER / "serving-cuda.Dockerfile").read_text()
    cuda = stages(cuda_text)
    assert cuda[0][0].startswith("nvidia/cuda:") and "runtime" in cuda[0][0]
    assert 'pip install ".[gpu]"' in cuda_text
    assert "pip uninstall -y onnxruntime" in cuda_text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert next(x for x in lines if not x.startswith("#")) == "*"
    for needed in ("!pyproject.toml", "!services/", "!models/"):
        assert needed in lines

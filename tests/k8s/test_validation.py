"""The chart lints, renders and validates (kubeconform -strict) for every CI values file; bad
values fail at install time with a message naming the key; k8s/ is in sync with the chart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from services.common.config import parse_config
from services.common.config.model import PlatformConfig
from tests.k8s.chart import (
    CHART,
    CI_VALUES,
    ROOT,
    SCHEMA_LOCATION,
    SKIPPED_KINDS,
    Render,
    Tools,
    platform_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

VALUES_FILES = sorted(p.name for p in CI_VALUES.glob("*-values.yaml"))


def test_ci_values_files_cover_the_documented_modes() -> None:
    assert {
        "default-values.yaml",
        "gpu-values.yaml",
        "no-kserve-values.yaml",
        "ray-values.yaml",
    } <= set(VALUES_FILES)


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint(tools: Tools, values: str) -> None:
    proc = subprocess.run(
        [str(tools.helm), "lint", "--strict", str(CHART), "--values", str(CI_VALUES / values)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_manifests_pass_kubeconform_strict(
    tools: Tools, render: Render, values: str
) -> None:
    result = render([values])
    assert result.returncode == 0, result.stderr
    proc = subprocess.run(
        [
            str(tools.kubeconform),
            "-strict",
            "-summary",
            "-schema-location",
            SCHEMA_LOCATION,
            # Explicit and documented: no Strimzi CRD schema can be had from the registries.
            "-skip",
            SKIPPED_KINDS,
            "-",
        ],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0" in proc.stdout


def test_kubeconform_rejects_unknown_fields_with_the_repo_schemas(tools: Tools) -> None:
    """The checked-in schemas are strict: a misspelt field of a CRD or core kind fails."""
    bad = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: x}
spec:
  predictor:
    minReplicaz: 1
    containers: [{name: kserve-container, image: x}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  replicaz: 1
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: x, image: x}]}
"""
    proc = subprocess.run(
        [str(tools.kubeconform), "-strict", "-schema-location", SCHEMA_LOCATION, "-"],
        input=bad,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "minReplicaz" in proc.stdout
    assert "replicaz" in proc.stdout


def test_values_typo_fails_naming_the_key(render: Render, tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("router:\n  replicaz: 2\n")
    result = render([typo])
    assert result.returncode != 0
    assert "replicaz" in result.stderr
    assert "/router" in result.stderr


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (["serving.mode=knative"], "/serving/mode"),
        (["serving.models.transformer.gpu=-1"], "/serving/models/transformer/gpu"),
        (["config.kafak.bootstrap_servers=x:9092"], "kafak"),
        (["serving.models.xgboost.canaryTrafficPercent=101"], "canaryTrafficPercent"),
    ],
)
def test_bad_values_fail_at_install_time(render: Render, sets: list[str], named: str) -> None:
    result = render(sets=sets)
    assert result.returncode != 0
    assert named in result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["ingest.replicas=33"], "ingest.replicas (33) exceeds the partition count"),
        (
            ["config.kafka.topics.events.partitions=8", "ingest.replicas=9"],
            "ingest.replicas (9) exceeds the partition count of the events topic "
            "(config.kafka.topics.events.partitions = 8)",
        ),
        (
            ["ingest.keda.enabled=true", "ingest.keda.maxReplicas=64"],
            "ingest.keda.maxReplicas (64) exceeds the partition count",
        ),
    ],
)
def test_ingest_replicas_beyond_partitions_fail(
    render: Render, sets: list[str], message: str
) -> None:
    result = render(sets=sets)
    assert result.returncode != 0
    assert message in result.stderr


def test_ingest_replicas_up_to_partitions_render(render: Render) -> None:
    result = render(sets=["config.kafka.topics.events.partitions=8", "ingest.replicas=8"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ["config.alerts.routing_key=oops"],
        ["config.alerts.sinks[0].type=pagerduty", "config.alerts.sinks[0].routing_key=oops"],
        ["config.kafka.sasl_password=oops"],
    ],
)
def test_secrets_in_the_configmap_are_refused(render: Render, sets: list[str]) -> None:
    result = render(sets=sets)
    assert result.returncode != 0
    assert "must not be set" in result.stderr


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_platform_config_is_valid_for_the_services(
    render: Render, values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's platform.yaml loads into the services' typed configuration."""
    result = render([values])
    assert result.returncode == 0, result.stderr
    cfg = parse_config(platform_yaml(result.docs), f"ConfigMap of {values}")
    assert cfg.kafka.bootstrap_servers
    assert cfg.ingest.ops_host == "0.0.0.0"


def test_values_schema_config_sections_match_the_config_model() -> None:
    """values.schema.json names exactly the top-level sections of PlatformConfig."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = set(schema["properties"]["config"]["properties"])
    assert sections == set(PlatformConfig.model_fields), (
        "update config: in helm/anomaly-platform/values.schema.json to the sections of "
        "services/common/config/model.py"
    )


def test_k8s_manifests_are_in_sync_with_the_chart(tools: Tools) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "render_k8s.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_notes_tell_how_to_call_the_scoring_endpoint() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for needle in ("port-forward", "curl", "/v1/score", "grpcurl", "anomaly.v1.Scoring/Score"):
        assert needle in notes

"""Shared pieces of the Kubernetes delivery checks: paths, render results, manifest walkers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "anomaly-platform"
CI_VALUES = CHART / "ci"
SCHEMAS = ROOT / "helm" / "schemas"
RELEASE = "rel"
NAMESPACE = "anomaly"
SCHEMA_LOCATION = str(SCHEMAS / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
SKIPPED_KINDS = "Kafka,KafkaNodePool"
"""Strimzi kinds: no CRD schema can be had from the package registries (helm/schemas/README.md)."""

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    """Paths of the pinned binaries."""

    helm: Path
    kubeconform: Path


@dataclass(frozen=True)
class Result:
    """Outcome of one `helm template` run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def docs(self) -> list[Manifest]:
        """The rendered manifests (empty documents dropped)."""
        return [d for d in yaml.safe_load_all(self.stdout) if d]


Render = Callable[..., Result]
"""render(values=("gpu-values.yaml",), sets=("a.b=c",)) -> Result (the `render` fixture)."""


def pod_specs(doc: Manifest) -> list[tuple[str, Manifest]]:
    """(where, pod spec) of every pod a manifest defines, whatever its kind."""
    kind, spec = doc["kind"], doc.get("spec", {})
    where = f"{kind}/{doc['metadata']['name']}"
    if kind in {"Deployment", "StatefulSet"}:
        return [(where, spec["template"]["spec"])]
    if kind == "InferenceService":
        # The predictor inlines the PodSpec fields (containers, volumes, securityContext...).
        return [(where, spec["predictor"])]
    if kind == "RayService":
        cluster = spec["rayClusterConfig"]
        specs = [(f"{where}/head", cluster["headGroupSpec"]["template"]["spec"])]
        for group in cluster.get("workerGroupSpecs", []):
            specs.append((f"{where}/{group['groupName']}", group["template"]["spec"]))
        return specs
    return []


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def platform_yaml(docs: list[Manifest]) -> dict[str, Any]:
    """The platform configuration the chart's ConfigMap holds."""
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    data = yaml.safe_load(cm["data"]["platform.yaml"])
    assert isinstance(data, dict)
    return data

#!/usr/bin/env python3
"""Generate the kubeconform JSON schemas in this folder from sources on the package registries.

kubeconform normally downloads its schemas from GitHub; the machines this project runs on
reach only the package registries, so the schemas live here, produced by this script:

* Core Kubernetes kinds: the OpenAPI v3 documents that the Go module `k8s.io/kubernetes`
  ships under `api/openapi-spec/v3/` (`go mod download`).
* CRDs: the CustomResourceDefinition YAML shipped inside the operators' Go modules
  (KServe, KubeRay, KEDA, prometheus-operator), converted the way kubeconform's
  `openapi2jsonschema.py` does it.
* Strimzi (`Kafka`, `KafkaNodePool`) is Java; its Maven artifacts (`io.strimzi:api`) carry
  the model classes but not the CRD YAML, and the generator module is not published, so
  those two kinds have no schema here and the checks pass `-skip Kafka,KafkaNodePool`.

Each schema is written as `{kind}-{group}-{version}.json` (core: `{kind}-{version}.json`),
the file naming kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}` template expects, in
"strict" form: every object that lists its properties refuses unknown ones (as `kubectl`
does), except where the API itself preserves unknown fields. The files are self-contained
(referenced definitions are copied into `definitions`) and carry no descriptions, to stay
small. Run it again after changing a version below:

    .venv/bin/python helm/schemas/generate.py
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

KUBERNETES = "k8s.io/kubernetes@v1.37.2"
"""Kubernetes release whose OpenAPI documents give the core schemas."""

# (kind, apiVersion, OpenAPI v3 document, definition name)
CORE_KINDS: list[tuple[str, str, str, str]] = [
    ("ConfigMap", "v1", "api__v1_openapi.json", "io.k8s.api.core.v1.ConfigMap"),
    ("Secret", "v1", "api__v1_openapi.json", "io.k8s.api.core.v1.Secret"),
    ("Service", "v1", "api__v1_openapi.json", "io.k8s.api.core.v1.Service"),
    ("ServiceAccount", "v1", "api__v1_openapi.json", "io.k8s.api.core.v1.ServiceAccount"),
    (
        "PersistentVolumeClaim",
        "v1",
        "api__v1_openapi.json",
        "io.k8s.api.core.v1.PersistentVolumeClaim",
    ),
    ("Deployment", "apps/v1", "apis__apps__v1_openapi.json", "io.k8s.api.apps.v1.Deployment"),
    ("StatefulSet", "apps/v1", "apis__apps__v1_openapi.json", "io.k8s.api.apps.v1.StatefulSet"),
    (
        "HorizontalPodAutoscaler",
        "autoscaling/v2",
        "apis__autoscaling__v2_openapi.json",
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    ),
    (
        "PodDisruptionBudget",
        "policy/v1",
        "apis__policy__v1_openapi.json",
        "io.k8s.api.policy.v1.PodDisruptionBudget",
    ),
    (
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "apis__networking.k8s.io__v1_openapi.json",
        "io.k8s.api.networking.v1.NetworkPolicy",
    ),
]

# (Go module@version, CRD file inside it, served version to convert)
CRDS: list[tuple[str, str, str]] = [
    (
        "github.com/kserve/kserve@v0.20.0",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "v1beta1",
    ),
    (
        "github.com/ray-project/kuberay/ray-operator@v1.6.2",
        "config/crd/bases/ray.io_rayservices.yaml",
        "v1",
    ),
    (
        "github.com/kedacore/keda/v2@v2.21.0",
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "v1alpha1",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator@v0.89.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "v1",
    ),
]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Schema keywords whose value is a map of names to schemas (names are not keywords).
_SCHEMA_MAPS = ("properties", "definitions", "patternProperties")
# Keywords dropped from the output: prose and Kubernetes-only annotations a JSON Schema
# validator ignores anyway.
_DROPPED = {"description", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key"}


def module_dir(module: str) -> Path:
    """Download a Go module through the module proxy (cached by Go) and return its folder."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        check=False,
        capture_output=True,
        text=True,
        cwd=HERE,
    ).stdout
    info = json.loads(out or "{}")
    if "Error" in info or "Dir" not in info:
        raise SystemExit(f"go mod download {module}: {info.get('Error', 'no module folder')}")
    return Path(info["Dir"])


def file_name(kind: str, api_version: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` for a kind and apiVersion."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind}{suffix}".lower() + ".json"


def clean(node: Any) -> Any:
    """Drop descriptions, turn OpenAPI-only constructs into JSON Schema (draft 4)."""
    if isinstance(node, list):
        return [clean(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: clean(sub) for name, sub in value.items()}
        elif key in _DROPPED or (key == "format" and value == "int-or-string"):
            continue
        elif key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        else:
            out[key] = clean(value)
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def strict(node: Any) -> Any:
    """Refuse unknown properties wherever an object lists its properties (kubectl's rule)."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                strict(sub)
        else:
            strict(value)
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


def closure(schemas: dict[str, Any], root: str) -> dict[str, Any]:
    """The definitions reachable from `root` (itself included), cleaned."""
    seen: dict[str, Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = clean(schemas[name])
        todo.extend(_refs(seen[name]))
    return seen


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append(value.rsplit("/", 1)[-1])
            else:
                found.extend(_refs(value))
    elif isinstance(node, list):
        for x in node:
            found.extend(_refs(x))
    return found


def pin_kind(schema: dict[str, Any], kind: str, api_version: str) -> None:
    """Make `apiVersion` and `kind` accept only this kind (openapi2jsonschema --kubernetes)."""
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [api_version]}
    props["kind"] = {"type": "string", "enum": [kind]}


def core_schema(spec_dir: Path, kind: str, api_version: str, doc: str, name: str) -> Any:
    schemas = json.loads((spec_dir / doc).read_text())["components"]["schemas"]
    defs = closure(schemas, name)
    root = copy.deepcopy(defs.pop(name))
    root.pop("x-kubernetes-group-version-kind", None)
    pin_kind(root, kind, api_version)
    root["definitions"] = dict(sorted(defs.items()))
    return strict(root)


def crd_schema(crd_file: Path, version: str, object_meta: dict[str, Any]) -> tuple[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    kind = crd["spec"]["names"]["kind"]
    api_version = f"{crd['spec']['group']}/{version}"
    served = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not served:
        raise SystemExit(f"{crd_file}: no version {version}")
    root = clean(served[0]["schema"]["openAPIV3Schema"])
    pin_kind(root, kind, api_version)
    # A CRD's own schema says only `metadata: {type: object}`; check it as ObjectMeta.
    root["properties"]["metadata"] = {"$ref": f"#/definitions/{OBJECT_META}"}
    root["definitions"] = object_meta
    return file_name(kind, api_version), share_repeats(strict(root))


_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_ONES = ("items", "additionalProperties", "not")
_SHARE_MIN_CHARS = 800
"""Repeated sub-schemas at least this large (as JSON) become one shared definition."""


def _subschemas(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas directly inside a schema (not `enum`, `default` or extension values)."""
    subs: list[dict[str, Any]] = []
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            subs.extend(v for v in value.values() if isinstance(v, dict))
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            subs.extend(v for v in value if isinstance(v, dict))
        elif key in _SCHEMA_ONES and isinstance(value, dict):
            subs.append(value)
        elif key == "items" and isinstance(value, list):
            subs.extend(v for v in value if isinstance(v, dict))
    return subs


def share_repeats(root: dict[str, Any]) -> dict[str, Any]:
    """Replace sub-schemas that occur several times with a `$ref` to one definition.

    CRDs such as InferenceService embed the same PodSpec/Container schema many times over;
    sharing them shrinks the file by an order of magnitude without changing what it accepts.
    """
    counts: dict[str, int] = {}

    def count(node: dict[str, Any]) -> None:
        for sub in _subschemas(node):
            key = json.dumps(sub, sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
            count(sub)

    count(root)
    shared: dict[str, Any] = {}
    names: dict[str, str] = {}

    def replace(node: dict[str, Any]) -> None:
        for key, value in list(node.items()):
            if key in _SCHEMA_MAPS and isinstance(value, dict) and key != "definitions":
                for name, sub in value.items():
                    value[name] = swap(sub)
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                node[key] = [swap(v) for v in value]
            elif key in _SCHEMA_ONES and isinstance(value, dict):
                node[key] = swap(value)

    def swap(sub: Any) -> Any:
        if not isinstance(sub, dict):
            return sub
        key = json.dumps(sub, sort_keys=True)
        if counts.get(key, 0) > 1 and len(key) >= _SHARE_MIN_CHARS:
            if key not in names:
                names[key] = f"shared.{hashlib.sha256(key.encode()).hexdigest()[:12]}"
                body = json.loads(key)
                replace(body)
                shared[names[key]] = body
            return {"$ref": f"#/definitions/{names[key]}"}
        replace(sub)
        return sub

    replace(root)
    root.setdefault("definitions", {}).update(sorted(shared.items()))
    return root


def write(path: Path, schema: Any) -> None:
    # Compact but line-broken, so that a version bump gives a readable diff.
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{path.name}: {path.stat().st_size // 1024} KiB", file=sys.stderr)


def main() -> None:
    for old in HERE.glob("*.json"):
        old.unlink()
    spec_dir = module_dir(KUBERNETES) / "api" / "openapi-spec" / "v3"
    for kind, api_version, doc, name in CORE_KINDS:
        write(
            HERE / file_name(kind, api_version), core_schema(spec_dir, kind, api_version, doc, name)
        )
    meta_schemas = json.loads((spec_dir / "api__v1_openapi.json").read_text())["components"][
        "schemas"
    ]
    object_meta = dict(sorted(closure(meta_schemas, OBJECT_META).items()))
    for module, rel, version in CRDS:
        name, schema = crd_schema(module_dir(module) / rel, version, copy.deepcopy(object_meta))
        write(HERE / name, schema)


if __name__ == "__main__":
    main()

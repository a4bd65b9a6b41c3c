"""Invariants of the rendered manifests: hardened containers, configuration from the ConfigMap,
the PagerDuty key only through a Secret, and what each serving mode renders."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from tests.k8s.chart import Manifest, Render, by_kind, platform_yaml, pod_specs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ALL_VALUES = [
    "default-values.yaml",
    "gpu-values.yaml",
    "no-kserve-values.yaml",
    "ray-values.yaml",
    "extras-values.yaml",
]
MODELS = ("isolation_forest", "xgboost", "transformer")
CONFIG_DIR = "/etc/anomaly"


def docs_of(render: Render, values: str, sets: tuple[str, ...] = ()) -> list[Manifest]:
    result = render([values], sets)
    assert result.returncode == 0, result.stderr
    return result.docs


def containers(docs: list[Manifest]) -> list[tuple[str, Manifest, Manifest]]:
    """(where, pod spec, container) of every container of every pod the chart defines."""
    found = []
    for doc in docs:
        for where, pod in pod_specs(doc):
            for c in pod.get("initContainers", []) + pod["containers"]:
                found.append((f"{where}/{c['name']}", pod, c))
    return found


def effective(pod: Manifest, container: Manifest, key: str) -> Any:
    """A security setting as Kubernetes resolves it: container first, then pod."""
    csc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
    return csc.get(key, psc.get(key))


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_container_is_hardened_probed_and_sized(render: Render, values: str) -> None:
    found = containers(docs_of(render, values))
    assert found
    for where, pod, c in found:
        csc = c.get("securityContext", {})
        assert effective(pod, c, "runAsNonRoot") is True, where
        assert csc.get("readOnlyRootFilesystem") is True, where
        assert csc.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in csc.get("capabilities", {}).get("drop", []), where
        assert effective(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}, where
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, where
        assert "livenessProbe" in c, where
        assert "readinessProbe" in c, where
        requests = c.get("resources", {}).get("requests", {})
        limits = c.get("resources", {}).get("limits", {})
        assert {"cpu", "memory"} <= set(requests), where
        assert "memory" in limits, where
        # A read-only root needs somewhere to write.
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), where


@pytest.mark.parametrize("values", ALL_VALUES)
def test_configuration_is_mounted_from_the_configmap(render: Render, values: str) -> None:
    docs = docs_of(render, values)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    for where, pod, c in containers(docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == CONFIG_DIR]
        assert len(mounts) == 1, where
        # A directory mount (no subPath): only then does the kubelet update the file in place,
        # which the router's hot reload of feature flags relies on.
        assert "subPath" not in mounts[0], where
        assert mounts[0].get("readOnly") is True, where
        volume = volumes[mounts[0]["name"]]
        assert volume["configMap"]["name"] == cm["metadata"]["name"], where
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["ANOMALY_CONFIG"]["value"] == f"{CONFIG_DIR}/platform.yaml", where


def test_router_and_ingest_use_the_config_file_argument(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml")
    for name in ("router", "ingest"):
        (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(name)]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["args"][0] == name
        assert c["args"][-2:] == ["--config", f"{CONFIG_DIR}/platform.yaml"]


SENTINEL = "R0UTING-KEY-SENTINEL-5f1c"


@pytest.mark.parametrize("values", ["default-values.yaml", "extras-values.yaml"])
def test_routing_key_only_reaches_the_router_through_a_secret(render: Render, values: str) -> None:
    result = render([values], (f"alerts.pagerduty.routingKey={SENTINEL}",))
    assert result.returncode == 0, result.stderr
    assert SENTINEL not in result.stdout, "the routing key appears in clear in a manifest"
    encoded = base64.b64encode(SENTINEL.encode()).decode()
    holders = [d for d in result.docs if encoded in yaml.safe_dump(d)]
    assert [d["kind"] for d in holders] == ["Secret"]
    secret_name = holders[0]["metadata"]["name"]

    refs = 0
    for where, _pod, c in containers(result.docs):
        for e in c.get("env", []):
            if e["name"] == "ANOMALY_ALERTS__ROUTING_KEY":
                assert "value" not in e, where
                ref = e["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret_name, where
                assert not ref.get("optional", False), where
                refs += 1
    assert refs >= 1
    assert "routing_key" not in yaml.safe_dump(platform_yaml(result.docs))


def test_existing_secret_is_referenced_and_no_secret_is_rendered(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml", ("alerts.pagerduty.existingSecret=pd-key",))
    assert by_kind(docs, "Secret") == []
    (router,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("router")]
    env = {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ANOMALY_ALERTS__ROUTING_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "pd-key"


def test_without_a_key_the_secret_reference_is_optional(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml")
    assert by_kind(docs, "Secret") == []
    (router,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("router")]
    env = {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ANOMALY_ALERTS__ROUTING_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True


def predictor_container(isvc: Manifest) -> Manifest:
    (c,) = isvc["spec"]["predictor"]["containers"]
    container: Manifest = c
    return container


def test_gpu_values_put_gpu_limits_on_the_predictors(render: Render) -> None:
    docs = docs_of(render, "gpu-values.yaml")
    isvcs = {
        d["metadata"]["labels"]["anomaly.platform/model"]: d
        for d in by_kind(docs, "InferenceService")
    }
    assert set(isvcs) == set(MODELS)
    for model in ("xgboost", "transformer"):
        c = predictor_container(isvcs[model])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1, model
        assert "anomaly-serving-cuda" in c["image"], model
        predictor = isvcs[model]["spec"]["predictor"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in predictor.get("tolerations", []))
    cpu = predictor_container(isvcs["isolation_forest"])
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "anomaly-serving-cuda" not in cpu["image"]
    assert isvcs["transformer"]["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_default_values_render_inference_services(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml")
    isvcs = by_kind(docs, "InferenceService")
    assert len(isvcs) == 3
    for isvc in isvcs:
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        predictor = isvc["spec"]["predictor"]
        assert predictor["minReplicas"] >= 1
        assert predictor["maxReplicas"] >= predictor["minReplicas"]
        env = {e["name"]: e.get("value") for e in predictor_container(isvc)["env"]}
        assert env["STORAGE_URI"].startswith("pvc://")
    endpoints = platform_yaml(docs)["serving"]["endpoints"]
    assert set(endpoints) == set(MODELS)
    for model, ep in endpoints.items():
        assert ep["protocol"] == "rest"
        assert "-predictor." in ep["rest_url"], model


def test_no_kserve_values_render_deployments_and_services(render: Render) -> None:
    docs = docs_of(render, "no-kserve-values.yaml")
    assert by_kind(docs, "InferenceService") == []
    assert by_kind(docs, "RayService") == []

    def serving(kind: str) -> dict[str, Manifest]:
        return {
            d["metadata"]["labels"]["anomaly.platform/model"]: d
            for d in by_kind(docs, kind)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "serving"
        }

    deployments, services, hpas = (
        serving("Deployment"),
        serving("Service"),
        serving("HorizontalPodAutoscaler"),
    )
    assert set(deployments) == set(services) == set(hpas) == set(MODELS)
    endpoints = platform_yaml(docs)["serving"]["endpoints"]
    for model in MODELS:
        name = services[model]["metadata"]["name"]
        ports = {p["name"]: p["port"] for p in services[model]["spec"]["ports"]}
        ep = endpoints[model]
        assert ep["rest_url"] == f"http://{name}.anomaly.svc.cluster.local:{ports['http']}"
        assert ep["grpc_target"] == f"{name}.anomaly.svc.cluster.local:{ports['grpc']}"
        assert ep["protocol"] == "grpc"
        volumes = {v["name"]: v for v in deployments[model]["spec"]["template"]["spec"]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "anomaly-model-store"


def test_ray_values_render_one_rayservice_with_an_app_per_model(render: Render) -> None:
    docs = docs_of(render, "ray-values.yaml")
    assert by_kind(docs, "InferenceService") == []
    (ray,) = by_kind(docs, "RayService")
    assert ray["apiVersion"] == "ray.io/v1"
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    apps = {a["name"]: a for a in serve["applications"]}
    assert set(apps) == set(MODELS)
    assert {a["import_path"] for a in apps.values()} == {"services.serving.ray_app:app"}
    endpoints = platform_yaml(docs)["serving"]["endpoints"]
    for model in MODELS:
        assert endpoints[model]["rest_url"].endswith(apps[model]["route_prefix"])


def test_a_disabled_model_gets_no_server_and_is_switched_off(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml", ("serving.models.transformer.enabled=false",))
    assert len(by_kind(docs, "InferenceService")) == 2
    cfg = platform_yaml(docs)
    assert "transformer" not in cfg["serving"]["endpoints"]
    assert cfg["flags"]["models"]["transformer"]["enabled"] is False


def router_pod_template(docs: list[Manifest]) -> Manifest:
    (router,) = [
        d
        for d in docs
        if d["metadata"]["name"].endswith("-router") and "template" in d.get("spec", {})
    ]
    template: Manifest = router["spec"]["template"]
    return template


def test_flag_changes_do_not_restart_the_router(render: Render) -> None:
    """Flags are hot-reloaded: flipping one changes the ConfigMap, not the pod template."""
    before = docs_of(render, "default-values.yaml")
    after = docs_of(render, "default-values.yaml", ("config.flags.models.xgboost.enabled=false",))
    assert platform_yaml(after)["flags"]["models"]["xgboost"]["enabled"] is False
    assert router_pod_template(before) == router_pod_template(after)
    # ...while a setting read once at start does roll the pods.
    changed = docs_of(render, "default-values.yaml", ("config.ensemble.strategy=cascade",))
    assert router_pod_template(before) != router_pod_template(changed)


def test_extras_render_keda_strimzi_monitoring_and_durable_outbox(render: Render) -> None:
    docs = docs_of(render, "extras-values.yaml")
    kinds = {d["kind"] for d in docs}
    assert {"ScaledObject", "Kafka", "KafkaNodePool", "ServiceMonitor", "StatefulSet"} <= kinds
    (kafka,) = by_kind(docs, "Kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    (scaled,) = by_kind(docs, "ScaledObject")
    assert (
        scaled["spec"]["maxReplicaCount"]
        <= platform_yaml(docs)["kafka"]["topics"]["events"]["partitions"]
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert (
        trigger["metadata"]["bootstrapServers"] == platform_yaml(docs)["kafka"]["bootstrap_servers"]
    )
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "outbox"
    dashboards = [
        d
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    panels = yaml.safe_load(dashboards[0]["data"]["anomaly-platform.json"])["panels"]
    titles = " ".join(p["title"].lower() for p in panels)
    for needle in ("events per second", "consumer lag", "p50", "p99", "alerts by type", "degraded"):
        assert needle in titles


def test_standard_labels_and_fullname_override(render: Render) -> None:
    docs = docs_of(render, "default-values.yaml", ("fullnameOverride=anom",))
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "anomaly-platform"
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert d["metadata"]["name"].startswith("anom")


def test_kserve_generated_names_fit_a_dns_label(render: Render) -> None:
    """KServe/Knative append "-predictor-00001" to the InferenceService name."""
    longest = "a" * 30
    docs = docs_of(render, "gpu-values.yaml", (f"fullnameOverride={longest}",))
    for isvc in by_kind(docs, "InferenceService"):
        assert len(isvc["metadata"]["name"] + "-predictor-00001") <= 63
    too_long = render(["default-values.yaml"], (f"fullnameOverride={longest}b",))
    assert too_long.returncode != 0
    assert "fullnameOverride" in too_long.stderr


def _router_env(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    (workload,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith("-router")]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def test_a_stateful_router_is_a_static_group_member_named_after_its_pod(render: Render) -> None:
    """Stable pod names (the StatefulSet of a durable outbox) make static membership safe:
    a rolled replica gets its partitions back at once. A Deployment's pods get new names, so
    it stays dynamic, and the value turns it off."""
    member = _router_env(docs_of(render, "extras-values.yaml"), "StatefulSet")
    assert member["ANOMALY_ROUTER__GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    dynamic = _router_env(docs_of(render, "default-values.yaml"), "Deployment")
    assert "ANOMALY_ROUTER__GROUP_INSTANCE_ID" not in dynamic
    off = docs_of(render, "extras-values.yaml", ("router.staticMembership=false",))
    assert "ANOMALY_ROUTER__GROUP_INSTANCE_ID" not in _router_env(off, "StatefulSet")

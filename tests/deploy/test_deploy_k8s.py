"""Kubernetes manifests: rendered with kubectl kustomize, validated against Kubernetes 1.30."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService", "Cluster"}

# The fields of the Prometheus Operator CRDs that verdict relies on (monitoring.coreos.com/v1).
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "properties": {
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "alert": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": {"type": "string"},
        "keep_firing_for": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string"},
                            "limit": {"type": "integer"},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    },
}


_QUANTITY = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"}
# The fields of CloudNativePG's Cluster CRD (postgresql.cnpg.io/v1, operator 1.25+) that the
# cloudnative-pg component uses, with the CRD's types and enums.
CNPG_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "postgresql.cnpg.io/v1"},
        "kind": {"const": "Cluster"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["instances", "storage"],
            "properties": {
                "instances": {"type": "integer", "minimum": 1},
                "imageName": {"type": "string"},
                "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
                "storage": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {"size": _QUANTITY, "storageClass": {"type": "string"}},
                    "additionalProperties": False,
                },
                "bootstrap": {
                    "type": "object",
                    "properties": {
                        "initdb": {
                            "type": "object",
                            "properties": {
                                "database": {"type": "string"},
                                "owner": {"type": "string"},
                            },
                            "additionalProperties": False,
                        }
                    },
                    "additionalProperties": False,
                },
                "postgresql": {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "synchronous": {
                            "type": "object",
                            "required": ["method", "number"],
                            "properties": {
                                "method": {"enum": ["any", "first"]},
                                "number": {"type": "integer", "minimum": 1},
                                "dataDurability": {"enum": ["required", "preferred"]},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
                "resources": {
                    "type": "object",
                    "properties": {
                        "requests": {"type": "object", "additionalProperties": _QUANTITY},
                        "limits": {"type": "object", "additionalProperties": _QUANTITY},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    },
}


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    assert exe, (
        "kubectl is not installed: the Kubernetes tests render the manifests with "
        "`kubectl kustomize` (install kubectl >= 1.27, https://kubernetes.io/docs/tasks/tools/)"
    )
    return exe


def render(path: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize <path>` renders."""
    done = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def cpu() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "cpu")


@pytest.fixture(scope="module")
def gpu() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "gpu")


@pytest.fixture(scope="module")
def single() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "single")


@pytest.fixture(scope="module")
def kserve() -> list[dict[str, Any]]:
    return render(K8S / "kserve")


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one server container per pod"
    return dict(containers[0])


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap")["data"])


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_validate_against_kubernetes(overlay: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ConfigMap", "ServiceMonitor", "PrometheusRule",
    } <= kinds  # fmt: skip
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no upstream schema: checked by the CRD tests below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert one(docs, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one(docs, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_validation_rejects_a_broken_manifest(cpu: list[dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(one(cpu, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    rule = yaml.safe_load(yaml.safe_dump(one(cpu, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)


def test_probes_resources_and_graceful_shutdown(cpu: list[dict[str, Any]]) -> None:
    deployment = one(cpu, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(cpu)
    config = _config(cpu)
    port = container["ports"][0]
    assert port["name"] == "http" and str(port["containerPort"]) == config["VERDICT_PORT"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/v2/health/ready", probe
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # One server process per pod.
    assert "--workers" not in container.get("args", []) + container.get("command", [])
    # CPU request matches the ONNX Runtime intra-op threads.
    threads = int(config["VERDICT_INTRA_OP_THREADS"])
    assert _cpu_cores(container["resources"]["requests"]["cpu"]) == threads
    assert "memory" in container["resources"]["limits"]
    # preStop delay + drain fit inside the termination grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    delay = float(pre_stop[1])
    drain = float(config["VERDICT_DRAIN_SECONDS"])
    assert delay > 0 and pod["terminationGracePeriodSeconds"] > delay + drain
    # Models come from a volume.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[config["VERDICT_MODEL_REPOSITORY"]]["name"] == "models"
    assert any(v["name"] == "models" for v in pod["volumes"])
    # Replicas share the prediction id key and the store URL (with its password) through
    # Secrets, never the ConfigMap.
    env = {e["name"]: e for e in container["env"]}
    for name in ("VERDICT_PREDICTION_ID_KEY", "VERDICT_FEEDBACK_URL"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
        assert name not in config
    assert not {"VERDICT_FEEDBACK_DB", "VERDICT_FEEDBACK_URL"} & set(config)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_hpa_pdb_and_monitor_select_the_pods(cpu: list[dict[str, Any]]) -> None:
    labels = one(cpu, "Deployment")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    service = one(cpu, "Service")
    assert selects(service["spec"]["selector"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert selects(one(cpu, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    hpa = one(cpu, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(cpu, "Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB's minAvailable 1, drains stay safe
    assert "replicas" not in one(cpu, "Deployment")["spec"], "the HPA owns the replica count"
    monitor = one(cpu, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    svc_labels = service["metadata"]["labels"]
    assert all(
        svc_labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The rules and the dashboard select job="verdict": the Service name becomes the job label.
    assert service["metadata"]["name"] == "verdict"


def test_prometheusrule_holds_exactly_the_prometheus_rule_files(cpu: list[dict[str, Any]]) -> None:
    rule = one(cpu, "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    groups = []
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    assert groups, "no rule groups in deploy/prometheus/rules"
    assert rule["spec"]["groups"] == groups


def test_committed_prometheusrule_is_regenerated_identically(tmp_path: Path) -> None:
    committed = K8S / "base" / "prometheusrule.yaml"
    out = tmp_path / "prometheusrule.yaml"
    script = ROOT / "scripts" / "gen_prometheusrule.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == committed.read_text(), (
        "deploy/k8s/base/prometheusrule.yaml is stale: run python scripts/gen_prometheusrule.py"
    )


def test_gpu_overlay_asks_for_a_gpu_and_the_gpu_image(
    cpu: list[dict[str, Any]], gpu: list[dict[str, Any]]
) -> None:
    container = _container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    assert "nvidia.com/gpu" not in _container(cpu)["resources"]["limits"]
    assert container["image"] != _container(cpu)["image"]
    assert re.search(r"gpu", container["image"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VERDICT_PROVIDERS"].startswith("CUDAExecutionProvider")
    tolerations = one(gpu, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    # The probes and the drain are the base's.
    assert container["readinessProbe"] == _container(cpu)["readinessProbe"]


def test_kserve_serving_runtime_contract(
    kserve: list[dict[str, Any]], cpu: list[dict[str, Any]]
) -> None:
    runtime = one(kserve, "ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    formats = spec["supportedModelFormats"]
    assert any(f["name"] == "onnx" and f.get("autoSelect") for f in formats)
    assert "v2" in spec["protocolVersions"]
    assert spec.get("multiModel") is False
    containers = spec["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert container["name"] == "kserve-container"
    assert container["image"].split(":")[0] == _container(cpu)["image"].split(":")[0]
    env = {e["name"]: e["value"] for e in container["env"]}
    # KServe's storage initializer puts the model files in /mnt/models.
    assert env["VERDICT_MODEL_REPOSITORY"] == "/mnt/models"
    port = container["ports"][0]["containerPort"]
    assert str(port) == env["VERDICT_PORT"] and env["VERDICT_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Validate the container itself as a Kubernetes container (via a throwaway Pod).
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime-check"},
        "spec": {"containers": containers},
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_kserve_inference_service_uses_the_runtime(kserve: list[dict[str, Any]]) -> None:
    runtime = one(kserve, "ServingRuntime")
    isvc = one(kserve, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^(s3|gs|pvc|https?|hf|oci)://", model["storageUri"])
    # Named after the model (the one the load test drives), so /v2/models/<name>/infer matches.
    sample = json.loads((ROOT / "deploy" / "locust" / "breast_cancer_sample.json").read_text())
    assert isvc["metadata"]["name"] == sample["model"]


def test_rule_generator_refuses_duplicate_groups_and_reports_staleness(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "gen_prometheusrule.py"
    rules = tmp_path / "rules"
    rules.mkdir()
    group = {"groups": [{"name": "g", "rules": [{"record": "a:b:c", "expr": "up"}]}]}
    (rules / "a.yml").write_text(yaml.safe_dump(group))
    out = tmp_path / "prometheusrule.yaml"
    base = [sys.executable, str(script), "--rules-dir", str(rules), "--out", str(out)]
    assert subprocess.run(base, capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*base, "--check"], capture_output=True, timeout=60).returncode == 0
    out.write_text(out.read_text() + "# hand edit\n")
    assert subprocess.run([*base, "--check"], capture_output=True, timeout=60).returncode == 1
    (rules / "b.yml").write_text(yaml.safe_dump(group))
    done = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "also in" in done.stderr


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_fleet_shares_a_cloudnative_pg_store(
    overlay: str, request: pytest.FixtureRequest
) -> None:
    docs = request.getfixturevalue(overlay)
    cluster = one(docs, "Cluster")
    jsonschema.validate(cluster, CNPG_CLUSTER_SCHEMA)
    spec = cluster["spec"]
    owner = spec["bootstrap"]["initdb"]["owner"]
    # The URL is the one the operator writes for the application owner: <cluster>-app, uri.
    env = {e["name"]: e for e in _container(docs)["env"]}
    ref = env["VERDICT_FEEDBACK_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (f"{cluster['metadata']['name']}-app", "uri")
    assert owner == spec["bootstrap"]["initdb"]["database"]
    # An acknowledged label survives a failover: commits wait for a standby.
    assert spec["instances"] >= 2 and spec["postgresql"]["synchronous"]["number"] >= 1
    # Every pod the HPA may run keeps its pool of connections, within max_connections.
    from service.monitoring.postgres_connection import POOL_SIZE

    pods = one(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    assert pods * POOL_SIZE < int(spec["postgresql"]["parameters"]["max_connections"])


def test_cluster_schema_rejects_what_the_crd_rejects(cpu: list[dict[str, Any]]) -> None:
    cluster = one(cpu, "Cluster")
    for path, value in [
        (("spec", "instances"), "three"),
        (("spec", "storage", "size"), "ten gigs"),
        (("spec", "postgresql", "synchronous", "method"), "all"),
        (("spec", "replicas"), 3),  # no such field
    ]:
        broken = yaml.safe_load(yaml.safe_dump(cluster))
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, CNPG_CLUSTER_SCHEMA)


def test_the_single_pod_variant_stays_one_pod_on_a_sqlite_volume(
    single: list[dict[str, Any]],
) -> None:
    for doc in single:
        assert doc["kind"] not in CRD_KINDS - {"ServiceMonitor", "PrometheusRule"}
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {d["kind"] for d in single}
    assert "HorizontalPodAutoscaler" not in kinds, "a second pod would have a store of its own"
    assert "PodDisruptionBudget" not in kinds  # minAvailable 1 of 1 would block every drain
    deployment = one(single, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # the volume is ReadWriteOnce
    assert (
        "single replica only" in deployment["metadata"]["annotations"]["verdict.dev/feedback-store"]
    )
    container = _container(single)
    env = {e["name"]: e for e in container["env"]}
    url = env["VERDICT_FEEDBACK_URL"]["value"]
    assert url.startswith("sqlite:////")
    folder = str(Path(url.removeprefix("sqlite:///")).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[folder]]["persistentVolumeClaim"]["claimName"]
    assert one(single, "PersistentVolumeClaim")["metadata"]["name"] == claim
    assert "secretKeyRef" in env["VERDICT_PREDICTION_ID_KEY"]["valueFrom"]

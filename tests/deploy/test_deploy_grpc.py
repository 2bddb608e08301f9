"""The gRPC port in every deployment: the images, compose, the Kubernetes Service and
Deployment, and KServe's ServingRuntime (which declares the gRPC protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_docker import _env, final_stage
from tests.deploy.test_deploy_k8s import K8S, one, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_the_images_expose_the_grpc_port(name: str) -> None:
    final = final_stage(ROOT / "deploy" / name)
    env = _env(final)
    exposed = " ".join(args for op, args in final if op == "EXPOSE").split()
    assert env["VERDICT_GRPC_PORT"] in exposed and env["VERDICT_PORT"] in exposed


def test_compose_publishes_the_grpc_port() -> None:
    verdict = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["verdict"]
    port = str(verdict["environment"]["VERDICT_GRPC_PORT"])
    assert f"{port}:{port}" in verdict["ports"]


def test_the_service_routes_grpc_to_the_pods_grpc_port() -> None:
    docs: list[dict[str, Any]] = render(K8S / "overlays" / "cpu")
    config = one(docs, "ConfigMap")["data"]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p for p in container["ports"]}
    assert str(ports["grpc"]["containerPort"]) == config["VERDICT_GRPC_PORT"]
    service = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert service["grpc"]["targetPort"] == "grpc" and service["grpc"]["appProtocol"] == "grpc"


def test_the_kserve_runtime_declares_grpc() -> None:
    runtime = one(render(K8S / "kserve"), "ServingRuntime")
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["VERDICT_GRPC_PORT"] == "8081"  # KServe's gRPC port (h2c)

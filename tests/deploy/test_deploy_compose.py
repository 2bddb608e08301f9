"""docker-compose.yml: valid for docker-compose 1.29 and the compose spec; what it names exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# Bind-mount sources that are outputs, created on first run rather than shipped.
GENERATED = ("var/",)


def _tool(name: str, hint: str) -> str:
    here = Path(sys.executable).parent / name
    exe = str(here) if here.exists() else shutil.which(name)
    assert exe, f"{name} is not installed: {hint}"
    return exe


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def test_docker_compose_1_29_accepts_it() -> None:
    exe = _tool("docker-compose", "apt-get install docker-compose (make sysdeps)")
    done = subprocess.run(
        [exe, "-f", str(COMPOSE), "--profile", "load", "config", "-q"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_spec_schema_accepts_it() -> None:
    exe = _tool("check-jsonschema", "pip install check-jsonschema (it is in the dev extra)")
    cmd = [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_spec_schema_rejects_a_broken_file(tmp_path: Path) -> None:
    exe = _tool("check-jsonschema", "pip install check-jsonschema (it is in the dev extra)")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  verdict:\n    ports: 8000\n    stop_grace_period: [1]\n")
    cmd = [exe, "--builtin-schema", "vendor.compose-spec", str(broken)]
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0


def test_verdict_service(compose: dict[str, Any]) -> None:
    verdict = compose["services"]["verdict"]
    assert (ROOT / verdict["build"]["context"] / verdict["build"]["dockerfile"]).is_file()
    env = {k: str(v) for k, v in verdict["environment"].items()}
    port = env["VERDICT_PORT"]
    assert f"8000:{port}" in verdict["ports"]
    # Health is the image's HEALTHCHECK, which follows VERDICT_PORT; a copy here would not.
    assert "healthcheck" not in verdict
    dockerfile = (ROOT / verdict["build"]["context"] / verdict["build"]["dockerfile"]).read_text()
    health = " ".join(dockerfile.split("\nHEALTHCHECK", 1)[1].splitlines()[:2])  # CMD continues
    assert "VERDICT_PORT" in health and "/v2/health/ready" in health
    # Graceful stop: SIGTERM, then more time than the server's drain before SIGKILL.
    assert verdict.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert _seconds(verdict["stop_grace_period"]) > float(env["VERDICT_DRAIN_SECONDS"])
    # Models from the host; the feedback store is the postgres service (next test).
    mounts = {m.split(":")[1]: m.split(":")[0] for m in verdict["volumes"]}
    assert mounts[env["VERDICT_MODEL_REPOSITORY"]] == "./models"
    assert env["VERDICT_PREDICTION_ID_KEY"].startswith("${VERDICT_PREDICTION_ID_KEY")


def test_the_feedback_store_is_a_postgres_service_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    verdict, postgres = services["verdict"], services["postgres"]
    assert postgres["image"].startswith("postgres:")
    env = postgres["environment"]
    url = verdict["environment"]["VERDICT_FEEDBACK_URL"]
    user, database = env["POSTGRES_USER"], env["POSTGRES_DB"]
    assert url == (f"postgresql://{user}:{env['POSTGRES_PASSWORD']}@postgres:5432/{database}"), (
        "verdict's URL names the service, its user, password and database"
    )
    # The data outlives the container; verdict starts once the database takes connections.
    mounts = {m.split(":")[1]: m.split(":")[0] for m in postgres["volumes"]}
    assert mounts["/var/lib/postgresql/data"] in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert verdict["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in postgres, "the database is for the services of this file only"


def test_the_fleet_file_runs_three_replicas_behind_one_port(tmp_path: Path) -> None:
    exe = _tool("docker-compose", "apt-get install docker-compose (make sysdeps)")
    fleet_file = ROOT / "deploy" / "compose" / "fleet.yml"
    done = subprocess.run(
        [exe, "-f", str(COMPOSE), "-f", str(fleet_file), "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    replicas = ["verdict", "verdict-2", "verdict-3"]
    first = services["verdict"]
    for name in replicas[1:]:
        # The same server, settings and store as replica 1; only replica 1 publishes a port.
        assert services[name]["image"] == first["image"]
        assert services[name]["environment"] == first["environment"], name
        assert services[name]["volumes"] == first["volumes"]
        assert "ports" not in services[name]
    nginx = (ROOT / "deploy" / "compose" / "nginx-fleet.conf").read_text()
    port = first["environment"]["VERDICT_PORT"]
    upstream = re.findall(r"^\s*server ([\w-]+):(\d+)", nginx, re.MULTILINE)
    assert sorted(upstream) == sorted((name, port) for name in replicas)
    assert services["lb"]["ports"] == [{"published": 8080, "target": 8080}]
    # Prometheus scrapes each replica, not the balancer: the counters add up in Grafana.
    prom_mount = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    prom = yaml.safe_load(Path(prom_mount.split(":")[0]).read_text())
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "verdict"]
    assert job["static_configs"] == [{"targets": [f"{n}:{port}" for n in replicas]}]
    for shipped_job in shipped["scrape_configs"]:
        if shipped_job["job_name"] == "verdict":
            shipped_job["static_configs"] = job["static_configs"]
    assert prom == shipped, "the fleet's prometheus.yml differs in more than the targets"


def test_prometheus_grafana_and_locust(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prom = services["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    genv = grafana["environment"]
    assert genv["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert genv["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    locust = services["locust"]
    assert locust["profiles"] == ["load"]
    assert "--headless" in locust["command"] and "--run-time" in locust["command"]
    host = locust["command"][locust["command"].index("--host") + 1]
    port = services["verdict"]["environment"]["VERDICT_PORT"]
    assert host == f"http://verdict:{port}"
    assert locust["depends_on"]["verdict"]["condition"] == "service_healthy"
    # Every other service runs by default; only locust and train sit behind profiles.
    assert {n for n, s in services.items() if "profiles" not in s} == {
        "verdict", "postgres", "prometheus", "grafana",
    }  # fmt: skip


def test_paths_commands_and_ports_it_names_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./") and not source[2:].startswith(GENERATED):
                assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"
            if name == "locust" and source == "./deploy/locust":
                locustfile = service["command"][service["command"].index("-f") + 1]
                inside = Path(locustfile).relative_to(target)
                assert (ROOT / source / inside).is_file(), locustfile
    # Prometheus scrapes the verdict service on the port it listens on.
    prometheus_yml = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    port = compose["services"]["verdict"]["environment"]["VERDICT_PORT"]
    assert f"verdict:{port}" in prometheus_yml
    # The image's entrypoint (verdict-serve) is the service package's __main__.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["verdict-serve"].split(":")
    main_py = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert main_py.is_file() and f"def {func}(" in main_py.read_text()


def test_healthcheck_and_probe_routes_are_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """The routes the health checks, probes, Prometheus and Locust call are the app's routes."""
    monkeypatch.setenv("VERDICT_MODEL_REPOSITORY", str(ROOT / "models"))
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    # Without the lifespan nothing is loaded; routing alone answers: a path the app serves
    # with other methods gives 405, an unknown path 404.
    client = TestClient(create_app())
    assert client.request("PATCH", "/no/such/route").status_code == 404
    for route in ("/v2/health/ready", "/v2/health/live", "/metrics", "/predict", "/feedback"):
        status = client.request("PATCH", route).status_code
        assert status == 405, f"{route} is not a route of the service (PATCH gave {status})"


def _verdict_env_names() -> dict[str, set[str]]:
    """Every VERDICT_* name the deployment files hand to the server, by file."""
    found: dict[str, set[str]] = {}
    compose = yaml.safe_load(COMPOSE.read_text())
    found["docker-compose.yml"] = {
        k for k in compose["services"]["verdict"]["environment"] if k.startswith("VERDICT_")
    }
    files = [
        *(ROOT / "deploy").glob("Dockerfile*"),
        *(ROOT / "deploy" / "k8s").rglob("*.yaml"),
    ]
    for path in files:
        if path.name == "prometheusrule.yaml":
            continue
        names = set(re.findall(r"\b(VERDICT_[A-Z0-9_]+)\b", path.read_text()))
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def test_every_verdict_setting_the_deployment_sets_exists() -> None:
    from service.settings import Settings

    known = {f"VERDICT_{name.upper()}" for name in Settings.model_fields}
    by_file = _verdict_env_names()
    assert len(by_file) >= 4
    for where, names in by_file.items():
        assert names <= known, f"{where}: unknown settings {sorted(names - known)}"


def test_prometheus_and_grafana_configs_match_the_compose_mounts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus_yml = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    rules_target = next(
        v.split(":")[1] for v in services["prometheus"]["volumes"] if "prometheus/rules" in v
    )
    assert any(str(f).startswith(rules_target + "/") for f in prometheus_yml["rule_files"])
    assert list((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    # Grafana: a Prometheus datasource reaching the compose service, dashboards where mounted.
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    urls = []
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            if source.get("type") == "prometheus":
                urls.append(source["url"])
    assert "http://prometheus:9090" in [u.rstrip("/") for u in urls], urls
    dash_target = next(
        v.split(":")[1] for v in services["grafana"]["volumes"] if "grafana/dashboards" in v
    )
    paths = []
    for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
        for provider in yaml.safe_load(path.read_text()).get("providers", []):
            paths.append(provider["options"]["path"])
    assert paths and all(p.rstrip("/").startswith(dash_target) for p in paths), paths
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_target + "/")
    assert (ROOT / "deploy" / "grafana" / "dashboards" / Path(home).name).is_file()

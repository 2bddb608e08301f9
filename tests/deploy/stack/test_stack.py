"""docker-compose.yml for real: images built here, the stack up on podman, checked from the host.

`make compose-test` runs these (scripts/compose-test.sh); tests/deploy/stack/harness.py says
what stands in for which public image. The tests share one stack and run in file order: the
load run stops the stack when Locust exits (`--exit-code-from`), the last test stops verdict.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PredictClient
from tests.deploy.stack.engine import PROJECT_LABEL, image_exists, image_size_bytes, podman
from tests.deploy.stack.harness import GPU, PYTHON_IMAGE, Stack, host_port

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = json.loads((ROOT / "deploy" / "locust" / "breast_cancer_sample.json").read_text())
MODEL = SAMPLE["model"]
ROWS: list[list[float]] = SAMPLE["rows"]
LABELS: list[str] = SAMPLE["labels"]
SERVING_USER = "10001:0"


def _post(url: str, body: object, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def _feedback(url: str, items: list[dict[str, str]]) -> list[str]:
    status, body = _post(f"{url}/feedback", {"items": items})
    assert status == 200, body
    return [str(item["result"]) for item in body["results"]]


def _verdict_image(stack: Stack) -> str:
    return str(stack.config["services"]["verdict"]["image"])


def test_serving_image_runs_as_non_root_and_holds_no_torch(stack: Stack) -> None:
    info = stack.container("verdict")
    assert info["Config"]["User"] == SERVING_USER
    probe = (
        "import os, importlib.util as u; "
        "print(os.getuid(), os.getgid(), u.find_spec('torch') is None, "
        "u.find_spec('onnxruntime') is not None)"
    )
    out = podman("exec", info["Id"], "python", "-c", probe).stdout.split()
    assert out == ["10001", "0", "True", "True"], out
    # Nothing of torch's on disk either (a broken install would not import but still weigh).
    files = (
        "import pathlib, site; print([str(p) for d in site.getsitepackages() "
        "for p in pathlib.Path(d).glob('torch*')])"
    )
    assert podman("exec", info["Id"], "python", "-c", files).stdout.strip() == "[]"


def test_image_size_is_the_one_docs_deploy_md_reports(stack: Stack) -> None:
    image = image_size_bytes(_verdict_image(stack)) / 1e6
    base = image_size_bytes(PYTHON_IMAGE) / 1e6
    ours = image - base
    docs = (ROOT / "docs" / "deploy.md").read_text()
    found = re.search(r"verdict's own layers: \*\*(\d+) MB\*\*", docs)
    assert found, "docs/deploy.md does not report the image size"
    reported = int(found[1])
    assert abs(reported - ours) <= 0.15 * ours, (
        f"docs/deploy.md says verdict's layers are {reported} MB; measured {ours:.0f} MB "
        f"(image {image:.0f} MB on a {base:.0f} MB Python base): update it"
    )


def test_verdict_is_healthy_by_its_images_own_healthcheck(stack: Stack) -> None:
    info = stack.container("verdict")
    image = json.loads(podman("image", "inspect", _verdict_image(stack)).stdout)[0]
    image_check = image.get("Healthcheck") or image["Config"]["Healthcheck"]  # podman, Docker
    assert info["Config"]["Healthcheck"]["Test"] == image_check["Test"]
    assert "/v2/health/ready" in " ".join(info["Config"]["Healthcheck"]["Test"])
    health = info["State"]["Health"]
    assert health["Status"] == "healthy", health
    assert any(entry["ExitCode"] == 0 for entry in health["Log"]), health


def test_predict_and_v2_infer_answer_from_the_host_through_the_published_port(
    stack: Stack,
) -> None:
    published = stack.config["services"]["verdict"]["ports"]
    assert published == [
        f"127.0.0.1:{host_port(stack.config, 'verdict', port)}:{port}" for port in (8000, 8001)
    ]
    url = stack.url("verdict", 8000)

    n = 50
    status, body = _post(f"{url}/predict", {"model": MODEL, "instances": ROWS[:n]})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == n
    assert all(p["prediction_id"] and p["label"] in {"benign", "malignant"} for p in predictions)
    # The bundled model is the one serving: it gets nearly all of these right.
    right = sum(p["label"] == label for p, label in zip(predictions, LABELS, strict=False))
    assert right >= 0.9 * n, f"{right} of {n} right"

    rows = ROWS[:3]
    infer = {
        "inputs": [
            {"name": "input", "shape": [3, len(rows[0])], "datatype": "FP32",
             "data": [v for row in rows for v in row]}
        ]
    }  # fmt: skip
    status, body = _post(f"{url}/v2/models/{MODEL}/infer", infer)
    assert status == 200, body
    output = body["outputs"][0]
    assert output["shape"] == [3, 2]
    for i in range(3):
        assert abs(sum(output["data"][2 * i : 2 * i + 2]) - 1.0) < 1e-4


def test_grpc_answers_from_the_host_through_the_published_port(stack: Stack) -> None:
    import numpy as np
    import tritonclient.grpc as triton

    address = f"127.0.0.1:{host_port(stack.config, 'verdict', 8001)}"
    with triton.InferenceServerClient(address) as client:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        x = np.asarray(ROWS[:3], dtype=np.float32)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        probabilities = client.infer(MODEL, [tensor]).as_numpy("probabilities")
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_labels_survive_compose_restart_recreate_and_down_up(stack: Stack) -> None:
    url = stack.url("verdict", 8000)
    status, body = _post(f"{url}/predict", {"model": MODEL, "instances": ROWS[:5]})
    assert status == 200, body
    items = [
        {"prediction_id": p["prediction_id"], "label": LABELS[i]}
        for i, p in enumerate(body["predictions"])
    ]
    assert _feedback(url, items) == ["accepted"] * 5
    first = stack.container("verdict")["Id"]

    stack.compose("restart", "verdict")
    assert stack.container("verdict")["Id"] == first, "restart made a new container"
    stack.wait_http(f"{url}/v2/health/ready")
    # Kept: the labels (duplicates now) and the generated id key (the ids still verify).
    assert _feedback(url, items) == ["duplicate"] * 5

    stack.compose("up", "-d", "--force-recreate", "--no-deps", "verdict")
    second = stack.container("verdict")["Id"]
    assert second != first, "the container was not recreated"
    stack.wait_http(f"{url}/v2/health/ready")
    assert _feedback(url, items) == ["duplicate"] * 5

    # compose carries a recreated container's anonymous volumes over; `down` does not, so
    # only the database's named volume can keep the labels (and the generated key) through
    # `down` and `up`.
    stack.compose("down")
    stack.compose("up", "-d")
    assert stack.container("verdict")["Id"] not in {first, second}
    stack.wait_http(f"{url}/v2/health/ready")
    assert _feedback(url, items) == ["duplicate"] * 5
    stack.wait_healthy("verdict")


def test_prometheus_scrapes_verdict_and_evaluates_the_recording_rules(stack: Stack) -> None:
    prom = stack.url("prometheus", 9090)
    stack.wait_http(f"{prom}/-/ready")
    # Fresh outcome counts for the recording rules (the restarts above reset the counters).
    url = stack.url("verdict", 8000)
    status, body = _post(f"{url}/predict", {"model": MODEL, "instances": ROWS[10:30]})
    assert status == 200, body
    items = [
        {"prediction_id": p["prediction_id"], "label": LABELS[10 + i]}
        for i, p in enumerate(body["predictions"])
    ]
    assert _feedback(url, items) == ["accepted"] * 20

    def query(expr: str) -> list[dict[str, Any]]:
        answer = _get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    # Two scrapes and an evaluation (15 s each in deploy/prometheus/prometheus.yml), and more.
    deadline = time.monotonic() + 120
    missing = ["not polled yet"]
    while missing and time.monotonic() < deadline:
        time.sleep(3)
        targets = _get(f"{prom}/api/v1/targets?state=active")["data"]["activeTargets"]
        verdict = [t for t in targets if t["labels"]["job"] == "verdict"]
        missing = []
        if not (verdict and verdict[0]["health"] == "up"):
            missing.append(f"target verdict up (have {verdict})")
        if not query('count({job="verdict", __name__=~"verdict_.+"}) > 20'):
            missing.append("verdict_ series")
        if not query(f'model_outcome:verdict_outcomes:increase5m{{model="{MODEL}"}}'):
            missing.append("model_outcome:verdict_outcomes:increase5m (recorded)")
    assert not missing, missing
    assert verdict[0]["scrapeUrl"] == "http://verdict:8000/metrics"

    # The recording rules ran without error, on the configuration series verdict exports.
    groups = _get(f"{prom}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    target = query(f'model:verdict_fnr_target:ratio{{model="{MODEL}"}}')
    manifest = json.loads((ROOT / "models" / MODEL / "1" / "manifest.json").read_text())
    assert target and float(target[0]["value"][1]) == manifest["objectives"]["max_fnr"]


@pytest.mark.timeout(600)
def test_the_load_profile_passes_its_slo_gate_against_the_stack(stack: Stack) -> None:
    # As docker-compose.yml's header gives it for CI; it stops the stack when Locust exits.
    done = stack.compose(
        "--profile", "load", "up", "--exit-code-from", "locust", check=False, timeout=480
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert "SLO gate passed" in out, out[-5000:]
    command = stack.config["services"]["locust"]["command"]
    assert "--users" in command and "--run-time" in command
    stack.compose("up", "-d")
    stack.wait_healthy("verdict")


def test_compose_stop_drains_in_flight_requests_within_the_grace_period(stack: Stack) -> None:
    port = host_port(stack.config, "verdict", 8000)
    grace_s = _seconds(stack.config["services"]["verdict"]["stop_grace_period"])
    rows = 200
    body = json.dumps(
        {"model": MODEL, "instances": [ROWS[i % len(ROWS)] for i in range(rows)]}
    ).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(body) // 2
    # In flight by construction: each head and half its body sent before the stop, the rest
    # only once the drain has begun (new connections refused).
    uploads = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
    for sock in uploads:
        sock.sendall(head + body[:half])
    # And whole requests still being answered, perhaps, when SIGTERM arrives.
    big = json.dumps({"model": MODEL, "instances": [ROWS[i % len(ROWS)] for i in range(500)]})
    clients = [PredictClient(port, big.encode(), timeout_s=60) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        assert client.sent.wait(30)
    # Barrier: once a later request is answered, the server has accepted every earlier
    # connection and read its request head.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=30):
        pass

    stopped: dict[str, Any] = {}

    def stop() -> None:
        started = time.monotonic()
        stopped["done"] = stack.compose("stop", "verdict", check=False, timeout=grace_s + 60)
        stopped["seconds"] = time.monotonic() - started

    stopper = threading.Thread(target=stop)
    stopper.start()
    refused_after = None
    started = time.monotonic()
    while time.monotonic() - started < grace_s and refused_after is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.05)
        except OSError:  # refused (or reset) once the listener is closed
            refused_after = time.monotonic() - started
    assert refused_after is not None, "verdict kept accepting connections after compose stop"

    answers = []
    for sock in uploads:
        sock.sendall(body[half:])
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        payload = resp.read()
        sock.close()
        answers.append((resp.status, len(json.loads(payload).get("predictions", []))))
    for client in clients:
        client.join(timeout=60)
    stopper.join(timeout=grace_s + 90)

    assert answers == [(200, rows)] * len(uploads), answers
    problems = [(c.status, c.rows, repr(c.error)) for c in clients if c.status != 200]
    assert not problems and all(c.rows == 500 for c in clients), problems
    assert stopped["done"].returncode == 0, stopped["done"].stderr
    assert stopped["seconds"] < grace_s, f"compose stop took {stopped['seconds']:.1f} s"
    state = stack.container("verdict")["State"]
    # 137 would be the SIGKILL that follows an overrun grace period.
    assert not state["Running"] and state["ExitCode"] == 0, state


def test_gpu_image_is_built_on_the_same_path_and_serves_on_the_cpu_here(stack: Stack) -> None:
    image = GPU.name()
    assert image_exists(image), f"{image} is missing: `python -m tests.deploy.stack.harness build`"
    cid = podman(
        "run", "-d", "--network", "none", "--no-healthcheck", "--label", PROJECT_LABEL, image
    ).stdout.strip()  # fmt: skip
    try:
        info = json.loads(podman("inspect", cid).stdout)[0]
        assert info["Config"]["User"] == SERVING_USER
        probe = (
            "import importlib.util as u, json, time, urllib.request as r\n"
            "import onnxruntime as ort\n"
            "for _ in range(120):\n"
            "    try:\n"
            "        r.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=1); break\n"
            "    except OSError: time.sleep(0.5)\n"
            "m = r.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode()\n"
            "print(json.dumps({'providers': ort.get_available_providers(),\n"
            "    'torch': u.find_spec('torch') is not None,\n"
            "    'info': [l for l in m.splitlines() if l.startswith('verdict_model_info')]}))\n"
        )
        out = json.loads(podman("exec", cid, "python", "-c", probe, timeout=120).stdout)
        assert "CUDAExecutionProvider" in out["providers"], out
        assert not out["torch"]
        # No GPU here: CUDA is offered but cannot start, so the models serve on the CPU.
        assert out["info"] and all(
            'provider="CPUExecutionProvider"' in line for line in out["info"]
        )
    finally:
        podman("rm", "-f", "-v", "-t", "5", cid, check=False)

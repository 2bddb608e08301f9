"""Locust load test for verdict: /predict, v2 infer, /feedback and (with --grpc-target) gRPC
ModelInfer, with an SLO gate at quit.

Run: locust -f deploy/locust/locustfile.py --host http://127.0.0.1:8000 --headless \
         --users 20 --spawn-rate 5 --run-time 1m
The host may also come from LOCUST_HOST. At quit the run fails (exit code 1) when any request
failed or when the p99 response time exceeds --slo-p99-ms (env VERDICT_SLO_P99_MS).
Rows and true labels come from breast_cancer_sample.json (scripts/gen_locust_sample.py draws
them from scikit-learn's breast cancer data; the service image carries no scikit-learn).
gRPC calls need grpcio and this repository's `service` package on the path (`make load` runs
them; without --grpc-target the gRPC task makes no request).
"""

from __future__ import annotations

import json
import logging
import random
import time
from array import array
from collections import deque
from functools import cache
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

SAMPLE_FILE = Path(__file__).resolve().parent / "breast_cancer_sample.json"
DEFAULT_SLO_P99_MS = 250.0
BATCH_ROWS = 16
FEEDBACK_SHARE = 0.5  # share of single-row predictions whose true label is sent back
FEEDBACK_BATCH = 20
PENDING_MAX = 1000
FEEDBACK_OK = {"accepted", "duplicate"}

log = logging.getLogger("verdict.locust")


@cache
def _load_sample() -> dict[str, Any]:
    with SAMPLE_FILE.open() as f:
        sample: dict[str, Any] = json.load(f)
    if len(sample["rows"]) != len(sample["labels"]) or not sample["rows"]:
        raise ValueError(f"{SAMPLE_FILE}: rows and labels must be non-empty and equally long")
    return sample


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--slo-p99-ms",
        type=float,
        env_var="VERDICT_SLO_P99_MS",
        default=DEFAULT_SLO_P99_MS,
        help="Fail the run when the p99 response time over all requests exceeds this (ms).",
    )
    parser.add_argument(
        "--api-key",
        type=str,
        env_var="VERDICT_LOAD_API_KEY",
        default="",
        help="Bearer key sent with every request when the service has VERDICT_API_KEYS set.",
    )
    parser.add_argument(
        "--grpc-target",
        type=str,
        env_var="VERDICT_LOAD_GRPC_TARGET",
        default="",
        help="host:port of verdict's gRPC port; when set, users also call ModelInfer over gRPC.",
    )


def slo_verdict(
    num_requests: int, num_failures: int, p99_ms: float, slo_p99_ms: float
) -> list[str]:
    """The reasons a run breaks its SLO (empty when it holds)."""
    reasons = []
    if num_requests == 0:
        reasons.append("no requests were made")
    if num_failures > 0:
        ratio = num_failures / max(num_requests, 1)
        reasons.append(f"failure ratio {ratio:.4f} > 0 ({num_failures} of {num_requests} failed)")
    if p99_ms > slo_p99_ms:
        reasons.append(f"p99 {p99_ms:.1f} ms > bound {slo_p99_ms:.1f} ms")
    return reasons


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_kwargs: Any) -> None:
    """At quit, read the final totals and fail the process when the SLO is broken."""
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) judges the aggregated figures
    total = environment.stats.total
    bound = float(getattr(environment.parsed_options, "slo_p99_ms", DEFAULT_SLO_P99_MS))
    p99 = float(total.get_response_time_percentile(0.99) or 0.0)
    reasons = slo_verdict(total.num_requests, total.num_failures, p99, bound)
    summary = (
        f"requests={total.num_requests} failures={total.num_failures} "
        f"p99_ms={p99:.1f} slo_p99_ms={bound:.1f}"
    )
    if reasons:
        log.error("SLO gate FAILED: %s (%s)", "; ".join(reasons), summary)
        environment.process_exit_code = 1
    else:
        log.info("SLO gate passed (%s)", summary)
        environment.process_exit_code = 0


class VerdictUser(FastHttpUser):
    """A client mixing predictions of one row, batches, v2 infer calls and late labels."""

    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        sample = _load_sample()
        self.model: str = sample["model"]
        self.rows: list[list[float]] = sample["rows"]
        self.labels: list[str] = sample["labels"]
        self.pending: deque[dict[str, str]] = deque(maxlen=PENDING_MAX)
        key = getattr(self.environment.parsed_options, "api_key", "") or ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        target = getattr(self.environment.parsed_options, "grpc_target", "") or ""
        self.grpc = _grpc_stub(target) if target else None

    def _predict(self, indices: list[int], name: str) -> list[dict[str, Any]]:
        body = {"model": self.model, "instances": [self.rows[i] for i in indices]}
        with self.client.post(
            "/predict", json=body, name=name, headers=self.headers, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return []
            try:
                predictions = resp.json()["predictions"]
            except (ValueError, KeyError, TypeError) as exc:
                resp.failure(f"bad /predict body: {exc!r}")
                return []
            if len(predictions) != len(indices) or not all(
                p.get("prediction_id") and p.get("label") for p in predictions
            ):
                resp.failure("a prediction lacks its id or label, or rows went missing")
                return []
            return list(predictions)

    @task(6)
    def predict_one(self) -> None:
        i = random.randrange(len(self.rows))
        predictions = self._predict([i], "/predict [1 row]")
        if predictions and random.random() < FEEDBACK_SHARE:
            self.pending.append(
                {"prediction_id": predictions[0]["prediction_id"], "label": self.labels[i]}
            )

    @task(2)
    def predict_batch(self) -> None:
        self._predict(
            random.sample(range(len(self.rows)), BATCH_ROWS), f"/predict [{BATCH_ROWS} rows]"
        )

    @task(2)
    def infer_v2(self) -> None:
        n = random.randint(1, 8)
        rows = [self.rows[random.randrange(len(self.rows))] for _ in range(n)]
        width = len(rows[0])
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [n, width],
                    "datatype": "FP32",
                    "data": [v for row in rows for v in row],
                }
            ]
        }
        with self.client.post(
            f"/v2/models/{self.model}/infer",
            json=body,
            name="/v2/models/[m]/infer",
            headers=self.headers,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                outputs = resp.json()["outputs"]
                shape = outputs[0]["shape"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                resp.failure(f"bad infer body: {exc!r}")
                return
            if shape[0] != n:
                resp.failure(f"infer answered {shape[0]} rows for {n}")

    @task(2)
    def infer_grpc(self) -> None:
        if self.grpc is None:
            return
        import grpc

        from service.grpc.generated import inference_pb2 as pb

        n = random.randint(1, 8)
        rows = [self.rows[random.randrange(len(self.rows))] for _ in range(n)]
        request = pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name="input", datatype="FP32", shape=[n, len(rows[0])])
        values = array("f", [v for row in rows for v in row])
        if array("H", [1]).tobytes() != b"\x01\x00":  # the wire is little-endian
            values.byteswap()
        request.raw_input_contents.append(values.tobytes())
        metadata = tuple((k.lower(), v) for k, v in self.headers.items())
        start = time.perf_counter()
        error: Exception | None = None
        size = 0
        try:
            answer = self.grpc.ModelInfer(request, metadata=metadata, timeout=10)
            size = answer.ByteSize()
            if answer.outputs[0].shape[0] != n:
                error = ValueError(f"ModelInfer answered {answer.outputs[0].shape[0]} rows for {n}")
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="ModelInfer",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            exception=error,
            context={},
        )

    @task(1)
    def feedback(self) -> None:
        if not self.pending:
            return
        items = [self.pending.popleft() for _ in range(min(FEEDBACK_BATCH, len(self.pending)))]
        with self.client.post(
            "/feedback",
            json={"items": items},
            name="/feedback",
            headers=self.headers,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                results = _feedback_results(resp.json())
            except (ValueError, TypeError) as exc:
                resp.failure(f"bad /feedback body: {exc!r}")
                return
            if len(results) != len(items):
                resp.failure(f"/feedback answered {len(results)} items for {len(items)}")
            elif bad := [r for r in results if r not in FEEDBACK_OK]:
                resp.failure(f"/feedback refused labels: {sorted(set(bad))}")


@cache
def _gevent_grpc() -> None:
    """Make grpcio cooperate with gevent (Locust's users are greenlets); once, before any
    channel exists."""
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()


def _grpc_stub(target: str) -> Any:
    """A stub of verdict's GRPCInferenceService on its own channel."""
    _gevent_grpc()
    import grpc

    from service.grpc.generated import inference_pb2_grpc as pb_grpc

    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))


def _feedback_results(body: Any) -> list[str]:
    """The per-item result words of a /feedback answer."""
    items = body.get("results") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ValueError("no results list in the /feedback answer")
    return [str(item.get("result")) if isinstance(item, dict) else str(item) for item in items]

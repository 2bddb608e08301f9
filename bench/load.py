"""Request bodies for each protocol, and wrk runs that report one JSON summary."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
MARKER = "BENCH_JSON "
WRK_TIMEOUT = "5s"
# Seconds a wrk run may take past its -d before it is killed.
WRK_GRACE_S = 30

PROTOCOLS = ("json", "v2-json", "v2-binary")


class LoadError(RuntimeError):
    """wrk failed or printed no summary."""


@dataclass(frozen=True)
class Body:
    """One request ready for wrk: path, body bytes and headers."""

    path: str
    data: bytes
    content_type: str
    header_length: int | None = None

    def headers(self) -> dict[str, str]:
        """The headers wrk sends with this body."""
        headers = {"Content-Type": self.content_type}
        if self.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(self.header_length)
        return headers


def build_body(
    protocol: str,
    model: str,
    rows: list[list[float]],
    row_shape: list[int],
    input_name: str = "input",
    output_name: str = "probabilities",
    nested: bool = False,
) -> Body:
    """Build the request for `rows` of `model` in `protocol`.

    `row_shape` is the model input shape without the batch axis; `nested` sends each
    /predict instance in that shape instead of flat.
    """
    x = np.asarray(rows, dtype=np.float32).reshape([len(rows), *row_shape])
    if protocol == "json":
        instances = x.tolist() if nested else x.reshape(len(rows), -1).tolist()
        data = json.dumps({"model": model, "instances": instances}).encode()
        return Body("/predict", data, "application/json")
    shape = list(x.shape)
    path = f"/v2/models/{model}/infer"
    if protocol == "v2-json":
        request = {
            "inputs": [
                {"name": input_name, "shape": shape, "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        return Body(path, json.dumps(request).encode(), "application/json")
    if protocol == "v2-binary":
        raw = x.astype("<f4").tobytes()
        header = {
            "inputs": [
                {
                    "name": input_name,
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
        header_bytes = json.dumps(header).encode()
        return Body(path, header_bytes + raw, "application/octet-stream", len(header_bytes))
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def run_wrk(
    port: int,
    body: Body,
    body_file: Path,
    connections: int,
    seconds: int,
    cpus: str,
    batch: bool = False,
) -> dict[str, float]:
    """Run wrk (one thread, pinned to `cpus`) for `seconds`; return its JSON summary, plus
    `loadgen_cpu_s`: the CPU time wrk used (user + system).

    `batch` runs wrk under SCHED_BATCH (`chrt --batch 0`): its wake-ups then never preempt
    the task running on its CPU, which matters where that task is the server under test.
    """
    body_file.write_bytes(body.data)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        *(["chrt", "--batch", "0"] if batch else []),
        "taskset",
        "-c",
        cpus,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}{body.path}",
        "--",
        str(body_file),
        body.content_type,
        "" if body.header_length is None else str(body.header_length),
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk ran past {seconds + WRK_GRACE_S} s: {' '.join(command)}") from exc
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            summary: dict[str, float] = json.loads(line[len(MARKER) :])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            summary["loadgen_cpu_s"] = (after.ru_utime - before.ru_utime) + (
                after.ru_stime - before.ru_stime
            )
            return summary
    raise LoadError(
        f"wrk printed no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


# -- gRPC: h2load (nghttp2-client) sends one framed ModelInferRequest over HTTP/2 ----------

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
H2LOAD_GRACE_S = 30


def build_grpc_message(
    model: str, rows: list[list[float]], row_shape: list[int], input_name: str
) -> bytes:
    """A ModelInferRequest with raw FP32 input (as tritonclient.grpc sends it), serialised."""
    from service.grpc.generated import inference_pb2 as pb

    x = np.asarray(rows, dtype=np.float32).reshape([len(rows), *row_shape])
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """The message as gRPC puts it on the wire: no compression, 4-byte length, the bytes."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def run_h2load(
    port: int,
    message: bytes,
    body_file: Path,
    connections: int,
    streams: int,
    seconds: int,
    cpus: str,
    log_file: Path,
    batch: bool = False,
) -> dict[str, float]:
    """Run h2load (one thread, pinned to `cpus`) posting one gRPC ModelInfer request over
    `connections` HTTP/2 connections with `streams` in flight on each, for `seconds`;
    return a summary shaped like wrk's (requests, duration, percentiles from the
    per-request log, errors: HTTP failures only; gRPC statuses are counted from the
    server's metrics by the caller), plus `loadgen_cpu_s`."""
    body_file.write_bytes(grpc_frame(message))
    log_file.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        *(["chrt", "--batch", "0"] if batch else []),
        "taskset",
        "-c",
        cpus,
        "h2load",
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        f"-D{seconds}",
        "-d",
        str(body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"--log-file={log_file}",
        f"http://127.0.0.1:{port}{GRPC_PATH}",
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + H2LOAD_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load ran too long: {' '.join(command)}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not log_file.exists():
        raise LoadError(f"h2load failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    statuses, latencies_us = [], []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            statuses.append(int(parts[1]))
            latencies_us.append(float(parts[2]))
    if not latencies_us:
        raise LoadError(f"h2load logged no request:\n{done.stdout}")
    lat = np.asarray(latencies_us)
    failed = sum(1 for s in statuses if s != 200)
    return {
        "requests": float(len(lat)),
        "duration_us": seconds * 1e6,
        "p50_us": float(np.percentile(lat, 50)),
        "p90_us": float(np.percentile(lat, 90)),
        "p99_us": float(np.percentile(lat, 99)),
        "latency_max_us": float(lat.max()),
        "errors": float(failed),
        "errors_status": float(failed),
        "loadgen_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }

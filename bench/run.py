"""The benchmark driver: wrk against verdict and the obvious server, plus the in-process ceiling.

`python -m bench.run` (full, about 11 minutes), `--quick` (about 2), `--smoke` (seconds;
used by the tests, never rewrites docs/benchmarks.md). `--baseline DIR` also measures the
checkout in DIR (the server kinds `before` and `before-2w`) in every round, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.load import (
    GRPC_PATH,
    Body,
    LoadError,
    build_body,
    build_grpc_message,
    run_h2load,
    run_wrk,
)
from bench.payloads import PAYLOAD_DIR, load_rows
from bench.plan import TARGETS, Case, Plan, make_plan
from bench.report import Record
from bench.servers import Server, ServerError, free_port, http_request, start_server

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _latest_version(repository: Path, model: str) -> Path:
    folder = repository / model
    versions = (
        [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    )
    if not versions:
        raise SystemExit(f"bench: no versions of model {model!r} under {folder}")
    return max(versions, key=lambda p: int(p.name))


def _tensors(version_dir: Path) -> tuple[str, list[int], str]:
    """The model's input name, input shape without the batch axis, and output name."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    shape = [int(d) for d in manifest["input"]["shape"][1:]]
    return manifest["input"]["name"], shape, manifest["output"]["name"]


def _payload_rows(model: str, payload_dir: Path, count: int) -> list[list[float]]:
    rows = load_rows(model, payload_dir)
    return [rows[i % len(rows)] for i in range(count)]


def _git(folder: Path, *args: str) -> str | None:
    """`git -C folder args` stripped output; None where git is missing or fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_info(folder: Path) -> dict[str, Any]:
    """Which code `folder` holds: its path and, in a git checkout, HEAD and whether tracked
    files differ from it (None for both outside git)."""
    commit = _git(folder, "rev-parse", "HEAD")
    status = _git(folder, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "path": str(folder),
        "commit": commit,
        "dirty": None if status is None else bool(status),
    }


class Bench:
    """One benchmark run: servers, bodies, wrk runs and the records they produce."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        # The checkout measured as `before` / `before-2w` (None: no baseline, as before).
        self.baseline: Path | None = args.baseline.resolve() if args.baseline else None
        self.repository: Path = args.model_repository.resolve()
        self.payload_dir: Path = args.payload_dir
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            print("bench: warning: fewer than 2 CPUs; server and wrk share one", file=sys.stderr)
            cpus = cpus * 2
        self.server_cpu = str(cpus[0])
        self.wrk_cpu = str(cpus[1])
        self.both_cpus = f"{cpus[0]},{cpus[1]}"
        self.live: list[Server] = []
        self.records: list[dict[str, Any]] = []
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.versions = {c.model: _latest_version(self.repository, c.model) for c in plan.cases}
        self.bodies: dict[tuple[str, str, int, str], Body] = {}
        self.work = Path(tempfile.mkdtemp(prefix="verdict-bench-"))

    # -- servers -------------------------------------------------------------------------

    def _env(self, extra: dict[str, str], root: Path = ROOT) -> dict[str, str]:
        # Inherited VERDICT_* settings (API keys, other batching) would change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        env.update(extra)
        return env

    def _checkout(self, kind: str) -> Path:
        """The folder a server kind runs from: the baseline for `before*`, else this one."""
        if kind.startswith("before"):
            assert self.baseline is not None, kind
            return self.baseline
        return ROOT

    def _obvious_command(self, host_port: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.obvious_server",
            *host_port,
            "--model-repository",
            str(self.repository),
        ]

    def _verdict_extra(self, port: int, workers: int, grpc_port: int) -> dict[str, str]:
        """Defaults except the model repository and the ports; the feedback store and the
        metrics multiprocess folder go to this run's scratch folder, away from the repo's
        var/."""
        extra = {
            "VERDICT_MODEL_REPOSITORY": str(self.repository),
            # The deprecated spelling on purpose: a --baseline checkout from before
            # VERDICT_FEEDBACK_URL reads only this one, and this checkout still accepts it.
            "VERDICT_FEEDBACK_DB": str(self.work / f"feedback-{port}.sqlite3"),
            "VERDICT_GRPC_PORT": str(grpc_port),
        }
        if workers > 1:
            extra["PROMETHEUS_MULTIPROC_DIR"] = str(self.work / f"prometheus-{port}")
        extra.update(dict(kv.split("=", 1) for kv in self.args.verdict_env))
        return extra

    def start(self, kind: str) -> Server:
        """Start `verdict`, `verdict-2w`, `obvious`, `before` or `before-2w`; wait until ready.

        `before*` is verdict's command, settings and environment run from the baseline
        checkout (cwd and PYTHONPATH), so that its own `service` package is imported.
        """
        port = free_port()
        grpc_port = 0
        host_port = ["--host", "127.0.0.1", "--port", str(port)]
        checkout = self._checkout(kind)
        if kind == "obvious":
            command = self._obvious_command(host_port)
            ready, cpus, workers, extra = "/health", self.server_cpu, 1, {}
        else:
            workers = 2 if kind.endswith("-2w") else 1
            command = [sys.executable, "-m", self.args.verdict_module, *host_port]
            if workers > 1:
                command += ["--workers", str(workers)]
            cpus = self.both_cpus if workers > 1 else self.server_cpu
            ready = "/v2/health/ready"
            grpc_port = free_port()
            extra = self._verdict_extra(port, workers, grpc_port)
        env = self._env(extra, checkout)
        server = start_server(kind, command, ready, port, cpus, workers, env, checkout, self.work)
        server.grpc_port = grpc_port
        self.live.append(server)
        print(f"  started {kind} on :{port} (cpus {cpus}) in {server.startup_s:.3f} s", flush=True)
        return server

    def stop(self, server: Server) -> None:
        """Stop `server` and forget it."""
        server.stop()
        if server in self.live:
            self.live.remove(server)

    def stop_all(self) -> None:
        """Stop every server still running (on success, error or Ctrl-C)."""
        for server in list(self.live):
            self.stop(server)

    # -- bodies --------------------------------------------------------------------------

    def body(self, server: Server, case: Case) -> Body:
        """The request body for `case`, checked once against `server` (200 expected).

        Image models' /predict rows go flat first; if verdict refuses them, nested in the
        input shape (the obvious server takes flat rows).
        """
        key = (server.name.removesuffix("-2w"), case.model, case.rows, case.protocol)
        if key in self.bodies:
            return self.bodies[key]
        rows = _payload_rows(case.model, self.payload_dir, case.rows)
        input_name, shape, output_name = _tensors(self.versions[case.model])
        attempts = [False, True] if case.protocol == "json" and len(shape) > 1 else [False]
        if server.name == "obvious":
            attempts = [False]
        failures = []
        for nested in attempts:
            body = build_body(
                case.protocol, case.model, rows, shape, input_name, output_name, nested=nested
            )
            status, answer = http_request(server.port, "POST", body.path, body.data, body.headers())
            if status == 200:
                self.bodies[key] = body
                return body
            failures.append(f"{status} {answer[:500]!r}")
        raise ServerError(
            f"{server.name} refused the {case.name} body for {case.model} at {body.path}: "
            + "; ".join(failures)
        )

    # -- measuring -----------------------------------------------------------------------

    def grpc_message(self, server: Server, case: Case) -> bytes:
        """The serialised ModelInferRequest for `case`, checked once against `server` with
        the generated stub (OK and the right output shape expected)."""
        key = ("grpc", case.model, case.rows, case.protocol)
        if key in self.bodies:
            return self.bodies[key].data
        rows = _payload_rows(case.model, self.payload_dir, case.rows)
        input_name, shape, _ = _tensors(self.versions[case.model])
        message = build_grpc_message(case.model, rows, shape, input_name)
        check_grpc(server.grpc_port, message, case.rows)
        self.bodies[key] = Body(GRPC_PATH, message, "application/grpc")
        return message

    def measure(self, server: Server, case: Case, round_no: int) -> dict[str, Any]:
        """Warm up, then run the measured window; return the case record."""
        wrk_cpu = self.wrk_cpu
        batch = wrk_batch(self.args.wrk_policy, wrk_cpu, server.cpus)
        body_file = self.work / "body.bin"
        if case.protocol == "grpc":
            message = self.grpc_message(server, case)
            body = Body(GRPC_PATH, message, "application/grpc")
            log = self.work / "h2load.log"
            shape = (server.grpc_port, message, body_file, case.connections, case.streams)
            run_h2load(*shape, self.plan.warmup_s, wrk_cpu, log, batch)
            failed_before = grpc_failures(server.port)
            cpu_before = server.cpu_s()
            result = run_h2load(*shape, self.plan.duration_s, wrk_cpu, log, batch)
            result["server_cpu_s"] = server.cpu_s() - cpu_before
            # h2load sees HTTP/2 statuses only; a gRPC error is a 200 with grpc-status in
            # the trailers, so errors are what the server counted as not OK.
            failed = grpc_failures(server.port) - failed_before
            result["errors"] += failed
            result["errors_grpc_status"] = float(failed)
        else:
            body = self.body(server, case)
            run_wrk(
                server.port, body, body_file, case.connections, self.plan.warmup_s, wrk_cpu, batch
            )
            cpu_before = server.cpu_s()
            result = run_wrk(
                server.port,
                body,
                body_file,
                case.connections,
                self.plan.duration_s,
                wrk_cpu,
                batch,
            )
            result["server_cpu_s"] = server.cpu_s() - cpu_before
        seconds = result["duration_us"] / 1e6
        requests = int(result["requests"])
        record: dict[str, Any] = {
            "kind": "case",
            "run_id": self.run_id,
            "mode": self.plan.mode,
            "round": round_no,
            "server": server.name,
            "workers": server.workers,
            "server_cpus": server.cpus,
            "wrk_cpus": wrk_cpu,
            "wrk_policy": "batch" if batch else "normal",
            "model": case.model,
            "case": case.name,
            "protocol": case.protocol,
            "rows_per_request": case.rows,
            "connections": case.connections,
            "streams": case.streams,
            "warmup_s": self.plan.warmup_s,
            "duration_s": seconds,
            "requests": requests,
            "requests_per_s": requests / seconds if seconds > 0 else 0.0,
            "rows_per_s": requests * case.rows / seconds if seconds > 0 else 0.0,
            "p50_ms": result["p50_us"] / 1000,
            "p90_ms": result["p90_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000,
            "max_ms": result["latency_max_us"] / 1000,
            "errors": int(result["errors"]),
            "errors_detail": {
                k.removeprefix("errors_"): int(v)
                for k, v in result.items()
                if k.startswith("errors_")
            },
            "body_bytes": len(body.data),
            # The share of one CPU that wrk used; with 2 workers, that CPU is a server's too.
            "wrk_cpu_share": result["loadgen_cpu_s"] / seconds if seconds > 0 else 0.0,
            # CPU time the server's processes used per request (user + system), measured
            # window only: steadier than req/s when other work shares the machine.
            "server_cpu_us_per_request": (
                result["server_cpu_s"] * 1e6 / requests if requests else None
            ),
        }
        print(
            f"  {server.name:<10} {case.model:<13} {case.name:<16} "
            f"{record['requests_per_s']:9.1f} req/s {record['rows_per_s']:10.1f} rows/s "
            f"p50 {record['p50_ms']:.3f} p99 {record['p99_ms']:.3f} ms errors {record['errors']}",
            flush=True,
        )
        return record

    def ceiling(self, round_no: int, models: list[str]) -> list[dict[str, Any]]:
        """Run bench.ceiling pinned to the server core for each model and batch size."""
        records = []
        batches = sorted({c.rows for c in self.plan.cases})
        for model in models:
            command = [
                "taskset",
                "-c",
                self.server_cpu,
                sys.executable,
                "-m",
                "bench.ceiling",
                "--model-file",
                str(self.versions[model] / "model.onnx"),
                "--payload",
                model,
                "--payload-dir",
                str(self.payload_dir),
                "--seconds",
                str(self.plan.ceiling_s),
                "--warmup",
                str(min(0.5, self.plan.ceiling_s)),
            ]
            for batch in batches:
                command += ["--batch", str(batch)]
            limit = 60 + len(batches) * 2 * self.plan.ceiling_s
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=self._env({}),
                capture_output=True,
                text=True,
                timeout=limit,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"bench.ceiling failed for {model}:\n{done.stderr}")
            for line in done.stdout.splitlines():
                result = json.loads(line)
                records.append(
                    {
                        "kind": "ceiling",
                        "run_id": self.run_id,
                        "mode": self.plan.mode,
                        "round": round_no,
                        "model": model,
                        "cpus": self.server_cpu,
                        **result,
                    }
                )
                print(
                    f"  ceiling    {model:<13} batch {result['batch']:<3} "
                    f"{result['rows_per_s']:12.1f} rows/s",
                    flush=True,
                )
        return records

    def server_record(self, server: Server, round_no: int) -> dict[str, Any]:
        """Startup time and peak RSS of `server` (read before it stops)."""
        processes = server.peak_rss()
        return {
            "kind": "server",
            "run_id": self.run_id,
            "mode": self.plan.mode,
            "round": round_no,
            "server": server.name,
            "workers": server.workers,
            "server_cpus": server.cpus,
            "processes": len(processes),
            "startup_s": server.startup_s,
            "rss_peak_mb": sum(float(p["mb"]) for p in processes),
            "rss_peak_by_process": processes,
        }

    def kinds(self, group: str, round_no: int) -> list[str]:
        """The servers of `group` ("single" or "workers") in the order each case runs them.

        The baseline's server goes next to verdict's (before, verdict, obvious); who goes
        first alternates between rounds, so that no side always runs warmer.
        """
        target = self.args.target
        if group == "single":
            kinds = [k for k in ("verdict", "obvious") if target in ("all", k)]
        else:
            kinds = ["verdict-2w"] if target in ("all", "verdict") else []
        if self.baseline is not None and target in ("all", "verdict"):
            kinds.insert(0, "before" if group == "single" else "before-2w")
        if round_no % 2 == 0:
            kinds.reverse()
        return kinds

    def run_group(self, kinds: list[str], cases: list[Case], round_no: int) -> list[Record]:
        """Start `kinds` side by side, measure each case on each in turn, then stop them."""
        records: list[Record] = []
        if not cases or not kinds:
            return records
        servers = {kind: self.start(kind) for kind in kinds}
        try:
            for case in cases:
                for kind in kinds:
                    if kind == "obvious" and case.protocol != "json":
                        continue
                    if case.protocol == "grpc" and not kind.startswith("verdict"):
                        continue  # the obvious server and the baseline answer HTTP only
                    records.append(self.measure(servers[kind], case, round_no))
            records += [self.server_record(s, round_no) for s in servers.values()]
        finally:
            for server in servers.values():
                self.stop(server)
        return records

    def run_round(self, round_no: int) -> list[dict[str, Any]]:
        """One round: ceiling, the single-worker servers interleaved per case, then 2 workers."""
        records: list[dict[str, Any]] = []
        models = sorted({c.model for c in self.plan.cases})
        records += self.ceiling(round_no, models)
        for group in ("single", "workers"):
            cases = [c for c in self.plan.cases if c.group == group]
            records += self.run_group(self.kinds(group, round_no), cases, round_no)
        report.add_ratios(records)
        # Each case also carries its server's startup time and peak RSS from this round.
        by_server = {r["server"]: r for r in records if r["kind"] == "server"}
        for record in records:
            if record["kind"] == "case":
                server_record = by_server.get(record["server"], {})
                record["startup_s"] = server_record.get("startup_s")
                record["rss_peak_mb"] = server_record.get("rss_peak_mb")
        return records

    def estimate_s(self) -> float:
        """Rough wall time: every wrk window plus server starts and ceiling runs."""
        per_case = self.plan.warmup_s + self.plan.duration_s + 0.5
        target = self.args.target
        windows = 0
        verdict_sides = 1 if self.baseline is None else 2
        for case in self.plan.cases:
            verdict = target in ("all", "verdict")
            obvious = target in ("all", "obvious") and case.protocol == "json"
            windows += verdict_sides * int(verdict) + int(obvious and case.group == "single")
        models = len({c.model for c in self.plan.cases})
        ceiling = models * (2 + 2 * (self.plan.ceiling_s + 0.5))
        # Server starts and checks: about 8 s a round, 4 more for the baseline's two servers.
        starts = 8 if self.baseline is None else 12
        return self.plan.rounds * (windows * per_case + ceiling + starts)

    def run(self) -> list[dict[str, Any]]:
        """Every round; records are appended to the JSON lines file as each round ends."""
        out_dir: Path = self.args.out
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / f"{self.run_id}.jsonl"
        meta = {
            "kind": "meta",
            "run_id": self.run_id,
            "mode": self.plan.mode,
            "command": self.args.command_line,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "rounds": self.plan.rounds,
            "warmup_s": self.plan.warmup_s,
            "duration_s": self.plan.duration_s,
            "target": self.args.target,
            "server_cpu": self.server_cpu,
            "wrk_cpu": self.wrk_cpu,
            "wrk_policy": self.args.wrk_policy,
            "models": {
                m: str(v.relative_to(self.repository.parent))
                if v.is_relative_to(self.repository.parent)
                else str(v)
                for m, v in self.versions.items()
            },
            "python": sys.version.split()[0],
        }
        if self.baseline is not None:
            meta["baseline"] = checkout_info(self.baseline)
            meta["checkout"] = checkout_info(ROOT)
        self.records.append(meta)
        with results_path.open("w") as out:
            out.write(json.dumps(meta) + "\n")
        print(
            f"bench: {self.plan.mode} run, {self.plan.rounds} round(s), about "
            f"{self.estimate_s() / 60:.1f} min; results in {results_path}",
            flush=True,
        )
        for round_no in range(1, self.plan.rounds + 1):
            print(f"round {round_no}/{self.plan.rounds}", flush=True)
            records = self.run_round(round_no)
            self.records += records
            with results_path.open("a") as out:
                for record in records:
                    out.write(json.dumps(record) + "\n")
        self.results_path = results_path
        return self.records


def check_grpc(port: int, message: bytes, rows: int) -> None:
    """One ModelInfer with the generated stub: OK with `rows` rows of output, or ServerError."""
    import grpc

    from service.grpc.generated import inference_pb2 as pb
    from service.grpc.generated import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            answer = stub.ModelInfer(pb.ModelInferRequest.FromString(message), timeout=10)
        except grpc.RpcError as exc:
            raise ServerError(f"gRPC ModelInfer refused: {exc}") from exc
    if answer.outputs[0].shape[0] != rows:
        raise ServerError(f"gRPC ModelInfer answered shape {list(answer.outputs[0].shape)}")


def grpc_failures(port: int) -> float:
    """ModelInfer calls the server answered with a status other than OK, so far."""
    status, text = http_request(port, "GET", "/metrics")
    if status != 200:
        raise LoadError(f"GET /metrics answered {status}")
    total = 0.0
    for line in text.decode().splitlines():
        # CANCELLED: the load generator resets the calls in flight when its window ends.
        if line.startswith("verdict_grpc_request_duration_seconds_count{") and (
            'method="ModelInfer"' in line
            and 'code="OK"' not in line
            and 'code="CANCELLED"' not in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wrk_batch(policy: str, wrk_cpus: str, server_cpus: str) -> bool:
    """Whether wrk runs under SCHED_BATCH: always, never, or (`auto`) when it shares a CPU
    with the server under test, as with 2 workers on a 2-core machine.

    A normal-policy wrk on a server's CPU is woken by every response and preempts the worker
    in the middle of its loop turn (thousands of times a second), which measures the load
    generator's intrusion, not the server; on a CPU of its own the policy changes nothing.
    """
    if policy != "auto":
        return policy == "batch"
    return bool(set(wrk_cpus.split(",")) & set(server_cpus.split(",")))


def _check_tools(args: argparse.Namespace) -> None:
    tools = ["wrk", "taskset", "chrt"]
    if args.target in ("all", "verdict"):
        tools.append("h2load")  # the gRPC cases (Debian's nghttp2-client)
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: `{tool}` is not installed (run `make sysdeps`)")
    if args.target in ("all", "verdict"):
        with contextlib.suppress(ModuleNotFoundError):
            if importlib.util.find_spec(f"{args.verdict_module}.__main__") is not None:
                return
        raise SystemExit(
            f"bench: `python -m {args.verdict_module}` is missing ({args.verdict_module}/"
            "__main__.py not found); the verdict service is not built yet. "
            "Run with --target obvious to benchmark only the obvious server."
        )


def _check_baseline(args: argparse.Namespace) -> None:
    """--baseline needs verdict's servers in the run and `python -m <module>` in DIR."""
    if args.baseline is None:
        return
    if args.target == "obvious":
        raise SystemExit(
            "bench: --baseline compares verdict's servers; use --target all or verdict"
        )
    main = args.baseline / Path(*args.verdict_module.split(".")) / "__main__.py"
    if not main.is_file():
        raise SystemExit(
            f"bench: --baseline {args.baseline}: {main} not found; "
            "DIR must be a checkout of this repository"
        )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the servers are stopped on the way out."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round, short windows, fewer cases")
    mode.add_argument(
        "--smoke", action="store_true", help="one tiny case, 1 s windows; never writes docs"
    )
    parser.add_argument("--target", choices=TARGETS, default="all", help="which servers to run")
    parser.add_argument("--models", help="comma-separated model names (default: both bundled)")
    parser.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    parser.add_argument("--warmup", type=int, help="override the warm-up seconds per case")
    parser.add_argument("--duration", type=int, help="override the measured seconds per case")
    parser.add_argument(
        "--wrk-policy",
        choices=("auto", "normal", "batch"),
        default="auto",
        help="wrk's scheduling policy; auto: SCHED_BATCH where it shares a CPU with the server",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .jsonl")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="Markdown file to update")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--no-docs", action="store_true", help="do not rewrite the docs table")
    docs.add_argument(
        "--write-docs", action="store_true", help="rewrite the docs table even for --quick"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the checkout in DIR (`before`, `before-2w`) in every round",
    )
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--payload-dir", type=Path, default=PAYLOAD_DIR)
    parser.add_argument(
        "--verdict-module", default="service", help="module run as `python -m <module>`"
    )
    parser.add_argument(
        "--verdict-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the verdict server (repeatable)",
    )
    args = parser.parse_args(argv)
    args.command_line = "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the summary; write the JSON lines and (full runs) the docs."""
    args = parse_args(argv)
    _check_tools(args)
    _check_baseline(args)
    plan = make_plan(args)
    bench = Bench(args, plan)
    started = time.perf_counter()
    try:
        with _interruptible():
            records = bench.run()
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # ServerError, LoadError, a failed ceiling run
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        shutil.rmtree(bench.work, ignore_errors=True)
    markdown = report.render(records)
    print(markdown)
    bench.results_path.with_suffix(".md").write_text(markdown)
    write_docs = not args.smoke and not args.no_docs and (plan.mode == "full" or args.write_docs)
    if write_docs:
        report.write_docs(args.docs, markdown)
        print(f"bench: updated {args.docs}")
    errors = sum(r.get("errors", 0) for r in records if r["kind"] == "case")
    print(f"bench: done in {time.perf_counter() - started:.0f} s; {bench.results_path}")
    return 0 if errors == 0 else 2


if __name__ == "__main__":
    sys.exit(main())

"""The committed gRPC modules are what `make proto` writes from service/grpc/inference.proto,
and the service is the protocol's: stock clients' method paths and field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tritonclient.grpc import service_pb2 as triton_pb

from service.grpc.generated import inference_pb2 as pb
from tests.conftest import ROOT

GENERATED = ROOT / "service" / "grpc" / "generated"


def test_the_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/generate_proto.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in GENERATED.iterdir() if p.is_file()}
    assert fresh.keys() == committed.keys()
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run `make proto`"


def test_the_service_and_messages_match_tritons_on_the_wire() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == triton_pb.DESCRIPTOR.package == "inference"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.name == other.input_type.name
    # The repository responses carry KServe's fields, which Triton's clients ignore.
    different = {"RepositoryModelLoadResponse", "RepositoryModelUnloadResponse"}
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        if message.name in different:
            continue
        _same_fields(message, triton_pb.DESCRIPTOR.message_types_by_name[message.name])


def _same_fields(ours: object, theirs: object) -> None:
    for field in ours.fields:  # type: ignore[attr-defined]
        other = theirs.fields_by_name[field.name]  # type: ignore[attr-defined]
        assert (field.number, field.type) == (other.number, other.type), field.full_name
    for nested in ours.nested_types:  # type: ignore[attr-defined]
        _same_fields(nested, theirs.nested_types_by_name[nested.name])  # type: ignore[attr-defined]

"""asm-proxy's own protobuf definitions (protos/) against the Envoy it talks to.

Every field asm-proxy declares must exist in the real Envoy's API with the same number,
the same wire type and the same cardinality, recursively through the message types: then
what asm-proxy sends, Envoy reads as meant, and the other way round. Envoy's descriptors
come out of the Envoy binary itself (tests/support/envoy_descriptors.py). The generated
modules must also match what protos/generate.py makes of the .proto files today.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor as _d
from google.protobuf import descriptor_pb2

from asm_proxy.envoy_process import find_envoy
from asm_proxy.wire import CheckRequest, CheckResponse, ProcessingRequest, ProcessingResponse
from tests.support.envoy_descriptors import EnvoyDescriptors

ROOT = Path(__file__).resolve().parents[2]
EXT_PROC = "envoy/service/ext_proc/v3/external_processor.proto"
EXT_AUTHZ = "envoy/service/auth/v3/external_auth.proto"

ROOTS = [
    (ProcessingRequest, EXT_PROC, ".envoy.service.ext_proc.v3.ProcessingRequest"),
    (ProcessingResponse, EXT_PROC, ".envoy.service.ext_proc.v3.ProcessingResponse"),
    (CheckRequest, EXT_AUTHZ, ".envoy.service.auth.v3.CheckRequest"),
    (CheckResponse, EXT_AUTHZ, ".envoy.service.auth.v3.CheckResponse"),
]

_T = descriptor_pb2.FieldDescriptorProto
#: Types that are the same on the wire: an open proto3 enum is an int32 varint.
_SAME_WIRE = {(_d.FieldDescriptor.TYPE_INT32, _T.TYPE_ENUM)}


@pytest.fixture(scope="module")
def envoy() -> EnvoyDescriptors:
    return EnvoyDescriptors(find_envoy())


def _compare(
    ours: _d.Descriptor, envoy: EnvoyDescriptors, file: str, theirs_name: str, seen: set[str]
) -> list[str]:
    if ours.full_name in seen:
        return []
    seen.add(ours.full_name)
    theirs = envoy.message(file, theirs_name)
    by_number = {f.number: f for f in theirs.field}
    problems = []
    for field in ours.fields:
        where = f"{ours.full_name}.{field.name} = {field.number}"
        other = by_number.get(field.number)
        if other is None:
            problems.append(f"{where}: Envoy's {theirs_name} has no field {field.number}")
            continue
        if other.name != field.name:
            problems.append(f"{where}: Envoy calls field {field.number} {other.name!r}")
        if field.type != other.type and (field.type, other.type) not in _SAME_WIRE:
            problems.append(f"{where}: type {field.type}, Envoy's is {other.type}")
        repeated = field.is_repeated
        if repeated != (other.label == _T.LABEL_REPEATED):
            problems.append(f"{where}: repeated is {repeated} here, not in Envoy")
        in_oneof = (
            field.containing_oneof is not None and not field.containing_oneof.name.startswith("_")
        )
        if in_oneof != other.HasField("oneof_index") and not other.proto3_optional:
            problems.append(f"{where}: oneof membership differs from Envoy's")
        if field.message_type is not None and other.type == _T.TYPE_MESSAGE:
            if field.message_type.full_name.startswith("google.protobuf."):
                if "." + field.message_type.full_name != other.type_name:
                    problems.append(
                        f"{where}: {field.message_type.full_name}, Envoy's {other.type_name}"
                    )
            else:
                problems += _compare(field.message_type, envoy, file, other.type_name, seen)
        if field.enum_type is not None and other.type == _T.TYPE_ENUM:
            values = envoy.enum_values(file, other.type_name)
            for value in field.enum_type.values:
                if values.get(value.name) != value.number:
                    problems.append(
                        f"{where}: enum value {value.name}={value.number} is not Envoy's"
                    )
    return problems


@pytest.mark.parametrize(("message", "file", "theirs"), ROOTS, ids=[r[2] for r in ROOTS])
def test_wire_compatible_with_the_envoy_under_test(
    envoy: EnvoyDescriptors, message: type, file: str, theirs: str
) -> None:
    """Every field, through every nested message, has Envoy's number, type and cardinality."""
    assert _compare(message.DESCRIPTOR, envoy, file, theirs, set()) == []


def test_a_wrong_number_is_caught(envoy: EnvoyDescriptors) -> None:
    """The comparison itself fails on a field Envoy numbers differently (the check can fail)."""
    pool = descriptor_pb2.FileDescriptorProto(
        name="wrong.proto",
        package="wrong",
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="HttpBody",
                field=[
                    _T(name="body", number=1, type=_T.TYPE_BYTES, label=_T.LABEL_OPTIONAL),
                    _T(name="end_of_stream", number=3, type=_T.TYPE_BOOL, label=_T.LABEL_OPTIONAL),
                ],
            )
        ],
    )
    from google.protobuf import descriptor_pool

    descriptor = descriptor_pool.DescriptorPool()
    descriptor.Add(pool)
    wrong = descriptor.FindMessageTypeByName("wrong.HttpBody")
    problems = _compare(wrong, envoy, EXT_PROC, ".envoy.service.ext_proc.v3.HttpBody", set())
    assert problems == [
        "wrong.HttpBody.end_of_stream = 3: Envoy calls field 3 'end_of_stream_without_message'"
    ]


def test_generated_modules_are_up_to_date() -> None:
    """asm_proxy/wire/*_pb2.py(i) are what protos/generate.py makes of the .proto files."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

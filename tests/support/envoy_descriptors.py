"""Envoy's own API descriptors, read out of the Envoy binary under test.

Envoy is built with protobuf's C++ reflection, so every .proto file it knows is inside the
binary as a serialized FileDescriptorProto, starting with its name (field 1). Finding one
means searching for `0x0a <len> <name>` and reading protobuf fields from there for as long
as they are fields of a FileDescriptorProto. What comes out is the exact API of the Envoy
that runs in the tests, whatever any generated package says.
"""

from __future__ import annotations

import functools
import mmap
from pathlib import Path

from google.protobuf import descriptor_pb2

#: FileDescriptorProto's field numbers run from 1 to 14 (name ... edition).
_LAST_FIELD = 14


def _varint(data: mmap.mmap, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _end_of_message(data: mmap.mmap, start: int, limit: int) -> int:
    """Where the run of FileDescriptorProto fields that begins at `start` ends."""
    at = start
    while at < limit:
        try:
            tag, nxt = _varint(data, at)
            field, wire_type = tag >> 3, tag & 7
            if not 1 <= field <= _LAST_FIELD:
                break
            if wire_type == 0:
                _, nxt = _varint(data, nxt)
            elif wire_type == 2:
                length, nxt = _varint(data, nxt)
                nxt += length
            else:
                break
        except (ValueError, IndexError):
            break
        if nxt > limit:
            break
        at = nxt
    return at


class EnvoyDescriptors:
    """The FileDescriptorProtos of one Envoy binary, looked up by file or message name."""

    def __init__(self, binary: str | Path) -> None:
        self.binary = Path(binary)
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    @functools.cache  # noqa: B019 - one instance per binary, kept for the session
    def _mapped(self) -> mmap.mmap:
        with open(self.binary, "rb") as handle:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def file(self, name: str) -> descriptor_pb2.FileDescriptorProto:
        """The descriptor of the .proto file `name` (e.g. envoy/type/v3/http_status.proto)."""
        if name in self._files:
            return self._files[name]
        data = self._mapped()
        encoded = name.encode()
        needle = bytes([0x0A, len(encoded)]) + encoded
        at = data.find(needle)
        while at >= 0:
            end = _end_of_message(data, at, min(len(data), at + 1_000_000))
            parsed = descriptor_pb2.FileDescriptorProto()
            try:
                parsed.ParseFromString(data[at:end])
            except Exception:  # a stray copy of the name, not a descriptor
                parsed = None  # type: ignore[assignment]
            if parsed is not None and parsed.name == name and parsed.package:
                self._files[name] = parsed
                return parsed
            at = data.find(needle, at + 1)
        raise LookupError(f"{name} is not in {self.binary}")

    def message(self, file: str, full_name: str) -> descriptor_pb2.DescriptorProto:
        """A message (`.pkg.Outer.Inner`) defined in `file` or in the files it imports."""
        found = self._find(self.file(file), full_name, seen=set())
        if found is None:
            raise LookupError(f"{full_name} is not reachable from {file}")
        return found

    def _find(
        self, fd: descriptor_pb2.FileDescriptorProto, full_name: str, seen: set[str]
    ) -> descriptor_pb2.DescriptorProto | None:
        if fd.name in seen:
            return None
        seen.add(fd.name)
        prefix = f".{fd.package}."
        if full_name.startswith(prefix):
            parts = full_name[len(prefix) :].split(".")
            candidates = list(fd.message_type)
            message = None
            for part in parts:
                message = next((m for m in candidates if m.name == part), None)
                if message is None:
                    break
                candidates = list(message.nested_type)
            if message is not None:
                return message
        for dependency in fd.dependency:
            try:
                found = self._find(self.file(dependency), full_name, seen)
            except LookupError:
                continue
            if found is not None:
                return found
        return None

    def enum_values(self, file: str, full_name: str) -> dict[str, int]:
        """The values of an enum (`.pkg.Outer.Enum`) reachable from `file`."""
        outer, _, enum_name = full_name.rpartition(".")
        message = self.message(file, outer)
        for enum in message.enum_type:
            if enum.name == enum_name:
                return {v.name: v.number for v in enum.value}
        raise LookupError(f"{full_name} is not reachable from {file}")

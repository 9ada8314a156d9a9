"""Generate asm-proxy's protobuf modules and their typed stubs from the .proto files here.

    python protos/generate.py            # writes asm_proxy/wire/*_pb2.py and *_pb2.pyi
    python protos/generate.py --check    # exit 1 if the committed files are out of date

Needs grpcio-tools (protoc) and mypy-protobuf (the .pyi stubs), both in the `test` extra.
Each .proto under protos/<package path>/ becomes <package path>/<name>_pb2.py at the top of
the repository (or of the distribution named by its path: handlers/ for asm_proxy_handlers).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Where the modules of a proto package go, by the package's top directory.
OUTPUTS = {"asm_proxy": ROOT, "asm_proxy_handlers": ROOT / "handlers"}


def sources() -> list[Path]:
    return sorted(HERE.rglob("*.proto"))


def generate(into: Path) -> list[Path]:
    """Run protoc over every .proto; returns the files written under `into`."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(HERE)) for p in sources()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
            f"--python_out={into}",
            f"--mypy_out={into}",
            *protos,
        ],
        check=True,
        cwd=HERE,
    )
    return sorted(p for p in into.rglob("*_pb2.py*"))


def destination(generated: Path, into: Path) -> Path:
    relative = generated.relative_to(into)
    return OUTPUTS[relative.parts[0]] / relative


def main() -> int:
    parser = argparse.ArgumentParser(prog="python protos/generate.py")
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        into = Path(tmp)
        stale = []
        for generated in generate(into):
            target = destination(generated, into)
            if target.exists() and filecmp.cmp(generated, target, shallow=False):
                continue
            stale.append(target)
            if not args.check:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(generated, target)
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

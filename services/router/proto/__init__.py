"""The router's gRPC contract (`scoring.proto`) and the Python code generated from it.

The generated modules are never committed: hand-edited or stale generated code is how a
contract and its implementation drift apart. `load()` runs grpcio-tools' protoc in-process
(tens of milliseconds) the first time it is called and caches the output in a folder keyed
by the hash of the .proto and the versions of protoc and the protobuf runtime, so the code
always matches both the contract and the runtime it is imported into. `python -m
services.router.proto` does the same ahead of time (an image build step); point
$ANOMALY_PROTO_CACHE at a folder to choose where (default: the user cache, else the
temporary directory, whichever is writable).

Imports go through this package (`services.router.proto.scoring_pb2`): the cache folder is
appended to the package's `__path__`, so the generated `_grpc` module's own import of its
messages resolves without touching `sys.path`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

PROTO = Path(__file__).with_name("scoring.proto")
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]
"""The folder holding `services/`: protoc's include root, so generated imports are absolute."""
_RELATIVE = Path("services/router/proto")
CACHE_ENV = "ANOMALY_PROTO_CACHE"
_lock = threading.Lock()
_loaded: dict[str, Protos] = {}


class ProtoGenerationError(RuntimeError):
    """protoc refused `scoring.proto`, or no folder could hold the generated code."""


class Protos(NamedTuple):
    """The generated modules: messages (`pb2`) and the service stubs/registration (`grpc`)."""

    pb2: ModuleType
    grpc: ModuleType


def cache_key() -> str:
    """Hash of the contract and of the tools that turn it into Python."""
    digest = hashlib.sha256(PROTO.read_bytes())
    for dist in ("grpcio-tools", "grpcio", "protobuf"):
        digest.update(f"|{dist}={metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


def _candidate_roots() -> list[Path]:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return [Path(explicit)]
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [
        Path(xdg) / "anomaly-platform" / "proto",
        Path(tempfile.gettempdir()) / f"anomaly-platform-proto-{os.getuid()}",
    ]


def _run_protoc(out: Path) -> None:
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{_PACKAGE_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(_RELATIVE / PROTO.name),
    ]
    code = protoc.main(args)
    if code != 0:
        raise ProtoGenerationError(f"protoc failed on {PROTO} (exit {code}); see stderr")


def generate() -> Path:
    """The folder holding the generated modules for the current key; generated if absent.

    Generation writes to a private temporary folder and renames it into place, so processes
    starting side by side never import a half-written module.
    """
    key = cache_key()
    problems: list[str] = []
    for root in _candidate_roots():
        final = root / key / _RELATIVE
        if (final / "scoring_pb2_grpc.py").is_file():
            return final
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            _run_protoc(staging)
            try:
                staging.rename(root / key)
            except OSError:  # another process won the race: use its (identical) output
                shutil.rmtree(staging, ignore_errors=True)
            if (final / "scoring_pb2_grpc.py").is_file():
                return final
            problems.append(f"{root}: generated files missing after protoc")
        except OSError as exc:
            problems.append(f"{root}: {exc.strerror or exc}")
    raise ProtoGenerationError(
        f"cannot generate the gRPC code of {PROTO.name}: "
        + "; ".join(problems)
        + f" (set ${CACHE_ENV} to a writable folder)"
    )


def load() -> Protos:
    """The generated modules, generating them on first use (thread-safe, once per process)."""
    with _lock:
        if "protos" not in _loaded:
            folder = str(generate())
            if folder not in __path__:
                __path__.append(folder)
            _loaded["protos"] = Protos(
                pb2=importlib.import_module(f"{__name__}.scoring_pb2"),
                grpc=importlib.import_module(f"{__name__}.scoring_pb2_grpc"),
            )
        return _loaded["protos"]

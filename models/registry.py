"""The versioned model registry on disk, and loading models from it.

Layout (`<store>` is `model_store.path` of the configuration):

    <store>/<model>/<version>/metadata.json   what, from which data, how calibrated
    <store>/<model>/<version>/model.onnx      ONNX export (any runtime, Triton)
    <store>/<model>/<version>/model.joblib | model.json | model.pt   native artifact
    <store>/<model>/<version>/SHA256SUMS      hash of every other file of the version
    <store>/<model>/PROMOTED                  the promoted version (absent: none)
    <store>/<model>/config.pbtxt              Triton configuration (serves the promoted one)

Versions are integers counted from 1, so a version folder is also a Triton version folder.
A version is immutable: it is assembled in a hidden staging folder and renamed into place in
one step (a reader never sees half a version; writing an existing version fails), its
files are made read-only, and loading verifies every file against SHA256SUMS, so a model
that was edited after registration is refused rather than served.

Which version serves: `flags.models[<name>].version` when pinned, else the promoted one,
else the latest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from models.calibration import QuantileCalibrator
from models.detector import F32, F64, I64, InputKind, ModelKind, NativeModel
from models.errors import (
    IncompatibleModelError,
    IntegrityError,
    ModelNotFoundError,
    RegistryError,
    VersionExistsError,
)
from models.isolation_forest import KIND as ISOLATION_FOREST_KIND
from models.metadata import on_current_features
from models.transformer import KIND as TRANSFORMER_KIND
from models.triton import triton_config
from models.xgb_classifier import KIND as XGBOOST_KIND
from services.common.config.model import FeatureFlags
from services.common.features.definition import FEATURE_NAMES, feature_schema_hash
from services.common.model_names import ModelName

METADATA_FILE: Final = "metadata.json"
ONNX_FILE: Final = "model.onnx"
CHECKSUMS_FILE: Final = "SHA256SUMS"
PROMOTED_FILE: Final = "PROMOTED"
TRITON_CONFIG_FILE: Final = "config.pbtxt"
LEGACY_ONNX_MAX_ROWS: Final = 256
"""`LoadedModel.onnx_max_rows` of versions whose metadata predates the field."""

KINDS: Final[dict[ModelName, ModelKind]] = {
    ModelName.ISOLATION_FOREST: ISOLATION_FOREST_KIND,
    ModelName.XGBOOST: XGBOOST_KIND,
    ModelName.TRANSFORMER: TRANSFORMER_KIND,
}

Runtime = Literal["native", "onnx"]


def is_version_number(text: str) -> bool:
    """Whether `text` spells a version folder: ASCII digits only (str.isdigit alone also
    accepts "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_only(path: Path) -> None:
    mode = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    if path.is_dir():
        mode |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    path.chmod(mode)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Scores of a batch: what the router consumes from each model."""

    score: F64
    """Calibrated anomaly score in [0, 1] per row."""
    raw: F64
    """Raw anomaly score (higher = more anomalous) before calibration."""
    anomaly_type: I64 | None = None
    """Index into AnomalyType per row, for models that predict a type (XGBoost)."""


@dataclass(slots=True, eq=False)
class LoadedModel:
    """One registered model version, verified, ready to score.

    The server may run the native model (`predict_raw(x)`) or the ONNX file at `onnx_path`
    in any runtime; either way `postprocess(raw_output)` turns the raw output into the
    calibrated score (and type), so every runtime scores identically.
    """

    name: ModelName
    version: str
    path: Path
    metadata: dict[str, Any]
    calibrator: QuantileCalibrator
    kind: ModelKind
    _native: NativeModel | None = field(default=None, repr=False)
    _sessions: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict, repr=False)

    @property
    def onnx_path(self) -> Path:
        """The ONNX export (input `features`, float32)."""
        return self.path / ONNX_FILE

    @property
    def native_path(self) -> Path:
        """The native artifact (joblib / XGBoost JSON / torch state dict)."""
        return self.path / self.kind.native_file

    @property
    def onnx_output(self) -> str:
        """Name of the ONNX output holding the raw output."""
        return self.kind.onnx_output

    @property
    def input_kind(self) -> InputKind:
        """Rows (n, 22) or sequences (n, sequence_length, 22)."""
        return self.kind.input_kind

    @property
    def sequence_length(self) -> int | None:
        """Rows per input sequence (Transformer), else None."""
        value = self.metadata.get("input", {}).get("sequence_length")
        return int(value) if value is not None else None

    @property
    def onnx_max_rows(self) -> int | None:
        """Largest batch the ONNX export scores faster than the native library (None: every
        batch), as training recorded it; versions that record nothing were exported when
        ONNX Runtime won only at small batches (up to ~256 rows for both tree models)."""
        onnx = self.metadata.get("onnx", {})
        if "onnx_max_rows" not in onnx:
            return LEGACY_ONNX_MAX_ROWS
        value = onnx["onnx_max_rows"]
        return int(value) if value is not None else None

    def native(self) -> NativeModel:
        """The native model, loaded on first use."""
        if self._native is None:
            self._native = self.kind.load_native(self.path, self.metadata)
        return self._native

    def onnx_session(self, threads: int = 1, providers: tuple[str, ...] | None = None) -> Any:
        """An ONNX Runtime session (cached per thread count and providers)."""
        import onnxruntime as ort

        chosen = providers or ("CPUExecutionProvider",)
        key = (threads, chosen)
        if key not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._sessions[key] = ort.InferenceSession(
                str(self.onnx_path), sess_options=options, providers=list(chosen)
            )
        return self._sessions[key]

    def predict_raw(self, x: npt.ArrayLike, runtime: Runtime = "native") -> F32:
        """The raw model output (before calibration) from the native model or ONNX."""
        batch = check_batch(self, x)
        if runtime == "onnx":
            out = self.onnx_session().run([self.onnx_output], {"features": batch})[0]
            raw: F32 = np.asarray(out, dtype=np.float32)
            return raw
        return self.native().raw_output(batch)

    def postprocess(self, raw_output: npt.ArrayLike) -> ScoreBatch:
        """Calibrated scores (and types) from a raw output of any runtime."""
        raw_arr = np.asarray(raw_output, dtype=np.float32)
        raw = self.kind.anomaly_raw(raw_arr)
        return ScoreBatch(self.calibrator(raw), raw, self.kind.predicted_type(raw_arr))

    def score_batch(self, x: npt.ArrayLike, runtime: Runtime = "native") -> ScoreBatch:
        """Calibrated scores, raw scores and types of a batch."""
        return self.postprocess(self.predict_raw(x, runtime))

    def score(self, x: npt.ArrayLike, runtime: Runtime = "native") -> F64:
        """Calibrated anomaly scores in [0, 1]."""
        return self.score_batch(x, runtime).score


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One line of `anomaly models list`."""

    name: ModelName
    version: str
    created_at: str
    promoted: bool
    metrics: dict[str, Any]
    problem: str | None = None
    """Why the version's metadata cannot be read (None: it can)."""


class Registry:
    """The registry rooted at `root` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ reading

    def model_dir(self, name: ModelName) -> Path:
        """Folder of one model's versions."""
        return self.root / ModelName(name).value

    def version_dir(self, name: ModelName, version: str) -> Path:
        """Folder of one version."""
        return self.model_dir(name) / str(version)

    def versions(self, name: ModelName) -> list[str]:
        """Registered versions, oldest first."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and is_version_number(p.name) and (p / CHECKSUMS_FILE).exists()
        ]
        return sorted(found, key=int)

    def latest(self, name: ModelName) -> str | None:
        """The newest version, if any."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def promoted(self, name: ModelName) -> str | None:
        """The promoted version, if one was promoted."""
        pointer = self.model_dir(name) / PROMOTED_FILE
        if not pointer.exists():
            return None
        return pointer.read_text(encoding="utf-8").strip() or None

    def resolve(self, name: ModelName, pinned: str | None = None) -> str:
        """The version to serve: pinned, else promoted, else latest."""
        for candidate in (pinned, self.promoted(name)):
            if candidate is not None:
                if candidate not in self.versions(name):
                    raise ModelNotFoundError(
                        f"{name.value} version {candidate} is not in the registry at {self.root}"
                    )
                return candidate
        latest = self.latest(name)
        if latest is None:
            raise ModelNotFoundError(
                f"no {name.value} model in the registry at {self.root} (run `anomaly train`)"
            )
        return latest

    def resolve_with_flags(self, name: ModelName, flags: FeatureFlags) -> str:
        """`resolve` with the version pinned in `flags.models[name]`, if any."""
        flag = flags.models.get(name)
        return self.resolve(name, flag.version if flag else None)

    def verify(self, name: ModelName, version: str) -> None:
        """Raise IntegrityError unless every file matches SHA256SUMS (and nothing was added)."""
        folder = self.version_dir(name, version)
        sums = folder / CHECKSUMS_FILE
        if not sums.exists():
            raise ModelNotFoundError(f"{name.value} version {version} not found under {self.root}")
        expected: dict[str, str] = {}
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, _, file_name = line.partition("  ")
            expected[file_name] = digest
        present = {p.name for p in folder.iterdir() if p.name != CHECKSUMS_FILE}
        if present != set(expected):
            extra = sorted(present - set(expected))
            missing = sorted(set(expected) - present)
            raise IntegrityError(
                f"{name.value} version {version}: files changed since registration "
                f"(added: {extra or 'none'}, missing: {missing or 'none'})"
            )
        for file_name, digest in expected.items():
            if sha256_file(folder / file_name) != digest:
                raise IntegrityError(
                    f"{name.value} version {version}: {file_name} does not match its "
                    "registered hash (modified after registration?)"
                )

    def metadata(self, name: ModelName, version: str) -> dict[str, Any]:
        """The version's metadata (not verified: use `load` to serve)."""
        path = self.version_dir(name, version) / METADATA_FILE
        if not path.exists():
            raise ModelNotFoundError(f"{name.value} version {version} not found under {self.root}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrityError(
                f"{name.value} version {version}: {METADATA_FILE} is not valid JSON ({exc})"
            ) from None
        if not isinstance(data, dict):
            raise IntegrityError(
                f"{name.value} version {version}: {METADATA_FILE} is not a JSON object"
            )
        return data

    def load(
        self, name: ModelName, version: str | None = None, flags: FeatureFlags | None = None
    ) -> LoadedModel:
        """Verify and load a version (default: pinned in `flags`, else promoted, else latest).

        Refuses a model whose feature schema differs from the running code's.
        """
        name = ModelName(name)
        if version is None:
            version = self.resolve_with_flags(name, flags) if flags else self.resolve(name)
        self.verify(name, version)
        metadata = self.metadata(name, version)
        if not on_current_features(metadata):
            schema = metadata.get("feature_schema_hash")
            raise IncompatibleModelError(
                f"{name.value} version {version} was trained on feature schema {schema}, "
                f"this code computes {feature_schema_hash()}: retrain it"
            )
        return LoadedModel(
            name=name,
            version=version,
            path=self.version_dir(name, version),
            metadata=metadata,
            calibrator=_calibrator(name, version, metadata),
            kind=KINDS[name],
        )

    def list(self) -> list[VersionInfo]:
        """Every version of every model.

        A version whose metadata cannot be read is listed with the reason rather than
        ending the listing: `models list` is what an operator runs to find such a version.
        """
        out = []
        for name in ModelName:
            promoted = self.promoted(name)
            for version in self.versions(name):
                try:
                    meta = self.metadata(name, version)
                except RegistryError as exc:
                    out.append(VersionInfo(name, version, "", version == promoted, {}, str(exc)))
                    continue
                metrics = meta.get("metrics")
                holdout = metrics.get("holdout") if isinstance(metrics, dict) else None
                out.append(
                    VersionInfo(
                        name, version, str(meta.get("created_at", "")), version == promoted,
                        dict(holdout) if isinstance(holdout, dict) else {},
                    )
                )  # fmt: skip
        return out

    # ------------------------------------------------------------------ writing

    def publish(
        self,
        name: ModelName,
        stage: Callable[[Path, str], None],
        version: str | None = None,
    ) -> str:
        """Create a new immutable version; returns it.

        `stage(folder, version)` writes the version's files (metadata.json included) into a
        staging folder; the registry adds SHA256SUMS, makes everything read-only and moves
        the folder into place in one rename. An existing version is never overwritten.
        """
        name = ModelName(name)
        model_dir = self.model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        version, target = self._reserve(name, version)
        try:
            staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".staging-{version}-"))
        except BaseException:
            target.rmdir()
            raise
        try:
            stage(staging, version)
            lines = [
                f"{sha256_file(p)}  {p.name}"
                for p in sorted(staging.iterdir())
                if p.is_file() and p.name != CHECKSUMS_FILE
            ]
            (staging / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
            for p in staging.iterdir():
                _read_only(p)
            _read_only(staging)
            # Replaces the empty reservation in one step (rename onto an empty folder).
            os.rename(staging, target)
        except BaseException:
            if staging.exists():
                staging.chmod(0o755)
                shutil.rmtree(staging, ignore_errors=True)
            if target.is_dir() and not (target / CHECKSUMS_FILE).exists():
                target.rmdir()
            raise
        self._write_triton_config(name)
        return version

    def _reserve(self, name: ModelName, version: str | None) -> tuple[str, Path]:
        """Claim a version number by creating its (empty) folder.

        Why a folder: `mkdir` is atomic and exclusive, so two trainings publishing at once
        get two numbers (or, for an explicit version, one of them VersionExistsError)
        instead of both staging "the next" version and one failing at the final rename.
        Readers ignore the empty folder: a version exists once its SHA256SUMS does.
        """
        model_dir = self.model_dir(name)
        if version is not None:
            if not is_version_number(version) or int(version) < 1:
                raise RegistryError(f"version must be a positive integer, got {version!r}")
            target = model_dir / str(int(version))
            try:
                target.mkdir()
            except FileExistsError:
                raise VersionExistsError(
                    f"{name.value} version {target.name} already exists at {target}: versions "
                    "are immutable, publish a new one (an empty folder there is a publish in "
                    "progress, or one that crashed: remove it to reuse the number)"
                ) from None
            return target.name, target
        while True:
            taken = [int(p.name) for p in model_dir.iterdir() if is_version_number(p.name)]
            target = model_dir / str(max(taken, default=0) + 1)
            try:
                target.mkdir()
            except FileExistsError:
                continue  # another publisher took it between the listing and mkdir
            return target.name, target

    def promote(self, name: ModelName, version: str) -> None:
        """Point PROMOTED at a verified version (and re-point Triton's configuration)."""
        name = ModelName(name)
        self.verify(name, version)
        _atomic_write_text(self.model_dir(name) / PROMOTED_FILE, f"{version}\n")
        self._write_triton_config(name)

    def _write_triton_config(self, name: ModelName) -> None:
        version = self.promoted(name) or self.latest(name)
        if version is None:
            return
        meta = self.metadata(name, version)
        dims = [int(d) for d in meta["input"]["shape"][1:]]
        text = triton_config(name, dims, version)
        _atomic_write_text(self.model_dir(name) / TRITON_CONFIG_FILE, text)


def _calibrator(name: ModelName, version: str, metadata: dict[str, Any]) -> QuantileCalibrator:
    """The version's calibration table, or IntegrityError naming what is wrong with it."""
    table = metadata.get("calibration")
    if not isinstance(table, dict):
        raise IntegrityError(f"{name.value} version {version}: metadata has no calibration table")
    try:
        return QuantileCalibrator.from_dict(table)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{name.value} version {version}: {exc}") from None


def check_batch(model: LoadedModel, x: npt.ArrayLike) -> F32:
    """The batch as float32 with the shape the model expects, or ValueError saying why."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    width = len(FEATURE_NAMES)
    if model.input_kind is InputKind.ROWS:
        expected = f"(n, {width})"
        ok = arr.ndim == 2 and arr.shape[1] == width
    else:
        expected = f"(n, {model.sequence_length}, {width})"
        ok = arr.ndim == 3 and arr.shape[1:] == (model.sequence_length, width)
    if not ok:
        raise ValueError(f"{model.name.value} expects input {expected}, got {arr.shape}")
    return arr

"""Registry: immutable versions, verified on load, resolved pinned > promoted > latest."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.calibration import QuantileCalibrator
from models.errors import (
    IncompatibleModelError,
    IntegrityError,
    ModelNotFoundError,
    RegistryError,
    VersionExistsError,
)
from models.metadata import feature_contract
from models.registry import (
    LEGACY_ONNX_MAX_ROWS,
    METADATA_FILE,
    PROMOTED_FILE,
    TRITON_CONFIG_FILE,
    Registry,
)
from services.common.config.model import FeatureFlags, ModelFlag, ServingConfig
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.serving.runtime import RuntimePolicy

XGB = ModelName.XGBOOST


def _stage(
    payload: bytes = b"weights",
    schema: str | None = None,
    onnx: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
) -> Callable[[Path, str], None]:
    def stage(folder: Path, version: str) -> None:
        meta: dict[str, object] = {
            "version": version,
            "created_at": "2026-01-01T00:00:00+00:00",
            **feature_contract(),
            "input": {"name": "features", "kind": "rows", "shape": [-1, len(FEATURE_NAMES)]},
            "calibration": QuantileCalibrator.fit(np.arange(1000.0)).to_dict(),
            "metrics": {"holdout": {"roc_auc": 0.9}},
        }
        if schema is not None:
            meta["feature_schema_hash"] = schema
        if onnx is not None:
            meta["onnx"] = onnx
        if training_data is not None:
            meta["training_data"] = training_data
        (folder / METADATA_FILE).write_text(json.dumps(meta))
        (folder / "model.json").write_bytes(payload)
        (folder / "model.onnx").write_bytes(b"onnx")

    return stage


def test_versions_count_up_and_are_immutable(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.publish(XGB, _stage()) == "1"
    assert reg.publish(XGB, _stage()) == "2"
    with pytest.raises(VersionExistsError, match="immutable"):
        reg.publish(XGB, _stage(b"other"), version="1")
    assert reg.versions(XGB) == ["1", "2"]
    folder = reg.version_dir(XGB, "1")
    assert (folder / "model.json").read_bytes() == b"weights"
    mode = (folder / "model.json").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not any(p.name.startswith(".staging") for p in reg.model_dir(XGB).iterdir())


def test_failed_staging_leaves_nothing_behind(tmp_path: Path) -> None:
    reg = Registry(tmp_path)

    def broken(folder: Path, version: str) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.publish(XGB, broken)
    assert reg.versions(XGB) == []
    assert list(reg.model_dir(XGB).iterdir()) == []


def test_trainings_publishing_at_once_get_one_version_each(tmp_path: Path) -> None:
    """Two trainings finishing together both used to stage "the next" version; the second
    failed at the final rename after all its work."""
    reg = Registry(tmp_path)
    both_staging = threading.Barrier(2, timeout=10)
    done: list[str] = []
    errors: list[BaseException] = []
    inner = _stage()

    def stage(folder: Path, version: str) -> None:
        both_staging.wait()  # each is mid-staging while the other chooses its version
        inner(folder, version)

    def publish() -> None:
        try:
            done.append(reg.publish(XGB, stage))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(done) == ["1", "2"]
    assert reg.versions(XGB) == ["1", "2"]
    for version in done:
        assert reg.metadata(XGB, version)["version"] == version
        reg.verify(XGB, version)


def test_a_version_being_published_is_reserved_and_released_on_failure(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    seen: list[list[str]] = []

    def slow(folder: Path, version: str) -> None:
        # While this one stages, its number is taken but not yet a version.
        seen.append(reg.versions(XGB))
        with pytest.raises(VersionExistsError, match="in progress"):
            reg.publish(XGB, _stage(), version=version)
        assert reg.publish(XGB, _stage()) == "2"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        reg.publish(XGB, slow)
    assert seen == [[]]
    assert reg.versions(XGB) == ["2"]
    assert reg.publish(XGB, _stage(), version="1") == "1"  # the failed one's number is free
    assert reg.publish(XGB, _stage(), version="03") == "3"  # one spelling per number
    with pytest.raises(RegistryError, match="positive integer"):
        reg.publish(XGB, _stage(), version="\u00b2")
    (reg.model_dir(XGB) / "\u00b2").mkdir()  # not a version folder: listing ignores it
    assert reg.versions(XGB) == ["1", "2", "3"]
    with pytest.raises(VersionExistsError):
        reg.publish(XGB, _stage(), version="3")


def test_unreadable_metadata_is_listed_with_its_reason_and_refused_by_load(
    tmp_path: Path,
) -> None:
    reg = Registry(tmp_path)
    reg.publish(XGB, _stage())

    def no_calibration(folder: Path, version: str) -> None:
        _stage()(folder, version)
        meta = json.loads((folder / METADATA_FILE).read_text())
        meta["calibration"] = {"raw": [0.0, float("nan")], "level": [0.0, 1.0]}
        meta["metrics"] = ["not", "a", "mapping"]
        (folder / METADATA_FILE).write_text(json.dumps(meta))

    reg.publish(XGB, no_calibration)
    reg.publish(XGB, _stage())
    target = reg.version_dir(XGB, "3") / METADATA_FILE
    os.chmod(target, 0o644)
    target.write_text("{not json")
    listed = {v.version: v for v in reg.list()}
    assert listed["1"].problem is None and listed["1"].metrics == {"roc_auc": 0.9}
    assert listed["2"].problem is None and listed["2"].metrics == {}
    assert "not valid JSON" in str(listed["3"].problem)
    with pytest.raises(IntegrityError, match=r"version 2: calibration table: .*finite"):
        reg.load(XGB, "2")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        reg.metadata(XGB, "3")


def test_tampered_added_or_removed_files_are_detected(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.publish(XGB, _stage())
    reg.load(XGB, "1")
    target = reg.version_dir(XGB, "1") / "model.json"
    os.chmod(target, 0o644)
    target.write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match=r"model\.json"):
        reg.load(XGB, "1")
    reg.publish(XGB, _stage())
    folder = reg.version_dir(XGB, "2")
    os.chmod(folder, 0o755)
    (folder / "extra.bin").write_bytes(b"")
    with pytest.raises(IntegrityError, match="added"):
        reg.load(XGB, "2")


def test_resolution_pinned_then_promoted_then_latest(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(ModelNotFoundError, match="anomaly train"):
        reg.resolve(XGB)
    for _ in range(3):
        reg.publish(XGB, _stage())
    assert reg.resolve(XGB) == "3"
    reg.promote(XGB, "2")
    assert (reg.model_dir(XGB) / PROMOTED_FILE).read_text().strip() == "2"
    assert reg.resolve(XGB) == "2"
    flags = FeatureFlags(models={XGB: ModelFlag(version="1")})
    assert reg.load(XGB, flags=flags).version == "1"
    with pytest.raises(ModelNotFoundError, match="version 9"):
        reg.resolve(XGB, "9")
    listed = {(v.version, v.promoted) for v in reg.list()}
    assert listed == {("1", False), ("2", True), ("3", False)}


def test_triton_config_serves_the_promoted_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.publish(XGB, _stage())
    reg.publish(XGB, _stage())
    config = (reg.model_dir(XGB) / TRITON_CONFIG_FILE).read_text()
    assert 'backend: "onnxruntime"' in config and "versions: [ 2 ]" in config
    assert f"dims: [ {len(FEATURE_NAMES)} ]" in config
    reg.promote(XGB, "1")
    assert "versions: [ 1 ]" in (reg.model_dir(XGB) / TRITON_CONFIG_FILE).read_text()


def test_model_of_another_feature_schema_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.publish(XGB, _stage(schema="0123456789abcdef"))
    with pytest.raises(IncompatibleModelError, match="retrain"):
        reg.load(XGB)


@pytest.mark.parametrize(
    ("recorded", "config", "batches"),
    [
        ({"onnx_max_rows": None}, None, {1: "onnx", 8_192: "onnx"}),
        ({"onnx_max_rows": 64}, None, {64: "onnx", 65: "native"}),
        ({}, None, {LEGACY_ONNX_MAX_ROWS: "onnx", LEGACY_ONNX_MAX_ROWS + 1: "native"}),
        ({"onnx_max_rows": None}, 16, {16: "onnx", 17: "native"}),
    ],
    ids=["every-batch", "recorded-limit", "older-version", "configured"],
)
def test_auto_runtime_follows_the_versions_record(
    tmp_path: Path, recorded: dict[str, Any], config: int | None, batches: dict[int, str]
) -> None:
    """The servers' `auto` runtime uses ONNX up to the limit the version records for its
    export; versions that record none keep the old limit; the configuration overrides."""
    registry = Registry(tmp_path)
    model = registry.load(XGB, registry.publish(XGB, _stage(onnx=recorded)))
    policy = RuntimePolicy.from_config(
        ServingConfig(runtime="auto", onnx_max_rows=config, gpu="never")
    )
    assert {rows: policy.choose(model, rows) for rows in batches} == batches


def test_serving_a_version_list_refuses_an_empty_or_odd_list_and_loads_each_once(
    tmp_path: Path,
) -> None:
    from services.common.config import PlatformConfig
    from services.serving.server import load_versions

    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(XGB, _stage())
    config = PlatformConfig()
    for spec in (",", " , "):
        with pytest.raises(RegistryError, match="names no version"):
            load_versions(reg, XGB, config, spec)
    with pytest.raises(RegistryError, match="not a version number"):
        load_versions(reg, XGB, config, "2,../1")
    loaded, default = load_versions(reg, XGB, config, "1, 2,1")
    assert [m.version for m in loaded] == ["1", "2"]
    assert default == "2"

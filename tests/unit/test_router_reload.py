"""Hot reload of the configuration file: applied, rejected, symlink swaps, restart-only keys."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.config import load_config
from services.common.model_names import ModelName
from services.router.config_reload import MASK, Change, ConfigReloader, diff
from services.router.core import LiveConfig
from services.router.metrics import RouterMetrics

BASE: dict[str, Any] = {
    "flags": {"models": {"xgboost": {"enabled": True}}},
    "ensemble": {"strategy": "weighted"},
    "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
}


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data))


def with_changes(**sections: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **sections}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> RouterMetrics:
    return RouterMetrics(registry)


def reloads(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value("anomaly_router_config_reloads_total", {"outcome": outcome})
    return value or 0.0


def wait_for(predicate: Any, timeout_s: float = 3.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "not within the deadline"
        time.sleep(0.02)
    return time.monotonic() - started


def test_valid_change_is_applied_within_3s_with_a_logged_diff(
    tmp_path: Path, metrics: RouterMetrics, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path = tmp_path / "platform.yaml"
    write(path, BASE)
    live = LiveConfig(load_config(path))
    caplog.set_level(logging.INFO, logger="services.router.config_reload")
    with ConfigReloader(path, live, metrics, interval_s=0.1):
        write(path, with_changes(flags={"models": {"xgboost": {"version": "1"}}}))
        took = wait_for(lambda: live.get().flags.models[ModelName.XGBOOST].version == "1")
    assert took < 3.0
    assert "flags.models.xgboost.version: None -> '1'" in caplog.text
    assert reloads(registry, "applied") == 1


def test_invalid_change_is_rejected_and_the_last_good_config_stays(
    tmp_path: Path, metrics: RouterMetrics, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path = tmp_path / "platform.yaml"
    write(path, BASE)
    live = LiveConfig(load_config(path))
    before = live.get()
    reloader = ConfigReloader(path, live, metrics)
    assert reloader.check() == "no_change"
    write(path, with_changes(ensemble={"strategy": "majority"}))
    assert reloader.check() == "rejected"
    assert live.get() is before
    assert "ensemble.strategy = 'majority'" in caplog.text  # the ConfigError's own message
    assert reloads(registry, "rejected") == 1
    assert reloader.check() == "unchanged"  # the same bad file is not re-reported every poll
    path.write_text("flags: [unclosed")
    assert reloader.check() == "rejected"
    assert "YAML syntax error" in caplog.text
    write(path, with_changes(flags={"alerts_enabled": False}))
    assert reloader.check() == "applied"
    assert live.get().flags.alerts_enabled is False


@pytest.mark.parametrize(
    "ensemble",
    [{"weights": {"xgboost": float("nan")}}, {"weights": {"xgboost": float("inf")}},
     {"default_threshold": float("nan")}, {"thresholds": {"price_spike": float("nan")}}],
    ids=["nan-weight", "inf-weight", "nan-default-threshold", "nan-type-threshold"],
)  # fmt: skip
def test_a_non_finite_number_is_rejected(
    tmp_path: Path, metrics: RouterMetrics, ensemble: dict[str, Any]
) -> None:
    """YAML's `.nan` passed `weight >= 0`-style checks (NaN compares false), and a NaN weight
    makes every weighted score NaN: nothing would ever be flagged, silently."""
    path = tmp_path / "platform.yaml"
    write(path, BASE)
    live = LiveConfig(load_config(path))
    before = live.get()
    reloader = ConfigReloader(path, live, metrics)
    write(path, with_changes(ensemble={"strategy": "weighted", **ensemble}))
    assert ".nan" in path.read_text() or ".inf" in path.read_text()
    assert reloader.check() == "rejected"
    assert live.get() is before


def configmap_dir(root: Path, version: str, data: dict[str, Any]) -> None:
    """Kubernetes' atomic writer: files in a timestamped folder, `..data` links to it, and the
    visible file links through `..data`; an update swaps `..data` with one rename."""
    folder = root / f"..{version}"
    folder.mkdir()
    write(folder / "platform.yaml", data)
    os.utime(folder / "platform.yaml", (1_700_000_000, 1_700_000_000))  # same mtime each time
    link = root / "..data_tmp"
    link.symlink_to(folder.name)
    link.replace(root / "..data")
    visible = root / "platform.yaml"
    if not visible.is_symlink():
        visible.symlink_to("..data/platform.yaml")


def test_configmap_symlink_swap_is_detected(tmp_path: Path, metrics: RouterMetrics) -> None:
    configmap_dir(tmp_path, "2024_05_01_a", BASE)
    path = tmp_path / "platform.yaml"
    live = LiveConfig(load_config(path))
    stat_before = path.stat()
    with ConfigReloader(path, live, metrics, interval_s=0.1):
        configmap_dir(
            tmp_path,
            "2024_05_01_b",
            with_changes(flags={"models": {"xgboost": {"enabled": False}}}),
        )
        assert path.stat().st_mtime == stat_before.st_mtime  # mtime alone would miss it
        wait_for(lambda: not live.get().flags.models[ModelName.XGBOOST].enabled)


def test_restart_only_change_is_ignored_with_a_warning(
    tmp_path: Path, metrics: RouterMetrics, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path = tmp_path / "platform.yaml"
    write(path, BASE)
    live = LiveConfig(load_config(path))
    reloader = ConfigReloader(path, live, metrics)
    reloader.check()
    write(path, with_changes(kafka={"bootstrap_servers": "broker:9092"}))
    assert reloader.check() == "restart_required"
    assert live.get().kafka.bootstrap_servers == "127.0.0.1:9092"
    assert "needs a restart" in caplog.text
    assert "kafka.bootstrap_servers: '127.0.0.1:9092' -> 'broker:9092'" in caplog.text
    assert reloads(registry, "restart_required") == 1

    # A mixed change applies the hot part only; the restart-only part stays as it runs.
    write(
        path,
        with_changes(
            kafka={"bootstrap_servers": "broker:9092"},
            ensemble={"strategy": "k_of_n", "k": 2},
            alerts={"severity_min_score": {"critical": 0.999}, "outbox_path": "elsewhere.db"},
        ),
    )
    assert reloader.check() == "applied"
    cfg = live.get()
    assert cfg.ensemble.strategy == "k_of_n"
    assert cfg.alerts.severity_min_score == {"critical": 0.999}
    assert cfg.alerts.outbox_path == "var/alerts/outbox.db"
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"


def test_secrets_are_masked_in_diffs(tmp_path: Path) -> None:
    old = load_config(None)
    new = old.model_copy(
        update={
            "alerts": old.alerts.model_copy(update={"routing_key": SecretStr("new-key-value")}),
            "kafka": old.kafka.model_copy(update={"extra": {"sasl.password": "hunter2"}}),
        }
    )
    lines = [c.describe() for c in diff(old, new)]
    assert f"alerts.routing_key: None -> '{MASK}'" not in lines  # masked, not quoted
    assert f"alerts.routing_key: None -> {MASK}" in lines
    assert f"kafka.extra.sasl.password: (absent) -> {MASK}" in lines
    assert not any("hunter2" in line or "new-key-value" in line for line in lines)
    assert Change("a.b", SecretStr("x"), SecretStr("y")).describe() == f"a.b: {MASK} -> {MASK}"


def test_unreadable_file_is_rejected_once_and_recovers(
    tmp_path: Path, metrics: RouterMetrics
) -> None:
    path = tmp_path / "platform.yaml"
    write(path, BASE)
    live = LiveConfig(load_config(path))
    reloader = ConfigReloader(path, live, metrics)
    reloader.check()
    path.unlink()
    assert reloader.check() == "rejected"
    assert reloader.check() == "unchanged"
    write(path, BASE)
    assert reloader.check() == "no_change"

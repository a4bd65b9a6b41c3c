"""`anomaly train / evaluate / models ...` through Typer, as the lead registers them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from services.cli.models_cmd import evaluate, models_app, train

pytest.importorskip("torch")


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.add_typer(models_app, name="models")
    return app


def train_small_forest(store: Path, *options: str) -> dict[str, Any]:
    """`anomaly train` of an Isolation Forest on 3,000 generated events (seed 3, 100
    entities) with `options` into `store`; the new version's metadata."""
    result = CliRunner().invoke(
        make_app(),
        ["train", "--model", "isolation_forest", "--events", "3000", "--seed", "3",
         "--entities", "100", *options, "--store", str(store), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta: dict[str, Any] = json.loads(
        (store / "isolation_forest" / "1" / "metadata.json").read_text()
    )
    return meta


def evaluate_forest_only(store: Path) -> dict[str, Any]:
    """`anomaly evaluate --events 3000` of a store holding only an Isolation Forest (the
    other models disabled by flags); the report, written next to the store."""
    config = store / "platform.yaml"
    config.write_text(
        "flags:\n  models:\n    xgboost: {enabled: false}\n    transformer: {enabled: false}\n"
    )
    evaluated = CliRunner().invoke(
        make_app(),
        ["evaluate", "--events", "3000", "--store", str(store), "--config", str(config),
         "--out", str(store / "report"), "--skip-adbench", "--quiet"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    report: dict[str, Any] = json.loads((store / "report" / "report.json").read_text())
    return report


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli_store")


@pytest.fixture(scope="module")
def trained_store(store: Path) -> Path:
    result = CliRunner().invoke(
        make_app(),
        ["train", "--model", "isolation_forest", "--events", "6000", "--seed", "3",
         "--entities", "200", "--store", str(store), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "isolation_forest  version 1" in result.output
    return store


def test_list_show_promote(trained_store: Path) -> None:
    runner, app, store = CliRunner(), make_app(), str(trained_store)
    listed = runner.invoke(app, ["models", "list", "--store", store])
    assert listed.exit_code == 0 and "isolation_forest" in listed.output
    promoted = runner.invoke(app, ["models", "promote", "isolation_forest", "1", "--store", store])
    assert promoted.exit_code == 0, promoted.output
    assert (trained_store / "isolation_forest" / "PROMOTED").read_text().strip() == "1"
    shown = runner.invoke(app, ["models", "show", "isolation_forest", "--store", store])
    meta = json.loads(shown.output)
    assert meta["promoted"] is True and meta["version"] == "1" and meta["seed"] == 3
    missing = runner.invoke(app, ["models", "promote", "isolation_forest", "7", "--store", store])
    assert missing.exit_code == 2 and "no version 7" in missing.output
    unknown = runner.invoke(app, ["models", "show", "forest", "--store", store])
    assert unknown.exit_code == 2 and "unknown model" in unknown.output


def test_evaluate_with_flags_disabling_models(trained_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "platform.yaml"
    config.write_text(
        "flags:\n  models:\n    xgboost: {enabled: false}\n    transformer: {enabled: false}\n"
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        make_app(),
        ["evaluate", "--events", "6000", "--store", str(trained_store), "--config", str(config),
         "--out", str(out), "--skip-adbench", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"isolation_forest"}
    assert "seed=4" in report["source"]  # training seed + 1
    same_seed = CliRunner().invoke(
        make_app(),
        ["evaluate", "--events", "6000", "--seed", "3", "--store", str(trained_store),
         "--config", str(config), "--out", str(out), "--skip-adbench", "--quiet"],
    )  # fmt: skip
    assert same_seed.exit_code == 2 and "training seed" in same_seed.output


def test_bad_training_file_is_one_clear_line(tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    data.write_text("event_id,entity_id,ts,kind,amount,colour\n")
    result = CliRunner().invoke(
        make_app(), ["train", "--data", str(data), "--store", str(tmp_path / "s"), "--quiet"]
    )
    assert result.exit_code == 2
    assert "unknown column(s): colour" in result.output
    assert "Traceback" not in result.output


def test_event_rate_sets_the_time_scale_the_features_are_learnt_at() -> None:
    """--event-rate reaches the generator: the same events, packed 20x denser in event time,
    come 20x closer to their entity's previous event (what a model trained at 1,000/s would
    misread at 20,000/s)."""
    from services.cli.models_cmd import _dataset
    from services.common.config import PlatformConfig
    from services.common.features.definition import FEATURE_NAMES

    since_prev = FEATURE_NAMES.index("time_since_prev_s")
    cfg = PlatformConfig()

    def features(per_s: float) -> Any:
        return _dataset(cfg, None, None, 5, 20_000, 200, 0.01, per_s, lambda _: None)[0]

    slow, fast = features(1_000.0), features(20_000.0)
    assert list(slow.event_ids) == list(fast.event_ids)
    tail = slice(5_000, None)  # every entity seen: no first-event cap of one hour
    ratio = np.median(slow.matrix[tail, since_prev]) / np.median(fast.matrix[tail, since_prev])
    assert 15 < ratio < 25, ratio


def test_train_records_the_event_rate_of_its_stream(tmp_path: Path) -> None:
    meta = train_small_forest(tmp_path, "--event-rate", "25000")
    assert meta["training_data"]["source"].endswith("event_rate=25000/s")
    refused = CliRunner().invoke(
        make_app(), ["train", "--event-rate", "0", "--store", str(tmp_path), "--quiet"]
    )
    assert refused.exit_code == 2 and "event-rate" in refused.output
    report = evaluate_forest_only(tmp_path)
    evaluated_rate = float(report["source"].rsplit("event_rate=", 1)[1].removesuffix("/s"))
    assert evaluated_rate == pytest.approx(25_000, rel=0.05)  # the training rate, not 1,000/s


def test_evaluate_refuses_to_guess_between_training_rates() -> None:
    from types import SimpleNamespace

    from services.cli.errors import UserError
    from services.cli.models_cmd import _training_event_rate
    from services.common.model_names import ModelName

    def model(version: int, per_s: float | None) -> SimpleNamespace:
        data = {} if per_s is None else {"events_per_s": per_s}
        return SimpleNamespace(version=version, metadata={"training_data": data})

    old = {ModelName.ISOLATION_FOREST: model(1, None), ModelName.XGBOOST: model(2, 1_000.0)}
    assert _training_event_rate(old) == 1_000.0  # unrecorded rates were the 1,000/s default
    mixed = {ModelName.ISOLATION_FOREST: model(1, 5_000.0), ModelName.XGBOOST: model(2, 1_000.0)}
    with pytest.raises(UserError, match=r"xgboost v2 at 1,000/s; isolation_forest v1 at 5,000/s"):
        _training_event_rate(mixed)


def test_train_warm_up_and_the_evaluation_stream_age(tmp_path: Path) -> None:
    """A training warm-up is made in addition to --events, kept out of fit and calibration,
    and evaluate's default warm-up is then the whole age of the calibration (warm-up + fit)."""
    data = train_small_forest(tmp_path, "--warmup-events", "2000")["training_data"]
    assert (data["events"], data["warmup_events"], data["fit_events"]) == (5_000, 2_000, 2_400)
    assert data["holdout_events"] == 600
    assert "the first 2,000 for warm-up only" in data["source"]
    report = evaluate_forest_only(tmp_path)
    assert report["stream"]["warmup_events"] == 4_400
    assert report["stream"]["events"] == 7_400
    # The generator's ceiling of the same test part: an upper bound of what was measured.
    oracle = report["oracle"]
    assert oracle["events"] == report["stream"]["test_events"]
    assert report["comparison"]["ensemble_at_target"]["tpr"] <= oracle["tpr"] <= 1.0
    assert "oracle ceiling" in (tmp_path / "report" / "report.md").read_text()
    negative = CliRunner().invoke(
        make_app(),
        ["train", "--model", "isolation_forest", "--data", str(tmp_path / "missing.jsonl"),
         "--warmup-events", "-1", "--store", str(tmp_path), "--quiet"],
    )  # fmt: skip
    assert negative.exit_code == 2 and "warmup-events" in negative.output

"""The typed configuration: good files load, bad files fail with the field, value and file named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app
from services.common.anomaly_types import AnomalyType
from services.common.config import ConfigError, load_config
from services.common.config.model import PlatformConfig, RedisOnlineStore, SqliteOnlineStore
from services.common.model_names import ModelName

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "platform.yaml"


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell may export ANOMALY_* variables; tests must not see them."""
    import os

    for key in list(os.environ):
        if key.startswith("ANOMALY_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid_and_matches_documented_defaults() -> None:
    cfg = load_config(REPO_CONFIG)
    assert cfg.kafka.topics.events.partitions == 32
    assert isinstance(cfg.feast.online_store, SqliteOnlineStore)
    assert cfg.ensemble.thresholds[AnomalyType.SLOW_DRIFT] == 0.995
    assert cfg.ensemble.cascade.uncertain_high == 0.9995
    assert set(cfg.flags.models) == set(ModelName)


def test_empty_file_gives_complete_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert set(cfg.ensemble.thresholds) == set(AnomalyType)
    assert cfg.serving.endpoints[ModelName.XGBOOST].grpc_target == "127.0.0.1:8111"


def test_online_store_is_selected_by_type(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "feast:\n  online_store: {type: redis, connection_string: 'r:6380'}\n")
    )
    assert isinstance(cfg.feast.online_store, RedisOnlineStore)
    assert cfg.feast.online_store.connection_string == "r:6380"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_servers: from-file:9092\n  client_id: file\n")
    monkeypatch.setenv("ANOMALY_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    cfg = load_config(path)
    assert cfg.kafka.bootstrap_servers == "from-env:9092"
    # Deep merge: a sibling key from the file survives the override.
    assert cfg.kafka.client_id == "file"


def test_secret_from_environment_is_masked_in_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_ALERTS__ROUTING_KEY", "R0UT1NGKEY")
    cfg = load_config(REPO_CONFIG)
    assert cfg.alerts.routing_key is not None
    assert cfg.alerts.routing_key.get_secret_value() == "R0UT1NGKEY"
    assert "R0UT1NGKEY" not in repr(cfg)
    result = CliRunner().invoke(app, ["config", "show", "-c", str(REPO_CONFIG), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert "R0UT1NGKEY" not in result.output
    assert "**********" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ensemble:\n  thresholds: {price_spike: 1.5}\n", "ensemble.thresholds"),
        ("ensemble:\n  thresholds: {price_spike: 1.5}\n", "1.5"),
        ("ensemble:\n  thresholds: {price_spik: 0.5}\n", "price_spik"),
        ("ensemble:\n  treshold: 0.5\n", "ensemble.treshold: unknown key"),
        ("ensemble:\n  strategy: majority\n", "ensemble.strategy = 'majority'"),
        ("ensemble:\n  weights: {xgboost: -1}\n", "weight of xgboost must be >= 0"),
        (
            "kafka:\n  topics:\n    events: {name: events, partitions: 0}\n",
            "kafka.topics.events.partitions = 0",
        ),
        ("feast:\n  online_store: {type: cassandra}\n", "feast.online_store"),
        (
            "ensemble:\n  cascade: {uncertain_low: 0.9, uncertain_high: 0.2}\n",
            "uncertain_low (0.9)",
        ),
        (
            "serving:\n  endpoints:\n    xgboost: {rest_url: 'ftp://x'}\n",
            "serving.endpoints.xgboost.rest_url",
        ),
        (
            "flags:\n  suppressed_entities: [a]\n  forced_entities: [a]\n",
            "both suppressed and forced",
        ),
        ("kafka:\n  security_protocol: SASL_SSL\n", "needs sasl_mechanism"),
        ("router:\n  stream_batch_max: 0\n", "router.stream_batch_max = 0"),
        ("router:\n  stream_max_in_flight: 1001\n", "router.stream_max_in_flight = 1001"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("kafka: {bootstrap_servers: [unclosed\n", "line 2"),
    ],
)
def test_bad_files_name_field_value_and_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "ensemble:\n  k: 9\n  strategy: nope\nkafka:\n  linger: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 3


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_validate_exits_2_with_message_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "ensemble:\n  default_threshold: high\n")
    result = CliRunner().invoke(app, ["config", "validate", "-c", str(path)])
    assert result.exit_code == 2
    assert "ensemble.default_threshold = 'high'" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_accepts_shipped_file() -> None:
    result = CliRunner().invoke(app, ["config", "validate", "-c", str(REPO_CONFIG)])
    assert result.exit_code == 0
    assert "valid" in result.output


def run_router_cli(
    monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[Result, list[PlatformConfig]]:
    """`anomaly router ARGS` up to the point where the service would start: the result and
    the configuration the service would have been given."""
    from services.cli import router_cmd
    from services.router import runner

    started: list[PlatformConfig] = []
    monkeypatch.setattr(runner, "run_router", lambda cfg, *_a, **_k: started.append(cfg))
    # The real setup would point the root logger at CliRunner's stream, closed afterwards.
    monkeypatch.setattr(router_cmd, "configure_logging", lambda *_a, **_k: None)
    return CliRunner().invoke(app, ["router", *args]), started


def stream_settings(cfg: PlatformConfig) -> tuple[int, int, int]:
    r = cfg.router
    return r.stream_batch_max, r.stream_batch_timeout_ms, r.stream_max_in_flight


def test_router_stream_settings_come_from_the_config_unless_an_option_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "k" * 16
    path = write(
        tmp_path,
        f"router:\n  stream_batch_max: 700\n  stream_max_in_flight: 2\n  api_keys: [{key}]\n",
    )
    result, started = run_router_cli(monkeypatch, "-c", str(path))
    assert result.exit_code == 0, result.output
    assert stream_settings(started[0]) == (700, 50, 2)  # file, file's default, file

    result, started = run_router_cli(
        monkeypatch, "-c", str(path), "--batch-max", "300", "--batch-timeout-ms", "20"
    )
    assert result.exit_code == 0, result.output
    assert stream_settings(started[0]) == (300, 20, 2)  # the options win, the rest stays
    assert [k.get_secret_value() for k in started[0].router.api_keys] == [key]


def test_router_defaults_equal_the_former_option_defaults(tmp_path: Path) -> None:
    assert stream_settings(load_config(write(tmp_path, ""))) == (5_000, 50, 4)


def test_router_option_out_of_bounds_names_option_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "")
    result, started = run_router_cli(monkeypatch, "-c", str(path), "--max-in-flight", "0")
    assert result.exit_code == 2
    assert "--max-in-flight (router.stream_max_in_flight) = 0" in result.output
    assert "Traceback" not in result.output
    assert started == []


def test_the_helm_chart_votes_as_the_shipped_config() -> None:
    """The chart's config.ensemble is config/platform.yaml's (chosen by `anomaly evaluate`):
    a Helm release votes as the measured figures say (the chart had weights 1 / 2 / 1 and a
    0.9 threshold, which flags about a tenth of normal traffic)."""
    import yaml

    from services.common.config.model import EnsembleConfig

    root = Path(__file__).resolve().parents[2]
    shipped = load_config(root / "config" / "platform.yaml").ensemble
    values = yaml.safe_load((root / "helm" / "anomaly-platform" / "values.yaml").read_text())
    assert EnsembleConfig.model_validate(values["config"]["ensemble"]) == shipped
    assert min(shipped.thresholds.values()) >= 0.99


@pytest.mark.parametrize(
    "flags",
    [
        {"xgboost": {"enabled": False}, "transformer": {"enabled": False}},
        {"xgboost": {"shadow": True}, "transformer": {"enabled": False}},
    ],
)
def test_a_vote_where_every_voting_model_weighs_nothing_is_refused(
    tmp_path: Path, flags: dict[str, object]
) -> None:
    """With the shipped weights (Isolation Forest 0), leaving only the Isolation Forest to
    vote would flag nothing ever, silently: the config is refused, saying why."""
    import yaml

    config = {"ensemble": {"weights": {"isolation_forest": 0.0, "xgboost": 2.0,
                                       "transformer": 0.5}},
              "flags": {"models": flags}}  # fmt: skip
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"every voting model \(isolation_forest\) has weight 0"):
        load_config(path)
    # Other vote rules do not weigh the scores: the same models and weights are fine there.
    config["ensemble"]["strategy"] = "any"  # type: ignore[index]
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).ensemble.strategy == "any"


def test_router_stream_options_override_the_file_within_its_bounds() -> None:
    from services.cli.router_cmd import with_stream_options

    cfg = with_stream_options(load_config(None), stream_scoring_depth=3, stream_batch_max=700)
    assert (cfg.router.stream_scoring_depth, cfg.router.stream_batch_max) == (3, 700)
    with pytest.raises(ConfigError, match=r"--scoring-depth \(router.stream_scoring_depth\) = 0"):
        with_stream_options(cfg, stream_scoring_depth=0)

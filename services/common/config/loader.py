"""Loading the configuration file, with errors a person can act on.

A user mistake in the file must never surface as a traceback: every problem is
reported as `file: dotted.path = value: what is wrong`, all problems at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.common.config.model import PlatformConfig

DEFAULT_CONFIG_PATH = Path("config/platform.yaml")
CONFIG_PATH_ENV = "ANOMALY_CONFIG"
"""Environment variable naming the config file (a Kubernetes ConfigMap mount, say)."""


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the field and the value."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


def resolve_config_path(path: Path | str | None) -> Path | None:
    """Explicit path, else $ANOMALY_CONFIG, else config/platform.yaml if it exists.

    Returns None when no file is named and the default is absent: the built-in
    defaults are then a complete, valid configuration (embedded local mode).
    """
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_PATH_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (or nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}YAML syntax error: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [f"top level must be a mapping of sections, got {type(data).__name__}"]
        )
    return data


def _describe(errors: list[dict[str, Any]]) -> list[str]:
    """One line per pydantic error: `dotted.path = value: message`."""
    problems = []
    for err in errors:
        parts = [str(p) for p in err["loc"]]
        is_key = bool(parts) and parts[-1] == "[key]"
        if is_key:
            parts = parts[:-2]  # drop the offending key and the "[key]" marker
        loc = ".".join(parts) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key (check its spelling)")
        elif err["type"] == "missing":
            problems.append(f"{loc}: required but missing")
        elif is_key:
            problems.append(f"{loc}: key {err.get('input')!r} is not allowed: {msg}")
        elif isinstance(err.get("input"), dict | list):
            problems.append(f"{loc}: {msg}")
        else:
            shown = repr(err.get("input"))
            if len(shown) > 80:
                shown = shown[:77] + "..."
            problems.append(f"{loc} = {shown}: {msg}")
    return problems


def parse_config(data: dict[str, Any], source: str) -> PlatformConfig:
    """Validate a mapping (plus ANOMALY_* environment overrides) into the typed model."""
    try:
        return PlatformConfig(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"{source} (or ANOMALY_* environment overrides)",
            _describe([dict(e) for e in exc.errors()]),
        ) from None


def load_config(path: Path | str | None = None) -> PlatformConfig:
    """Load and validate the platform configuration; call it from `main()`, never at import."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return parse_config({}, "built-in defaults")
    return parse_config(read_yaml_mapping(resolved), str(resolved))


def dump_config(config: PlatformConfig) -> dict[str, Any]:
    """The effective configuration as plain data; secrets print as `**********`."""
    return config.model_dump(mode="json")

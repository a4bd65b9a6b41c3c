"""The typed platform configuration and its loader."""

from services.common.config.loader import ConfigError, dump_config, load_config, parse_config
from services.common.config.model import PlatformConfig

__all__ = ["ConfigError", "PlatformConfig", "dump_config", "load_config", "parse_config"]

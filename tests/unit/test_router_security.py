"""API keys: accepted forms, refusals, constant-time comparison over every key."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from services.common.config import ConfigError, parse_config
from services.router.schemas import RouterError
from services.router.security import CHALLENGE, ApiKeys, bearer_token

KEYS = [SecretStr("first-key-0123456789"), SecretStr("second-key-0123456789")]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_any_configured_key_in_either_header_is_accepted() -> None:
    keys = ApiKeys(KEYS)
    assert keys.enabled
    keys.check(api_key="first-key-0123456789", bearer=None)
    keys.check(api_key=None, bearer="second-key-0123456789")
    keys.check(api_key="wrong", bearer="first-key-0123456789")
    keys.check_metadata([("authorization", "Bearer second-key-0123456789")])
    keys.check_metadata([("x-api-key", "first-key-0123456789"), ("other", "x")])


@pytest.mark.parametrize(
    ("api_key", "bearer", "message"),
    [
        (None, None, "authentication required"),
        ("first-key-012345678", None, "invalid"),  # a prefix is not the key
        ("first-key-0123456789x", None, "invalid"),
        ("", None, "invalid"),
        (None, "FIRST-KEY-0123456789", "invalid"),
    ],
)
def test_refusals_are_401_with_a_challenge(
    api_key: str | None, bearer: str | None, message: str
) -> None:
    with pytest.raises(RouterError) as info:
        ApiKeys(KEYS).check(api_key=api_key, bearer=bearer)
    assert info.value.status == 401
    assert message in info.value.message
    assert info.value.headers == CHALLENGE


def test_no_keys_means_open_doors() -> None:
    keys = ApiKeys([])
    assert not keys.enabled
    keys.check(api_key=None, bearer=None)
    assert not keys.accepts("")


def test_keys_are_held_as_digests_only() -> None:
    keys = ApiKeys(KEYS)
    assert "first-key" not in repr(vars(keys))


def test_short_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"router": {"api_keys": ["first-key-0123456789", "tiny-secret"]}}, "test")
    assert "router.api_keys" in str(info.value) and "[1]" in str(info.value)
    assert "tiny-secret" not in str(info.value)

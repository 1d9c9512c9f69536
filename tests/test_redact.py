"""The one secret scrubber (onex_compose._redact) and every place that quotes a value through it."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from toy_capabilities import plain_mixin

from onex_compose import (
    ConfigurationError,
    ContractError,
    NodeCompute,
    Registry,
    compose,
    explain,
    load_contract,
)
from onex_compose._redact import MASK, Redactor, quote, scrub, scrub_text, sensitive_field
from onex_compose.capabilities._log import logger

SECRET = "hunter2Zq"


# -- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://:hunter2Zq@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://app:hunter2Zq@db/prod", "postgresql://app:***@db/prod"),
    ("amqp://u:p@ss:hunter2Zq@mq/", "amqp://u:***@mq/"),  # an '@' inside the password
    ("https://h/cb?token=hunter2Zq&page=2", "https://h/cb?token=***&page=2"),
    ("redis://cache/0?password=hunter2Zq", "redis://cache/0?password=***"),
    ("access_token=hunter2Zq", "access_token=***"),
    ("X-Api-Key: hunter2Zq", "X-Api-Key: ***"),
    ('{"password": "my hunter2Zq"}', '{"password": "***"}'),
    ("Authorization: Bearer hunter2Zq.abc", "Authorization: Bearer ***"),
    ("headers [('X-Auth-Token', 'hunter2Zq')]", "headers [('X-Auth-Token', '***')]"),
    ("sent bearer hunter2Zq", "sent bearer ***"),
    ("jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", "jwt ***"),
    ("card 4111 1111 1111 1111", "card ***"),
    ("mail ann@example.com", "mail ***@example.com"),
])
def test_text_rules(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize("text", [
    "see https://example.org/page@1", "http://host:8080/path", "took 1733333333000 ms",
    "cache_key=abc", "author: ann", ""])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert scrub_text(text) == text


def test_structures_are_walked_and_keep_their_shapes() -> None:
    point = namedtuple("point", "token other")  # noqa: PYI024
    value = {"user": "ann", "DB-Password": SECRET, "auth": ("u", SECRET),
             "nested": [{"x_api_key": SECRET}, {"url": f"redis://:{SECRET}@h/0"}],
             "tags": frozenset({f"token={SECRET}"}), "p": point(f"Bearer {SECRET}", 1), "n": 3}
    out = scrub(value)
    assert SECRET not in repr(out)
    assert out["user"] == "ann" and out["n"] == 3 and out["DB-Password"] == MASK
    assert out["nested"][1] == {"url": "redis://:***@h/0"}
    assert out["tags"] == frozenset({"token=***"}) and out["p"] == point("Bearer ***", 1)
    assert value["DB-Password"] == SECRET  # the caller's object is untouched
    plain = {"a": [1, "plain"]}
    assert scrub(plain) is plain


def test_depth_and_length_are_bounded() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert "[TOO DEEP]" in repr(scrub(loop))
    shown = quote({"password": SECRET, "data": "x" * 500}, limit=40)
    assert len(shown) == 43 and shown.endswith("...") and SECRET not in shown


def test_quote_scrubs_the_repr_of_other_objects() -> None:
    @dataclass
    class Conn:
        host: str
        password: str

    assert SECRET not in quote(Conn("db", SECRET))


def test_a_redactor_with_its_own_keys_and_mask() -> None:
    r = Redactor(["ssn"], mask="[X]")
    assert r.value({"SSN": 1, "password": "kept"}) == {"SSN": "[X]", "password": "kept"}
    assert r.text("ssn=123 password=kept") == "ssn=[X] password=kept"
    assert r.text(f"redis://:{SECRET}@h") == "redis://:[X]@h"  # URL rules always apply


def test_sensitive_field_is_the_never_echo_rule() -> None:
    assert all(map(sensitive_field, ["redis_url", "db_password", "api_key", "dsn", "auth"]))
    assert not any(map(sensitive_field, ["max_attempts", "namespace", "backend"]))


# -- property: a planted password never survives -----------------------------------------------

_passwords = st.text(st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789-._~+"),
                     min_size=6, max_size=24).map(lambda s: "Pw" + s)

_plantings = [
    lambda pw: {"password": pw},
    lambda pw: {"config": {"nested": [{"API-Key": pw}]}},
    lambda pw: {"url": f"redis://user:{pw}@cache:6379/0"},
    lambda pw: f"redis://:{pw}@cache/0",
    lambda pw: f"postgresql://app:{pw}@db:5432/prod?sslmode=require",
    lambda pw: f"https://api.example.org/v1?x=1&token={pw}&page=2",
    lambda pw: f"redis://cache:6379/0?password={pw}",
    lambda pw: f"login failed: password={pw}, retrying",
    lambda pw: f'{{"client_secret": "{pw}"}}',
    lambda pw: f"Authorization: Bearer {pw}",
    lambda pw: [("session_id", pw), {"cookie": pw}],
    lambda pw: ("token:", f"token: {pw}"),
]


@given(pw=_passwords, which=st.integers(0, len(_plantings) - 1))
def test_property_scrub_never_contains_a_planted_password(pw: str, which: int) -> None:
    value = _plantings[which](pw)
    assert pw not in repr(scrub(value))
    assert pw not in quote(value, limit=1000)
    assert pw not in str(Redactor(mask="[REDACTED]").value(value))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)


@given(_json)
def test_property_scrub_accepts_any_data_and_is_idempotent(value: Any) -> None:
    once = scrub(value)
    assert scrub(once) == once
    assert isinstance(quote(value), str)


@pytest.mark.parametrize("mask", [MASK, "[REDACTED]"])
@given(pw=_passwords, which=st.integers(0, len(_plantings) - 1))
def test_property_scrubbing_twice_changes_nothing(mask: str, pw: str, which: int) -> None:
    r = Redactor(mask=mask)
    text = str(_plantings[which](pw))
    assert r.text(r.text(text)) == r.text(text)
    assert r.text("Authorization: Bearer abc") == f"Authorization: Bearer {mask}"


# -- every place that quotes a value ------------------------------------------------------------


def test_contract_errors_never_print_a_planted_secret() -> None:
    contract = {"node_type": "COMPUTE", "capabilities": ["caching"], "subcontracts": {"caching": {
        "redis_url": {"url": f"redis://:{SECRET}@cache/0"},    # a sensitive field: not shown
        "namespace": {"x": f"redis://:{SECRET}@cache/0"},      # a plain field: scrubbed
        "backend": f"redis://:{SECRET}@cache/0",                # a literal error: scrubbed
        "max_entries": f"token={SECRET}"}}}
    with pytest.raises(ContractError) as info:
        load_contract(contract)
    text = str(info.value)
    assert SECRET not in text
    assert "subcontracts.caching.redis_url: expected a string, got a mapping (value not shown" in text
    assert "redis://:***@cache/0" in text


def test_capability_config_errors_never_echo_a_credential_url_in_a_plain_field() -> None:
    cls = compose(NodeCompute, ["retry"])
    with pytest.raises(ConfigurationError) as info:
        cls(capability_config={"retry": {"max_attempts": f"redis://:{SECRET}@cache/0"}})
    assert SECRET not in str(info.value)
    assert "max_attempts" in str(info.value) and "redis://:***@cache/0" in str(info.value)


@pytest.fixture
def records() -> Any:
    seen: list[dict[str, Any]] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: seen.append(m.record), level="DEBUG")
    yield seen
    logger.remove(sink)
    logger.disable("onex_compose")


def test_log_records_never_contain_a_planted_secret(records: list[dict[str, Any]]) -> None:
    node = compose(NodeCompute, ["logging"])()
    node.log.info(f"connect redis://cache/0?password={SECRET} as token={SECRET}",
                  payload={"note": f"client_secret: {SECRET}"}, dsn=f"postgres://a:{SECRET}@db")
    assert SECRET not in records[0]["message"] + repr(records[0]["extra"])


def test_error_handling_never_logs_a_planted_secret(records: list[dict[str, Any]]) -> None:
    node = compose(NodeCompute, ["error_handling"])()
    node.error_handling.handle_error(
        ConnectionError(f"cannot reach https://h/?access_token={SECRET}"),
        {"operation_name": "db", "query": f"x&token={SECRET}"})
    assert records and all(SECRET not in r["message"] + repr(r["extra"]) for r in records)


def test_health_check_reasons_never_contain_a_planted_secret() -> None:
    from onex_compose.capabilities.health_check import redis_check

    # port 1: nothing listens, the check fails at once and quotes the URL in its reason
    check = redis_check(f"redis://user:{SECRET}@127.0.0.1:1/0?password={SECRET}")
    result = asyncio.run(check())
    assert result["status"] == "unhealthy"
    assert SECRET not in repr(result)
    assert "redis://user:***@127.0.0.1:1/0?password=***" in result["reason"]


def test_explain_notes_go_through_the_scrubber() -> None:
    reg = Registry()
    reg.register(plain_mixin("MixinNoted", {
        "_explain_noted": lambda node: f"backend redis://:{SECRET}@cache/0"}), name="noted")
    text = str(explain(compose(NodeCompute, ["noted"], registry=reg)))
    assert SECRET not in text and "redis://:***@cache/0" in text


def test_the_librarys_own_records_never_contain_a_planted_secret(
        records: list[dict[str, Any]]) -> None:
    # capabilities log outages with the client's error text, which may quote a URL
    err = ConnectionError(f"Error connecting to redis://:{SECRET}@cache:6379/0")
    logger.warning("caching: Redis unreachable ({}: {})", type(err).__name__, err)
    logger.bind(password=SECRET, target=f"redis://u:{SECRET}@h").info("plain")
    assert len(records) == 2
    for r in records:
        assert SECRET not in r["message"] + repr(r["extra"])
    assert "redis://:[REDACTED]@cache:6379/0" in records[0]["message"]


def test_node_loggers_keep_their_own_scrub_keys(records: list[dict[str, Any]]) -> None:
    # the library scrubber is not stacked on a node's logger: its configured keys decide
    node = compose(NodeCompute, ["logging"])(capability_config={"logging": {"scrub_keys": ["ssn"]}})
    node.log.info("x", ssn="123", password="visible-now")
    assert records[0]["extra"]["ssn"] == "[REDACTED]"
    assert records[0]["extra"]["password"] == "visible-now"


def test_a_dsn_passed_as_the_contract_is_not_echoed() -> None:
    cls = compose(NodeCompute, ["retry"])
    with pytest.raises(ConfigurationError) as info:
        cls(f"postgresql://app:{SECRET}@db/prod")
    assert SECRET not in str(info.value) and "postgresql://app:***@db/prod" in str(info.value)


def test_the_redis_url_validator_masks_the_rejected_url() -> None:
    from onex_compose.capabilities._redis import check_redis_url

    with pytest.raises(ValueError, match="got 'http://u:\\*\\*\\*@h/0\\?password=\\*\\*\\*'") as info:
        check_redis_url(f"http://u:{SECRET}@h/0?password={SECRET}")
    assert SECRET not in str(info.value)


def test_a_validators_own_message_is_scrubbed_in_contract_errors() -> None:
    # check_node_type quotes the rejected node type: a pasted DSN must not come back whole
    with pytest.raises(ContractError) as info:
        load_contract({"node_type": f"postgresql://app:{SECRET}@db/prod", "capabilities": []})
    assert SECRET not in str(info.value) and "node_type" in str(info.value)

"""serialization: formats, typed round trips, canonical JSON (RFC 8785), limits, errors, metrics."""

from __future__ import annotations

import dataclasses
import enum
import math
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict

from onex_compose import NodeCompute, NodeEffect, compose
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.capabilities.serialization import (
    DeserializationError,
    PayloadTooLargeError,
    SerializationConfig,
    SerializationError,
    SerializationProtocol,
    Serializer,
    _walk,
)
from onex_compose.capabilities.serialization import _serializer as ser_mod
from onex_compose.exceptions import ConfigurationError, OnexError

FORMATS = ["json", "msgpack", "yaml"]
ALL = [*FORMATS, "pickle"]


@pytest.fixture(params=["msgspec", "msgpack"], ids=["msgspec", "msgpack-lib"])
def msgpack_library(request: pytest.FixtureRequest) -> str:
    """Both MessagePack libraries: ``msgspec`` (the default) and the ``msgpack`` package."""
    return str(request.param)


@pytest.fixture
def s(msgpack_library: str) -> Serializer:
    return Serializer({"allow_pickle": True, "msgpack_library": msgpack_library})


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Item(BaseModel):
    sku: str
    qty: int
    price: Decimal
    at: datetime


@dataclasses.dataclass
class Point:
    x: int
    label: str
    blob: bytes


class Row(TypedDict):
    id: uuid.UUID
    when: date


# -- the node -----------------------------------------------------------------------------------


def test_composes_with_metrics_and_the_facility_satisfies_the_protocol() -> None:
    node = compose(NodeCompute, ["serialization"])()
    assert isinstance(node.serializer, SerializationProtocol)
    assert node.serializer.loads(node.serializer.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    assert hasattr(node, "metrics")


def test_setup_reconfigures_and_keeps_custom_formats() -> None:
    node = compose(NodeCompute, ["serialization"])(
        capability_config={"serialization": {"default_format": "msgpack"}})
    assert node.serializer.dumps([1]) == b"\x91\x01"
    node.serializer.register_format("rev", lambda o: repr(o).encode()[::-1],
                                    lambda b: b[::-1].decode())
    node.setup_serialization({"default_format": "yaml"})
    assert node.serializer.config.default_format == "yaml"
    assert node.serializer.loads(node.serializer.dumps([1], format="rev"), format="rev") == "[1]"


def test_contract_config_section_matches_the_model() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "serialization" / "mixin_serialization.yaml").read_text())
    assert data["serialization_config"] == SerializationConfig().model_dump()
    assert data["composition"]["rank"] == 110
    assert "guard_rank" not in data["composition"]
    assert {a["name"] for a in data["actions"]} == {"dumps", "loads", "canonical",
                                                   "output_model"}


def test_every_metric_the_code_records_is_declared() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "serialization" / "mixin_serialization.yaml").read_text())
    declared = {m["name"]: m["labels"] for m in data["metrics"]}
    node = compose(NodeCompute, ["serialization"])()
    sz = node.serializer
    sz.loads(sz.dumps({"a": 1}))
    sz.canonical({"a": 1})
    with pytest.raises(SerializationError):
        sz.dumps(object())
    with pytest.raises(DeserializationError):
        sz.loads(b"{")
    counters = node.metrics.snapshot()["counters"]
    assert counters
    for series in counters:
        name, _, labels = series.partition("{")
        assert name in declared, series
        assert {p.split("=")[0] for p in labels.rstrip("}").split(",")} == set(declared[name])
    assert counters['serialization_bytes_total{direction="out",format="json"}'] == 7
    assert counters['serialization_bytes_total{direction="in",format="json"}'] == 8
    assert counters['serialization_errors_total{format="json",kind="encode"}'] == 1
    assert counters['serialization_errors_total{format="json",kind="decode"}'] == 1


def test_config_is_frozen_and_forbids_unknown_keys() -> None:
    with pytest.raises(ConfigurationError, match="max_sise"):
        Serializer({"max_sise": 1})
    with pytest.raises(ConfigurationError):
        Serializer({"default_format": "xml"})


def test_composing_without_backends_imports_neither_orjson_nor_msgspec() -> None:
    code = ("import sys; from onex_compose import NodeCompute, compose; "
            "compose(NodeCompute, ['serialization']); "
            "print(sorted(m for m in ('orjson', 'msgspec', 'msgpack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- formats and the unknown-format error --------------------------------------------------------


def test_unknown_format_says_did_you_mean(s: Serializer) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'msgpack'"):
        s.dumps(1, format="msgpak")
    with pytest.raises(ValueError, match="did you mean 'yaml'"):
        s.loads(b"1", format="yml")
    with pytest.raises(ConfigurationError, match="allow_pickle"):
        Serializer().dumps(1, format="pickle")


def test_formats_and_register_format(s: Serializer) -> None:
    assert s.formats == ("json", "msgpack", "yaml", "pickle")
    assert Serializer().formats == ("json", "msgpack", "yaml")
    s.register_format("hex", lambda o: str(o).encode().hex().encode(),
                      lambda b: bytes.fromhex(b.decode()).decode())
    assert "hex" in s.formats
    assert s.loads(s.dumps(42, format="hex"), format="hex") == "42"
    assert s.loads(s.dumps(42, format="hex"), type_=int, format="hex") == 42
    with pytest.raises(ValueError, match="built in"):
        s.register_format("json", str.encode, bytes.decode)
    with pytest.raises(ValueError, match="lowercase"):
        s.register_format("Bad Name", str.encode, bytes.decode)
    with pytest.raises(DeserializationError, match="cannot decode hex"):
        s.loads(b"zz", format="hex")


def test_pickle_is_opt_in_and_round_trips_objects(s: Serializer) -> None:
    value = {"when": datetime(2026, 1, 1, tzinfo=UTC), "set": {1, 2}, "c": Color.RED}
    assert s.loads(s.dumps(value, format="pickle"), format="pickle") == value
    with pytest.raises(SerializationError, match=r"\$\.x"):
        s.dumps({"x": math.inf}, format="pickle")
    with pytest.raises(DeserializationError, match="pickle"):
        s.loads(b"\x80\x05garbage", format="pickle")


def test_json_library_choice_and_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Serializer().json_library == "orjson"
    assert Serializer({"json_library": "stdlib"}).json_library == "stdlib"
    real = ser_mod.importlib.util.find_spec
    monkeypatch.setattr(ser_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("orjson", "msgspec", "msgpack")
                        else real(name, *a))
    assert Serializer().json_library == "stdlib"
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[serialization\]'"):
        Serializer({"json_library": "orjson"})
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[serialization\]'"):
        Serializer({"msgpack_library": "msgspec"})
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[msgpack\]'"):
        Serializer({"msgpack_library": "msgpack"})
    with pytest.raises(ConfigurationError, match=r"pip install"):
        Serializer({"default_format": "msgpack"})
    plain = Serializer()  # json still works; msgpack says how to get it
    assert plain.dumps({"a": 1}) == b'{"a":1}'
    with pytest.raises(ConfigurationError, match=r"pip install"):
        plain.dumps(1, format="msgpack")


# -- typed round trips ---------------------------------------------------------------------------


EVERYTHING = {
    "when": datetime(2026, 12, 4, 10, 15, 30, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "day": date(2026, 12, 4),
    "wait": timedelta(days=1, seconds=3, microseconds=7),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "amount": Decimal("12.3400"),
    "color": Color.GREEN,
    "level": Level.HIGH,
    "raw": b"\x00\xff binary",
    "tags": {"a", "b"},
    "frozen": frozenset({3, 1}),
    "pair": (1, "x"),
    "items": [Item(sku="A", qty=2, price=Decimal("9.99"), at=datetime(2026, 1, 1, tzinfo=UTC))],
    "point": Point(1, "p", b"\x01\x02"),
    "row": {"id": uuid.UUID(int=7), "when": date(2020, 2, 29)},
}


class Everything(TypedDict):
    when: datetime
    day: date
    wait: timedelta
    id: uuid.UUID
    amount: Decimal
    color: Color
    level: Level
    raw: bytes
    tags: set[str]
    frozen: frozenset[int]
    pair: tuple[int, str]
    items: list[Item]
    point: Point
    row: Row


@pytest.mark.parametrize("fmt", ALL)
def test_every_supported_type_round_trips_exactly(s: Serializer, fmt: str) -> None:
    back = s.loads(s.dumps(EVERYTHING, format=fmt), type_=Everything, format=fmt)
    assert back == EVERYTHING
    if fmt == "msgpack":  # msgpack's Timestamp extension carries the instant, in UTC
        assert back["when"].utcoffset() == timedelta(0)
    else:  # ISO 8601 with its offset
        assert back["when"].utcoffset() == timedelta(hours=5, minutes=30)
    assert str(back["amount"]) == "12.3400"


@pytest.mark.parametrize("fmt", FORMATS)
def test_top_level_models_dataclasses_and_lists_of_models(s: Serializer, fmt: str) -> None:
    item = EVERYTHING["items"][0]
    assert s.loads(s.dumps(item, format=fmt), type_=Item, format=fmt) == item
    point = Point(3, "q", b"\xfe\xff")
    assert s.loads(s.dumps(point, format=fmt), type_=Point, format=fmt) == point
    items = [item, item.model_copy(update={"qty": 5})]
    assert s.loads(s.dumps(items, format=fmt), type_=list[Item], format=fmt) == items


def test_without_type_plain_data_comes_back(s: Serializer) -> None:
    assert s.loads(s.dumps({"id": uuid.UUID(int=1), "d": Decimal("1.5")})) == {
        "id": "00000000-0000-0000-0000-000000000001", "d": "1.5"}
    assert Serializer({"decimal_as": "float"}).dumps(Decimal("1.5")) == b"1.5"


def test_type_mismatch_is_a_deserialization_error_with_paths(s: Serializer) -> None:
    data = s.dumps({"sku": "A", "qty": "lots", "price": "x",
                    "at": "2026-01-01T00:00:00+00:00"})
    with pytest.raises(DeserializationError) as info:
        s.loads(data, type_=Item)
    assert [e["loc"] for e in info.value.errors] == [("qty",), ("price",)]
    assert "qty" in str(info.value)
    with pytest.raises(DeserializationError) as info2:
        s.loads(s.dumps({"x": "y", "label": "l", "blob": ""}, format="msgpack"),
                type_=Point, format="msgpack")
    assert info2.value.errors[0]["loc"] == ("x",)


def test_type_adapters_are_cached_per_type(s: Serializer) -> None:
    s.loads(b"[1]", type_=list[int])
    adapter = ser_mod._adapters[list[int]]
    s.loads(b"[2]", type_=list[int])
    assert ser_mod._adapters[list[int]] is adapter


def test_naive_datetimes(s: Serializer) -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    for fmt in ALL:
        with pytest.raises(SerializationError, match=r"\$\.at: naive datetime"):
            s.dumps({"at": naive}, format=fmt)
    utc = Serializer({"naive_datetimes": "utc", "msgpack_library": s.msgpack_library})
    for fmt in FORMATS:
        back = utc.loads(utc.dumps({"at": naive}, format=fmt), type_=dict[str, datetime],
                         format=fmt)
        assert back["at"] == naive.replace(tzinfo=UTC)


# -- hypothesis round trip (every format) --------------------------------------------------------


class Inner(BaseModel):
    name: str
    n: int
    when: datetime


@dataclasses.dataclass(frozen=True)
class Pair:
    left: int
    right: str


_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m)))
_aware = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).flatmap(
    lambda d: _offsets.map(lambda tz: d.replace(tzinfo=tz)))
_text = st.text(max_size=20)

LEAVES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (str, _text),
    (int, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    (float, st.floats(allow_nan=False, allow_infinity=False)),
    (bool, st.booleans()),
    (type(None), st.none()),
    (bytes, st.binary(max_size=20)),
    (datetime, _aware),
    (uuid.UUID, st.uuids()),
    (Decimal, st.decimals(allow_nan=False, allow_infinity=False, places=4,
                          min_value=-(10**12), max_value=10**12)),
    (Color, st.sampled_from(Color)),
    (Inner, st.builds(Inner, name=_text, n=st.integers(-(2**63), 2**63 - 1), when=_aware)),
    (Pair, st.builds(Pair, left=st.integers(-(2**63), 2**63 - 1), right=_text)),
]


def _typed_values() -> st.SearchStrategy[tuple[Any, Any]]:
    leaf = st.sampled_from(LEAVES).flatmap(lambda tv: tv[1].map(lambda v: (tv[0], v)))

    def extend(children: st.SearchStrategy[tuple[Any, Any]]) -> st.SearchStrategy[Any]:
        def as_list(t_and_values: tuple[Any, list[Any]]) -> tuple[Any, Any]:
            return (list[t_and_values[0]], t_and_values[1])

        def lists(tv: tuple[Any, Any]) -> st.SearchStrategy[tuple[Any, Any]]:
            t, _ = tv
            same = children.filter(lambda c: c[0] == t).map(lambda c: c[1])
            return st.lists(same, max_size=4).map(lambda vs: (list[t], [tv[1], *vs]))

        def dicts(tv: tuple[Any, Any]) -> st.SearchStrategy[tuple[Any, Any]]:
            t, v = tv
            return st.dictionaries(_text, st.just(v), max_size=3).map(
                lambda d: (dict[str, t], d))

        return children.flatmap(lists) | children.flatmap(dicts)

    return st.recursive(leaf, extend, max_leaves=8)


@pytest.mark.parametrize(("fmt", "msgpack_library"), [
    ("json", "msgspec"), ("msgpack", "msgspec"), ("msgpack", "msgpack"), ("yaml", "msgspec"),
    ("pickle", "msgspec")])
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(typed=_typed_values())
def test_round_trip_property(fmt: str, msgpack_library: str, typed: tuple[Any, Any]) -> None:
    sz = Serializer({"allow_pickle": True, "msgpack_library": msgpack_library})
    type_, value = typed
    assert sz.loads(sz.dumps(value, format=fmt), type_=type_, format=fmt) == value


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, 2**64, 10**30])
def test_an_int_beyond_64_bits_is_refused_with_its_path(s: Serializer, fmt: str, big: int) -> None:
    with pytest.raises(SerializationError, match=r"\$\.a\[1\]: integer .* signed 64-bit"):
        s.dumps({"a": [0, big]}, format=fmt)
    for edge in (2**63 - 1, -(2**63), 2**53 + 1):
        assert s.loads(s.dumps({"a": [edge]}, format=fmt), format=fmt) == {"a": [edge]}


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_with_their_path(s: Serializer, fmt: str,
                                                        bad: float) -> None:
    with pytest.raises(SerializationError, match=r"\$\.items\[2\]\.v: cannot serialize"):
        s.dumps({"items": [1, None, {"v": bad}]}, format=fmt)
    with pytest.raises(SerializationError, match=r"\$\.point\.x"):
        s.dumps({"point": Measured(x=bad)}, format=fmt)  # a dataclass
    with pytest.raises(SerializationError, match=r"\$\.m\.n\[1\]"):
        s.dumps({"m": Measure(n=[1.0, bad])}, format=fmt)  # a model (its config writes null)


class Measure(BaseModel):
    n: list[float]


@dataclasses.dataclass
class Measured:
    x: float


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_type_is_named_with_its_path(s: Serializer, fmt: str) -> None:
    with socket.socket() as sock:
        with pytest.raises(SerializationError) as info:
            s.dumps({"items": [0, 1, 2, {"conn": sock}]}, format=fmt)
    assert str(info.value) == "$.items[3].conn: cannot serialize a socket.socket"
    assert info.value.path == "$.items[3].conn"
    assert isinstance(info.value, OnexError) and isinstance(info.value, ValueError)
    assert info.value.onex_retriable is False and info.value.onex_breaker_neutral is True


# -- canonical JSON (RFC 8785) -------------------------------------------------------------------


# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_rfc8785_number_vectors(s: Serializer, bits: str, expected: str) -> None:
    import struct

    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert s.canonical(value) == expected.encode()


def test_rfc8785_named_examples(s: Serializer) -> None:
    assert s.canonical(1e21) == b"1e+21"
    assert s.canonical(333333333.33333329) == b"333333333.3333333"
    assert s.canonical(-0.0) == b"0"
    assert s.canonical(1e-7) == b"1e-7"
    assert s.canonical(100.0) == b"100"


def test_rfc8785_sorting_and_string_example(s: Serializer) -> None:
    # RFC 8785 section 3.2.3: sorted by UTF-16 code units
    data = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"}
    out = s.canonical(data).decode()
    assert [v for v in out.split('"') if v in data.values()] == [
        "Carriage Return", "One", "Control", "Latin Small Letter O With Diaeresis",
        "Euro Sign", "Emoji: Grinning Face", "Hebrew Letter Dalet With Dagesh"]
    # section 3.2.4's example object
    example = {"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
               "string": "\u20ac$\u000f\nA'B\"\\\\\"/", "literals": [None, True, False]}
    assert s.canonical(example) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}').encode()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False,
                                                                        allow_infinity=False)
    | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=10), max_size=6), st.randoms(use_true_random=False))
def test_canonical_is_equal_for_equal_data_whatever_the_dict_order(data: dict[str, Any],
                                                                   rnd: Any) -> None:
    sz = Serializer()
    items = list(data.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert sz.canonical(shuffled) == sz.canonical(data)
    import json

    def numbers_as_floats(v: Any) -> Any:  # JCS writes 1e16 as 10000000000000000
        if isinstance(v, dict):
            return {k: numbers_as_floats(x) for k, x in v.items()}
        if isinstance(v, list):
            return [numbers_as_floats(x) for x in v]
        return float(v) if type(v) in (int, float) else v

    assert numbers_as_floats(json.loads(sz.canonical(data))) == numbers_as_floats(data)


def test_canonical_refuses_what_it_cannot_represent(s: Serializer) -> None:
    for bad, where in ((math.nan, "$.a"), (math.inf, "$.a"), (2**53 + 1, "$.a"),
                       (-(2**53) - 1, "$.a")):
        with pytest.raises(SerializationError, match=rf"\{where}"):
            s.canonical({"a": bad})
    assert s.canonical({"a": 2**53}) == b'{"a":9007199254740992}'
    with pytest.raises(SerializationError, match="Unicode"):
        s.canonical({"a": "\ud800"})


def test_canonical_bytes_are_identical_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"z": [1.5, 1e21, -0.0, "\u2028\x7f\x1f\u00e9\U0001f600"], "a": {"b": None, "\u20ac": 1},
            "when": datetime(2026, 1, 1, tzinfo=UTC), "raw": b"\x00", "s": {"b", "a"},
            "d": Decimal("1.10")}
    with_orjson = Serializer().canonical(data)
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson now raises ImportError
    assert _walk._string_encoder() is _walk._stdlib_string
    without = Serializer({"json_library": "auto"})
    assert without.json_library == "orjson" or True
    assert without.canonical(data) == with_orjson
    assert Serializer({"json_library": "stdlib"}).canonical(data) == with_orjson


def test_json_bytes_are_identical_with_orjson_and_stdlib() -> None:
    data = {"a": [1, 2.5, None, True], "s": "\u2028\x1f\u00e9", "t": datetime(2026, 1, 1, tzinfo=UTC),
            "u": uuid.UUID(int=3), "b": b"\xff", "big": 2**60}
    assert Serializer().dumps(data) == Serializer({"json_library": "stdlib"}).dumps(data)


# -- malformed input -----------------------------------------------------------------------------


def test_truncated_msgpack(s: Serializer) -> None:
    data = s.dumps({"a": [1, 2, 3], "b": "text"}, format="msgpack")
    with pytest.raises(DeserializationError, match="cannot decode msgpack") as info:
        s.loads(data[:-3], format="msgpack")
    assert info.value.format == "msgpack"
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, DeserializationError)


@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_utf8(s: Serializer, fmt: str) -> None:
    data = {"json": b'{"a": "\xff\xfe"}', "msgpack": b"\xa2\xff\xfe",
            "yaml": b"a: \xff\xfe\n"}[fmt]
    with pytest.raises(DeserializationError) as info:
        s.loads(data, format=fmt)
    assert info.value.format == fmt
    assert "\\xff" in str(info.value) or fmt == "msgpack"
    assert not isinstance(info.value.__cause__, UnicodeDecodeError | ValueError) or \
        isinstance(info.value.__cause__, SerializationError)


@pytest.mark.parametrize("library", ["orjson", "stdlib"])
def test_malformed_json_gives_line_column_and_an_escaped_excerpt(library: str) -> None:
    sz = Serializer({"json_library": library})
    text = b'{\n  "a": 1,\n  "b": [1, 2,, 3],\n  "secret": "' + b"x" * 200 + b'"}'
    with pytest.raises(DeserializationError) as info:
        sz.loads(text)
    err = info.value
    assert err.line == 3 and err.format == "json"
    assert "line 3" in str(err)
    excerpt = str(err).rsplit("input near there: ", 1)[1]
    assert len(eval(excerpt)) <= 40  # noqa: S307 - our own repr of a str
    assert "x" * 41 not in str(err)
    with pytest.raises(DeserializationError, match="line 3"):  # typed path (pydantic's parser)
        sz.loads(text, type_=dict[str, Any])


@pytest.mark.parametrize("fmt", ["json", "yaml", "msgpack"])
def test_10000_deep_nesting_is_refused_by_the_depth_limit(s: Serializer, fmt: str) -> None:
    if fmt == "json":
        data = b"[" * 10_000 + b"]" * 10_000
    elif fmt == "yaml":
        data = b"[" * 10_000 + b"]" * 10_000
    else:
        data = b"\x91" * 10_000 + b"\x00"
    for type_ in (None, list[Any]):
        with pytest.raises(DeserializationError, match="nesting deeper|nesting") as info:
            s.loads(data, type_=type_, format=fmt)
        assert info.value.kind == "depth"
        assert info.value.__cause__ is None and (  # nothing chained is shown
            info.value.__context__ is None or info.value.__suppress_context__)


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_depth_is_configurable(fmt: str, msgpack_library: str) -> None:
    sz = Serializer({"max_depth": 3, "msgpack_library": msgpack_library})
    ok, deep = [[[1]]], [[[[1]]]]
    assert sz.loads(sz.dumps(ok, format=fmt), format=fmt) == ok
    with pytest.raises(DeserializationError, match="max_depth=3"):
        sz.loads(sz.dumps(deep, format=fmt), format=fmt)
    # brackets inside strings do not count
    assert sz.loads(sz.dumps({"s": "[[[[[[[["}, format=fmt), format=fmt) == {"s": "[[[[[[[["}


def test_yaml_alias_bomb_is_refused_quickly(s: Serializer) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines).encode()
    start = time.monotonic()
    with pytest.raises(DeserializationError, match="yaml"):
        s.loads(bomb, format="yaml")
    assert time.monotonic() - start < 5


def test_yaml_is_safe(s: Serializer) -> None:
    with pytest.raises(DeserializationError, match="yaml"):
        s.loads(b"!!python/object/apply:os.system ['echo hi']", format="yaml")


@pytest.mark.parametrize("fmt", ALL)
def test_max_size_both_directions(fmt: str, msgpack_library: str) -> None:
    sz = Serializer({"max_size": 64, "allow_pickle": True, "msgpack_library": msgpack_library})
    small = sz.dumps({"a": "x" * 10}, format=fmt)
    with pytest.raises(PayloadTooLargeError) as info:
        sz.dumps({"a": "x" * 100}, format=fmt)
    assert info.value.limit == 64 and info.value.size > 64 and info.value.direction == "out"
    assert "64" in str(info.value)
    big = Serializer({"allow_pickle": True}).dumps({"a": "x" * 100}, format=fmt)
    with pytest.raises(PayloadTooLargeError) as info_in:
        sz.loads(big, format=fmt)
    assert info_in.value.direction == "in" and info_in.value.size == len(big)
    assert sz.loads(small, format=fmt) == {"a": "x" * 10}
    with pytest.raises(PayloadTooLargeError):
        sz.canonical({"a": "x" * 100})


def test_errors_pickle_with_their_data() -> None:
    import pickle

    err = DeserializationError("boom", format="json", position=3, line=1, column=4)
    back = pickle.loads(pickle.dumps(err))
    assert (back.format, back.position, back.line, back.column) == ("json", 3, 1, 4)


# -- output models -------------------------------------------------------------------------------


def test_output_model_through_the_facility() -> None:
    node = compose(NodeEffect, ["serialization"])()
    Model = node.serializer.output_model("error_handling", "error_handling_result")
    ok = {"error_category": "network", "handling_action": "retry", "recovery_possible": True,
          "recovery_suggestions": ["retry later"]}
    assert Model.model_validate(ok).recovery_possible is True
    with pytest.raises(Exception, match="recovery_possible"):
        Model.model_validate({**ok, "recovery_possible": "maybe"})
    # and it serves as a type_
    data = node.serializer.dumps(ok)
    assert node.serializer.loads(data, type_=Model) == Model.model_validate(ok)


# -- the fast paths' scans only ever send a value to the walk ------------------------------------


def test_msgpack_values_that_look_suspect_still_round_trip(s: Serializer) -> None:
    value = {"looks_naive": "2026-01-01T00:00:00", "looks_naive_us": "2026-01-01T00:00:00.123456",
             "greek": "\u03c0\u03cf", "text": "NaN and Infinity", "u63": 2**63 - 1,
             "floats": [1.5, -2.25, 1e300], "markers": [127, -1, 2**40, 2**63 - 2**56],
             "one_n": "N1 7AA", "two_n": "NN", "i": "Index"}
    assert s.loads(s.dumps(value, format="msgpack"), format="msgpack") == value
    assert s.loads(s.dumps(value), format="json") == value


def test_bytes_and_errors_are_counted_and_follow_a_new_metrics_facility(
        msgpack_library: str) -> None:
    from onex_compose.capabilities.metrics import Metrics

    first, second = Metrics(), Metrics()
    sz = Serializer({"msgpack_library": msgpack_library}, metrics=first)
    for fmt in FORMATS:
        data = sz.dumps({"a": [1, 2]}, format=fmt)
        sz.loads(data, format=fmt)
        with pytest.raises(SerializationError):
            sz.dumps({"a": math.nan}, format=fmt)
    with pytest.raises(DeserializationError):
        sz.loads(b"[" * 100 + b"]" * 100)
    with pytest.raises(PayloadTooLargeError):
        Serializer({"max_size": 4}, metrics=first).dumps("too long")
    counters = first.snapshot()["counters"]
    for fmt in FORMATS:
        size = len(sz.dumps({"a": [1, 2]}, format=fmt))
        assert counters[f'serialization_bytes_total{{direction="out",format="{fmt}"}}'] == size
        refused = 200 if fmt == "json" else 0  # the too-deep input was read, then refused
        assert counters[f'serialization_bytes_total{{direction="in",format="{fmt}"}}'] == (
            size + refused)
        assert counters[f'serialization_errors_total{{format="{fmt}",kind="encode"}}'] == 1
    assert counters['serialization_errors_total{format="json",kind="depth"}'] == 1
    assert counters['serialization_errors_total{format="json",kind="too_large"}'] == 1
    sz.metrics = second  # the call paths are rebuilt around the new facility's counters
    sz.loads(sz.dumps([1]))
    key = 'serialization_bytes_total{direction="out",format="json"}'
    assert second.snapshot()["counters"][key] == 3
    sz.metrics = None
    assert sz.loads(sz.dumps([1], format="msgpack"), format="msgpack") == [1]


def test_json_values_that_contain_null_still_round_trip(s: Serializer) -> None:
    value = {"a": None, "s": "null", "f": 1.5}
    assert s.loads(s.dumps(value)) == value


@pytest.mark.parametrize("library", ["orjson", "stdlib"])
def test_json_nan_literals_are_refused_on_loads(library: str) -> None:
    with pytest.raises(DeserializationError, match="json"):
        Serializer({"json_library": library}).loads(b"[NaN]")


def test_decimal_non_finite_is_refused_and_decimal_as_float(s: Serializer) -> None:
    for fmt in FORMATS:
        with pytest.raises(SerializationError, match=r"\$\.d"):
            s.dumps({"d": Decimal("NaN")}, format=fmt)
    as_float = Serializer({"decimal_as": "float", "msgpack_library": s.msgpack_library})
    for fmt in FORMATS:
        assert as_float.loads(as_float.dumps({"d": Decimal("1.25")}, format=fmt),
                              format=fmt) == {"d": 1.25}


class LooseDecimals(BaseModel):
    model_config = ConfigDict(allow_inf_nan=True)
    price: Decimal
    ratio: float = 1.0


@dataclasses.dataclass
class Priced:
    price: Decimal


@pytest.mark.parametrize("libraries", [{}, {"json_library": "stdlib", "msgpack_library": "msgpack"},
                                       {"decimal_as": "float"}])
@pytest.mark.parametrize("text", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity"])
def test_decimal_nan_and_infinity_are_refused_with_their_path_wherever_they_are(
        libraries: dict[str, str], text: str) -> None:
    s = Serializer({**libraries, "allow_pickle": True})
    bad = Decimal(text)
    cases = [
        ({"a": [1, {"d": bad}]}, r"\$\.a\[1\]\.d"),
        ({"a": Priced(bad)}, r"\$\.a\.price"),
        (LooseDecimals(price=bad), r"\$\.price"),
        ({"m": [LooseDecimals(price=Decimal(1)), LooseDecimals(price=bad)]}, r"\$\.m\[1\]\.price"),
        (LooseDecimals.model_construct(price=bad, ratio=1.0), r"\$\.price"),
    ]
    for fmt in ALL:
        for value, path in cases:
            with pytest.raises(SerializationError, match=path) as info:
                s.dumps(value, format=fmt)
            assert "Decimal" in str(info.value) and "do not round-trip" in str(info.value)
    with pytest.raises(SerializationError, match=r"\$\.d"):
        s.canonical({"d": bad})


def test_allow_pickle_logs_the_trust_warning_at_setup() -> None:
    from loguru import logger

    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        compose(NodeCompute, ["serialization"])(
            capability_config={"serialization": {"allow_pickle": True}})
        assert any("pickle runs code from the data it loads" in line for line in lines)
        lines.clear()
        compose(NodeCompute, ["serialization"])()
        assert lines == []
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")

"""serialization: one API for JSON, MessagePack and YAML, typed round trips, canonical JSON.

``node.serializer`` turns data into bytes and back:

* ``dumps(obj, format=None) -> bytes`` and ``loads(data, type_=None, format=None)`` for the
  formats ``json`` (orjson when installed, else the standard library; ``json_library``),
  ``msgpack`` (msgspec, else msgpack; ``msgpack_library``), ``yaml`` (safe: written with
  ``yaml.safe_dump``, read through the engine's hardened loader in ``onex_compose._loading``
  with its alias, node and depth caps; never ``yaml.load``) and, only when ``allow_pickle`` is
  true, ``pickle`` (it runs code from the data it loads: only for data from trusted processes,
  the same warning as caching's ``serializer: pickle``). ``register_format(name, dumps, loads)``
  adds a format.
* With ``type_`` (anything pydantic's ``TypeAdapter`` takes), the decoded data is validated into
  it, so values round-trip exactly: aware ``datetime`` (ISO 8601 with its offset; in msgpack its
  Timestamp extension, the same instant in UTC), ``date``, ``time``, ``timedelta`` (ISO 8601
  duration), ``UUID``, ``Decimal`` (a string, exact), ``Enum`` (its value), ``bytes`` (URL-safe
  base64 in the text formats, native bin in msgpack), sets and tuples (lists), Pydantic models
  (``model_dump(mode="json")`` / validation: a model's own config governs its fields, e.g.
  ``ser_json_bytes``), dataclasses, TypedDicts and ``list[Model]``. The ``TypeAdapter`` is built
  once per type and cached. Without ``type_``, plain data comes back.
* ``canonical(obj) -> bytes`` is RFC 8785 (JCS) canonical JSON, for hashes and signatures
  (audit_log, webhook): UTF-8, object keys sorted by their UTF-16 code units (RFC 8785 section
  3.2.3; the same as code-point order except above U+FFFF), no whitespace, numbers in
  ECMAScript's shortest round-trip form (``1e21`` -> ``1e+21``, ``-0`` -> ``0``). NaN,
  infinities and integers beyond +-2**53 are refused. The bytes are the same whichever JSON
  library is installed: the structure and the numbers are written here and both libraries
  escape strings identically (RFC 8785's rules).
* ``output_model(capability, name)`` builds a Pydantic model from a contract's seed 002
  ``output_models`` entry (:mod:`onex_compose.capabilities._output_models`).

Limits, the same in every format: ``max_size`` bytes on what ``dumps`` produces and on what
``loads`` accepts (:class:`PayloadTooLargeError`); ``max_depth`` levels of nesting on ``loads``
(JSON is measured before it is parsed, so 10,000 nested ``[`` is refused by the limit, never a
``RecursionError``). ``dumps`` refuses NaN and infinities (orjson would write ``null``, the
standard library ``NaN``: neither round-trips), integers outside the signed 64-bit range (never
silently a float) and naive datetimes (``naive_datetimes: utc`` treats them as UTC instead),
each error naming the path of the value (``$.items[3].conn: cannot serialize a socket.socket``).

Layout: a package (past ~800 lines, two libraries per format): ``_model`` (config, errors),
``_walk`` (the value walk with paths, canonical JSON), ``_serializer`` (the facility).

Cost: each format's call path is a closure built once per configuration (``node.serializer.
dumps`` is the default format's), so a call is one Python frame around the library; the data
itself is walked only when the library could not be trusted with it (an unsupported type, an
integer past 2**53, a ``null`` in orjson's output that might be a NaN, a marker byte in
msgspec's output). ``benchmarks/bench_serialization.py`` compares every path with the library
underneath. Target ``<= 1.2x + 0.3 µs`` (issue 10), thread CPU time, 839-byte order document:

==========================  =========  =========  =======  ==========  =====================
row                         library    ours       ratio    allowance   what the rest costs
==========================  =========  =========  =======  ==========  =====================
JSON ``dumps``              1.04 µs    1.67 µs    1.62x    1.54 µs     ``null`` search 0.36
JSON ``loads``              2.88 µs    4.00 µs    1.39x    3.75 µs     bracket count 0.6-0.77
msgpack ``dumps``           1.00 µs    1.89 µs    1.90x    1.50 µs     marker checks 0.4
msgpack ``loads``           2.39 µs    3.58 µs    1.50x    3.17 µs     header count 0.5-0.7
``dumps(model)``            3.98 µs    4.43 µs    1.11x    5.08 µs     met
``loads(type_=Order)``      8.01 µs    9.01 µs    1.12x    9.91 µs     met
==========================  =========  =========  =======  ==========  =====================

The four plain-data rows cannot meet it without dropping a check the issue requires. orjson
writes a NaN/infinity as ``null`` with no option to refuse it, so ``dumps`` must search its
output (a C scan of every byte: 0.43 ns a byte, 38% of orjson's own time, where the allowance
is 20% + 0.3 µs); neither orjson nor msgspec has a nesting limit, so ``loads`` must bound the
depth (one ``bytes.translate`` counting the bytes that can open a level: 0.6-0.7 ns a byte;
``bytes.count`` twice and a walk of the decoded value cost more); msgspec writes five kinds of
value the other formats refuse, found by ``memchr`` on their marker bytes (this document's
``N`` of ``N1 7AA`` makes it check for a Decimal ``"NaN"`` too). Each call also counts its
bytes (a bound counter, ~0.1 µs).

Example:
    >>> s = Serializer()
    >>> s.dumps({"b": 1, "a": [True, None]})
    b'{"b":1,"a":[true,null]}'
    >>> s.canonical({"b": 1, "a": [1e21, -0.0, 333333333.33333329]})
    b'{"a":[1e+21,0,333333333.3333333],"b":1}'
    >>> from datetime import datetime, timezone
    >>> s.loads(s.dumps(datetime(2026, 1, 2, tzinfo=timezone.utc), format="msgpack"),
    ...         type_=datetime, format="msgpack")
    datetime.datetime(2026, 1, 2, 0, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from onex_compose import facility
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.serialization._model import (
    DeserializationError,
    PayloadTooLargeError,
    SerializationConfig,
    SerializationError,
)
from onex_compose.capabilities.serialization._serializer import (
    PICKLE_WARNING,
    SerializationProtocol,
    Serializer,
)

__all__ = [
    "PICKLE_WARNING",
    "DeserializationError",
    "MixinSerialization",
    "PayloadTooLargeError",
    "SerializationConfig",
    "SerializationError",
    "SerializationProtocol",
    "Serializer",
]

# ------------------------------------------------------------------------------------------------
# the mixin


class MixinSerialization:
    """Object serialization and deserialization: ``self.serializer``.

    Requires ``metrics`` (bytes and errors are counted).

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["serialization"])()
        >>> node.serializer.loads(node.serializer.dumps({"a": [1, 2]}))
        {'a': [1, 2]}
    """

    __onex_capability__ = "serialization"
    __slots__ = ()

    def setup_serialization(self, config: SerializationConfig | Mapping[str, Any] | None = None,
                            ) -> None:
        """Build the serializer from config (reconfiguring keeps registered custom formats)."""
        node = cast(Any, self)
        old = getattr(node, "serializer", None)
        serializer = Serializer(config, metrics=node.metrics)
        if serializer.config.allow_pickle:
            logger.warning("serialization: allow_pickle is on. {}", PICKLE_WARNING)
        if isinstance(old, Serializer):
            for name, fmt in old._formats.items():
                if fmt.kind == "custom":
                    serializer.register_format(name, fmt.dumps, fmt.loads)
        node.serializer = serializer

    @facility
    def serializer(self) -> Serializer:
        """The node's serializer (default config when setup never ran)."""
        return Serializer(SerializationConfig(), metrics=cast(Any, self).metrics)

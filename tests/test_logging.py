"""The logging capability: bound-once logger, correlation ids across awaits, scrubbing, sinks."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import uuid
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loguru import logger

from onex_compose import ConfigurationError, NodeCompute, NodeEffect, compose, default_registry
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities.logging import (
    REDACTED,
    Correlation,
    LoggingConfig,
    LoggingProtocol,
    MixinLogging,
    Scrubber,
    bind_logger,
    current_correlation_id,
    new_correlation_id,
)
from onex_compose.capabilities.metrics import MixinMetrics

Service = compose(NodeCompute, ["logging"])


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every record loguru emits during the test (message, level, extra), captured by a sink."""
    captured: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        r = message.record
        captured.append({"message": r["message"], "level": r["level"].name,
                         "extra": dict(r["extra"]), "name": r["name"]})

    handler = logger.add(sink, level="TRACE", format="{message}")
    try:
        yield captured
    finally:
        logger.remove(handler)


# -- the bound logger -------------------------------------------------------------------------


def test_log_is_bound_once_with_node_context(records: list[dict[str, Any]]) -> None:
    node = Service(node_id="n-1")
    first = node.log
    node.log.info("one")
    node.log.warning("two {}", 2)
    assert node.log is first  # bound at setup, not per call
    assert [r["message"] for r in records] == ["one", "two 2"]
    assert records[0]["extra"] == {"node_id": "n-1", "node_type": "COMPUTE", "capability": None,
                                   "correlation_id": None}
    assert records[1]["level"] == "WARNING"


def test_binding_happens_at_setup_not_per_call(monkeypatch: pytest.MonkeyPatch,
                                               records: list[dict[str, Any]]) -> None:
    node = Service()
    calls = []
    real_bind = type(logger).bind

    def counting_bind(self: Any, **kw: Any) -> Any:
        calls.append(kw)
        return real_bind(self, **kw)

    monkeypatch.setattr(type(logger), "bind", counting_bind)
    for i in range(5):
        node.log.info("call {}", i)
    assert calls == []
    assert len(records) == 5


def test_node_type_follows_the_base() -> None:
    node = compose(NodeEffect, ["logging"])()
    captured: list[Any] = []
    handler = logger.add(lambda m: captured.append(m.record["extra"]), format="{message}")
    try:
        node.log.info("x")
    finally:
        logger.remove(handler)
    assert captured[0]["node_type"] == "EFFECT"


def test_bind_logger_marks_the_capability(records: list[dict[str, Any]]) -> None:
    node = Service(node_id="n-2")
    log = bind_logger(node, "caching")
    with node.correlation("c-1"):
        log.info("hit", api_key="k")
    assert records[0]["extra"] == {"node_id": "n-2", "node_type": "COMPUTE",
                                   "capability": "caching", "correlation_id": "c-1",
                                   "api_key": REDACTED}


def test_bind_logger_without_the_logging_capability(records: list[dict[str, Any]]) -> None:
    node = compose(NodeCompute, ["metrics"])(node_id="m-1")
    log = bind_logger(node, "metrics")
    with Correlation("c-2"):
        log.info("token {}", "Bearer xyz", password="p")
    extra = records[0]["extra"]
    assert (extra["node_id"], extra["capability"], extra["correlation_id"]) == (
        "m-1", "metrics", "c-2")
    assert extra["password"] == REDACTED
    assert records[0]["message"] == f"token Bearer {REDACTED}"


def test_facility_works_when_setup_never_ran(records: list[dict[str, Any]]) -> None:
    node = _without_setup(Service)  # setup never ran: the node builds the defaults
    node.log.info("hello", secret="s")
    assert records[0]["extra"]["secret"] == REDACTED


# -- correlation ids --------------------------------------------------------------------------


def test_correlation_sets_and_resets_the_shared_context_variable() -> None:
    node = Service()
    assert current_correlation_id() is None
    with node.correlation("req-1") as cid:
        assert cid == "req-1"
        assert _context.correlation_id.get() == "req-1"  # what the event bus reads
        with node.correlation() as inner:
            assert inner == "req-1"  # keeps the id in force
        with node.correlation("req-2"):
            assert current_correlation_id() == "req-2"
        assert current_correlation_id() == "req-1"
    assert current_correlation_id() is None


def test_correlation_generates_a_uuid4_when_none_is_set() -> None:
    node = Service()
    with node.correlation() as cid:
        assert uuid.UUID(hex=cid).version == 4
        assert current_correlation_id() == cid
    ids = {new_correlation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and uuid.UUID(hex=i).version == 4 for i in ids)


def test_correlation_rejects_bad_ids() -> None:
    for bad in ("", 42):
        with pytest.raises(TypeError, match="non-empty string"):
            Correlation(bad)  # type: ignore[arg-type]


async def test_correlation_async_with_and_decorators() -> None:
    node = Service()
    async with node.correlation("a-1") as cid:
        await asyncio.sleep(0)
        assert current_correlation_id() == cid == "a-1"
    assert current_correlation_id() is None

    @node.correlation()
    async def handler() -> str | None:
        await asyncio.sleep(0)
        return current_correlation_id()

    @node.correlation("fixed")
    def sync_handler() -> str | None:
        return current_correlation_id()

    first, second = await handler(), await handler()
    assert first and second and first != second  # a new id per call
    assert sync_handler() == "fixed"
    with node.correlation("outer"):
        assert await handler() == "outer"  # the caller's id is kept
    assert handler.__name__ == "handler"


async def test_correlation_ids_follow_tasks_across_awaits(records: list[dict[str, Any]]) -> None:
    node = Service()

    async def request(i: int) -> None:
        with node.correlation(f"req-{i}"):
            for step in range(3):
                await asyncio.sleep(0.001 * ((i + step) % 3))
                node.log.info("step {} of {}", step, i)

            async def child() -> None:
                await asyncio.sleep(0)
                node.log.info("child of {}", i)

            await asyncio.create_task(child())  # a task created inside inherits the id

    await asyncio.gather(*(request(i) for i in range(10)))
    assert len(records) == 40
    for r in records:
        i = r["message"].split()[-1]
        assert r["extra"]["correlation_id"] == f"req-{i}"
    assert current_correlation_id() is None  # nothing leaked into the caller


# -- scrubbing --------------------------------------------------------------------------------


def test_sensitive_keys_are_scrubbed_recursively(records: list[dict[str, Any]]) -> None:
    node = Service()
    payload = {"user": "ann", "db_password": "pw", "nested": {"X-Api-Key": "k", "ok": [1, 2]},
               "items": [{"token": "t"}, ("Authorization", "x")]}
    node.log.bind(session_cookie="c").info("login", payload=payload, Password="hunter2",
                                             count=3)
    extra = records[0]["extra"]
    assert extra["Password"] == REDACTED
    assert extra["session_cookie"] == REDACTED
    assert extra["count"] == 3
    assert extra["payload"] == {
        "user": "ann", "db_password": REDACTED, "nested": {"X-Api-Key": REDACTED, "ok": [1, 2]},
        "items": [{"token": REDACTED}, ("Authorization", REDACTED)]}
    # the caller's objects are untouched
    assert payload["db_password"] == "pw" and payload["items"][0] == {"token": "t"}


def test_token_like_values_are_masked_in_values_and_message(records: list[dict[str, Any]]) -> None:
    node = Service()
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    node.log.info("got header Bearer abc123.def-ghi_jkl~mno+/= and {}", jwt,
                  header="bearer SECRETVALUE", dsn="postgresql://app:s3cret@db:5432/prod",
                  note="see https://example.org/page@1")
    r = records[0]
    assert r["message"] == f"got header Bearer {REDACTED} and {REDACTED}"
    assert r["extra"]["header"] == f"bearer {REDACTED}"
    assert r["extra"]["dsn"] == f"postgresql://app:{REDACTED}@db:5432/prod"
    assert r["extra"]["note"] == "see https://example.org/page@1"  # no credentials: unchanged


def test_scrub_keys_are_configurable(records: list[dict[str, Any]]) -> None:
    node = Service(capability_config={"logging": {"scrub_keys": ["ssn"]}})
    node.log.info("x", ssn="123", password="visible-now")
    assert records[0]["extra"]["ssn"] == REDACTED
    assert records[0]["extra"]["password"] == "visible-now"


def test_scrubber_keeps_shapes_and_survives_cycles() -> None:
    scrub = Scrubber()
    Point = namedtuple("Point", "token other")  # noqa: PYI024
    assert scrub.value(Point("Bearer x", 1)) == Point(f"Bearer {REDACTED}", 1)
    unchanged = {"a": [1, "plain"]}
    assert scrub.value(unchanged) is unchanged
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert "[TOO DEEP]" in json.dumps(scrub.value(loop), default=str)
    assert scrub.sensitive("ACCESS_TOKEN") and not scrub.sensitive(42)


# -- the node's own sink ----------------------------------------------------------------------


async def test_enabled_sink_writes_this_nodes_json_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    cfg = {"logging": {"enabled": True, "sink": str(path), "json": True, "level": "INFO"}}
    node = Service(capability_config=cfg, node_id="writer")
    other = Service(node_id="other")
    with node.correlation("r-9"):
        node.log.debug("below the level")
        node.log.info("written", password="pw")
    other.log.info("another node")
    await node.aclose()
    node.log.info("after close")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["record"]["message"] for line in lines] == ["written"]
    extra = lines[0]["record"]["extra"]
    assert extra["node_id"] == "writer" and extra["correlation_id"] == "r-9"
    assert extra["password"] == REDACTED


def test_stderr_sink_in_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    node = Service(capability_config={"logging": {"enabled": True}}, node_id="txt")
    with node.correlation("r-1"):
        node.log.warning("hello")
    asyncio.run(node.aclose())
    err = capsys.readouterr().err
    assert "WARNING" in err and "| txt | r-1 |" in err and "hello" in err


def test_the_sink_goes_away_with_the_node(tmp_path: Path) -> None:
    path = tmp_path / "gc.log"
    node = Service(capability_config={"logging": {"enabled": True, "sink": str(path)}},
                   node_id="gc-node")
    log = node.log
    log.info("before")
    del node
    gc.collect()
    log.info("after")  # the same bound logger, but the node's handler was removed
    assert "before" in path.read_text() and "after" not in path.read_text()


def test_reconfiguring_replaces_the_sink(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    node = Service(capability_config={"logging": {"enabled": True, "sink": str(a)}})
    node.setup_logging({"enabled": True, "sink": str(b)})
    node.log.info("to b")
    node.setup_logging(None)
    node.log.info("nowhere")
    assert "to b" not in a.read_text() and "to b" in b.read_text()
    assert "nowhere" not in b.read_text()


def test_nodes_with_a_sink_pickle(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    node = Service(capability_config={"logging": {"enabled": True, "sink": str(path)}},
                   node_id="pickled")
    copy = pickle.loads(pickle.dumps(node))
    copy.log.info("from the copy")
    asyncio.run(copy.aclose())
    asyncio.run(node.aclose())
    assert path.read_text().count("from the copy") == 1


def test_library_records_are_disabled_by_default() -> None:
    """In a fresh interpreter: onex_compose's own records are silent until the app enables them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from loguru import logger\n"
        "from onex_compose import NodeCompute, compose\n"
        "from onex_compose.capabilities.logging import bind_logger\n"
        "logger.remove()\n"
        "logger.add(sys.stdout, format='{name}|{message}')\n"
        "node = compose(NodeCompute, ['logging'])()\n"
        "log = bind_logger(node, 'caching')\n"
        "lib = compile('log.info(\\'from the library\\')', '<lib>', 'exec')\n"
        "exec(lib, {'__name__': 'onex_compose.capabilities.caching', 'log': log})\n"
        "node.log.info('from the application')\n"
        "logger.enable('onex_compose')\n"
        "exec(lib, {'__name__': 'onex_compose.capabilities.caching', 'log': log})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["__main__|from the application",
                   "onex_compose.capabilities.caching|from the library"]


# -- process() guard --------------------------------------------------------------------------


class Worker(NodeCompute, MixinLogging):
    async def process(self, x: int) -> str | None:
        self.log.info("working on {}", x)
        return current_correlation_id()


async def test_every_guarded_process_call_gets_a_correlation_id(
        records: list[dict[str, Any]]) -> None:
    assert "logging" in Worker.__onex_pipeline__
    node = Worker()
    a, b = await node.process(1), await node.process(2)
    assert a and b and a != b
    assert [r["extra"]["correlation_id"] for r in records] == [a, b]
    with node.correlation("caller"):
        assert await node.process(3) == "caller"
    assert current_correlation_id() is None


async def test_the_guard_can_be_switched_off() -> None:
    node = Worker(capability_config={"logging": {"correlate_process": False}})
    assert await node.process(1) is None
    raw = Worker.process.__onex_raw__.__get__(node)
    assert await node._guard_logging(raw)(1) is None


async def test_the_guard_alone() -> None:
    node = Worker()
    raw = Worker.process.__onex_raw__.__get__(node)
    guarded = node._guard_logging(raw)
    assert uuid.UUID(hex=await guarded(1)).version == 4


# -- configuration and composition ------------------------------------------------------------


def test_config_validation() -> None:
    assert LoggingConfig(level="warning").level == "WARNING"
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        LoggingConfig(level="LOUD")
    with pytest.raises(ValueError, match="sink must be"):
        LoggingConfig(sink=" ")
    with pytest.raises(ValueError, match="non-empty"):
        LoggingConfig(scrub_keys=["password", ""])
    with pytest.raises(ConfigurationError, match="did you mean 'level'"):
        Service(capability_config={"logging": {"levle": "INFO"}})


def test_composition_and_protocol() -> None:
    node = Service()
    assert isinstance(node, LoggingProtocol)
    assert Service.__composition__.capabilities == ("logging",)
    assert default_registry.providers("logging_protocol") == ["logging"]

    class Observed(NodeCompute, MixinMetrics, MixinLogging):
        pass

    assert set(Observed.__composition__.capabilities) == {"logging", "metrics"}
    assert Observed.__onex_pipeline__[:2] == ("logging", "metrics")  # correlation outermost


def test_contract_config_section_lists_exactly_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_logging.yaml").read_text("utf-8"))
    assert data["logging_config"] == LoggingConfig().model_dump()
    provided = {d["name"] for d in data["dependencies"] if d["type"] == "protocol"}
    assert provided == {"logging_protocol"}
    try:
        from onex_compose._contracts import ModelMixinContract
    except ImportError:
        return
    assert ModelMixinContract.model_validate(data).capability == "logging"


def test_docstring_examples_run() -> None:
    import doctest

    import onex_compose.capabilities.logging as module

    # the examples run as user code (a module of the application, not of onex_compose, whose
    # own records are disabled by default)
    globs = {**vars(module), "__name__": "example_app"}
    result = doctest.testmod(module, globs=globs,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10
    assert result.failed == 0


def _without_setup(cls):  # type: ignore[no-untyped-def]
    """An instance whose setup hooks never ran (a user _initialize_mixins that does nothing)."""

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract=None, capability_config=None):  # type: ignore[no-untyped-def]
            return None

    return Bare()

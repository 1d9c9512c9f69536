"""The tracing capability: spans, propagation, sampling, correlation, export, isolation.

Every test uses ``exporter: memory`` (``processor: simple`` so ended spans are there at once)
except the OTLP/HTTP tests, which export to a stdlib HTTP server started here on a free port
that decodes ``ExportTraceServiceRequest`` with opentelemetry-proto.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from loguru import logger

from onex_compose import NodeCompute, NodeEffect, compose
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities.event_bus import Event, EventBus, EventBusError
from onex_compose.capabilities.logging import Correlation
from onex_compose.exceptions import ConfigurationError

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from onex_compose.capabilities.tracing import (  # noqa: E402
    NO_SPAN,
    MixinTracing,
    Tracing,
    TracingConfig,
    TracingProtocol,
)

MEMORY = {"exporter": "memory", "processor": "simple"}
_ns = iter(range(10**9))


def ns() -> str:
    return f"tracing-test-{next(_ns)}"


class Echo(NodeCompute):
    async def process(self, x: Any) -> Any:
        if isinstance(x, BaseException):
            raise x
        if x == "publish":
            await self.event_bus.publish("orders.created", {"x": 1})
        if x == "inject":
            return self.tracer.inject({})
        if x == "child":
            with self.tracer.span("child", kind="client", attributes={"k": "v"}):
                return self.tracer.current_trace_id()
        if x == "cancel":
            raise asyncio.CancelledError()
        return x


class SyncEcho(NodeCompute):
    def process(self, x: Any) -> Any:
        if isinstance(x, BaseException):
            raise x
        return x


def node_with(caps: list[str], cls: type = Echo, **config: Any) -> Any:
    config.setdefault("tracing", MEMORY)
    if "event_bus" in caps:
        config.setdefault("event_bus", {"namespace": ns()})
    return compose(cls, ["tracing", *caps])(capability_config=config, node_id="n-1")


def spans(node: Any) -> list[Any]:
    return list(node.tracer.exporter.get_finished_spans())


def by_name(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for span in spans(node):
        assert span.name not in out, f"two spans named {span.name}"
        out[span.name] = span
    return out


def hex_trace(span: Any) -> str:
    return f"{span.context.trace_id:032x}"


def counters(node: Any) -> dict[str, float]:
    return dict(node.metrics.snapshot()["counters"])


# -- contract, config, errors -------------------------------------------------------------------


def test_contract_defaults_equal_the_config_model_and_the_contract_validates() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "tracing" / "mixin_tracing.yaml").read_text("utf-8"))
    assert data["tracing_config"] == TracingConfig().model_dump()
    assert data["composition"]["guard_rank"] == 5 and data["composition"]["rank"] == 80
    assert {m["name"] for m in data["metrics"]} == {"tracing_spans_total",
                                                    "tracing_export_errors_total"}
    assert [a["name"] for a in data["actions"]] == ["span", "inject", "continue_from",
                                                    "current_trace_id", "force_flush"]
    deps = {d["name"]: d["optional"] for d in data["requires_dependencies"]}
    assert deps == {"metrics": False, "health_check": True}


def test_the_modules_doctests_pass() -> None:
    import onex_compose.capabilities.tracing as package
    import onex_compose.capabilities.tracing._model as model
    import onex_compose.capabilities.tracing._tracer as tracer

    for module in (package, model, tracer):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_guard_sits_outside_logging_and_explain_shows_it() -> None:
    from onex_compose import explain

    cls = compose(Echo, ["tracing", "logging", "retry"])
    assert cls.__onex_pipeline__[:3] == ("tracing", "logging", "metrics")
    assert "process() pipeline (outermost first): tracing -> logging" in str(explain(cls))
    assert isinstance(cls().tracer, TracingProtocol)


@pytest.mark.parametrize(("config", "needle"), [
    ({"otlp_endpoint": "collector:4318"}, "otlp_endpoint must be an http:// or https:// URL"),
    ({"otlp_endpoint": "ftp://c/v1/traces"}, "otlp_endpoint must be an http:// or https:// URL"),
    ({"propagators": ["tracecontext", "b3"]}, "unknown propagator(s) 'b3'; allowed: "
                                              "tracecontext, baggage"),
    ({"sampler": "sometimes"}, "sampler"),
    ({"ratio": 1.5}, "ratio"),
    ({"instrument": ["cachng"]}, "instrument lists unknown"),
    ({"span_name": "{klass}.process"}, "span_name may use only"),
    ({"provider": "no colon"}, "provider must be 'module:object'"),
])
def test_bad_configuration_is_a_configuration_error_naming_the_allowed_values(
        config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        compose(NodeCompute, ["tracing"])(capability_config={"tracing": config})
    assert needle in str(info.value)


def test_a_bad_endpoint_from_the_environment_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be"):
        Tracing({"exporter": "otlp_http"})
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://10.1.2.3:4318/v1/traces")
    tracer = Tracing({"exporter": "otlp_http"})
    assert tracer.exporter._endpoint == "http://10.1.2.3:4318/v1/traces"


def test_tracing_without_the_sdk_installed_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("opentelemetry") else real(
                            name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[otel\]'"):
        compose(NodeCompute, ["tracing"])()
    # disabled tracing does not need it
    assert compose(NodeCompute, ["tracing"])(
        capability_config={"tracing": {"enabled": False}}).tracer.enabled is False


def test_otlp_headers_are_secrets_never_shown() -> None:
    cfg = TracingConfig(exporter="otlp_http", otlp_headers={"x-api-key": "s3cret-key"})
    assert "s3cret-key" not in repr(cfg) and "s3cret-key" not in str(cfg.model_dump())
    tracer = Tracing(cfg)
    assert "s3cret-key" not in repr(tracer)  # what is sent: test_otlp_export_delivers_...


# -- the process span ---------------------------------------------------------------------------


async def test_the_process_span_has_the_node_attributes_and_a_child_publish_span() -> None:
    node = node_with(["event_bus"])
    got: list[Event] = []
    node.event_bus.subscribe("orders.created", got.append)
    assert await node.process("publish") == "publish"
    await node.event_bus.drain()
    named = by_name(node)
    process = named["Echo.process"]
    publish = named["orders.created publish"]
    consume = named["orders.created process"]
    assert process.kind is SpanKind.INTERNAL and process.parent is None
    assert process.attributes["onex.node_id"] == "n-1"
    assert process.attributes["onex.node_type"] == "COMPUTE"
    assert process.attributes["onex.correlation_id"] == hex_trace(process)
    assert process.status.status_code is StatusCode.UNSET
    assert publish.kind is SpanKind.PRODUCER and publish.parent.span_id == process.context.span_id
    assert publish.attributes["messaging.destination.name"] == "orders.created"
    # the consumer span is the publish span's child, in the same trace
    assert consume.kind is SpanKind.CONSUMER
    assert consume.parent.span_id == publish.context.span_id
    assert hex_trace(consume) == hex_trace(publish) == hex_trace(process)
    assert got[0].headers["traceparent"].split("-")[1:3] == [
        hex_trace(publish), f"{publish.context.span_id:016x}"]
    assert process.resource.attributes["service.name"] == "Echo"
    assert process.resource.attributes["service.instance.id"] == "n-1"
    await node.aclose()


async def test_a_user_span_inside_process_is_its_child() -> None:
    node = node_with([])
    trace_id = await node.process("child")
    named = by_name(node)
    assert named["child"].parent.span_id == named["Echo.process"].context.span_id
    assert named["child"].kind is SpanKind.CLIENT and named["child"].attributes["k"] == "v"
    assert trace_id == hex_trace(named["Echo.process"])


async def test_an_exception_is_recorded_once_with_status_error_and_a_scrubbed_message() -> None:
    node = node_with([])
    with pytest.raises(ValueError, match="hunter2"):
        await node.process(ValueError("login failed password=hunter2"))
    (span,) = spans(node)
    assert span.status.status_code is StatusCode.ERROR
    events = [e for e in span.events if e.name == "exception"]
    assert len(events) == 1
    attrs = events[0].attributes
    assert attrs["exception.type"] == "ValueError"
    assert "hunter2" not in attrs["exception.message"] and "password=" in attrs["exception.message"]
    assert "hunter2" not in attrs["exception.stacktrace"]
    assert "hunter2" not in span.status.description
    assert span.attributes["onex.retriable"] is False
    assert span.attributes["error.type"] == "ValueError"


async def test_retriable_is_set_from_onex_retriable() -> None:
    from onex_compose.capabilities.event_bus import EventPublishError

    node = node_with([])
    with pytest.raises(EventPublishError):
        await node.process(EventPublishError("redis down"))
    (span,) = spans(node)
    assert span.attributes["onex.retriable"] is True
    assert span.attributes["error.type"] == "onex_compose.capabilities.event_bus.EventPublishError"


async def test_record_exceptions_off_keeps_the_status_but_adds_no_event() -> None:
    node = node_with([], tracing={**MEMORY, "record_exceptions": False})
    with pytest.raises(KeyError):
        await node.process(KeyError("k"))
    (span,) = spans(node)
    assert span.status.status_code is StatusCode.ERROR and not span.events


async def test_a_cancelled_call_is_the_event_cancelled_not_an_error() -> None:
    node = node_with([])
    with pytest.raises(asyncio.CancelledError):
        await node.process("cancel")
    (span,) = spans(node)
    assert [e.name for e in span.events] == ["cancelled"]
    assert span.status.status_code is StatusCode.UNSET


async def test_a_task_cancelled_from_outside_records_cancelled() -> None:
    class Slow(NodeCompute):
        async def process(self, x: Any) -> Any:
            await asyncio.Event().wait()

    node = node_with([], cls=Slow)
    task = asyncio.ensure_future(node.process(1))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (span,) = spans(node)
    assert [e.name for e in span.events] == ["cancelled"]


def test_a_sync_process_is_traced_and_stays_sync() -> None:
    node = node_with(["logging"], cls=SyncEcho)
    assert node.process(3) == 3
    with pytest.raises(RuntimeError):
        node.process(RuntimeError("boom"))
    ok, failed = spans(node)
    assert ok.name == failed.name == "SyncEcho.process"
    assert failed.status.status_code is StatusCode.ERROR
    assert ok.attributes["onex.correlation_id"] == hex_trace(ok)


async def test_span_name_and_trace_process_switches() -> None:
    node = node_with([], tracing={**MEMORY, "span_name": "svc.{class}.handle"})
    await node.process(1)
    assert [s.name for s in spans(node)] == ["svc.Echo.handle"]
    off = node_with([], tracing={**MEMORY, "trace_process": False})
    assert await off.process("child")  # a user span still works
    assert [s.name for s in spans(off)] == ["child"]


async def test_reconfiguring_the_tracer_is_followed_by_the_guard() -> None:
    node = node_with([])
    await node.process(1)
    first = node.tracer
    node.setup_tracing({**MEMORY, "span_name": "again"})
    await node.process(2)
    assert [s.name for s in spans(node)] == ["again"]
    assert [s.name for s in first.exporter.get_finished_spans()] == ["Echo.process"]


async def test_ended_spans_are_counted_by_sampled_flag() -> None:
    node = node_with([])
    await node.process("child")
    assert counters(node)['tracing_spans_total{sampled="true"}'] == 2
    dropped = node_with([], tracing={**MEMORY, "ratio": 0.0})
    await dropped.process("child")
    assert counters(dropped)['tracing_spans_total{sampled="false"}'] == 2
    assert spans(dropped) == []


async def test_long_attribute_values_are_truncated() -> None:
    node = node_with([], tracing={**MEMORY, "attribute_value_max_length": 8})
    with node.tracer.span("s", attributes={"long": "x" * 100}):
        pass
    (span,) = spans(node)
    assert span.attributes["long"] == "x" * 8


# -- correlation ---------------------------------------------------------------------------------


async def test_log_record_event_and_span_share_one_correlation_id() -> None:
    class Logs(NodeCompute):
        async def process(self, x: Any) -> Any:
            self.log.info("handling {}", x)
            return await self.event_bus.publish("orders.created", x)

    node = node_with(["logging", "event_bus"], cls=Logs)
    records: list[dict[str, Any]] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: records.append(dict(m.record["extra"])), level="INFO",
                      filter=lambda r: r["extra"].get("node_id") == "n-1")
    try:
        event = await node.process(1)
    finally:
        logger.remove(sink)
    process = by_name(node)["Logs.process"]
    (record,) = records
    assert record["correlation_id"] == event.correlation_id == hex_trace(process)
    assert record["trace_id"] == hex_trace(process)
    assert record["span_id"] == f"{process.context.span_id:016x}"
    await node.aclose()


async def test_a_callers_correlation_id_is_kept_and_recorded() -> None:
    node = node_with(["logging"])
    with Correlation("req-42"):
        await node.process(1)
    (span,) = spans(node)
    assert span.attributes["onex.correlation_id"] == "req-42"


async def test_correlation_keep_leaves_the_id_to_logging() -> None:
    class Corr(NodeCompute):
        async def process(self, x: Any) -> Any:
            return _context.correlation_id.get()

    node = node_with(["logging"], cls=Corr, tracing={**MEMORY, "correlation": "keep"})
    cid = await node.process(1)
    (span,) = spans(node)
    assert cid is not None and cid != hex_trace(span)
    assert "onex.correlation_id" not in span.attributes  # logging set it inside the span


def test_records_outside_a_span_carry_no_trace_id() -> None:
    Tracing(MEMORY)  # installs the reader
    records: list[dict[str, Any]] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: records.append(dict(m.record["extra"])), level="INFO")
    try:
        node = compose(NodeCompute, ["logging"])()
        node.log.info("plain")
        tracer = Tracing(MEMORY)
        with tracer.span("s"):
            node.log.info("in a span")
    finally:
        logger.remove(sink)
    assert "trace_id" not in records[0]
    assert records[1]["trace_id"] == hex_trace(tracer.exporter.get_finished_spans()[0])


# -- propagation ---------------------------------------------------------------------------------

REMOTE_TRACE = "0af7651916cd43dd8448eb211c80319c"
REMOTE_SPAN = "b7ad6b7169203331"


async def test_inject_writes_traceparent_and_baggage() -> None:
    from opentelemetry import baggage, context

    node = node_with([])
    carrier = await node.process("inject")
    process = spans(node)[0]
    version, trace_id, span_id, flags = carrier["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", hex_trace(process),
                                           f"{process.context.span_id:016x}")
    assert int(flags, 16) & 1
    assert "baggage" not in carrier and "tracestate" not in carrier
    token = context.attach(baggage.set_baggage("tenant", "eu"))
    try:
        with node.tracer.span("s"):
            assert node.tracer.inject({"keep": "me"})["baggage"] == "tenant=eu"
    finally:
        context.detach(token)
    assert node.tracer.inject({"keep": "me"}) == {"keep": "me"}  # no current span


async def test_continue_from_makes_the_remote_span_the_parent_of_the_process_span() -> None:
    node = node_with([])
    headers = {"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01", "tracestate": "v=1"}
    with node.tracer.continue_from(headers) as trace_id:
        assert trace_id == REMOTE_TRACE
        await node.process("child")
    async with node.tracer.continue_from(headers, kind="consumer"):
        await node.process(1)
    server, child, consumer = sorted(spans(node), key=lambda s: s.start_time)
    assert server.kind is SpanKind.SERVER and consumer.kind is SpanKind.CONSUMER
    assert child.kind is SpanKind.CLIENT  # only the span directly under it takes the kind
    for span in (server, consumer):
        assert hex_trace(span) == REMOTE_TRACE
        assert f"{span.parent.span_id:016x}" == REMOTE_SPAN and span.parent.is_remote
        assert span.context.trace_state.get("v") == "1"
    assert node.tracer.current_trace_id() is None  # restored


@pytest.mark.parametrize("headers", [
    None, {}, {"traceparent": "garbage"}, {"traceparent": f"00-{'0' * 32}-{REMOTE_SPAN}-01"},
    {"traceparent": f"ff-{REMOTE_TRACE}-{REMOTE_SPAN}-01"}, {"TraceParent": 7},
])
async def test_continue_from_a_missing_or_invalid_traceparent_starts_a_new_root(
        headers: Any) -> None:
    node = node_with([])
    with node.tracer.span("ambient"):  # an ambient span is not the parent either
        with node.tracer.continue_from(headers) as trace_id:
            assert trace_id is None
            await node.process(1)
    process = by_name(node)["Echo.process"]
    assert process.parent is None and process.kind is SpanKind.SERVER
    assert hex_trace(process) != hex_trace(by_name(node)["ambient"])


async def test_an_unsampled_context_still_propagates_with_the_sampled_bit_clear() -> None:
    node = node_with(["event_bus"], tracing={**MEMORY, "ratio": 0.0})
    got: list[Event] = []
    node.event_bus.subscribe("orders.created", got.append)
    carrier = await node.process("inject")
    await node.process("publish")
    await node.event_bus.drain()
    assert spans(node) == []  # nothing exported
    _, trace_id, _, flags = carrier["traceparent"].split("-")
    assert trace_id != "0" * 32 and not int(flags, 16) & 1
    assert not int(got[0].headers["traceparent"].split("-")[3], 16) & 1
    await node.aclose()


# -- sampling ------------------------------------------------------------------------------------


async def test_parent_ratio_follows_a_sampled_parent_even_at_ratio_zero() -> None:
    node = node_with([], tracing={**MEMORY, "ratio": 0.0})
    await node.process(1)
    assert spans(node) == []
    with node.tracer.continue_from({"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"}):
        await node.process(2)
    (span,) = spans(node)
    assert hex_trace(span) == REMOTE_TRACE
    # and an unsampled parent is followed too, at ratio 1
    always = node_with([])
    with always.tracer.continue_from({"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-00"}):
        await always.process(3)
    assert spans(always) == []


@pytest.mark.parametrize(("sampler", "parent_flags", "exported"), [
    ("ratio", "01", 0), ("always_on", "00", 1), ("always_off", "01", 0),
])
async def test_the_other_samplers_ignore_the_parent(sampler: str, parent_flags: str,
                                                    exported: int) -> None:
    node = node_with([], tracing={**MEMORY, "sampler": sampler, "ratio": 0.0})
    with node.tracer.continue_from(
            {"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-{parent_flags}"}):
        await node.process(1)
    assert len(spans(node)) == exported


# -- isolation -----------------------------------------------------------------------------------


async def test_two_nodes_keep_separate_exporters_and_the_global_provider_is_untouched() -> None:
    before = otel_trace.get_tracer_provider()
    a = compose(Echo, ["tracing"])(capability_config={"tracing": MEMORY}, node_id="a")
    b = compose(Echo, ["tracing"])(capability_config={"tracing": {**MEMORY,
                                                                  "service_name": "bee"}},
                                   node_id="b")
    await a.process(1)
    await b.process(2)
    await b.process(3)
    assert len(spans(a)) == 1 and len(spans(b)) == 2
    assert a.tracer.provider is not b.tracer.provider
    assert spans(b)[0].resource.attributes["service.name"] == "bee"
    assert otel_trace.get_tracer_provider() is before
    assert type(otel_trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"


def test_nothing_from_opentelemetry_is_imported_when_off_or_not_composed() -> None:
    code = """
import asyncio, sys
from onex_compose import NodeCompute, compose
class Echo(NodeCompute):
    async def process(self, x):
        with self.tracer.span("s"):
            self.tracer.add_event("e")
            return self.tracer.inject({})
off = compose(Echo, ["tracing", "logging", "event_bus", "caching"])(
    capability_config={"tracing": {"enabled": False}})
assert asyncio.run(off.process(1)) == {}
class Plain(NodeCompute):
    async def process(self, x):
        await self.event_bus.publish("t", x)
        self.log.info("x")
        return x
plain = compose(Plain, ["logging", "event_bus", "caching", "retry", "circuit_breaker"])()
assert asyncio.run(plain.process(1)) == 1
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_without_tracing_publish_is_the_plain_method() -> None:
    bus = compose(NodeCompute, ["event_bus"])().event_bus
    assert "publish" not in vars(bus)
    traced = node_with(["event_bus"]).event_bus
    assert "publish" in vars(traced)
    untraced = node_with(["event_bus"], tracing={**MEMORY, "instrument": ["retry"]}).event_bus
    assert "publish" not in vars(untraced)


# -- the disabled facility and the API -----------------------------------------------------------


async def test_disabled_tracing_is_a_no_op_facility_and_no_guard() -> None:
    node = node_with([], tracing={"enabled": False})
    assert node.tracer.provider is None and node.tracer.exporter is None
    with node.tracer.span("x") as span:
        assert span is NO_SPAN
        node.tracer.add_event("e", {"a": 1})
        node.tracer.set_attribute("a", 1)
    async with node.tracer.span("y"), node.tracer.continue_from({"traceparent": "x"}):
        pass
    assert node.tracer.inject() == {} and node.tracer.current_trace_id() is None
    assert node.tracer.current_span_id() is None and await node.tracer.force_flush()
    assert node.tracer.for_capability("event_bus") is None
    assert await node.process("child") is None
    assert "tracing" not in [getattr(c, "__qualname__", "") for c in [node._onex_chain[1]]]
    assert node._onex_chain[1].__qualname__ != "Tracing.process_guard.<locals>.traced_process"
    with pytest.raises(ValueError, match="unknown span kind"):
        node.tracer.span("z", kind="sideways")
    await node.aclose()


async def test_span_traced_and_current_ids() -> None:
    tracer = Tracing(MEMORY)
    assert tracer.current_trace_id() is None and tracer.current_span_id() is None
    tracer.add_event("nowhere")  # no current span: nothing happens

    @tracer.traced("load", kind="client", attributes={"a": 1})
    async def load(x: int) -> int:
        tracer.add_event("loaded", {"x": x})
        tracer.set_attribute("b", 2)
        return x * 2

    @tracer.traced()
    def compute() -> str | None:
        return tracer.current_span_id()

    assert await load(2) == 4
    span_id = compute()
    async with tracer.span("outer") as outer:
        assert tracer.current_span_id() == f"{outer.get_span_context().span_id:016x}"
        loose = tracer.start_span("loose")
        loose.end()
    named = {s.name: s for s in tracer.exporter.get_finished_spans()}
    assert named["load"].kind is SpanKind.CLIENT
    assert dict(named["load"].attributes) == {"a": 1, "b": 2}
    assert [(e.name, dict(e.attributes)) for e in named["load"].events] == [("loaded", {"x": 2})]
    assert f"{named[compute.__qualname__].context.span_id:016x}" == span_id
    # start_span: a child of the current span, not made current itself
    assert named["loose"].parent.span_id == named["outer"].context.span_id
    with pytest.raises(ValueError, match="boom"), tracer.span("failing"):
        raise ValueError("boom")
    failing = tracer.exporter.get_finished_spans()[-1]
    assert failing.status.status_code is StatusCode.ERROR


def test_for_capability_follows_the_instrument_list() -> None:
    tracer = Tracing({"instrument": ["retry", "database"]})
    assert tracer.for_capability("retry") is tracer and tracer.instruments("database")
    assert tracer.for_capability("caching") is None
    assert "tracing_spans_total" not in repr(tracer)


# -- lifecycle ------------------------------------------------------------------------------------


def test_a_traced_node_works_across_three_asyncio_runs_and_pickles() -> None:
    node = node_with(["event_bus", "logging"])
    got: list[Event] = []
    node.event_bus.subscribe("orders.created", got.append)

    async def once() -> None:
        await node.process("publish")
        await node.event_bus.drain()

    for _ in range(3):
        asyncio.run(once())
    assert len(got) == 3
    assert [s.name for s in spans(node)].count("Echo.process") == 3
    copy = pickle.loads(pickle.dumps(node))
    assert copy.tracer is not node.tracer and copy.tracer.provider is not node.tracer.provider
    assert asyncio.run(copy.process(5)) == 5
    assert [s.name for s in spans(copy)] == ["Echo.process"]
    assert pickle.loads(pickle.dumps(node.tracer)).config == node.tracer.config
    asyncio.run(node.aclose())
    asyncio.run(copy.aclose())


async def test_close_shuts_down_the_provider_it_built_but_not_an_injected_one() -> None:
    node = node_with([], tracing={"exporter": "memory", "processor": "batch",
                                  "schedule_delay": 60})
    await node.process(1)
    assert spans(node) == []  # still queued in the batch processor
    await node.aclose()
    assert [s.name for s in spans(node)] == ["Echo.process"]  # flushed by close
    await node.aclose()  # idempotent
    INJECTED_EXPORTER.clear()
    injected = compose(Echo, ["tracing"])(capability_config={"tracing": {
        "provider": "test_tracing:INJECTED"}})
    assert injected.tracer.provider is INJECTED and injected.tracer.exporter is None
    await injected.process(1)
    await injected.aclose()
    assert [s.name for s in INJECTED_EXPORTER.get_finished_spans()] == ["Echo.process"]
    with INJECTED.get_tracer("t").start_as_current_span("after close"):
        pass
    assert len(INJECTED_EXPORTER.get_finished_spans()) == 2  # not shut down


INJECTED_EXPORTER = InMemorySpanExporter()
INJECTED = TracerProvider()
INJECTED.add_span_processor(SimpleSpanProcessor(INJECTED_EXPORTER))


def test_an_injected_provider_excludes_an_exporter_and_must_be_a_provider() -> None:
    with pytest.raises(ConfigurationError, match="exclusive"):
        Tracing({"provider": "test_tracing:INJECTED", "exporter": "memory"})
    with pytest.raises(ConfigurationError, match="not an opentelemetry TracerProvider"):
        Tracing({"provider": "test_tracing:MEMORY"})
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        Tracing({"provider": "test_tracing:NOPE"})


async def test_health_is_registered_and_healthy_with_health_check() -> None:
    node = node_with(["health_check"])
    report = await node.health.check()
    assert report["checks"]["tracing"]["status"] == "healthy"


# -- OTLP/HTTP export -----------------------------------------------------------------------------


class Receiver:
    """A stdlib OTLP/HTTP traces receiver: decodes ExportTraceServiceRequest; answers with the
    scripted statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.statuses = list(statuses or [])
        self.spans: list[dict[str, Any]] = []
        self.requests: list[tuple[int, dict[str, str]]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((status, dict(self.headers)))
                if status == 200:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    for rs in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append({
                                    "name": span.name, "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent_id": span.parent_span_id.hex() or None,
                                    "kind": span.kind, "resource": resource,
                                    "attributes": {a.key: a.value for a in span.attributes}})
                    receiver.arrived.set()
                payload = ExportTraceServiceResponse().SerializeToString() if status == 200 \
                    else b"unavailable"
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def otlp_node(url: str, caps: list[str] | None = None, **tracing: Any) -> Any:
    return compose(Echo, ["tracing", *(caps or [])])(capability_config={"tracing": {
        "exporter": "otlp_http", "otlp_endpoint": url, "processor": "batch",
        "schedule_delay": 60, **tracing}}, node_id="otlp-node")


async def test_otlp_export_delivers_names_attributes_and_parent_ids(receiver: Receiver) -> None:
    node = otlp_node(receiver.url, otlp_headers={"x-api-key": "k-123"})
    await node.process("child")
    assert await node.tracer.force_flush()
    assert receiver.arrived.wait(10)
    got = {s["name"]: s for s in receiver.spans}
    process, child = got["Echo.process"], got["child"]
    assert child["parent_id"] == process["span_id"] and process["parent_id"] is None
    assert child["trace_id"] == process["trace_id"]
    assert process["attributes"]["onex.node_id"].string_value == "otlp-node"
    assert process["attributes"]["onex.correlation_id"].string_value == process["trace_id"]
    assert child["attributes"]["k"].string_value == "v"
    assert process["resource"]["service.name"] == "Echo"
    assert process["kind"] == 1  # SPAN_KIND_INTERNAL
    assert receiver.requests[0][1]["x-api-key"] == "k-123"
    await node.aclose()


async def test_otlp_export_retries_a_503_and_the_spans_arrive() -> None:
    receiver = Receiver(statuses=[503])
    try:
        node = otlp_node(receiver.url, otlp_timeout=10.0)
        await node.process(1)
        assert await node.tracer.force_flush(30)
        assert receiver.arrived.wait(30)
        assert [s for s, _ in receiver.requests] == [503, 200]
        assert [s["name"] for s in receiver.spans] == ["Echo.process"]
        assert counters(node).get("tracing_export_errors_total", 0) == 0
        await node.aclose()
    finally:
        receiver.close()


async def test_a_receiver_down_counts_errors_logs_once_degrades_health_and_process_succeeds(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    url = receiver.url
    receiver.close()  # nothing listens there any more
    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO")
    try:
        node = otlp_node(url, ["health_check"], otlp_timeout=0.5, processor="simple")
        for i in range(3):
            assert await node.process(i) == i  # export failures never reach process()
        report = await node.health.check()
    finally:
        logger.remove(sink)
    assert counters(node)["tracing_export_errors_total"] == 3
    assert report["checks"]["tracing"]["status"] == "degraded"
    assert "span export failing" in report["checks"]["tracing"]["reason"]
    assert sum("cannot export spans" in line for line in lines) == 1  # once per outage
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    # recovery: a working exporter ends the outage
    node.tracer._exported(True, None)
    assert node.tracer.health()["status"] == "healthy"
    await node.aclose()


async def test_aclose_flushes_the_spans_ended_before_it(receiver: Receiver) -> None:
    node = otlp_node(receiver.url)
    for i in range(5):
        await node.process(i)
    assert receiver.spans == []  # batched, schedule_delay 60 s
    await node.aclose()
    assert [s["name"] for s in receiver.spans] == ["Echo.process"] * 5


# -- the event bus retrofit ------------------------------------------------------------------------


def test_event_headers_ride_in_the_envelope_and_old_envelopes_decode() -> None:
    event = Event(topic="t", payload=1, id="i", timestamp=0.0, headers={"a": "b"})
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    plain = Event(topic="t", payload=1, id="i", timestamp=0.0)
    assert "headers" not in plain.to_dict()
    assert Event.from_dict({"id": "i", "topic": "t", "timestamp": 0.0}).headers is None
    assert Event.from_dict({"id": "i", "topic": "t", "timestamp": 0.0,
                            "headers": {"a": "b", "n": 1}}).headers == {"a": "b"}


async def test_publish_passes_headers_through_without_tracing_and_checks_them() -> None:
    bus = EventBus({"namespace": ns()})
    got: list[Event] = []
    bus.subscribe("t", got.append)
    sent = await bus.publish("t", 1, headers={"x-tenant": "eu"})
    await bus.drain()
    assert got[0].headers == sent.headers == {"x-tenant": "eu"}
    assert (await bus.publish("t", 2)).headers is None
    with pytest.raises(EventBusError, match="strings to strings"):
        await bus.publish("t", 3, headers={"n": 1})  # type: ignore[dict-item]
    await bus.aclose()


async def test_the_consumer_span_runs_with_the_events_correlation_id_and_records_failure() -> None:
    node = node_with(["event_bus"])
    seen: list[Any] = []

    def handler(event: Event) -> None:
        seen.append((_context.correlation_id.get(), node.tracer.current_trace_id()))
        raise RuntimeError("handler failed")

    node.event_bus.subscribe("orders.created", handler)
    with Correlation("corr-7"):
        await node.event_bus.publish("orders.created", 1, headers={"x": "y"})
    await node.event_bus.drain()
    publish, consume = spans(node)
    assert seen == [("corr-7", hex_trace(publish))]
    assert consume.status.status_code is StatusCode.ERROR
    assert node.event_bus.stats()["handler_errors"] == 1
    await node.aclose()


def test_the_mixin_is_registered_as_tracing() -> None:
    assert MixinTracing.__onex_capability__ == "tracing"
    node = compose(NodeEffect, ["tracing"])(capability_config={"tracing": {"enabled": False}})
    assert repr(node.tracer) == "<Tracing disabled>"


async def test_a_node_used_after_aclose_drops_spans_without_reporting_an_outage() -> None:
    node = node_with(["health_check"])
    await node.process(1)
    await node.aclose()
    assert await node.process(2) == 2
    assert counters(node).get("tracing_export_errors_total", 0) == 0
    assert node.tracer.health()["status"] == "healthy"
    assert len(spans(node)) == 1


def test_the_correlation_id_is_the_spans_own_trace_id_under_threads_and_parents() -> None:
    from concurrent.futures import ThreadPoolExecutor

    node = node_with(["logging"], cls=SyncEcho)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(node.process, range(400))) == list(range(400))
    finished = spans(node)
    assert len(finished) == 400 and len({s.context.trace_id for s in finished}) == 400
    for span in finished:
        assert span.attributes["onex.correlation_id"] == hex_trace(span)
    with node.tracer.continue_from({"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"}):
        node.process(1)
    assert spans(node)[-1].attributes["onex.correlation_id"] == REMOTE_TRACE


async def test_with_an_injected_provider_the_correlation_id_is_still_the_trace_id() -> None:
    INJECTED_EXPORTER.clear()
    node = compose(Echo, ["tracing"])(capability_config={"tracing": {
        "provider": "test_tracing:INJECTED"}})
    await node.process(1)
    (span,) = INJECTED_EXPORTER.get_finished_spans()
    assert span.attributes["onex.correlation_id"] == hex_trace(span)
    INJECTED_EXPORTER.clear()


def test_the_console_exporter_and_a_hand_written_class() -> None:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from onex_compose.capabilities.metrics import MixinMetrics

    assert isinstance(Tracing({"exporter": "console"}).exporter, ConsoleSpanExporter)

    class Traced(NodeCompute, MixinTracing, MixinMetrics):
        async def process(self, x: int) -> int:
            return x + 1

    node = Traced(capability_config={"tracing": MEMORY}, node_id="hand")
    assert asyncio.run(node.process(1)) == 2
    (span,) = spans(node)
    assert span.name == "Traced.process" and span.attributes["onex.node_id"] == "hand"

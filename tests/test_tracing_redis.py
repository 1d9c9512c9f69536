"""Tracing across processes: the event bus on Redis carries the trace context in the envelope.

The publisher (this process) and the subscriber (``helpers_procs.py traced-events``) each have
their own node, provider and memory exporter; the consumer span in the other process must have
the producer span of this one as its parent, in the same trace.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers_procs import Proc

from onex_compose import NodeCompute, compose
from onex_compose.capabilities.event_bus import Event

pytest.importorskip("opentelemetry.sdk")

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def cfg(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix}


class Publisher(NodeCompute):
    async def process(self, n: int) -> Event:
        return await self.event_bus.publish("orders.created", {"n": n},
                                            headers={"x-tenant": "eu"})


async def test_the_consumer_span_in_another_process_is_a_child_of_the_publish_span(
        cfg: dict[str, Any], redis_url: str) -> None:
    node = compose(Publisher, ["event_bus", "tracing"])(capability_config={
        "event_bus": cfg, "tracing": {"exporter": "memory", "processor": "simple"}},
        node_id="writer")
    other = Proc("traced-events", redis_url, cfg["namespace"], "orders.*")
    try:
        assert await asyncio.to_thread(other.read, 20.0) == {"ready": True}
        sent = [await node.process(n) for n in range(3)]
        lines = [await asyncio.to_thread(other.read, 20.0) for _ in range(3)]
        spans = {s.name: [] for s in node.tracer.exporter.get_finished_spans()}
        for s in node.tracer.exporter.get_finished_spans():
            spans[s.name].append(s)
        publishes = spans["orders.created publish"]
        assert len(publishes) == 3 and len(spans["Publisher.process"]) == 3
        remote = (await other.ask("spans", 20.0))["spans"]
        consumers = [s for s in remote if s["name"] == "orders.created process"]
        assert len(consumers) == 3 and {s["kind"] for s in consumers} == {"CONSUMER"}
        for event, line, publish in zip(sent, lines, publishes, strict=True):
            trace_id = f"{publish.context.trace_id:032x}"
            # the envelope carried the headers: the publisher's and the trace context
            assert line["event"]["headers"]["x-tenant"] == "eu"
            assert line["event"]["headers"]["traceparent"].split("-")[1] == trace_id
            assert line["event"]["id"] == event.id
            # inside the handler: the consumer span of the same trace, and the event's
            # correlation id (the trace id: the call had none)
            assert line["trace_id"] == trace_id
            assert line["correlation_id"] == event.correlation_id == trace_id
            consumer = next(s for s in consumers if s["span_id"] == line["span_id"])
            assert consumer["trace_id"] == trace_id
            assert consumer["parent_id"] == f"{publish.context.span_id:016x}"
        other.send("quit")
        assert await asyncio.to_thread(other.read, 20.0) == {"tasks": 0}
    finally:
        await asyncio.to_thread(other.close)
        await node.aclose()


async def test_an_envelope_without_headers_from_an_untraced_publisher_starts_a_new_trace(
        cfg: dict[str, Any], redis_url: str) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": cfg})
    other = Proc("traced-events", redis_url, cfg["namespace"], "orders.*")
    try:
        assert await asyncio.to_thread(other.read, 20.0) == {"ready": True}
        event = await node.event_bus.publish("orders.created", {"n": 1})
        assert event.headers is None
        line = await asyncio.to_thread(other.read, 20.0)
        assert "headers" not in line["event"]  # the envelope looks as it always did
        assert line["trace_id"] is not None  # the consumer span is a new root
        remote = (await other.ask("spans", 20.0))["spans"]
        assert [s["parent_id"] for s in remote] == [None]
    finally:
        await asyncio.to_thread(other.close)
        await node.aclose()

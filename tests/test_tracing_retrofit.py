"""The tracing retrofit of the landed capabilities (issue 11): what each one reports.

caching, retry, circuit_breaker, rate_limiting, bulkhead, timeout and database take the node's
tracer at setup when tracing is composed with them in its ``instrument`` list. Every test here
uses ``exporter: memory`` with the simple processor, so ended spans are there at once. The
span structure is checked per capability (a process span with a child L2 cache span on Redis,
three attempts giving two ``retry.attempt`` events, a breaker opening as an event, ``db.query``
spans without parameters), and so is the other half of the rule: without tracing, or with a
capability left out of ``instrument``, nothing is reported and OpenTelemetry is not imported.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from onex_compose import NodeCompute, NodeEffect, compose
from onex_compose.capabilities import CONTRACTS_DIR, _context, _sql
from onex_compose.capabilities._traced import sql_operation, tracer_for

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

MEMORY = {"exporter": "memory", "processor": "simple"}
RETROFITTED = ("caching", "retry", "circuit_breaker", "rate_limiting", "bulkhead", "timeout",
               "database")


def traced(base: type, caps: list[str], config: dict[str, Any] | None = None,
           tracing: dict[str, Any] | None = None) -> Any:
    """An instance of ``base`` composed with tracing (memory exporter) and ``caps``."""
    cls = compose(base, ["tracing", *caps])
    cfg = {"tracing": {**MEMORY, **(tracing or {})}, **(config or {})}
    return cls(capability_config=cfg)


def spans(node: Any) -> list[Any]:
    return list(node.tracer.exporter.get_finished_spans())


def only(node: Any, name: str) -> Any:
    found = [s for s in spans(node) if s.name == name]
    assert len(found) == 1, [s.name for s in spans(node)]
    return found[0]


def events(span: Any, name: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events
            if name is None or e.name == name]


class Body(NodeCompute):
    """process() runs what it is given: a callable (awaited when async) or a value."""

    async def process(self, x: Any) -> Any:
        if callable(x):
            result = x(self)
            return await result if asyncio.iscoroutine(result) else result
        return x


def process_span(node: Any) -> Any:
    found = [s for s in spans(node) if s.name.endswith(".process")]
    assert len(found) == 1, [s.name for s in spans(node)]
    return found[0]


# -- wiring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RETROFITTED)
def test_each_retrofitted_contract_declares_tracing_as_an_optional_dependency(name: str) -> None:
    path = next(p for p in (CONTRACTS_DIR / f"mixin_{name}.yaml",
                            CONTRACTS_DIR / name / f"mixin_{name}.yaml") if p.exists())
    deps = {d["name"]: d for d in yaml.safe_load(path.read_text("utf-8"))["requires_dependencies"]}
    assert deps["tracing"]["optional"] is True
    assert deps["tracing"]["type"] == "capability"


def test_tracing_is_set_up_before_every_retrofitted_capability() -> None:
    comp = compose(NodeEffect, ["tracing", *RETROFITTED]).__composition__
    order = list(comp.capabilities)  # resolved order: setup runs in it
    for name in RETROFITTED:
        assert order.index("tracing") < order.index(name), order
        assert ("tracing", name, f"{name} optionally uses tracing") in comp.edges


def test_every_facility_holds_the_tracer_when_listed_in_instrument() -> None:
    node = traced(NodeEffect, list(RETROFITTED))
    tracer = node.tracer
    assert node.cache._tracer is tracer
    assert node.retry_policy.tracer is tracer
    assert node.circuit_breaker._dispatch.tracer is tracer
    assert node.rate_limiter.tracer is tracer
    assert node.bulkhead.tracer is tracer
    assert node.timeout_policy.tracer is tracer
    assert node.db._tracer is tracer


def test_a_capability_left_out_of_instrument_holds_no_tracer() -> None:
    node = traced(NodeEffect, list(RETROFITTED), tracing={"instrument": ["retry"]})
    assert node.retry_policy.tracer is node.tracer
    assert node.cache._tracer is None
    assert node.circuit_breaker._dispatch.tracer is None
    assert node.rate_limiter.tracer is None
    assert node.bulkhead.tracer is None
    assert node.timeout_policy.tracer is None
    assert node.db._tracer is None


def test_disabled_tracing_gives_every_capability_no_tracer() -> None:
    node = traced(NodeEffect, list(RETROFITTED), tracing={"enabled": False})
    assert tracer_for(node, "retry") is None
    assert node.retry_policy.tracer is None
    assert node.cache._tracer is None
    assert node.db._tracer is None


def test_without_tracing_composed_every_facility_holds_none() -> None:
    node = compose(NodeEffect, list(RETROFITTED))()
    assert tracer_for(node, "caching") is None
    assert node.cache._tracer is None
    assert node.retry_policy.tracer is None
    assert node.circuit_breaker._dispatch.tracer is None
    assert node.rate_limiter.tracer is None
    assert node.bulkhead.tracer is None
    assert node.timeout_policy.tracer is None
    assert node.db._tracer is None


@pytest.mark.slow
def test_without_tracing_the_reporting_paths_import_no_opentelemetry() -> None:
    """Retries, a breaker opening, rejections, an expiry and statements, all without tracing:
    in a fresh interpreter, no ``opentelemetry`` module is imported."""
    code = r"""
import asyncio, sys
from onex_compose import NodeEffect, compose
from onex_compose.capabilities.bulkhead import BulkheadFullError
from onex_compose.capabilities.circuit_breaker import CircuitOpenError
from onex_compose.capabilities.rate_limiting import RateLimitExceededError
from onex_compose.capabilities.timeout import OperationTimeoutError

caps = ["caching", "retry", "circuit_breaker", "rate_limiting", "bulkhead", "timeout", "database"]
node = compose(NodeEffect, caps)(capability_config={
    "retry": {"sleep": False, "max_attempts": 3},
    "circuit_breaker": {"failure_threshold": 2},
    "rate_limiting": {"limit": 1, "burst": 1},
    "bulkhead": {"max_concurrent": 1},
    "database": {"namespace": "noimport"}})

async def main():
    calls = []
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("x")
        return 1
    assert await node.with_retry(flaky) == 1
    breaker = node.circuit_breaker("db")
    for _ in range(2):
        try:
            await breaker.acall(flaky_fail)
        except ConnectionError:
            pass
    try:
        await breaker.acall(flaky)
    except CircuitOpenError:
        pass
    assert node.rate_limiter.hit("k") and not node.rate_limiter.hit("k")
    async with node.bulkhead:
        try:
            await node.bulkhead.run(asyncio.sleep, 0)
        except BulkheadFullError:
            pass
    try:
        await node.with_timeout(asyncio.sleep, 1, timeout=0.01)
    except OperationTimeoutError:
        pass
    await node.cache.set("k", 1)
    assert await node.cache.get("k") == 1
    async with node.db.transaction() as tx:
        await tx.execute("CREATE TABLE t (v INTEGER)")
    assert await node.db.fetch_val("SELECT count(*) FROM t") == 0

async def flaky_fail():
    raise ConnectionError("down")

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


ModuleLevel = compose(NodeCompute, ["retry"])


def test_the_compose_variant_fixture_really_composes_tracing(compose_variant: str) -> None:
    """The machinery behind the landed suites' ``[traced]`` runs (tests/conftest.py): in the
    traced variant a composition the test makes, and a module-level composed class, gain
    tracing, and the retrofitted capability holds the tracer."""
    traced_run = compose_variant == "traced"
    node = compose(NodeCompute, ["retry"])()
    assert ("tracing" in type(node).__composition__.capabilities) is traced_run
    assert ("tracing" in ModuleLevel.__composition__.capabilities) is traced_run
    assert (node.retry_policy.tracer is not None) is traced_run


# -- caching -----------------------------------------------------------------------------------


async def test_memory_cache_reports_nothing_and_l1_hits_never_do() -> None:
    node = traced(Body, ["caching"])

    async def use(self: Any) -> Any:
        await self.cache.set("k", 1)
        return await self.cache.get("k")

    assert await node.process(use) == 1
    assert [s.name for s in spans(node)] == [process_span(node).name]


async def test_l2_get_is_a_client_span_under_the_process_span(redis_url: str,
                                                              redis_prefix: str) -> None:
    node = traced(Body, ["caching"], {"caching": {"backend": "redis", "redis_url": redis_url,
                                                  "namespace": redis_prefix}})

    async def use(self: Any) -> Any:
        await self.cache.set("k", {"v": 1})
        self.cache._data.clear()  # force the next read to L2
        first = await self.cache.get("k")
        second = await self.cache.get("k")  # an L1 hit now: no span
        missing = await self.cache.get("absent")
        return first, second, missing

    try:
        assert await node.process(use) == ({"v": 1}, {"v": 1}, None)
    finally:
        await node.cache.aclose()
    proc = process_span(node)
    l2 = [s for s in spans(node) if s.name.startswith("cache.l2.")]
    assert [s.name for s in l2] == ["cache.l2.set", "cache.l2.get", "cache.l2.get"]
    for span in l2:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == proc.context.span_id
        assert span.context.trace_id == proc.context.trace_id
        assert span.attributes["db.system.name"] == "redis"
        assert span.attributes["onex.cache.namespace"] == redis_prefix
        assert "k" not in span.attributes.values() and "absent" not in span.attributes.values()
    assert l2[1].attributes["onex.cache.hit"] is True
    assert l2[2].attributes["onex.cache.hit"] is False
    assert "onex.cache.hit" not in l2[0].attributes


async def test_l2_delete_and_clear_are_spans(redis_url: str, redis_prefix: str) -> None:
    node = traced(NodeCompute, ["caching"], {"caching": {
        "backend": "redis", "redis_url": redis_url, "namespace": redis_prefix}})
    try:
        await node.cache.set("k", 1)
        assert await node.cache.delete("k") is True
        assert await node.cache.clear() is True
    finally:
        await node.cache.aclose()
    assert [s.name for s in spans(node)] == ["cache.l2.set", "cache.l2.delete", "cache.l2.clear"]
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans(node))


async def test_redis_down_the_l2_span_has_status_error_and_l1_serves(private_redis: Any) -> None:
    """A round trip that fails is a span with status ERROR; calls in the back-off after it
    make no round trip and no span (they are served from L1)."""
    clock = _context.ManualClock()
    node = traced(NodeCompute, ["caching"], {"caching": {
        "backend": "redis", "redis_url": private_redis.url, "namespace": "down",
        "retry_interval": 5.0, "redis_timeout": 0.5}})
    node.cache.clock = clock
    cache = node.cache
    try:
        await cache.set("k", 1)
        private_redis.stop()
        cache._data.clear()
        assert await cache.get("k") is None  # the failed round trip
        await cache.set("k", 2)             # in the back-off: L1 only
        assert await cache.get("k") == 2
        assert await cache.delete("k") is True
    finally:
        await cache.aclose()
    assert [s.name for s in spans(node)] == ["cache.l2.set", "cache.l2.get"]
    ok, failed = spans(node)
    assert ok.status.status_code is not StatusCode.ERROR
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"]
    assert failed.attributes["onex.cache.hit"] is False
    assert cache.health()["status"] == "degraded"


# -- retry -------------------------------------------------------------------------------------


class Flaky(NodeCompute):
    failures = 2

    async def process(self, x: Any) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls <= self.failures:
            raise ConnectionError(f"reset {self.calls}")
        return x


async def test_three_attempts_give_two_retry_attempt_events_on_the_process_span() -> None:
    node = traced(Flaky, ["retry"], {"retry": {"max_attempts": 3, "sleep": False}})
    assert await node.process("ok") == "ok"
    span = process_span(node)
    got = events(span, "retry.attempt")
    assert [a["attempt"] for _, a in got] == [1, 2]
    for _, attrs in got:
        assert attrs["exception.type"] == "ConnectionError"
        assert attrs["delay_s"] == 0.0
    assert span.attributes["retry.outcome"] == "recovered"
    assert span.status.status_code is not StatusCode.ERROR


async def test_exhausted_retries_set_the_outcome_and_the_delays() -> None:
    node = traced(Flaky, ["retry"], {"retry": {"max_attempts": 3, "jitter": "none",
                                               "initial_delay": 0.5}})
    node.failures = 10
    clock = _context.ManualClock()
    node.retry_policy.use_clock(clock)
    with pytest.raises(ConnectionError):
        await node.process("x")
    span = process_span(node)
    assert [a["delay_s"] for _, a in events(span, "retry.attempt")] == [0.5, 1.0]
    assert span.attributes["retry.outcome"] == "exhausted"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_first_attempt_success_reports_nothing() -> None:
    node = traced(Flaky, ["retry"])
    node.failures = 0
    assert await node.process(1) == 1
    span = process_span(node)
    assert events(span, "retry.attempt") == []
    assert "retry.outcome" not in span.attributes


async def test_with_retry_inside_a_span_reports_on_that_span() -> None:
    node = traced(NodeCompute, ["retry"], {"retry": {"sleep": False}})
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise TimeoutError("slow")
        return "done"

    with node.tracer.span("work"):
        assert await node.with_retry(flaky) == "done"
    span = only(node, "work")
    assert [(n, a["attempt"], a["exception.type"]) for n, a in events(span)] == [
        ("retry.attempt", 1, "TimeoutError")]
    assert span.attributes["retry.outcome"] == "recovered"


# -- circuit breaker ---------------------------------------------------------------------------


async def test_a_breaker_opening_is_an_event_and_a_rejection_too() -> None:
    node = traced(Body, ["circuit_breaker"], {"circuit_breaker": {"failure_threshold": 2}})

    def boom(self: Any) -> Any:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await node.process(boom)
    from onex_compose.capabilities.circuit_breaker import CircuitOpenError

    with pytest.raises(CircuitOpenError):
        await node.process(1)
    first, second, third = sorted(spans(node), key=lambda s: s.start_time)
    assert events(first, "circuit_breaker.state_change") == []
    assert events(second, "circuit_breaker.state_change") == [
        ("circuit_breaker.state_change",
         {"breaker": "process", "from": "closed", "to": "open", "reason": "failure_threshold"})]
    rejected = events(third, "circuit_breaker.rejected")
    assert len(rejected) == 1
    attrs = rejected[0][1]
    assert attrs["breaker"] == "process" and attrs["state"] == "open"
    assert attrs["reason"] == "open" and attrs["retry_after_s"] > 0


async def test_half_open_and_closing_again_are_events() -> None:
    node = traced(NodeCompute, ["circuit_breaker"], {"circuit_breaker": {
        "breakers": {"db": {"failure_threshold": 1, "reset_timeout": 10,
                            "half_open_max_calls": 1}}}})
    clock = _context.ManualClock()
    node.circuit_breaker.clock = clock
    breaker = node.circuit_breaker("db")

    async def fail() -> None:
        raise ConnectionError("down")

    async def ok() -> str:
        return "ok"

    with node.tracer.span("calls"):
        with pytest.raises(ConnectionError):
            await breaker.acall(fail)
        clock.advance(10)
        assert await breaker.acall(ok) == "ok"
    changes = [(a["from"], a["to"], a["reason"])
               for _, a in events(only(node, "calls"), "circuit_breaker.state_change")]
    assert changes == [("closed", "open", "failure_threshold"),
                       ("open", "half_open", "reset_timeout"),
                       ("half_open", "closed", "probes_succeeded")]


async def test_a_process_scope_breaker_reports_to_a_sharing_nodes_tracer() -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    cfg = {"circuit_breaker": {"scope": "process",
                               "breakers": {name: {"failure_threshold": 1}}}}
    node = traced(NodeCompute, ["circuit_breaker"], cfg)
    plain = compose(NodeCompute, ["circuit_breaker"])(capability_config=cfg)

    async def fail() -> None:
        raise ConnectionError("down")

    assert plain.circuit_breaker(name) is node.circuit_breaker(name)  # both share it now
    with node.tracer.span("calls"):
        with pytest.raises(ConnectionError):
            await plain.circuit_breaker(name).acall(fail)  # the untraced node trips it
    assert [a["to"] for _, a in events(only(node, "calls"), "circuit_breaker.state_change")] \
        == ["open"]


# -- rate limiting, bulkhead, timeout ----------------------------------------------------------


async def test_rate_limit_rejection_is_an_event_on_the_process_span() -> None:
    from onex_compose.capabilities.rate_limiting import RateLimitExceededError

    node = traced(Body, ["rate_limiting"], {"rate_limiting": {"limit": 1, "burst": 1,
                                                              "period": 60}})
    assert await node.process(1) == 1
    with pytest.raises(RateLimitExceededError):
        await node.process(2)
    admitted, rejected = sorted(spans(node), key=lambda s: s.start_time)
    assert events(admitted) == []
    assert [n for n, _ in events(rejected)] == ["rate_limit.rejected", "exception"]
    [(name, attrs)] = events(rejected, "rate_limit.rejected")
    assert attrs["rate_limit.policy"] == "default" and attrs["cost"] == 1
    assert attrs["reason"] == "limited" and 0 < attrs["retry_after_s"] <= 60.0


async def test_rate_limit_wait_is_an_event_with_the_wait() -> None:
    node = traced(NodeCompute, ["rate_limiting"], {"rate_limiting": {
        "limit": 2, "burst": 1, "period": 1, "mode": "wait"}})
    clock = _context.ManualClock()
    node.rate_limiter.use_clock(clock)
    with node.tracer.span("calls"):
        assert await node.rate_limiter.acquire("k") == 0.0
        assert await node.rate_limiter.acquire("k") == pytest.approx(0.5)
    [(name, attrs)] = events(only(node, "calls"))
    assert name == "rate_limit.wait"
    assert attrs["wait_s"] == pytest.approx(0.5) and attrs["rate_limit.policy"] == "default"


async def test_a_rejected_hit_is_an_event() -> None:
    node = traced(NodeCompute, ["rate_limiting"], {"rate_limiting": {"limit": 1, "burst": 1}})
    with node.tracer.span("calls"):
        assert node.rate_limiter.hit("user-42") is True
        assert node.rate_limiter.hit("user-42", 1) is False
    [(name, attrs)] = events(only(node, "calls"))
    assert name == "rate_limit.rejected"
    assert "user-42" not in attrs.values()  # a caller's key is not a configured policy


async def test_bulkhead_rejection_and_queueing_are_events() -> None:
    from onex_compose.capabilities.bulkhead import BulkheadFullError

    node = traced(NodeEffect, ["bulkhead"], {"bulkhead": {"max_concurrent": 1, "max_wait": 5,
                                                          "max_waiting": 1, "name": "db"}})
    bulkhead = node.bulkhead
    release = asyncio.Event()

    async def holder() -> None:
        async with bulkhead:
            await release.wait()

    async def waiter() -> None:
        with node.tracer.span("waiter"):
            async with bulkhead:
                pass

    hold = asyncio.create_task(holder())
    await _until(lambda: bulkhead.active == 1)
    wait = asyncio.create_task(waiter())
    await _until(lambda: bulkhead.waiting == 1)
    with node.tracer.span("rejected"), pytest.raises(BulkheadFullError):
        await bulkhead.acquire()  # the queue (max_waiting 1) is full
    release.set()
    await asyncio.wait_for(asyncio.gather(hold, wait), 10)
    [(name, attrs)] = events(only(node, "rejected"))
    assert name == "bulkhead.rejected"
    assert attrs["bulkhead"] == "db" and attrs["limit"] == 1 and attrs["active"] == 1
    [(name, attrs)] = events(only(node, "waiter"))
    assert name == "bulkhead.queued" and attrs["waited_s"] >= 0.0 and attrs["bulkhead"] == "db"


async def _until(check: Any, bound: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + bound
    while not check():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


async def test_timeout_expiry_is_an_event_with_the_budget() -> None:
    from onex_compose.capabilities.timeout import OperationTimeoutError

    node = traced(Body, ["timeout"], {"timeout": {"timeout": 0.05}})

    async def hang(self: Any) -> None:
        await asyncio.Event().wait()

    with pytest.raises(OperationTimeoutError):
        await node.process(hang)
    span = process_span(node)
    [(name, attrs)] = events(span, "timeout.expired")
    assert name == "timeout.expired"
    assert attrs["budget_s"] == pytest.approx(0.05) and attrs["timeout_s"] == 0.05
    assert attrs["source"] == "timeout" and attrs["operation"].endswith(".process")
    assert span.status.status_code is StatusCode.ERROR


async def test_an_already_expired_deadline_reports_a_zero_budget() -> None:
    from onex_compose.capabilities.timeout import OperationTimeoutError

    node = traced(NodeCompute, ["timeout"])

    async def work() -> None:
        return None

    with node.tracer.span("outer"), pytest.raises(OperationTimeoutError):
        await node.with_timeout(work, timeout=0)
    [(_, attrs)] = events(only(node, "outer"), "timeout.expired")
    assert attrs["budget_s"] == 0.0


# -- database ----------------------------------------------------------------------------------


def _db(**extra: Any) -> Any:
    return traced(NodeEffect, ["database"],
                  {"database": {"namespace": f"trace{uuid.uuid4().hex[:8]}", **extra}})


SECRET = "s3cr3t-parameter-value"


def _no_secret(span: Any) -> None:
    text = json.dumps({k: str(v) for k, v in span.attributes.items()})
    text += json.dumps([(e.name, {k: str(v) for k, v in (e.attributes or {}).items()})
                        for e in span.events])
    assert SECRET not in text


async def test_statements_are_db_query_spans_without_parameters() -> None:
    node = _db()
    db = node.db
    await db.execute("CREATE TABLE t (v TEXT)")
    await db.execute("INSERT INTO t (v) VALUES (:v)", {"v": SECRET})
    assert await db.fetch_val("  -- comment\n select v from t where v = :v", {"v": SECRET}) \
        == SECRET
    got = spans(node)
    assert [s.name for s in got] == ["db.query"] * 3
    assert [s.attributes["db.operation.name"] for s in got] == ["CREATE", "INSERT", "SELECT"]
    for span in got:
        assert span.kind is SpanKind.CLIENT
        assert span.attributes["db.system.name"] == "sqlite"
        assert span.attributes["db.namespace"] == db._resolved.memory_name
        _no_secret(span)
    await db.aclose()


async def test_a_transaction_is_a_span_around_its_statements_with_its_outcome() -> None:
    node = _db()
    db = node.db
    await db.execute("CREATE TABLE t (v INTEGER)")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (v) VALUES (1)")
        await db.execute("INSERT INTO t (v) VALUES (2)")  # joins the block
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES (3)")
            raise RuntimeError("changed my mind")
    assert await db.fetch_val("SELECT count(*) FROM t") == 2
    txs = [s for s in spans(node) if s.name == "db.transaction"]
    assert [s.attributes["db.transaction.outcome"] for s in txs] == ["commit", "rollback"]
    for tx_span in txs:
        children = [s for s in spans(node)
                    if s.parent is not None and s.parent.span_id == tx_span.context.span_id]
        assert children and all(c.name == "db.query" for c in children)
        assert tx_span.attributes["db.transaction.savepoint"] is False
    assert len([s for s in spans(node) if s.name == "db.query"
                and s.parent is not None and s.parent.span_id == txs[0].context.span_id]) == 2
    assert txs[1].status.status_code is StatusCode.ERROR
    await db.aclose()


async def test_a_nested_transaction_is_a_savepoint_span() -> None:
    node = _db()
    db = node.db
    await db.execute("CREATE TABLE t (v INTEGER)")
    async with db.transaction():
        with pytest.raises(ValueError, match="inner"):
            async with db.transaction() as inner:
                await inner.execute("INSERT INTO t (v) VALUES (1)")
                raise ValueError("inner")
    outer, = (s for s in spans(node) if s.name == "db.transaction"
              and not s.attributes["db.transaction.savepoint"])
    sp, = (s for s in spans(node) if s.name == "db.transaction"
           and s.attributes["db.transaction.savepoint"])
    assert sp.parent.span_id == outer.context.span_id
    assert sp.attributes["db.transaction.outcome"] == "rollback"
    assert outer.attributes["db.transaction.outcome"] == "commit"
    await db.aclose()


async def test_a_failed_statement_span_has_status_error() -> None:
    from onex_compose.capabilities.database import DatabaseError, DatabaseIntegrityError

    node = _db()
    db = node.db
    await db.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    await db.execute("INSERT INTO t (v) VALUES (1)")
    with pytest.raises(DatabaseIntegrityError):
        await db.execute("INSERT INTO t (v) VALUES (:v)", {"v": 1})
    with pytest.raises(DatabaseError):
        await db.execute("SELEC broken")
    failed = [s for s in spans(node) if s.status.status_code is StatusCode.ERROR]
    assert [s.attributes.get("db.operation.name") for s in failed] == ["INSERT", "SELEC"]
    for span in failed:
        assert [e.name for e in span.events] == ["exception"]
    await db.aclose()


async def test_a_stream_is_one_span_until_its_last_row() -> None:
    node = _db()
    db = node.db
    await db.execute("CREATE TABLE t (v INTEGER)")
    await db.execute("INSERT INTO t (v) VALUES (1), (2), (3)")
    rows = [r["v"] async for r in db.stream("SELECT v FROM t ORDER BY v", batch=1)]
    assert rows == [1, 2, 3]
    stream_span = [s for s in spans(node) if s.name == "db.query"][-1]
    tx_span = only(node, "db.transaction")
    assert stream_span.parent.span_id == tx_span.context.span_id
    assert stream_span.attributes["db.operation.name"] == "SELECT"
    assert tx_span.attributes["db.transaction.readonly"] is True
    await db.aclose()


async def test_statements_inside_process_are_children_of_the_process_span() -> None:
    node = traced(Body, ["database"], {"database": {"namespace": f"p{uuid.uuid4().hex[:8]}"}})

    async def work(self: Any) -> Any:
        return await self.db.fetch_val("SELECT 41 + 1")

    assert await node.process(work) == 42
    proc = process_span(node)
    query = only(node, "db.query")
    assert query.parent.span_id == proc.context.span_id
    await node.db.aclose()


@pytest.fixture
async def pg_config(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    """The shared PostgreSQL server with a schema of this test's own (dropped after)."""
    import asyncpg

    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": postgres_dsn, "schema": schema}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(postgres_dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_postgres_spans_name_the_database_and_schema_and_a_conflict(
        pg_config: dict[str, Any]) -> None:
    from sqlalchemy.engine import make_url

    node = traced(NodeEffect, ["database"], {"database": pg_config})
    db = node.db
    await db.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    await db.execute("INSERT INTO acct (id, v) VALUES (1, :v)", {"v": 7})
    url = make_url(pg_config["url"])
    for span in spans(node):
        assert span.attributes["db.system.name"] == "postgresql"
        assert span.attributes["db.namespace"] == f"{url.database}|{pg_config['schema']}"
        assert span.attributes["server.address"] == url.host
        assert all("7" != str(v) for v in span.attributes.values())
    from onex_compose.capabilities.database import DatabaseIntegrityError

    with pytest.raises(DatabaseIntegrityError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO acct (id, v) VALUES (1, 1)")
    failed = [s for s in spans(node) if s.status.status_code is StatusCode.ERROR]
    assert {s.name for s in failed} == {"db.query", "db.transaction"}
    for span in failed:
        assert span.attributes["db.response.status_code"] == "23505"
    assert only(node, "db.transaction").attributes["db.transaction.outcome"] == "rollback"
    await db.aclose()


# -- sql_operation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "op"), [
    ("SELECT 1", "SELECT"),
    ("\n\t insert into t values (1)", "INSERT"),
    ("/* multi\nline */ UPDATE t SET v = 1", "UPDATE"),
    ("-- a\n-- b\ndelete from t", "DELETE"),
    ("((select 1))", "SELECT"),
    ("with x as (select 1) select * from x", "WITH"),
    ("", ""),
    ("   ", ""),
    ("123", ""),
])
def test_sql_operation_is_the_first_keyword(sql: str, op: str) -> None:
    assert sql_operation(sql) == op


def test_sql_operation_of_sqlalchemy_constructs() -> None:
    from sqlalchemy import column, delete, insert, select, table, text, update

    t = table("t", column("v"))
    assert sql_operation(select(t.c.v)) == "SELECT"
    assert sql_operation(insert(t).values(v=1)) == "INSERT"
    assert sql_operation(update(t).values(v=2)) == "UPDATE"
    assert sql_operation(delete(t)) == "DELETE"
    assert sql_operation(text("  merge into t")) == "MERGE"
    assert sql_operation(object()) == ""


# -- lifecycle ---------------------------------------------------------------------------------


def test_a_traced_node_pickles_and_reports_across_three_event_loops() -> None:
    import pickle

    node = traced(NodeEffect, list(RETROFITTED),
                  {"database": {"namespace": f"pk{uuid.uuid4().hex[:8]}"}})
    copy = pickle.loads(pickle.dumps(node))
    tracer = copy.tracer
    assert tracer is not node.tracer
    assert copy.retry_policy.tracer is tracer and copy.db._tracer is tracer
    assert copy.cache._tracer is tracer and copy.circuit_breaker._dispatch.tracer is tracer

    async def query() -> Any:
        return await copy.db.fetch_val("SELECT 1")

    assert [asyncio.run(query()) for _ in range(3)] == [1, 1, 1]
    assert [s.name for s in spans(copy)] == ["db.query"] * 3
    assert spans(node) == []

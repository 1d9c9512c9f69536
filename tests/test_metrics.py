"""The metrics capability: store semantics, validation, Prometheus exposition, composition."""

from __future__ import annotations

import asyncio
import enum
import pickle
import threading
from pathlib import Path

import prometheus_client
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from onex_compose import ConfigurationError, NodeCompute, NodeEffect, compose, has_capability
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.metrics import (
    DEFAULT_BUCKETS,
    Metrics,
    MetricsConfig,
    MetricsError,
    MetricsProtocol,
    MixinMetrics,
    build_metrics,
)


def parse(text: str) -> dict[str, float]:
    """Exposition text -> {'name{k="v"}': value} for every sample (via prometheus' parser)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + ("{" + labels + "}" if labels else "")] = s.value
    return out


# -- counters, gauges, histograms, timers ---------------------------------------------------


def test_counter_starts_at_zero_and_accepts_default_and_custom_steps() -> None:
    m = Metrics()
    assert m.snapshot()["counters"] == {}
    m.increment("hits")
    assert m.snapshot()["counters"]["hits"] == 1
    m.increment("hits", 5)
    m.increment("hits", 0)
    m.increment("hits", 0.5)
    assert m.snapshot()["counters"]["hits"] == 6.5


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
@pytest.mark.parametrize("labels", [None, {"route": "a"}])
def test_a_negative_counter_step_is_an_error_and_snapshot_and_export_agree(
        backend: str, labels: dict[str, str] | None) -> None:
    """A counter only goes up (prometheus_client's Counter.inc raises on a negative amount);
    before, snapshot() summed the negative step while the export dropped it."""
    m = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    key = "hits" if labels is None else 'hits{route="a"}'
    m.increment("hits", 5, labels=labels)  # the fast path (known series) ...
    with pytest.raises(MetricsError, match=r"only goes up.*>= 0.*gauge") as info:
        m.increment("hits", -2, labels=labels)
    assert info.value.metric == "hits"
    with pytest.raises(MetricsError, match="only goes up"):  # ... and the slow path
        m.increment("fresh", -1, labels=labels)
    assert m.snapshot()["counters"] == {key: 5}  # nothing changed, "fresh" not defined
    assert parse(m.exposition())[key.replace("hits", "hits_total")] == 5.0


def test_gauge_keeps_the_last_value() -> None:
    m = Metrics()
    m.gauge("depth", 3)
    m.gauge("depth", 7.5)
    m.gauge("depth", -1)
    m.gauge("queue_depth", 2, labels={"queue": "a"})
    m.gauge("queue_depth", 4, labels={"queue": "b"})
    m.gauge("queue_depth", 1, labels={"queue": "a"})
    assert m.snapshot()["gauges"] == {
        "depth": -1, 'queue_depth{queue="a"}': 1, 'queue_depth{queue="b"}': 4}


def test_histogram_buckets_count_sum_min_max() -> None:
    m = Metrics(MetricsConfig(buckets=[1, 2, 5]))
    for v in (0.5, 1, 1.5, 2, 9):
        m.histogram("size", v)
    h = m.snapshot()["histograms"]["size"]
    assert h["count"] == 5
    assert h["sum"] == 14.0
    assert (h["min"], h["max"]) == (0.5, 9)
    # "le" buckets are cumulative and inclusive of the bound
    assert h["buckets"] == {"1.0": 2, "2.0": 4, "5.0": 4, "+Inf": 5}
    text = parse(m.exposition())
    assert text['size_bucket{le="1.0"}'] == 2
    assert text['size_bucket{le="+Inf"}'] == 5
    assert text["size_count"] == 5
    assert text["size_sum"] == 14.0


def test_empty_histogram_reports_none_for_min_and_max() -> None:
    m = Metrics()
    m.timer("never_finished")
    h = m.snapshot()["histograms"]["never_finished"]
    assert h["count"] == 0 and h["min"] is None and h["max"] is None


def test_timer_records_seconds_with_an_injected_clock() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)
    with m.timer("step") as t:
        clock.advance(0.25)
    assert t.elapsed == 0.25
    h = m.snapshot()["histograms"]["step"]
    assert h["count"] == 1 and h["sum"] == 0.25
    assert h["buckets"]["0.25"] == 1 and h["buckets"]["0.1"] == 0


def test_timer_records_when_the_block_raises() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)
    with pytest.raises(KeyError), m.timer("step"):
        clock.advance(1.0)
        raise KeyError("boom")
    assert m.snapshot()["histograms"]["step"]["sum"] == 1.0


async def test_timer_works_with_async_with() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)
    async with m.timer("io", labels={"op": "read"}) as t:
        await asyncio.sleep(0)
        clock.advance(0.5)
    assert t.elapsed == 0.5
    assert m.snapshot()["histograms"]['io{op="read"}']["sum"] == 0.5


def test_clock_can_be_swapped_after_construction() -> None:
    m = Metrics()
    m.clock = clock = ManualClock(10.0)
    with m.timer("t"):
        clock.advance(2)
    assert m.snapshot()["histograms"]["t"]["sum"] == 2


# -- labels -----------------------------------------------------------------------------------


def test_labels_are_one_series_whatever_the_dict_order_or_value_type() -> None:
    m = Metrics()
    m.increment("req", labels={"method": "GET", "status": 200})
    m.increment("req", labels={"status": "200", "method": "GET"})
    m.increment("req", labels={"status": 500, "method": "GET"})
    assert m.snapshot()["counters"] == {
        'req{method="GET",status="200"}': 2, 'req{method="GET",status="500"}': 1}


def test_empty_labels_mean_no_labels() -> None:
    m = Metrics()
    m.increment("x")
    m.increment("x", labels={})
    assert m.snapshot()["counters"] == {"x": 2}


class Color(enum.Enum):
    RED = "red"


def test_label_values_enum_bool_and_float_are_rendered() -> None:
    m = Metrics()
    m.gauge("g", 1, labels={"c": Color.RED, "ok": True, "ratio": 0.5})
    assert m.snapshot()["gauges"] == {'g{c="red",ok="true",ratio="0.5"}': 1}


def test_label_values_are_escaped_in_keys_and_exposition() -> None:
    m = Metrics()
    m.increment("odd", labels={"path": 'a"b\\c\nd'})
    key = 'odd{path="a\\"b\\\\c\\nd"}'
    assert m.snapshot()["counters"] == {key: 1}
    families = list(text_string_to_metric_families(m.exposition()))
    assert families[0].samples[0].labels == {"path": 'a"b\\c\nd'}


def test_unhashable_label_value_is_rejected_clearly() -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match="label 'ids' has a list value"):
        m.increment("x", labels={"ids": [1, 2]})


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
                       st.text(max_size=5), min_size=1, max_size=4),
       st.lists(st.integers(0, 10), min_size=1, max_size=20), st.randoms())
def test_any_label_order_sums_into_one_series(labels: dict[str, str], steps: list[int],
                                              rnd) -> None:
    m = Metrics()
    for step in steps:
        items = list(labels.items())
        rnd.shuffle(items)
        m.increment("c", step, labels=dict(items))
    counters = m.snapshot()["counters"]
    assert list(counters.values()) == [sum(steps)]
    assert parse(m.exposition())["c_total{" + ",".join(
        f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"] == sum(steps)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hint"), [
    ("1abc", "Try '_1abc'"), ("cache-hits", "Try 'cache_hits'"), ("a b", "Try 'a_b'"),
    ("", "invalid metric name")])
def test_invalid_metric_names_say_how_to_fix(name: str, hint: str) -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match="invalid metric name") as info:
        m.increment(name)
    assert hint in str(info.value)
    assert info.value.metric == name
    assert isinstance(info.value, ValueError)


def test_non_string_name_is_rejected() -> None:
    with pytest.raises(MetricsError, match="invalid metric name"):
        Metrics().gauge(42, 1)  # type: ignore[arg-type]
    with pytest.raises(MetricsError, match="invalid metric name"):
        Metrics().increment(["x"])  # type: ignore[arg-type]


@pytest.mark.parametrize("label", ["1x", "a-b", "__reserved", ""])
def test_invalid_label_names_are_rejected(label: str) -> None:
    with pytest.raises(MetricsError, match="invalid label name"):
        Metrics().increment("x", labels={label: "v"})


def test_le_label_is_reserved_for_histograms_only() -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match="reserved for histograms"):
        m.histogram("h", 1, labels={"le": "x"})
    with pytest.raises(MetricsError, match="reserved for histograms"):
        m.timer("t", labels={"le": "x"})
    m.increment("c", labels={"le": "x"})  # fine on a counter


def test_labels_must_be_a_mapping() -> None:
    with pytest.raises(MetricsError, match="labels must be a mapping"):
        Metrics().increment("x", labels=[("a", "b")])  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["increment", "gauge", "histogram"])
@pytest.mark.parametrize("bad", ["3", None, [1]])
def test_values_must_be_numbers(call: str, bad: object) -> None:
    m = Metrics()
    getattr(m, call)("x", 1)  # the series exists: the fast path must reject it too
    with pytest.raises(MetricsError, match="must be a number"):
        getattr(m, call)("x", bad)
    assert m.snapshot() == Metrics().snapshot() | {
        "counters": {"x": 1} if call == "increment" else {},
        "gauges": {"x": 1} if call == "gauge" else {},
        "histograms": m.snapshot()["histograms"]}
    if call == "histogram":
        assert m.snapshot()["histograms"]["x"]["count"] == 1  # nothing half-recorded


def test_decimal_values_are_accepted() -> None:
    from decimal import Decimal

    m = Metrics()
    m.histogram("h", 1.0)
    m.histogram("h", Decimal("0.5"))  # type: ignore[arg-type]
    assert m.snapshot()["histograms"]["h"]["count"] == 2


def test_one_name_one_kind() -> None:
    m = Metrics()
    m.increment("x")
    with pytest.raises(MetricsError, match="'x' is a counter, it cannot also be used as a gauge"):
        m.gauge("x", 1)
    with pytest.raises(MetricsError, match="is a counter"):
        m.timer("x")


def test_one_name_one_label_set() -> None:
    m = Metrics()
    m.increment("req", labels={"method": "GET"})
    with pytest.raises(MetricsError, match=r"first used with label names \['method'\]"):
        m.increment("req", labels={"method": "GET", "status": "200"})
    with pytest.raises(MetricsError, match="same label names"):
        m.increment("req")


def test_exported_series_may_not_collide() -> None:
    m = Metrics()
    m.histogram("latency", 1)
    with pytest.raises(MetricsError, match="'latency_count'"):
        m.gauge("latency_count", 1)
    m.increment("jobs")
    with pytest.raises(MetricsError, match="'jobs_total'"):
        m.gauge("jobs_total", 1)


def test_config_validation() -> None:
    assert MetricsConfig(buckets=[1, 2, float("inf")]).buckets == [1.0, 2.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        MetricsConfig(buckets=[1, 1])
    with pytest.raises(ValueError, match="at least one finite"):
        MetricsConfig(buckets=[])
    with pytest.raises(ValueError, match="namespace"):
        MetricsConfig(namespace="my-app")
    with pytest.raises(ConfigurationError, match="backnd.*did you mean 'backend'"):
        compose(NodeCompute, ["metrics"])(capability_config={"metrics": {"backnd": "memory"}})
    with pytest.raises(ConfigurationError, match="backend"):
        compose(NodeCompute, ["metrics"])(capability_config={"metrics": {"backend": "statsd"}})


# -- snapshot and reset -----------------------------------------------------------------------


def test_snapshot_is_a_copy() -> None:
    m = Metrics()
    m.increment("x")
    m.histogram("h", 1)
    snap = m.snapshot()
    snap["counters"]["x"] = 100
    snap["histograms"]["h"]["buckets"]["+Inf"] = 100
    assert m.snapshot()["counters"]["x"] == 1
    assert m.snapshot()["histograms"]["h"]["buckets"]["+Inf"] == 1


def test_reset_clears_values_but_keeps_definitions() -> None:
    m = Metrics()
    m.increment("x", 3)
    m.gauge("g", 1)
    m.reset()
    assert m.snapshot() == {"counters": {}, "gauges": {}, "histograms": {}}
    m.increment("x")
    assert m.snapshot()["counters"]["x"] == 1
    with pytest.raises(MetricsError, match="is a gauge"):
        m.increment("g")


# -- Prometheus ---------------------------------------------------------------------------------


def test_namespace_prefixes_exported_names_only() -> None:
    m = Metrics(MetricsConfig(namespace="shop"))
    m.increment("orders", labels={"kind": "web"})
    m.gauge("stock", 4)
    assert m.snapshot()["counters"] == {'orders{kind="web"}': 1}
    text = parse(m.exposition())
    assert text['shop_orders_total{kind="web"}'] == 1
    assert text["shop_stock"] == 4


def test_each_node_has_its_own_registry() -> None:
    Service = compose(NodeCompute, ["metrics"])
    a, b = Service(), Service()
    a.metrics.increment("requests", 2)
    b.metrics.increment("requests", 5)
    assert a.metrics.registry is not b.metrics.registry
    assert parse(a.metrics.exposition())["requests_total"] == 2
    assert parse(b.metrics.exposition())["requests_total"] == 5
    # and the process-global default registry is left alone
    assert prometheus_client.REGISTRY.get_sample_value("requests_total") is None


def test_prometheus_backend_mirrors_every_call_on_a_per_node_registry() -> None:
    Service = compose(NodeCompute, ["metrics"])
    cfg = {"metrics": {"backend": "prometheus", "namespace": "app", "buckets": [0.1, 1]}}
    a, b = Service(capability_config=cfg), Service(capability_config=cfg)  # no duplicate error
    clock = ManualClock()
    a.metrics.clock = clock
    for node in (a, b):
        node.metrics.increment("calls", labels={"route": "/x"})
    a.metrics.increment("calls", 4, labels={"route": "/x"})
    with pytest.raises(MetricsError, match="only goes up"):
        a.metrics.increment("calls", -1, labels={"route": "/x"})
    a.metrics.gauge("depth", 3)
    a.metrics.histogram("size", 0.5)
    with a.metrics.timer("took"):
        clock.advance(0.05)
    reg = a.metrics.registry
    assert isinstance(reg, prometheus_client.CollectorRegistry)
    assert reg.get_sample_value("app_calls_total", {"route": "/x"}) == 5
    assert reg.get_sample_value("app_depth") == 3
    assert reg.get_sample_value("app_size_bucket", {"le": "1.0"}) == 1
    assert reg.get_sample_value("app_size_bucket", {"le": "0.1"}) == 0
    assert reg.get_sample_value("app_took_sum") == pytest.approx(0.05)
    assert b.metrics.registry.get_sample_value("app_calls_total", {"route": "/x"}) == 1
    assert a.metrics.snapshot()["counters"] == {'calls{route="/x"}': 5}
    assert "app_calls_created" in a.metrics.exposition()  # prometheus_client's own series


def test_prometheus_backend_keeps_its_data_on_reset() -> None:
    m = build_metrics(MetricsConfig(backend="prometheus"))
    m.increment("x", 2)
    m.reset()
    assert m.snapshot()["counters"] == {}
    assert m.registry.get_sample_value("x_total") == 2
    m.increment("x")
    assert m.registry.get_sample_value("x_total") == 3
    assert m.snapshot()["counters"] == {"x": 1}


def test_exposition_matches_the_snapshot_on_the_memory_backend() -> None:
    m = Metrics()
    m.increment("a", 2, labels={"k": "v"})
    m.gauge("b", 1.5)
    m.histogram("c", 0.3)
    text = parse(m.exposition())
    assert text['a_total{k="v"}'] == 2
    assert text["b"] == 1.5
    assert text["c_count"] == 1
    assert m.exposition().startswith("# HELP a_total counter a (onex-compose)")


# -- threads ----------------------------------------------------------------------------------


def test_increments_from_threads_are_not_lost() -> None:
    m = Metrics()
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for _ in range(20_000):
            m.increment("hits")
            m.increment("by_thread", labels={"t": i % 2})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters = m.snapshot()["counters"]
    assert counters["hits"] == 160_000
    assert counters['by_thread{t="0"}'] + counters['by_thread{t="1"}'] == 160_000


# -- bound counters (bind_counter) -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
@pytest.mark.parametrize("labels", [None, {"route": "a", "code": 200}])
def test_a_bound_counter_counts_like_increment(backend: str,
                                              labels: dict[str, object] | None) -> None:
    m = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    key = "hits" if labels is None else 'hits{code="200",route="a"}'
    hits = m.bind_counter("hits", labels=labels)
    assert m.snapshot()["counters"] == {}  # the series appears on the first call
    hits()
    hits(4)
    hits(0.5)
    m.increment("hits", 1, labels=labels)  # the same series as increment's
    assert m.snapshot()["counters"] == {key: 6.5}
    assert parse(m.exposition())[key.replace("hits", "hits_total")] == 6.5
    assert "hits" in repr(hits)


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
def test_a_bound_counter_refuses_negative_steps_and_non_numbers(backend: str) -> None:
    m = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    hits = m.bind_counter("hits", labels={"route": "a"})
    with pytest.raises(MetricsError, match=r"only goes up.*>= 0"):  # before the first call
        hits(-1)
    assert m.snapshot()["counters"] == {}
    hits(3)
    with pytest.raises(MetricsError, match=r"only goes up.*>= 0") as info:  # the fast path
        hits(-2)
    assert info.value.metric == "hits"
    with pytest.raises(MetricsError, match="must be a number"):
        hits("1")  # type: ignore[arg-type]
    assert m.snapshot()["counters"] == {'hits{route="a"}': 3}
    assert parse(m.exposition())['hits_total{route="a"}'] == 3.0


def test_bind_counter_checks_the_metric_once_at_bind_time() -> None:
    m = Metrics()
    m.gauge("level", 1)
    with pytest.raises(MetricsError, match="is a gauge"):
        m.bind_counter("level")
    m.increment("calls", labels={"a": "x"})
    with pytest.raises(MetricsError, match="label names"):
        m.bind_counter("calls", labels={"b": "x"})
    with pytest.raises(MetricsError, match="invalid metric name"):
        m.bind_counter("bad name")
    with pytest.raises(MetricsError, match="invalid label name"):
        m.bind_counter("calls", labels={"__a": "x"})
    m.bind_counter("fresh", labels={"a": "x"})  # defines the metric: its label names are fixed
    with pytest.raises(MetricsError, match="label names"):
        m.increment("fresh")


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
def test_a_bound_counter_survives_reset(backend: str) -> None:
    m = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    hits = m.bind_counter("hits", labels={"route": "a"})
    hits(2)
    m.reset()
    assert m.snapshot()["counters"] == {}
    hits()
    m.increment("hits", labels={"route": "a"})
    assert m.snapshot()["counters"] == {'hits{route="a"}': 2}
    if backend == "prometheus":  # the mirror keeps its data across reset()
        assert m.registry.get_sample_value("hits_total", {"route": "a"}) == 4


def test_a_bound_counter_survives_reconfiguration_and_backend_switches() -> None:
    node = compose(NodeCompute, ["metrics"])()
    hits = node.metrics.bind_counter("hits")
    hits(5)
    node.setup_metrics({"namespace": "v2"})
    assert node.metrics.snapshot()["counters"] == {}
    hits()
    assert parse(node.metrics.exposition())["v2_hits_total"] == 1
    node.setup_metrics({"backend": "prometheus"})
    hits(2)
    assert node.metrics.snapshot()["counters"] == {"hits": 2}
    assert node.metrics.registry.get_sample_value("hits_total") == 2  # the mirror is fed
    with pytest.raises(MetricsError, match="only goes up"):
        hits(-1)
    node.setup_metrics(None)
    hits(3)
    assert node.metrics.snapshot()["counters"] == {"hits": 3}
    assert parse(node.metrics.exposition())["hits_total"] == 3


def test_bound_counters_from_threads_are_not_lost() -> None:
    m = Metrics()
    hits = m.bind_counter("hits", labels={"t": "all"})
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            hits()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot()["counters"]['hits{t="all"}'] == 160_000


# -- the mixin, alone and composed --------------------------------------------------------------


def test_compose_by_name_and_alias() -> None:
    Service = compose(NodeCompute, ["metrics"])
    assert Service is compose(NodeCompute, ["performance_metrics"])
    assert has_capability(Service, "metrics") and has_capability(Service, "performance_metrics")
    node = Service()
    assert isinstance(node.metrics, Metrics)
    assert isinstance(node.metrics, MetricsProtocol)


def test_hand_written_class_and_contract_config() -> None:
    class Service(NodeEffect, MixinMetrics):
        pass

    node = Service({"subcontracts": {"metrics": {"namespace": "eff"}}})
    node.metrics.increment("writes")
    assert "eff_writes_total 1.0" in node.metrics.exposition()


def test_facility_works_when_setup_never_ran() -> None:
    Service = compose(NodeCompute, ["metrics"])
    node = _without_setup(Service)  # setup never ran: the node builds the defaults
    node.metrics.increment("x")
    node.metrics.gauge("y", 2)
    with node.metrics.timer("z"):
        pass
    assert node.metrics.snapshot()["counters"] == {"x": 1}


def test_setup_again_reconfigures_in_place() -> None:
    node = compose(NodeCompute, ["metrics"])()
    facility = node.metrics
    facility.increment("x")
    node.setup_metrics({"namespace": "v2"})
    assert node.metrics is facility  # others keep a reference to it
    assert facility.config.namespace == "v2"
    assert facility.snapshot()["counters"] == {}
    node.setup_metrics({"backend": "prometheus"})
    assert node.metrics is facility
    facility.increment("x", 2)
    assert facility.registry.get_sample_value("x_total") == 2
    node.setup_metrics(None)
    facility.increment("x")
    assert facility.config == MetricsConfig()
    assert parse(facility.exposition())["x_total"] == 1


def test_nodes_with_metrics_pickle_and_rebuild_the_facility() -> None:
    node = compose(NodeCompute, ["metrics"])(capability_config={"metrics": {"namespace": "p"}})
    node.metrics.increment("x")
    copy = pickle.loads(pickle.dumps(node))
    assert copy.metrics is not node.metrics
    assert copy.metrics.config.namespace == "p"
    copy.metrics.increment("x")
    assert copy.metrics.snapshot()["counters"] == {"x": 1}  # values are per process, not state


class Doubler(NodeCompute, MixinMetrics):
    async def process(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        if x == 0:
            await asyncio.sleep(10)
        return x * 2


async def test_process_guard_times_every_call_by_outcome() -> None:
    node = Doubler()
    node.metrics.clock = clock = ManualClock()
    raw = getattr(Doubler.process, "__onex_raw__", Doubler.process)  # the body, unguarded
    guarded = node._guard_metrics(raw.__get__(node))
    assert await guarded(3) == 6
    with pytest.raises(ValueError, match="negative"):
        await guarded(-1)
    task = asyncio.ensure_future(guarded(0))
    await asyncio.sleep(0)
    clock.advance(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hists = node.metrics.snapshot()["histograms"]
    assert hists['process_duration{outcome="ok"}']["count"] == 1
    assert hists['process_duration{outcome="error"}']["count"] == 1
    assert hists['process_duration{outcome="cancelled"}']["sum"] == 1.5


async def test_the_engine_pipeline_runs_the_metrics_guard() -> None:
    assert "metrics" in Doubler.__onex_pipeline__
    node = Doubler()
    assert await node.process(2) == 4
    with pytest.raises(ValueError, match="negative"):
        await node.process(-2)
    hists = node.metrics.snapshot()["histograms"]
    assert hists['process_duration{outcome="ok"}']["count"] == 1
    assert hists['process_duration{outcome="error"}']["count"] == 1


async def test_process_guard_can_be_switched_off() -> None:
    node = Doubler(capability_config={"metrics": {"instrument_process": False}})

    async def body(x: int) -> int:
        return x

    assert await node._guard_metrics(body)(5) == 5
    assert node.metrics.snapshot()["histograms"] == {}


def test_sync_process_guard_times_every_call_by_outcome_without_an_event_loop() -> None:
    node = Doubler()
    node.metrics.clock = clock = ManualClock()

    def body(x: int) -> int:
        clock.advance(0.25)
        if x < 0:
            raise ValueError("negative")
        if x == 0:
            raise KeyboardInterrupt
        return x * 2

    guarded = node._guard_sync_metrics(body)
    assert guarded(3) == 6  # a plain value, not a coroutine
    with pytest.raises(ValueError, match="negative"):
        guarded(-1)
    with pytest.raises(KeyboardInterrupt):
        guarded(0)
    hists = node.metrics.snapshot()["histograms"]
    assert hists['process_duration{outcome="ok"}']["sum"] == 0.25
    assert hists['process_duration{outcome="error"}']["count"] == 1
    assert hists['process_duration{outcome="cancelled"}']["count"] == 1
    off = Doubler(capability_config={"metrics": {"instrument_process": False}})
    assert off._guard_sync_metrics(lambda x: x + 1)(1) == 2
    assert off.metrics.snapshot()["histograms"] == {}


class SyncDoubler(NodeCompute):
    def process(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2


def test_a_composed_sync_process_stays_sync_and_is_timed() -> None:
    node = compose(SyncDoubler, ["metrics"])()
    assert node.process(4) == 8  # called directly: no event loop, no coroutine
    with pytest.raises(ValueError, match="negative"):
        node.process(-1)
    hists = node.metrics.snapshot()["histograms"]
    assert hists['process_duration{outcome="ok"}']["count"] == 1
    assert hists['process_duration{outcome="error"}']["count"] == 1


# -- the contract -------------------------------------------------------------------------------


def test_contract_config_section_lists_exactly_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_metrics.yaml").read_text("utf-8"))
    assert data["metrics_config"] == MetricsConfig().model_dump()
    assert data["mixin_name"] == "mixin_metrics"
    assert list(MetricsConfig().buckets) == list(DEFAULT_BUCKETS)
    assert data["composition"]["aliases"] == ["performance_metrics"]
    assert data["requires_dependencies"] == []


def test_contract_follows_the_documented_schema() -> None:
    data = yaml.safe_load(Path(CONTRACTS_DIR / "mixin_metrics.yaml").read_text("utf-8"))
    assert 20 <= len(data["description"]) <= 500
    for action in data["actions"]:
        assert {"name", "description", "inputs", "outputs", "required", "timeout_ms"} <= set(action)
        assert 1 <= action["timeout_ms"] <= 300_000
    try:  # the contract models (being written by the contracts engineer)
        from onex_compose._contracts import ModelMixinContract
    except ImportError:
        return
    contract = ModelMixinContract.model_validate(data)
    assert contract.capability == "metrics"
    assert contract.config == MetricsConfig().model_dump()


def test_docstring_examples_run() -> None:
    import doctest

    import onex_compose.capabilities.metrics as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10
    assert result.failed == 0


def _without_setup(cls):  # type: ignore[no-untyped-def]
    """An instance whose setup hooks never ran (a user _initialize_mixins that does nothing)."""

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract=None, capability_config=None):  # type: ignore[no-untyped-def]
            return None

    return Bare()


def test_without_prometheus_client_the_errors_say_how_to_install_it(monkeypatch) -> None:
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "prometheus_client" else real(name, *a))
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises
    service = compose(NodeCompute, ["metrics"])
    # backend: prometheus used to pass setup and raise ModuleNotFoundError at the first call
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[prometheus\]'"):
        service(capability_config={"metrics": {"backend": "prometheus"}})
    node = service()
    with pytest.raises(ConfigurationError, match="backend 'prometheus'"):
        node.setup_metrics({"backend": "prometheus"})
    node.metrics.increment("calls")  # the memory backend needs no client ...
    assert node.metrics.snapshot()["counters"] == {"calls": 1}
    with pytest.raises(ModuleNotFoundError, match=r"exposition\(\) needs prometheus_client.*"
                                                  r"pip install 'onex-compose\[prometheus\]'"):
        node.metrics.exposition()  # ... exposition does, and says so


def test_declared_buckets_apply_to_one_histogram_and_are_checked() -> None:
    from onex_compose.capabilities.metrics import Metrics, MetricsError

    m = Metrics()
    m.declare_buckets("latency_ms", [1, 10, 100])
    m.histogram("latency_ms", 50)
    m.histogram("other_seconds", 0.2)
    snap = m.snapshot()["histograms"]
    assert list(snap["latency_ms"]["buckets"]) == ["1.0", "10.0", "100.0", "+Inf"]
    assert "0.005" in snap["other_seconds"]["buckets"]  # the config's default (seconds)
    with pytest.raises(MetricsError, match="strictly increasing"):
        m.declare_buckets("x", [5, 1])
    with pytest.raises(MetricsError, match="already observed"):
        m.declare_buckets("latency_ms", [2, 20])


# -- scrape-time gauges -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
def test_gauge_callback_is_read_at_scrape_time_by_snapshot_and_export(backend: str) -> None:
    m = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    level = {"a": 1, "b": 7}
    m.gauge_callback("level", lambda: level["a"], labels={"pool": "a"})
    m.gauge_callback("level", lambda: level["b"], labels={"pool": "b"})
    m.gauge_callback("plain_level", lambda: 2.5)
    level["a"] = 4
    assert m.snapshot()["gauges"] == {'level{pool="a"}': 4, 'level{pool="b"}': 7,
                                      "plain_level": 2.5}
    level["a"] = 0
    exported = parse(m.exposition())
    assert exported['level{pool="a"}'] == 0.0 and exported["plain_level"] == 2.5
    m.gauge_callback("level", lambda: 11, labels={"pool": "a"})  # replaces the function
    assert m.snapshot()["gauges"]['level{pool="a"}'] == 11
    with pytest.raises(MetricsError, match="gauge_callback"):
        m.gauge("level", 3, labels={"pool": "a"})  # the series belongs to its callback
    m.remove_gauge_callback("level", labels={"pool": "a"})
    assert 'level{pool="a"}' not in m.snapshot()["gauges"]
    assert 'level{pool="a"}' not in parse(m.exposition())
    m.gauge("level", 3, labels={"pool": "a"})  # a plain series again
    assert m.snapshot()["gauges"]['level{pool="a"}'] == 3


def test_gauge_callback_replaces_a_plain_series_and_survives_reset_and_reconfigure() -> None:
    m = Metrics()
    m.gauge("depth", 1)
    m.gauge_callback("depth", lambda: 9)
    with pytest.raises(MetricsError, match="gauge_callback"):
        m.gauge("depth", 2)  # the old fast-path entry is gone too
    m.reset()
    assert m.snapshot()["gauges"] == {"depth": 9}
    m.configure(MetricsConfig(namespace="shop"))
    assert m.snapshot()["gauges"] == {"depth": 9}
    assert parse(m.exposition())["shop_depth"] == 9.0


def test_gauge_callback_errors_are_clear() -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match="callable"):
        m.gauge_callback("depth", 3)  # type: ignore[arg-type]
    m.increment("requests")
    with pytest.raises(MetricsError, match="is a counter"):
        m.gauge_callback("requests", lambda: 1)

    def broken() -> float:
        raise ZeroDivisionError

    m.gauge_callback("broken", broken)
    with pytest.raises(MetricsError, match=r"broken: the callback raised ZeroDivisionError"):
        m.snapshot()
    m.remove_gauge_callback("broken")
    m.remove_gauge_callback("never_registered")  # nothing to do
    assert m.snapshot()["counters"] == {"requests": 1}

"""The profiling capability: sampled profiles, layer attribution, latency quantiles, outputs."""

from __future__ import annotations

import asyncio
import cProfile
import importlib.util
import json
import math
import random
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    Registry,
    capability,
    compose,
    explain,
    has_capability,
)
from onex_compose._cli import main as cli_main
from onex_compose._registry import default_registry
from onex_compose.capabilities import MANIFEST
from onex_compose.capabilities.profiling import (
    LatencyHistogram,
    LatencySummary,
    MixinProfiling,
    Profiler,
    ProfilerBusyError,
    ProfileReport,
    ProfilingConfig,
    profiled,
)
from onex_compose.capabilities.profiling._report import layer_of

HAS_PYINSTRUMENT = importlib.util.find_spec("pyinstrument") is not None
needs_pyinstrument = pytest.mark.skipif(not HAS_PYINSTRUMENT,
                                        reason="sampling mode needs pyinstrument "
                                               "(pip install 'onex-compose[profiling]')")


def slow_part(n: int = 400_000) -> int:
    """About 20 ms of CPU in this frame alone (no calls inside the loop)."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def fast_part() -> int:
    return 1


class Work(NodeCompute):
    async def process(self, n: int) -> int:
        return slow_part(n) + fast_part()


class SyncWork(NodeCompute):
    def process(self, n: int) -> int:
        return slow_part(n) + fast_part()


def make(cfg: dict[str, Any] | None = None, base: type = Work,
         caps: tuple[str, ...] = ("profiling",)) -> Any:
    return compose(base, list(caps))(capability_config={"profiling": cfg or {}})


def counters(node: Any) -> dict[str, float]:
    return dict(node.metrics.snapshot()["counters"])


# -- config and contract -----------------------------------------------------------------------


def test_the_contract_mirrors_the_config_and_places_the_guard_at_rank_15() -> None:
    path = Path(__file__).parents[1] / "capabilities" / "profiling" / "mixin_profiling.yaml"
    contract = yaml.safe_load(path.read_text())
    assert contract["profiling_config"] == ProfilingConfig().model_dump()
    assert contract["composition"]["guard_rank"] == 15
    assert contract["composition"]["rank"] == 120
    assert {a["name"] for a in contract["actions"]} == {"capture", "report", "latency", "reset"}
    reqs = {r["name"]: r["optional"] for r in contract["requires_dependencies"]}
    assert reqs == {"metrics": False, "tracing": True, "logging": True}
    assert {m["name"] for m in contract["metrics"]} == {
        "profiling_profiles_total", "profiling_skipped_total", "profiling_slow_calls_total"}


@pytest.mark.parametrize(("field", "value"), [
    ("sample_rate", 1.5), ("sample_rate", -0.1), ("slow_call_threshold", -1.0),
    ("profile_after_slow", -1), ("mode", "statistical"), ("unknown", 1),
])
def test_bad_config_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        ProfilingConfig(**{field: value})
    with pytest.raises(ConfigurationError, match=f"- {field}"):
        make({field: value})


def test_sampling_mode_without_pyinstrument_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyinstrument" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"onex-compose\[profiling\]"):
        make({"mode": "sampling"})
    with pytest.raises(ConfigurationError, match="pyinstrument"):
        make().profiler.capture(mode="sampling")


def test_seed_name_and_composition() -> None:
    from onex_compose.mixin import MixinProfiling as FromSeedPath

    assert FromSeedPath is MixinProfiling
    cls = compose(Work, ["profiling", "caching"])
    assert has_capability(cls, "metrics")  # required
    assert cls.__onex_pipeline__[0] == "profiling"  # outside metrics (20) and caching (40)
    assert cls.__onex_pipeline__.index("profiling") < cls.__onex_pipeline__.index("metrics")
    assert "guard rank 15" in str(explain(cls))


def test_report_with_no_profiles_is_empty_not_an_error() -> None:
    node = make()
    report = node.profiler.report()
    assert report.profiles == 0 and report.functions == [] and report.to_collapsed() == ""
    assert json.loads(report.to_json())["profiles"] == 0


# -- deterministic and sampling profiles -------------------------------------------------------


async def test_deterministic_mode_names_the_slow_function_first() -> None:
    node = make({"sample_rate": 1.0})
    for _ in range(3):
        await node.process(400_000)
    report = node.profiler.report()
    assert report.profiles == 3 and report.modes == {"deterministic": 3}
    top = report.functions[0]
    assert top.qualname == "slow_part" and top.calls == 3
    assert top.share >= 0.8
    assert top.location.endswith(f"test_profiling.py:{slow_part.__code__.co_firstlineno}")
    assert any(f.qualname == "fast_part" for f in node.profiler.report(top=1000).functions)
    assert report.capabilities["node"]["share"] >= 0.8
    assert counters(node)['profiling_profiles_total{mode="deterministic"}'] == 3


def test_a_sync_process_is_profiled_the_same_way() -> None:
    node = make({"sample_rate": 1.0}, base=SyncWork)
    assert node.process(200_000) == slow_part(200_000) + 1
    report = node.profiler.report()
    assert report.functions[0].qualname == "slow_part" and report.functions[0].share >= 0.8
    assert node.profiler.latency("process").count == 1


@needs_pyinstrument
async def test_sampling_mode_names_the_slow_function_first() -> None:
    node = make({"sample_rate": 1.0, "mode": "sampling", "interval": 0.0005})
    for _ in range(4):
        await node.process(600_000)
    report = node.profiler.report()
    assert report.modes == {"sampling": 4}
    assert report.functions[0].qualname == "slow_part"
    assert report.functions[0].share >= 0.6


# -- layer attribution -------------------------------------------------------------------------


def _toy_registry() -> Registry:
    reg = Registry(name="profiling-burn")
    reg.load_manifest(MANIFEST)

    @capability("burn", registry=reg, guard_rank=30)
    class MixinBurn:
        __slots__ = ()

        def _guard_burn(self, call: Callable[..., Awaitable[Any]]
                        ) -> Callable[..., Awaitable[Any]]:
            async def burning(*args: Any, **kwargs: Any) -> Any:
                x = 0
                for i in range(200_000):  # ~10 ms of CPU in the guard's own frame
                    x += i
                return await call(*args, **kwargs)
            return burning

    return reg


@pytest.mark.parametrize("mode", ["deterministic",
                                  pytest.param("sampling", marks=needs_pyinstrument)])
async def test_a_guard_that_burns_cpu_is_the_top_layer(mode: str) -> None:
    reg = _toy_registry()
    cls = compose(Work, ["profiling", "burn"], registry=reg)
    node = cls(capability_config={"profiling": {"sample_rate": 1.0, "mode": mode,
                                                "interval": 0.0005}})
    for _ in range(5):
        await node.process(10)
    layers = node.profiler.report().capabilities
    assert next(iter(layers)) == "burn", layers
    assert layers["burn"]["share"] >= 0.5


@needs_pyinstrument
async def test_sampling_puts_a_rate_limiter_wait_under_rate_limiting() -> None:
    class Quick(NodeCompute):
        async def process(self, n: int) -> int:
            return slow_part(n)

    node = compose(Quick, ["profiling", "rate_limiting"])(capability_config={
        "profiling": {"sample_rate": 1.0, "mode": "sampling"},
        "rate_limiting": {"limit": 20, "period": 1.0, "burst": 1, "mode": "wait"}})
    for _ in range(5):  # each call after the first waits ~50 ms for its permit
        await node.process(1000)
    layers = node.profiler.report().capabilities
    assert layers["rate_limiting"]["share"] >= 0.5, layers


def test_layer_rules() -> None:
    import onex_compose.capabilities.rate_limiting as rl

    assert layer_of(rl.__file__, "RateLimiter.acquire") == "rate_limiting"
    assert layer_of(__file__, "Work.process") == "node"
    assert layer_of(__file__, "MixinX._guard_sync_tenant.<locals>.wrapped") == "tenant"
    assert layer_of(asyncio.__file__, "sleep") is None
    import onex_compose.capabilities._context as ctx

    assert layer_of(ctx.__file__, "remaining") is None  # shared helpers belong to their caller


# -- sampling rate and zero cost ---------------------------------------------------------------


async def test_sample_rate_with_a_seed_profiles_exactly_the_predicted_calls() -> None:
    node = make({"sample_rate": 0.25, "seed": 7, "keep": "latest"})
    draws = random.Random(7)
    predicted = [i for i in range(40) if draws.random() < 0.25]
    for i in range(40):
        await node.process(i)  # the input is the call's index; slow_part(i) returns its sum
    got = list(node.profiler.profiles())
    assert len(got) == len(predicted) and 0 < len(predicted) < 40
    assert counters(node)['profiling_profiles_total{mode="deterministic"}'] == len(predicted)


async def test_sample_rate_zero_never_constructs_a_profiler(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    made: list[Any] = []
    real = cProfile.Profile

    def spy(*a: Any, **k: Any) -> Any:
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cProfile, "Profile", spy)
    node = make({"sample_rate": 0.0})
    for _ in range(50):
        await node.process(10)
    assert made == []
    assert node.profiler.latency().count == 50
    on = make({"sample_rate": 1.0})
    await on.process(10)
    assert made == [1]  # the spy sees a real profile


async def test_latency_off_and_rate_zero_passes_straight_through() -> None:
    node = make({"latency": False})
    assert node.profiler._guard_mode == 0
    assert await node.process(10) == slow_part(10) + 1
    with pytest.raises(KeyError, match="latency is off"):
        node.profiler.latency("process")


# -- concurrency -------------------------------------------------------------------------------


async def test_two_concurrent_sampled_calls_profile_one_and_count_one_skip() -> None:
    class Waits(NodeCompute):
        async def process(self, gate: asyncio.Event) -> int:
            await gate.wait()
            return 1

    node = make({"sample_rate": 1.0}, base=Waits)
    gate = asyncio.Event()
    first = asyncio.ensure_future(node.process(gate))
    second = asyncio.ensure_future(node.process(gate))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 30) == [1, 1]
    assert node.profiler.report().profiles == 1
    snap = counters(node)
    assert snap['profiling_skipped_total{reason="busy"}'] == 1
    assert snap['profiling_profiles_total{mode="deterministic"}'] == 1
    assert node.profiler.latency().count == 2


def test_an_explicit_capture_in_a_busy_thread_raises() -> None:
    node = make()
    with node.profiler.capture("outer"), pytest.raises(ProfilerBusyError, match="inner"), \
            node.profiler.capture("inner"):
        pass
    assert node.profiler.report().profiles == 1


def test_profiles_in_two_threads_do_not_disturb_each_other() -> None:
    node = make({"sample_rate": 1.0}, base=SyncWork)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(3):
                node.process(20_000)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert node.profiler.report().profiles == 6


# -- latency quantiles -------------------------------------------------------------------------


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(1, math.ceil(q * len(sorted_values) - 1e-9)) - 1]


_DISTRIBUTIONS = st.sampled_from(["lognormal", "exponential", "uniform", "pareto", "bimodal",
                                  "with_zeros"])


@settings(max_examples=30, deadline=None)
@given(kind=_DISTRIBUTIONS, scale=st.floats(1e-6, 10.0), shape=st.floats(0.2, 3.0),
       seed=st.integers(0, 2**32 - 1))
def test_quantiles_are_within_one_percent_of_the_exact_ones(kind: str, scale: float,
                                                            shape: float, seed: int) -> None:
    rng = random.Random(seed)
    draw: Callable[[], float] = {
        "lognormal": lambda: scale * rng.lognormvariate(0.0, shape),
        "exponential": lambda: rng.expovariate(1.0 / scale),
        "uniform": lambda: rng.uniform(0.0, scale),
        "pareto": lambda: scale * rng.paretovariate(shape + 0.5),
        "bimodal": lambda: scale * (1.0 if rng.random() < 0.9 else 50.0) * rng.uniform(1, 1.1),
        "with_zeros": lambda: 0.0 if rng.random() < 0.3 else scale * rng.random(),
    }[kind]
    values = [draw() for _ in range(10_000)]
    values = [v if v >= 1e-9 else 0.0 for v in values]  # below 1 ns is a zero by definition
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    values.sort()
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = _nearest_rank(values, q)
        got = h.quantile(q)
        assert abs(got - exact) <= 0.01 * exact, (q, got, exact)
    s = h.summary()
    assert s.count == 10_000 and s.max == values[-1]
    assert math.isclose(s.mean, sum(values) / len(values), rel_tol=1e-9)


async def test_the_guard_records_durations_from_the_injected_clock() -> None:
    durations = [0.002, 0.004, 0.001, 0.003, 0.0]

    class Clock:
        def __init__(self) -> None:
            self.t = 0.0
            self.i = 0

        def __call__(self) -> float:  # start, end, start, end...
            self.i += 1
            if self.i % 2 == 0:
                self.t += durations[self.i // 2 - 1]
            return self.t

    node = make()
    node.profiler.clock = Clock()
    for _ in durations:
        await node.process(1)
    s = node.profiler.latency("process")
    assert s.count == 5 and s.max == 0.004
    assert abs(s.p50 - 0.002) <= 0.00002 and abs(s.p95 - 0.004) <= 0.00004
    assert math.isclose(s.mean, sum(durations) / 5)
    assert node.profiler.latencies() == {"process": s}


async def test_profiled_functions_and_methods_get_their_own_quantiles() -> None:
    class Shop(compose(Work, ["profiling"])):  # type: ignore[misc]
        @profiled("price")
        async def price(self, qty: int) -> int:
            return qty * 2

        @profiled("tax")
        def tax(self, amount: int) -> int:
            return amount // 10

    node = Shop()
    assert await node.price(3) == 6 and node.tax(100) == 10

    @node.profiler.profiled("helper")
    def helper(x: int) -> int:
        return x + 1

    assert helper(1) == 2
    assert set(node.profiler.latencies()) == {"process", "price", "tax", "helper"}
    assert node.profiler.latency("price").count == 1
    with pytest.raises(KeyError, match="known operations: helper, price, process, tax"):
        node.profiler.latency("nope")
    with pytest.raises(ValueError, match="operation name"):
        profiled("")


# -- slow calls and tracing --------------------------------------------------------------------


async def test_a_slow_call_is_counted_reported_and_profiles_the_next_calls() -> None:
    node = make({"slow_call_threshold": 0.0, "profile_after_slow": 2})
    node.profiler.clock = iter(range(1000)).__next__  # every call takes 1 "second"
    await node.process(1)
    assert counters(node)["profiling_slow_calls_total"] == 1
    assert node.profiler.report().profiles == 0
    await node.process(1)  # profiled: the first after the slow one
    assert node.profiler.report().profiles == 1
    report = node.profiler.report()
    assert report.slowest_calls[0].duration_s == 1.0
    assert counters(node)["profiling_slow_calls_total"] == 2


async def test_without_tracing_profiles_have_no_trace_id_but_keep_the_correlation_id() -> None:
    from onex_compose.capabilities import _context

    node = make({"sample_rate": 1.0})
    token = _context.correlation_id.set("req-42")
    try:
        await node.process(1)
    finally:
        _context.correlation_id.reset(token)
    call = node.profiler.report().slowest_calls[0]
    assert call.trace_id is None and call.correlation_id == "req-42"


def _tracing_registered() -> bool:
    return any(spec.name == "tracing" for spec in default_registry)


@pytest.mark.skipif(not _tracing_registered(),
                    reason="the tracing capability is not registered on this branch yet "
                           "(s4-tracing); this test runs once it is")
async def test_with_tracing_profiles_carry_the_trace_id_and_slow_calls_add_a_span_event(
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the [otel] extra")
    cls = compose(Work, ["profiling", "tracing"])
    assert cls.__onex_pipeline__[:3] == ("tracing", "profiling", "metrics")  # ranks 5, 15, 20
    node = cls(capability_config={
        "profiling": {"sample_rate": 1.0, "slow_call_threshold": 0.0},
        "tracing": {"exporter": "memory", "processor": "simple"}})
    await node.process(10)
    profile = node.profiler.profiles()[0]
    spans = node.tracer.exporter.get_finished_spans()
    process_span = next(s for s in spans if s.parent is None)
    assert profile.trace_id == f"{process_span.context.trace_id:032x}"
    report = node.profiler.report()
    assert {c.trace_id for c in report.slowest_calls} == {profile.trace_id}
    events = [e for s in spans for e in s.events if e.name == "profiling.slow_call"]
    assert len(events) == 1 and events[0].attributes["operation"] == "process"
    assert events[0].attributes["threshold_s"] == 0.0


# -- output formats ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["deterministic",
                                  pytest.param("sampling", marks=needs_pyinstrument)])
async def test_output_formats(mode: str) -> None:
    # calls of ~30 ms against a 0.5 ms sampling interval: a sampling profile misses at most the
    # part of one interval at the end of each call
    node = make({"sample_rate": 1.0, "mode": mode, "interval": 0.0005})
    for _ in range(3):
        await node.process(600_000)
    report = node.profiler.report()
    lines = report.to_collapsed().splitlines()
    assert lines and all(re.fullmatch(r"[^ ]+ \d+", line) for line in lines)
    total_us = sum(int(line.rsplit(" ", 1)[1]) for line in lines)
    assert abs(total_us - report.duration_s * 1e6) <= 0.1 * report.duration_s * 1e6
    assert any("slow_part" in line.rsplit(";", 1)[-1] for line in lines)
    back = ProfileReport.from_json(report.to_json())
    assert back == report
    assert json.loads(report.to_json()) == report.to_dict()
    text = report.to_text()
    assert "slow_part" in text and "time by layer" in text and "process" in text


def test_memory_mode_shows_the_big_allocation_first() -> None:
    class Alloc(NodeCompute):
        def process(self, n: int) -> bytearray:
            small = [object() for _ in range(100)]
            del small
            return bytearray(10_000_000)  # the 10 MB line

    node = make({"sample_rate": 1.0, "memory": True}, base=Alloc)
    result = node.process(1)
    assert len(result) == 10_000_000
    report = node.profiler.report()
    top = report.memory[0]
    line = Alloc.process.__code__.co_firstlineno + 3
    assert top.location.endswith(f"test_profiling.py:{line}"), report.memory
    assert top.size_bytes >= 10_000_000
    assert node.profiler.profiles()[0].peak_bytes >= 10_000_000


async def test_capture_profiles_any_block_and_reset_forgets() -> None:
    node = make()
    async with node.profiler.capture(label="warmup") as cap:
        slow_part(100_000)
    assert cap.profile is not None and cap.profile.label == "warmup"
    assert cap.report().functions[0].qualname == "slow_part"
    with node.profiler.capture(label="sync-block"):
        fast_part()
    assert node.profiler.report().profiles == 2
    await node.process(1)
    node.profiler.reset()
    assert node.profiler.report().profiles == 0
    assert node.profiler.latency().count == 0
    with pytest.raises(ValueError, match="capture mode"):
        node.profiler.capture(mode="magic")


async def test_the_ring_keeps_the_slowest_or_the_latest() -> None:
    for keep in ("slowest", "latest"):
        node = make({"sample_rate": 1.0, "max_profiles": 2, "keep": keep})
        clock = iter(x for pair in ((0, 1), (10, 15), (20, 22), (30, 31)) for x in pair)
        node.profiler.clock = clock.__next__  # durations 1, 5, 2, 1
        for _ in range(4):
            await node.process(1)
        durations = [p.duration for p in node.profiler.profiles()]
        assert durations == ([5, 2] if keep == "slowest" else [2, 1])


def test_reprs_explain_the_state() -> None:
    node = make({"sample_rate": 0.5})
    assert "sample_rate=0.5" in repr(node.profiler)
    cap = node.profiler.capture("x")
    assert "not started" in repr(cap)
    assert repr(LatencyHistogram()) == "LatencyHistogram(empty)"
    assert LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0) == LatencyHistogram().summary()


def test_reconfiguring_keeps_an_injected_clock() -> None:
    node = make()
    clock = iter(range(100)).__next__
    node.profiler.clock = clock
    node.setup_profiling({"sample_rate": 0.5})
    assert node.profiler.clock is clock and node.profiler.config.sample_rate == 0.5
    assert isinstance(node.profiler, Profiler)


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_profile_prints_the_top_functions_and_writes_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("100000\n\n200000\n")
    out_json = tmp_path / "report.json"
    out_collapsed = tmp_path / "stacks.txt"
    code = cli_main(["profile", "tests.test_profiling:Work", "--inputs", str(inputs),
                     "--calls", "4", "--json", str(out_json), "--collapsed", str(out_collapsed)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "slow_part" in captured.out and "top functions" in captured.out
    data = json.loads(out_json.read_text())
    assert data["profiles"] == 4 and data["functions"][0]["qualname"] == "slow_part"
    assert all(re.fullmatch(r"[^ ]+ \d+", ln) for ln in out_collapsed.read_text().splitlines())


def test_cli_profile_runs_a_sync_node_and_one_that_already_has_profiling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("50000\n")
    assert cli_main(["profile", "tests.test_profiling:SyncWork", "--inputs", str(inputs)]) == 0
    assert "slow_part" in capsys.readouterr().out
    assert cli_main(["profile", "tests.test_profiling:ProfiledWork", "--inputs", str(inputs),
                     "--calls", "2", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 profile(s)" in out and "slow_part" in out


ProfiledWork = compose(Work, ["profiling"])


def test_cli_profile_bad_module_path_exits_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("1\n")
    assert cli_main(["profile", "no_such_module_xyz:Node", "--inputs", str(inputs)]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert cli_main(["profile", "tests.test_profiling", "--inputs", str(inputs)]) == 2
    assert "MODULE:Class" in capsys.readouterr().err
    assert cli_main(["profile", "tests.test_profiling:Nope", "--inputs", str(inputs)]) == 2
    assert "Nope" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert cli_main(["profile", "tests.test_profiling:Work", "--inputs", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


async def test_a_slow_call_is_logged_through_the_node_log_with_its_trace_id() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the [otel] extra")
    from loguru import logger

    captured: list[dict[str, Any]] = []
    handler = logger.add(lambda m: captured.append(
        {"message": m.record["message"], "level": m.record["level"].name,
         "extra": dict(m.record["extra"])}), level="DEBUG", format="{message}")
    logger.enable("onex_compose")
    try:
        node = compose(Work, ["profiling", "tracing", "logging"])(capability_config={
            "profiling": {"slow_call_threshold": 0.0},
            "tracing": {"exporter": "memory", "processor": "simple"}})
        await node.process(10)
    finally:
        logger.disable("onex_compose")
        logger.remove(handler)
    slow = [r for r in captured if r["message"].startswith("slow call: process")]
    assert len(slow) == 1 and slow[0]["level"] == "WARNING"
    span = node.tracer.exporter.get_finished_spans()[-1]
    assert slow[0]["extra"]["trace_id"] == f"{span.context.trace_id:032x}"
    assert slow[0]["extra"]["operation"] == "process"
    assert slow[0]["extra"]["capability"] == "profiling"


def test_a_profiling_node_pickles_and_runs_across_event_loops() -> None:
    import pickle

    node = make({"sample_rate": 1.0})
    for _ in range(2):
        assert asyncio.run(node.process(10)) == slow_part(10) + 1
    assert node.profiler.report().profiles == 2
    clone = pickle.loads(pickle.dumps(node))
    assert clone.profiler.config.sample_rate == 1.0
    assert asyncio.run(clone.process(10)) == slow_part(10) + 1
    assert clone.profiler.report().profiles == 1  # profiles are not pickled, config is


async def test_many_calls_fold_into_the_histogram_and_a_new_clock_rebinds_the_guard() -> None:
    from onex_compose.capabilities.profiling._latency import BATCH

    node = make()
    for _ in range(BATCH + 10):
        await node.process(0)
    hist = node.profiler.histogram("process")
    assert hist is not None and len(hist.buffer) <= BATCH
    assert node.profiler.latency().count == BATCH + 10
    node.profiler.clock = iter(range(0, 1000, 2)).__next__  # start 0, end 2: 2 s
    await node.process(0)
    assert node.profiler.latency().max == 2.0
    with pytest.raises(TypeError, match="callable"):
        node.profiler.clock = 3.0  # type: ignore[assignment]


async def test_a_profiled_slow_call_is_listed_once() -> None:
    node = make({"sample_rate": 1.0, "slow_call_threshold": 0.0})
    await node.process(10)
    await node.process(10)
    assert len(node.profiler.report().slowest_calls) == 2


def test_composing_and_calling_with_profiling_off_imports_no_profiler() -> None:
    import subprocess
    import sys

    code = ("import asyncio, sys\n"
            "from onex_compose import NodeCompute, compose\n"
            "class N(NodeCompute):\n"
            "    async def process(self, x):\n"
            "        return x\n"
            "node = compose(N, ['profiling'])()\n"
            "asyncio.run(node.process(1))\n"
            "print(sorted(m for m in ('cProfile', 'pyinstrument', 'tracemalloc', 'opentelemetry')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stderr

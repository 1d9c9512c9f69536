"""``self.profiler`` is typed through ``MixinProfiling``; the report's parts are typed too."""

from __future__ import annotations

from typing import Any, assert_type

from onex_compose import NodeCompute
from onex_compose.capabilities.metrics import MixinMetrics
from onex_compose.capabilities.profiling import (
    LatencySummary,
    MixinProfiling,
    Profiler,
    ProfileReport,
    ProfilingProtocol,
    profiled,
)


class PricedService(NodeCompute, MixinMetrics, MixinProfiling):
    async def process(self, input_data: Any) -> Any:
        assert_type(self.profiler, Profiler)
        prof: ProfilingProtocol = self.profiler
        async with prof.capture("price"):
            result = await self.price(input_data)
        assert_type(await self.price(2), float)  # @profiled keeps the signature
        summary: LatencySummary = self.profiler.latency("process")
        report: ProfileReport = prof.report(top=5)
        text: str = report.to_json() + report.to_text() + report.to_collapsed()
        return result, summary.p99, text

    @profiled("price")
    async def price(self, qty: int) -> float:
        return qty * 2.5

"""node_service: service mode, graceful shutdown, signals (omnibase.md section 6, item 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from onex_compose import NodeComputeService, NodeEffectService, explain, has_capability
from onex_compose.capabilities.node_service import ServiceStoppingError


class Slow(NodeComputeService):
    async def process(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"


def test_service_classes_have_node_service() -> None:
    assert has_capability(NodeComputeService, "node_service")
    assert has_capability(NodeEffectService, "node_service")
    assert "node_service" in str(explain(Slow))


async def test_stop_before_start_is_a_noop() -> None:
    node = Slow()
    await node.stop()
    await node.stop()
    assert not node.service.running


async def test_start_returns_at_once_and_stop_is_idempotent() -> None:
    node = Slow()
    await asyncio.wait_for(node.start(), 1)
    assert node.service.running
    await node.stop()
    await node.stop()
    assert not node.service.running


async def test_in_flight_work_finishes_and_callbacks_run() -> None:
    node = Slow(capability_config={"node_service": {"shutdown_timeout": 5}})
    order: list[str] = []
    node.add_shutdown_callback(lambda: order.append("sync-cb"))

    async def async_cb() -> None:
        order.append("async-cb")

    node.add_shutdown_callback(async_cb)
    await node.start()
    task = asyncio.create_task(node.process(0.2))
    await asyncio.sleep(0.01)
    assert node.service.in_flight == 1
    await node.stop()
    assert task.done() and task.result() == "done"
    assert order == ["async-cb", "sync-cb"]  # newest first


async def test_new_calls_are_refused_while_stopping() -> None:
    node = Slow()
    await node.start()
    running = asyncio.create_task(node.process(0.1))
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(node.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(ServiceStoppingError, match="shutting down"):
        await node.process(0)
    await stopping
    assert await running == "done"


async def test_shutdown_timeout_cancels_stragglers() -> None:
    node = Slow(capability_config={"node_service": {"shutdown_timeout": 0.05}})
    await node.start()
    task = asyncio.create_task(node.process(30))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await node.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    node = Slow()
    seen: list[str] = []
    node.add_shutdown_callback(lambda: seen.append("first"))
    node.add_shutdown_callback(lambda: 1 / 0)
    await node.start()
    await node.stop()
    assert seen == ["first"]


def test_works_across_repeated_asyncio_run() -> None:
    node = Slow()

    async def cycle() -> str:
        await node.start()
        result = await node.process(0)
        await node.stop()
        return result

    assert asyncio.run(cycle()) == "done"
    assert asyncio.run(cycle()) == "done"


def test_bad_config_is_a_clear_error() -> None:
    from onex_compose import ConfigurationError

    with pytest.raises(ConfigurationError, match="shutdown_timout.*did you mean 'shutdown_timeout'"):
        Slow(capability_config={"node_service": {"shutdown_timout": 1}})


SERVICE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from onex_compose import NodeComputeService

    class Svc(NodeComputeService):
        async def process(self, x):
            await asyncio.sleep(x)
            return x

    async def main():
        node = Svc(capability_config={"node_service": {"shutdown_timeout": 5}})
        node.add_shutdown_callback(lambda: print("callback", flush=True))
        async def work():
            await asyncio.sleep(0.2)
            print("ready", flush=True)
            r = await node.process(0.5)
            print("finished", r, flush=True)
        t = asyncio.create_task(work())
        await node.serve()
        await t
        print("exited", flush=True)

    asyncio.run(main())
""")


def test_sigterm_lets_in_flight_work_finish() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVICE_SCRIPT], stdout=subprocess.PIPE,
                            text=True, env={**os.environ})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a repeated signal is safe
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    lines = out.split()
    assert "finished" in out and "callback" in out and "exited" in lines
    assert out.index("finished") < out.index("callback")

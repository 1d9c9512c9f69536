"""node_service: service mode, graceful shutdown, signals (omnibase.md section 6, item 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
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


async def test_a_second_stop_waits_for_the_shutdown_under_way() -> None:
    node = Slow(capability_config={"node_service": {"shutdown_timeout": 5}})
    seen: list[str] = []
    node.add_shutdown_callback(lambda: seen.append("callback"))
    await node.start()
    work = asyncio.create_task(node.process(0.2))
    await asyncio.sleep(0.01)
    first = asyncio.create_task(node.stop())
    await asyncio.sleep(0.01)
    await node.stop()  # returns only once the first stop has drained, called back and closed
    assert work.done() and seen == ["callback"]
    assert not node.service.running and node._onex_closed
    await first


async def test_serve_returns_only_when_the_shutdown_is_complete() -> None:
    node = Slow(capability_config={"node_service": {"shutdown_timeout": 5,
                                                     "handle_signals": False}})
    seen: list[str] = []
    node.add_shutdown_callback(lambda: seen.append("callback"))
    serving = asyncio.create_task(node.serve())
    await asyncio.sleep(0.01)
    work = asyncio.create_task(node.process(0.2))
    await asyncio.sleep(0.01)
    asyncio.create_task(node.stop())  # another task begins the shutdown
    await asyncio.wait_for(serving, 5)
    assert work.done() and seen == ["callback"]
    assert not node.service.running and node.service.in_flight == 0


async def test_timeout_on_a_signal_stop_still_runs_callbacks_and_closes() -> None:
    """The stop task started by a signal must not cancel itself with the stragglers."""
    node = Slow(capability_config={"node_service": {"shutdown_timeout": 0.05,
                                                     "handle_signals": False}})
    seen: list[str] = []

    async def async_cb() -> None:
        await asyncio.sleep(0)
        seen.append("async-cb")

    node.add_shutdown_callback(lambda: seen.append("sync-cb"))
    node.add_shutdown_callback(async_cb)
    serving = asyncio.create_task(node.serve())
    await asyncio.sleep(0.01)
    straggler = asyncio.create_task(node.process(30))
    await asyncio.sleep(0.01)
    node._on_signal(signal.SIGTERM)  # what the loop's SIGTERM handler calls
    await asyncio.wait_for(serving, 5)
    assert seen == ["async-cb", "sync-cb"]
    assert node._onex_closed and not node.service.running
    with pytest.raises(asyncio.CancelledError):
        await straggler


async def test_closing_the_node_directly_ends_service_mode() -> None:
    node = Slow(capability_config={"node_service": {"handle_signals": False}})
    seen: list[str] = []
    node.add_shutdown_callback(lambda: seen.append("callback"))
    serving = asyncio.create_task(node.serve())
    await asyncio.sleep(0.01)
    await node.aclose()  # not stop(): serve() must not block forever
    await asyncio.wait_for(serving, 5)
    assert seen == ["callback"] and not node.service.running

    seen.clear()
    async with Slow() as other:
        other.add_shutdown_callback(lambda: seen.append("with"))
    assert seen == ["with"] and not other.service.running


async def test_restart_after_stop_serves_again() -> None:
    node = Slow()
    for _ in range(2):
        await node.start()
        assert await node.process(0) == "done"
        await node.stop()
        assert not node.service.running


@pytest.mark.parametrize("bad", [-1, "5", float("nan"), True])
async def test_stop_timeout_must_be_a_non_negative_number(bad: object) -> None:
    from onex_compose import ConfigurationError

    node = Slow()
    await node.start()
    with pytest.raises(ConfigurationError, match="non-negative number of seconds"):
        await node.stop(timeout=bad)  # type: ignore[arg-type]
    await node.stop()


DRAIN_SCRIPT = textwrap.dedent("""
    import asyncio
    from onex_compose import NodeComputeService

    class Svc(NodeComputeService):
        async def process(self, x):
            await asyncio.sleep(x)
            return x

    async def main():
        node = Svc(capability_config={"node_service": {"shutdown_timeout": 5}})
        node.add_shutdown_callback(lambda: print("callback", flush=True))
        async def work():
            await asyncio.sleep(0.1)
            print("ready", flush=True)
            r = await node.process(0.6)
            print("finished", r, flush=True)
        async def announce():
            await asyncio.sleep(0.05)
            await node.service.shutdown_event.wait()
            print("draining", flush=True)
        t = asyncio.create_task(work())
        a = asyncio.create_task(announce())
        await node.serve()
        print("served", node.service.in_flight, node.service.running, flush=True)
        await t
        print("exited", flush=True)

    asyncio.run(main())
""")


def test_sigint_drains_and_a_second_signal_during_the_drain_does_not_kill_the_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", DRAIN_SCRIPT], stdout=subprocess.PIPE,
                            text=True, env={**os.environ})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)  # Ctrl-C starts the same graceful shutdown as SIGTERM
    assert proc.stdout.readline().strip() == "draining"
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # mid-drain: must be ignored, not the default action
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    # serve() returned only after the drain and the callbacks, with nothing in flight
    assert lines[:3] == ["finished 0.6", "callback", "served 0 False"], lines
    assert lines[-1] == "exited"


async def test_reconfiguring_a_running_service_keeps_its_state() -> None:
    node = Slow()
    seen: list[str] = []
    node.add_shutdown_callback(lambda: seen.append("callback"))
    await node.start()
    assert await node.process(0) == "done"  # the guard is bound to the node's runtime now
    node.setup_node_service({"shutdown_timeout": 5})  # seed style: setup_<capability>(dict)
    assert node.service.running and node.service.config.shutdown_timeout == 5
    work = asyncio.create_task(node.process(0.1))
    await asyncio.sleep(0.01)
    assert node.service.in_flight == 1  # counted by the runtime stop() looks at
    await node.stop()
    assert work.done() and seen == ["callback"] and not node.service.running


async def test_stop_called_from_inside_process_does_not_wait_for_itself() -> None:
    class Commanded(NodeComputeService):
        async def process(self, command: str) -> str:
            if command == "shutdown":  # a node told to shut down by one of its own calls
                await self.stop()
                return "bye"
            await asyncio.sleep(0.05)
            return command

    node = Commanded(capability_config={"node_service": {"shutdown_timeout": 10}})
    await node.start()
    other = asyncio.create_task(node.process("work"))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await node.process("shutdown") == "bye"
    assert time.monotonic() - started < 2  # drained the other call, not its own 10 s timeout
    assert await other == "work" and not node.service.running


# -- a sync def process on a service (the sync-guard protocol, issue 9 point 6) -----------------


class SyncWork(NodeComputeService):
    def process(self, gate: threading.Event) -> str:  # type: ignore[override]
        self.entered.set()
        if not gate.wait(20):
            raise TimeoutError("the gate was never opened")
        return "done"


def test_sync_process_on_a_service_stays_sync_and_is_counted() -> None:
    node = SyncWork()
    node.entered = threading.Event()
    gate = threading.Event()
    gate.set()
    assert node.process(gate) == "done"  # no event loop
    assert node.service.in_flight == 0
    assert SyncWork.__onex_pipeline_kind__ == "sync"


async def test_stop_waits_for_a_sync_call_in_a_worker_thread_then_refuses_new_ones() -> None:
    node = SyncWork()
    node.entered = threading.Event()
    gate = threading.Event()
    await node.start()
    call = asyncio.ensure_future(asyncio.to_thread(node.process, gate))
    deadline = time.monotonic() + 20
    while not node.entered.is_set():
        assert time.monotonic() < deadline, "the sync call never started"
        await asyncio.sleep(0.01)
    assert node.service.in_flight == 1
    stopping = asyncio.ensure_future(node.stop(timeout=20))
    while not node.service.stopping:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    with pytest.raises(ServiceStoppingError):
        node.process(gate)
    assert not stopping.done()  # draining: it waits for the call in the worker thread
    gate.set()
    assert await asyncio.wait_for(call, 20) == "done"
    await asyncio.wait_for(stopping, 20)  # woken from the worker thread, well before 20 s
    assert node.service.stopped and node.service.in_flight == 0

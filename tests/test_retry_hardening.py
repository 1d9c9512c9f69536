"""Retry hardening (issue 9, point 2): the nested-retry mark belongs to the task or thread that
runs the loop; process() is retried by node type; predicates, callbacks and dotted exception
paths decide what is retried; a sync ``def process`` is retried through ``run_sync``.

Nothing here sleeps for timing: policies use ``sleep: false`` or a ``ManualClock``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    NodeEffect,
    NodeOrchestrator,
    NodeReducer,
    compose,
    explain,
)
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.retry import RetryAttempt, RetryConfig, RetryHooks, RetryPolicy


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``value``."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError,
                 value: Any = "ok") -> None:
        self.failures, self.error, self.value = failures, error, value
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return self.value

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return self(*args, **kwargs)


def quick(**cfg: Any) -> RetryPolicy:
    return RetryPolicy({"sleep": False, **cfg})


# -- 1. the nested-retry mark is keyed to the task or thread that owns the loop ---------------


async def test_task_created_inside_a_retried_process_retries_on_its_own() -> None:
    """The issue's case: a background task outlives process() and kept the mark (1 attempt)."""
    flaky = Flaky(2)

    class Node(NodeCompute):
        async def process(self, x: int) -> Any:
            self.background = asyncio.create_task(self.with_retry(flaky.acall, max_attempts=5))
            return x

    node = compose(Node, ["retry"])(capability_config={"retry": {"sleep": False}})
    assert await node.process(1) == 1
    assert await asyncio.wait_for(node.background, 20) == "ok"
    assert flaky.calls == 3  # succeeds on attempt 3, as outside a node


async def test_task_created_inside_a_loop_while_it_still_runs_is_not_nested() -> None:
    policy = quick(max_attempts=2)
    inner = Flaky(2)

    async def outer() -> Any:
        return await asyncio.create_task(policy.run(inner.acall, max_attempts=5))

    assert await policy.run(outer) == "ok"
    assert inner.calls == 3


async def test_task_group_children_run_their_own_loops() -> None:
    policy = quick()
    flakies = [Flaky(2), Flaky(3)]

    async def outer() -> list[Any]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(policy.run(f.acall, max_attempts=5)) for f in flakies]
        return [t.result() for t in tasks]

    assert await policy.run(outer) == ["ok", "ok"]
    assert [f.calls for f in flakies] == [3, 4]


async def test_to_thread_inside_a_loop_runs_a_full_sync_loop() -> None:
    policy = quick(max_attempts=2)  # fewer outer attempts than the inner call needs
    inner = Flaky(2)

    async def outer() -> Any:
        return await asyncio.to_thread(policy.run_sync, inner, (), None, 5)

    assert await policy.run(outer) == "ok"
    assert inner.calls == 3


async def test_same_task_nested_calls_still_make_one_attempt() -> None:
    policy = quick(max_attempts=3)
    inner_async, inner_sync = Flaky(100), Flaky(100)

    async def outer() -> Any:
        try:
            await policy.run(inner_async.acall, max_attempts=5)
        except ConnectionError:
            pass
        return policy.run_sync(inner_sync, max_attempts=5)  # blocking call, same task

    with pytest.raises(ConnectionError):
        await policy.run(outer)
    assert inner_async.calls == 3 and inner_sync.calls == 3  # one per outer attempt


async def test_sync_function_in_an_async_loop_nests_its_blocking_retry() -> None:
    policy = quick(max_attempts=3)
    inner = Flaky(100)

    def outer() -> Any:  # a plain function, awaited through run(): its code is the loop's own
        return policy.run_sync(inner, max_attempts=5)

    with pytest.raises(ConnectionError):
        await policy.run(outer)
    assert inner.calls == 3


def test_a_task_running_during_the_owners_back_off_is_not_nested() -> None:
    clock = ManualClock()
    policy = RetryPolicy({"max_attempts": 2, "jitter": "none", "initial_delay": 1.0})
    policy.use_clock(clock)
    policy.sleep = asyncio.sleep  # the ManualClock loop's own (virtual) time
    inner = Flaky(2)
    box: dict[str, Any] = {}

    async def outer() -> str:
        if "task" not in box:  # attempt 1 starts a task, then fails: the task runs in the back-off
            box["task"] = asyncio.create_task(policy.run(inner.acall, max_attempts=5))
            raise ConnectionError("first")
        return "outer"

    async def main() -> tuple[str, Any]:
        result = await policy.run(outer)
        return result, await box["task"]

    assert clock.run(main()) == ("outer", "ok")
    assert inner.calls == 3


def test_sync_loop_thread_started_inside_runs_its_own_loop() -> None:
    policy = quick()
    inner = Flaky(2)
    box: dict[str, Any] = {}

    def worker() -> None:
        box["result"] = policy.run_sync(inner, max_attempts=5)

    def outer() -> Any:
        ctx = contextvars.copy_context()  # the scope travels, as with to_thread
        thread = threading.Thread(target=ctx.run, args=(worker,))
        thread.start()
        thread.join(20)
        return box["result"]

    assert policy.run_sync(outer) == "ok"
    assert inner.calls == 3


def test_context_copied_in_a_loop_and_run_after_it_ended_is_not_nested() -> None:
    policy = quick()
    saved: list[contextvars.Context] = []
    policy.run_sync(lambda: saved.append(contextvars.copy_context()))
    inner = Flaky(2)
    # same thread, the loop finished: its inactive scope neither nests nor bounds anything
    assert saved[0].run(policy.run_sync, inner, (), None, 5) == "ok"
    assert inner.calls == 3
    assert saved[0].run(_context.current_deadline) is None


async def test_a_finished_loops_budget_does_not_bind_a_leaked_task() -> None:
    clock = ManualClock()
    policy = RetryPolicy({"max_elapsed": 5.0}).use_clock(clock)
    started = asyncio.Event()
    release = asyncio.Event()
    seen: list[float | None] = []

    async def background() -> None:
        started.set()
        await release.wait()
        seen.append(_context.current_deadline())

    async def outer() -> None:
        node_state["task"] = asyncio.create_task(background())
        await started.wait()
        seen.append(_context.current_deadline())

    node_state: dict[str, Any] = {}
    await policy.run(outer)
    release.set()
    await asyncio.wait_for(node_state["task"], 20)
    assert seen == [5.0, None]


# -- 2. process() is retried by node type ---------------------------------------------------


def _flaky_node(base: type, failures: int = 1, **cfg: Any) -> Any:
    class Body(base):  # type: ignore[misc, valid-type]
        async def process(self, x: int) -> int:
            self.calls += 1
            if self.calls <= failures:
                raise TimeoutError("after charging")
            return x

    node = compose(Body, ["retry"])(capability_config={"retry": {"sleep": False, **cfg}})
    node.calls = 0
    return node


@pytest.mark.parametrize("base", [NodeEffect, NodeOrchestrator])
async def test_effect_and_orchestrator_process_is_not_retried_by_default(base: type) -> None:
    node = _flaky_node(base)
    with pytest.raises(TimeoutError):
        await node.process(1)
    assert node.calls == 1  # one charge, not three
    assert node.retry_policy.guard is False
    assert "not retried unless guard_process: true" in node.retry_policy.guard_reason


@pytest.mark.parametrize("base", [NodeCompute, NodeReducer])
async def test_compute_and_reducer_process_is_retried_by_default(base: type) -> None:
    node = _flaky_node(base)
    assert await node.process(7) == 7
    assert node.calls == 2


async def test_explicit_guard_process_wins_over_the_node_type() -> None:
    effect = _flaky_node(NodeEffect, guard_process=True)
    assert await effect.process(1) == 1 and effect.calls == 2
    compute = _flaky_node(NodeCompute, guard_process=False)
    with pytest.raises(TimeoutError):
        await compute.process(1)
    assert compute.calls == 1


async def test_with_retry_still_works_on_an_effect_node() -> None:
    node = _flaky_node(NodeEffect)
    flaky = Flaky(2)
    assert await node.with_retry(flaky.acall) == "ok" and flaky.calls == 3


def test_explain_says_whether_process_is_retried_and_why() -> None:
    effect_cls = compose(NodeEffect, ["retry"])
    text = str(explain(effect_cls))
    assert "retry: process() not retried: EFFECT node: process() may have side effects" in text
    compute = explain(compose(NodeCompute, ["retry"])).to_dict()
    note = next(c["note"] for c in compute["capabilities"] if c["name"] == "retry")
    assert note.startswith("process() retried: COMPUTE node")
    opted_in = effect_cls(capability_config={"retry": {"guard_process": True}})
    assert "retry: process() retried: guard_process: true in the configuration" in str(
        explain(opted_in))


def test_contract_default_is_by_node_type() -> None:
    assert RetryConfig().guard_process is None
    assert RetryPolicy().guard is False  # a bare policy knows no node type


# -- 3. deciding what to retry --------------------------------------------------------------


class HTTPStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def test_retry_if_decides_alone() -> None:
    policy = quick(retry_if=lambda exc: isinstance(exc, HTTPStatusError) and exc.status >= 500)
    server = Flaky(2, error=lambda msg: HTTPStatusError(503))  # type: ignore[arg-type]
    assert policy.run_sync(server) == "ok" and server.calls == 3
    client = Flaky(2, error=lambda msg: HTTPStatusError(404))  # type: ignore[arg-type]
    with pytest.raises(HTTPStatusError):
        policy.run_sync(client)
    assert client.calls == 1
    reset = Flaky(2)  # a ConnectionError: listed by default, but the predicate says no
    with pytest.raises(ConnectionError):
        policy.run_sync(reset)
    assert reset.calls == 1


async def test_retry_if_per_call_and_async_predicate() -> None:
    policy = quick()

    async def only_key_errors(exc: Exception) -> bool:
        return isinstance(exc, KeyError)

    flaky = Flaky(2, error=KeyError)
    assert await policy.run(flaky.acall, hooks=RetryHooks(retry_if=only_key_errors)) == "ok"
    assert flaky.calls == 3


def test_retry_if_never_retries_cancellation_or_interrupts() -> None:
    policy = quick(retry_if=lambda exc: True)
    fn = Flaky(5, error=KeyboardInterrupt)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        policy.run_sync(fn)
    assert fn.calls == 1


def test_retry_if_result_retries_a_rejected_value_and_returns_the_last() -> None:
    values = iter([None, None, "data"])
    policy = quick(retry_if_result=lambda r: r is None)
    assert policy.run_sync(lambda: next(values)) == "data"
    always_none = quick(retry_if_result=lambda r: r is None, max_attempts=3)
    calls: list[int] = []
    assert always_none.run_sync(lambda: calls.append(1)) is None  # Polly: the last outcome
    assert len(calls) == 3


async def test_callbacks_receive_each_attempt() -> None:
    clock = ManualClock()
    after: list[RetryAttempt] = []
    before: list[RetryAttempt] = []
    policy = RetryPolicy({"jitter": "none", "initial_delay": 1.0, "max_attempts": 4,
                          "after_attempt": after.append, "before_sleep": before.append,
                          "retry_if_result": lambda r: r == "pending"})
    policy.use_clock(clock)
    results = iter(["pending", "done"])
    flaky = Flaky(1)

    async def fn() -> str:
        await flaky.acall()
        return next(results)

    assert await policy.run(fn) == "done"
    assert [(a.attempt, a.outcome, a.next_delay) for a in after] == [
        (1, "retry", 1.0), (2, "retry", 2.0), (3, "success", None)]
    assert isinstance(after[0].exception, ConnectionError) and after[0].result is None
    assert after[1].exception is None and after[1].result == "pending"
    assert after[2].result == "done" and after[2].operation.endswith("fn")
    assert [(b.attempt, b.next_delay) for b in before] == [(1, 1.0), (2, 2.0)]
    assert clock.sleeps == [1.0, 2.0]  # before_sleep runs before each sleep


def test_after_attempt_sees_the_give_up_reason() -> None:
    after: list[RetryAttempt] = []
    policy = quick(max_attempts=2, after_attempt=after.append)
    with pytest.raises(ConnectionError):
        policy.run_sync(Flaky(9))
    assert [a.outcome for a in after] == ["retry", "exhausted"]
    with pytest.raises(KeyError):
        policy.run_sync(Flaky(9, error=KeyError))
    assert after[-1].outcome == "not_retriable"


async def test_with_retry_kwargs_on_a_node_override_the_configured_ones() -> None:
    node = compose(NodeCompute, ["retry"])(capability_config={"retry": {
        "sleep": False, "retry_if": lambda exc: False}})
    flaky = Flaky(2)
    with pytest.raises(ConnectionError):
        await node.with_retry(flaky.acall)
    assert flaky.calls == 1
    seen: list[str] = []
    flaky = Flaky(2)
    assert await node.with_retry(flaky.acall, retry_if=lambda exc: True,
                                 before_sleep=lambda a: seen.append(a.outcome)) == "ok"
    assert seen == ["retry", "retry"]
    sync_flaky = Flaky(2)
    assert node.with_retry_sync(sync_flaky, retry_if=lambda exc: True) == "ok"


def test_async_predicate_in_run_sync_is_a_clear_error() -> None:
    async def pred(exc: Exception) -> bool:
        return True

    with pytest.raises(TypeError, match="retry_if .* is async"):
        quick().run_sync(Flaky(1), hooks=RetryHooks(retry_if=pred))


@pytest.mark.parametrize("field", ["retry_if", "retry_if_result", "before_sleep",
                                   "after_attempt"])
def test_a_non_callable_hook_is_a_clear_configuration_error(field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy({field: "mymodule.check"})
    assert "must be a Python callable" in str(info.value)
    assert "cannot hold one" in str(info.value)


def test_first_attempt_success_does_not_run_predicates_needlessly() -> None:
    policy = quick(retry_if=lambda exc: pytest.fail("no error, no predicate"))
    assert policy.run_sync(lambda: 1) == 1


# dotted exception paths

def test_dotted_path_matches_that_class_exactly() -> None:
    policy = quick(retriable_error_types=["json.JSONDecodeError"])
    import json

    decode = Flaky(2, error=lambda msg: json.JSONDecodeError(msg, "", 0))  # type: ignore[arg-type]
    assert policy.run_sync(decode) == "ok" and decode.calls == 3
    plain = Flaky(2, error=ValueError)  # its base is not listed
    with pytest.raises(ValueError):
        policy.run_sync(plain)
    assert plain.calls == 1

    class JSONDecodeError(Exception):  # same bare name, another class: not matched
        pass

    assert not policy.is_retriable(JSONDecodeError())


def test_dotted_fatal_path_and_nested_module() -> None:
    policy = RetryPolicy({"retriable_error_types": ["OSError"],
                          "fatal_error_types": ["concurrent.futures.TimeoutError"]})
    import concurrent.futures

    assert not policy.is_retriable(concurrent.futures.TimeoutError())
    assert policy.is_retriable(ConnectionError())


def test_exception_classes_in_config_become_import_paths() -> None:
    import json

    cfg = RetryConfig(retriable_error_types=[json.JSONDecodeError, TimeoutError])
    assert cfg.retriable_error_types == ("json.decoder.JSONDecodeError", "TimeoutError")


@pytest.mark.parametrize(("path", "needle"), [
    ("no_such_module_xyz.Error", "module 'no_such_module_xyz' cannot be imported"),
    ("json.NoSuchError", "module 'json' has no attribute 'NoSuchError'"),
    ("json.dumps", "is a function, not an exception class"),
    ("json..Error", "is not an exception class name"),
])
def test_bad_dotted_path_is_a_clear_configuration_error(path: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy({"retriable_error_types": [path]})
    assert needle in str(info.value)
    assert "retry" in str(info.value)


def test_dotted_paths_are_not_imported_by_the_config_alone() -> None:
    cfg = RetryConfig(retriable_error_types=["no_such_module_xyz.Error"])  # validated, not imported
    assert cfg.retriable_error_types == ("no_such_module_xyz.Error",)


# -- 4. a sync def process is retried through run_sync ---------------------------------------


def test_sync_process_is_retried_synchronously() -> None:
    class SyncNode(NodeCompute):
        def process(self, x: int) -> int:  # type: ignore[override]
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError("reset")
            return x * 2

    cls = compose(SyncNode, ["retry"])
    node = cls(capability_config={"retry": {"sleep": False}})
    node.calls = 0
    assert node.process(2) == 4  # no event loop, not a coroutine
    assert node.calls == 3
    metrics: Metrics = node.metrics
    assert any('outcome="recovered"' in k for k in metrics.snapshot()["counters"])


def test_sync_guard_honours_guard_process() -> None:
    class SyncEffect(NodeEffect):
        def process(self, x: int) -> int:  # type: ignore[override]
            self.calls += 1
            raise ConnectionError("reset")

    node = compose(SyncEffect, ["retry"])(capability_config={"retry": {"sleep": False}})
    node.calls = 0
    with pytest.raises(ConnectionError):
        node.process(1)
    assert node.calls == 1  # EFFECT: not retried by default
    node.setup_retry({"sleep": False, "guard_process": True})
    node.calls = 0
    with pytest.raises(ConnectionError):
        node.process(1)
    assert node.calls == 3


def test_guard_sync_wraps_directly() -> None:
    node = compose(NodeCompute, ["retry"])(capability_config={"retry": {"sleep": False}})
    flaky = Flaky(1)
    wrapped = node._guard_sync_retry(flaky)
    assert wrapped() == "ok" and flaky.calls == 2

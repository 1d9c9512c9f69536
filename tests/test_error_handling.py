"""error_handling: seed 002's mixin, its actions and outputs, and its delegation to the
circuit_breaker and retry capabilities when they are composed too.

Every timing test runs on a ManualClock: nothing sleeps.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from loguru import logger

from onex_compose import NodeCompute, compose, has_capability
from onex_compose.capabilities import CONTRACTS_DIR, MANIFEST
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.circuit_breaker import CircuitOpenError
from onex_compose.capabilities.error_handling import (
    ErrorHandler,
    MixinErrorHandling,
    ModelCircuitStatusResult,
    ModelRetryDecisionResult,
    scrub,
)
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.rate_limiting import RateLimitExceededError
from onex_compose.model.contracts import ModelContractCompute
from onex_compose.model.subcontracts import ModelErrorHandlingResult, ModelErrorHandlingSubcontract
from onex_compose.nodes import NodeCompute as SeedNodeCompute

SEED = Path("/work/shared/seeds/002_7e83d219274257d6.txt")


# ------------------------------------------------------------------------------------------------
# seed 002's integration test, as written, with error handling in the node's bases


class TestNodeWithErrorHandling(SeedNodeCompute, MixinErrorHandling):
    """Test node with error handling mixin."""

    __test__ = False  # a node, not a pytest test class

    async def execute_compute(self, contract: ModelContractCompute):
        # Access error handling configuration
        error_config = contract.error_handling_configuration

        try:
            result = await self._risky_operation()
            return result
        except Exception as e:
            # Use mixin capabilities
            if error_config.enable_circuit_breaker:
                circuit_status = await self._check_circuit_breaker(
                    operation_key="risky_operation"
                )

                if circuit_status.status == "open":
                    raise RuntimeError("Circuit breaker open")

            # Retry logic
            if self._should_retry(e, error_config):
                return await self._retry_operation(error_config)

            raise

    # -- what the seed leaves undefined, supplied by the test --------------------------------

    async def _risky_operation(self):
        """Fails with a (non-retriable) RuntimeError unless a test scripts ``self.failures``:
        then it raises those in turn and computes once they are used up."""
        failures = self.__dict__.get("failures")
        if failures is None:
            raise RuntimeError("the risky operation failed")
        if failures:
            raise failures.pop(0)
        return "computed"

    async def _retry_operation(self, config):
        return await super()._retry_operation(config, self._risky_operation,
                                              operation_key="risky_operation")


async def test_error_handling_mixin_integration():
    """Seed 002's test: create a contract with the error handling mixin, run, expect the error."""
    # Create contract with error handling mixin
    contract = ModelContractCompute(
        subcontracts=[
            ModelErrorHandlingSubcontract(
                enable_circuit_breaker=True,
                error_retry_attempts=3
            )
        ]
    )

    # Create node instance
    node = TestNodeWithErrorHandling()

    # Test error handling
    with pytest.raises(RuntimeError):
        await node.execute_compute(contract)


async def test_the_seed_flow_ran_through_the_mixin():
    contract = seed_contract(enable_circuit_breaker=True, error_retry_attempts=3)
    node = TestNodeWithErrorHandling()
    with pytest.raises(RuntimeError, match="the risky operation failed"):
        await node.execute_compute(contract)
    status = await node._check_circuit_breaker(operation_key="risky_operation")  # the mixin's
    assert isinstance(status, ModelCircuitStatusResult) and status.status == "closed"
    assert node.error_handling.categorize(RuntimeError()) == "unknown"  # so not retried


def seed_contract(**fields) -> ModelContractCompute:
    return ModelContractCompute(subcontracts=[ModelErrorHandlingSubcontract(**fields)])


async def test_seed_flow_retries_a_retriable_error_and_recovers():
    node = TestNodeWithErrorHandling()
    clock = ManualClock()
    node.error_handling.use_clock(clock)
    node.failures = [ConnectionError("reset"), TimeoutError("slow")]
    assert await node.execute_compute(seed_contract(error_retry_attempts=3)) == "computed"
    assert clock.sleeps == [1.0, 2.0]  # back-off after attempts 1 and 2; attempt 3 succeeded


async def test_seed_flow_gives_up_after_the_attempts():
    node = TestNodeWithErrorHandling()
    node.error_handling.use_clock(ManualClock())
    node.failures = [ConnectionError(f"reset {i}") for i in range(5)]
    with pytest.raises(ConnectionError, match="reset 2") as info:
        await node.execute_compute(seed_contract(error_retry_attempts=3))
    assert any("gave up on 'risky_operation' after 3 attempt(s)" in n
               for n in info.value.__notes__)


async def test_seed_flow_reports_an_open_circuit_as_the_seed_expects():
    node = TestNodeWithErrorHandling()
    node.setup_error_handling({"circuit_failure_threshold": 2, "error_retry_attempts": 3})
    node.error_handling.use_clock(ManualClock())
    node.failures = [ConnectionError("down")] * 10
    with pytest.raises(ConnectionError):  # the two retries open the breaker
        await node.execute_compute(seed_contract(error_retry_attempts=3))
    status = await node._check_circuit_breaker(operation_key="risky_operation")
    assert status.status == "open" and status.failure_count == 2
    with pytest.raises(RuntimeError, match="Circuit breaker open"):
        await node.execute_compute(seed_contract())


def test_the_node_composes_logging_for_the_required_protocol():
    assert TestNodeWithErrorHandling.__composition__.capabilities == ("logging", "error_handling")
    assert has_capability(TestNodeWithErrorHandling, "logging")
    assert not has_capability(TestNodeWithErrorHandling, "metrics")  # optional, not pulled in


async def test_retry_operation_without_an_operation_says_what_to_do():
    node = compose(NodeCompute, ["error_handling"])()
    with pytest.raises(TypeError, match=r"_retry_operation\(config, self._risky_operation"):
        await node._retry_operation(ModelErrorHandlingSubcontract())


# ------------------------------------------------------------------------------------------------
# the contract


def test_contract_is_seed_002_verbatim_plus_a_composition_section():
    ours = yaml.safe_load((CONTRACTS_DIR / "mixin_error_handling.yaml").read_text())
    composition = ours.pop("composition")
    blocks = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)
    start = next(i for i, b in enumerate(blocks) if b.startswith("# mixin_error_handling.yaml"))
    seed: dict = {}
    for block in blocks[start:start + 6]:  # Step 2's six snippets
        seed.update(yaml.safe_load(block))
    assert ours == seed
    assert composition["config_model"] == (
        "onex_compose.model.subcontracts:ModelErrorHandlingSubcontract")


def test_manifest_turns_provides_circuit_breaker_into_covers():
    entry = MANIFEST["capabilities"]["error_handling"]
    assert entry["covers"] == ["circuit_breaker"]
    assert entry["requires_protocols"] == ["logging_protocol"]
    assert entry["optional"] == ["metrics"]
    cls = compose(NodeCompute, ["error_handling", "circuit_breaker", "retry"])  # no conflict
    names = cls.__composition__.capabilities
    assert names.index("circuit_breaker") < names.index("error_handling")
    assert names.index("retry") < names.index("error_handling")


def test_config_section_matches_the_subcontract_model():
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_error_handling.yaml").read_text())
    model = ModelErrorHandlingSubcontract().model_dump(
        exclude={"subcontract_name", "subcontract_version", "applicable_node_types"})
    assert data["error_handling_config"] == model


# ------------------------------------------------------------------------------------------------
# actions and outputs


class AuthenticationError(Exception):
    pass


class TemporaryFailure(Exception):
    pass


@pytest.mark.parametrize(("error", "category", "action", "recoverable"), [
    (ConnectionRefusedError("x"), "retriable", "retry", True),
    (TimeoutError("x"), "retriable", "retry", True),
    (TemporaryFailure("x"), "retriable", "retry", True),
    (AuthenticationError("x"), "fatal", "fail", False),
    (CircuitOpenError("db", 3.0), "rejected", "fail_fast", True),
    (RateLimitExceededError("k", 1.0), "rejected", "fail_fast", True),
    (KeyError("x"), "unknown", "fail", False),
])
def test_handle_error_categorises_and_says_what_to_do(error, category, action, recoverable):
    result = ErrorHandler().handle_error(error, {"operation_name": "load"})
    assert isinstance(result, ModelErrorHandlingResult)
    assert (result.error_category, result.handling_action, result.recovery_possible) == (
        category, action, recoverable)
    assert result.recovery_suggestions  # the recovery_actions output


def test_handle_error_suggestions_and_strategies():
    handler = ErrorHandler()
    result = handler.handle_error(CircuitOpenError("db", 2.5))
    assert "back off for 2.500 s" in result.recovery_suggestions[0]
    assert handler.handle_error(KeyError(), handling_strategy="ignore").handling_action == "ignore"
    fatal = handler.handle_error(AuthenticationError(), handling_strategy="retry")
    assert fatal.handling_action == "fail"  # a fatal error is never retried on request
    assert handler.handle_error(TimeoutError(), handling_strategy="fail").handling_action == "fail"
    with pytest.raises(ValueError, match="handling_strategy must be"):
        handler.handle_error(TimeoutError(), handling_strategy="later")


def test_an_instance_flag_and_the_fatal_list_win():
    class Odd(ConnectionError):
        onex_retriable = False

    handler = ErrorHandler({"fatal_error_types": ["ConnectionResetError"]})
    assert handler.categorize(ConnectionResetError()) == "fatal"  # most specific class first
    assert handler.categorize(Odd()) == "rejected"
    err = KeyError()
    err.onex_retriable = True
    assert handler.categorize(err) == "retriable"
    import asyncio

    assert handler.categorize(asyncio.CancelledError()) == "cancelled"


def test_should_retry_backs_off_exponentially_within_the_cap():
    handler = ErrorHandler({"error_retry_attempts": 5, "error_retry_delay_ms": 1000,
                            "error_retry_backoff_multiplier": 3.0, "max_retry_delay_ms": 5000})
    decisions = [handler.should_retry(TimeoutError(), n) for n in range(1, 6)]
    assert [d.retry_delay_ms for d in decisions] == [1000, 3000, 5000, 5000, 0]
    assert [d.should_retry for d in decisions] == [True, True, True, True, False]
    assert decisions[-1].max_attempts_reached and isinstance(decisions[0], ModelRetryDecisionResult)
    assert not handler.should_retry(KeyError(), 1).should_retry
    with pytest.raises(ValueError, match="attempt_number"):
        handler.should_retry(TimeoutError(), 0)


def test_should_retry_honours_retry_after_and_the_deadline():
    from onex_compose.capabilities import _context

    clock = ManualClock()
    handler = ErrorHandler().use_clock(clock)
    hinted = TimeoutError("429")
    hinted.retry_after = 4.0
    assert handler.should_retry(hinted, 1).retry_delay_ms == 4000
    token = _context.deadline.set(clock() + 0.5)
    try:
        assert not handler.should_retry(TimeoutError(), 1).should_retry  # 1 s > 0.5 s left
    finally:
        _context.deadline.reset(token)


async def test_circuit_breaker_check_output():
    clock = ManualClock()
    handler = ErrorHandler({"circuit_failure_threshold": 2, "circuit_timeout_ms": 5000})
    handler.use_clock(clock)
    status = await handler.circuit_breaker_check("payments")
    assert isinstance(status, ModelCircuitStatusResult)
    assert (status.status, status.failure_count, status.failure_rate) == ("closed", 0, 0.0)
    breaker = handler.breaker("payments")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_boom)
    status = await handler.circuit_breaker_check("payments")
    assert (status.status, status.failure_count, status.failure_rate) == ("open", 2, 100.0)
    assert status.retry_after == 5.0 and status.last_failure_time is not None
    assert status.state.value == "open"
    off = ErrorHandler({"enable_circuit_breaker": False})
    assert off.breaker("x") is None
    assert (await off.circuit_breaker_check("x")).status == "closed"


def test_record_error_metric_returns_whether_it_recorded():
    metrics = Metrics()
    assert ErrorHandler(metrics=metrics).record_error_metric("fatal", "load", {"user": "a"})
    assert ErrorHandler().record_error_metric("fatal", "load") is False  # no metrics composed
    off = ErrorHandler({"enable_error_metrics": False}, metrics=metrics)
    assert off.record_error_metric("fatal", "load") is False
    key = 'errors_total{error_category="fatal",node_type="UNKNOWN",operation_name="load"}'
    assert metrics.snapshot()["counters"][key] == 1


async def test_the_four_declared_metrics_on_a_composed_node():
    cls = compose(NodeCompute, ["error_handling", "metrics"])
    node = cls(capability_config={"error_handling": {"circuit_failure_threshold": 2,
                                                     "error_retry_attempts": 2}})
    node.error_handling.use_clock(ManualClock())
    with pytest.raises(ConnectionError):
        await node.error_handling.call(_aboom, operation_key="fetch")
    snap = node.metrics.snapshot()
    counters, gauges, hists = snap["counters"], snap["gauges"], snap["histograms"]
    declared = {m["name"] for m in yaml.safe_load(
        (CONTRACTS_DIR / "mixin_error_handling.yaml").read_text())["metrics"]}
    assert declared == {"errors_total", "circuit_breaker_state", "retry_attempts_total",
                        "error_handling_duration_ms"}
    assert counters['errors_total{error_category="retriable",node_type="COMPUTE",'
                    'operation_name="fetch"}'] == 1
    assert gauges['circuit_breaker_state{operation_key="fetch"}'] == 1  # 2 failures: open
    assert counters['retry_attempts_total{operation_name="fetch",success="false"}'] == 1
    assert hists['error_handling_duration_ms{error_category="retriable"}']["count"] == 1


async def test_call_runs_breaker_retries_and_handling_together():
    clock = ManualClock()
    handler = ErrorHandler({"error_retry_attempts": 3}).use_clock(clock)
    outcomes = [ConnectionError("1"), ConnectionError("2")]

    async def flaky(x):
        if outcomes:
            raise outcomes.pop(0)
        return x * 2

    assert await handler.call(flaky, 21) == 42
    assert clock.sleeps == [1.0, 2.0]

    def sync_op():
        return "plain functions work too"

    assert await handler.call(sync_op) == "plain functions work too"


# ------------------------------------------------------------------------------------------------
# scrubbing


def test_scrub_rules():
    text = ("login failed password=hunter2 api_key: 'k-123' Authorization: Bearer abc.def "
            "url=postgres://app:s3cret@db/prod card 4111 1111 1111 1111 mail ann@example.com "
            "jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl")
    out = scrub(text)
    for secret in ("hunter2", "k-123", "abc.def", "s3cret", "4111", "ann@", "eyJhbGciOi"):
        assert secret not in out
    assert "postgres://app:***@db/prod" in out and "***@example.com" in out
    nested = scrub({"user": "ann", "db_password": "x", "items": [{"token": "t"}, "secret=v"]})
    assert nested == {"user": "ann", "db_password": "***",
                      "items": [{"token": "***"}, "secret=***"]}


def test_logged_errors_are_scrubbed_and_go_through_the_logging_capability():
    cls = compose(NodeCompute, ["error_handling"])
    node = cls(node_id="eh-1")
    records = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        node.error_handling.handle_error(
            ConnectionError("connect failed: password=hunter2"),
            {"operation_name": "db", "api_key": "k-1", "dsn": "redis://u:pw@h/0"})
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")
    assert len(records) == 1
    record = records[0]
    text = record["message"] + repr(record["extra"])
    assert "hunter2" not in text and "k-1" not in text and "u:pw@" not in text
    assert record["level"].name == "ERROR"
    extra = record["extra"]
    assert (extra["node_id"], extra["capability"], extra["error_category"]) == (
        "eh-1", "error_handling", "retriable")


@pytest.mark.parametrize("scrubbing", [True, False])
def test_scrubbing_can_be_switched_off(scrubbing):
    # every record also passes through the logging capability's scrubber (the same rules, with
    # its own scrub_keys); with those narrowed, the switch decides what error_handling hides
    cls = compose(NodeCompute, ["error_handling"])
    node = cls(capability_config={
        "logging": {"scrub_keys": ["ssn"]},
        "error_handling": {"sensitive_data_scrubbing": scrubbing, "error_log_level": "WARNING"}})
    records = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        node.error_handling.handle_error(KeyError("password=visible"))
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")
    assert ("password=visible" in records[0]["message"]) is not scrubbing
    assert records[0]["level"].name == "WARNING"


# ------------------------------------------------------------------------------------------------
# delegation


async def test_with_circuit_breaker_composed_there_is_one_set_of_breakers():
    cls = compose(NodeCompute, ["error_handling", "circuit_breaker"])
    node = cls(capability_config={"circuit_breaker": {"failure_threshold": 1},
                                  "error_handling": {"circuit_failure_threshold": 50}})
    handler = node.error_handling.use_clock(ManualClock())
    assert handler.delegates_breaker
    assert handler.breaker("payments") is node.circuit_breaker("payments")
    with pytest.raises(CircuitOpenError) as info:  # retry not composed: error_handling's loop
        await handler.call(_aboom, operation_key="payments")
    assert "after 2 attempt(s) (rejected)" in info.value.__notes__[0]  # the 2nd hit the open one
    assert (await node._check_circuit_breaker("payments")).status == "open"  # threshold 1
    assert handler._own_breakers is None


async def test_with_retry_composed_its_policy_decides_and_loops():
    cls = compose(NodeCompute, ["error_handling", "retry"])
    node = cls(capability_config={
        "retry": {"max_attempts": 5, "sleep": False, "retriable_error_types": ["KeyError"]},
        "error_handling": {"error_retry_attempts": 2}})
    handler = node.error_handling
    assert handler.delegates_retry
    assert handler.should_retry(KeyError(), 3).should_retry  # retry's list and 5 attempts
    assert not handler.should_retry(ConnectionError(), 1).should_retry
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise KeyError("again")
        return "done"

    assert await handler.retry(flaky) == "done"
    assert len(calls) == 4  # retry's 5 attempts, not error_handling's 2
    counters = node.metrics.snapshot()["counters"]
    assert not any(k.startswith("retry_attempts_total{operation_name") for k in counters)


async def _aboom():
    raise ConnectionError("down")


def _boom():
    raise ConnectionError("down")


def test_a_composed_node_pickles_and_rebuilds_its_handler():
    import pickle

    cls = compose(NodeCompute, ["error_handling", "metrics"])
    node = cls(capability_config={"error_handling": {"error_retry_attempts": 7}})
    clone = pickle.loads(pickle.dumps(node))
    assert clone.error_handling.config.error_retry_attempts == 7
    assert clone.error_handling.node is clone and clone.error_handling.metrics is clone.metrics


def test_docstring_examples_run_as_written():
    import doctest

    import onex_compose.capabilities.error_handling as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------
# review fixes: the seed's inputs in the forms a caller has at hand, bad inputs named


def test_should_retry_takes_the_error_its_class_or_its_class_name():
    handler = ErrorHandler()
    for error in (ConnectionError("x"), ConnectionError, "ConnectionError",
                  ConnectionRefusedError, "ConnectionRefusedError", TemporaryFailure,
                  "TemporaryFailure"):
        decision = handler.should_retry(error, 1)
        assert (decision.should_retry, decision.retry_delay_ms, decision.error_category) == (
            True, 1000, "retriable"), error
    for error in (AuthenticationError, "AuthenticationError", "ValidationError"):
        assert handler.should_retry(error, 1).error_category == "fatal", error
    assert handler.should_retry("SomethingElse", 1).error_category == "unknown"
    assert handler.should_retry("mod.SomethingElse", 1).error_category == "unknown"
    assert handler.should_retry(KeyError, 1).should_retry is False
    assert handler.should_retry(CircuitOpenError, 1).error_category == "rejected"
    assert handler.categorize(PermissionError) == "unknown"
    import asyncio

    assert handler.categorize(asyncio.CancelledError) == "cancelled"
    assert handler.categorize("KeyboardInterrupt") == "cancelled"


def test_should_retry_by_name_with_the_retry_capability_composed():
    cls = compose(NodeCompute, ["error_handling", "retry"])
    node = cls(capability_config={"retry": {"retriable_error_types": ["KeyError"],
                                            "jitter": "none", "initial_delay": 0.5}})
    handler = node.error_handling
    assert handler.should_retry("KeyError", 1).should_retry
    assert handler.should_retry(KeyError, 2).retry_delay_ms == 1000
    assert not handler.should_retry("ConnectionError", 1).should_retry  # not in retry's list
    assert node._should_retry(KeyError, None)


def test_handle_error_takes_the_error_or_its_class():
    handler = ErrorHandler()
    result = handler.handle_error(TimeoutError, {"operation_name": "load"})
    assert (result.error_category, result.handling_action) == ("retriable", "retry")
    assert handler.handle_error(AuthenticationError).handling_action == "fail"


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda h: h.should_retry(42, 1), TypeError,
     r"should_retry\(error_type\) takes an exception, an exception class or an exception "
     r"class name, got 42 \(int\)"),
    (lambda h: h.should_retry("", 1), TypeError, r"got '' \(str\)"),
    (lambda h: h.should_retry(TimeoutError(), "2"), TypeError,
     r"attempt_number is the number of the attempt that failed \(an int from 1\), got '2'"),
    (lambda h: h.should_retry(TimeoutError(), True), TypeError, "attempt_number"),
    (lambda h: h.handle_error("boom"), TypeError,
     r"handle_error\(error_info\) takes an exception or an exception class, got 'boom'"),
    (lambda h: h.handle_error(TimeoutError(), ["a"]), TypeError,
     r"handle_error\(error_context\) takes a mapping"),
    (lambda h: h.categorize(3.5), TypeError, "categorize takes an exception"),
])
def test_bad_inputs_say_what_to_pass(call, error, message):
    with pytest.raises(error, match=message):
        call(ErrorHandler())


def test_an_exception_class_that_cannot_be_instantiated_bare_is_named():
    class Picky(Exception):
        def __new__(cls, code):
            return super().__new__(cls, code)

    with pytest.raises(TypeError, match="cannot make an instance of .*Picky.*pass the exception"):
        ErrorHandler().should_retry(Picky, 1)
    assert ErrorHandler().should_retry(Picky(3), 1).error_category == "unknown"


def test_duration_histogram_uses_the_contracts_millisecond_buckets() -> None:
    import yaml

    from onex_compose.capabilities import CONTRACTS_DIR
    from onex_compose.capabilities.error_handling import DURATION_BUCKETS_MS

    contract = yaml.safe_load((CONTRACTS_DIR / "mixin_error_handling.yaml").read_text())
    declared = next(m for m in contract["metrics"] if m["name"] == "error_handling_duration_ms")
    assert tuple(float(b) for b in declared["buckets"]) == DURATION_BUCKETS_MS
    node = compose(NodeCompute, ["error_handling", "metrics"])()
    node.error_handling.handle_error(ConnectionError("x"))
    hist = next(v for k, v in node.metrics.snapshot()["histograms"].items()
                if k.startswith("error_handling_duration_ms"))
    assert list(hist["buckets"])[:-1] == [repr(b) for b in DURATION_BUCKETS_MS]

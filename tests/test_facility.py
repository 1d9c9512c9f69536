"""facility: a lazily built, per-instance, non-data attribute for capability mixins."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from toy_capabilities import REGISTRY, MixinToyCaching, ToyCache, ToyMetrics, ToyNode

from onex_compose import NodeCompute, cache_clear, compose, facility


@pytest.fixture(autouse=True, scope="module")
def _forget_composed_classes() -> Iterator[None]:
    """Start and end with an empty class cache: private-registry classes share names with
    default-registry ones, and the engine's pickling lookup by name mixes them up."""
    cache_clear()
    yield
    cache_clear()


class Counting:
    builds = 0

    @facility
    def thing(self) -> list[int]:
        """The thing."""
        Counting.builds += 1
        return [Counting.builds]


def test_class_access_returns_the_descriptor_with_its_doc() -> None:
    descriptor = vars(Counting)["thing"]
    assert Counting.thing is descriptor
    assert isinstance(descriptor, facility)
    assert descriptor.__doc__ == "The thing."
    assert descriptor.name == "thing"


def test_first_access_builds_once_and_stores_in_the_instance() -> None:
    Counting.builds = 0
    obj = Counting()
    first = obj.thing
    assert obj.thing is first and Counting.builds == 1
    assert vars(obj)["thing"] is first
    other = Counting()
    assert other.thing is not first and Counting.builds == 2  # per instance


def test_it_is_a_non_data_descriptor_assignment_and_delete_work() -> None:
    Counting.builds = 0
    obj = Counting()
    obj.thing = [42]
    assert obj.thing == [42] and Counting.builds == 0  # set by setup: never built
    del obj.thing
    assert obj.thing == [1]  # rebuilt on the next access
    assert not hasattr(facility, "__set__") and not hasattr(facility, "__delete__")


def test_set_name_follows_the_attribute_it_is_bound_to() -> None:
    def build(self: Any) -> str:
        return "built"

    class Host:
        renamed = facility(build)

    host = Host()
    assert host.renamed == "built"
    assert "renamed" in vars(host) and "build" not in vars(host)


def test_default_is_built_when_setup_never_ran() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    bare = cls.__new__(cls)  # no __init__, so no setup hook ran
    assert isinstance(bare.cache, ToyCache)  # type: ignore[attr-defined]
    assert isinstance(bare.metrics, ToyMetrics)  # type: ignore[attr-defined]
    assert bare.cache.metrics is bare.metrics  # type: ignore[attr-defined]


def test_setup_value_wins_over_the_default() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    node = cls(capability_config={"caching": {"max_size": 3}})
    assert node.cache.max_size == 3  # type: ignore[attr-defined]
    assert isinstance(vars(MixinToyCaching)["cache"], facility)


def test_facility_values_are_rebuilt_not_pickled() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    node = cls()
    node.cache.set("k", "v")  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(node))
    assert type(back) is cls
    assert back.cache is not node.cache  # type: ignore[attr-defined]
    assert back.cache.data == {}  # type: ignore[attr-defined]  # state by config, not by value


def test_facility_on_a_hand_written_node() -> None:
    class Host(NodeCompute):
        @facility
        def helper(self) -> dict[str, int]:
            return {"n": 1}

    assert Host().helper == {"n": 1}

"""facility: a per-instance attribute declared by a mixin, its default built by the node."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from toy_capabilities import REGISTRY, MixinToyCaching, ToyCache, ToyMetrics, ToyNode

from onex_compose import NodeCompute, cache_clear, compose, facility
from onex_compose._facility import facilities_of


@pytest.fixture(autouse=True, scope="module")
def _forget_composed_classes() -> Iterator[None]:
    """Start and end with an empty class cache: private-registry classes share names with
    default-registry ones, and the engine's pickling lookup by name mixes them up."""
    cache_clear()
    yield
    cache_clear()


class MixinCounting:
    __slots__ = ()
    builds = 0

    @facility
    def thing(self) -> list[int]:
        """The thing."""
        MixinCounting.builds += 1
        return [MixinCounting.builds]


class CountingNode(NodeCompute, MixinCounting):
    pass


def test_the_class_keeps_no_attribute_of_that_name() -> None:
    # a class attribute of the same name would stop CPython specialising `self.thing` reads
    assert "thing" not in vars(MixinCounting)
    assert not hasattr(CountingNode, "thing")
    assert vars(MixinCounting)["__onex_facilities__"]["thing"].__doc__ == "The thing."


def test_the_node_builds_the_default_once_per_instance() -> None:
    MixinCounting.builds = 0
    node = CountingNode()
    first = node.thing
    assert node.thing is first and MixinCounting.builds == 1
    assert vars(node)["thing"] is first
    other = CountingNode()
    assert other.thing is not first and MixinCounting.builds == 2  # per instance


def test_reads_are_plain_instance_attribute_reads() -> None:
    node = CountingNode()
    node.thing = [42]
    assert node.thing == [42]
    del node.thing
    with pytest.raises(AttributeError):
        node.thing  # noqa: B018 - no descriptor behind it: the value lived in the instance


def test_set_name_follows_the_attribute_it_is_bound_to() -> None:
    def build(self: Any) -> str:
        return "built"

    class Host(NodeCompute):
        renamed = facility(build)

    host = Host()
    assert host.renamed == "built"
    assert "renamed" in vars(host) and "build" not in vars(host)
    assert facilities_of(Host) == {"renamed": build}


def test_default_is_built_when_setup_never_ran() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract: Any = None, capability_config: Any = None) -> None:
            return None  # a user override that sets nothing up

    bare = Bare()
    assert isinstance(bare.cache, ToyCache)  # type: ignore[attr-defined]
    assert isinstance(bare.metrics, ToyMetrics)  # type: ignore[attr-defined]
    assert bare.cache.metrics is bare.metrics  # type: ignore[attr-defined]  # dependency order


def test_setup_value_wins_over_the_default() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    node = cls(capability_config={"caching": {"max_size": 3}})
    assert node.cache.max_size == 3  # type: ignore[attr-defined]
    assert "cache" in vars(MixinToyCaching)["__onex_facilities__"]


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


def test_a_mixin_used_without_a_node_base_says_to_compose_it() -> None:
    from onex_compose.capabilities.caching import MixinCaching
    from onex_compose.exceptions import NotComposedError, OnexError

    stray = type("Y", (MixinCaching,), {})()
    with pytest.raises(NotComposedError) as info:
        _ = stray.cache
    err = info.value
    assert isinstance(err, AttributeError) and isinstance(err, OnexError)
    assert (err.cls, err.name, err.mixins) == (type(stray), "cache", [MixinCaching])
    text = str(err)
    assert "no node base" in text and "compose(NodeCompute, ['caching'])" in text
    assert "class Y(NodeCompute, MixinCaching)" in text
    # still an AttributeError to hasattr/getattr
    assert not hasattr(stray, "cache") and getattr(stray, "cache", 7) == 7


def test_nodes_and_derived_mixins_get_no_getattr_hook() -> None:
    from onex_compose.capabilities.caching import MixinCaching

    class Host(NodeCompute, MixinCaching):
        pass

    class MixinMoreCaching(MixinCaching):
        __onex_capability__ = "more_caching"
        __slots__ = ()

    # a __getattr__ on a node class would slow every attribute read: none is added
    for cls in (Host, compose(NodeCompute, ["caching"]), MixinMoreCaching):
        assert not hasattr(cls, "__getattr__"), cls
    assert Host().cache is not None
    with pytest.raises(AttributeError) as info:
        _ = Host().no_such_thing
    assert type(info.value) is AttributeError

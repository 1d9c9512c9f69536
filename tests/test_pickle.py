"""Pickling composed and hand-written nodes: same process, and a fresh interpreter (subprocess)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_capabilities import (
    REGISTRY,
    TOY_NAMES,
    MixinToyCaching,
    ToyNode,
    ToyService,
    make_registry,
    plain_mixin,
    write_plugin_distribution,
)

from onex_compose import NodeCompute, Registry, cache_clear, compose


@pytest.fixture(autouse=True, scope="module")
def _forget_composed_classes() -> Iterator[None]:
    """Start and end with an empty class cache: private-registry classes share names with
    default-registry ones, and the engine's pickling lookup by name mixes them up."""
    cache_clear()
    yield
    cache_clear()


TESTS = Path(__file__).parent


def _roundtrip(obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> object:
    return pickle.loads(pickle.dumps(obj, protocol=protocol))


# -- same process -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_instance_round_trip_gives_the_cached_class(protocol: int) -> None:
    cls = compose(ToyNode, ["caching", "retry"], registry=REGISTRY)
    node = cls(capability_config={"metrics": {"prefix": "svc"}, "caching": {"max_size": 7}},
               node_id="n-1")
    node.user_state = {"seen": 3}  # type: ignore[attr-defined]
    back = _roundtrip(node, protocol)
    assert type(back) is cls
    assert back.node_id == "n-1"  # type: ignore[attr-defined]
    assert back.user_state == {"seen": 3}  # type: ignore[attr-defined]
    # facilities are rebuilt from the configuration, not copied
    assert back.cache is not node.cache  # type: ignore[attr-defined]
    assert back.cache.max_size == 7 and back.metrics.prefix == "svc"  # type: ignore[attr-defined]
    assert back.cache.metrics is back.metrics  # type: ignore[attr-defined]


def test_class_pickles_by_reference_to_the_identical_class() -> None:
    cls = compose(ToyNode, ["event_bus"], registry=REGISTRY)
    assert _roundtrip(cls) is cls
    assert b"onex_compose._composed" in pickle.dumps(cls)


def test_contract_survives_the_round_trip() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    contract = {"subcontracts": {"caching": {"max_size": 5}}}
    back = _roundtrip(cls(contract))
    assert back.contract == contract  # type: ignore[attr-defined]
    assert back.cache.max_size == 5  # type: ignore[attr-defined]


def test_copy_and_deepcopy_keep_the_class() -> None:
    cls = compose(ToyNode, ["health_check"], registry=REGISTRY)
    node = cls()
    assert type(copy.copy(node)) is cls
    assert type(copy.deepcopy(node)) is cls


def _clashing_registry() -> Registry:
    reg = Registry(name="pickle-clash")
    reg.register(plain_mixin("MixinPickleA", {"clear": lambda s: "a"}), name="pa")
    reg.register(plain_mixin("MixinPickleB", {"clear": lambda s: "b"}), name="pb")
    return reg


PICKLE_CLASH = _clashing_registry()


def test_classes_with_resolutions_round_trip() -> None:
    cls = compose(ToyNode, ["pa", "pb"], registry=PICKLE_CLASH, prefer={"clear": "pb"})
    assert _roundtrip(cls) is cls
    assert type(_roundtrip(cls())) is cls
    dropped = compose(ToyNode, ["caching", "event_bus"], registry=REGISTRY, exclude=["event_bus"])
    assert _roundtrip(dropped) is dropped


@pytest.mark.parametrize("options", [
    {"exclude": ["pb.clear"]},
    {"alias": {"pb.clear": "clear_b"}},
], ids=["exclude-member", "alias"])
def test_instances_of_member_resolution_classes_round_trip(options: dict[str, object]) -> None:
    cls = compose(ToyNode, ["pa", "pb"], registry=PICKLE_CLASH, **options)
    assert type(_roundtrip(cls())) is cls


@pytest.mark.parametrize("options", [
    {"exclude": ["pb.clear"]},
    {"alias": {"pb.clear": "clear_b"}},
], ids=["exclude-member", "alias"])
def test_member_resolution_classes_pickle_by_reference(options: dict[str, object]) -> None:
    cls = compose(ToyNode, ["pa", "pb"], registry=PICKLE_CLASH, **options)
    assert _roundtrip(cls) is cls


def test_hand_written_instance_round_trip() -> None:
    node = ToyService(capability_config={"caching": {"max_size": 9}})
    back = _roundtrip(node)
    assert type(back) is ToyService
    assert back.cache.max_size == 9


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([*TOY_NAMES, "fault_tolerance"]), min_size=1, max_size=6))
def test_property_pickle_round_trips_return_the_cached_class(names: list[str]) -> None:
    cls = compose(ToyNode, names, registry=REGISTRY)
    assert _roundtrip(cls) is cls
    back = _roundtrip(cls())
    assert type(back) is cls
    assert type(back) is compose(ToyNode, list(reversed(names)), registry=REGISTRY)


def test_private_registry_instance_unpickles_after_cache_clear() -> None:
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    data = pickle.dumps(cls())
    cache_clear()
    try:
        back = pickle.loads(data)
        assert type(back).__composition__.registry is REGISTRY
        assert isinstance(back, MixinToyCaching)
    finally:
        cache_clear()  # drop whatever the failed lookup cached under ToyNode's names


def test_same_names_from_two_registries_pickle_to_their_own_class() -> None:
    one = Registry(name="one")
    two = Registry(name="two")
    one.register(plain_mixin("MixinSameOne"), name="same_name_cap")
    two.register(plain_mixin("MixinSameTwo"), name="same_name_cap")
    cls_one = compose(ToyNode, ["same_name_cap"], registry=one)
    cls_two = compose(ToyNode, ["same_name_cap"], registry=two)
    assert cls_one is not cls_two
    assert type(_roundtrip(cls_two())) is cls_two
    assert _roundtrip(cls_two) is cls_two


def test_registry_instances_built_separately_do_not_share_classes() -> None:
    a = make_registry("sep-a")
    b = make_registry("sep-b")
    assert compose(NodeCompute, ["caching"], registry=a) is not compose(
        NodeCompute, ["caching"], registry=b)


# -- fresh interpreter ------------------------------------------------------------------------


def _run(code: str, *paths: Path) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(TESTS),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_plugin_capability_instance_unpickles_in_a_fresh_interpreter(tmp_path: Path) -> None:
    site = write_plugin_distribution(tmp_path / "site", broken=False)
    blob = tmp_path / "node.pickle"
    made = _run(f"""
        import json, pickle
        from onex_compose import NodeCompute, compose
        cls = compose(NodeCompute, ["ep_beta"])
        node = cls(node_id="fresh-1")
        node.note = "kept"
        with open({str(blob)!r}, "wb") as f:
            pickle.dump((node, cls), f)
        print(json.dumps({{"name": cls.__qualname__}}))
    """, site)
    got = _run(f"""
        import json, pickle, sys
        with open({str(blob)!r}, "rb") as f:
            node, cls = pickle.load(f)
        from onex_compose import NodeCompute, compose
        print(json.dumps({{
            "name": type(node).__qualname__,
            "same_class": type(node) is cls,
            "cached": cls is compose(NodeCompute, ["ep_alpha", "ep_beta"]),
            "beta": node.beta, "note": node.note, "node_id": node.node_id,
            "gamma_loaded": "onex_toyplugin.gamma" in sys.modules,
        }}))
    """, site)
    assert got == {"name": made["name"], "same_class": True, "cached": True,
                   "beta": ["beta", "alpha"], "note": "kept", "node_id": "fresh-1",
                   "gamma_loaded": False}


def test_hand_written_instance_unpickles_in_a_fresh_interpreter(tmp_path: Path) -> None:
    blob = tmp_path / "svc.pickle"
    blob.write_bytes(pickle.dumps(ToyService(capability_config={"caching": {"max_size": 4}})))
    got = _run(f"""
        import json, pickle
        with open({str(blob)!r}, "rb") as f:
            node = pickle.load(f)
        import toy_capabilities
        print(json.dumps({{"cls": type(node) is toy_capabilities.ToyService,
                           "size": node.cache.max_size,
                           "caps": list(type(node).__composition__.capabilities)}}))
    """)
    assert got == {"cls": True, "size": 4, "caps": ["metrics", "caching"]}


def test_private_registry_instance_unpickles_in_a_fresh_interpreter(tmp_path: Path) -> None:
    blob = tmp_path / "toy.pickle"
    cls = compose(ToyNode, ["caching"], registry=REGISTRY)
    blob.write_bytes(pickle.dumps(cls(capability_config={"caching": {"max_size": 6}})))
    got = _run(f"""
        import json, pickle
        import toy_capabilities
        with open({str(blob)!r}, "rb") as f:
            node = pickle.load(f)
        print(json.dumps({{"size": node.cache.max_size}}))
    """)
    assert got == {"size": 6}


def test_real_capabilities_unpickle_in_a_fresh_interpreter(tmp_path: Path) -> None:
    blob = tmp_path / "real.pickle"
    made = _run(f"""
        import json, pickle
        from onex_compose import NodeCompute, compose
        cls = compose(NodeCompute, ["caching", "metrics"])
        with open({str(blob)!r}, "wb") as f:
            pickle.dump(cls(node_id="real-1"), f)
        print(json.dumps({{"name": cls.__qualname__}}))
    """)
    got = _run(f"""
        import json, pickle
        with open({str(blob)!r}, "rb") as f:
            node = pickle.load(f)
        from onex_compose import NodeCompute, compose
        print(json.dumps({{"name": type(node).__qualname__, "node_id": node.node_id,
                           "cached": type(node) is compose(NodeCompute, ["metrics", "caching"]),
                           "has_cache": hasattr(node, "cache")}}))
    """)
    assert got == {"name": made["name"], "node_id": "real-1", "cached": True, "has_cache": True}


# -- found in review: engine problems (the lead fixes them; each test turns green then) ---------


def _twin_bases() -> tuple[type, type]:
    """Two importable node bases with the same name in different modules (a name no other test
    uses: the engine's lookup by name would find both)."""
    import types

    bases = []
    for mod_name, tag in (("onex_review_twin_a", "a"), ("onex_review_twin_b", "b")):
        module = sys.modules.get(mod_name)
        if module is None:
            module = types.ModuleType(mod_name)
            exec(textwrap.dedent(f"""
                from onex_compose import NodeCompute

                class ReviewTwin(NodeCompute):
                    tag = {tag!r}
            """), module.__dict__)
            sys.modules[mod_name] = module
        bases.append(module.ReviewTwin)
    return bases[0], bases[1]


def test_same_named_bases_in_two_modules_unpickle_to_their_own_class() -> None:
    base_a, base_b = _twin_bases()
    cls_a = compose(base_a, ["caching"])
    cls_b = compose(base_b, ["caching"])
    assert cls_a is not cls_b
    assert type(_roundtrip(cls_a())) is cls_a
    clone = _roundtrip(cls_b())
    assert type(clone) is cls_b, f"came back as the other module's class (tag {clone.tag!r})"
    assert _roundtrip(cls_b) is cls_b


def test_a_composed_class_with_a_nested_base_pickles_by_reference() -> None:
    cls = compose(Outer.Inner, ["caching"])
    assert _roundtrip(cls) is cls


class Outer:
    class Inner(NodeCompute):
        pass


def test_a_composed_class_with_a_user_base_unpickles_in_a_fresh_interpreter(tmp_path: Path) -> None:
    (tmp_path / "review_user_base.py").write_text(textwrap.dedent("""
        from onex_compose import NodeCompute

        class Pricer(NodeCompute):
            pass
    """))
    blob = tmp_path / "cls.pickle"
    _run(f"""
        import json, pickle
        from onex_compose import compose
        import review_user_base
        with open({str(blob)!r}, "wb") as f:
            pickle.dump(compose(review_user_base.Pricer, ["caching"]), f)
        print(json.dumps({{}}))
    """, tmp_path)
    got = _run(f"""
        import json, pickle
        with open({str(blob)!r}, "rb") as f:
            cls = pickle.load(f)
        import review_user_base
        from onex_compose import compose
        print(json.dumps({{"cached": cls is compose(review_user_base.Pricer, ["caching"])}}))
    """, tmp_path)
    assert got == {"cached": True}


def test_a_composed_service_class_unpickles_by_name_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """The builder no longer imports the node modules: the service classes (imported lazily by
    ``onex_compose``) are found when ``onex_compose._composed`` is asked for one by name."""
    from onex_compose import NodeComputeService

    blob = tmp_path / "cls.pickle"
    blob.write_bytes(pickle.dumps(compose(NodeComputeService, ["metrics"])))
    got = _run(f"""
        import json, pickle, sys
        with open({str(blob)!r}, "rb") as f:
            cls = pickle.load(f)
        print(json.dumps({{"name": cls.__name__, "base": cls.__mro__[1].__name__}}))
    """)
    assert got == {"name": "NodeComputeService[metrics,node_service]",
                   "base": "NodeComputeService"}

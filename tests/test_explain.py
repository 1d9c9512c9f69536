"""explain(): text, dict/JSON and DOT reports for composed and hand-written classes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from toy_capabilities import MixinToyCaching, make_registry, plain_mixin

from onex_compose import ConfigurationError, NodeCompute, Registry, cache_clear, compose, explain


@pytest.fixture(autouse=True, scope="module")
def _forget_composed_classes() -> Iterator[None]:
    """Start and end with an empty class cache: private-registry classes share names with
    default-registry ones, and the engine's pickling lookup by name mixes them up."""
    cache_clear()
    yield
    cache_clear()


REG = make_registry("explain")


def _service() -> type:
    return compose(NodeCompute, ["caching", "retry"], registry=REG)


def test_text_lists_capabilities_in_order_with_why() -> None:
    cls = _service()
    text = str(explain(cls))
    lines = text.splitlines()
    assert cls.__name__ == "NodeCompute[caching,health_check,metrics,retry]"
    assert lines[0] == f"{cls.__name__} (composed, base NodeCompute)"
    assert lines[1] == "capabilities (in order):"
    assert lines[2] == "  1. metrics: required by caching, health_check, retry"
    assert lines[3] == "  2. health_check: required by retry"
    assert lines[4] == "  3. caching: requested"
    assert lines[5] == "  4. retry: requested"
    assert "public names:" in lines
    assert "  cache: caching" in lines and "  with_retry: retry" in lines
    assert lines[-1] == "resolutions: none"


def test_dict_form_and_json_agree() -> None:
    cls = _service()
    report = explain(cls)
    data = report.to_dict()
    assert json.loads(report.to_json()) == data
    assert data["class"] == cls.__name__
    assert data["base"] == "NodeCompute" and data["style"] == "composed"
    assert data["order"] == ["metrics", "health_check", "caching", "retry"]
    assert data["capabilities"][0] == {
        "name": "metrics", "why": "required by caching, health_check, retry",
        "required_by": ["caching", "health_check", "retry"]}
    assert data["providers"]["is_healthy"] == {"capability": "health_check", "overrides": []}
    assert ["metrics", "caching", "caching requires metrics"] in data["edges"]
    assert data["added"] == [] and data["resolutions"] == []
    json.dumps(data)  # JSON-able throughout


def test_json_passes_options_through() -> None:
    text = explain(_service()).to_json(indent=None, sort_keys=True)
    assert "\n" not in text and text.startswith('{"added": []')


_NODE = re.compile(r'^  "[^"]+" \[[a-z]+=[a-z]+(, [a-z]+=[a-z]+)*\];$')
_EDGE = re.compile(r'^  "([^"]+)" -> "([^"]+)" \[(label="([^"]*)"|style=dotted, arrowhead=none)\];$')


def test_dot_is_well_formed_and_has_every_dependency_edge() -> None:
    cls = _service()
    dot = explain(cls).to_dot()
    lines = dot.splitlines()
    assert lines[0] == f'digraph "{cls.__name__}" {{'
    assert lines[1] == "  rankdir=LR;" and lines[-1] == "}" and dot.endswith("}\n")
    edges = set()
    for line in lines[2:-1]:
        edge = _EDGE.match(line)
        if edge:
            if edge.group(4) is not None:
                edges.add((edge.group(1), edge.group(2), edge.group(4)))
            continue
        assert _NODE.match(line), f"not a DOT node or edge statement: {line!r}"
    assert edges == set(cls.__composition__.edges)
    assert '"caching" [shape=ellipse];' in dot  # requested: solid
    assert '"metrics" [shape=ellipse, style=dashed];' in dot  # pulled in: dashed
    assert '"NodeCompute" [shape=box, style=bold];' in dot


class Described(NodeCompute):
    def describe(self) -> str:
        return "base"


def test_resolutions_and_overrides_are_reported() -> None:
    reg = Registry()
    reg.register(plain_mixin("MixinA", {"clear": lambda s: "a", "describe": lambda s: "a"}),
                 name="a")
    reg.register(plain_mixin("MixinB", {"clear": lambda s: "b", "flush": lambda s: "b"}),
                 name="b")
    cls = compose(Described, ["a", "b"], registry=reg, prefer={"clear": "b", "describe": "a"},
                  alias={"b.flush": "flush_b"})
    assert cls().describe() == "a"  # type: ignore[attr-defined]
    report = explain(cls)
    text = str(report)
    assert "  clear: b (overrides a)" in text
    assert "  describe: a (overrides Described)" in text
    assert "  flush_b: b" in text
    data = report.to_dict()
    assert data["resolutions"] == [
        "prefer: 'clear' comes from 'b'", "prefer: 'describe' comes from 'a'",
        "alias: 'flush' of 'b' exposed as 'flush_b'"]
    assert "resolutions: prefer: 'clear' comes from 'b'; " in text


def test_hand_written_class_explains_what_was_added_and_why() -> None:
    class Service(NodeCompute, MixinToyCaching):
        __onex_registry__ = REG

    data = explain(Service).to_dict()
    assert data["style"] == "hand-written"
    assert data["added"] == ["metrics"]
    by_name = {c["name"]: c["why"] for c in data["capabilities"]}
    assert by_name == {"metrics": "added automatically: required by caching",
                       "caching": "listed in the class's bases"}
    assert "(hand-written, base " in str(explain(Service))


def test_instance_report_names_config_sources() -> None:
    node = _service()(capability_config={"caching": {"max_size": 3}})
    report = explain(node)
    caps = {c["name"]: c for c in report.to_dict()["capabilities"]}
    assert caps["caching"]["config_source"].startswith("capability_config")
    assert caps["retry"]["config_source"] == "defaults"
    assert "[config: capability_config" in str(report)
    assert "config_source" not in explain(type(node)).to_dict()["capabilities"][0]


def test_repr_names_class_and_capabilities() -> None:
    cls = _service()
    assert repr(explain(cls)) == (
        f"<Explanation of {cls.__name__}: metrics, health_check, caching, retry>")


@pytest.mark.parametrize("thing", [object, object(), int, "caching"])
def test_explain_rejects_non_nodes_clearly(thing: Any) -> None:
    with pytest.raises(ConfigurationError, match="takes a node class or instance"):
        explain(thing)


def test_plain_node_class_explains_as_empty() -> None:
    data = explain(NodeCompute).to_dict()
    assert data["capabilities"] == [] and data["order"] == []

"""The docstring examples of the public modules and the guide's examples run as written."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest
import yaml

MODULES = [
    "onex_compose._build",
    "onex_compose._config",
    "onex_compose._explain",
    "onex_compose._facility",
    "onex_compose._nodes",
    "onex_compose._registry",
    "onex_compose._seed",
    "onex_compose.exceptions",
    "onex_compose.capabilities._context",
    "onex_compose.capabilities.node_service",
    "onex_compose.capabilities.metrics",
    "onex_compose.capabilities.health_check",
    "onex_compose.capabilities.caching",
    "onex_compose.capabilities.event_bus",
    "onex_compose.capabilities.retry",
    "onex_compose.capabilities.timeout",
    "onex_compose.capabilities.bulkhead",
    "onex_compose.capabilities.circuit_breaker",
    "onex_compose.capabilities.rate_limiting",
    "onex_compose.capabilities.error_handling",
    "onex_compose._contracts",
    "onex_compose._node_contracts",
    "onex_compose._loading",
    "onex_compose._validate",
    "onex_compose._contract_compose",
    "onex_compose._ops",
]



def _capability_modules() -> list[str]:
    """Every module of the capabilities (package submodules included), found, not listed:
    a capability that becomes a package keeps its examples tested."""
    import pkgutil

    import onex_compose.capabilities as caps

    return [m.name for m in pkgutil.walk_packages(caps.__path__, f"{caps.__name__}.")
            if m.name not in MODULES and m.name != "onex_compose.capabilities.logging"]


MODULES += _capability_modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


# -- docs/writing-capabilities.md runs as printed ----------------------------------------------

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing-capabilities.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text("utf-8"), flags=re.S)


def test_the_guide_runs_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 3, "the guide lost its python examples"
    namespace: dict[str, object] = {"__name__": "docs_example"}
    expected = []
    for block in blocks:  # one namespace, in order, as a reader pastes them
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102
        expected += [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+# (.+)$", block,
                                                             flags=re.M)]
    lines = capsys.readouterr().out.splitlines()
    assert len(expected) >= 5
    position = 0
    for want in expected:  # every commented print shows exactly its comment, in order
        assert want in lines[position:], f"the guide says {want!r}; the output was {lines}"
        position = lines.index(want, position) + 1


def test_the_guide_shows_outside_registration() -> None:
    text = GUIDE.read_text("utf-8")
    for needle in ("@capability(", "Registry(", 'entry-points."onex_compose.capabilities"',
                   "register_contract(", "_guard_sync_", "capabilities/<name>/"):
        assert needle in text, needle


def test_the_guide_contract_validates() -> None:
    from onex_compose.model.contracts import validate_contract

    (block,) = _blocks("yaml")
    report = validate_contract(yaml.safe_load(block), kind="mixin")
    assert report.ok and not report.warnings, report.render_text()

"""The docstring examples of the public modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

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
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"

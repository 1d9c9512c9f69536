"""Lazy lookup of capability mixins and protocols by their seed names (``MixinCaching``).

``onex_compose.mixin`` and ``onex_compose`` resolve ``Mixin<CamelName>`` to the mixin of
capability ``<snake_name>`` and ``<CamelName>Protocol`` to that capability module's Protocol,
through the registry, so only the capabilities actually named are imported.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from onex_compose._registry import default_registry


def snake(camel: str) -> str:
    """``HealthCheck`` -> ``health_check``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def lookup(name: str) -> Any:
    """The mixin, Protocol or other public object a seed name refers to (AttributeError if none)."""
    if name.startswith("Mixin") and len(name) > 5:
        cap = snake(name[5:])
        if cap in default_registry:
            return default_registry.get(cap).mixin
    if name.endswith("Protocol") and len(name) > 8:
        cap = snake(name[:-8])
        if cap in default_registry:
            module = importlib.import_module(default_registry.get(cap).mixin_ref.partition(":")[0])
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(name)

"""Seed 000's import path for the capability mixins: ``from onex_compose.mixin import MixinCaching``.

Each name is looked up in the registry on first access (``MixinHealthCheck`` is the mixin of
capability ``health_check``), so importing one mixin imports only its module.
"""

from __future__ import annotations

from typing import Any

from onex_compose._seedpaths import lookup


def __getattr__(name: str) -> Any:
    try:
        value = lookup(name)
    except AttributeError:
        raise AttributeError(f"module 'onex_compose.mixin' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def _mixin_names() -> list[str]:
    from onex_compose._registry import default_registry

    return sorted(s.mixin_ref.rpartition(":")[2] for s in default_registry)


def __dir__() -> list[str]:
    return _mixin_names()


#: every registered capability's mixin (read from the manifest; nothing is imported until used)
__all__ = _mixin_names()

"""Home module of composed classes, so that they pickle by reference.

A composed class is named ``Base[cap1,cap2]`` with ``__module__`` set to this module; pickle
looks the name up here and this module's ``__getattr__`` recomposes it through the cache
(returning the identical class object in this process, an equivalent one in a fresh process).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from onex_compose._build import lookup_composed

    return lookup_composed(name)

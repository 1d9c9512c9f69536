"""Home module of composed classes, so that they pickle by reference.

A composed class is named ``Base[cap1,cap2]`` with ``__module__`` set to this module; pickle
looks the name up here and this module's ``__getattr__`` recomposes it through the cache
(returning the identical class object in this process, an equivalent one in a fresh process).

This module sits on top of the engine (it may import the builder and the node modules); the
builder below never imports it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from onex_compose._build import lookup_composed

    try:
        return lookup_composed(name)
    except AttributeError:
        # the base may be one of the service classes, which register themselves when their
        # module is imported (lazily, by ``onex_compose.__getattr__``): import it, try again
        import sys

        if "onex_compose._services" in sys.modules:
            raise
        from onex_compose import _services  # noqa: F401 - imported for its registrations

        return lookup_composed(name)

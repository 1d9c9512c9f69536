"""Seed 000's composition APIs, implemented on the engine.

``MixinDependencyResolver`` keeps the seed's shape (a ``dependency_graph`` of mixin classes and
``resolve_dependencies()`` returning dependencies first) and ``create_service_with_capabilities``
keeps its signature; both go through the registry and resolver, so they follow the same rules
(aliases, bundles, conflicts, node-type applicability) as :func:`onex_compose.compose`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from onex_compose._build import compose
from onex_compose._registry import Registry, default_registry
from onex_compose._resolve import resolve
from onex_compose.exceptions import UnknownCapabilityError

__all__ = ["MixinDependencyResolver", "create_service_with_capabilities"]

B = TypeVar("B", bound=type)


class _DependencyGraph:
    """Seed 000 reads ``dependency_graph`` as a plain dict, on the class or an instance: each
    registered mixin class and the mixin classes it requires (imports every capability)."""

    def __get__(self, obj: Any, objtype: Any = None) -> dict[type, list[type]]:
        registry = obj.registry if obj is not None else default_registry
        return {spec.mixin: [registry.get(d).mixin for d in sorted(spec.requires)]
                for spec in registry}


class MixinDependencyResolver:
    """Resolves mixin dependencies and ensures proper initialization order (seed 000).

    Args:
        registry: where capabilities are looked up (default: the default registry).

    Example:
        >>> from onex_compose import MixinDependencyResolver
        >>> from onex_compose.mixin import MixinCaching, MixinMetrics
        >>> MixinDependencyResolver().resolve_dependencies([MixinCaching]) == [MixinMetrics, MixinCaching]
        True
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else default_registry

    dependency_graph: dict[type, list[type]] = _DependencyGraph()  # type: ignore[assignment]

    def _name_of(self, mixin: Any) -> str:
        if isinstance(mixin, str):
            return mixin
        name = vars(mixin).get("__onex_capability__") if isinstance(mixin, type) else None
        if name is None:
            raise UnknownCapabilityError(getattr(mixin, "__qualname__", repr(mixin)),
                                         self.registry.names(), what="mixin")
        return str(name)

    def resolve_dependencies(self, requested_mixins: Sequence[Any]) -> list[type]:
        """Resolve and order mixins based on dependencies (dependencies first).

        Accepts mixin classes or capability names; raises the engine's errors on unknown names,
        cycles and conflicts.
        """
        if isinstance(requested_mixins, str) or not isinstance(requested_mixins, Sequence):
            from onex_compose.exceptions import ConfigurationError

            raise ConfigurationError(
                "resolve_dependencies() takes a list of mixin classes or names, got "
                + (f"the string {requested_mixins!r}" if isinstance(requested_mixins, str)
                   else repr(requested_mixins))
                + ". Example: resolve_dependencies([MixinCaching]).")
        names = [self._name_of(m) for m in requested_mixins]
        res = resolve(self.registry, object, names)
        return [spec.mixin for spec in res.specs]


def create_service_with_capabilities(base_service_class: B, contract: Any,
                                     required_capabilities: Iterable[str]) -> B:
    """Dynamically compose a service class with the required capabilities (seed 000).

    The seed's words (``health_monitoring``, ``performance_metrics``, ``caching``,
    ``event_communication``, ``fault_tolerance``) are aliases and bundles in the registry.
    Capabilities the contract lists (``contract.capabilities``) are added too.

    Example:
        >>> from onex_compose import NodeCompute, create_service_with_capabilities
        >>> cls = create_service_with_capabilities(NodeCompute, None, ["caching"])
        >>> cls.__name__
        'NodeCompute[caching,metrics]'
    """
    if isinstance(required_capabilities, str):
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            f"required_capabilities takes a list of names, got the string "
            f"{required_capabilities!r}. Write [{required_capabilities!r}].")
    names = list(required_capabilities)
    extra = getattr(contract, "capabilities", None) if contract is not None else None
    if extra:
        names.extend(str(n) for n in extra)
    return compose(base_service_class, names)

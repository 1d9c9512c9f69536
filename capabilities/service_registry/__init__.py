"""service_registry: service registration and discovery with TTL heartbeats (seed 000's
"MixinServiceRegistry: Service registration and discovery capabilities").

``self.service_registry`` is a :class:`ServiceRegistry`. With ``auto_register`` (default) the
node registers at ``start()``, heartbeats every ``heartbeat_interval`` (``ttl / 3``) and
leaves at ``aclose()``. Omnibase's registry expectations (``reference/omnibase.md`` 6.13) hold
on both backends:

* entries that miss their TTL go **offline rather than being deleted** (removed only
  ``purge_after`` seconds later, as ``purged``); a later heartbeat brings them back
  (``online``);
* lookups (``discover``) return only online entries unless ``include_offline``; ``capability=``
  accepts aliases and bundles (``"fault_tolerance"``: retry *and* circuit_breaker);
* a domain filter (and node type, name, metadata subset) applies;
* discovery callbacks (``watch``, ``changes()``) fire, in order, for every change of the
  namespace; with event_bus composed, changes also go to ``service_registry.changed``.

Backends: ``memory`` (one table per namespace in the process, like the memory event bus) and
``redis`` (hashes, an expiry zset, capability index sets, a change channel and atomic Lua
scripts; see :mod:`._redis`). Identity: the registry key is a fleet-unique ``instance_id``
(default ``<host>:<pid>:<node_id>``), held by a random per-node token; registering an id
another online instance holds raises :class:`RegistryConflictError` unless ``replace=True``.

Why not a library: python-consul / etcd clients need those servers, and py-eureka-client,
zookeeper's kazoo and the Redis-based "service registry" snippets either have no TTL-offline
state (they delete expired entries) or no change stream; the omnibase semantics are small
enough to write on Redis scripts directly.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> class Pricer(compose(NodeCompute, ["service_registry", "caching"])):
    ...     pass
    >>> node = Pricer(capability_config={"service_registry": {"namespace": "doc-mixin",
    ...                                                       "domain": "pricing"}})
    >>> async def demo():
    ...     await node.start()                    # registers
    ...     found = await node.service_registry.discover(capability="caching",
    ...                                                  domain="pricing")
    ...     await node.aclose()                   # leaves
    ...     return [(e.name, e.status) for e in found]
    >>> asyncio.run(demo())
    [('Pricer', 'online')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.service_registry._memory import MemoryBackend
from onex_compose.capabilities.service_registry._model import (
    RegistryChange,
    RegistryConflictError,
    RegistryError,
    RegistryInputError,
    RegistryUnavailableError,
    ServiceEntry,
    ServiceRegistryConfig,
    ServiceRegistryProtocol,
)
from onex_compose.capabilities.service_registry._registry import TOPIC, ServiceRegistry, Watch

__all__ = [
    "TOPIC",
    "MemoryBackend",
    "MixinServiceRegistry",
    "RegistryChange",
    "RegistryConflictError",
    "RegistryError",
    "RegistryInputError",
    "RegistryUnavailableError",
    "ServiceEntry",
    "ServiceRegistry",
    "ServiceRegistryConfig",
    "ServiceRegistryProtocol",
    "Watch",
]


def _build(node: Any, cfg: ServiceRegistryConfig, old: Any = None) -> ServiceRegistry:
    cls = type(node)
    comp = getattr(cls, "__composition__", None)
    capabilities = tuple(getattr(comp, "capabilities", ()) or ())
    event_bus = node.event_bus if has_capability(node, "event_bus") else None
    return ServiceRegistry(
        cfg, node_id=getattr(node, "node_id", None), name=cls.__name__,
        node_type=getattr(cls, "node_type", None), capabilities=capabilities,
        metrics=node.metrics, event_bus=event_bus, registry=getattr(comp, "registry", None),
        clock=old.clock if isinstance(old, ServiceRegistry) else None,
        instance=old.instance if isinstance(old, ServiceRegistry) else None)


class MixinServiceRegistry:
    """Service registration and discovery for a node: ``self.service_registry``.

    Requires ``metrics``; uses ``event_bus`` (changes on ``service_registry.changed``),
    ``health_check`` (the ``service_registry`` check: degraded while Redis is unreachable) and
    ``logging`` when composed. Inject a clock with
    ``node.service_registry.clock = ManualClock()``.

    Example:
        >>> from onex_compose import NodeEffect
        >>> class Gateway(NodeEffect, MixinServiceRegistry):
        ...     pass
        >>> Gateway(node_id="gw-1").service_registry.node_id
        'gw-1'
    """

    __onex_capability__ = "service_registry"
    __slots__ = ()

    def setup_service_registry(self, config: ServiceRegistryConfig | Mapping[str, Any] | None
                               = None) -> None:
        """Build ``self.service_registry`` (a reconfigured node keeps its clock and token)."""
        cfg = coerce_config(ServiceRegistryConfig, config, "service_registry")
        node: Any = self
        old = getattr(node, "service_registry", None)
        node.service_registry = _build(node, cfg, old)
        if has_capability(self, "health_check"):
            node.register_health_check(node.service_registry.health, name="service_registry")

    @facility
    def service_registry(self) -> ServiceRegistry:
        """The node's registry client (default config if ``setup_service_registry`` never ran)."""
        return _build(self, ServiceRegistryConfig())

    async def start_service_registry(self) -> None:
        """Register (``auto_register``) and start heartbeating."""
        node: Any = self
        await node.service_registry.start()

    async def close_service_registry(self) -> None:
        """Leave (status ``left``) and stop every task of the registry (idempotent)."""
        node: Any = self
        reg = getattr(node, "service_registry", None)
        if isinstance(reg, ServiceRegistry):
            await reg.aclose()

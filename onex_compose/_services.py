"""The seed's service classes: each node type plus the node_service capability.

These sit on top of the engine (like the CLI): they are the one place in ``onex_compose`` that
names a concrete capability, and they are imported lazily by ``onex_compose.__getattr__``.
"""

from __future__ import annotations

from onex_compose._nodes import NodeCompute, NodeEffect, NodeOrchestrator, NodeReducer
from onex_compose._registry import default_registry

__all__ = ["NodeComputeService", "NodeEffectService", "NodeOrchestratorService", "NodeReducerService"]

MixinNodeService: type = default_registry.get("node_service").mixin


class NodeComputeService(NodeCompute, MixinNodeService):  # type: ignore[misc, valid-type]
    """A COMPUTE node in long-running service mode (``serve()``, ``stop()``, graceful shutdown)."""


class NodeEffectService(NodeEffect, MixinNodeService):  # type: ignore[misc, valid-type]
    """An EFFECT node in long-running service mode."""


class NodeReducerService(NodeReducer, MixinNodeService):  # type: ignore[misc, valid-type]
    """A REDUCER node in long-running service mode."""


class NodeOrchestratorService(NodeOrchestrator, MixinNodeService):  # type: ignore[misc, valid-type]
    """An ORCHESTRATOR node in long-running service mode."""


for _cls in (NodeComputeService, NodeEffectService, NodeReducerService, NodeOrchestratorService):
    _cls.__module__ = "onex_compose"
del _cls

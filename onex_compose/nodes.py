"""Seed 002's import path for node classes: ``from onex_compose.nodes import NodeCompute``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onex_compose._node_types import EnumNodeType
from onex_compose._nodes import (
    NodeCompute,
    NodeCoreBase,
    NodeEffect,
    NodeOrchestrator,
    NodeReducer,
    NodeService,
)

if TYPE_CHECKING:
    from onex_compose._services import (
        NodeComputeService,
        NodeEffectService,
        NodeOrchestratorService,
        NodeReducerService,
    )

__all__ = [
    "EnumNodeType",
    "NodeCompute",
    "NodeComputeService",
    "NodeCoreBase",
    "NodeEffect",
    "NodeEffectService",
    "NodeOrchestrator",
    "NodeOrchestratorService",
    "NodeReducer",
    "NodeReducerService",
    "NodeService",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from onex_compose import _services

        return getattr(_services, name)
    raise AttributeError(f"module 'onex_compose.nodes' has no attribute {name!r}")

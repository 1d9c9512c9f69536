"""The node types (plain data, at the bottom of the import graph: contracts use it too)."""

from __future__ import annotations

from enum import Enum

__all__ = ["NODE_TYPE_NAMES", "EnumNodeType"]


class EnumNodeType(str, Enum):
    """The four ONEX node types."""

    COMPUTE = "COMPUTE"
    EFFECT = "EFFECT"
    REDUCER = "REDUCER"
    ORCHESTRATOR = "ORCHESTRATOR"

    def __str__(self) -> str:
        return self.value


NODE_TYPE_NAMES = tuple(t.value for t in EnumNodeType)
